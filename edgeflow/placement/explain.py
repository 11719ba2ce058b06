"""Why a placement problem has no solution, in words a user can act on, with numbers and the
source spans of the declarations involved.

Three sources, most specific first: conflicts found while building the MILP (privacy rules that
leave a step nowhere to run, pinned steps with no allowed route); pipelines whose SLO cannot be met
even with every step on its fastest allowed device (an exact shortest path over the pipeline's
placement options, capacities ignored), naming the largest single term; and, for conflicts of
capacity, an elastic version of the MILP whose rows may exceed their limits at a price: the limits
it has to exceed, and by how much, are the conflict.
"""

from __future__ import annotations

import itertools

import numpy as np

from edgeflow.cost import stream_bps, unit_memory_bytes
from edgeflow.placement.evaluate import Placement, Split, evaluate, out_instance, variant_of
from edgeflow.placement.milp import assignment_from, formulate
from edgeflow.placement.problem import Problem, Step, StepInfo, out_labels
from edgeflow.plan import Part, Reason, unit_name
from edgeflow.span import Span


def _reason(message: str, spans: list[Span] | None = None) -> Reason:
    return Reason(message=message, spans=tuple(spans or ()))


# a step's placement option: (in-instance, out-instance, seconds, placement)
Option = tuple[str, str, float, Placement]


def placement_options(problem: Problem, step: Step) -> list[Option]:
    """Where a step may run, capacities ignored: a pinned step where it sits; a unit on each
    candidate its labels allow, whole; a split model also cut at each option, head and tail on
    two allowed candidates a route joins (its seconds: head, transfer and tail)."""
    info = problem.steps[step]
    if not info.is_unit:
        return [(i, i, 0.0, i) for i in info.candidates]
    allowed = [i for i in info.candidates if problem.tier_allows(i, info.labels)]
    options: list[Option] = []
    for n, var in enumerate(info.options):  # each variant (0: the model itself) whole, cut
        options += [(i, i, problem.compute_s(var.work, i, var.int8),
                     i if n == 0 else Split(max(len(var.cuts) - 1, 0), i, i, n))
                    for i in allowed]
        for k, cut in enumerate(var.cuts):
            for i in allowed:
                for j in allowed:
                    route = problem.route(i, j, cut.transfer_bytes, info.labels)
                    if i == j or route is None:
                        continue
                    options.append((i, j, problem.compute_s(cut.head_work, i, var.int8) +
                                    route.seconds + problem.compute_s(cut.tail_work, j, var.int8),
                                    Split(k, i, j, n)))
    return options


def fastest(problem: Problem, path: tuple[Step, ...],
            ) -> tuple[float, list[tuple[float, str]], dict[Step, Placement]]:
    """Least latency of a pipeline replica over every placement of its steps (capacities
    ignored: an exact shortest path over its placement options), the terms of the best
    placement, and that placement (empty when nothing reaches the end)."""
    first = problem.steps[path[0]].candidates[0]
    # per layer: out-instance -> (seconds so far, out-instance before, option taken)
    layers: list[dict[str, tuple[float, str, Option]]] = [{first: (0.0, first,
                                                                   (first, first, 0.0, first))}]
    for prev, step in itertools.pairwise(path):
        labels = problem.dataflow.graph.nodes[prev[0]]["labels"]
        nbytes = problem.steps[prev].out_bytes
        options = placement_options(problem, step)
        nxt: dict[str, tuple[float, str, Option]] = {}
        for a, (base, _, _) in layers[-1].items():
            for option in options:
                route = problem.route(a, option[0], nbytes, labels)
                if route is None:
                    continue
                total = base + route.seconds + option[2]
                if option[1] not in nxt or total < nxt[option[1]][0]:
                    nxt[option[1]] = (total, a, option)
        if not nxt:
            return float("inf"), [], {}
        layers.append(nxt)
    # walk back: the placement, then the terms in path order
    end = min(layers[-1], key=lambda j: layers[-1][j][0])
    total = layers[-1][end][0]
    chosen: list[tuple[str, Option]] = []
    for layer in reversed(layers[1:]):
        _, before, option = layer[end]
        chosen.append((before, option))
        end = before
    chosen.reverse()
    placement: dict[Step, Placement] = {path[0]: first}
    terms: list[tuple[float, str]] = []
    for (before, (i, j, _, place)), (prev, step) in zip(chosen, itertools.pairwise(path),
                                                       strict=True):
        placement[step] = place
        info = problem.steps[step]
        route = problem.route(before, i, problem.steps[prev].out_bytes,
                              problem.dataflow.graph.nodes[prev[0]]["labels"])
        assert route is not None
        terms.append((route.seconds, _route_text(problem, route.hops)))
        picked = info.variant(variant_of(place))
        what = info.name if picked.name is None else f"{info.name} ({picked.name})"
        if isinstance(place, Split) and place.head != place.tail:
            cut = picked.cuts[place.cut]
            inner = problem.route(i, j, cut.transfer_bytes, info.labels)
            assert inner is not None
            terms += [(problem.compute_s(cut.head_work, i, picked.int8),
                       f"`{unit_name(info.name, Part.HEAD)}` on `{i}`"),
                      (inner.seconds, f"sending the cut of `{what}` from `{i}` to `{j}`"),
                      (problem.compute_s(cut.tail_work, j, picked.int8),
                       f"`{unit_name(info.name, Part.TAIL)}` on `{j}`")]
        elif info.is_unit:
            terms.append((problem.compute_s(picked.work, i, picked.int8), f"`{what}` on `{i}`"))
    return total, terms, placement


