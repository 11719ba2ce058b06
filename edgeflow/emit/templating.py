"""The jinja2 environment over `templates/` (packaged beside the code in a wheel)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from edgeflow.resources import data_path


def _templates_dir() -> Path:
    return data_path("templates")


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_templates_dir())), undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)


def render(name: str, **values: Any) -> str:
    return environment().get_template(name).render(**values)
