"""edgeflow: a declarative language and compiler for edge-cloud AI applications.

The public API is `edgeflow.api`; its most used names are importable from here too, loaded on
first use, so that importing a light module (`edgeflow.unit_config` in a worker, `edgeflow.span`)
does not load the compiler.
"""

import os
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

# onnxruntime (1.29 and later) writes a device id under ~/.cache/Microsoft and sends usage
# events unless told not to: edgeflow writes nowhere but its output and its cache folder, and
# sends nothing. Set before any onnxruntime import (every edgeflow process, workers included,
# imports this package first); a user's own setting is kept.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("ORT_TELEMETRY_DISABLED", "1")

try:
    __version__ = version("edgeflow")
except PackageNotFoundError:  # running from a checkout that is not installed
    __version__ = "0.0.0+unknown"

if TYPE_CHECKING:
    from edgeflow.api import CheckFailed, CheckResult, check_file, check_text, load

__all__ = ["CheckFailed", "CheckResult", "__version__", "check_file", "check_text", "load"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from edgeflow import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgeflow' has no attribute {name!r}")
