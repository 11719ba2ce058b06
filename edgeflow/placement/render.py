"""The human-readable form of a plan (the Plan's numbers, never recomputed)."""

from __future__ import annotations

import re
from collections import defaultdict

from edgeflow.objectives import TERMS, objective_text
from edgeflow.placement import Baseline
from edgeflow.plan import Compute, Method, Plan, Status


def _devices_text(devices: list[str]) -> str:
    """`line_gw[r]` when replica r sits on instance r of one device, else the distinct ones."""
    if len(set(devices)) == 1:
        return devices[0]
    bases = {re.sub(r"\[\d+\]$", "", d) for d in devices}
    if len(bases) == 1 and all(d == f"{next(iter(bases))}[{r}]" for r, d in enumerate(devices)):
        return f"{next(iter(bases))}[r]"
    return ", ".join(f"r{r}: {d}" for r, d in enumerate(devices))


def _ranges(replicas: tuple[int, ...]) -> str:
    """0–3, 5"""
    out: list[str] = []
    for r in replicas:
        if out and out[-1].split("–")[-1] == str(r - 1):
            out[-1] = f"{out[-1].split('–')[0]}–{r}"
        else:
            out.append(str(r))
    return ", ".join(out)


def render(plan: Plan, explain: bool = False) -> str:
    bound = ", ".join(TERMS[t].text(v) for t, v in plan.bound.items())
    lines = [f"app {plan.app}: {plan.status.value}"
             + (f" (gap {plan.gap:.2%} to the proven bound {bound})" if plan.gap else "")
             + (" (placed by parts)" if plan.method is Method.DECOMPOSITION else "")]
    if plan.status is Status.UNKNOWN:
        lines.append("no plan was found within the time limit (error E0903 on stderr)")
        return "\n".join(lines) + "\n"
    if not plan.feasible:
        count = len(plan.explanation)
        lines.append(f"no placement meets every constraint: {count} reason"
                     f"{'s' if count != 1 else ''} (error E0901 on stderr)")
        return "\n".join(lines) + "\n"
    lines.append(f"objective: {objective_text(plan.objective)}")
    lines += ["", "placement (unit -> device per replica r):"]
    by_unit: dict[str, list[str]] = defaultdict(list)
    variants: dict[str, list[str | None]] = defaultdict(list)
    for u in plan.units:
        by_unit[u.name].append(u.device)
        variants[u.name].append(u.variant)
    width = max((len(u) for u in by_unit), default=4)
    for unit, devices in by_unit.items():
        chosen = variants[unit]
        which = "" if set(chosen) == {None} else \
            f"  variant {chosen[0]}" if len(set(chosen)) == 1 else \
            "  variants " + ", ".join(f"r{r}: {v or 'the model'}" for r, v in enumerate(chosen))
        lines.append(f"  {unit:<{width}}  {_devices_text(devices)}{which}")
    if not by_unit:
        lines.append("  (no operators or models to place)")
    for s in plan.splits:
        lines.append(f"  cut of {s.model}{f' ({s.variant})' if s.variant else ''} "
                     f"(replica {s.replica}): {', '.join(s.cut)} ({s.transfer_bytes} B)")
    if plan.variants:
        lines += ["", "model variants (fidelity against the model):"]
    for v in plan.variants:
        fidelity = "not measured" if v.fidelity is None else f"fidelity {v.fidelity:.4f}"
        where = f"runs replicas {_ranges(v.replicas)}" if v.replicas else \
            "runs nowhere" if v.eligible else "below the fidelity floor"
        lines.append(f"  {v.model} {v.variant}: {fidelity}{', int8' if v.int8 else ''}; {where}")
    lines += ["", "pipelines (worst replica):" if plan.pipelines else "pipelines: none"]
    for p in plan.worst_pipelines():
        slo = f"< {p.slo_latency_s * 1e3:g} ms" if p.slo_latency_s is not None else "no SLO"
        lines.append(f"  {p.name}: {p.latency_s * 1e3:.3f} ms ({slo}, "
                     f"{'met' if p.met else 'MISSED'}) replica {p.replica}")
        for b in p.breakdown if explain else ():
            if isinstance(b, Compute):
                lines.append(f"      compute  {b.unit} on {b.device}: {b.seconds * 1e3:.3f} ms")
            elif len(b.route) == 1:  # through the device's own broker
                lines.append(f"      message  on {b.route[0]}: {b.bytes} B, "
                             f"{b.seconds * 1e3:.3f} ms")
            else:
                lines.append(f"      transfer {' -> '.join(b.route)}: {b.bytes} B, "
                             f"{b.seconds * 1e3:.3f} ms")
    used = plan.used_devices()
    lines += ["", "devices in use (compute utilisation, CPU reserved, memory reserved):"
              if used else "devices in use: none"]
    named = max((len(d.device) for d in used), default=4)
    for d in used:
        lines.append(f"  {d.device:<{named}}  {d.utilization:7.2%}  {d.cpu:7.2%}  "
                     f"{d.memory_bytes / 2**20:9.1f} MiB")
    if plan.links:
        lines += ["", "links in use (bandwidth utilisation):"]
        for lk in plan.links:
            lines.append(f"  {lk.source} -> {lk.target}: {lk.utilization:.2%}")
    return "\n".join(lines) + "\n"


def render_comparison(plan: Plan, baselines: list[Baseline], order: tuple[str, ...]) -> str:
    rows = ([("edgeflow", plan.objective, True, None)] if plan.feasible else []) + \
        [(b.name, b.objective, b.feasible, b.reason) for b in baselines]
    lines = ["", f"comparison (objective minimize({', '.join(order)})):"]
    width = max([13, *(len(r[0]) for r in rows)])
    for name, objective, feasible, reason in rows:
        if objective is None:
            lines.append(f"  {name:<{width}} {reason or 'not applicable (no cloud device)'}")
            continue
        values = "  ".join(TERMS[t].text(v, TERMS[t].width) for t, v in objective.items())
        lines.append(f"  {name:<{width}} {values}  {'feasible' if feasible else 'INFEASIBLE'}")
        if reason is not None:
            lines.append(f"  {'':<{width}} because {reason}")
    return "\n".join(lines) + "\n"
