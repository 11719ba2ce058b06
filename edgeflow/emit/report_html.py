"""report.html: the plan as one self-contained page (`edgeflow report`, and `compile` beside
report.md). It reads offline: no script, no network fetch, every picture inline SVG.

- The placed dataflow, drawn here: a lane per tier (edge, fog, cloud, left to right), a box per
  declared device (its instances collapsed, `×N`), the sensors, units and sinks inside it with
  the number of replicas each has there, arrows for the messages that cross devices labelled
  rate × size, and the links between devices coloured by their utilisation. The tiers are the
  layout: boxes are stacked in their lane in declaration order, so no general graph layout
  (Graphviz needs its C library, which pip alone does not install) is needed, and the picture
  stays the same size whatever the device counts (an app of 120 sites draws as one of 2).
- Charts (the latency budget of each pipeline against its SLO, device utilisation) are
  matplotlib's (`edgeflow.plots`), as the sweep charts are.
- Tables: the split decision of each model, the links, the comparison with the baselines.

Numbers are read from the Plan and the execution graph, never recomputed. Text widths are
measured with the DejaVu Sans font matplotlib ships, the page's first font, so boxes fit their
text; the output is byte-identical for the same input.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from edgeflow import __version__, ir
from edgeflow.emit.report import natural
from edgeflow.emit.templating import render
from edgeflow.objectives import TERMS
from edgeflow.plan import Part, Plan

if TYPE_CHECKING:
    from edgeflow.execution import ExecutionGraph, StepKey
    from edgeflow.placement import Baseline

MARK = "edgeflow report"  # in the page's <meta name="generator">: what `report -o` may replace
TIERS = tuple(t.value for t in ir.Tier)
TIER_COLOURS = {"edge": "#2e7d32", "fog": "#ef6c00", "cloud": "#1565c0"}
KIND_COLOURS = {"sensor": "#00897b", "operator": "#546e7a", "model": "#6a1b9a",
                "head": "#8e24aa", "tail": "#8e24aa", "actuator": "#6d4c41",
                "store": "#6d4c41"}
FONT = 12            # px, rows and labels
TITLE_FONT = 13      # px, a box's device name (bold)
SMALL_FONT = 10.5    # px, a box's figures and arrow labels
LINE = 18            # px per row
PAD = 10             # px inside a box
LANE_GAP = 230       # px between lanes: room for the arrows' labels
BOX_GAP = 34         # px between boxes in a lane
LANE_HEAD = 34       # px above the first box: the lane's title
MIN_BOX = 190        # px, narrowest box


def utilisation_colour(share: float) -> str:
    """Green below 50 %, amber below 80 %, red from 80 % (docs/report.md)."""
    return "#2e7d32" if share < 0.5 else "#f9a825" if share < 0.8 else "#c62828"


def human_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:g} B"


def human_memory(n: float) -> str:
    """Memory as declared: binary units."""
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:g} B"


def human_flops(f: float) -> str:
    for unit, size in (("PFLOPS", 1e15), ("TFLOPS", 1e12), ("GFLOPS", 1e9), ("MFLOPS", 1e6)):
        if f >= size:
            return f"{f / size:.3g} {unit}"
    return f"{f:g} FLOPS"


def human_rate(bps: float) -> str:
    for unit, size in (("Gbps", 1e9), ("Mbps", 1e6), ("kbps", 1e3)):
        if bps >= size:
            return f"{bps / size:.3g} {unit}"
    return f"{bps:g} bps"


def _span(items: Sequence[int]) -> str:
    """Replica numbers as ranges: 0–3, 5, 7–8."""
    out: list[str] = []
    ordered = sorted(items)
    start = prev = ordered[0]
    for r in [*ordered[1:], None]:
        if r is not None and r == prev + 1:
            prev = r
            continue
        out.append(f"{start}–{prev}" if prev > start else str(start))
        if r is not None:
            start = prev = r
    return ", ".join(out)


# ---- text widths ------------------------------------------------------------------------------

@lru_cache(maxsize=2)
def _font(bold: bool) -> object:
    import matplotlib
    from matplotlib import ft2font

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ft2font.FT2Font(str(Path(matplotlib.get_data_path(), "fonts", "ttf", name)))


@lru_cache(maxsize=4096)
def text_width(text: str, size: float, bold: bool = False) -> float:
    """Pixels `text` takes at `size` px in DejaVu Sans."""
    font = _font(bold)
    font.set_size(size, 72)  # type: ignore[attr-defined]
    font.set_text(text, 0.0)  # type: ignore[attr-defined]
    width: int = font.get_width_height()[0]  # type: ignore[attr-defined]
    return width / 64


# ---- what the picture shows -------------------------------------------------------------------

@dataclass
class Row:
    """A sensor, unit or sink in a device box, with the replicas of it on that device."""

    label: str
    kind: str
    order: tuple[int, int]
    replicas: set[tuple[str, int | None]] = field(default_factory=set)  # (instance, replica)
    variants: set[str] = field(default_factory=set)  # a model's variants run here


@dataclass
class Group:
    """A declared device: its instances drawn as one box."""

    device: ir.Device
    rows: dict[str, Row] = field(default_factory=dict)
    compute: float = 0.0      # the busiest instance's shares
    cpu: float = 0.0
    memory_bytes: float = 0.0


@dataclass
class Flow:
    """Messages from one row to another across devices, over every replica."""

    source: tuple[str, str]   # (device, row label)
    target: tuple[str, str]
    rate_hz: float
    sizes: set[int] = field(default_factory=set)
    replicas: set[int | None] = field(default_factory=set)


Endpoint = tuple[str, str, str, tuple[int, int]]  # instance, row label, kind, order
THE_MODEL = "the model"  # how a model's own version is named beside its variants


def _endpoints(execution: ExecutionGraph, plan: Plan
               ) -> dict[StepKey, tuple[Endpoint, Endpoint, list[Endpoint]]]:
    """Per step: where its input arrives, where its output leaves, and every part it runs as."""
    placed: dict[tuple[str, int], dict[Part, str]] = {}
    for u in plan.units:
        placed.setdefault((u.step, u.replica), {})[u.part] = u.device
    out = {}
    graph = execution.dataflow.graph
    for key, step in execution.steps.items():
        name, replica = key
        index = graph.nodes[name]["order"]  # rows in dataflow order
        if step.device is not None:  # a sensor or sink sits on its device
            here: Endpoint = (step.device, name, step.kind, (index, 0))
            out[key] = (here, here, [here])
            continue
        parts = placed.get((name, replica if replica is not None else 0), {})
        ends = {p: (d, f"{name}.{p.value}" if p in (Part.HEAD, Part.TAIL) else name,
                    p.unit_kind if p in (Part.HEAD, Part.TAIL) else step.kind,
                    (index, 1 if p is Part.TAIL else 0)) for p, d in parts.items()}
        if not ends:
            continue
        first = ends.get(Part.HEAD) or next(iter(ends.values()))
        last = ends.get(Part.TAIL) or next(iter(ends.values()))
        out[key] = (first, last, list(ends.values()))
    return out


def build_picture(execution: ExecutionGraph, plan: Plan) -> tuple[dict[str, Group], list[Flow]]:
    """The device boxes (declaration order) and the flows between them."""
    program = execution.program
    group_of = {inst: d.name for inst, (d, _) in execution.instances.items()}
    groups = {name: Group(d) for name, d in program.devices.items()}
    ends = _endpoints(execution, plan)
    variant = {(u.step, u.replica): u.variant for u in plan.units}
    for key, (_, _, parts) in ends.items():
        for inst, label, kind, order in parts:
            row = groups[group_of[inst]].rows.setdefault(label, Row(label, kind, order))
            row.replicas.add((inst, key[1]))
            if program.models.get(key[0]) is not None and program.models[key[0]].variants:
                row.variants.add(variant.get((key[0], key[1] or 0)) or THE_MODEL)
    for use in plan.devices:
        g = groups[group_of[use.device]]
        g.compute, g.cpu = max(g.compute, use.utilization), max(g.cpu, use.cpu)
        g.memory_bytes = max(g.memory_bytes, use.memory_bytes)
    flows: dict[tuple[tuple[str, str], tuple[str, str]], Flow] = {}

    def add(a: Endpoint, b: Endpoint, rate: float, size: int, replica: int | None) -> None:
        if a[0] == b[0]:
            return  # on one instance: no network crossed
        key = ((group_of[a[0]], a[1]), (group_of[b[0]], b[1]))
        flow = flows.setdefault(key, Flow(key[0], key[1], rate))
        flow.sizes.add(size)
        flow.replicas.add(replica)

    for u, v in execution.edges:
        if u in ends and v in ends:
            step = execution.steps[u]
            add(ends[u][1], ends[v][0], step.rate_hz, step.out_bytes, u[1])
    for s in plan.splits:
        key = (s.model, s.replica)
        if key in ends:
            add(ends[key][0], ends[key][1], execution.steps[key].rate_hz, s.transfer_bytes,
                s.replica)
    return groups, sorted(flows.values(), key=lambda f: (natural(f.source[0] + f.source[1]),
                                                         natural(f.target[0] + f.target[1])))


# ---- the dataflow drawing ---------------------------------------------------------------------

@dataclass
class Box:
    x: float
    y: float
    w: float
    h: float
    lane: int
    rows: list[Row]

    def row_y(self, label: str) -> float:
        for i, r in enumerate(self.rows):
            if r.label == label:
                return self.y + _HEAD_H + i * LINE + LINE / 2
        return self.y + self.h / 2


_HEAD_H = PAD + 18 + 16 + 14 + 4  # name, figures, compute bar


def _box_lines(g: Group) -> tuple[str, str]:
    d = g.device
    title = d.name if d.count == 1 else f"{d.name} ×{d.count}"
    figures = f"{d.tier.value} · {human_flops(d.compute_flops)} · " \
              f"{human_memory(d.memory_bytes)} RAM"
    return title, figures


def _box_title(g: Group, feasible: bool) -> str:
    d = g.device
    text = f"{d.name}: {d.count} instance{'s' if d.count > 1 else ''} at the {d.tier.value}"
    if feasible:
        text += f"; the busiest uses {g.compute:.1%} of its compute, {g.cpu:.1%} of its CPU " \
                f"and {human_memory(g.memory_bytes)} of {human_memory(d.memory_bytes)}"
    return text


def _row_text(row: Row) -> str:
    n = len(row.replicas)
    text = f"{row.label} ×{n}" if n > 1 else row.label
    return text + (f" ({', '.join(sorted(row.variants))})" if row.variants else "")


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


class _Canvas:
    """What the drawing covers (for its viewBox) and where labels are: each label is put where
    it overlaps no box and no other label, the nearest free place above or below its spot."""

    def __init__(self) -> None:
        self.taken: list[tuple[float, float, float, float]] = []
        self.low = [float("inf"), float("inf")]
        self.high = [float("-inf"), float("-inf")]

    def cover(self, x: float, y: float, w: float = 0.0, h: float = 0.0) -> None:
        self.low = [min(self.low[0], x), min(self.low[1], y)]
        self.high = [max(self.high[0], x + w), max(self.high[1], y + h)]

    def block(self, x: float, y: float, w: float, h: float) -> None:
        self.taken.append((x, y, w, h))
        self.cover(x, y, w, h)

    def place(self, x: float, y: float, w: float, h: float) -> tuple[float, float]:
        for k in range(60):
            dy = (k + 1) // 2 * (h + 2) * (1 if k % 2 else -1)
            rect = (x - w / 2, y + dy - h / 2, w, h)
            if not any(rect[0] < t[0] + t[2] and t[0] < rect[0] + rect[2] and
                       rect[1] < t[1] + t[3] and t[1] < rect[1] + rect[3] for t in self.taken):
                self.block(*rect)
                return x, y + dy
        self.block(x - w / 2, y - h / 2, w, h)
        return x, y

    def label(self, x: float, y: float, text: str, css: str, colour: str = "#222") -> str:
        w, h = text_width(text, SMALL_FONT) + 8, SMALL_FONT + 6
        x, y = self.place(x, y, w, h)
        return (f'<g class="{css}"><rect x="{x - w / 2:.1f}" y="{y - h / 2:.1f}" '
                f'width="{w:.1f}" height="{h:.1f}" rx="3" fill="#fff" fill-opacity="0.92"/>'
                f'<text x="{x:.1f}" y="{y + SMALL_FONT * 0.35:.1f}" text-anchor="middle" '
                f'font-size="{SMALL_FONT}" fill="{colour}">{_esc(text)}</text></g>')


CHANNEL = 16  # px between the tracks, above the boxes, of connections that skip a lane


def _connector(canvas: _Canvas, a: Box, ya: float, b: Box, yb: float, loop: float,
               track: float | None) -> tuple[str, float, float]:
    """An SVG path from box `a` at height `ya` to box `b` at `yb`, and where its label goes:
    between neighbouring lanes a curve across the gap (rightwards in lane order, leftwards
    against it); across a lane, up to its `track` above the boxes, along it and down, so it
    crosses no box; within one lane, a loop `loop` px out of the boxes' side (left if < 0)."""
    if a.lane == b.lane:
        x1 = a.x + a.w if loop > 0 else a.x
        out = x1 + loop
        canvas.cover(min(x1, out), min(ya, yb), abs(loop), abs(yb - ya))
        return (f"M{x1:.1f},{ya:.1f} C{out:.1f},{ya:.1f} {out:.1f},{yb:.1f} {x1:.1f},{yb:.1f}",
                x1 + loop * 0.75, (ya + yb) / 2)
    x1, x2 = (a.x + a.w, b.x) if a.lane < b.lane else (a.x, b.x + b.w)
    if track is None:
        dx = (x2 - x1) / 2
        return ((f"M{x1:.1f},{ya:.1f} C{x1 + dx:.1f},{ya:.1f} {x2 - dx:.1f},{yb:.1f} "
                f"{x2:.1f},{yb:.1f}"), (x1 + x2) / 2, (ya + yb) / 2)
    step = 30.0 if x2 > x1 else -30.0
    return ((f"M{x1:.1f},{ya:.1f} C{x1 + step:.1f},{ya:.1f} {x1 + step:.1f},{track:.1f} "
            f"{x1 + 2 * step:.1f},{track:.1f} L{x2 - 2 * step:.1f},{track:.1f} "
            f"C{x2 - step:.1f},{track:.1f} {x2 - step:.1f},{yb:.1f} {x2:.1f},{yb:.1f}"),
            (x1 + x2) / 2, track)