def _route_text(problem: Problem, hops: tuple[str, ...]) -> str:
    if len(hops) == 1:
        return f"a message through `{hops[0]}`'s broker"
    if len(hops) == 2:
        return f"the `{hops[0]}` -> `{hops[1]}` link"
    return "the route " + " -> ".join(f"`{h}`" for h in hops)


def _names(units: dict[str, float]) -> str:
    """The units that carry at least a tenth of a load, largest first."""
    total = sum(units.values())
    big = sorted((u for u, x in units.items() if total and x >= 0.1 * total),
                 key=lambda u: -units[u])
    return ", ".join(f"`{u}`" for u in big) if big else "what must run there"


def _link_span(problem: Problem, a: str, b: str) -> Span:
    return problem.link_of(a, b).span


def explain(problem: Problem, time_limit: float = 10.0) -> list[Reason]:
    program = problem.program
    out: list[Reason] = []
    f = formulate(problem)
    for message, spans in f.infeasible:
        out.append(_reason(message, spans))
    if out:
        return out
    seen: set[str] = set()
    for name, _, path in problem.pipelines:
        slo = program.pipelines[name].slo.latency_s
        if slo is None or name in seen:
            continue
        best, terms, _ = fastest(problem, path)
        if best > slo * (1 + 1e-9):
            seen.add(name)
            pipeline = program.pipelines[name]
            spans = [pipeline.slo_spans.get("latency", pipeline.span)]
            if best == float("inf"):
                out.append(_reason(f"pipeline `{name}` has no placement whose messages can "
                                       "reach their destinations over allowed routes", spans))
                continue
            worst = max(terms, key=lambda t: t[0])
            out.append(_reason(
                f"pipeline `{name}` needs {best * 1e3:.1f} ms even with every unit on its "
                f"fastest allowed device; its SLO is {slo * 1e3:g} ms: {worst[1]} alone costs "
                f"{worst[0] * 1e3:.1f} ms", spans))
    if out:
        return out
    out.extend(_elastic(problem, time_limit))
    if not out:
        out.append(_reason("no placement meets every constraint at once, but no single "
                               "limit explains it; try `--time-limit` longer"))
    return out


