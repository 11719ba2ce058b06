"""Placement by parts, for fleets too large for one exact MILP (docs/placement.md, "At fleet
scale"). The pipelines of different dataflow components, and the replicas of one, interact only
through the capacities they share: devices' CPU and memory, links' bandwidth, brokers. A *part*
is one replica of one component: its units, with the sensors and sinks they are wired to.

1. **Start.** The best whole plan of the constructive heuristic and the baselines.
2. **Bound.** Every part is placed alone, exactly, for the first objective term: the MILP of
   `milp.py` over that part (or, when latency comes first, its pipelines' fastest placements
   when they fit), with the sensors' and sinks' processes of the whole fleet in place and
   nothing else. Any plan of the whole, restricted to a part, is a plan of that part alone, so
   the parts' optima bound the first term from below: latency (the sum over pipelines of the
   worst replica) by the sum over components of the largest of their replicas' optima, energy
   by the sum of all, cost (hosting paid once however many parts share a device) by the
   largest. HiGHS' own dual bound counts for a part whose time ran out.
3. **Plan.** The parts' own optima together, when they fit together and beat the start (the
   first term then meets the bound when every part was solved to optimality); otherwise the
   start; otherwise the parts one by one, each in what the others left.
4. **Improvement.** Each part in turn, the one furthest from its own optimum first, is placed
   again exactly in what the rest of the plan leaves it (residual capacities), starting from
   where it is, and kept only when the plan gets better; rounds until one changes nothing
   (`IMPROVE_ROUNDS` at most). Then, time allowing, the parts whose own optimum is not proven
   are solved again for a tighter bound, and every part again for the later objective terms.

The status is `optimal` only with a one-term objective whose bound is met; `infeasible` only
when a part alone is proven infeasible (and no start exists); `unknown` when no plan was found:
the time ran out, or the start, the parts' optima and the one-by-one pass all failed.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from edgeflow.cost import unit_cpu, unit_memory_bytes
from edgeflow.objectives import TERMS, Combine
from edgeflow.placement.baselines import BASELINES
from edgeflow.placement.evaluate import Placement, Split, best_feasible, evaluate, variant_of
from edgeflow.placement.explain import fastest, placement_options
from edgeflow.placement.heuristic import greedy
from edgeflow.placement.milp import Solution, solve
from edgeflow.placement.problem import Problem, Step, out_labels

PART_TIME_S = 2.0          # at most per exact solve of one part
IMPROVE_ROUNDS = 10


@dataclass
class Part:
    component: int
    replica: int
    steps: list[Step] = field(default_factory=list)
    edges: list[tuple[Step, Step]] = field(default_factory=list)
    pipelines: list[tuple[str, int, tuple[Step, ...]]] = field(default_factory=list)
    candidates: dict[Step, list[str]] = field(default_factory=dict)  # narrowed by `prune`

    @property
    def units(self) -> Iterator[Step]:
        return (s for s in self.steps if s[1] is not None)


def parts_of(problem: Problem) -> list[Part]:
    """The parts of a problem: one per replica of each dataflow component, in plan order."""
    comp_of = {name: data["component"] for name, data in problem.dataflow.graph.nodes.items()}
    parts: dict[tuple[int, int], Part] = {}
    shared: dict[int, list[Step]] = defaultdict(list)   # component -> shared sinks

    def part(comp: int, r: int) -> Part:
        if (comp, r) not in parts:
            parts[(comp, r)] = Part(comp, r)
        return parts[(comp, r)]

    for step in problem.steps:
        name, r = step
        if r is None:
            shared[comp_of[name]].append(step)
        else:
            part(comp_of[name], r).steps.append(step)
    for p in parts.values():
        p.steps.extend(shared[p.component])
    for u, v in problem.edges:
        assert u[1] is not None  # only sensors and units send
        part(comp_of[u[0]], u[1]).edges.append((u, v))
    for pipeline in problem.pipelines:
        part(comp_of[pipeline[2][0][0]], pipeline[1]).pipelines.append(pipeline)
    return list(parts.values())


def restrict(problem: Problem, part: Part, taken: dict[object, float] | None = None,
             brokered: frozenset[str] | None = None,
             hosted: frozenset[str] = frozenset()) -> Problem:
    """The problem of placing `part` alone (nothing else placed but the sensors' and sinks'
    processes), or in what the rest of a plan leaves (`taken`, `brokered`, `hosted`)."""
    execution = dataclasses.replace(
        problem.execution, steps={s: problem.execution.steps[s] for s in part.steps},
        edges=tuple(part.edges), pipelines=tuple(part.pipelines))
    steps = {s: dataclasses.replace(problem.steps[s], candidates=part.candidates[s])
             if s in part.candidates else problem.steps[s] for s in part.steps}
    near = {i for info in steps.values() for i in info.candidates}
    return Problem(execution, steps, share=problem.share,
                   drivers={i: problem.drivers[i] for i in near if i in problem.drivers},
                   shared_drivers={i: problem.shared_drivers[i] for i in near
                                   if i in problem.shared_drivers},
                   taken=taken or {},
                   brokered=frozenset(problem.drivers) if brokered is None else brokered,
                   hosted=hosted, _routes=problem._routes, _allowed=problem._allowed,
                   _times=problem._times, _messages=problem._messages, _index=problem.index)


@dataclass
class Use:
    """What a part's placement takes: units' CPU and memory per instance, bit/s per directed
    link, and the instances where it needs a broker and pays hosting."""

    taken: dict[object, float] = field(default_factory=lambda: defaultdict(float))
    brokers: set[str] = field(default_factory=set)
    hosts: set[str] = field(default_factory=set)


def use_of(sub: Problem, assignment: dict[Step, Placement]) -> Use:
    ev = evaluate(sub, assignment)
    out = Use(brokers=set(ev.brokers), hosts=set(ev.hosts))
    for step, info in sub.steps.items():
        if not info.is_unit:
            continue
        place = assignment[step]
        chosen = info.variant(variant_of(place))
        if isinstance(place, Split) and place.head != place.tail:
            cut = chosen.cuts[place.cut]
            parts: list[tuple[str, float, float]] = [
                (place.head, cut.head_work, float(cut.head_weights)),
                     (place.tail, cut.tail_work, float(cut.tail_weights))]
        else:
            inst = place.head if isinstance(place, Split) else place
            parts = [(inst, chosen.work, chosen.memory)]
        for inst, work, memory in parts:
            dev = sub.device(inst)
            out.taken[("cpu", inst)] += unit_cpu(info.rate * sub.compute_s(work, inst,
                                                                            chosen.int8), dev)
            out.taken[("memory", inst)] += unit_memory_bytes(memory, dev)
    for link, load in ev.link_load_bps.items():
        out.taken[link] += load
    return out


@dataclass
class Decomposed:
    solution: Solution
    infeasible_part: Problem | None = None  # a part proven infeasible alone (to explain)


def decompose(problem: Problem, time_limit: float) -> Decomposed:
    started = time.perf_counter()

    margin = 0.0  # kept for what follows: evaluating the plan (here and twice in make_plan)

    def left() -> float:
        return time_limit - margin - (time.perf_counter() - started)

    order = problem.program.app.objective
    first = order[0]
    parts = parts_of(problem)
    pinned: dict[Step, Placement] = {s: i.candidates[0] for s, i in problem.steps.items()
                                     if not i.is_unit}
    # -- 1. a whole plan to start from, which also limits where the parts need looking
    incumbent = _best_whole(problem, order, started + time_limit)
    if incumbent is not None:
        timed = time.perf_counter()
        evaluate(problem, incumbent)
        margin = 4 * (time.perf_counter() - timed) + 0.25  # (and a last solve's overrun)
    # -- 2. every part alone: the bound, and each part's own optimum
    subs: list[Problem] = []
    starts: list[dict[Step, Placement] | None] = []
    alone: list[Solution | None] = []
    for part in parts:  # first what the fastest placements settle (no solver)
        start = None if incumbent is None else {s: incumbent[s] for s in part.steps}
        if left() <= 0:  # no time even for this: the part bounds nothing
            subs.append(restrict(problem, part))
            starts.append(start)
            alone.append(None)
            continue
        limit = None if start is None or first != "latency" else \
            evaluate(restrict(problem, part), start).objective[first]
        subs.append(restrict(problem, prune(problem, part, limit)))
        starts.append(start)
        alone.append(_fastest_alone(subs[-1], order))
        if alone[-1] is not None and alone[-1].status == "infeasible":
            return Decomposed(Solution("infeasible", None,
                                       seconds=time.perf_counter() - started), subs[-1])
    # (a part of a plan that exists cannot be infeasible alone: with a start, a part the solver
    # calls infeasible is a numerical failure and bounds nothing, rather than a proof)
    unsettled = [k for k, s in enumerate(alone) if s is None or s.assignment is None]
    for n, k in enumerate(unsettled):  # then the rest exactly, in most of the time left
        budget = left() * 0.7 / (len(unsettled) - n)
        if budget <= 0.01:
            break
        own = alone[k]
        lower = own.bound if own is not None else 0.0
        solution = solve(subs[k], min(PART_TIME_S, budget), warm_start=False,
                         order=(first,), start=starts[k])  # the bound needs the first term
        if solution.status == "infeasible" and incumbent is None:
            return Decomposed(Solution("infeasible", None,
                                       seconds=time.perf_counter() - started), subs[k])
        if solution.status != "infeasible":
            solution.bound = max(solution.bound, lower)
            alone[k] = solution
    bound = _bound(first, parts, alone)
    # -- the parts' own optima together, when they fit
    if all(s is not None and s.assignment is not None for s in alone):
        together = dict(pinned)
        for s in alone:
            assert s is not None and s.assignment is not None
            together.update(s.assignment)
        ev = evaluate(problem, together)
        if ev.feasible and (incumbent is None or ev.terms(order) <=
                            evaluate(problem, incumbent).terms(order)):
            incumbent = together  # (the parts' own optima ignore the later terms)
    if incumbent is None:
        incumbent = _one_by_one(problem, parts, alone, left)
    if incumbent is None:
        return Decomposed(Solution("unknown", None, seconds=time.perf_counter() - started,
                                   bound=bound))
    # -- 3. improvement, part by part in what the rest leaves; then, with time to spare, the
    # parts whose own optimum is not proven are solved again for a tighter bound
    incumbent = _improve(problem, parts, alone, incumbent, left)
    loose = sorted(((s.bound - s.objective[first], k, s) for k, s in enumerate(alone)
                    if s is not None and s.assignment is not None
                    and s.bound < s.objective[first] * (1 - 1e-7)), key=lambda e: e[:2])
    for n, (_, k, own) in enumerate(loose):
        if left() <= 0.05:
            break
        again = solve(subs[k], min(4 * PART_TIME_S, left() / (len(loose) - n)),
                      warm_start=False, order=(first,), start=own.assignment)
        own.bound = max(own.bound, again.bound)
    bound = _bound(first, parts, alone)
    if len(order) > 1:  # time to spare: the later terms, part by part
        incumbent = _improve(problem, parts, alone, incumbent, left, later=True)
    values = evaluate(problem, incumbent).objective
    found = {t: values[t] for t in order}
    first_gap = _gap(found[first], bound)
    # the bound says nothing of the later terms: optimal only with one term, met
    status = "optimal" if first_gap == 0 and len(order) == 1 else "feasible"
    return Decomposed(Solution(status, incumbent, first_gap, time.perf_counter() - started,
                               found, {first: first_gap}, bound))


def _fastest_alone(sub: Problem, order: tuple[str, ...]) -> Solution | None:
    """A part placed alone by its pipelines' fastest placements (capacities ignored:
    `explain.fastest`), when latency comes first: their sum bounds the part's latency, and when
    they agree and meet every constraint of the part they are its optimum in that term (the
    solution then has an assignment). None when latency is not the first term; infeasible when
    a pipeline has no placement at all."""
    if order[0] != "latency":
        return None
    started = time.perf_counter()
    lower = 0.0
    placement: dict[Step, Placement] = {s: i.candidates[0] for s, i in sub.steps.items()
                                        if not i.is_unit}
    agree = True
    for _, _, path in sub.pipelines:
        seconds, _, placed = fastest(sub, path)
        if not placed:  # no placement reaches the end of this pipeline at all
            return Solution("infeasible", None, seconds=time.perf_counter() - started)
        lower += seconds
        agree = agree and all(placement.setdefault(s, p) == p for s, p in placed.items())
    if agree and len(placement) == len(sub.steps) and (ev := evaluate(sub, placement)).feasible:
        return Solution("optimal" if len(order) == 1 else "feasible", placement, 0.0,
                        time.perf_counter() - started, {t: ev.objective[t] for t in order},
                        {order[0]: 0.0}, lower)
    return Solution("unknown", None, seconds=time.perf_counter() - started, bound=lower)


def through(problem: Problem, path: tuple[Step, ...],
            cap: float = float("inf")) -> dict[Step, dict[str, float]]:
    """For each unit of a pipeline replica that runs whole, the least latency of the pipeline
    with that unit on each of its candidates (capacities ignored): the fastest way there plus
    the fastest way on, both exact shortest paths over the placement options. Candidates
    where that exceeds `cap` may be left out, as are those no placement reaches or leaves, and
    split models."""
    index = problem.index
    opts = [[o[:3] for o in placement_options(problem, step)] for step in path]
    ins = [sorted({o[0] for o in step_opts}) for step_opts in opts]

    def times(prev: Step, sources: list[str], targets: list[str]) -> np.ndarray:
        """Seconds of prev's output from each source (rows) to each target (columns)."""
        nbytes, labels = problem.steps[prev].out_bytes, out_labels(problem, prev)
        columns = np.array([index[t] for t in targets], dtype=np.int64)
        return np.array([problem.times_from(a, nbytes, labels)[columns] for a in sources])

    inf = float("inf")
    limit = cap * (1 + 1e-9) + 1e-12
    # forward: before[k][i], the fastest arrival of step k's input on i; ready[k][j], of its
    # output on j
    before: list[dict[str, float]] = [{} for _ in path]
    ready: list[dict[str, float]] = [{o: 0.0 for _, o, _ in opts[0]}] + [{} for _ in path[1:]]
    for k in range(1, len(path)):
        sources = list(ready[k - 1])
        if not sources:
            return {}
        table = times(path[k - 1], sources, ins[k]) + \
            np.array([ready[k - 1][a] for a in sources])[:, None]
        best = table.min(axis=0)
        before[k] = {i: float(t) for i, t in zip(ins[k], best, strict=True) if t <= limit}
        for i, j, seconds in opts[k]:
            if i in before[k] and (t := before[k][i] + seconds) <= limit and \
                    t < ready[k].get(j, inf):
                ready[k][j] = t
    # backward: after[k][j], the fastest from step k's output on j to the end
    after: list[dict[str, float]] = [{} for _ in path]
    after[-1] = {j: 0.0 for j in ready[-1]}
    for k in range(len(path) - 2, -1, -1):
        onward: dict[str, float] = {}  # step k+1's in-instance -> seconds from its input
        for i, j, seconds in opts[k + 1]:
            if j in after[k + 1] and i in before[k + 1] and \
                    seconds + after[k + 1][j] < onward.get(i, inf):
                onward[i] = seconds + after[k + 1][j]
        if not onward or not ready[k]:
            return {}
        sources, targets = list(ready[k]), list(onward)
        table = times(path[k], sources, targets) + np.array([onward[i] for i in targets])
        after[k] = {j: float(t) for j, t in zip(sources, table.min(axis=1), strict=True)
                    if t < inf}
    out: dict[Step, dict[str, float]] = {}
    for k, step in enumerate(path):
        info = problem.steps[step]
        if info.is_unit and not info.splittable:
            out[step] = {i: before[k][i] + seconds + after[k][j] for i, j, seconds in opts[k]
                         if i in before[k] and j in after[k]}
    return out


