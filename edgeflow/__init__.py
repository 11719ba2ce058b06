"""edgeflow: a declarative language and compiler for edge-cloud AI applications."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgeflow")
except PackageNotFoundError:  # running from a checkout that is not installed
    __version__ = "0.0.0+unknown"

from edgeflow.api import CheckFailed, CheckResult, check_file, check_text, load

__all__ = ["CheckFailed", "CheckResult", "__version__", "check_file", "check_text", "load"]
