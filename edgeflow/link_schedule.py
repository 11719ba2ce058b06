"""`edgeflow run --link`: how an emulated link changes during a run (docs/runtime.md,
"Changing links during a run").

    --link "plant_server<->gpu_pool=bandwidth:200Mbps@0s,20Mbps@5s,down@10s,1Gbps@15s"
    --link "line_gw<->plant_server=bandwidth:1Gbps@0s,50Mbps@10s;latency:5ms@10s"
    --link "line_gw[0]<->plant_server=@trace.txt"

The ends are declared devices (every instance link between them) or instances (`line_gw[0]`).
A schedule is a list per property (`bandwidth`, `latency`) of VALUE@TIME, times in seconds from
the moment the sensors start; `down` as a bandwidth is an outage until the next change. A trace
file holds one change per line, `TIME BANDWIDTH|down [LATENCY]`, `#` starting a comment. Before
the first change, the link's declared values hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeflow.syntax.units import BANDWIDTH, TIME, parse_quantity

KINDS = ("bandwidth", "latency")


class ScheduleError(ValueError):
    """A `--link` option that cannot be used; the message says what is wrong."""


@dataclass(frozen=True)
class Change:
    at_s: float
    bandwidth_bps: float | None = None   # None with `down` False: unchanged
    down: bool = False
    latency_s: float | None = None       # None: unchanged


@dataclass(frozen=True)
class LinkSchedule:
    a: str
    b: str
    changes: tuple[Change, ...]

    def entries(self, bandwidth_bps: float, latency_s: float) -> list[dict[str, object]]:
        """The `schedule` of a links.json link declared with these values: every entry with
        the bandwidth in force (null while down) and the latency when it changes."""
        out: list[dict[str, object]] = []
        bw: float | None = bandwidth_bps
        for c in self.changes:
            if c.down:
                bw = None
            elif c.bandwidth_bps is not None:
                bw = c.bandwidth_bps
            entry: dict[str, object] = {"at_s": c.at_s, "bandwidth_bps": bw}
            if c.latency_s is not None:
                entry["latency_s"] = c.latency_s
            out.append(entry)
        return out


def _value(kind: str, text: str, where: str) -> tuple[float | None, bool]:
    if kind == "bandwidth" and text.strip() == "down":
        return None, True
    try:
        return parse_quantity(text.strip(), BANDWIDTH if kind == "bandwidth" else TIME,
                              positive=kind == "bandwidth"), False
    except ValueError as e:
        raise ScheduleError(f"{where}: {e}") from None


def _time(text: str, where: str) -> float:
    try:
        return parse_quantity(text.strip(), TIME, positive=False)
    except ValueError as e:
        raise ScheduleError(f"{where}: {e}") from None


def _merge(changes: list[Change]) -> tuple[Change, ...]:
    """One change per instant, properties merged; times must increase per property."""
    merged: dict[float, Change] = {}
    for c in sorted(changes, key=lambda c: c.at_s):
        old = merged.get(c.at_s)
        if old is None:
            merged[c.at_s] = c
            continue
        clash = (old.bandwidth_bps is not None or old.down) and \
            (c.bandwidth_bps is not None or c.down) or \
            old.latency_s is not None and c.latency_s is not None
        if clash:
            raise ScheduleError(f"two changes of one property at {c.at_s:g} s")
        merged[c.at_s] = Change(c.at_s, old.bandwidth_bps if old.bandwidth_bps is not None
                                else c.bandwidth_bps, old.down or c.down,
                                old.latency_s if old.latency_s is not None else c.latency_s)
    return tuple(merged[t] for t in sorted(merged))


def _inline(spec: str) -> tuple[Change, ...]:
    changes: list[Change] = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        kind, sep, values = part.partition(":")
        kind = kind.strip()
        if not sep or kind not in KINDS:
            raise ScheduleError(f"`{part}`: write PROPERTY:VALUE@TIME,... with PROPERTY one of "
                                f"{', '.join(KINDS)}")
        last = -1.0
        for item in filter(None, (v.strip() for v in values.split(","))):
            value, at, when = item.partition("@")
            if not at:
                raise ScheduleError(f"`{item}`: write VALUE@TIME, e.g. 20Mbps@5s")
            t = _time(when, f"`{item}`")
            if t <= last:
                raise ScheduleError(f"`{item}`: the {kind} changes must be in time order")
            last = t
            number, down = _value(kind, value, f"`{item}`")
            changes.append(Change(t, bandwidth_bps=number, down=down) if kind == "bandwidth"
                           else Change(t, latency_s=number))
    if not changes:
        raise ScheduleError("the schedule names no change")
    return _merge(changes)


def _trace(path: Path) -> tuple[Change, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ScheduleError(f"cannot read the trace {path}: {e}") from None
    changes: list[Change] = []
    last = -1.0
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#")[0].split()
        if not words:
            continue
        where = f"{path.name} line {number}"
        if len(words) not in (2, 3):
            raise ScheduleError(f"{where}: write TIME BANDWIDTH|down [LATENCY]")
        t = _time(words[0], where)
        if t <= last:
            raise ScheduleError(f"{where}: the times must increase")
        last = t
        bw, down = _value("bandwidth", words[1], where)
        latency = _value("latency", words[2], where)[0] if len(words) == 3 else None
        changes.append(Change(t, bw, down, latency))
    if not changes:
        raise ScheduleError(f"the trace {path} holds no change")
    return tuple(changes)


def parse(option: str, base: Path = Path(".")) -> LinkSchedule:
    """`A<->B=SCHEDULE` or `A<->B=@TRACE` (relative to `base`)."""
    ends, sep, spec = option.partition("=")
    a, arrow, b = ends.partition("<->")
    if not sep or not arrow or not a.strip() or not b.strip():
        raise ScheduleError(f"`{option}`: write A<->B=bandwidth:VALUE@TIME,... or A<->B=@FILE")
    changes = _trace(base / spec.strip()[1:]) if spec.strip().startswith("@") else \
        _inline(spec)
    return LinkSchedule(a.strip(), b.strip(), changes)
