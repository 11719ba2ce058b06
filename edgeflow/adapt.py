"""Run-time adaptation of split models, decided at compile time (docs/runtime.md, "Adaptation").

For every split model replica whose model declares `adapt` or `on_disconnect`, `adaptations`
computes what its head and tail workers need: the decision table (for each bandwidth of the
declared range, the cut that is fastest on the plan's head and tail devices over the link
between them: exactly `edgeflow split --sweep`, `Timing.sweep`), every cut the head may send
(the table's, the plan's own, and for `on_disconnect = local` the cut whose head is the whole
model), each timed on the two devices, and the outage policy. It checks that what the policy and
the table add fits the devices (E0617) and says when the plan leaves nothing to adapt (W0616).

The halves of every cut are files of the bundle (`artefacts.adapt_artefacts`), and the table is
in plan.json, report.md and the unit.json of the head and the tail.
"""

from __future__ import annotations

from fractions import Fraction

from edgeflow import ir
from edgeflow.cost import analysed, read_model, reserved_bytes
from edgeflow.diagnostics import Diagnostic
from edgeflow.execution import ExecutionGraph
from edgeflow.models.cuts import Cut, CutProblem
from edgeflow.models.split import Setting, Timing
from edgeflow.plan import Adaptation, Band, CutCost, DeviceUse, Part, PlacedUnit, Plan, cut_id
from edgeflow.span import Span


def _span_of(model: ir.Model) -> Span:
    """Where a model's adaptation is written: `adapt`, else `on_disconnect`, else the model."""
    for node in (model.adapt, model.on_disconnect):
        if node is not None and node.span is not None:
            return node.span
    return model.span


def _cost(timing: Timing, cut: Cut) -> CutCost:
    head = sum((timing.edge[v] for v in cut.head), Fraction(0))
    tail = sum((timing.cloud[v] for v in timing.problem.nodes if v not in cut.head), Fraction(0))
    return CutCost(id=cut_id(cut.tensors), cut=cut.tensors, transfer_bytes=cut.transfer_bytes,
                   head_s=float(head), tail_s=float(tail))


def weights_bytes(problem: CutProblem, cut: Cut, part: Part) -> int:
    """The bytes of the weights the `part` half of `cut` holds."""
    analysis = problem.analysis
    nodes = cut.head if part is Part.HEAD else set(problem.nodes) - cut.head
    names = {i for v in nodes for i in analysis.nodes[v].inputs if i in analysis.static}
    return sum(analysis.tensors[n].nbytes for n in names if n in analysis.tensors)