def _elastic(problem: Problem, time_limit: float) -> list[Reason]:
    f = formulate(problem, elastic=True)
    lp = f.lp
    h = lp.highs()  # silent
    n = len(lp.lb)
    cost = np.zeros(n)
    for var, _, _ in lp.slacks:
        cost[var] = 1.0
    h.changeColsCost(n, np.arange(n, dtype=np.int32), cost)
    h.setOptionValue("time_limit", time_limit)
    h.run()
    if h.getInfo().primal_solution_status != 2:
        return []
    values = np.array(h.getSolution().col_value)
    # what the elastic plan puts on each instance, by its share of the compute and memory load
    load: dict[tuple[str, str], dict[str, float]] = {}
    assignment = assignment_from(f, values)
    for step, place in assignment.items():
        info = problem.steps[step]
        if not info.is_unit:
            continue
        chosen = info.variant(variant_of(place))
        for inst in {place.head, place.tail} if isinstance(place, Split) else {place}:
            for kind, amount in (("compute", info.rate * problem.compute_s(chosen.work, inst,
                                                                           chosen.int8)),
                                 ("memory", chosen.memory)):
                per_unit = load.setdefault((kind, inst), {})
                per_unit[info.name] = per_unit.get(info.name, 0.0) + amount
    # what the runtime's processes take on each instance (docs/placement.md, "Runtime")
    ev = evaluate(problem, assignment)
    for inst in ev.brokers:
        load.setdefault(("compute", inst), {})
        load[("runtime", inst)] = {
            "compute": ev.cpu[inst] - ev.utilization.get(inst, 0.0),
            "memory": ev.memory[inst] - sum(load.get(("memory", inst), {}).values())}
    # one finding per cause: the instances of one device (or link between two devices) that
    # exceed the same limit for the same units are one reason, not one per replica
    groups: dict[tuple[object, ...], list[tuple[str, float, float]]] = {}
    for var, label, limit in lp.slacks:
        excess = values[var]
        if excess <= 1e-7:
            continue
        kind = label[0]
        if kind == "link":
            a, b = label[1]
            key: tuple[object, ...] = (kind, problem.device(a).name, problem.device(b).name,
                                       limit)
            subject = f"`{a}` -> `{b}`"
        elif kind in ("compute", "memory"):
            inst = label[1]
            key = (kind, problem.device(inst).name, limit,
                   tuple(sorted(load.get((kind, inst), {}))))
            subject = f"`{inst}`"
        else:
            key, subject = (kind, label[1], limit), str(label[2])
        groups.setdefault(key, []).append((subject, 1 + float(excess), limit))
    return [_group_reason(problem, key, found, load, assignment) for key, found in groups.items()]


def _group_reason(problem: Problem, key: tuple[object, ...], found: list[tuple[str, float, float]],
                  load: dict[tuple[str, str], dict[str, float]],
                  assignment: dict[Step, Placement]) -> Reason:
    kind = key[0]
    subjects = [s for s, _, _ in found]
    ratio = max(r for _, r, _ in found)
    limit = found[0][2]
    need = limit * ratio
    many = len(found) > 1
    up_to = "up to " if many and len({round(r, 4) for _, r, _ in found}) > 1 else ""
    listed = ", ".join(subjects)
    if kind == "link":
        a, b = (s.strip("`") for s in subjects[0].split(" -> "))
        if not many:
            return _reason(f"link {listed} would have to carry {need / 1e6:.1f} Mbps, "
                           f"{ratio:.0%} of its {limit / 1e6:g} Mbps: the data that must cross "
                           "it does not fit", [_link_span(problem, a, b)])
        return _reason(f"links {listed} would each have to carry {up_to}{need / 1e6:.1f} Mbps, "
                       f"{up_to}{ratio:.0%} of their {limit / 1e6:g} Mbps: the data that must "
                       "cross them does not fit", [_link_span(problem, a, b)])
    if kind in ("compute", "memory"):
        inst = subjects[0].strip("`")
        units = load.get((str(kind), inst), {})
        who = f"{listed} would each" if many else f"{listed} would"
        why, spans = _ruled_out(problem, inst, str(kind), set(units), assignment)
        runtime = load.get(("runtime", inst), {}).get(str(kind), 0.0)
        if kind == "compute":
            text = (f"{who} have to run at {up_to}{ratio:.0%} of {'their' if many else 'its'} "
                    f"compute to host {_names(units)}"
                    + (f" ({runtime:.0%} of it the runtime's processes)" if runtime > 0 else "")
                    + ", and no other allowed device can take them")
        else:
            text = (f"{who} need {up_to}{need / 2**20:.1f} MiB of memory, {up_to}{ratio:.0%} of "
                    f"{'their' if many else 'its'} {limit / 2**20:.1f} MiB, to host "
                    f"{_names(units)}"
                    + (f" ({runtime / 2**20:.1f} MiB of it the runtime's processes: a broker, "
                       "drivers and workers)" if runtime > 0 else "")
                    + ", and no other allowed device can take them")
        return _reason(text + why, [problem.device(inst).span, *spans])
    name = str(key[1])
    pipeline = problem.program.pipelines[name]
    return _reason(f"pipeline `{name}` (replica{'s' if many else ''} {listed}) would take "
                   f"{up_to}{need * 1e3:.1f} ms against its SLO of {limit * 1e3:g} ms once the "
                   "other limits are met", [pipeline.slo_spans.get("latency", pipeline.span)])


