"""Readers for entry values: each takes an AST value, checks its shape, unit and range, and returns
the SI value, or reports a diagnostic and returns `BAD`. Names are resolved against the table of
declarations collected before any entry is read.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgeflow.diagnostics import DiagnosticSink, Label
from edgeflow.ir import DTYPE_BYTES, TensorType, Tier
from edgeflow.syntax import ast
from edgeflow.syntax.units import (
    BANDWIDTH,
    COMPUTE,
    MAX_COUNT,
    MAX_DIMENSION,
    MAX_TENSOR_BYTES,
    SIZE,
    UNITS,
    WORK,
    Dimension,
    bound_error,
    unit_advice,
    unit_list,
    units_of,
)


class _Bad:
    def __repr__(self) -> str:
        return "BAD"


BAD: Any = _Bad()

# Said before the units of the right dimension when a unit of a related one is given.
_DIMENSION_HINTS: dict[tuple[Dimension, Dimension], str] = {
    (WORK, COMPUTE): "compute is work per second: ",
    (COMPUTE, WORK): "work is FLOP per message, not per second: ",
    (SIZE, BANDWIDTH): "a bandwidth is per second: ",
    (BANDWIDTH, SIZE): "a data size is not per second: ",
}

TIERS = tuple(t.value for t in Tier)

# What each declaration keyword declares, for "wrong kind" messages.
DECL_KIND_TEXT = {
    "app": "the app", "device": "a device", "sensor": "a sensor", "actuator": "an actuator",
    "store": "a store", "model": "a model", "operator": "an operator", "pipeline": "a pipeline",
    "privacy": "a privacy label", "training": "a training",
}


def article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def closest(name: str, candidates: list[str]) -> str | None:
    found = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return found[0] if found else None


def did_you_mean(name: str, candidates: list[str]) -> str | None:
    best = closest(name, candidates)
    return f"did you mean `{best}`?" if best else None


@dataclass
class Symbols:
    """Every declared name with its declaration (first one wins on duplicates)."""

    decls: dict[str, ast.Decl]
    # a valid name -> the invalid declared name E0105 asks to rename to it: a reference that
    # already uses the valid name is not reported again
    renamed: dict[str, str] = field(default_factory=dict)

    def of_kind(self, *kinds: str) -> list[str]:
        return [n for n, d in self.decls.items() if d.kind in kinds]


class Reader:
    def __init__(self, sink: DiagnosticSink, symbols: Symbols) -> None:
        self.sink = sink
        self.symbols = symbols

    # ----------------------------------------------------------------- helpers
    def shape_error(self, value: ast.Value, expected: str, example: str) -> Any:
        self.sink.error("E0204", f"expected {expected}, found {ast.describe(value)}", value.span,
                        f"expected {expected}", help=f"for example `{example}`")
        return BAD

    def _unit_dims(self, q: ast.Quantity, dim: Dimension, key: str) -> float | Any:
        """The SI value of a quantity of `dim`; every help given is safe: it lists units, or
        rewrites the value without changing its dimension or magnitude."""
        if q.unit is None:
            self.sink.error("E0302", f"`{key}` needs a {dim.name} unit", q.span,
                            f"a bare number, expected {dim.name}",
                            help=f"units are required: write one of {unit_list(dim)} after the "
                                 "number")
            return BAD
        if q.unit not in UNITS:
            advice = unit_advice(q.number_text, q.unit, dim, key)
            if advice.rewrite is not None:  # a new number too: the whole quantity is replaced
                self.sink.error("E0301", f"unknown unit `{q.unit}`", q.span,
                                f"`{q.unit}` is not a unit", help=advice.help)
            else:
                self.sink.error("E0301", f"unknown unit `{q.unit}`", q.unit_span or q.span,
                                "not a unit", help=advice.help)
            return BAD
        unit_dim, factor = UNITS[q.unit]
        if unit_dim is not dim:
            allowed = ", ".join(f"`{u}`" for u in units_of(dim))
            hint = _DIMENSION_HINTS.get((unit_dim, dim), "")
            self.sink.error("E0302", f"`{key}` expects {dim.name}, found {unit_dim.name}",
                            q.unit_span or q.span, f"`{q.unit}` is a unit of {unit_dim.name}",
                            help=f"{hint}use one of {allowed}")
            return BAD
        return q.number * factor

    # ----------------------------------------------------------------- readers
    def quantity(self, dim: Dimension, *, positive: bool) -> Callable[[str, ast.Value], Any]:
        def read(key: str, value: ast.Value) -> Any:
            if not isinstance(value, ast.Quantity):
                return self.shape_error(value, f"a {dim.name}", f"{key} = 1 {units_of(dim)[0]}")
            si = self._unit_dims(value, dim, key)
            if si is BAD:
                return BAD
            if si < 0 or (positive and si == 0):
                bound = "greater than zero" if positive else "zero or more"
                self.sink.error("E0303", f"`{key}` must be {bound}", value.span,
                                f"{'negative' if si < 0 else 'zero'} {dim.name}")
                return BAD
            if (problem := bound_error(si, dim)) is not None:
                self.sink.error("E0303", f"`{key}` is out of range: {problem}", value.span,
                                "out of range")
                return BAD
            return si
        return read

    def count(self, key: str, value: ast.Value) -> Any:
        if not isinstance(value, ast.Quantity):
            return self.shape_error(value, "a whole number", f"{key} = 2")
        if value.unit is not None:
            self.sink.error("E0302", f"`{key}` is a plain number, found a unit", value.span,
                            "a number with a unit", help=f"write `{value.number_text}`")
            return BAD
        if not value.is_integer or value.number < 1:
            self.sink.error("E0303", f"`{key}` must be a whole number of at least 1", value.span,
                            "not a whole number >= 1")
            return BAD
        if value.number > MAX_COUNT:  # (a device's `count`: the help says what to do)
            self.sink.error("E0303", f"`{key}` is at most {MAX_COUNT}", value.span, "too many",
                            help="describe larger fleets as several devices, one per site group"
                            if key == "count" else None)
            return BAD
        return int(value.number)

    def string(self, key: str, value: ast.Value) -> Any:
        if not isinstance(value, ast.String):
            return self.shape_error(value, "a string", f'{key} = "..."')
        return value.value

    def choice(self, options: tuple[str, ...]) -> Callable[[str, ast.Value], Any]:
        def read(key: str, value: ast.Value) -> Any:
            if not isinstance(value, ast.Word):
                return self.shape_error(value, f"one of {', '.join(options)}", f"{key} = {options[0]}")
            return self._choice_word(key, value, options)
        return read

    def _choice_word(self, key: str, word: ast.Word, options: tuple[str, ...]) -> Any:
        if word.name not in options:
            self.sink.error("E0305", f"`{word.name}` is not a valid `{key}`", word.span,
                            f"expected one of {', '.join(options)}",
                            help=did_you_mean(word.name, list(options)))
            return BAD
        return word.name

    def reference(self, kinds: tuple[str, ...], what: str, *, code: str = "E0101",
                  ) -> Callable[[str, ast.Value | ast.Name], Any]:
        """A name that must refer to a declaration of one of `kinds`."""
        def read(key: str, value: ast.Value | ast.Name) -> Any:
            if isinstance(value, ast.Word):
                name, span = value.name, value.span
            elif isinstance(value, ast.Name):
                name, span = value.value, value.span
            else:
                return self.shape_error(value, what, f"{key} = name")
            decl = self.symbols.decls.get(name)
            if decl is None and name in self.symbols.renamed:
                return BAD  # E0105 on the declaration says to rename it to this name
            if decl is None:
                self.sink.error(code, f"no {what} named `{name}`", span, f"unknown {what}",
                                help=did_you_mean(name, self.symbols.of_kind(*kinds)))
                return BAD
            if decl.kind not in kinds:
                self.sink.error("E0103", f"`{name}` is {DECL_KIND_TEXT[decl.kind]}, not "
                                f"{article(what)}",
                                span, f"expected {what}",
                                labels=(Label(decl.name.span, f"`{name}` is declared here"),),
                                help=did_you_mean(name, self.symbols.of_kind(*kinds)))
                return BAD
            return name
        return read

    def reference_list(self, kinds: tuple[str, ...], what: str, *, code: str = "E0101",
                       ) -> Callable[[str, ast.Value], Any]:
        one = self.reference(kinds, what, code=code)

        def read(key: str, value: ast.Value) -> Any:
            if not isinstance(value, ast.ListValue):
                return self.shape_error(value, f"a list of {what}s", f"{key} = [name]")
            names = [one(key, item) for item in value.items]
            return BAD if BAD in names else tuple(dict.fromkeys(names))
        return read

    def tiers(self, key: str, value: ast.Value) -> Any:
        if not isinstance(value, ast.ListValue):
            return self.shape_error(value, "a list of tiers", f"{key} = [edge, fog]")
        out = []
        for item in value.items:
            if not isinstance(item, ast.Word):
                return self.shape_error(item, "a tier", "edge")
            out.append(self._choice_word("tier", item, TIERS))
        return BAD if BAD in out else tuple(dict.fromkeys(out))

    def string_map(self, key: str, value: ast.Value) -> Any:
        if not isinstance(value, ast.MapValue):
            return self.shape_error(value, "a map of strings", f'{key} = {{ zone = "a" }}')
        out: dict[str, str] = {}
        for entry in self.unique_entries(value.entries):
            text = self.string(entry.key.value, entry.value)
            if text is not BAD:
                out[entry.key.value] = text
        return out if len(out) == len(value.entries) else BAD

    def tensor(self, key: str, value: ast.Value, *, unbound_code: str = "E0304") -> Any:
        if not isinstance(value, ast.Tensor):
            return self.shape_error(value, "a tensor type", f"{key} = float32[1, 3, 224, 224]")
        ok = True
        if value.dtype.value not in DTYPE_BYTES:
            self.sink.error("E0304", f"unknown element type `{value.dtype.value}`",
                            value.dtype.span, "not a tensor element type",
                            help=did_you_mean(value.dtype.value, list(DTYPE_BYTES))
                            or "use one of " + ", ".join(DTYPE_BYTES))
            ok = False
        if not value.dims:
            self.sink.error("E0304", "a tensor type needs at least one dimension", value.span,
                            "no dimensions", help=f"e.g. `{value.dtype.value}[1]`")
            ok = False
        shape = []
        for dim in value.dims:
            if isinstance(dim, ast.Word):
                if unbound_code == "E0604":
                    self.sink.error("E0604", f"dynamic dimension `{dim.name}` left unbound",
                                    dim.span, "not a number",
                                    help="bind it to the size the model runs with, e.g. `1`")
                else:
                    self.sink.error("E0304", f"dimension `{dim.name}` must be a number", dim.span,
                                    "symbolic dimension", help="write the concrete size")
                ok = False
            elif dim.unit is not None or not dim.is_integer or dim.number < 1:
                self.sink.error("E0304", "a dimension must be a whole number of at least 1",
                                dim.span, "invalid dimension")
                ok = False
            elif dim.number > MAX_DIMENSION:
                self.sink.error("E0304", f"a dimension is at most {MAX_DIMENSION}", dim.span,
                                "too large")
                ok = False
            else:
                shape.append(int(dim.number))
        if not ok:
            return BAD
        tensor = TensorType(dtype=value.dtype.value, shape=tuple(shape))  # type: ignore[arg-type]
        if tensor.nbytes > MAX_TENSOR_BYTES:
            self.sink.error("E0304", f"`{tensor}` holds {tensor.nbytes:.3g} bytes; a tensor holds "
                            f"at most {MAX_TENSOR_BYTES:.3g} (1 TiB)", value.span, "too large")
            return BAD
        return tensor

    def unique_entries(self, entries: tuple[ast.Entry, ...]) -> list[ast.Entry]:
        """Entries with repeated keys reported (E0203) and dropped."""
        seen: dict[str, ast.Entry] = {}
        for entry in entries:
            first = seen.get(entry.key.value)
            if first is not None:
                self.sink.error("E0203", f"key `{entry.key.value}` is given twice", entry.key.span,
                                "repeated here", labels=(Label(first.key.span, "first given here"),),
                                help="remove one of them")
                continue
            seen[entry.key.value] = entry
        return list(seen.values())
