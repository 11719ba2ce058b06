"""The public API that the CLI, the language server and the tests all call."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgeflow import ir
from edgeflow.diagnostics import Diagnostic, SourceCache, has_errors
from edgeflow.semantics.lower import lower
from edgeflow.span import Span
from edgeflow.syntax import ast
from edgeflow.syntax.fmt import format_module
from edgeflow.syntax.parser import parse


@dataclass
class CheckResult:
    file: str
    text: str
    diagnostics: list[Diagnostic]
    module: ast.Module | None = None
    program: ir.Program | None = None
    sources: SourceCache = field(default_factory=SourceCache)

    @property
    def ok(self) -> bool:
        return not has_errors(self.diagnostics)


class CheckFailed(Exception):
    """Raised by `load` when a file has errors; carries the result with its diagnostics."""

    def __init__(self, result: CheckResult) -> None:
        super().__init__(f"{result.file}: {len(result.diagnostics)} diagnostics")
        self.result = result


def check_text(text: str, file: str = "<input>") -> CheckResult:
    """Parse and check source text. `file` names it in spans and anchors relative model paths."""
    module, diagnostics = parse(text, file)
    if diagnostics:  # the other checks would only echo what the broken declarations hide
        result = CheckResult(file, text, diagnostics, module, None)
    else:
        program, _, semantic = lower(module)
        result = CheckResult(file, text, semantic, module, program)
    result.sources.add(file, text)
    return result


def _read_error(file: str, code: str, message: str, label: str, text: str = "",
                offset: int = 0) -> CheckResult:
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    span = Span(file, offset, offset + 1, line, col, line, col + 1)
    result = CheckResult(file, text, [Diagnostic(code, message, span, label)])
    if text:
        result.sources.add(file, text)
    return result


def read_source(path: str | Path) -> CheckResult | str:
    """The text of a .ef file, or a CheckResult holding why it cannot be read (E0004/E0005)."""
    file = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return _read_error(file, "E0005", f"cannot read `{file}`: {exc.strerror or exc}", "")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        shown = data[: exc.start].decode("utf-8", errors="replace")
        return _read_error(file, "E0004", f"`{file}` is not valid UTF-8",
                           f"byte 0x{data[exc.start]:02x} at offset {exc.start} is not UTF-8",
                           shown + data[exc.start:].decode("utf-8", errors="replace"),
                           len(shown))


def check_file(path: str | Path) -> CheckResult:
    text = read_source(path)
    return text if isinstance(text, CheckResult) else check_text(text, str(path))


def format_file(path: str | Path) -> tuple[str | None, CheckResult | None]:
    """(the canonical text, None), or (None, a result with the syntax diagnostics)."""
    text = read_source(path)
    if isinstance(text, CheckResult):
        return None, text
    return format_text(text, str(path))


def format_text(text: str, file: str = "<input>") -> tuple[str | None, CheckResult | None]:
    """(the canonical text, None), or (None, a result with the syntax diagnostics): a text that
    does not parse is never reformatted."""
    module, diagnostics = parse(text, file)
    if diagnostics:
        result = CheckResult(file, text, diagnostics, module)
        result.sources.add(file, text)
        return None, result
    return format_module(text, module), None


def load(path: str | Path) -> ir.Program:
    """The IR of a file that checks without errors; raises `CheckFailed` otherwise."""
    result = check_file(path)
    if result.program is None:
        raise CheckFailed(result)
    return result.program