def prune(problem: Problem, part: Part, limit: float | None = None) -> Part:
    """`part` with the candidates dropped that no plan of it could use: those where a pipeline
    would miss its SLO, and with `limit` those where the part's first objective term (latency,
    the sum over its pipelines) would exceed it (only for a search that need not look past
    `limit`). Exact, from `through`; a unit left with none keeps all."""
    keep: dict[Step, set[str]] = {}
    fastest_of = {}
    paths = [(name, path) for name, _, path in part.pipelines]
    times = [through(problem, path, min(
        limit if limit is not None else float("inf"),
        problem.program.pipelines[name].slo.latency_s or float("inf"))) for name, path in paths]
    for (name, path), t in zip(paths, times, strict=True):
        fastest_of[name, path] = min((min(v.values(), default=0.0) for v in t.values()),
                                     default=0.0)
    floor = sum(fastest_of.values())
    for (name, path), t in zip(paths, times, strict=True):
        slo = problem.program.pipelines[name].slo.latency_s
        cap = min(slo if slo is not None else float("inf"),
                  limit - (floor - fastest_of[name, path]) if limit is not None
                  else float("inf"))
        for step, by_inst in t.items():
            fine = {i for i, seconds in by_inst.items() if seconds <= cap * (1 + 1e-9) + 1e-12}
            keep[step] = keep.get(step, set(by_inst)) & fine
    pruned = dataclasses.replace(part, candidates={
        step: [i for i in problem.steps[step].candidates if i in fine]
        for step, fine in keep.items() if fine})
    return pruned


