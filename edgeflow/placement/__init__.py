"""Placement: decide where every unit of every replica runs, and where each splittable model is
cut, exactly (MILP, HiGHS), under SLO, capacity, bandwidth and privacy constraints; explain
infeasibility; compare with baselines. `make_plan` returns the typed `edgeflow.plan.Plan`."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from edgeflow import ir
from edgeflow.dataflow import build, instance_pairs
from edgeflow.diagnostics import Diagnostic, Label
from edgeflow.execution import ExecutionGraph
from edgeflow.objectives import plan_objective
from edgeflow.placement.baselines import BASELINES
from edgeflow.placement.decompose import decompose
from edgeflow.placement.evaluate import (
    Placement,
    Split,
    best_feasible,
    evaluate,
    in_instance,
    variant_of,
)
from edgeflow.placement.explain import explain
from edgeflow.placement.milp import solve
from edgeflow.placement.problem import Problem, Step, Variant, build_problem
from edgeflow.plan import (
    DeviceUse,
    LinkUse,
    Method,
    Part,
    PipelineLatency,
    PlacedUnit,
    Plan,
    Reason,
    SplitChoice,
    Status,
    VariantUse,
)
from edgeflow.span import Span


def _plan(problem: Problem, status: Status, assignment: dict[Step, Placement],
          bound: float = 0.0, method: Method = Method.MILP) -> Plan:
    program = problem.program
    ev = evaluate(problem, assignment)
    units: list[PlacedUnit] = []
    splits: list[SplitChoice] = []
    for step, info in problem.steps.items():
        if not info.is_unit:
            continue
        place = assignment[step]
        replica = step[1]
        assert replica is not None  # units are never shared between replicas

        chosen = info.variant(variant_of(place))

        def placed(part: Part, inst: str, work: float, memory: float,
                   cut: tuple[str, ...] = (), name: str = info.name, r: int = replica,
                   rate: float = info.rate, var: Variant = chosen) -> PlacedUnit:
            return PlacedUnit(step=name, part=part, replica=r, device=inst,
                              tier=problem.device(inst).tier, cut=cut,
                              compute_share=rate * problem.compute_s(work, inst, var.int8),
                              memory_bytes=memory, variant=var.name)

        if isinstance(place, Split) and place.head != place.tail:
            cut = chosen.cuts[place.cut]
            units.append(placed(Part.HEAD, place.head, cut.head_work, float(cut.head_weights),
                                cut.tensors))
            units.append(placed(Part.TAIL, place.tail, cut.tail_work, float(cut.tail_weights),
                                cut.tensors))
            splits.append(SplitChoice(model=info.name, replica=replica, cut=cut.tensors,
                                      transfer_bytes=cut.transfer_bytes,
                                      head_work_flop=cut.head_work, tail_work_flop=cut.tail_work,
                                      variant=chosen.name))
        else:
            part = Part.OPERATOR if info.kind == "operator" else Part.WHOLE
            units.append(placed(part, in_instance(place), chosen.work, chosen.memory))
    pipelines = []
    for name, r, _ in problem.pipelines:
        slo = program.pipelines[name].slo.latency_s
        latency = ev.latency_s[(name, r)]
        pipelines.append(PipelineLatency(
            name=name, replica=r, latency_s=latency, slo_latency_s=slo,
            met=slo is None or latency <= slo * (1 + 1e-9), breakdown=tuple(ev.breakdown[(name, r)])))
    first = program.app.objective[0]
    value = ev.objective[first]
    bound = min(bound, value)  # the solver's tolerance may put it a hair above
    gap = 0.0 if status is Status.OPTIMAL or value <= 0 else (value - bound) / value
    return Plan(
        app=program.app.name, status=status, gap=gap, method=method, bound={first: bound},
        objective=dict(ev.objective),
        units=tuple(units), splits=tuple(splits), pipelines=tuple(pipelines),
        devices=tuple(DeviceUse(device=inst, tier=dev.tier,
                                utilization=ev.utilization.get(inst, 0.0),
                                cpu=ev.cpu.get(inst, 0.0),
                                memory_bytes=ev.memory.get(inst, 0.0))
                      for inst, (dev, _) in problem.instances.items()),
        links=tuple(LinkUse(source=a, target=b,
                            utilization=load / problem.link_of(a, b).bandwidth_bps)
                    for (a, b), load in sorted(ev.link_load_bps.items())),
        variants=_variant_uses(program, units))


def _variant_uses(program: ir.Program, units: list[PlacedUnit]) -> tuple[VariantUse, ...]:
    """Every declared variant of the plan's models, with its fidelity and where it runs."""
    runs: dict[tuple[str, str], set[int]] = {}
    for u in units:
        if u.variant is not None:
            runs.setdefault((u.step, u.variant), set()).add(u.replica)
    def eligible(floor: float | None, fidelity: float | None) -> bool:
        return floor is None or (fidelity is not None and fidelity >= floor)

    return tuple(VariantUse(model=name, variant=v.name, fidelity=v.fidelity, int8=v.int8,
                            eligible=eligible(m.min_fidelity, v.fidelity),
                            replicas=tuple(sorted(runs.get((name, v.name), ()))))
                 for name, m in program.models.items() for v in m.variants
                 if any(u.step == name for u in units))


