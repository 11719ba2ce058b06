"""report.md: the plan for people — placement, latency budget per pipeline against its SLO,
utilisation, objective, and a Mermaid diagram of the placed dataflow. Numbers are read from the
Plan, never recomputed."""

from __future__ import annotations

from edgeflow import __version__
from edgeflow.emit.bundle import Bundle, device_label
from edgeflow.emit.templating import render
from edgeflow.objectives import objective_text


def _mermaid(bundle: Bundle) -> str:
    lines = ["flowchart LR"]
    by_device: dict[str, list[str]] = {}
    ids = {}
    for c in bundle.clients:
        ident = c.name.replace("-", "_")  # names are unique and hold no `_`
        ids[c.identity] = ident
        by_device.setdefault(c.device, []).append(
            f'    {ident}["{c.step}{f" r{c.replica}" if c.replica is not None else ""}"]')
    for device, nodes in sorted(by_device.items()):
        lines.append(f'  subgraph {device_label(device).replace("-", "_")}["{device}"]')
        lines.extend(nodes)
        lines.append("  end")
    writers = {t: c.identity for c in bundle.clients for t in c.writes}
    for c in bundle.clients:
        for t in c.reads:
            lines.append(f"  {ids[writers[t]]} --> {ids[c.identity]}")
    return "\n".join(lines) + "\n"


def render_report(bundle: Bundle, target: str, source: str) -> str:
    plan = bundle.plan
    return render("report/report.md.j2", app=bundle.app, version=__version__, source=source,
                  target=target, plan=plan, objective=objective_text(plan.objective),
                  pipelines=plan.worst_pipelines(), devices=plan.used_devices(),
                  mermaid=_mermaid(bundle))
