"""The exact placement MILP, solved with HiGHS (highspy). See docs/placement.md for the
formulation written out; variable and row names below follow it.

- x[n,i]      step n runs on instance i (binary; sensors and sinks are pinned constants)
- s[n,k,i,j]  split model n is cut at option k, head on i, tail on j (binary)
- y[e,i,j]    edge e's message goes from instance i to instance j != i (continuous, driven to
              max(0, out(u,i) + in(v,j) - 1) by every constraint it appears in)
- z[u,i,j]    u's output is sent from i to j (once, however many consumers sit on j)
- lam[p]      the worst latency over pipeline p's replicas
- used[i]     instance i hosts a unit (only for instances with a cost)
- b[i]        instance i runs a broker: it hosts a unit, or a message's route passes through it
              (a constant 1 where a sensor or sink sits)

The objective is lexicographic: one solve per term, each later solve bounded by the earlier
optima.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import highspy
import numpy as np

from edgeflow.cost import (
    host_usd_per_h,
    reserved_bytes,
    runtime_cpu,
    runtime_memory_bytes,
    stream_bps,
    traffic_usd_per_h,
    unit_cpu,
    unit_memory_bytes,
)
from edgeflow.execution import build_execution
from edgeflow.ir import BROKER_CPU, WORKER_CPU
from edgeflow.objectives import TERMS, Combine
from edgeflow.placement.baselines import BASELINES
from edgeflow.placement.evaluate import Placement, Split, best_feasible, evaluate
from edgeflow.placement.heuristic import greedy
from edgeflow.placement.problem import (
    Problem,
    Step,
    StepInfo,
    Variant,
    build_problem,
    out_labels,
)
from edgeflow.span import Span

Expr = tuple[dict[int, float], float]  # (coefficients by variable, constant)


class LinearModel:
    """Columns and rows accumulated in Python, passed to HiGHS in one go. In elastic mode, rows
    given a `label` get a slack variable σ >= 0 (the row becomes `expr <= hi·(1 + σ)`) recorded
    in `slacks`, so that an infeasible model can say which limits it would have to exceed."""

    def __init__(self, elastic: bool = False) -> None:
        self.lb: list[float] = []
        self.ub: list[float] = []
        self.integer: list[int] = []
        self.rows: list[tuple[float, float, dict[int, float]]] = []
        self.elastic = elastic
        self.slacks: list[tuple[int, tuple[Any, ...], float]] = []  # (variable, label, limit)
        # rows without a variable that their constant already breaks (e.g. a link overloaded
        # by messages between pinned steps): the model is infeasible whatever is decided
        self.broken: list[tuple[Any, ...] | None] = []

    def var(self, lb: float = 0.0, ub: float = 1.0, integer: bool = True) -> int:
        self.lb.append(lb)
        self.ub.append(ub)
        if integer:
            self.integer.append(len(self.lb) - 1)
        return len(self.lb) - 1

    def row(self, expr: Expr, lo: float = -np.inf, hi: float = np.inf,
            label: tuple[Any, ...] | None = None) -> None:
        coeffs, const = expr
        coeffs = {k: v for k, v in coeffs.items() if v != 0}
        if self.elastic and label is not None and hi > 0:
            slack = self.var(0.0, np.inf, integer=False)
            self.slacks.append((slack, label, hi))
            coeffs[slack] = -hi
        if not coeffs:
            if const > hi * (1 + 1e-9) + 1e-12 or const < lo - abs(lo) * 1e-9 - 1e-12:
                self.broken.append(label)
            return
        self.rows.append((lo - const, hi - const, coeffs))

    def highs(self) -> highspy.Highs:
        h = new_highs()
        n = len(self.lb)
        h.addVars(n, np.array(self.lb), np.array(self.ub))
        if self.integer:
            idx = np.array(self.integer, dtype=np.int32)
            h.changeColsIntegrality(len(idx), idx, np.full(len(idx), highspy.HighsVarType.kInteger))
        lower: list[float] = []
        upper: list[float] = []
        starts: list[int] = []
        index: list[int] = []
        value: list[float] = []
        for lo, hi, coeffs in self.rows:
            lower.append(lo)
            upper.append(hi)
            starts.append(len(index))
            for k, v in sorted(coeffs.items()):
                index.append(k)
                value.append(v)
        if self.rows:
            h.addRows(len(self.rows), np.array(lower), np.array(upper), len(index),
                      np.array(starts, dtype=np.int32), np.array(index, dtype=np.int32),
                      np.array(value))
        return h


def new_highs() -> highspy.Highs:
    """A silent HiGHS instance. Constructing one may print HiGHS' banner on the C-level stdout
    (the first time in a process), which would corrupt `--format json` output: file descriptor
    1 points at /dev/null while it is built (no state kept; it costs two dup2 calls)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            h = highspy.Highs()  # type: ignore[no-untyped-call]
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    h.silent()
    return h


