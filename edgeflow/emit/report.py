"""report.md: the plan for people — placement, latency budget per pipeline against its SLO,
utilisation, objective, and a Mermaid diagram of the placed dataflow. Numbers are read from the
Plan, never recomputed."""

from __future__ import annotations

import re
from typing import Any

from edgeflow import __version__
from edgeflow.emit.bundle import Bundle
from edgeflow.emit.templating import render
from edgeflow.objectives import objective_text


def natural(text: str) -> tuple[Any, ...]:
    """Sort key that orders numbers by value: `cam[2]` before `cam[10]`."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def _pattern(device: str) -> str:
    """`NAME[i]` -> `NAME[r]` (one per replica), a single device as it is."""
    return re.sub(r"\[[0-9]+\]$", "[r]", device)


def _mermaid(bundle: Bundle) -> str:
    """The placed dataflow with replicas collapsed: each step once per device kind it runs on
    (`×N` when N replicas share the shape), so the diagram's size depends on the declarations,
    never on the device counts (Mermaid stops rendering beyond 500 edges or 50,000 characters)."""
    groups: dict[tuple[str, str], list[int | None]] = {}
    for c in bundle.clients:
        groups.setdefault((c.step, _pattern(c.device)), []).append(c.replica)
    keys = sorted(groups, key=lambda k: (natural(k[1]), natural(k[0])))
    ids = {k: f"n{i}" for i, k in enumerate(keys)}
    devices: dict[str, int] = {}
    for c in bundle.clients:
        devices.setdefault(_pattern(c.device), 0)
    for b in bundle.brokers:
        if _pattern(b) in devices and _pattern(b) != b:
            devices[_pattern(b)] += 1
    lines = ["flowchart LR"]
    for d, dev in enumerate(sorted(devices, key=natural)):
        label = f"{dev} ×{devices[dev]}" if devices[dev] > 1 else dev
        lines.append(f'  subgraph d{d}["{label}"]')
        for k in keys:
            if k[1] == dev:
                n = len(groups[k])
                lines.append(f'    {ids[k]}["{k[0]}{f" ×{n}" if n > 1 else ""}"]')
        lines.append("  end")
    writers = {t: (c.step, _pattern(c.device)) for c in bundle.clients for t in c.writes}
    edges = sorted({(ids[writers[t]], ids[(c.step, _pattern(c.device))])
                    for c in bundle.clients for t in c.reads}, key=lambda e: natural(e[0] + e[1]))
    lines.extend(f"  {a} --> {b}" for a, b in edges)
    return "\n".join(lines) + "\n"


def _placement(bundle: Bundle) -> list[dict[str, str]]:
    """The placement table, a row per unit and shape: a unit whose replica r runs on
    `NAME[r]` for every r is one row, like one whose replicas all share a device."""
    by_unit: dict[tuple[str, str], list[tuple[int, str, str]]] = {}
    for u in bundle.plan.units:  # a model's replicas running a variant are rows of their own
        by_unit.setdefault((u.name, u.variant or ""), []).append(
            (u.replica, u.device, u.tier.value))
    rows = []
    for name, variant in sorted(by_unit, key=lambda k: (natural(k[0]), k[1])):
        placed = sorted(by_unit[(name, variant)])
        replicas = [r for r, _, _ in placed]
        span = f"{replicas[0]}–{replicas[-1]}" if len(replicas) > 1 else str(replicas[0])
        contiguous = replicas == list(range(replicas[0], replicas[0] + len(replicas)))
        shapes = {(_pattern(d) if d.endswith(f"[{r}]") else d, t) for r, d, t in placed}
        if contiguous and len(shapes) == 1:
            device, tier = shapes.pop()
            rows.append({"unit": name, "variant": variant, "replicas": span, "device": device,
                         "tier": tier})
            continue
        rows.extend({"unit": name, "variant": variant, "replicas": str(r), "device": d,
                     "tier": t} for r, d, t in placed)
    return rows


def _grouped(rows: list[tuple[str, tuple[str, ...]]]) -> list[tuple[str, tuple[str, ...]]]:
    """Rows naming an instance `NAME[i]` (naturally sorted) with the same figures and the same
    text around the index, consecutive in i, as one row `NAME[a–b]`; other rows as they are."""
    out: list[tuple[str, tuple[str, ...]]] = []
    run: list[tuple[tuple[str, str], int, tuple[str, ...]]] = []

    def flush() -> None:
        if run:
            (before, after), first, figures = run[0]
            last = run[-1][1]
            span = f"{first}–{last}" if last > first else str(first)
            out.append((f"{before}[{span}]{after}", figures))
            run.clear()

    for label, figures in sorted(rows, key=lambda r: natural(r[0])):
        m = re.fullmatch(r"([^\[]*)\[([0-9]+)\](.*)", label)
        if m is None:
            flush()
            out.append((label, figures))
            continue
        shape, index = (m[1], m[3]), int(m[2])
        if not (run and run[-1][0] == shape and run[-1][1] + 1 == index and
                run[-1][2] == figures):
            flush()
        run.append((shape, index, figures))
    flush()
    return out


def render_report(bundle: Bundle, target: str, source: str) -> str:
    plan = bundle.plan
    return render("report/report.md.j2", app=bundle.app, version=__version__, source=source,
                  target=target, plan=plan, objective=objective_text(plan.objective),
                  pipelines=plan.worst_pipelines(),
                  devices=[{"device": name, "tier": f[0], "compute": f[1], "cpu": f[2],
                            "memory": f[3]}
                           for name, f in _grouped([
                               (d.device, (d.tier.value, f"{d.utilization * 100:.2f}%",
                                           f"{d.cpu * 100:.2f}%",
                                           f"{d.memory_bytes / 1048576:.1f} MiB"))
                               for d in plan.used_devices()])],
                  links=[{"link": name, "used": f[1]} for name, f in _grouped([
                      (f"{k.source} → {k.target}", ("", f"{k.utilization * 100:.2f}%"))
                      for k in plan.links])],
                  placement=_placement(bundle), mermaid=_mermaid(bundle))