def dataflow_svg(program: ir.Program, plan: Plan, groups: dict[str, Group],
                 flows: list[Flow]) -> str:
    """The placed dataflow: tier lanes, device boxes with their rows, links, flows."""
    lanes = [t for t in TIERS if any(g.device.tier.value == t for g in groups.values())]
    lane_of = {name: lanes.index(g.device.tier.value) for name, g in groups.items()}
    skipping = [(link.a, link.b) for link in program.links] + \
        [(f.source[0], f.target[0]) for f in flows]
    tracks = sum(abs(lane_of[a] - lane_of[b]) > 1 for a, b in skipping)
    top = 20.0 + LANE_HEAD + (tracks * CHANNEL + 8 if tracks else 0)  # boxes below the tracks
    widths = {}
    for name, g in groups.items():
        title, figures = _box_lines(g)
        widths[name] = max([MIN_BOX, text_width(title, TITLE_FONT, True) + 2 * PAD,
                            text_width(figures, SMALL_FONT) + 2 * PAD] +
                           [text_width(_row_text(r), FONT) + 2 * PAD + 14
                            for r in g.rows.values()])
    lane_w = {t: max(widths[n] for n, g in groups.items() if g.device.tier.value == t)
              for t in lanes}
    canvas = _Canvas()
    canvas.cover(0, 0, MIN_BOX + 80, top)
    boxes: dict[str, Box] = {}
    x = 20.0
    lane_x = {}
    for k, t in enumerate(lanes):
        lane_x[t] = x
        y = top
        for name, g in groups.items():
            if g.device.tier.value != t:
                continue
            rows = sorted(g.rows.values(), key=lambda r: r.order)
            h = _HEAD_H + max(1, len(rows)) * LINE + PAD
            boxes[name] = Box(x, y, lane_w[t], h, k, rows)
            canvas.block(x - 4, y - 4, lane_w[t] + 8, h + 8)  # no label over a box
            y += h + BOX_GAP
        x += lane_w[t] + LANE_GAP
    track = iter(20.0 + LANE_HEAD + 8 + CHANNEL * k for k in range(tracks))

    def track_for(a: Box, b: Box) -> float | None:
        return next(track) if abs(a.lane - b.lane) > 1 else None

    body: list[str] = []
    link_use: dict[frozenset[str], float] = {}
    group_of = {inst: name for name, d in program.devices.items() for inst in d.instances()}
    for use in plan.links:
        key = frozenset((group_of[use.source], group_of[use.target]))
        link_use[key] = max(link_use.get(key, 0.0), use.utilization)
    for link in program.links:  # the links, under the boxes
        a, b = boxes[link.a], boxes[link.b]
        if a.lane > b.lane or (a.lane == b.lane and a.y > b.y):
            a, b = b, a
        share = link_use.get(frozenset((link.a, link.b)), 0.0)
        colour = utilisation_colour(share) if plan.feasible else "#9e9e9e"
        # within a lane: a loop on the left, so that the flows keep the right
        path, mx, my = _connector(canvas, a, a.y + a.h / 2, b, b.y + b.h / 2, -60,
                                  track_for(a, b))
        text = f"{human_rate(link.bandwidth_bps)} · {link.latency_s * 1e3:g} ms"
        if plan.feasible:
            text += f" · {share:.0%} used"
        body.append(f'<g class="link" data-link="{_esc(link.a)}&lt;-&gt;{_esc(link.b)}">'
                    f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="7" '
                    f'stroke-opacity="0.45" stroke-linecap="round"/>'
                    f'<title>{_esc(link.a)} ↔ {_esc(link.b)}: {_esc(text)}</title></g>')
        body.append(canvas.label(mx, my + (22 if a.lane != b.lane else 0), text,
                                 "link-label", colour))
    for name, box in boxes.items():  # the devices
        body.append(_device_svg(groups[name], box, plan.feasible))
    for k, flow in enumerate(flows):  # the messages across devices, on top
        a, b = boxes[flow.source[0]], boxes[flow.target[0]]
        ya, yb = a.row_y(flow.source[1]), b.row_y(flow.target[1])
        path, mx, my = _connector(canvas, a, ya, b, yb, 36 + 10 * (k % 4), track_for(a, b))
        sizes = sorted(flow.sizes)
        size = human_bytes(sizes[0]) if len(sizes) == 1 else \
            f"{human_bytes(sizes[0])}–{human_bytes(sizes[-1])}"
        n = len(flow.replicas)
        text = f"{flow.rate_hz:g} Hz × {size}" + (f" (×{n})" if n > 1 else "")
        body.append(f'<g class="flow" data-from="{_esc(flow.source[1])}" '
                    f'data-to="{_esc(flow.target[1])}"><path d="{path}" fill="none" '
                    f'stroke="#37474f" stroke-width="1.4" marker-end="url(#arrow)"/>'
                    f'<title>{_esc(flow.source[1])} on {_esc(flow.source[0])} → '
                    f'{_esc(flow.target[1])} on {_esc(flow.target[0])}: {_esc(text)}</title>'
                    f'</g>')
        body.append(canvas.label(mx, my, text, "flow-label"))
    # the viewBox covers every box, loop and label; lanes span it from top to bottom
    left, upper = canvas.low[0] - 12, 0.0
    width, height = canvas.high[0] + 24 - left, canvas.high[1] + 22
    lanes_svg = [f'<g class="lane" data-tier="{t}"><rect x="{lane_x[t] - 12:.1f}" y="8" '
                 f'width="{lane_w[t] + 24:.1f}" height="{height - 16:.1f}" rx="8" '
                 f'fill="{TIER_COLOURS[t]}" fill-opacity="0.06"/>'
                 f'<text x="{lane_x[t]:.1f}" y="{20 + LANE_HEAD / 2:.1f}" '
                 f'font-size="{TITLE_FONT}" font-weight="bold" fill="{TIER_COLOURS[t]}">'
                 f'{t.upper()}</text></g>' for t in lanes]
    # as wide as drawn, narrower (scaled) where the page is: every box stays in view
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" class="dataflow" width="100%" '
            f'style="max-width:{width:.0f}px" viewBox="{left:.0f} {upper:.0f} {width:.0f} '
            f'{height:.0f}" role="img" aria-label="placed dataflow of '
            f'{_esc(program.app.name)}">'
            '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
            'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
            'fill="#37474f"/></marker></defs>')
    return "".join([head, *lanes_svg, *body, "</svg>"])