def _span_labels(program: ir.Program) -> dict[Span, str]:
    labels: dict[Span, str] = {}
    for link in program.links:
        labels[link.span] = f"{link.bandwidth_bps / 1e6:g} Mbps, {link.latency_s * 1e3:g} ms"
    for dev in program.devices.values():
        labels[dev.span] = f"{dev.compute_flops / 1e12:g} TFLOPS, {dev.memory_bytes / 2**30:g} GiB"
    for rule in program.privacy.values():
        labels[rule.span] = "allowed on " + ", ".join(t.value for t in rule.allow)
    for p in program.pipelines.values():
        for span in p.slo_spans.values():
            labels[span] = "this objective"
    for table in (program.sensors, program.sinks, program.operators, program.models):
        for decl in table.values():
            labels[decl.span] = f"`{decl.name}`"
    return labels


def explanation_diagnostics(plan: Plan, program: ir.Program) -> list[Diagnostic]:
    """An infeasible plan's explanation as E0901 diagnostics, each pointing at the first
    declaration involved (the app when none is) with the others as secondary labels; E0903 when
    the time ran out before any plan was found."""
    if plan.status is Status.UNKNOWN:
        return [Diagnostic("E0903", reason.message, program.app.span, "this app",
                           help="give the solver more time with --time-limit")
                for reason in plan.explanation]
    known = _span_labels(program)
    out = []
    for reason in plan.explanation:
        spans = list(reason.spans) or [program.app.span]
        out.append(Diagnostic("E0901", reason.message, spans[0], known.get(spans[0], "involved"),
                              labels=tuple(Label(s, known.get(s, "involved"))
                                           for s in spans[1:]),
                              help="relax the limit named, or move the work (see `edgeflow "
                                   "explain E0901`)"))
    return out


MAX_INSTANCE_LINKS = 1_000_000   # instance-level links the route search holds
MAX_UNIT_OPTIONS = 20_000_000    # (unit replica, candidate device) pairs placement holds


def size_diagnostics(program: ir.Program) -> list[Diagnostic]:
    """E0902 when the app is larger than placement can hold in memory, found from counts
    alone (nothing is expanded)."""
    out = []
    pairs = {link: instance_pairs(program.devices[link.a], program.devices[link.b])
             for link in program.links}
    if sum(pairs.values()) > MAX_INSTANCE_LINKS:
        largest = max(program.links, key=pairs.__getitem__)
        total = sum(pairs.values())
        out.append(Diagnostic(
            "E0902", (f"this link stands for {total:,} instance links" if total == pairs[largest]
                      else f"the links stand for {total:,} instance links, this one for "
                           f"{pairs[largest]:,}") +
            f"; placement handles at most {MAX_INSTANCE_LINKS:,}",
            largest.span, "the largest", help="give both ends of a link the same count (one link "
                                              "per site), or fewer instances"))
    df = build(program)
    singles = sum(d.count == 1 for d in program.devices.values())
    options = 0
    for comp in df.components:
        own = sum(d.count == comp.replicas > 1 for d in program.devices.values())
        units = sum(n in program.operators or n in program.models for n in comp.nodes)
        options += comp.replicas * units * (own + singles)
    if options > MAX_UNIT_OPTIONS:
        out.append(Diagnostic(
            "E0902", f"placing this app means {options:,} choices of a device for a unit "
                     f"replica; placement handles at most {MAX_UNIT_OPTIONS:,}", program.app.span,
            "too large to place", help="place fewer replicas or units per plan, e.g. one "
                                       "app per region"))
    return out


