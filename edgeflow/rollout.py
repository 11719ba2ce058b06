"""`edgeflow run --rollout MODEL=FILE.onnx[@T]`: a new version of a model handed to the running
app, wave by wave (docs/training.md, "Rollout"). This module is the decision logic only: no
process, no file but the one `parse` names, no clock. `edgeflow.local_run` drives it with the
time and what the workers and sinks report.

**Versions.** A version is the first `VERSION_CHARS` (12) hex digits of the sha256 of its ONNX
file. The worker of a whole model stamps it on every message it sends (`version` in the header);
the units after it pass it on (an operator with several inputs: its first input's), and the next
whole model stamps its own. So a sink row's `version` is that of the last whole model on the
frame's path, and a rollout is measured on the pipelines through the model with no other model
after it.

**Waves.** A model with `rollout = { waves = [s1, ..., 1], health = [...], hold = H }` and R
replicas gets the new version in waves: wave i runs it on the first ceil(s_i x R) replicas in
replica order (0, 1, ...; at least one), so every wave holds the replicas of the one before and
the last holds them all. A wave that adds no replica (few replicas, close shares) is still held
and judged: it measures the same replicas longer. A model without `rollout` gets the version on
every replica at once, with no hold and no health gate: the rollout completes when every replica
runs it.

**A wave's window.** The wave's window opens when the last replica it adds reports that it runs
the new version (each worker swaps between two frames and says when) and lasts `hold`. The
wave's frames are the frames due from the sensors of the wave's replicas (every pipeline through
the model, each replica's sensor instance) in the window: a sensor sends frame n at t0 + n / rate
(t0 read from the frames that arrive), so every one of them reaches the model after the switch,
and the new version is what runs it. The window is judged `grace` seconds after it closes, once
its last frames had time to reach the sinks.

**Health.** Measured on the wave's frames:

- `latency_p50`, `latency_p95`, `latency_p99`: percentiles (linear interpolation, as run.json's)
  of the sensor-to-sink latency (arrival at the sink minus capture) of the wave's frames that
  arrived carrying the new version;
- `drops`: the fraction of the wave's frames that had not arrived when the wave was judged,
  whatever the cause (dropped by a worker, lost, still queued, never sent by a late sensor):
  (due - arrived) / due.

A rule holds when its measured value compares with its bound as written (`latency_p95 < 0.1`).
A rule with nothing to measure (no frame due, none arrived) does not hold: a wave must show its
health. A wave also fails when a replica cannot load the version (its worker keeps the running
one and says why) or does not switch within `SWITCH_TIMEOUT_S`. A failed wave rolls every replica
back to the running version; a passed wave starts the next; after the last the rollout is
complete. A run that ends first leaves the rollout unfinished (run.json says where it was).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgeflow import ir
from edgeflow.syntax.units import TIME, parse_quantity

DEFAULT_START_S = 2.0
"""Seconds after the sensors start at which a rollout begins when the option names no time."""
VERSION_CHARS = 12
"""A version is this many hex digits of its file's sha256."""
SWITCH_TIMEOUT_S = 30.0
"""A replica that has not switched (or switched back) this long after being asked fails the wave."""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class RolloutSpecError(ValueError):
    """A `--rollout` option that cannot be used; the message says what is wrong."""


@dataclass(frozen=True)
class RolloutSpec:
    """`--rollout MODEL=FILE.onnx[@T]`: hand `model` the version in `file`, `start_s` seconds
    after the sensors start."""

    model: str
    file: Path
    start_s: float = DEFAULT_START_S


def parse(spec: str) -> RolloutSpec:
    """`MODEL=FILE.onnx[@T]` (T a time such as `5s` or `500ms`, default `DEFAULT_START_S`).
    Only the text is read here: whether the file exists and fits the model is checked when the
    run starts."""
    name, sep, rest = spec.partition("=")
    name, rest = name.strip(), rest.strip()
    if not sep or not name or not rest:
        raise RolloutSpecError(f"`{spec}` is not MODEL=FILE.onnx[@TIME] (e.g. "
                               "risk_classifier=versions/v2.onnx@5s)")
    if not _NAME.fullmatch(name):
        raise RolloutSpecError(f"`{name}` is not a model name")
    start = DEFAULT_START_S
    file, at, when = rest.rpartition("@")
    # `@` followed by a path is part of the file's name, not a time
    if at and "/" not in when and not when.lower().endswith(".onnx"):
        try:
            start = parse_quantity(when.strip(), TIME, positive=False)
        except ValueError as e:
            raise RolloutSpecError(f"`{spec}`: the time after @: {e}") from None
        rest = file.strip()
        if not rest:
            raise RolloutSpecError(f"`{spec}` names no file before @")
    return RolloutSpec(name, Path(rest), start)


