"""The abstract syntax tree of an `.ef` file: plain frozen dataclasses, each node with its `Span`.

The tree mirrors the grammar's generic shape (declarations holding `key = value` entries); meaning
is given to keys and values only by `edgeflow.semantics`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgeflow.span import Span


@dataclass(frozen=True, slots=True)
class Name:
    value: str
    span: Span


@dataclass(frozen=True, slots=True)
class Quantity:
    """A number with an optional unit, as written: `0.5 TFLOPS`, `4`, `-5 Hz`."""

    number: float
    is_integer: bool
    unit: str | None
    number_text: str
    span: Span
    unit_span: Span | None


@dataclass(frozen=True, slots=True)
class String:
    value: str
    span: Span


@dataclass(frozen=True, slots=True)
class Word:
    """A bare identifier in value position: a reference (`on = line_gw`) or an enum (`tier = edge`)."""

    name: str
    span: Span


@dataclass(frozen=True, slots=True)
class Tensor:
    """`float32[1, 3, 320, 320]`; a dimension is a `Quantity` or, when left symbolic, a `Word`."""

    dtype: Name
    dims: tuple[Quantity | Word, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Call:
    """`minimize(latency, cost)`, `quantize(calibration = "data/calib")`: positional arguments
    are values, named ones entries."""

    func: Name
    args: tuple[Value | Entry, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Flow:
    """`camera -> normalize -> detector -> reject_arm`."""

    steps: tuple[Name, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Constraint:
    """`latency < 50 ms`, `throughput >= 30 Hz`."""

    subject: Name
    op: str
    op_span: Span
    bound: Quantity
    span: Span


@dataclass(frozen=True, slots=True)
class ListValue:
    items: tuple[Value, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class MapValue:
    entries: tuple[Entry, ...]
    span: Span


Value = Quantity | String | Word | Tensor | Call | Flow | Constraint | ListValue | MapValue


@dataclass(frozen=True, slots=True)
class Entry:
    """`key = value`; a key is an identifier or a quoted string (for ONNX input names)."""

    key: Name
    value: Value
    span: Span


@dataclass(frozen=True, slots=True)
class Decl:
    """A declaration. For `link A <-> B { ... }` `kind` is "link", `name` is `A` and `peer` is `B`."""

    kind: str
    kind_span: Span
    name: Name
    entries: tuple[Entry, ...]
    span: Span
    peer: Name | None = None
    body_span: Span | None = None


@dataclass(frozen=True, slots=True)
class Module:
    file: str
    decls: tuple[Decl, ...]
    comments: tuple[tuple[Span, str], ...] = field(default=())


VALUE_KIND_NAMES: dict[type, str] = {
    Quantity: "a number",
    String: "a string",
    Word: "a name",
    Tensor: "a tensor type",
    Call: "a call",
    Flow: "a flow",
    Constraint: "a constraint",
    ListValue: "a list",
    MapValue: "a map",
}


def describe(value: Value) -> str:
    """How a value reads in a message: `a number`, `a list`, ..."""
    if isinstance(value, Quantity) and value.unit:
        return "a quantity"
    return VALUE_KIND_NAMES[type(value)]