@dataclass(frozen=True)
class Baseline:
    """A baseline placement's objective values (None where it does not apply)."""

    name: str
    objective: dict[str, float] | None
    feasible: bool
    reason: str | None = None  # the first constraint an infeasible baseline breaks

    def to_dict(self) -> dict[str, object]:
        """As `plan --format json --compare` shows it: the objective in plan.json's keys."""
        return {"name": self.name, "feasible": self.feasible, "reason": self.reason,
                "objective": None if self.objective is None else plan_objective(self.objective)}


def _best_baseline(problem: Problem) -> dict[Step, Placement] | None:
    return best_feasible(problem, (b(problem) for b in BASELINES.values()),
                         problem.program.app.objective)


# Above this many placement choices (unit options and message pairs, `milp_size`), an app
# that is not symmetric is placed part by part (placement/decompose.py): one exact MILP of that
# size is what HiGHS still solves well in seconds on a 2-core machine.
MILP_CHOICES = 5_000
# `--time-limit` bounds the whole placement; what may run past it: an explanation's elastic
# MILP gets at least this many seconds (docs/placement.md, "Time limit").
EXPLAIN_MIN_S = 1.0


def milp_size(problem: Problem) -> int:
    """The placement choices the whole-app MILP would hold: a variable per (unit, candidate)
    (per (cut, head, tail) for a split model) and per pair of candidates of every message."""
    n = 0
    for info in problem.steps.values():
        k = len(info.candidates)
        n += k + len(info.cuts) * k * k if info.is_unit else 0
    for u, v in problem.edges:
        n += len(problem.steps[u].candidates) * len(problem.steps[v].candidates)
    return n


def choose_method(problem: Problem) -> Method:
    """The exact MILP for small apps and for symmetric ones (its symmetric start and bound
    handle any number of replicas), the decomposition for large heterogeneous fleets."""
    replicas = {c.replicas for c in problem.dataflow.components}
    symmetric = len(replicas) == 1 and replicas != {1}
    if symmetric or len(problem.pipelines) < 2 or milp_size(problem) <= MILP_CHOICES:
        return Method.MILP
    return Method.DECOMPOSITION


@dataclass
class WarmStart:
    """What one plan hands the next of a series (a what-if sweep): its placement, offered to
    the next solve when it places the same steps on devices they may use. The solver takes it
    only if it still meets every constraint, and only if it is the best of its candidate
    starts (`milp._best_start`), so it can make a solve faster, never its result different."""

    assignment: dict[Step, Placement] | None = None

    def start_for(self, problem: Problem) -> dict[Step, Placement] | None:
        a = self.assignment
        if a is None or set(a) != set(problem.steps):
            return None
        for step, place in a.items():
            hosts = (place.head, place.tail) if isinstance(place, Split) else (place,)
            info = problem.steps[step]
            if any(h not in info.candidates for h in hosts) or (
                    isinstance(place, Split) and (
                        place.variant >= len(info.options) or place.head != place.tail and
                        place.cut >= len(info.variant(place.variant).cuts))):
                return None
        return a