def add_exprs(*exprs: Expr, scale: Iterable[float] | None = None) -> Expr:
    """The sum of linear expressions, each times its `scale` factor (1 by default)."""
    out: dict[int, float] = defaultdict(float)
    const = 0.0
    for (coeffs, c), f in zip(exprs, scale or [1.0] * len(exprs), strict=True):
        for k, v in coeffs.items():
            out[k] += f * v
        const += f * c
    return dict(out), const


@dataclass
class Formulation:
    problem: Problem
    lp: LinearModel = field(default_factory=LinearModel)
    x: dict[Step, dict[str, int]] = field(default_factory=dict)
    # a model with a choice: (variant, cut, head, tail) -> its column; head == tail: whole
    s: dict[Step, dict[tuple[int, int, str, str], int]] = field(default_factory=dict)
    used: dict[str, int] = field(default_factory=dict)
    terms: dict[str, Expr] = field(default_factory=dict)
    # what the objective terms are made of (edgeflow.objectives reads them)
    lam: dict[str, int] = field(default_factory=dict)          # worst latency per pipeline
    util: dict[str, list[Expr]] = field(default_factory=lambda: defaultdict(list))
    occupies: dict[str, list[Expr]] = field(default_factory=lambda: defaultdict(list))
    traffic_cost: list[Expr] = field(default_factory=list)    # USD/h per message or cut
    forwards: dict[str, list[Expr]] = field(
        default_factory=lambda: defaultdict(list))               # routes through an instance
    brokers: dict[str, int] = field(default_factory=dict)      # b[i] where it is a variable
    link_load: dict[tuple[str, str], list[Expr]] = field(
        default_factory=lambda: defaultdict(list))               # bit/s per directed link
    # conflicts found while building, each (message, spans of the declarations involved)
    infeasible: list[tuple[str, list[Span]]] = field(default_factory=list)

    def conflict(self, message: str, labels: frozenset[str], spans: list[Span] | None = None,
                 ) -> None:
        if message not in (m for m, _ in self.infeasible):
            privacy = self.problem.program.privacy
            self.infeasible.append((message, (spans or []) + [privacy[lb].span
                                                              for lb in sorted(labels)]))

    def privacy_conflict(self, step: Step, labels: frozenset[str]) -> None:
        info = self.problem.steps[step]
        devices = sorted({self.problem.device(i).name for i in info.candidates})
        tiers = sorted({self.problem.device(i).tier.value for i in info.candidates})
        rules = "; ".join(f"`{lb}` allows {', '.join(t.value for t in self.problem.program.privacy[lb].allow)}"
                          for lb in sorted(labels))
        where = "sits on" if not info.is_unit else "can only run on"
        verb = "emits" if info.kind == "sensor" else "receives"
        self.conflict(f"`{info.name}` {where} {', '.join(f'`{d}`' for d in devices)} "
                      f"({', '.join(tiers)}), but it {verb} data labelled "
                      f"{', '.join(f'`{lb}`' for lb in sorted(labels))} ({rules})", labels,
                      [self.problem.program.sensors[info.name].span
                       if info.name in self.problem.program.sensors else
                       self.problem.program.sinks[info.name].span
                       if info.name in self.problem.program.sinks else
                       (self.problem.program.operators.get(info.name)
                        or self.problem.program.models[info.name]).span])

    # ------------------------------------------------------------ the built-in terms
    def worst_latency_sum(self) -> Expr:
        return {v: 1.0 for v in self.lam.values()}, 0.0

    def cost(self) -> Expr:
        """Hosting (a binary `used[i]` per priced instance, >= everything placed on it) plus
        traffic, in USD/h."""
        host_cost: list[Expr] = []
        for inst, exprs in self.occupies.items():
            price = host_usd_per_h(self.problem.device(inst))
            if price > 0 and inst not in self.problem.hosted:
                used = self.used[inst] = self.lp.var()
                for e in exprs:
                    self.lp.row(add_exprs(({used: 1.0}, 0.0), e, scale=[1.0, -1.0]), lo=0.0)
                host_cost.append(({used: price}, 0.0))
        return add_exprs(*host_cost, *self.traffic_cost)

    def energy(self) -> Expr:
        return add_exprs(*[add_exprs(*exprs, scale=[self.problem.device(i).power_w] * len(exprs))
                      for i, exprs in self.util.items()])

    def loc(self, step: Step, side: str) -> dict[str, Expr]:
        """Expressions 'step sits on instance i' for its input ("in") or output ("out") side."""
        info = self.problem.steps[step]
        if not info.is_unit:
            return {info.candidates[0]: ({}, 1.0)}
        if step in self.x:
            return {i: ({v: 1.0}, 0.0) for i, v in self.x[step].items()}
        out: dict[str, dict[int, float]] = defaultdict(dict)
        for (_, _, i, j), v in self.s[step].items():
            out[i if side == "in" else j][v] = 1.0
        return {i: (c, 0.0) for i, c in out.items()}