# ---- waves -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wave:
    index: int                    # 0 for the first
    share: float                  # of the model's replicas
    replicas: tuple[int, ...]     # every replica running the new version in this wave
    added: tuple[int, ...]        # those it adds to the wave before


def wave_size(share: float, count: int) -> int:
    """Replicas in a wave of `share` of `count`: ceil(share x count), at least 1 (a share is
    above 0), at most `count`. The product is rounded to 9 digits first, so that 0.3 x 10 is 3
    and not 4."""
    if count <= 0:
        return 0
    return max(1, min(count, math.ceil(round(share * count, 9))))


def members(share: float, replicas: Sequence[int]) -> tuple[int, ...]:
    """The replicas of a wave of `share`: the first `wave_size` in replica order."""
    ordered = sorted(replicas)
    return tuple(ordered[:wave_size(share, len(ordered))])


def plan_waves(rollout: ir.Rollout | None, replicas: Sequence[int]) -> tuple[Wave, ...]:
    """The waves of a rollout over `replicas`; without `rollout`, one wave of every replica."""
    shares = rollout.waves if rollout is not None else (1.0,)
    out: list[Wave] = []
    before: tuple[int, ...] = ()
    for i, share in enumerate(shares):
        now = members(share, replicas)
        out.append(Wave(i, share, now, tuple(r for r in now if r not in before)))
        before = now
    return tuple(out)


# ---- measuring a wave --------------------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    """One frame at a sink of a pipeline through the model."""

    pipeline: str
    replica: int
    frame: int                    # the sensor's sequence number
    captured: float               # at the sensor, seconds since the epoch
    received: float               # at the sink
    version: str | None


@dataclass(frozen=True)
class Figures:
    """What a wave's frames measured (docs of this module: "Health")."""

    due: int                      # frames the wave's sensors sent in the window
    arrived: int                  # of them, arrived at their sink
    frames: int                   # of them, arrived carrying the new version
    latency_p50_s: float | None
    latency_p95_s: float | None
    latency_p99_s: float | None
    drops: float | None           # (due - arrived) / due; None when nothing was due

    def value(self, metric: str) -> float | None:
        return {"latency_p50": self.latency_p50_s, "latency_p95": self.latency_p95_s,
                "latency_p99": self.latency_p99_s, "drops": self.drops}[metric]


def sensor_start(arrivals: Iterable[Arrival], rate_hz: float) -> float | None:
    """When a sensor instance sent (or would have sent) its frame 0: it sends frame n at
    t0 + n / rate, and never early, so t0 is the least of captured - n / rate."""
    starts = [a.captured - a.frame / rate_hz for a in arrivals]
    return min(starts) if starts else None


def due_frames(t0: float, rate_hz: float, start: float, end: float) -> range:
    """The frames a sensor started at `t0` sends in [start, end)."""
    first = max(0, math.ceil(round((start - t0) * rate_hz, 9)))
    last = max(first, math.ceil(round((end - t0) * rate_hz, 9)))
    return range(first, last)


def measure(arrivals: Sequence[Arrival], rates: Mapping[str, float], replicas: Iterable[int],
            version: str, start: float, end: float, fallback_t0: float) -> Figures:
    """The figures of a wave of `replicas` over the window [start, end): `arrivals` are the
    frames at the sinks of the pipelines in `rates` (pipeline -> its sensor's rate), any
    version; a sensor instance none of whose frames arrived is taken to have started at
    `fallback_t0`."""
    by_key: dict[tuple[str, int], list[Arrival]] = {}
    for a in arrivals:
        by_key.setdefault((a.pipeline, a.replica), []).append(a)
    due = arrived = 0
    latencies: list[float] = []
    for pipeline, rate in sorted(rates.items()):
        for replica in sorted(set(replicas)):
            mine = by_key.get((pipeline, replica), [])
            t0 = sensor_start(mine, rate)
            frames = due_frames(fallback_t0 if t0 is None else t0, rate, start, end)
            got = {a.frame: a for a in mine if a.frame in frames}
            due += len(frames)
            arrived += len(got)
            latencies += [a.received - a.captured for a in got.values() if a.version == version]

    def pct(q: float) -> float | None:
        return float(np.percentile(latencies, q)) if latencies else None

    return Figures(due, arrived, len(latencies), pct(50), pct(95), pct(99),
                   (due - arrived) / due if due else None)


