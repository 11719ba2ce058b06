"""`Span`: a region of a source file. It sits below every layer (syntax, diagnostics, IR, the
back end) so that none of them imports up into `syntax` for it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Span:
    """A region of a source file. Offsets are 0-based character offsets, `end` exclusive;
    lines and columns are 1-based, and `end_col` is exclusive."""

    file: str
    start: int
    end: int
    line: int
    col: int
    end_line: int
    end_col: int

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "start": {"line": self.line, "col": self.col, "offset": self.start},
            "end": {"line": self.end_line, "col": self.end_col, "offset": self.end},
        }


def file_span(file: str) -> Span:
    """The span of a whole file that has no text to point into (an ONNX model, a profile, an
    output path): line 1, column 1, empty. `render_text` prints its `-->` line and no snippet."""
    return Span(file, 0, 0, 1, 1, 1, 1)