def formulate(problem: Problem, elastic: bool = False) -> Formulation:
    f = Formulation(problem, LinearModel(elastic))
    lp, util, occupies, link_load, traffic_cost = f.lp, f.util, f.occupies, f.link_load, \
        f.traffic_cost
    memory: dict[str, list[Expr]] = defaultdict(list)
    compute: dict[Step, Expr] = {}
    internal: dict[Step, Expr] = {}
    # -- what a device must run whatever is decided: its broker and its drivers
    for inst, drivers in problem.drivers.items():
        dev = problem.device(inst)
        mem = runtime_memory_bytes(dev, True, drivers)
        if mem <= dev.memory_bytes and runtime_cpu(dev, True, drivers) <= 1:
            continue
        names = ", ".join(sorted({f"`{i.name}`" for i in problem.steps.values()
                                  if not i.is_unit and i.candidates[0] == inst}))
        if mem > dev.memory_bytes:
            f.conflict(f"`{dev.name}` has {dev.memory_bytes / 2**20:.1f} MiB of memory, but its "
                       f"broker and the drivers of {names} alone need {mem / 2**20:.1f} MiB "
                       "(`broker_memory`, `driver_memory`)", frozenset(), [dev.span])
        elif runtime_cpu(dev, True, drivers) > 1:
            f.conflict(f"`{dev.name}` cannot reserve the CPU its broker and the drivers of "
                       f"{names} need ({runtime_cpu(dev, True, drivers):.0%} of it)", frozenset(),
                       [dev.span])
    # -- placement variables
    for step, info in problem.steps.items():
        allowed = [i for i in info.candidates if problem.tier_allows(i, info.labels)]
        if not allowed:
            f.privacy_conflict(step, info.labels)
            continue
        if not info.is_unit:
            continue
        if info.splittable or info.chooses:
            # a key (variant, cut, head, tail); head == tail: that variant whole on one device
            options: list[tuple[int, int, str, str]] = []
            for n, var in enumerate(info.options):
                if not var.cuts:
                    options.extend((n, 0, i, i) for i in allowed)
                for k, cut in enumerate(var.cuts):
                    for i in allowed:
                        for j in allowed:
                            if i != j and problem.route(i, j, cut.transfer_bytes,
                                                        info.labels) is None:
                                continue
                            if i == j and k != len(var.cuts) - 1:
                                continue  # on one device every cut is the same: keep one
                            options.append((n, k, i, j))
            # options a part cannot take even alone are dropped (unless that drops all: the
            # explanation then names the limit): their huge coefficients only mislead HiGHS.
            # The elastic model of the explanations keeps them: it may exceed limits.
            options = [(n, k, i, j) for n, k, i, j in options if elastic or _fits_option(
                problem, info, info.variant(n), k, i, j)] or options
            f.s[step] = {key: lp.var() for key in options}
            lp.row(({v: 1.0 for v in f.s[step].values()}, 0.0), 1.0, 1.0)
            comp: dict[int, float] = {}
            inner: dict[int, float] = {}
            for (n, k, i, j), v in f.s[step].items():
                var = info.variant(n)
                if i == j:
                    head_s, tail_s = problem.compute_s(var.work, i, var.int8), 0.0
                else:
                    cut = var.cuts[k]
                    head_s = problem.compute_s(cut.head_work, i, var.int8)
                    tail_s = problem.compute_s(cut.tail_work, j, var.int8)
                comp[v] = head_s + tail_s
                util[i].append(({v: info.rate * head_s}, 0.0))
                util[j].append(({v: info.rate * tail_s}, 0.0))
                if i == j:
                    memory[i].append(({v: float(reserved_bytes(var.memory))}, 0.0))
                    occupies[i].append(({v: 1.0}, 0.0))
                    continue
                memory[i].append(({v: float(reserved_bytes(cut.head_weights))}, 0.0))
                memory[j].append(({v: float(reserved_bytes(cut.tail_weights))}, 0.0))
                occupies[i].append(({v: 1.0}, 0.0))
                occupies[j].append(({v: 1.0}, 0.0))
                route = problem.route(i, j, cut.transfer_bytes, info.labels)
                assert route is not None
                inner[v] = route.seconds
                for hop in route.hops[1:-1]:
                    f.forwards[hop].append(({v: 1.0}, 0.0))
                bps = stream_bps(info.rate, cut.transfer_bytes)
                for link in route.links:
                    link_load[link].append(({v: bps}, 0.0))
                traffic_cost.append(({v: traffic_usd_per_h(bps, sum(
                    problem.link_of(*ln).cost_usd_per_byte for ln in route.links))}, 0.0))
            compute[step] = (comp, 0.0)
            internal[step] = (inner, 0.0)
        else:
            f.x[step] = {i: lp.var() for i in [
                i for i in allowed if elastic or _fits(problem, info, info.work, info.memory, i)]
                or allowed}
            lp.row(({v: 1.0 for v in f.x[step].values()}, 0.0), 1.0, 1.0)
            comp = {}
            for i, v in f.x[step].items():
                seconds = problem.compute_s(info.work, i)
                comp[v] = seconds
                util[i].append(({v: info.rate * seconds}, 0.0))
                memory[i].append(({v: float(reserved_bytes(info.memory))}, 0.0))
                occupies[i].append(({v: 1.0}, 0.0))
            compute[step] = (comp, 0.0)
    if f.infeasible:
        return f
    edge_time = _messages(f)
    # -- pipelines
    program = problem.program
    present = {name for name, _, _ in problem.pipelines}  # a part's (decompose.py)
    lam = f.lam = {p: lp.var(0.0, np.inf, integer=False) for p in program.pipelines
                   if p in present}
    for name, replica, path in problem.pipelines:
        parts: list[Expr] = []
        for n, step in enumerate(path):
            if n > 0:
                parts.append(edge_time[(path[n - 1], step)])
            if step in compute:
                parts.append(compute[step])
            if step in internal:
                parts.append(internal[step])
        latency = add_exprs(*parts)
        slo = program.pipelines[name].slo.latency_s
        if slo is not None:
            if not latency[0] and latency[1] > slo:
                f.conflict(f"pipeline `{name}` takes {latency[1] * 1e3:.3f} ms with everything "
                           f"pinned; its SLO is {slo * 1e3:g} ms", frozenset(),
                           [program.pipelines[name].slo_spans.get("latency",
                                                                   program.pipelines[name].span)])
            lp.row(latency, hi=slo, label=("slo", name, replica))
        lp.row(add_exprs(({lam[name]: 1.0}, 0.0), latency, scale=[1.0, -1.0]), lo=0.0)
    # -- capacities: the units' work and weights, and the processes of the runtime (a worker
    # per unit, a broker, a driver per sensor and sink; cost.unit_memory_bytes and friends)
    for inst in sorted(set(util) | set(memory) | set(f.forwards) | set(problem.drivers)):
        dev, share = problem.device(inst), problem.capacity(inst)
        units = add_exprs(*occupies.get(inst, []))
        broker = _broker(f, inst)
        driver_memory, driver_cpu = problem.drivers_need(inst)
        # a shared instance in a one-replica problem (symmetric_start) pays its share of the
        # broker, which all replicas share
        cpu = add_exprs(*util.get(inst, []), units, broker, ({}, driver_cpu),
                        scale=[1.0] * len(util.get(inst, [])) + [WORKER_CPU / dev.cpus,
                                                                 BROKER_CPU * share / dev.cpus,
                                                                 1.0])
        _capacity(lp, cpu, problem.cpu_room(inst), ("compute", inst))
        held = add_exprs(*memory.get(inst, []), units, broker, ({}, driver_memory),
                         scale=[1.0] * len(memory.get(inst, [])) + [
                             float(dev.worker_memory_bytes), dev.broker_memory_bytes * share,
                             1.0])
        _capacity(lp, held, problem.memory_room(inst), ("memory", inst))
    for link, exprs in link_load.items():
        _capacity(lp, add_exprs(*exprs), problem.link_room(link), ("link", link))
    # -- objective terms: every registered one, so any may be bounded in a later stage
    f.terms = {name: term.milp(f) for name, term in TERMS.items()}
    return f


