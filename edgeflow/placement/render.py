"""The human-readable form of a plan (the JSON's numbers, never recomputed)."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any


def _devices_text(devices: list[str]) -> str:
    """`line_gw[r]` when replica r sits on instance r of one device, else the distinct ones."""
    if len(set(devices)) == 1:
        return devices[0]
    bases = {re.sub(r"\[\d+\]$", "", d) for d in devices}
    if len(bases) == 1 and all(d == f"{next(iter(bases))}[{r}]" for r, d in enumerate(devices)):
        return f"{next(iter(bases))}[r]"
    return ", ".join(f"r{r}: {d}" for r, d in enumerate(devices))


def render(plan: dict[str, Any], explain: bool = False) -> str:
    lines = [f"app {plan['app']}: {plan['status']}"
             + (f" (gap {plan['gap']:.2%})" if plan.get("gap") else "")]
    if plan["status"] == "infeasible":
        count = len(plan["explanation"])
        lines.append(f"no placement meets every constraint: {count} reason"
                     f"{'s' if count != 1 else ''} (error E0901 on stderr)")
        return "\n".join(lines) + "\n"
    o = plan["objective"]
    lines.append(f"objective: latency {o['latency_ms']:.3f} ms, cost {o['cost_usd_per_h']:.4f} "
                 f"USD/h, energy {o['energy_w']:.3f} W")
    lines += ["", "placement (unit -> device per replica r):"]
    by_unit: dict[str, list[str]] = defaultdict(list)
    for p in plan["placements"]:
        by_unit[p["unit"]].append(p["device"])
    width = max((len(u) for u in by_unit), default=4)
    for unit, devices in by_unit.items():
        lines.append(f"  {unit:<{width}}  {_devices_text(devices)}")
    if not by_unit:
        lines.append("  (no operators or models to place)")
    for s in plan["splits"]:
        lines.append(f"  cut of {s['model']} (replica {s['replica']}): {', '.join(s['cut'])} "
                     f"({s['transfer_bytes']} B)")
    lines += ["", "pipelines (worst replica):" if plan["pipelines"] else "pipelines: none"]
    worst: dict[str, dict[str, Any]] = {}
    for p in plan["pipelines"]:
        if p["name"] not in worst or p["latency_ms"] > worst[p["name"]]["latency_ms"]:
            worst[p["name"]] = p
    for p in worst.values():
        slo = f"< {p['slo_latency_ms']:g} ms" if p["slo_latency_ms"] is not None else "no SLO"
        lines.append(f"  {p['name']}: {p['latency_ms']:.3f} ms ({slo}, "
                     f"{'met' if p['met'] else 'MISSED'}) replica {p['replica']}")
        for b in p["breakdown"] if explain else []:
            if b["kind"] == "compute":
                lines.append(f"      compute  {b['unit']} on {b['device']}: {b['ms']:.3f} ms")
            else:
                lines.append(f"      transfer {' -> '.join(b['route'])}: {b['bytes']} B, "
                             f"{b['ms']:.3f} ms")
    used = [d for d in plan["devices"] if d["utilization"] > 0 or d["memory_bytes"] > 0]
    lines += ["", "devices in use (compute utilisation, memory):" if used else
              "devices in use: none"]
    for d in used:
        lines.append(f"  {d['device']:<{width}}  {d['utilization']:7.2%}  "
                     f"{d['memory_bytes'] / 2**20:9.1f} MiB")
    if plan["links"]:
        lines += ["", "links in use (bandwidth utilisation):"]
        for lk in plan["links"]:
            lines.append(f"  {lk['from']} -> {lk['to']}: {lk['utilization']:.2%}")
    return "\n".join(lines) + "\n"


def render_comparison(rows: list[tuple[str, dict[str, float] | None, bool]],
                      order: tuple[str, ...]) -> str:
    lines = ["", f"comparison (objective minimize({', '.join(order)})):"]
    for name, objective, feasible in rows:
        if objective is None:
            lines.append(f"  {name:<13} not applicable (no cloud device)")
            continue
        lines.append(f"  {name:<13} latency {objective['latency'] * 1e3:9.3f} ms  cost "
                     f"{objective['cost']:9.4f} USD/h  energy {objective['energy']:8.3f} W"
                     f"  {'feasible' if feasible else 'INFEASIBLE'}")
    return "\n".join(lines) + "\n"
