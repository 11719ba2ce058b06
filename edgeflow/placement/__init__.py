"""Placement: decide where every unit of every replica runs, and where each splittable model is
cut, exactly (MILP, HiGHS), under SLO, capacity, bandwidth and privacy constraints; explain
infeasibility; compare with baselines. `make_plan` returns the plan JSON of LANGUAGE.md."""

from __future__ import annotations

from typing import Any

from edgeflow import ir
from edgeflow.diagnostics import Diagnostic, Label
from edgeflow.placement.evaluate import Evaluation, Placement, Split, evaluate
from edgeflow.placement.explain import Explanation, explain
from edgeflow.placement.milp import solve
from edgeflow.placement.problem import Problem, Step, build_problem
from edgeflow.span import Span


def plan_json(problem: Problem, status: str, assignment: dict[Step, Placement] | None,
              gap: float = 0.0, explanation: list[Explanation] | None = None) -> dict[str, Any]:
    program = problem.program
    out: dict[str, Any] = {"app": program.app.name, "status": status}
    if assignment is None:
        out.update({"objective": None, "placements": [], "splits": [], "pipelines": [],
                    "devices": [], "links": [],
                    "explanation": [e.to_json() for e in explanation or []]})
        return out
    ev = evaluate(problem, assignment)
    out["gap"] = gap
    out["objective"] = {"latency_ms": ev.objective["latency"] * 1e3,
                        "cost_usd_per_h": ev.objective["cost"],
                        "energy_w": ev.objective["energy"]}
    placements, splits = [], []
    for step, info in problem.steps.items():
        if not info.is_unit:
            continue
        place = assignment[step]
        if isinstance(place, Split):
            cut = info.cuts[place.cut]
            for part, inst in (("head", place.head), ("tail", place.tail)):
                placements.append(_placement(problem, f"{info.name}.{part}", step, inst))
            splits.append({"model": info.name, "replica": step[1], "cut": list(cut.tensors),
                           "transfer_bytes": cut.transfer_bytes,
                           "head_work_flop": cut.head_work, "tail_work_flop": cut.tail_work})
        else:
            placements.append(_placement(problem, info.name, step, place))
    out["placements"] = placements
    out["splits"] = splits
    out["pipelines"] = [_pipeline(program, ev, name, r) for name, r, _ in problem.pipelines]
    out["devices"] = [{"device": inst, "tier": dev.tier.value,
                       "utilization": ev.utilization.get(inst, 0.0),
                       "memory_bytes": ev.memory.get(inst, 0.0)}
                      for inst, (dev, _) in problem.instances.items()]
    out["links"] = [{"from": a, "to": b, "utilization": load / problem.link_of(a, b).bandwidth_bps}
                    for (a, b), load in sorted(ev.link_load_bps.items())]
    out["explanation"] = []
    return out


def _placement(problem: Problem, unit: str, step: Step, inst: str) -> dict[str, Any]:
    return {"unit": unit, "replica": step[1], "device": inst,
            "tier": problem.device(inst).tier.value}


def _pipeline(program: ir.Program, ev: Evaluation, name: str, r: int) -> dict[str, Any]:
    slo = program.pipelines[name].slo.latency_s
    latency = ev.latency_s[(name, r)]
    return {"name": name, "replica": r, "latency_ms": latency * 1e3,
            "slo_latency_ms": slo * 1e3 if slo is not None else None,
            "met": slo is None or latency <= slo * (1 + 1e-9),
            "breakdown": ev.breakdown[(name, r)]}


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


def explanation_diagnostics(plan: dict[str, Any], program: ir.Program) -> list[Diagnostic]:
    """An infeasible plan's explanation as E0901 diagnostics, each pointing at the first
    declaration involved (the app when none is) with the others as secondary labels."""
    known = _span_labels(program)
    out = []
    for e in plan["explanation"]:
        spans = [Span.from_json(s) for s in e["related"]] or [program.app.span]
        out.append(Diagnostic("E0901", e["message"], spans[0], known.get(spans[0], "involved"),
                              labels=tuple(Label(s, known.get(s, "involved"))
                                           for s in spans[1:]),
                              help="relax the limit named, or move the work (see `edgeflow "
                                   "explain E0901`)"))
    return out


def make_plan(program: ir.Program, time_limit: float = 30.0,
              ) -> tuple[dict[str, Any], Problem]:
    problem = build_problem(program)
    solution = solve(problem, time_limit)
    if solution.assignment is None:
        return plan_json(problem, "infeasible", None,
                         explanation=explain(problem, max(1.0, time_limit / 3))), problem
    return plan_json(problem, solution.status, solution.assignment, solution.gap), problem


__all__ = ["Problem", "build_problem", "make_plan", "plan_json"]
