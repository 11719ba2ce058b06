"""report.md: the plan for people — placement, splits and their run-time adaptation, latency
budget per pipeline against its SLO, utilisation, objective, and a Mermaid diagram of the placed
dataflow. Numbers are read from the
Plan, never recomputed."""

from __future__ import annotations

import json
import re
from typing import Any

from edgeflow import __version__
from edgeflow.emit.artefacts import AdaptFiles
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


def _adaptations(bundle: Bundle, static: set[str],
                 files: AdaptFiles) -> list[dict[str, Any]]:
    """One row per distinct decision table (replicas with the same table grouped): its bands,
    its size, and the bytes of the files it ships beyond the plan's own halves."""
    groups: dict[str, dict[str, Any]] = {}
    for a in bundle.plan.adaptations:
        key = json.dumps([a.model, a.variant, [c.id for c in a.cuts],
                          [(b.from_bps, b.to_bps, b.cut) for b in a.bands], a.on_disconnect,
                          a.head_device.split("[")[0], a.tail_device.split("[")[0]])
        group = groups.setdefault(key, {"a": a, "replicas": [], "extra": {}})
        group["replicas"].append(a.replica)
        for pair in files.get((a.model, a.replica), {}).values():
            for art in pair:
                if art.path not in static:
                    group["extra"][art.path] = len(art.data)
    out = []
    for g in groups.values():
        a = g["a"]
        cuts = {c.id: c for c in a.cuts}
        out.append({
            "model": a.model, "replicas": ", ".join(map(str, g["replicas"])),
            "head": _pattern(a.head_device) if len(g["replicas"]) > 1 else a.head_device,
            "tail": _pattern(a.tail_device) if len(g["replicas"]) > 1 else a.tail_device,
            "link_ms": a.latency_s * 1e3,
            "range": "—" if a.low_bps is None else f"{_bw(a.low_bps)} .. {_bw(a.high_bps)}",
            "margin": a.margin, "hold_s": a.hold_s,
            "bands": [{"range": f"{_bw(b.from_bps)} .. {_bw(b.to_bps)}", "cut": b.cut,
                       "tensors": ", ".join(cuts[b.cut].cut), "bytes": cuts[b.cut].transfer_bytes,
                       "at_from": cuts[b.cut].latency_s(b.from_bps, a.latency_s) * 1e3,
                       "at_to": cuts[b.cut].latency_s(b.to_bps, a.latency_s) * 1e3}
                      for b in a.bands],
            "cuts": len(a.cuts), "extra_bytes": sum(g["extra"].values()),
            "extra_files": len(g["extra"]), "start": a.start,
            "policy": a.on_disconnect or "none",
            "buffer": a.buffer_frames, "bypass": a.bypass})
    return out


def _bw(bps: float | None) -> str:
    assert bps is not None
    for unit, scale in (("Gbps", 1e9), ("Mbps", 1e6), ("Kbps", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.4g} {unit}"
    return f"{bps:.4g} bps"


def render_report(bundle: Bundle, target: str, source: str,
                  static: set[str] | None = None, adapt_files: AdaptFiles | None = None) -> str:
    """report.md; `static` are the paths of the plan's own model files and `adapt_files` the
    decision tables' (their extra bytes are reported)."""
    plan = bundle.plan
    return render("report/report.md.j2", app=bundle.app, version=__version__, source=source,
                  adaptations=_adaptations(bundle, static or set(), adapt_files or {}),
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