def _fits(problem: Problem, info: StepInfo, work: float, memory: float, inst: str,
          int8: bool = False) -> bool:
    """Whether a unit doing `work` with `memory` could run on `inst` were it alone there."""
    dev = problem.device(inst)
    return unit_cpu(info.rate * problem.compute_s(work, inst, int8), dev) <= 1 and \
        unit_memory_bytes(memory, dev) <= dev.memory_bytes


def _fits_option(problem: Problem, info: StepInfo, var: Variant, k: int, i: str,
                 j: str) -> bool:
    """Whether variant `var` of a model, whole on i (i == j) or cut at k, fits alone."""
    if i == j:
        return _fits(problem, info, var.work, var.memory, i, var.int8)
    cut = var.cuts[k]
    return _fits(problem, info, cut.head_work, cut.head_weights, i, var.int8) and \
        _fits(problem, info, cut.tail_work, cut.tail_weights, j, var.int8)


def _broker(f: Formulation, inst: str) -> Expr:
    """b[i]: 1 where a driver sits or a pinned message passes, a binary at least every unit
    variable and every message through `inst` otherwise, 0 where nothing can be."""
    exprs = [*f.occupies.get(inst, []), *f.forwards.get(inst, [])]
    if f.problem.drivers.get(inst) or inst in f.problem.brokered or any(not e[0] and e[1] > 0 for e in exprs):
        return {}, 1.0
    if not exprs:
        return {}, 0.0
    b = f.brokers[inst] = f.lp.var()
    for e in exprs:
        f.lp.row(add_exprs(({b: 1.0}, 0.0), e, scale=[1.0, -1.0]), lo=0.0)
    return {b: 1.0}, 0.0


