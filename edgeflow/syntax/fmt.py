"""AST -> canonical text: `edgeflow fmt` and the language server's formatting.

Canonical form: one space around `=`, `->`, `<->` and comparison operators; `, ` between items;
keys aligned in multi-line blocks; two-space indentation; comments kept where they were (own-line
comments before the item they precede, trailing comments after it; a comment inside a
declaration's head, before its `{`, moves to its own line above the declaration). A block stays on one line when
it was written on one line, holds no comment and fits in 100 columns; otherwise one entry per
line. A value (list, map, call, tensor, flow) with a comment inside goes on several lines, an
item per line (`,` after each item of a list, call or tensor; a flow breaks before each `->`),
its comments kept where they were; a comment where no line can break (around `=`, between a
call's name and its `(` or a tensor's type and its `[`, inside a constraint) moves to its own line
above the entry or item. Blank lines between top-level items are kept (one at most). Formatting
is idempotent and never changes what the program means (both are tested).
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Sequence
from itertools import pairwise

from edgeflow.span import Span
from edgeflow.syntax import ast

WIDTH = 100
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _key(name: ast.Name) -> str:
    return name.value if _IDENT.fullmatch(name.value) else _string(name.value)


def _arg_text(a: ast.Value | ast.Entry) -> str:
    return f"{_key(a.key)} = {value_text(a.value)}" if isinstance(a, ast.Entry) else \
        value_text(a)


def value_text(v: ast.Value) -> str:
    if isinstance(v, ast.Quantity):
        return v.number_text + (f" {v.unit}" if v.unit else "")
    if isinstance(v, ast.String):
        return _string(v.value)
    if isinstance(v, ast.Word):
        return v.name
    if isinstance(v, ast.Tensor):
        return f"{v.dtype.value}[{', '.join(value_text(d) for d in v.dims)}]"
    if isinstance(v, ast.Call):
        return f"{v.func.value}({', '.join(_arg_text(a) for a in v.args)})"
    if isinstance(v, ast.Flow):
        return " -> ".join(s.value for s in v.steps)
    if isinstance(v, ast.Constraint):
        return f"{v.subject.value} {v.op} {value_text(v.bound)}"
    if isinstance(v, ast.ListValue):
        return "[" + ", ".join(value_text(i) for i in v.items) + "]"
    if isinstance(v, ast.MapValue):
        if not v.entries:
            return "{}"
        return "{ " + ", ".join(f"{_key(e.key)} = {value_text(e.value)}" for e in v.entries) + " }"
    raise TypeError(type(v))


class _Formatter:
    def __init__(self, text: str, module: ast.Module) -> None:
        self.text = text
        self.comments = sorted(module.comments, key=lambda c: c[0].start)
        self.starts = [c[0].start for c in self.comments]
        self.used: set[int] = set()

    def comments_between(self, start: int, end: int) -> list[tuple[Span, str]]:
        i = bisect_left(self.starts, start)
        out = []
        while i < len(self.comments) and self.comments[i][0].start < end:
            if i not in self.used:
                out.append(self.comments[i])
            i += 1
        return out

    def take(self, comment: tuple[Span, str]) -> str:
        self.used.add(self.starts.index(comment[0].start))
        return comment[1].rstrip()

    def trailing(self, end: int) -> str:
        """A comment on the same line right after offset `end`, as `  # ...`, or ''."""
        line_end = self.text.find("\n", end)
        line_end = len(self.text) if line_end < 0 else line_end
        for c in self.comments_between(end, line_end):
            if not self.text[end:c[0].start].strip(" \t,"):
                return "  " + self.take(c)
        return ""

    def blank_before(self, prev_end: int, start: int) -> bool:
        return prev_end >= 0 and self.text.count("\n", prev_end, start) >= 2

    def next_token(self, pos: int) -> int:
        """The offset of the first token at or after `pos`: whitespace and comments skipped."""
        text = self.text
        while pos < len(text):
            if text[pos] == "#":
                line_end = text.find("\n", pos)
                pos = len(text) if line_end < 0 else line_end
            elif text[pos] in " \t\r\n\f":
                pos += 1
            else:
                break
        return pos

    def hoist(self, start: int, end: int, above: list[str]) -> None:
        """Comments where no line can break move to `above`: own lines above the item."""
        above += [self.take(c) for c in self.comments_between(start, end)]

    def entry(self, e: ast.Entry, width: int, indent: int, above: list[str]) -> str:
        self.hoist(e.key.span.end, e.value.span.start, above)  # around the `=`
        return f"{_key(e.key).ljust(width)} = {self.value(e.value, indent, above)}"

    def value(self, v: ast.Value, indent: int, above: list[str]) -> str:
        """A value whose first line starts a line indented by `indent`: on one line when it holds
        no comment, otherwise with an item per line and every comment kept (later lines carry
        their own indentation, so formatting formatted text changes nothing)."""
        if not self.comments_between(v.span.start, v.span.end):
            return value_text(v)
        if isinstance(v, ast.ListValue):
            return "[" + self.items(v.items, v.span.start, v.span.end - 1, indent, ",") + "]"
        if isinstance(v, ast.MapValue):
            return "{" + self.items(v.entries, v.span.start, v.span.end - 1, indent, "") + "}"
        if isinstance(v, ast.Call | ast.Tensor):
            head, items = (v.func, v.args) if isinstance(v, ast.Call) else (v.dtype, v.dims)
            opening = self.next_token(head.span.end)
            self.hoist(head.span.end, opening, above)  # between `f` and `(`, `float32` and `[`
            if not self.comments_between(opening, v.span.end):
                return value_text(v)
            close = ")" if isinstance(v, ast.Call) else "]"
            return (head.value + self.text[opening]
                    + self.items(items, opening, v.span.end - 1, indent, ",") + close)
        if isinstance(v, ast.Flow):  # `a  # why` NEWLINE `-> b`: a step per line
            pad = " " * (indent + 2)
            out = v.steps[0].value
            for a, b in pairwise(v.steps):
                for c in self.comments_between(a.span.end, b.span.start):
                    on_line = "\n" not in self.text[a.span.end:c[0].start]
                    out += ("  " if on_line else "\n" + pad) + self.take(c)
                out += "\n" + pad + "-> " + b.value
            return out
        self.hoist(v.span.start, v.span.end, above)  # inside a constraint
        return value_text(v)

    def items(self, items: Sequence[ast.Value | ast.Entry], start: int, end: int, indent: int,
              comma: str) -> str:
        """What lies between a bracket at `start` and its closing one at `end`, one item a line."""
        width = max((len(_key(i.key)) for i in items if isinstance(i, ast.Entry)), default=0)
        lines = self.rows(items, start, end, indent + 2, width, comma)
        return "\n" + "\n".join(lines) + "\n" + " " * indent

    def rows(self, items: Sequence[ast.Value | ast.Entry], start: int, end: int, indent: int,
             width: int, comma: str) -> list[str]:
        """Items (after a bracket at `start`, before `end`) one a line, indented by `indent`:
        own-line comments where they were, trailing comments aligned past the longest item."""
        pad = " " * indent
        rows: list[tuple[str, str]] = []  # (text, trailing comment)
        cursor = start + 1
        for item in items:
            for c in self.comments_between(cursor, item.span.start):
                rows.append((pad + self.take(c), ""))
            above: list[str] = []
            text = (self.entry(item, width, indent, above) if isinstance(item, ast.Entry)
                    else self.value(item, indent, above))
            rows += [(pad + c, "") for c in above]
            rows.append((pad + text + comma, self.trailing(item.span.end).strip()))
            cursor = item.span.end
        for c in self.comments_between(cursor, end):
            rows.append((pad + self.take(c), ""))
        column = max((len(t) for t, c in rows if "\n" not in t and not t.lstrip().startswith("#")),
                     default=0) + 2
        # a trailing comment after a multi-line item follows its last line
        return [t + "  " + c if c and "\n" in t else t.ljust(column) + c if c else t
                for t, c in rows]

    def decl(self, d: ast.Decl) -> list[str]:
        body = d.body_span
        assert body is not None
        # a comment inside the head (`app # note` NEWLINE `name {`) moves above the declaration
        above = [self.take(c) for c in self.comments_between(d.span.start, body.start)]
        return above + self.block(d, body)

    def block(self, d: ast.Decl, body: Span) -> list[str]:
        head = (f"link {d.name.value} <-> {d.peer.value}" if d.peer else
                f"{d.kind} {d.name.value}")
        if not d.entries:
            inner = self.comments_between(body.start, body.end)
            if not inner:
                return [f"{head} {{}}"]
        first = d.entries[0].span.start if d.entries else body.end
        one_line = (d.entries and "\n" not in self.text[body.start:first]
                    and not self.comments_between(body.start, body.end))
        if one_line:
            line = f"{head} {{ " + ", ".join(
                f"{_key(e.key)} = {value_text(e.value)}" for e in d.entries) + " }"
            if len(line) <= WIDTH:
                return [line]
        width = max((len(_key(e.key)) for e in d.entries), default=0)
        return [f"{head} {{", *self.rows(d.entries, body.start, body.end, 2, width, ""), "}"]

    def module(self, module: ast.Module) -> str:
        out: list[str] = []
        prev_end = -1
        for d in module.decls:
            for c in self.comments_between(max(prev_end, 0), d.span.start):
                if out and self.blank_before(prev_end, c[0].start):
                    out.append("")
                out.append(self.take(c))
                prev_end = c[0].end
            if out and self.blank_before(prev_end, d.span.start):
                out.append("")
            lines = self.decl(d)
            lines[-1] += self.trailing(d.span.end)
            out.extend(lines)
            prev_end = d.span.end
        for c in self.comments_between(max(prev_end, 0), len(self.text)):
            if out and self.blank_before(prev_end, c[0].start):
                out.append("")
            out.append(self.take(c))
            prev_end = c[0].end
        return "\n".join(out) + "\n" if out else ""


def format_module(text: str, module: ast.Module) -> str:
    """The canonical text of a module parsed from `text` without syntax errors."""
    return _Formatter(text, module).module(module)