def _device_svg(g: Group, box: Box, feasible: bool) -> str:
    """A device's box: its name and figures, its compute bar, a line per row."""
    title, figures = _box_lines(g)
    tier = g.device.tier.value
    bar_w = box.w - 2 * PAD
    out = [(f'<g class="device" data-device="{_esc(g.device.name)}">'
           f'<rect class="box" x="{box.x:.1f}" y="{box.y:.1f}" width="{box.w:.1f}" '
           f'height="{box.h:.1f}" rx="6" fill="#fff" stroke="{TIER_COLOURS[tier]}" '
           f'stroke-width="1.5"/>'
           f'<rect x="{box.x:.1f}" y="{box.y:.1f}" width="{box.w:.1f}" height="4" '
           f'fill="{TIER_COLOURS[tier]}"/>'
           f'<text x="{box.x + PAD:.1f}" y="{box.y + PAD + 13:.1f}" '
           f'font-size="{TITLE_FONT}" font-weight="bold">{_esc(title)}</text>'
           f'<text x="{box.x + PAD:.1f}" y="{box.y + PAD + 30:.1f}" '
           f'font-size="{SMALL_FONT}" fill="#555">{_esc(figures)}</text>'
           f'<title>{_esc(_box_title(g, feasible))}</title>')]
    if feasible:
        share = min(g.compute, 1.0)
        out.append(f'<rect x="{box.x + PAD:.1f}" y="{box.y + PAD + 38:.1f}" '
                   f'width="{bar_w:.1f}" height="6" rx="3" fill="#eceff1"/>'
                   f'<rect x="{box.x + PAD:.1f}" y="{box.y + PAD + 38:.1f}" '
                   f'width="{bar_w * share:.1f}" height="6" rx="3" '
                   f'fill="{utilisation_colour(g.compute)}"><title>compute '
                   f'{g.compute:.1%} on the busiest instance</title></rect>')
    for i, row in enumerate(box.rows):
        y = box.y + _HEAD_H + i * LINE
        where = _span(sorted(r for _, r in row.replicas if r is not None)) \
            if any(r is not None for _, r in row.replicas) else "shared"
        out.append(f'<g class="row" data-row="{_esc(row.label)}">'
                   f'<rect x="{box.x + PAD:.1f}" y="{y + 4:.1f}" width="9" height="9" '
                   f'rx="2" fill="{KIND_COLOURS.get(row.kind, "#546e7a")}"/>'
                   f'<text x="{box.x + PAD + 14:.1f}" y="{y + 13:.1f}" '
                   f'font-size="{FONT}">{_esc(_row_text(row))}</text>'
                   f'<title>{_esc(row.kind)} {_esc(row.label)}, replicas {where}</title>'
                   f'</g>')
    if not box.rows:
        out.append(f'<text x="{box.x + PAD:.1f}" y="{box.y + _HEAD_H + 13:.1f}" '
                   f'font-size="{FONT}" font-style="italic" fill="#888">'
                   f'{"nothing placed here" if feasible else "no plan"}</text>')
    out.append("</g>")
    return "".join(out)