def _capacity(lp: LinearModel, expr: Expr, hi: float, label: tuple[Any, ...]) -> None:
    """`expr <= hi`, left out when no values of its variables (all within [0, 1] here) could
    break it: a large device's rows would only slow the solver."""
    coeffs, const = expr
    if const + sum(max(0.0, v) * lp.ub[k] for k, v in coeffs.items()) <= hi:
        return
    lp.row(expr, hi=hi, label=label)


def _messages(f: Formulation) -> dict[tuple[Step, Step], Expr]:
    """Message variables and rows for every edge; returns each edge's transfer-time expression
    and adds each output's link loads and traffic cost."""
    problem, lp, link_load, traffic_cost = f.problem, f.lp, f.link_load, f.traffic_cost
    edge_time: dict[tuple[Step, Step], Expr] = {}
    sends: dict[tuple[Step, str, str], list[int | None]] = defaultdict(list)
    for u, v in problem.edges:
        info = problem.steps[u]
        labels = out_labels(problem, u)
        time_terms: dict[int, float] = {}
        time_const = 0.0
        outs, ins = f.loc(u, "out"), f.loc(v, "in")
        if all(not a[0] for a in outs.values()) and all(not b[0] for b in ins.values()):
            (i, _), (j, _) = next(iter(outs.items())), next(iter(ins.items()))
            route = problem.route(i, j, info.out_bytes, labels)
            if route is None:
                f.conflict(f"no route for `{u[0]}` -> `{v[0]}` from `{i}` to `{j}`"
                           + (f" through tiers allowed for {', '.join(sorted(labels))}"
                              if labels else ""), labels)
            else:
                time_const = route.seconds
                if i != j:
                    sends[(u, i, j)].append(None)
            edge_time[(u, v)] = ({}, time_const)
            continue
        # y[e,i,j] couples where the message leaves and where it arrives: each side's sum is
        # the other side's placement (a tight linearisation of the product); pairs without an
        # allowed route get no variable, which forbids them.
        leaving: dict[str, dict[int, float]] = defaultdict(dict)
        arriving: dict[str, dict[int, float]] = defaultdict(dict)
        for i in outs:
            for j in ins:
                route = problem.route(i, j, info.out_bytes, labels)
                if route is None:
                    continue
                y = lp.var(integer=False)
                leaving[i][y] = arriving[j][y] = 1.0
                time_terms[y] = route.seconds
                if i != j:
                    sends[(u, i, j)].append(y)
        for end, sums in ((outs, leaving), (ins, arriving)):
            for k, expr in end.items():
                if not expr[0] and not sums[k]:  # a pinned end no allowed route touches
                    f.conflict(f"no allowed route for `{u[0]}` -> `{v[0]}` "
                               + (f"from `{k}`" if end is outs else f"to `{k}`")
                               + (f" through tiers allowed for {', '.join(sorted(labels))}"
                                  if labels else ""), labels)
                lp.row(add_exprs((sums[k], 0.0), expr, scale=[1.0, -1.0]), 0.0, 0.0)
        edge_time[(u, v)] = (time_terms, time_const)
    for (u, i, j), ys in sends.items():
        info = problem.steps[u]
        route = problem.route(i, j, info.out_bytes, out_labels(problem, u))
        assert route is not None
        variables = [y for y in ys if y is not None]
        if len(variables) < len(ys):  # both ends pinned: always sent
            z: Expr = ({}, 1.0)
        elif len(variables) == 1:
            z = ({variables[0]: 1.0}, 0.0)
        else:
            zv = lp.var(integer=False)
            for y in variables:
                lp.row(({zv: 1.0, y: -1.0}, 0.0), lo=0.0)
            z = ({zv: 1.0}, 0.0)
        bps = stream_bps(info.rate, info.out_bytes)
        for link in route.links:
            link_load[link].append(add_exprs(z, scale=[bps]))
        for hop in route.hops[1:-1]:
            f.forwards[hop].append(z)
        usd = sum(problem.link_of(*ln).cost_usd_per_byte for ln in route.links)
        traffic_cost.append(add_exprs(z, scale=[traffic_usd_per_h(bps, usd)]))
    return edge_time


