"""The files edgeflow reads besides its code (the grammar, the bundle templates, the example
apps): packaged in `edgeflow/_data/` in a wheel, at the repository's top in a checkout."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def data_path(name: str) -> Path:
    """The folder `name` (`grammar`, `templates`, `examples`)."""
    packaged = resources.files("edgeflow") / "_data" / name
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[1] / name