# ---- tables -----------------------------------------------------------------------------------

def _splits(execution: ExecutionGraph, plan: Plan) -> list[dict[str, str]]:
    """A row per model and decision: its replicas grouped by where its parts run and its cut."""
    program = execution.program
    group_of = {inst: d.name for inst, (d, _) in execution.instances.items()}
    cuts = {(s.model, s.replica): s for s in plan.splits}
    rows = []
    for name, model in program.models.items():
        decisions: dict[tuple[str, ...], list[int]] = {}
        for u in plan.units:
            if u.step != name or u.part is Part.TAIL:
                continue
            s = cuts.get((name, u.replica))
            which = f" (variant {u.variant})" if u.variant else ""
            if s is None:
                key: tuple[str, ...] = ("whole", group_of[u.device] + which)
            else:
                tail = next(t.device for t in plan.units if t.step == name and
                            t.replica == u.replica and t.part is Part.TAIL)
                total = s.head_work_flop + s.tail_work_flop
                key = ("split", group_of[u.device] + which, group_of[tail], ", ".join(s.cut),
                       human_bytes(s.transfer_bytes),
                       f"{s.head_work_flop / total:.0%}" if total else "—")
            decisions.setdefault(key, []).append(u.replica)
        for key, replicas in decisions.items():
            if key[0] == "whole":
                what = f"whole on {key[1]}"
                why = "splitting was not allowed (split = none)" \
                    if model.split == "none" else "no cut beats running it whole"
                rows.append({"model": name, "replicas": _span(replicas), "decision": what,
                             "cut": "—", "transfer": "—", "head": why})
            else:
                rows.append({"model": name, "replicas": _span(replicas),
                             "decision": f"head on {key[1]}, tail on {key[2]}", "cut": key[3],
                             "transfer": key[4], "head": f"{key[5]} of the work in the head"})
    return rows