@dataclass
class Solution:
    status: str                      # optimal, feasible, infeasible, unknown
    assignment: dict[Step, Placement] | None
    gap: float = 0.0                 # the worst stage's
    seconds: float = 0.0
    objective: Mapping[str, float] = field(default_factory=dict)
    stage_gaps: Mapping[str, float] = field(default_factory=dict)  # per objective term
    bound: float = 0.0               # a proven lower bound on the first term (0: none)


def solve(problem: Problem, time_limit: float = 30.0, gap: float = 1e-7,
          warm_start: bool = True, order: tuple[str, ...] | None = None,
          start: dict[Step, Placement] | None = None) -> Solution:
    """Solve lexicographically. With `warm_start`, HiGHS starts from the best feasible plan
    among the baselines, the constructive plan and the symmetric plan (one replica solved with
    a fair share of the shared capacities, copied to every replica), and `start` when given (a
    plan known to meet every constraint): the result is never worse than those, and a time
    limit always leaves a plan when one of them is feasible. `order` overrides the app's
    objective terms."""
    started = time.perf_counter()
    f = formulate(problem)
    if f.infeasible or f.lp.broken:
        return Solution("infeasible", None, seconds=time.perf_counter() - started)
    order = order or problem.program.app.objective
    if not f.lp.lb:  # nothing to decide: every step is pinned
        assignment = assignment_from(f, np.zeros(0))
        return Solution("optimal", assignment, seconds=time.perf_counter() - started,
                        bound=evaluate(problem, assignment).objective[order[0]])
    start = _best_start(problem, order, time_limit / 4, start if start is None else [start]) \
        if warm_start else start
    bound = symmetric_bound(problem, order[0], time_limit / 4) \
        if warm_start and start is not None else None
    h = f.lp.highs()
    h.setOptionValue("mip_rel_gap", gap)
    h.setOptionValue("mip_abs_gap", 1e-12)
    status, worst_gap, values, lower = "optimal", 0.0, None, 0.0
    found: dict[str, float] = {}
    stage_gaps: dict[str, float] = {}
    n = len(f.lp.lb)
    for stage, term in enumerate(order):
        remaining = time_limit - (time.perf_counter() - started)
        if remaining <= 0:
            status = "feasible"
            break
        h.setOptionValue("time_limit", max(remaining, 0.01))
        coeffs, const = f.terms[term]
        cost = np.zeros(n)
        for k, v in coeffs.items():
            cost[k] = v
        h.changeColsCost(n, np.arange(n, dtype=np.int32), cost)
        if stage == 0 and bound is not None and start is not None:
            start_value = evaluate(problem, start).objective[term]
            if start_value <= bound * (1 + gap) + 1e-12:  # the warm start is proven optimal
                found[term], stage_gaps[term], lower = start_value, 0.0, bound
                if stage + 1 < len(order):
                    _keep(h, coeffs, start_value - const)
                    continue
                return Solution("optimal", start, 0.0, time.perf_counter() - started, found,
                                stage_gaps, lower)
        if values is not None:
            h.setSolution(_solution(values))
        elif start is not None:
            idx, vals = start_values(f, start)
            h.setSolution(len(idx), idx, vals)
        h.run()
        if h.getInfo().primal_solution_status == 2 and abs(
                cost @ np.array(h.getSolution().col_value) - h.getInfo().objective_function_value
        ) > 1e-9 * max(1.0, abs(h.getInfo().objective_function_value)):
            # HiGHS 1.16, given a start, can report a better objective than the columns it
            # returns (those of the start) when presolve reduced the model: solve the stage
            # again without presolve, from the columns it has
            h.setOptionValue("presolve", "off")
            h.setOptionValue("time_limit", max(time_limit - (time.perf_counter() - started), 0.01))
            h.run()
            h.setOptionValue("presolve", "choose")
        model_status = h.getModelStatus()
        info = h.getInfo()
        if model_status == highspy.HighsModelStatus.kInfeasible or \
                info.primal_solution_status != 2:
            if stage == 0:
                infeasible = model_status == highspy.HighsModelStatus.kInfeasible
                return Solution("infeasible" if infeasible else "unknown", None,
                                seconds=time.perf_counter() - started)
            status = "feasible"
            break
        values = np.array(h.getSolution().col_value)
        best = float(cost @ values) + const
        found[term] = best
        if stage == 0:  # HiGHS' dual bound (none for a model without integers: an LP)
            dual = float(info.mip_dual_bound) + const
            lower = max(lower, min(best, dual) if np.isfinite(dual) else
                        best if model_status == highspy.HighsModelStatus.kOptimal else 0.0)
        stage_gaps[term] = 0.0
        if model_status != highspy.HighsModelStatus.kOptimal:
            status = "feasible"
            # HiGHS reports an infinite gap while it has no bound: unproven is a gap of 100 %
            stage_gaps[term] = min(1.0, float(info.mip_gap))
            worst_gap = max(worst_gap, stage_gaps[term])
        if stage + 1 < len(order):  # keep this term at its optimum in the next stages
            _keep(h, coeffs, best - const)
    if values is None:  # the time ran out before the solver had a plan of its own
        if start is None:
            return Solution("unknown", None, seconds=time.perf_counter() - started)
        # the warm start is feasible; with no bound proven its gap is taken as 100 %
        return Solution("feasible", start, 1.0, time.perf_counter() - started,
                        {t: v for t, v in evaluate(problem, start).objective.items()
                         if t in order}, {t: 1.0 for t in order}, lower)
    return Solution(status, assignment_from(f, values), worst_gap, time.perf_counter() - started,
                    found, stage_gaps, lower)


