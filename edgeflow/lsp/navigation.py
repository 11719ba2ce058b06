"""Questions an editor asks of a parsed file: which name or value is at an offset, where a name
is declared and used, which block the cursor is in. Pure functions over the AST."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from edgeflow.span import Span
from edgeflow.syntax import ast


@dataclass(frozen=True)
class Occurrence:
    name: str
    span: Span
    is_declaration: bool
    key: str | None = None       # the entry key it appears under (None for declarations)


def _names_in(value: ast.Value, key: str) -> Iterator[Occurrence]:
    if isinstance(value, ast.Word):
        yield Occurrence(value.name, value.span, False, key)
    elif isinstance(value, ast.Flow):
        for step in value.steps:
            yield Occurrence(step.value, step.span, False, key)
    elif isinstance(value, ast.ListValue):
        for item in value.items:
            yield from _names_in(item, key)
    elif isinstance(value, ast.Call):
        for arg in value.args:
            yield from _names_in(arg.value if isinstance(arg, ast.Entry) else arg, key)


def occurrences(module: ast.Module) -> list[Occurrence]:
    """Every place a declared name may appear: declarations, link ends and references in values
    (words that are not declared names, like `edge`, are filtered by the caller)."""
    out: list[Occurrence] = []
    for decl in module.decls:
        if decl.kind == "link":
            out.append(Occurrence(decl.name.value, decl.name.span, False, "link"))
            if decl.peer:
                out.append(Occurrence(decl.peer.value, decl.peer.span, False, "link"))
        else:
            out.append(Occurrence(decl.name.value, decl.name.span, True))
        for entry in decl.entries:
            out.extend(_names_in(entry.value, entry.key.value))
    return out


def declarations(module: ast.Module) -> dict[str, ast.Decl]:
    out: dict[str, ast.Decl] = {}
    for decl in module.decls:
        if decl.kind != "link":
            out.setdefault(decl.name.value, decl)
    return out


def occurrence_at(module: ast.Module, offset: int) -> Occurrence | None:
    declared = declarations(module)
    for occ in occurrences(module):
        if occ.span.start <= offset <= occ.span.end and occ.name in declared:
            return occ
    return None


def entry_at(module: ast.Module, offset: int) -> tuple[ast.Decl, ast.Entry] | None:
    for decl in module.decls:
        for entry in decl.entries:
            if entry.span.start <= offset <= entry.span.end:
                return decl, entry
    return None


def decl_at(module: ast.Module, offset: int) -> ast.Decl | None:
    for decl in module.decls:
        body = decl.body_span
        if body is not None and body.start < offset < body.end:
            return decl
    return None


def quantity_at(value: ast.Value, offset: int) -> ast.Quantity | None:
    if isinstance(value, ast.Quantity) and value.span.start <= offset <= value.span.end:
        return value
    if isinstance(value, ast.Constraint):
        return quantity_at(value.bound, offset)
    if isinstance(value, ast.ListValue):
        for item in value.items:
            found = quantity_at(item, offset)
            if found:
                return found
    return None
