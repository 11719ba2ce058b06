"""Evaluate an assignment of steps to device instances under the cost model: per pipeline replica
its latency and breakdown, per instance utilisation and memory, per directed link its load, the
objective terms, and every violated constraint in words."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from edgeflow.cost import (
    CutOption,
    host_usd_per_h,
    runtime_cpu,
    runtime_memory_bytes,
    stream_bps,
    traffic_usd_per_h,
    unit_cpu,
    unit_memory_bytes,
)
from edgeflow.objectives import TERMS
from edgeflow.placement.problem import Problem, Route, Step, out_labels
from edgeflow.plan import Compute, Part, Transfer, unit_name


@dataclass(frozen=True)
class Split:
    """A model split at cut `cut` of its variant `variant` (0: the model itself), head and tail
    on two instances; with head == tail, that variant run whole on one instance (how a model
    with variants runs whole as another variant: a plain instance means the model itself)."""

    cut: int          # index into the variant's cut options
    head: str         # instance
    tail: str
    variant: int = 0  # index into the step's variants


def variant_of(place: Placement) -> int:
    return place.variant if isinstance(place, Split) else 0


Placement = str | Split


@dataclass
class Evaluation:
    problem: Problem
    feasible: bool
    latency_s: dict[tuple[str, int], float] = field(default_factory=dict)
    breakdown: dict[tuple[str, int], list[Compute | Transfer]] = field(default_factory=dict)
    utilization: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    memory: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # all of it
    cpu: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # work + runtime
    brokers: set[str] = field(default_factory=set)
    link_load_bps: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    hosts: set[str] = field(default_factory=set)
    objective: dict[str, float] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def terms(self, order: tuple[str, ...]) -> tuple[float, ...]:
        return tuple(self.objective[t] for t in order)

    # the built-in objective terms (edgeflow.objectives) of this assignment
    def worst_latency_sum(self) -> float:
        worst: dict[str, float] = {}
        for (name, _), lat in self.latency_s.items():
            worst[name] = max(worst.get(name, 0.0), lat)
        return sum(worst.values())

    def cost_usd_per_h(self) -> float:
        problem = self.problem
        traffic = sum(traffic_usd_per_h(load, problem.link_of(a, b).cost_usd_per_byte)
                      for (a, b), load in self.link_load_bps.items())
        return sum(host_usd_per_h(problem.device(i)) for i in self.hosts
                   if i not in problem.hosted) + traffic

    def energy_w(self) -> float:
        return sum(self.problem.device(i).power_w * u for i, u in self.utilization.items())


def in_instance(p: Placement) -> str:
    return p.head if isinstance(p, Split) else p


def out_instance(p: Placement) -> str:
    return p.tail if isinstance(p, Split) else p


def _route_or_fail(problem: Problem, ev: Evaluation, a: str, b: str, nbytes: int,
                   labels: frozenset[str], what: str) -> Route | None:
    route = problem.route(a, b, nbytes, labels)
    if route is None:
        ev.violations.append(f"no route for {what} from `{a}` to `{b}`"
                             + (f" through tiers allowed for {', '.join(sorted(labels))}"
                                if labels else ""))
    return route


def evaluate(problem: Problem, assignment: dict[Step, Placement]) -> Evaluation:
    ev = Evaluation(problem, feasible=True)
    program = problem.program
    # -- compute, utilisation, memory, privacy of where things run
    compute_entries: dict[Step, list[Compute]] = {}
    internal: dict[Step, tuple[Route | None, CutOption]] = {}
    for step, info in problem.steps.items():
        place = assignment[step]
        for inst in ([place.head, place.tail] if isinstance(place, Split) else [place]):
            if not problem.tier_allows(inst, info.labels):
                ev.violations.append(f"`{info.name}` runs on `{inst}` "
                                     f"({problem.device(inst).tier.value}), which privacy "
                                     f"labels {', '.join(sorted(info.labels))} do not allow")
        if not info.is_unit:
            continue
        chosen = info.variant(variant_of(place))
        if isinstance(place, Split) and place.head != place.tail:
            cut = chosen.cuts[place.cut]
            parts: list[tuple[str, str, float, float]] = [
                (unit_name(info.name, Part.HEAD), place.head, cut.head_work,
                 float(cut.head_weights)),
                (unit_name(info.name, Part.TAIL), place.tail, cut.tail_work,
                 float(cut.tail_weights))]
            internal[step] = (_route_or_fail(problem, ev, place.head, place.tail,
                                             cut.transfer_bytes, info.labels,
                                             f"the cut of `{info.name}`"), cut)
        else:
            inst = in_instance(place)
            parts = [(info.name, inst, chosen.work, chosen.memory)]
        entries = []
        for unit, inst, work, memory in parts:
            seconds = problem.compute_s(work, inst, chosen.int8)
            ev.utilization[inst] += info.rate * seconds
            ev.cpu[inst] += unit_cpu(info.rate * seconds, problem.device(inst))
            ev.memory[inst] += unit_memory_bytes(memory, problem.device(inst))
            ev.hosts.add(inst)
            entries.append(Compute(unit=unit, device=inst, seconds=seconds))
        compute_entries[step] = entries
    # -- messages between steps (each output once per distinct consumer instance)
    edge_route: dict[tuple[Step, Step], Route | None] = {}
    sent: dict[Step, set[str]] = defaultdict(set)
    for u, v in problem.edges:
        a, b = out_instance(assignment[u]), in_instance(assignment[v])
        info = problem.steps[u]
        edge_route[(u, v)] = _route_or_fail(problem, ev, a, b, info.out_bytes,
                                            out_labels(problem, u), f"`{u[0]}` -> `{v[0]}`")
        if a != b and edge_route[(u, v)] is not None and b not in sent[u]:
            sent[u].add(b)
            ev.brokers.update(edge_route[(u, v)].hops)  # type: ignore[union-attr]
            for link in edge_route[(u, v)].links:  # type: ignore[union-attr]
                ev.link_load_bps[link] += stream_bps(info.rate, info.out_bytes)
    for step, (route, cut) in internal.items():
        if route is not None:
            ev.brokers.update(route.hops)
            for link in route.links:
                ev.link_load_bps[link] += stream_bps(problem.steps[step].rate,
                                                     cut.transfer_bytes)
    # -- the runtime: a broker where a unit or driver runs or a message passes, the drivers
    ev.brokers |= ev.hosts | set(problem.drivers)
    for inst in ev.brokers:  # (a one-replica problem's shared instance pays its share)
        share, (driver_memory, driver_cpu) = problem.capacity(inst), problem.drivers_need(inst)
        ev.memory[inst] += runtime_memory_bytes(problem.device(inst), True, 0) * share + \
            driver_memory
        ev.cpu[inst] += runtime_cpu(problem.device(inst), True, 0) * share + driver_cpu
    # -- pipelines
    for name, r, path in problem.pipelines:
        total, rows = 0.0, list[Compute | Transfer]()
        for i, step in enumerate(path):
            if i > 0:
                route = edge_route.get((path[i - 1], step))
                if route is not None:
                    nbytes = problem.steps[path[i - 1]].out_bytes
                    rows.append(_transfer_row(route, nbytes))
                    total += route.seconds
            for j, entry in enumerate(compute_entries.get(step, [])):
                if j == 1:  # between a split model's head and tail
                    route, cut = internal[step]
                    if route is not None:
                        rows.append(_transfer_row(route, cut.transfer_bytes))
                        total += route.seconds
                rows.append(entry)
                total += entry.seconds
        ev.latency_s[(name, r)] = total
        ev.breakdown[(name, r)] = rows
        slo = program.pipelines[name].slo.latency_s
        if slo is not None and total > slo * (1 + 1e-9):
            ev.violations.append(f"pipeline `{name}` replica {r} takes {total * 1e3:.3f} ms, "
                                 f"above its SLO of {slo * 1e3:g} ms")
    # -- capacities
    for inst, util in ev.cpu.items():
        if util > problem.cpu_room(inst) + problem.capacity(inst) * 1e-9:
            ev.violations.append(f"`{inst}` is loaded to {util:.1%} of its compute (its units' "
                                 f"work {ev.utilization.get(inst, 0.0):.1%}, the rest the "
                                 "runtime's processes)")
    for inst, mem in ev.memory.items():
        cap = problem.memory_room(inst)
        if mem > cap + problem.device(inst).memory_bytes * problem.capacity(inst) * 1e-9:
            ev.violations.append(f"`{inst}` needs {mem / 2**20:.1f} MiB of memory, has "
                                 f"{cap / 2**20:.1f} MiB")
    for (a, b), load in ev.link_load_bps.items():
        bw = problem.link_room((a, b))
        if load > bw + problem.link_of(a, b).bandwidth_bps * problem.capacity((a, b)) * 1e-9:
            ev.violations.append(f"link `{a}` -> `{b}` carries {load / 1e6:.3f} Mbps, above its "
                                 f"{bw / 1e6:g} Mbps")
    ev.objective = {name: term.evaluate(ev) for name, term in TERMS.items()}
    ev.feasible = not ev.violations
    return ev


def best_feasible(problem: Problem, candidates: Iterable[dict[Step, Placement] | None],
                  order: tuple[str, ...]) -> dict[Step, Placement] | None:
    """Of the candidate assignments (None: a heuristic that found none), the one that meets
    every constraint with the least objective terms in `order` (the first of equals); None
    when none does."""
    best, best_terms = None, None
    for assignment in candidates:
        if assignment is None:
            continue
        ev = evaluate(problem, assignment)
        if ev.feasible and (best_terms is None or ev.terms(order) < best_terms):
            best, best_terms = assignment, ev.terms(order)
    return best


def _transfer_row(route: Route, nbytes: int) -> Transfer:
    return Transfer(route=route.hops, bytes=nbytes, seconds=route.seconds)