def _ruled_out(problem: Problem, inst: str, kind: str, units: set[str],
               assignment: dict[Step, Placement]) -> tuple[str, list[Span]]:
    """Why the units on `inst` cannot move to the other devices they might run on: a privacy
    label that rules a device out, a device that alone lacks the compute or memory for them, or
    a link on the way to it too narrow for what they receive. Returns a clause to append and
    the spans of the rules and links it names."""
    steps = [i for i in problem.steps.values() if i.name in units and inst in i.candidates]
    privacy: dict[str, list[str]] = {}  # label -> devices it rules out
    short: list[str] = []
    link_spans: list[Span] = []
    here = problem.device(inst).name
    for device in dict.fromkeys(problem.device(c).name for i in steps for c in i.candidates):
        if device == here:
            continue
        candidate = problem.program.devices[device].instance(0)
        labels = sorted({lb for i in steps for lb in i.labels
                         if problem.device(candidate).tier not in problem.program.privacy[lb].allow})
        if labels:
            privacy.setdefault(labels[0], []).append(device)
            continue
        share = 0.0  # the most one of its instances would carry: one replica's units
        for replica in {i.step[1] for i in steps}:
            mine = [i for i in steps if i.step[1] == replica]
            at = problem.program.devices[device].instance(replica or 0)
            share = max(share, sum(i.rate * problem.compute_s(i.work, at) for i in mine)
                        if kind == "compute" else
                        sum(unit_memory_bytes(i.memory, problem.device(at)) for i in mine)
                        / problem.device(at).memory_bytes)
        if share > 1:
            short.append(f"`{device}` alone would need {share:.0%} of its {kind}")
        elif (narrow := _narrow_link(problem, steps, device, assignment)) is not None:
            short.append(narrow[0])
            link_spans.append(narrow[1])
    clauses = [f"{', '.join(f'`{d}`' for d in devices)} "
               f"{'is' if len(devices) == 1 else 'are'} ruled out by privacy label `{lb}` "
               f"(allowed on {', '.join(t.value for t in problem.program.privacy[lb].allow)})"
               for lb, devices in sorted(privacy.items())]
    clauses += short
    spans = [problem.program.privacy[lb].span for lb in sorted(privacy)] + link_spans
    return ("" if not clauses else ": " + "; ".join(clauses)), spans


def _narrow_link(problem: Problem, steps: list[StepInfo], device: str,
                 assignment: dict[Step, Placement]) -> tuple[str, Span] | None:
    """A link too narrow for what the units receive, on the way from where their input comes
    from to `device` (checked for the first replica's units)."""
    first = min({i.step[1] or 0 for i in steps})
    mine = {i.step for i in steps if (i.step[1] or 0) == first}
    at = problem.program.devices[device].instance(first)
    for u, v in problem.edges:
        if v not in mine or u in mine:
            continue
        source = out_instance(assignment[u])
        sender = problem.steps[u]
        bps = stream_bps(sender.rate, sender.out_bytes)
        route = problem.route(source, at, sender.out_bytes, out_labels(problem, u))
        for a, b in route.links if route is not None else ():
            link = problem.link_of(a, b)
            if link.bandwidth_bps < bps:
                why = (f"`{device}` is reached over the `{a}` -> `{b}` link "
                       f"({link.bandwidth_bps / 1e6:g} Mbps), too narrow for the "
                       f"{bps / 1e6:.1f} Mbps `{v[0]}` receives")
                return why, link.span
    return None