def _keep(h: highspy.Highs, coeffs: Mapping[int, float], best: float) -> None:
    """Add the row `coeffs . x <= best` (within 1e-9 of it, relatively), divided by its largest
    coefficient: HiGHS accepts a MIP row violated by up to its feasibility tolerance (1e-6), which
    would let a term whose values are all tiny (the energy of a few FLOP) drift off its optimum
    in later stages; scaled to a largest coefficient of 1, its values are compared in
    proportion to the term's own size."""
    scale = max((abs(c) for c in coeffs.values()), default=1.0) or 1.0
    tol = max(abs(best) * 1e-9, 1e-12)
    h.addRow(-np.inf, (best + tol) / scale, len(coeffs), np.array(list(coeffs), dtype=np.int32),
             np.array(list(coeffs.values())) / scale)


def start_values(f: Formulation, assignment: dict[Step, Placement]) -> tuple[np.ndarray,
                                                                               np.ndarray]:
    """The integer part of a MILP solution for `assignment` (HiGHS completes the rest)."""
    values: dict[int, float] = {}
    hosted: set[str] = set()
    for step, vars_ in f.x.items():
        for inst, v in vars_.items():
            values[v] = 1.0 if assignment[step] == inst else 0.0
        hosted.add(assignment[step])  # type: ignore[arg-type]
    for step, split_vars in f.s.items():
        place = assignment[step]
        info = f.problem.steps[step]
        if isinstance(place, Split) and place.head != place.tail:
            key = (place.variant, place.cut, place.head, place.tail)
        else:  # whole: the one key of its variant on that device
            n, inst = (place.variant, place.head) if isinstance(place, Split) else (0, place)
            key = (n, max(len(info.variant(n).cuts) - 1, 0), inst, inst)
        for k, v in split_vars.items():
            values[v] = 1.0 if k == key else 0.0
        hosted.update({key[2], key[3]})
    for inst, v in f.used.items():
        values[v] = 1.0 if inst in hosted else 0.0
    if f.brokers:
        brokers = evaluate(f.problem, assignment).brokers
        for inst, v in f.brokers.items():
            values[v] = 1.0 if inst in brokers else 0.0
    idx = np.array(sorted(values), dtype=np.int32)
    return idx, np.array([values[i] for i in idx])


