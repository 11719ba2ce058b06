"""A constructive plan, fast enough for any app placement accepts: the MILP's warm start when the
baselines and the symmetric plan have none to offer (heterogeneous fleets).

Units are placed one at a time in dataflow order (replica by replica), each on the allowed
instance where its output is ready soonest (its inputs' arrival over their routes, its compute,
and the route on to the sinks it feeds) among those whose remaining CPU, memory (the runtime's
processes included, docs/placement.md) and links can still take it. Models run whole. Greedy
choices can scatter a pipeline so that it misses its SLO; such pipelines are then placed first
and whole, on the one instance that runs all their units soonest and still has room, and the
rest greedily again (a few rounds). The result is checked by `evaluate` like any other start;
None when no round gives a plan that meets every constraint.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from edgeflow.cost import (
    runtime_cpu,
    runtime_memory_bytes,
    stream_bps,
    unit_cpu,
    unit_memory_bytes,
)
from edgeflow.placement.evaluate import Placement, evaluate, out_instance
from edgeflow.placement.problem import Problem, Route, Step, out_labels

ROUNDS = 4  # of re-placing pipelines that miss their SLO


def greedy(problem: Problem, deadline: float = float("inf")) -> dict[Step, Placement] | None:
    """The constructive plan, or None; None too when `time.perf_counter()` passes
    `deadline` before it is done."""
    together: list[tuple[Step, ...]] = []
    for _ in range(ROUNDS):
        out = _place(problem, together, deadline)
        if out is None:
            return None
        ev = evaluate(problem, out)
        if ev.feasible:
            return out
        slow = [tuple(s for s in path if problem.steps[s].is_unit)
                for name, r, path in problem.pipelines
                if (slo := problem.program.pipelines[name].slo.latency_s) is not None
                and ev.latency_s[(name, r)] > slo]
        known = set(together)
        together += [c for c in slow if c and c not in known]
        if not slow:
            return None  # capacities or links, which whole pipelines would not mend
    return None


def _place(problem: Problem, together: list[tuple[Step, ...]],
           deadline: float = float("inf")) -> dict[Step, Placement] | None:
    """One round: the chains in `together` first, each whole on one instance, then the rest
    unit by unit."""
    order = problem.dataflow.graph.nodes.data("order")
    inputs: dict[Step, list[Step]] = defaultdict(list)
    outputs: dict[Step, list[Step]] = defaultdict(list)
    for u, v in problem.edges:
        inputs[v].append(u)
        outputs[u].append(v)
    out: dict[Step, Placement] = {s: i.candidates[0] for s, i in problem.steps.items()
                                  if not i.is_unit}
    cpu: dict[str, float] = defaultdict(float)
    memory: dict[str, float] = defaultdict(float)
    load: dict[tuple[str, str], float] = defaultdict(float)
    brokers: set[str] = set()
    sent: set[tuple[Step, str]] = set()

    def broker_need(inst: str) -> tuple[float, float]:
        if inst in brokers:
            return 0.0, 0.0
        dev = problem.device(inst)
        return runtime_cpu(dev, True, 0), float(runtime_memory_bytes(dev, True, 0))

    def host(inst: str) -> None:
        c, m = broker_need(inst)
        cpu[inst] += c
        memory[inst] += m
        brokers.add(inst)

    def send(u: Step, route: Route) -> None:
        """u's output along `route` (once per destination), loading its links."""
        if len(route.hops) == 1 or (u, route.hops[-1]) in sent:
            return
        sent.add((u, route.hops[-1]))
        info = problem.steps[u]
        for link in route.links:
            load[link] += stream_bps(info.rate, info.out_bytes)
        for hop in route.hops:
            host(hop)

    for inst in problem.drivers:
        host(inst)
        driver_memory, driver_cpu = problem.drivers_need(inst)
        memory[inst] += driver_memory
        cpu[inst] += driver_cpu

    def fits(inst: str, steps: tuple[Step, ...]) -> bool:
        dev = problem.device(inst)
        extra_cpu, extra_memory = broker_need(inst)
        need_cpu = sum(unit_cpu(problem.steps[s].rate * problem.compute_s(
            problem.steps[s].work, inst), dev) for s in steps)
        need_memory = sum(unit_memory_bytes(problem.steps[s].memory, dev) for s in steps)
        return cpu[inst] + extra_cpu + need_cpu <= problem.cpu_room(inst) and \
            memory[inst] + extra_memory + need_memory <= problem.memory_room(inst)

    def commit(step: Step, inst: str, routes: list[tuple[Step, Route]]) -> None:
        info = problem.steps[step]
        dev = problem.device(inst)
        host(inst)
        cpu[inst] += unit_cpu(info.rate * problem.compute_s(info.work, inst), dev)
        memory[inst] += unit_memory_bytes(info.memory, dev)
        for u, r in routes:
            send(u, r)
        out[step] = inst

    for chain in together:
        chain = tuple(s for s in chain if s not in out)
        if not chain:
            continue
        common = [i for i in problem.steps[chain[0]].candidates
                  if all(i in problem.steps[s].candidates and
                         problem.tier_allows(i, problem.steps[s].labels) for s in chain)]
        options: list[tuple[float, str, dict[Step, list[tuple[Step, Route]]]]] = []
        for inst in common:
            if not fits(inst, chain):
                continue
            seconds, ok = 0.0, True
            feeds: dict[Step, list[tuple[Step, Route]]] = {s: [] for s in chain}
            for s in chain:
                seconds += problem.compute_s(problem.steps[s].work, inst)
                for u in inputs[s]:
                    if u in feeds:  # from the chain itself, on the same instance
                        r = problem.route(inst, inst, problem.steps[u].out_bytes,
                                          out_labels(problem, u))
                    elif u in out:
                        r = problem.route(out_instance(out[u]), inst,
                                          problem.steps[u].out_bytes, out_labels(problem, u))
                    else:
                        r = None
                    if r is None or not _room(problem, load, sent, u, r):
                        ok = False
                        break
                    seconds += r.seconds if u not in feeds else 0.0
                    feeds[s].append((u, r))
            if ok:
                options.append((seconds, inst, feeds))
        if not options:
            continue  # left to the unit-by-unit pass
        _, inst, chosen = min(options, key=lambda o: (o[0], o[1]))
        for s in chain:
            commit(s, inst, chosen[s])
    units = sorted((s for s, i in problem.steps.items() if i.is_unit and s not in out),
                   key=lambda s: (s[1] if s[1] is not None else -1, order[s[0]]))
    index = problem.index
    for n, step in enumerate(units):
        if n % 64 == 0 and time.perf_counter() > deadline:
            return None
        info = problem.steps[step]
        allowed = [i for i in info.candidates if problem.tier_allows(i, info.labels)]
        columns = np.array([index[i] for i in allowed], dtype=np.int64)
        # score every candidate from route times alone (a search per source, kept: links
        # are symmetric, so the way on to a sink is the sink's way here), then take the
        # best-scored one that has room: the same choice as checking all, with routes only
        # for the ones checked
        arrive = np.zeros(len(allowed))
        for u in inputs[step]:
            arrive = np.maximum(arrive, problem.times_from(
                out_instance(out[u]), problem.steps[u].out_bytes, out_labels(problem, u))[columns])
        leave = np.zeros(len(allowed))
        for v in outputs[step]:
            if not problem.steps[v].is_unit:
                leave = np.maximum(leave, problem.times_from(
                    problem.steps[v].candidates[0], info.out_bytes,
                    out_labels(problem, step))[columns])
        compute = np.array([problem.compute_s(info.work, i) for i in allowed])
        scores = arrive + compute + leave
        for score, inst in sorted(zip(scores.tolist(), allowed, strict=True)):
            if score == float("inf"):
                return None  # the rest have no route either
            if not fits(inst, (step,)):
                continue
            routes = []
            for u in inputs[step]:
                route = problem.route(out_instance(out[u]), inst, problem.steps[u].out_bytes,
                                      out_labels(problem, u))
                if route is None or not _room(problem, load, sent, u, route):
                    break
                routes.append((u, route))
            else:
                commit(step, inst, routes)
                break
        else:
            return None
    return out


def _room(problem: Problem, load: dict[tuple[str, str], float],
          sent: set[tuple[Step, str]], u: Step, route: Route) -> bool:
    """Whether the links of `route` can still carry u's output (already counted when u's
    output goes to that destination anyway)."""
    if len(route.hops) == 1 or (u, route.hops[-1]) in sent:
        return True
    bps = stream_bps(problem.steps[u].rate, problem.steps[u].out_bytes)
    return all(load[link] + bps <= problem.link_room(link) for link in route.links)
