"""Operator implementations (`impl = "package.module:function"`): checked without running any of
the user's code. `check` and the language server only look for the module's file, walking the
package folders with `importlib.machinery.PathFinder` and an explicit path (which never imports
a parent package, unlike `importlib.util.find_spec` of a dotted name); only `edgeflow run` and
the worker import it."""

from __future__ import annotations

import re
import sys
from importlib.machinery import PathFinder
from pathlib import Path

REFERENCE = re.compile(r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):([A-Za-z_]\w*)")


def search_path(app_dir: Path) -> list[str]:
    """Where an operator's module is looked for: the app's folder first (what `edgeflow run`
    puts first on the workers' `PYTHONPATH`), then this interpreter's path."""
    return [str(app_dir), *(p for p in sys.path if p)]


def module_file(module: str, path: list[str]) -> str | None:
    """The file that defines `module` on `path`, found without importing anything; None when
    there is none."""
    search: list[str] | None = path
    origin: str | None = None
    for part in module.split("."):
        if search is None:  # the parent is a module, not a package
            return None
        try:
            spec = PathFinder.find_spec(part, search)
        except (ImportError, OSError, ValueError):
            return None
        if spec is None:
            return None
        origin = spec.origin
        locations = spec.submodule_search_locations
        search = list(locations) if locations is not None else None
    return origin or module