def _gap(value: float, bound: float) -> float:
    return 0.0 if value <= bound * (1 + 1e-9) + 1e-12 else min(1.0, (value - bound) / value)


def _bound(term: str, parts: list[Part], alone: list[Solution | None]) -> float:
    """The first term's lower bound from the parts' own bounds (0 for a part not solved)."""
    bounds = [max(0.0, s.bound) if s is not None else 0.0 for s in alone]
    combine = TERMS[term].combine
    if combine is Combine.SUM:
        return sum(bounds)
    if combine is Combine.NONE:
        return max(bounds, default=0.0)
    worst: dict[int, float] = defaultdict(float)  # MAX: per component, the worst replica's
    for part, b in zip(parts, bounds, strict=True):
        worst[part.component] = max(worst[part.component], b)
    return sum(worst.values())


def _best_whole(problem: Problem, order: tuple[str, ...], deadline: float,
                ) -> dict[Step, Placement] | None:
    return best_feasible(problem, [greedy(problem, deadline),
                                   *(b(problem) for b in BASELINES.values())], order)


class _Ledger:
    """What every part of a plan takes, so that one part can be placed again in what the
    others leave."""

    def __init__(self, problem: Problem, parts: int) -> None:
        self.problem = problem
        self.uses: list[Use | None] = [None] * parts
        self.total: dict[object, float] = defaultdict(float)
        self.brokers: dict[str, int] = defaultdict(int)
        self.hosts: dict[str, int] = defaultdict(int)
        self.pinned_brokers = frozenset(problem.drivers)

    def put(self, k: int, part: Part, assignment: dict[Step, Placement],
            use: Use | None = None) -> None:
        """Part k placed as `assignment` (whose `use` may be known)."""
        use = use or use_of(restrict(self.problem, part), assignment)
        self.uses[k] = use
        for key, v in use.taken.items():
            self.total[key] += v
        for i in use.brokers:
            self.brokers[i] += 1
        for i in use.hosts:
            self.hosts[i] += 1

    def take(self, k: int) -> Use:
        """Part k taken out of the plan; returns what it took."""
        use = self.uses[k]
        assert use is not None
        for key, v in use.taken.items():
            self.total[key] -= v
        for i in use.brokers:
            self.brokers[i] -= 1
        for i in use.hosts:
            self.hosts[i] -= 1
        self.uses[k] = None
        return use

    def residual(self, part: Part) -> Problem:
        """The part's problem in what the other parts (not taken out) leave."""
        brokered = self.pinned_brokers | {i for i, n in self.brokers.items() if n}
        hosted = frozenset(i for i, n in self.hosts.items() if n)
        return restrict(self.problem, part, self.total, brokered, hosted)


