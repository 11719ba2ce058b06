"""Writing the files edgeflow produces (`fmt`, `split --emit`, `profile -o`, `report -o`,
`init`): each file (a temporary file beside it, then `os.replace`), never replacing a file
that edgeflow did not write unless forced. Failures are diagnostics on the output path: E1001 when the system refuses
the write, E1002 when it would replace a file another tool wrote.
"""

from __future__ import annotations

import errno
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
    """Whether `path` is an ONNX model edgeflow emitted, a profile, a chart or a report it
    wrote."""
    try:
        if path.suffix in (".svg", ".png"):  # the mark is in the metadata, near the start
            return b"edgeflow chart" in path.read_bytes()[:8192]
        head = path.read_bytes()[:1024]
        if head.startswith(b"<!DOCTYPE html>"):  # a page: <meta name="generator"> in its head
            return b'<meta name="generator" content="edgeflow report' in head
        if path.suffix == ".onnx":
            return bool(onnx.load(str(path), load_external_data=False).producer_name
                        == "edgeflow")
        data = json.loads(path.read_text(encoding="utf-8"))
        return isinstance(data, dict) and "node_seconds" in data
    except Exception:  # noqa: BLE001 - anything unreadable is not ours
        return False


def refusal(path: Path, why: str = "was not written by edgeflow") -> Diagnostic:
    """E1002: `path` exists and is not replaced (`why`)."""
    return Diagnostic("E1002", f"`{path}` exists and {why}",
                      file_span(str(path)),
                      help="choose another output path, or pass `--force` to replace it")


def _foreign(path: Path) -> Diagnostic | None:
    if not path.is_file() or written_by_edgeflow(path):
        return None
    return refusal(path)


def reason(path: Path, exc: OSError) -> str:
    """Why `path` cannot be written, in words: a parent that is a file, else the system's."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return f"`{parent}` is a file, not a folder"
    return exc.strerror or str(exc)


def _cannot(path: Path, exc: OSError) -> Diagnostic:
    return Diagnostic("E1001", f"cannot write `{path}`: {reason(path, exc)}",
                      file_span(str(path)))


def _staged(path: Path, data: bytes) -> str:
    """`data` in a temporary file beside `path`, with the mode `path` has (a new file: the
    mode `open()` would give it); the caller renames it over `path` or removes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.",
                                     delete=False) as f:
        try:
            f.write(data)
            if path.exists():
                os.chmod(f.name, stat.S_IMODE(path.stat().st_mode))
            else:
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(f.name, 0o666 & ~umask)
        except OSError:
            Path(f.name).unlink(missing_ok=True)
            raise
    return f.name


def write_atomic(path: Path, data: bytes, force: bool = False) -> Diagnostic | None:
    """Write `path` via a temporary file and a rename; None, or why nothing was written."""
    problems = write_all({path: data}, force)
    return problems[0] if problems else None


def write_all(outputs: Mapping[Path, bytes], force: bool = False) -> list[Diagnostic]:
    """Write every file or none: each is staged beside its target first, and only when all are
    staged are they renamed into place. Refused (E1002) if one would replace a file edgeflow did
    not write, unless `force`; E1001 when the system refuses a write."""
    refused = [] if force else [d for d in map(_foreign, outputs) if d is not None]
    if refused:
        return refused
    staged: dict[Path, str] = {}
    try:
        for path, data in outputs.items():
            try:
                if path.is_dir():  # found now, not when renaming after the others
                    raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
                staged[path] = _staged(path, data)
            except OSError as exc:
                return [_cannot(path, exc)]
        for path, temp in staged.items():
            try:
                os.replace(temp, path)
            except OSError as exc:  # the folder changed under us: report, keep what was
                return [_cannot(path, exc)]
    finally:
        for temp in staged.values():
            Path(temp).unlink(missing_ok=True)  # those not renamed
    return []