def adaptations(execution: ExecutionGraph, plan: Plan) -> tuple[tuple[Adaptation, ...],
                                                                 list[Diagnostic]]:
    """The adaptation of every split model replica that declares one, and the diagnostics."""
    program = execution.program
    out: list[Adaptation] = []
    diagnostics: list[Diagnostic] = []
    if not plan.feasible:
        return (), []
    units = {(u.step, u.part, u.replica): u for u in plan.units}
    split_models = {s.model for s in plan.splits}
    for model in program.models.values():
        if (model.adapt or model.on_disconnect) and model.name not in split_models:
            which = "adapt" if model.adapt else "on_disconnect"
            diagnostics.append(Diagnostic(
                "W0616", f"the plan runs model `{model.name}` whole: `{which}` has nothing to act "
                "on", _span_of(model), "declared here",
                help="a split pays when the head's device is slow and the link fast; "
                     "`edgeflow plan --explain` compares the choices"))
    timings: dict[tuple[object, ...], Timing] = {}
    warned: set[str] = set()
    use = {d.device: d for d in plan.devices}
    extra: dict[str, float] = {}  # memory the tables and buffers add, per device
    extra_util: dict[str, float] = {}  # compute the whole models run in the tails' place add
    for s in plan.splits:
        model = program.models[s.model]
        if model.adapt is None and model.on_disconnect is None:
            continue
        head, tail = units[(s.model, Part.HEAD, s.replica)], units[(s.model, Part.TAIL,
                                                                      s.replica)]
        edge = execution.network.get_edge_data(head.device, tail.device)
        if edge is None:
            if model.name not in warned:
                warned.add(model.name)
                diagnostics.append(Diagnostic(
                    "W0616", f"the plan puts the halves of `{model.name}` on `{head.device}` and "
                    f"`{tail.device}`, which no single link joins: the model is not adapted",
                    _span_of(model), "declared here",
                    help="the decision table covers the one link between the halves"))
            continue
        link: ir.Link = edge["link"]
        source_model, int8 = program.models[s.model].as_variant(s.variant)
        head_dev, tail_dev = execution.device(head.device), execution.device(tail.device)
        key = (s.model, s.variant, head_dev.name, tail_dev.name, link.bandwidth_bps,
               link.latency_s)
        if key not in timings:
            _, problem = analysed(source_model, read_model(source_model))
            timings[key] = Timing(problem, Setting(head_dev.rate(int8), tail_dev.rate(int8),
                                                   link.bandwidth_bps, link.latency_s))
        timing = timings[key]
        problem = timing.problem
        static = problem.from_tensors(list(s.cut))
        cuts: dict[str, tuple[Cut, CutCost]] = {}

        def keep(cut: Cut, cuts: dict[str, tuple[Cut, CutCost]] = cuts) -> str:
            cost = _cost(timing, cut)  # noqa: B023 - used at once
            cuts.setdefault(cost.id, (cut, cost))
            return cost.id

        start = keep(static)
        bands: list[Band] = []
        if model.adapt is not None:
            for row in timing.sweep(model.adapt.low_bps, model.adapt.high_bps):
                tensors = row["cut"]
                assert isinstance(tensors, list)
                cut_of_band = problem.from_tensors(tensors)
                bands.append(Band(from_bps=float(row["from_bps"]),  # type: ignore[arg-type]
                                  to_bps=float(row["to_bps"]),  # type: ignore[arg-type]
                                  cut=keep(cut_of_band)))
        policy = model.on_disconnect
        fallback = None
        whole = problem.evaluate(frozenset(problem.nodes))
        local_problem = _local_problem(execution, plan, s.model, s.replica, head, timing, use,
                                       extra_util)
        if policy is not None and policy.action == "local":
            fallback = keep(whole)
            if local_problem is not None:
                diagnostics.append(Diagnostic(
                    "E0617", f"`on_disconnect = local` for `{model.name}` replica {s.replica}: "
                    f"{local_problem}", policy.span or model.span, "declared here",
                    help="use `on_disconnect = buffer` or `drop`, or a larger device"))
        whole_id = cut_id(whole.tensors) if cut_id(whole.tensors) in cuts else None
        # a cut whose head is the whole model needs no tail: the head sends the output itself,
        # where every consumer is reachable without the tail's device (and compute allows)
        bypass = whole_id is not None and local_problem is None
        # the worker holds a session for every half it may run: their weights must fit too
        for unit, part in ((head, Part.HEAD), (tail, Part.TAIL)):
            more = sum(weights_bytes(problem, c, part) for c, _ in cuts.values()) - \
                weights_bytes(problem, static, part)
            extra[unit.device] = extra.get(unit.device, 0.0) + reserved_bytes(max(0, more))
        if policy is not None and policy.action == "buffer":
            largest = max(c.transfer_bytes for _, c in cuts.values())
            extra[head.device] = extra.get(head.device, 0.0) + policy.buffer_frames * largest
        out.append(Adaptation(
            model=s.model, replica=s.replica, variant=s.variant, head_device=head.device,
            tail_device=tail.device, latency_s=link.latency_s, bandwidth_bps=link.bandwidth_bps,
            low_bps=model.adapt.low_bps if model.adapt else None,
            high_bps=model.adapt.high_bps if model.adapt else None,
            margin=model.adapt.margin if model.adapt else 0.1,
            hold_s=model.adapt.hold_s if model.adapt else 1.0, start=start,
            cuts=tuple(c for _, c in sorted(cuts.values(), key=lambda x: (
                x[1].transfer_bytes, x[1].id), reverse=True)),
            bands=tuple(bands), on_disconnect=policy.action if policy else None,
            buffer_frames=policy.buffer_frames if policy and policy.action == "buffer" else 0,
            fallback=fallback, bypass=bypass, whole=whole_id))
    for device, needed in sorted(extra.items()):
        room = execution.device(device).memory_bytes - use[device].memory_bytes
        if needed > room:
            names = sorted({a.model for a in out if device in (a.head_device, a.tail_device)})
            model = program.models[names[0]]
            diagnostics.append(Diagnostic(
                "E0617", f"the decision tables and outage buffers of "
                f"{', '.join(f'`{n}`' for n in names)} need {needed / 2**20:.1f} MiB more on "
                f"`{device}`, which has {max(0.0, room) / 2**20:.1f} MiB free", _span_of(model),
                "declared here", help="narrow `adapt`'s bandwidth range, buffer fewer frames, "
                                      "or give the device more memory"))
    return tuple(out), diagnostics


def _local_problem(execution: ExecutionGraph, plan: Plan, model: str, replica: int,
                   head: PlacedUnit, timing: Timing, use: dict[str, DeviceUse],
                   extra_util: dict[str, float]) -> str | None:
    """Why the head's device cannot run the whole model in the tail's place (None: it can,
    and its share is added to `extra_util`): the tail's work at the model's rate beside what
    the plan and the models already falling back there put on it, and every consumer of the
    model's output on the head's device."""
    step = execution.steps[(model, replica)]
    problem = timing.problem
    head_nodes = problem.from_tensors(list(head.cut)).head
    more_s = float(sum((timing.edge[v] for v in problem.nodes if v not in head_nodes),
                       Fraction(0)))
    busy = use[head.device].utilization + extra_util.get(head.device, 0.0) + \
        step.rate_hz * more_s
    if busy > 1 + 1e-9:
        return (f"`{head.device}` would run at {100 * busy:.0f} % of its compute with the whole "
                f"model at {step.rate_hz:g} Hz" + (" (and the other models that fall back "
                                                   "there)" if head.device in extra_util
                                                   else ""))
    arrives: dict[tuple[str, int], str] = {}
    for unit in plan.units:  # where a unit's input arrives: a split model's at its head
        if unit.part is not Part.TAIL:
            arrives[(unit.step, unit.replica)] = unit.device
    for producer, v in execution.edges:
        if producer != step.key:
            continue
        # the head publishes the output on its own broker, from which no bridge carries it:
        # only a consumer on the head's device gets it
        at = execution.steps[v].device or arrives.get((v[0], replica))
        if at != head.device:
            return (f"its consumer `{v[0]}` is on `{at}`, not on `{head.device}`, where the "
                    "head would deliver the output itself")
    extra_util[head.device] = extra_util.get(head.device, 0.0) + step.rate_hz * more_s
    return None