def _best_start(problem: Problem, order: tuple[str, ...], time_limit: float,
                given: list[dict[Step, Placement]] | None = None,
                ) -> dict[Step, Placement] | None:
    return best_feasible(problem, [*(given or []), *(b(problem) for b in BASELINES.values()),
                                   greedy(problem), symmetric_start(problem, time_limit)], order)


def _reduced(problem: Problem) -> tuple[Problem, int, set[str]] | None:
    """One replica of a symmetric app: devices of the replica count become single devices.
    Returns the reduced problem, the replica count and the per-site device names."""
    counts = {c.replicas for c in problem.dataflow.components}
    if len(counts) != 1 or (replicas := counts.pop()) == 1:
        return None
    program = problem.program
    per_site = {name for name, d in program.devices.items() if d.count == replicas}
    devices = {name: d.model_copy(update={"count": 1}) if name in per_site else d
               for name, d in program.devices.items()}
    reduced = build_execution(program.model_copy(update={"devices": devices}))
    return build_problem(reduced), replicas, per_site


def symmetric_bound(problem: Problem, term: str, time_limit: float) -> float | None:
    """A lower bound on `term` for a symmetric app: one replica with the shared capacities
    whole (a relaxation). A term that is the worst replica's (latency: Σ_p max_r) is bounded by
    the best single replica's; a sum over replicas (energy) by R times it; a term with shared
    parts paid once (cost) has no such bound (`Combine` in edgeflow.objectives). None too when
    the app is not symmetric or the relaxation is not solved to optimality."""
    combine = TERMS[term].combine
    if combine is Combine.NONE or (reduced := _reduced(problem)) is None:
        return None
    single, replicas, _ = reduced
    solution = solve(single, time_limit, warm_start=False, order=(term,))
    if solution.status != "optimal":
        return None
    return solution.objective[term] * (replicas if combine is Combine.SUM else 1)


def symmetric_start(problem: Problem, time_limit: float) -> dict[Step, Placement] | None:
    """Solve one replica, each shared (count-1) instance and link between shared instances
    limited to 1/R of its capacity, and copy the result to all R replicas: feasible for the
    whole app by construction. None when the app has no replicas or mixes replica counts."""
    if (found := _reduced(problem)) is None:
        return None
    reduced, replicas, per_site = found
    shared = {inst for inst, (d, _) in reduced.instances.items() if d.name not in per_site}
    share: dict[object, float] = {inst: 1 / replicas for inst in shared}
    for a, b in reduced.graph.edges:
        if a in shared and b in shared:
            share[(a, b)] = share[(b, a)] = 1 / replicas
    reduced = dataclasses.replace(reduced, share=share)
    solution = solve(reduced, time_limit, warm_start=False)
    if solution.assignment is None:
        return None

    def widen(inst: str, r: int) -> str:
        return problem.program.devices[reduced.device(inst).name].instance(r)

    out: dict[Step, Placement] = {}
    for step in problem.steps:
        name, r = step
        place = solution.assignment.get((name, 0)) or solution.assignment[(name, None)]
        rr = r if r is not None else 0
        out[step] = Split(place.cut, widen(place.head, rr), widen(place.tail, rr),
                          place.variant) if isinstance(place, Split) else widen(place, rr)
    return out


def _solution(values: np.ndarray) -> highspy.HighsSolution:
    sol = highspy.HighsSolution()
    sol.col_value = list(values)
    sol.value_valid = True
    return sol


def assignment_from(f: Formulation, values: np.ndarray) -> dict[Step, Placement]:
    out: dict[Step, Placement] = {}
    for step, info in f.problem.steps.items():
        if not info.is_unit:
            out[step] = info.candidates[0]
        elif step in f.x:
            out[step] = max(f.x[step], key=lambda i: values[f.x[step][i]])
        else:
            n, k, i, j = max(f.s[step], key=lambda key: values[f.s[step][key]])
            out[step] = i if i == j and n == 0 else Split(k, i, j, n)
    return out
