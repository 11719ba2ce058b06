"""edgeflow's one cache folder: what is costly to compute, keyed by the content it comes from,
and harmless to lose. It holds the tensor shapes measured by running a model
(`edgeflow.models.measure`), keyed by the model's sha256 and the bound input shapes, and the
quantized model variants `plan` makes (`edgeflow.models.variants`), keyed by what made them.

The folder is `$EDGEFLOW_CACHE_DIR`, else `$XDG_CACHE_HOME/edgeflow`, else
`~/.cache/edgeflow`: the only place edgeflow writes outside the output folder a command is given.
`edgeflow --no-cache COMMAND` (or `EDGEFLOW_NO_CACHE=1`) neither reads nor writes it. Entries
are JSON files written atomically; one that cannot be read or written is ignored: the cache
never fails a command.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def enabled() -> bool:
    return os.environ.get("EDGEFLOW_NO_CACHE", "") in ("", "0")


def folder() -> Path:
    if explicit := os.environ.get("EDGEFLOW_CACHE_DIR"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeflow"


def _path(kind: str, key: str) -> Path:
    return folder() / kind / f"{hashlib.sha256(key.encode()).hexdigest()}.json"


def get(kind: str, key: str) -> Any:
    """The value kept for `key`, or None (nothing kept, the cache off, or unreadable)."""
    if not enabled():
        return None
    try:
        entry = json.loads(_path(kind, key).read_text())
    except (OSError, ValueError):
        return None
    return entry.get("value") if isinstance(entry, dict) and entry.get("key") == key else None


def put(kind: str, key: str, value: Any) -> None:
    """Keep `value` for `key` (JSON), atomically; silently nothing when the cache is off or
    cannot be written."""
    if not enabled():
        return
    path = _path(kind, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False,
                                         suffix=".tmp") as tmp:
            json.dump({"key": key, "value": value}, tmp)
        os.replace(tmp.name, path)
    except OSError:
        return