def _comparison(plan: Plan, baselines: Sequence[Baseline], order: Sequence[str]
                ) -> tuple[list[str], list[dict[str, object]]]:
    head = [f"{t} ({TERMS[t].unit})" for t in order]
    rows: list[dict[str, object]] = []
    best = plan.objective if plan.feasible else None
    entries: list[tuple[str, dict[str, float] | None, bool, str | None]] = \
        ([("edgeflow", plan.objective, True, None)] if plan.feasible else []) + \
        [(b.name, b.objective, b.feasible, b.reason) for b in baselines]
    for name, objective, feasible, reason in entries:
        cells = []
        for t in order:
            if objective is None or t not in objective:
                cells.append("—")
                continue
            value = f"{TERMS[t].shown(objective[t]):.{TERMS[t].digits}f}"
            if best is not None and name != "edgeflow" and best.get(t):
                value += f" (×{objective[t] / best[t]:.2f})"
            cells.append(value)
        rows.append({"name": name, "cells": cells,
                     "status": (reason or "not applicable (no cloud device)")
                     if objective is None else
                     "feasible" if feasible else f"infeasible: {reason}" if reason else
                     "infeasible"})
    return head, rows


def _latency_rows(execution: ExecutionGraph, plan: Plan) -> list[dict[str, str]]:
    rows = []
    for p in plan.worst_pipelines():
        n = sum(1 for q in plan.pipelines if q.name == p.name)
        slo = f"{p.slo_latency_s * 1e3:g} ms" if p.slo_latency_s is not None else "—"
        rows.append({"name": p.name, "latency": f"{p.latency_s * 1e3:.3f} ms", "slo": slo,
                     "met": "met" if p.met else "MISSED",
                     "replicas": f"worst of {n}" if n > 1 else "1"})
    return rows