def _one_by_one(problem: Problem, parts: list[Part], alone: list[Solution | None],
                left: Callable[[], float]) -> dict[Step, Placement] | None:
    """Each part in turn, in what the parts before it left: its own optimum when that fits,
    an exact solve otherwise."""
    out: dict[Step, Placement] = {s: i.candidates[0] for s, i in problem.steps.items()
                                  if not i.is_unit}
    ledger = _Ledger(problem, len(parts))
    for k, part in enumerate(parts):
        sub = ledger.residual(part)
        own = alone[k]
        if own is not None and own.assignment is not None and \
                evaluate(sub, own.assignment).feasible:
            chosen = own.assignment
        else:
            if left() <= 0.01:
                return None
            solution = solve(sub, min(PART_TIME_S, left()), warm_start=False)
            if solution.assignment is None:
                return None
            chosen = solution.assignment
        ledger.put(k, part, chosen)
        out.update(chosen)
    return out


def _improve(problem: Problem, parts: list[Part], alone: list[Solution | None],
             incumbent: dict[Step, Placement], left: Callable[[], float],
             later: bool = False) -> dict[Step, Placement]:
    """Each part in turn placed again in what the rest leaves, kept when the plan gets better:
    the parts furthest from their own optimum in the first term first, those already there
    skipped (they cannot gain in it); with `later`, every part, for the later terms too. Rounds
    until one changes nothing, `IMPROVE_ROUNDS` at most, within the time left."""
    order = problem.program.app.objective
    ledger = _Ledger(problem, len(parts))
    for k, part in enumerate(parts):
        ledger.put(k, part, {s: incumbent[s] for s in part.steps})
    current = dict(incumbent)
    here = [evaluate(restrict(problem, p), {s: current[s] for s in p.steps}).terms(order)
            for p in parts]  # each part's objective terms alone (the first is exact)
    own_first = [s.objective.get(order[0], 0.0) if s is not None else 0.0 for s in alone]
    for _ in range(IMPROVE_ROUNDS):
        regret = sorted(range(len(parts)), key=lambda k: own_first[k] - here[k][0])
        changed = False
        for k in regret:
            if left() <= 0.01:
                return current
            own = alone[k]
            part = parts[k]
            at_own = own is not None and own.assignment is not None and \
                here[k][0] <= own_first[k] * (1 + 1e-9) + 1e-12
            # a part at its own optimum cannot gain in the first term (with one replica: the
            # worst over replicas may still gain from a part that is not the worst)
            if not later and at_own and part_replicas(problem, part) == 1:
                continue
            before = {s: current[s] for s in part.steps}
            use = ledger.take(k)
            sub = ledger.residual(prune(problem, part, here[k][0]) if order[0] == "latency"
                                  else part)
            after: dict[Step, Placement] | None
            if not later and own is not None and own.assignment is not None and \
                    evaluate(sub, own.assignment).feasible:
                after = own.assignment  # its own optimum fits in what the rest leaves
            else:
                after = solve(sub, min(PART_TIME_S, left()), warm_start=False,
                              start=before).assignment
            if after is not None and (ev := evaluate(sub, after)).feasible and \
                    ev.terms(order) < evaluate(sub, before).terms(order):
                trial = {**current, **after}
                if part_replicas(problem, part) == 1 or \
                        evaluate(problem, trial).terms(order) <= \
                        evaluate(problem, current).terms(order):
                    current, changed = trial, True
                    ledger.put(k, part, after)
                    here[k] = evaluate(restrict(problem, part), after).terms(order)
                    continue
            ledger.put(k, part, before, use)
        if not changed:
            break
    return current


def part_replicas(problem: Problem, part: Part) -> int:
    return problem.dataflow.components[part.component].replicas