# ---- judging a wave ----------------------------------------------------------------------------

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}


def rule_text(rule: ir.Health) -> str:
    """`latency_p95 < 100 ms`, `drops <= 0.01`: a rule as written."""
    bound = f"{rule.bound:g}" if rule.metric == "drops" else f"{rule.bound * 1000:g} ms"
    return f"{rule.metric} {rule.op} {bound}"


@dataclass(frozen=True)
class RuleResult:
    rule: ir.Health
    measured: float | None        # seconds for a latency, a fraction for drops
    held: bool


@dataclass(frozen=True)
class Verdict:
    passed: bool
    rules: tuple[RuleResult, ...]


def judge(rules: Sequence[ir.Health], figures: Figures) -> Verdict:
    """Every rule against the figures: the wave passes when every rule holds (no rule: it
    passes). A rule whose metric has no value (nothing measured) does not hold."""
    results = []
    for rule in rules:
        value = figures.value(rule.metric)
        results.append(RuleResult(rule, value, value is not None and
                                  _OPS[rule.op](value, rule.bound)))
    return Verdict(all(r.held for r in results), tuple(results))


# ---- the rollout of one model, step by step ----------------------------------------------------


@dataclass(frozen=True)
class Status:
    """What a replica's worker last reported: the version it runs (since `swapped_at`), the
    last request it handled, and that request's error when it could not carry it out (it then
    still runs `version`)."""

    version: str
    request: int | None = None
    swapped_at: float | None = None
    error: str | None = None


@dataclass
class WaveRecord:
    wave: Wave
    requested: float
    switched: float | None = None        # every replica of the wave runs the version
    window: tuple[float, float] | None = None
    evaluated: float | None = None
    figures: Figures | None = None
    verdict: Verdict | None = None
    failure: str | None = None           # why it failed besides a rule (loading, timeout)

    @property
    def passed(self) -> bool | None:
        if self.failure is not None:
            return False
        return None if self.verdict is None else self.verdict.passed


Phase = Literal["waiting", "switching", "holding", "rolling_back", "done"]
Outcome = Literal["completed", "rolled_back", "unfinished"]
Measure = Callable[[Wave, float, float], Figures]