def make_plan(execution: ExecutionGraph, time_limit: float = 30.0,
              compare: bool = False, warm: WarmStart | None = None,
              ) -> tuple[Plan, list[Baseline]]:
    """The plan of a checked program's execution graph, and with `compare` the baselines'
    objectives. `time_limit` bounds the whole of it, but for the explanation of an
    infeasible app (at least `EXPLAIN_MIN_S`). With `warm`, the solver starts from its
    placement where it fits, and leaves this plan's there."""
    started = time.perf_counter()
    program = execution.program
    problem = build_problem(execution)
    method = choose_method(problem)
    explained = problem
    if method is Method.DECOMPOSITION:
        decomposed = decompose(problem, time_limit - (time.perf_counter() - started))
        solution, explained = decomposed.solution, decomposed.infeasible_part or problem
    else:
        solution = solve(problem, time_limit - (time.perf_counter() - started),
                         start=warm.start_for(problem) if warm is not None else None)
    if warm is not None:
        warm.assignment = solution.assignment
    violations = [] if solution.assignment is None else \
        evaluate(problem, solution.assignment).violations
    if solution.assignment is None and solution.status == "unknown":
        plan = Plan(app=program.app.name, status=Status.UNKNOWN, method=method,
                    bound={program.app.objective[0]: solution.bound},
                    explanation=(Reason(
                        message=f"no plan was found within the time limit of {time_limit:g} s, "
                                "and none is proven impossible" if method is Method.MILP or
                                time.perf_counter() - started >= time_limit * 0.9 else
                                "placement by parts found no plan (its start, the parts' own "
                                "optima and one pass placing the parts one by one all break a "
                                "constraint), and none is proven impossible"),))
    elif solution.assignment is None:
        reasons = _floors_binding(execution, time_limit) + explain(
            explained, max(EXPLAIN_MIN_S, time_limit - (time.perf_counter() - started)))
        plan = Plan(app=program.app.name, status=Status.INFEASIBLE, method=method,
                    explanation=tuple(reasons))
    elif violations and (fallback := _best_baseline(problem)) is not None:
        # the solver's tolerances let through a plan the cost model rejects: a feasible
        # baseline is a plan, with no bound proven
        plan = _plan(problem, Status.FEASIBLE, fallback, 0.0, method)
    elif violations:
        plan = Plan(app=program.app.name, status=Status.UNKNOWN, method=method,
                    explanation=tuple(
            Reason(message=f"the solver's plan breaks a constraint ({v}): the app's figures are "
                           "too far apart for exact placement, and no simple plan fits")
            for v in violations[:1]))
    else:
        plan = _plan(problem, Status(solution.status), solution.assignment, solution.bound,
                     method)
    baselines = []
    for name, baseline in BASELINES.items() if compare else ():
        assignment = baseline(problem)
        ev = evaluate(problem, assignment) if assignment is not None else None
        baselines.append(Baseline(name, ev.objective if ev else None, bool(ev and ev.feasible),
                                  ev.violations[0] if ev and ev.violations else None))
    if compare and any(info.chooses for info in problem.steps.values()):
        baselines.append(_without_variants(problem, time_limit, method))
    return plan, baselines


def _without_variants(problem: Problem, time_limit: float, method: Method) -> Baseline:
    """The baseline `without variants`: the same placement, by the same method (one MILP or by
    parts), every model run as itself (what the plan would be had no variant been declared)."""
    alone = dataclasses.replace(problem, steps={
        step: dataclasses.replace(info, variants=()) for step, info in problem.steps.items()})
    solution = decompose(alone, time_limit).solution if method is Method.DECOMPOSITION else \
        solve(alone, time_limit)
    if solution.assignment is None:
        return Baseline("without variants", None, False, "no plan exists without variants")
    ev = evaluate(problem, solution.assignment)
    return Baseline("without variants", ev.objective, ev.feasible,
                    ev.violations[0] if ev.violations else None)


def _floors_binding(execution: ExecutionGraph, time_limit: float) -> list[Reason]:
    """For an app with no plan: each model whose fidelity floor excludes a variant, when
    without the floors a plan exists (so a floor is what binds); [] otherwise."""
    program = execution.program
    floored = {name: [v for v in m.variants if v.fidelity is None or v.fidelity < m.min_fidelity]
               for name, m in program.models.items() if m.min_fidelity is not None}
    floored = {name: out for name, out in floored.items() if out}
    if not floored:
        return []
    relaxed = program.model_copy(update={"models": {
        name: m.model_copy(update={"min_fidelity": None}) for name, m in program.models.items()}})
    free = dataclasses.replace(execution, program=relaxed)
    if solve(build_problem(free), min(time_limit, 10.0)).assignment is None:
        return []
    def measured(v: ir.ModelVariant) -> str:
        return "not measured" if v.fidelity is None else f"fidelity {v.fidelity:.4g}"

    return [Reason(message=f"the fidelity floor of `{name}` (min_fidelity = "
                           f"{program.models[name].min_fidelity:g}) excludes "
                           + ", ".join(f"`{v.name}` ({measured(v)})" for v in out)
                           + "; without the floor a plan exists",
                   spans=(program.models[name].span,))
            for name, out in floored.items()]


__all__ = ["Baseline", "WarmStart", "explanation_diagnostics", "make_plan", "size_diagnostics"]
