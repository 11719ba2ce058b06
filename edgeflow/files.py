"""Writing the files edgeflow produces (`fmt`, `split --emit`, `profile -o`): each file atomically
(a temporary file beside it, then `os.replace`), never replacing a file that edgeflow did not
write unless forced. Failures are diagnostics on the output path: E1001 when the system refuses
the write, E1002 when it would replace a file another tool wrote.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

import onnx

from edgeflow.diagnostics import Diagnostic
from edgeflow.span import file_span


def written_by_edgeflow(path: Path) -> bool:
    """Whether `path` is an ONNX model edgeflow emitted or a profile it wrote."""
    try:
        if path.suffix == ".onnx":
            return bool(onnx.load(str(path), load_external_data=False).producer_name
                        == "edgeflow")
        data = json.loads(path.read_text(encoding="utf-8"))
        return isinstance(data, dict) and "node_seconds" in data
    except Exception:  # noqa: BLE001 - anything unreadable is not ours
        return False


def _foreign(path: Path) -> Diagnostic | None:
    if not path.is_file() or written_by_edgeflow(path):
        return None
    return Diagnostic("E1002", f"`{path}` exists and was not written by edgeflow",
                      file_span(str(path)),
                      help="choose another output path, or pass `--force` to replace it")


def _reason(path: Path, exc: OSError) -> str:
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return f"`{parent}` is a file, not a folder"
    return exc.strerror or str(exc)


def write_atomic(path: Path, data: bytes, force: bool = False) -> Diagnostic | None:
    """Write `path` via a temporary file and a rename, keeping the mode of the file it replaces
    (a new file gets the mode `open()` would give it); None, or why nothing was written."""
    if not force and (refused := _foreign(path)) is not None:
        return refused
    temp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.",
                                         delete=False) as f:
            temp = f.name
            f.write(data)
        if path.exists():
            os.chmod(temp, stat.S_IMODE(path.stat().st_mode))
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temp, 0o666 & ~umask)
        os.replace(temp, path)
    except OSError as exc:
        if temp is not None:
            Path(temp).unlink(missing_ok=True)
        return Diagnostic("E1001", f"cannot write `{path}`: {_reason(path, exc)}",
                          file_span(str(path)))
    return None


def write_all(outputs: Mapping[Path, bytes], force: bool = False) -> list[Diagnostic]:
    """Write each file with `write_atomic`; none at all if one of them would replace a file
    edgeflow did not write (unless `force`)."""
    refused = [] if force else [d for d in map(_foreign, outputs) if d is not None]
    if refused:
        return refused
    for path, data in outputs.items():
        if (problem := write_atomic(path, data, force=True)) is not None:
            return [problem]
    return []
