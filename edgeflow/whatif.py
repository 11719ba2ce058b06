"""What-if sweeps: `edgeflow plan FILE --sweep PATH=LO..HI[:STEPS][:log]` plans the app again
at each value of one property (two with a second `--sweep`: every pair) and reports how the plan
changes (docs/whatif.md).

A property is named by one path, the declaration's kind, its name and its key as the language
spells them: `device.gpu_pool.compute`, `link.line_gw<->plant_server.bandwidth`,
`sensor.camera.rate`, `pipeline.inspect.slo.latency`. `PROPERTIES` is the one table of the
numeric keys a path may name, with the dimension its values are read in (`20Mbps..1Gbps`) and
the least value each takes; a key missing from it is a usage error that lists the table.

Every point is the app's source with the property's value written in (`edit_source`), checked
and planned exactly as `edgeflow plan` checks and plans a file: a value the checker refuses (a
throughput above the sensor's rate, E0507) makes an `invalid` point that names the error.
Points reuse work: the model analyses (cached by content) and, while the app's structure stays
the same, the previous point's placement among the solver's candidate starts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from edgeflow import ir
from edgeflow.execution import build_execution
from edgeflow.models.variants import materialise
from edgeflow.plan import Plan
from edgeflow.syntax import ast
from edgeflow.syntax.parser import parse
from edgeflow.syntax.units import (
    BANDWIDTH,
    COMPUTE,
    COST_DATA,
    COST_RATE,
    OPS,
    POWER,
    RATE,
    SIZE,
    TIME,
    UNITS,
    WORK,
    Dimension,
    number_text,
    parse_quantity,
    units_of,
)

DEFAULT_STEPS = 11
MAX_POINTS = 2_500  # of a sweep (both parameters together)
SIGNIFICANT = 4  # digits a log-spaced value is rounded to, so that it reads well


@dataclass(frozen=True)
class Property:
    kind: str                    # device, link, sensor, operator, pipeline
    key: str                     # as the language spells it: `compute`, `slo.latency`
    dimension: Dimension | None  # its values' dimension; None: a whole number
    least: float = 0.0           # the smallest value it takes ...
    strict: bool = True          # ... itself excluded (a compute, a rate) or not (a latency)


PROPERTIES: tuple[Property, ...] = (
    Property("device", "compute", COMPUTE),
    Property("device", "memory", SIZE),
    Property("device", "count", None, 1, False),
    Property("device", "power", POWER, 0, False),
    Property("device", "cost", COST_RATE, 0, False),
    Property("device", "message_latency", TIME, 0, False),
    Property("device", "message_bandwidth", BANDWIDTH),
    Property("device", "cpus", None, 1, False),
    Property("device", "worker_memory", SIZE, 0, False),
    Property("device", "broker_memory", SIZE, 0, False),
    Property("device", "driver_memory", SIZE, 0, False),
    Property("device", "compute_int8", OPS),
    Property("link", "bandwidth", BANDWIDTH),
    Property("link", "latency", TIME, 0, False),
    Property("link", "cost", COST_DATA, 0, False),
    Property("sensor", "rate", RATE),
    Property("operator", "work", WORK, 0, False),
    Property("operator", "memory", SIZE, 0, False),
    Property("pipeline", "slo.latency", TIME),
    Property("pipeline", "slo.throughput", RATE),
)
_KINDS = {"device": "devices", "sensor": "sensors", "operator": "operators",
          "pipeline": "pipelines"}


class SweepError(ValueError):
    """A `--sweep` that cannot be run: the message says why (a usage error)."""


@dataclass(frozen=True)
class Sweep:
    path: str                   # as given, e.g. `link.a<->b.bandwidth`
    prop: Property
    name: str                   # the declaration's name; a link's `a<->b`
    values: tuple[float, ...]   # SI
    log: bool = False           # spaced geometrically

    def text(self, value: float) -> str:
        """A value with its unit (`250 Mbps`), a count as a number."""
        return str(int(value)) if self.prop.dimension is None else \
            human(value, self.prop.dimension)


def human(value: float, dimension: Dimension | None) -> str:
    """`value` (SI) in the largest decimal unit of its dimension that keeps it at 1 or more,
    to 4 significant digits, as the language reads it back: 2.5e8 bit/s -> `250 Mbps`."""
    if dimension is None:
        return f"{value:g}"
    units = sorted((u for u in units_of(dimension) if not re.match(r"[KMGT]i", u)),
                   key=lambda u: UNITS[u][1])
    best = units[0]
    for u in units:
        if abs(value) >= UNITS[u][1]:
            best = u
    return f"{value / UNITS[best][1]:.4g} {best}"


def properties_text() -> str:
    return ", ".join(f"{p.kind}.NAME.{p.key}" if p.kind != "link" else
                     f"link.A<->B.{p.key}" for p in PROPERTIES)


def parse_sweep(spec: str, program: ir.Program) -> Sweep:
    """`PATH=LO..HI[:STEPS][:log]` against `program` (the names must exist)."""
    path, sep, rest = spec.partition("=")
    if not sep:
        raise SweepError(f"--sweep takes PATH=LO..HI[:STEPS][:log]; got `{spec}`")
    path = path.strip()
    prop = next((p for p in PROPERTIES if path.startswith(p.kind + ".")
                 and path.endswith("." + p.key)
                 and len(path) > len(p.kind) + len(p.key) + 2), None)
    if prop is None:
        raise SweepError(f"`{path}` names no property a sweep can change; the properties are: "
                         f"{properties_text()}")
    name = path[len(prop.kind) + 1:-len(prop.key) - 1]
    _find(program, prop, name)  # (raises for a name the app does not declare)
    parts = rest.split(":")
    low_high = parts[0].split("..")
    if len(low_high) != 2:
        raise SweepError(f"--sweep {path}: give a range LO..HI, e.g. 20Mbps..1Gbps; got "
                         f"`{parts[0]}`")
    low, high = (_value(prop, t.strip(), path) for t in low_high)
    steps, log, given = DEFAULT_STEPS, False, set()
    for option in (o.strip() for o in parts[1:]):
        kind = "log" if option == "log" else "steps"
        if kind in given:
            raise SweepError(f"--sweep {path}: `:{option}` repeats an option")
        given.add(kind)
        if option == "log":
            log = True
        elif re.fullmatch(r"[0-9]{1,6}", option) and int(option) >= 2:
            steps = int(option)
        else:
            raise SweepError(f"--sweep {path}: `{option}` is neither a number of steps (2 or "
                             "more) nor `log`")
    if low == high:
        raise SweepError(f"--sweep {path}: the range is one value; give LO..HI with LO != HI")
    if log and (low <= 0 or high <= 0):
        raise SweepError(f"--sweep {path}: a log sweep needs values above 0")
    values = _spaced(low, high, steps, log)
    if prop.dimension is None:
        values = sorted({round(v) for v in values}, reverse=high < low)
    return Sweep(path, prop, name, tuple(values), log)


def _value(prop: Property, text: str, path: str) -> float:
    try:
        if prop.dimension is None:
            if not re.fullmatch(r"[0-9]{1,9}", text):
                raise ValueError(text)
            value = float(int(text))
        else:
            value = parse_quantity(text, prop.dimension, positive=prop.strict)
    except ValueError as exc:
        raise SweepError(f"--sweep {path}: {exc}" if prop.dimension is not None else
                         f"--sweep {path}: `{text}` is not a whole number") from None
    if value < prop.least or (prop.strict and value == prop.least):
        raise SweepError(f"--sweep {path}: {text} is out of range (it must be "
                         f"{'above' if prop.strict else 'at least'} {prop.least:g})")
    return value


def _spaced(low: float, high: float, steps: int, log: bool) -> list[float]:
    if log:  # (the ends as given, the points between rounded to read well)
        inner = [low * (high / low) ** (k / (steps - 1)) for k in range(1, steps - 1)]
        return [low, *(float(f"{v:.{SIGNIFICANT}g}") for v in inner), high]
    return [low + (high - low) * k / (steps - 1) for k in range(steps)]


def _find(program: ir.Program, prop: Property, name: str) -> Any:
    if prop.kind == "link":
        ends = [e.strip() for e in name.split("<->")]
        for link in program.links:
            if len(ends) == 2 and {link.a, link.b} == set(ends):
                return link
        links = ", ".join(f"{x.a}<->{x.b}" for x in program.links) or "none"
        raise SweepError(f"no link `{name}` in this app; its links are: {links}")
    table = getattr(program, _KINDS[prop.kind])
    if name not in table:
        raise SweepError(f"no {prop.kind} `{name}` in this app; its {_KINDS[prop.kind]} are: "
                         f"{', '.join(table) or 'none'}")
    return table[name]


def value_text(value: float, dimension: Dimension | None) -> str:
    """`value` (SI) as the language reads it back exactly: a count (no dimension) as a number,
    a quantity to 12 significant digits in the unit `human` chose."""
    if dimension is None:
        return str(round(value))
    unit = human(value, dimension).split(" ", 1)[1]
    return f"{number_text(value / UNITS[unit][1])} {unit}"


def _decl(module: ast.Module, prop: Property, name: str) -> ast.Decl:
    for decl in module.decls:
        if decl.kind != prop.kind:
            continue
        if prop.kind == "link" and decl.peer is not None:
            if {decl.name.value, decl.peer.value} == {e.strip() for e in name.split("<->")}:
                return decl
        elif decl.name.value == name:
            return decl
    raise SweepError(f"no {prop.kind} `{name}` declared in this file")


def edit_source(text: str, module: ast.Module, sweeps: list[Sweep], values: dict[str, float],
                program: ir.Program) -> str:
    """The source `text` (parsed: `module`) with each swept property set to its value in
    `values`: the key's value replaced where the declaration has the key, `key = value` added
    to its block where not (a pipeline's `slo` written whole, with the swept bound and the
    others it had)."""
    edits: list[tuple[int, int, str]] = []
    for sweep in sweeps:
        prop, value = sweep.prop, values[sweep.path]
        decl = _decl(module, prop, sweep.name)
        key = prop.key.split(".")[0]
        if prop.kind == "pipeline":  # slo.latency / slo.throughput
            slo = program.pipelines[sweep.name].slo
            bounds = {"latency": slo.latency_s, "throughput": slo.throughput_hz}
            for other in sweeps:  # (both bounds of one pipeline may be swept)
                if other.prop.kind == "pipeline" and other.name == sweep.name:
                    bounds[other.prop.key.split(".")[1]] = values[other.path]
            items = []
            for bound, op, dimension in (("latency", "<", TIME), ("throughput", ">=", RATE)):
                if (limit := bounds[bound]) is not None:
                    items.append(f"{bound} {op} {value_text(limit, dimension)}")
            new = "[" + ", ".join(items) + "]"
        else:
            new = value_text(value, prop.dimension)
        entry = next((e for e in decl.entries if e.key.value == key), None)
        if entry is not None:
            edits.append((entry.value.span.start, entry.value.span.end, new))
        else:
            assert decl.body_span is not None
            close = decl.body_span.end - 1  # the block's `}`
            edits.append((close, close, f" {key} = {new} "))
    for start, end, new in sorted(set(edits), reverse=True):
        text = text[:start] + new + text[end:]
    return text


@dataclass
class Point:
    values: dict[str, float]          # path -> SI value
    status: str
    objective: dict[str, float]
    latency_s: dict[str, float]       # pipeline -> its worst replica's latency
    placement: dict[str, str]         # unit -> device instance (a split's halves: both)
    cuts: dict[str, list[str]]        # model replica -> the tensors its cut sends
    moved: list[str] = field(default_factory=list)   # units placed elsewhere than before
    recut: list[str] = field(default_factory=list)   # model replicas cut elsewhere
    added: list[str] = field(default_factory=list)   # units that are new (more replicas)
    removed: list[str] = field(default_factory=list)  # units that are gone
    error: str | None = None  # an invalid point: the checker's first error, `CODE: message`
    seconds: float = 0.0

    def to_dict(self, sweeps: list[Sweep]) -> dict[str, Any]:
        return {"values": {s.path: self.values[s.path] for s in sweeps},
                "status": self.status, "objective": self.objective,
                "latency_s": self.latency_s, "placement": self.placement, "cuts": self.cuts,
                "moved": self.moved, "recut": self.recut, "added": self.added,
                "removed": self.removed, "error": self.error}


def _summary(plan: Plan) -> tuple[dict[str, float], dict[str, str], dict[str, list[str]]]:
    latency: dict[str, float] = {}
    for p in plan.pipelines:
        latency[p.name] = max(latency.get(p.name, 0.0), p.latency_s)
    placement = {f"{u.name}[{u.replica}]": u.device + (f" ({u.variant})" if u.variant else "")
                 for u in plan.units}  # a change of variant is a change of placement
    cuts = {f"{s.model}[{s.replica}]": list(s.cut) for s in plan.splits}
    return latency, placement, cuts


def changes(point: Point) -> list[str]:
    """What changed at `point` since the point before, in words, replicas of a unit that went
    to one device (kind) together as one: `blur_faces ×4 -> plant_server`, `detector[0] cut
    /conv3`."""
    moved: dict[tuple[str, str], list[str]] = {}
    for u in point.moved:
        unit, device = u.rsplit("[", 1)[0], point.placement[u].split("[")[0]
        moved.setdefault((unit, device), []).append(u)
    out = [f"{units[0] if len(units) == 1 else f'{unit} ×{len(units)}'} -> "
           f"{point.placement[units[0]] if len(units) == 1 else device}"
           for (unit, device), units in moved.items()]
    out += [f"{m} cut {'+'.join(point.cuts[m]) if point.cuts.get(m) else 'none (whole)'}"
            for m in point.recut]
    if point.added:
        out.append(f"+{len(point.added)} unit{'s' if len(point.added) > 1 else ''}")
    if point.removed:
        out.append(f"-{len(point.removed)} unit{'s' if len(point.removed) > 1 else ''}")
    return out


def grid(sweeps: list[Sweep]) -> list[dict[str, float]]:
    points: list[dict[str, float]] = [{}]
    for s in sweeps:
        points = [{**p, s.path: v} for p in points for v in s.values]
    if len(points) > MAX_POINTS:
        raise SweepError(f"{len(points):,} points; a sweep plans at most {MAX_POINTS:,}")
    return points


def _instance(name: str) -> str:
    """A device instance's name as `kind[i]` whatever its kind's count (`gw` is `gw[0]`), so
    that a count sweep does not report units as moved that stayed."""
    return name if "[" in name else f"{name}[0]"


def run(program: ir.Program, source: str, sweeps: list[Sweep], time_limit: float,
        progress: Callable[[int, int], None] | None = None,
        warm_start: bool = True) -> Iterator[Point]:
    """Check and plan every point of the sweep's grid (the first parameter varies slowest):
    `source` (the text of `program.file`) with the point's values written in. Each point's
    changes are against the point before with the same values of the other parameters; each
    solve may start from the last placement unless not `warm_start`."""
    import time

    from edgeflow.api import check_text
    from edgeflow.placement import WarmStart, make_plan, size_diagnostics

    points = grid(sweeps)
    module, _ = parse(source, program.file)  # (once: every point edits the same declarations)
    # no property of a model is swept (PROPERTIES), so every point has the program's models:
    # its variants are made and measured once, not once a point
    made, unmade = materialise(program)
    warm = WarmStart()
    before: dict[tuple[float, ...], Point] = {}  # by the other parameters' values
    for k, values in enumerate(points):
        started = time.perf_counter()
        checked = check_text(edit_source(source, module, sweeps, values, program),
                             program.file)
        errors = [d for d in checked.diagnostics if d.severity.value == "error"]
        if checked.program is None or errors:
            first = errors[0] if errors else None
            point = Point(values, "invalid", {}, {}, {}, {},
                          error=f"{first.code}: {first.message}" if first else "invalid")
        elif size_diagnostics(checked.program):
            point = Point(values, "too large", {}, {}, {}, {})
        elif unmade:
            point = Point(values, "invalid", {}, {}, {}, {},
                          error=f"{unmade[0].code}: {unmade[0].message}")
        else:
            point_program = checked.program.model_copy(update={"models": made.models})
            plan, _ = make_plan(build_execution(point_program), time_limit,
                                warm=warm if warm_start else None)
            latency, placement, cuts = _summary(plan)
            point = Point(values, plan.status.value, dict(plan.objective), latency, placement,
                          cuts)
        key = tuple(values[s.path] for s in sweeps[1:])
        previous = before.get(key)
        if previous is not None and point.placement:
            point.moved = sorted(u for u, d in point.placement.items()
                                 if u in previous.placement
                                 and _instance(previous.placement[u]) != _instance(d))
            point.added = sorted(set(point.placement) - set(previous.placement))
            point.removed = sorted(set(previous.placement) - set(point.placement))
            point.recut = sorted(m for m in {*point.cuts, *previous.cuts}
                                 if point.cuts.get(m) != previous.cuts.get(m)
                                 and m in point.cuts and m in previous.cuts)
        if point.placement:
            before[key] = point
        point.seconds = time.perf_counter() - started
        if progress is not None:
            progress(k + 1, len(points))
        yield point


def table_text(sweeps: list[Sweep], points: list[Point], pipelines: list[str],
               terms: list[str]) -> str:
    """The sweep as a text table: a row per point."""
    head = [s.path for s in sweeps] + ["status"] + [f"{p} ms" for p in pipelines] + terms + \
        ["changes"]
    rows = []
    for pt in points:
        rows.append([s.text(pt.values[s.path]) for s in sweeps] + [pt.status]
                    + [f"{pt.latency_s[p] * 1e3:.2f}" if p in pt.latency_s else "-"
                       for p in pipelines]
                    + [f"{pt.objective[t]:.6g}" if t in pt.objective else "-" for t in terms]
                    + ["; ".join(changes(pt)) or (pt.error or "")])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    return "\n".join(lines) + "\n"