def _device_rows(groups: dict[str, Group], feasible: bool) -> list[dict[str, str]]:
    return [{"device": name, "tier": g.device.tier.value, "count": str(g.device.count),
             "compute": f"{g.compute:.1%}" if feasible else "—",
             "cpu": f"{g.cpu:.1%}" if feasible else "—",
             "memory": (f"{human_memory(g.memory_bytes)} of " if feasible else "— of ") +
                       human_memory(g.device.memory_bytes)} for name, g in groups.items()]


def _link_rows(program: ir.Program, plan: Plan) -> list[dict[str, str]]:
    group_of = {inst: name for name, d in program.devices.items() for inst in d.instances()}
    use: dict[tuple[str, str], list[float]] = {}
    for u in plan.links:
        use.setdefault((group_of[u.source], group_of[u.target]), []).append(u.utilization)
    rows = []
    for link in program.links:
        for a, b in ((link.a, link.b), (link.b, link.a)):
            shares = use.get((a, b))
            if not shares:
                continue
            rows.append({"link": f"{a} → {b}", "bandwidth": human_rate(link.bandwidth_bps),
                         "used": f"{max(shares):.1%}" + (f" (busiest of {len(shares)})"
                                                         if len(shares) > 1 else ""),
                         "colour": utilisation_colour(max(shares)),
                         "width": f"{min(max(shares), 1.0) * 100:.1f}"})
    return rows