@dataclass
class Controller:
    """One model's rollout from `old` to `new` over the given waves, advanced by `step` with
    the time and the workers' statuses; `desired` says what each replica should run (and the
    request id the caller writes with it). A model without `rollout` has `gate` False: one
    wave, no hold, no measure."""

    model: str
    old: str
    new: str
    waves: tuple[Wave, ...]
    rules: tuple[ir.Health, ...]
    hold_s: float
    start_at: float
    grace_s: float
    gate: bool = True
    switch_timeout_s: float = SWITCH_TIMEOUT_S
    phase: Phase = "waiting"
    outcome: Outcome | None = None
    records: list[WaveRecord] = field(default_factory=list)
    desired: dict[int, tuple[str, int]] = field(default_factory=dict)
    requests: int = 0
    rollback_requested: float | None = None
    rolled_back: float | None = None
    completed: float | None = None

    def _ask(self, replicas: Iterable[int], version: str) -> list[int]:
        asked = []
        for r in replicas:
            self.requests += 1
            self.desired[r] = (version, self.requests)
            asked.append(r)
        return asked

    def _done(self, r: int, version: str, statuses: Mapping[int, Status]) -> bool:
        s = statuses.get(r)
        _, request = self.desired[r]
        return s is not None and s.request is not None and s.request >= request and \
            s.version == version

    def _failed(self, r: int, statuses: Mapping[int, Status]) -> str | None:
        s = statuses.get(r)
        _, request = self.desired[r]
        if s is not None and s.request is not None and s.request >= request and \
                s.error is not None and s.version != self.new:
            return s.error
        return None

    def _begin(self, i: int, now: float) -> list[int]:
        wave = self.waves[i]
        self.records.append(WaveRecord(wave, now))
        self.phase = "switching"
        return self._ask(wave.added, self.new)

    def _roll_back(self, now: float) -> list[int]:
        self.phase = "rolling_back"
        self.rollback_requested = now
        return self._ask(sorted(r for r, (v, _) in self.desired.items() if v == self.new),
                         self.old)

    def step(self, now: float, statuses: Mapping[int, Status], measure: Measure) -> list[int]:
        """Advance to `now`; the replicas whose desired version changed (the caller tells
        their workers). `measure(wave, start, end)` gives a window's figures."""
        if self.phase == "waiting":
            return self._begin(0, now) if now >= self.start_at else []
        if self.phase == "switching":
            record = self.records[-1]
            for r in record.wave.added:
                if (error := self._failed(r, statuses)) is not None:
                    record.failure = f"replica {r} could not load the version: {error}"
                    return self._roll_back(now)
            if all(self._done(r, self.new, statuses) for r in record.wave.added):
                swapped = [statuses[r].swapped_at for r in record.wave.added]
                record.switched = max([now if t is None else t for t in swapped] or [now])
                if not self.gate:
                    self.phase, self.outcome, self.completed = "done", "completed", now
                    return []
                record.window = (record.switched, record.switched + self.hold_s)
                self.phase = "holding"
                return []
            if now - record.requested > self.switch_timeout_s:
                late = [r for r in record.wave.added if not self._done(r, self.new, statuses)]
                record.failure = (f"replica {late[0]} did not switch within "
                                  f"{self.switch_timeout_s:g} s")
                return self._roll_back(now)
            return []
        if self.phase == "holding":
            record = self.records[-1]
            assert record.window is not None
            if now < record.window[1] + self.grace_s:
                return []
            record.evaluated = now
            record.figures = measure(record.wave, *record.window)
            record.verdict = judge(self.rules, record.figures)
            if not record.verdict.passed:
                return self._roll_back(now)
            if record.wave.index + 1 < len(self.waves):
                return self._begin(record.wave.index + 1, now)
            self.phase, self.outcome, self.completed = "done", "completed", now
            return []
        if self.phase == "rolling_back" and all(
                self._done(r, self.old, statuses) for r, (v, _) in self.desired.items()
                if v == self.old):
            self.phase, self.outcome, self.rolled_back = "done", "rolled_back", now
        return []

    def finish(self) -> None:
        """The run is over: a rollout still under way is unfinished (one rolling back has
        rolled back, unconfirmed: `rolled_back` stays None)."""
        if self.phase == "rolling_back":
            self.outcome = "rolled_back"
        elif self.phase != "done":
            self.outcome = "unfinished"
        self.phase = "done"

    def running(self) -> dict[int, str]:
        """The version each replica was last asked to run (the old one where never asked)."""
        return {r: self.desired[r][0] if r in self.desired else self.old
                for w in self.waves[-1:] for r in w.replicas}

    def report(self, t0: float) -> dict[str, Any]:
        """run.json's entry for this rollout, times in seconds from `t0` (the sensors' start)."""
        def rel(t: float | None) -> float | None:
            return None if t is None else round(t - t0, 3)

        def ms(x: float | None) -> float | None:
            return None if x is None else round(x * 1000, 3)

        waves = []
        for rec in self.records:
            f = rec.figures
            waves.append({
                "wave": rec.wave.index + 1, "share": rec.wave.share,
                "replicas": list(rec.wave.replicas), "added": list(rec.wave.added),
                "requested_s": rel(rec.requested), "switched_s": rel(rec.switched),
                "start_s": rel(rec.window[0]) if rec.window else None,
                "end_s": rel(rec.window[1]) if rec.window else None,
                "evaluated_s": rel(rec.evaluated),
                "due_frames": f.due if f else None, "arrived_frames": f.arrived if f else None,
                "new_version_frames": f.frames if f else None,
                "latency_p50_ms": ms(f.latency_p50_s) if f else None,
                "latency_p95_ms": ms(f.latency_p95_s) if f else None,
                "latency_p99_ms": ms(f.latency_p99_s) if f else None,
                "drops": None if f is None or f.drops is None else round(f.drops, 4),
                "rules": [{"rule": rule_text(r.rule),
                           "measured": None if r.measured is None else round(
                               r.measured * 1000 if r.rule.metric != "drops" else r.measured,
                               4 if r.rule.metric == "drops" else 3),
                           "held": r.held}
                          for r in (rec.verdict.rules if rec.verdict else ())],
                "passed": rec.passed, "failure": rec.failure,
            })
        return {
            "model": self.model, "old_version": self.old, "new_version": self.new,
            "gated": self.gate, "hold_s": self.hold_s if self.gate else None,
            "health": [rule_text(r) for r in self.rules],
            "start_s": rel(self.start_at), "wave_count": len(self.waves), "waves": waves,
            "outcome": self.outcome or "unfinished",
            "completed_s": rel(self.completed),
            "rollback_requested_s": rel(self.rollback_requested),
            "rolled_back_s": rel(self.rolled_back),
            "final_versions": {str(r): v for r, v in sorted(self.running().items())},
        }
