"""Baseline placements, for comparison only (`edgeflow plan --compare`, the benchmarks):

- `sensor`: every unit on its replica's sensor device (all on the device, as users start);
- `cloud`: every unit on the fastest cloud instance;
- `neurosurgeon`: operators on the sensor device, each splittable model cut once at the best
  point between the sensor device and the fastest cloud instance (Neurosurgeon, ASPLOS 2017),
  the rest pinned;
- `edgeward`: iFogSim's edge-ward policy: each unit, in dataflow order, goes where its input
  comes from, and moves up the hierarchy (edge, fog, cloud) while that device's CPU is full;
  only CPU is checked.
Each returns an assignment, or None where the app has no device the baseline needs.
"""

from __future__ import annotations

from collections import defaultdict

from edgeflow.ir import Tier
from edgeflow.placement.evaluate import Placement, Split, out_instance
from edgeflow.placement.problem import Problem, Step

_TIERS = list(Tier)  # declared from the edge up


def _pinned(problem: Problem) -> dict[Step, Placement]:
    return {s: i.candidates[0] for s, i in problem.steps.items() if not i.is_unit}


def _sensor_instance(problem: Problem, step: Step) -> str:
    comp = problem.dataflow.graph.nodes[step[0]]["component"]
    sensor = problem.dataflow.components[comp].sensors[0]
    return problem.steps[(sensor, step[1])].candidates[0]


def _fastest_cloud(problem: Problem) -> str | None:
    clouds = [i for i, (d, _) in problem.instances.items() if d.tier is Tier.CLOUD and d.count == 1]
    return max(clouds, key=lambda i: problem.device(i).compute_flops, default=None)


def sensor(problem: Problem) -> dict[Step, Placement]:
    out = _pinned(problem)
    for step, info in problem.steps.items():
        if info.is_unit:
            out[step] = _sensor_instance(problem, step)
    return out


def cloud(problem: Problem) -> dict[Step, Placement] | None:
    target = _fastest_cloud(problem)
    if target is None:
        return None
    out = _pinned(problem)
    for step, info in problem.steps.items():
        if info.is_unit:
            out[step] = target
    return out


def neurosurgeon(problem: Problem) -> dict[Step, Placement] | None:
    target = _fastest_cloud(problem)
    if target is None:
        return None
    out = sensor(problem)
    for step, info in problem.steps.items():
        if not info.splittable:
            continue
        edge = out[step]
        assert isinstance(edge, str)
        best: tuple[float, Placement] = (problem.compute_s(info.work, edge), edge)
        for k, cut in enumerate(info.cuts):
            route = problem.route(edge, target, cut.transfer_bytes, frozenset())
            if route is None:
                continue
            total = problem.compute_s(cut.head_work, edge) + route.seconds + \
                problem.compute_s(cut.tail_work, target)
            if total < best[0]:
                best = (total, Split(k, edge, target))
        out[step] = best[1]
    return out


def edgeward(problem: Problem) -> dict[Step, Placement]:
    out = _pinned(problem)
    util: dict[str, float] = defaultdict(float)
    order = problem.dataflow.graph.nodes.data("order")
    inputs: dict[Step, list[Step]] = defaultdict(list)
    for u, v in problem.edges:
        inputs[v].append(u)
    for step in sorted(problem.steps, key=lambda s: (order[s[0]], s[1] if s[1] is not None else -1)):
        info = problem.steps[step]
        if not info.is_unit:
            continue
        preds = inputs[step]
        here = out_instance(out[preds[0]]) if preds else info.candidates[0]
        if here not in info.candidates:
            here = info.candidates[0]
        tier = _TIERS.index(problem.device(here).tier)
        while util[here] + info.rate * problem.compute_s(info.work, here) > 1 \
                and tier < len(_TIERS) - 1:
            tier += 1
            upper = [i for i in info.candidates if problem.device(i).tier is _TIERS[tier]]
            if not upper:
                continue
            linked = [i for i in upper if problem.graph.has_edge(here, i)]
            here = max(linked or upper, key=lambda i: problem.device(i).compute_flops)
        util[here] += info.rate * problem.compute_s(info.work, here)
        out[step] = here
    return out


BASELINES = {"sensor": sensor, "cloud": cloud, "neurosurgeon": neurosurgeon, "edgeward": edgeward}