def _inline(svg: bytes) -> str:
    """A matplotlib SVG as markup inside the page: no XML prolog, scaled to the column."""
    text = svg.decode()
    text = text[text.index("<svg"):]
    return re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1 class="chart"', text,
                  count=1)


def render_html_report(execution: ExecutionGraph, plan: Plan,
                       baselines: Sequence[Baseline] = (), source: str = "") -> str:
    """The page, for a plan of any status (an infeasible one shows why)."""
    from edgeflow.plots import latency_chart, utilisation_chart

    program = execution.program
    groups, flows = build_picture(execution, plan)
    order = (*program.app.objective, *(t for t in TERMS if t not in program.app.objective))
    head, comparison = _comparison(plan, baselines, order)
    latency = utilisation = ""
    if plan.feasible and plan.pipelines:
        latency = _inline(latency_chart(program, plan))
    if plan.feasible and groups:
        utilisation = _inline(utilisation_chart(
            [(n, g.device.tier.value, g.compute, g.cpu, g.memory_bytes / g.device.memory_bytes)
             for n, g in groups.items()]))
    return render("report/report.html.j2", mark=MARK, version=__version__, app=program.app,
                  source=source or program.file, plan=plan,
                  objective=[(t, f"{TERMS[t].shown(v):.{TERMS[t].digits}f} {TERMS[t].unit}")
                             for t, v in plan.objective.items()],
                  dataflow=dataflow_svg(program, plan, groups, flows),
                  tier_colours=TIER_COLOURS, kind_colours=KIND_COLOURS,
                  pipelines=_latency_rows(execution, plan) if plan.feasible else
                  [{"name": p} for p in program.pipelines],
                  latency_chart=latency, utilisation_chart=utilisation,
                  devices=_device_rows(groups, plan.feasible), links=_link_rows(program, plan),
                  splits=_splits(execution, plan) if plan.feasible else [],
                  comparison_head=head, comparison=comparison,
                  explanation=[r.message for r in plan.explanation])
