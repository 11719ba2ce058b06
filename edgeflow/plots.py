"""Charts (`plan --sweep ... --plot FILE.svg|png`), drawn with matplotlib: a well-kept library
that writes SVG and PNG offline, with no browser or network. Output is deterministic: SVG ids
are salted with a constant, dates and generator stamps are left out, and text stays text (the
SVG is small and searchable). docs/whatif.md shows one.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from edgeflow.whatif import changes, human

if TYPE_CHECKING:
    from edgeflow import ir
    from edgeflow.plan import Plan
    from edgeflow.whatif import Point, Sweep

FORMATS = {".svg": "svg", ".png": "png"}
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
CHANGE_LABEL_MAX = 48  # characters of a change point's label
_STYLE: dict[Any, Any] = {"svg.hashsalt": "edgeflow", "svg.fonttype": "none", "font.family": "DejaVu Sans",
          "font.size": 9}
MARK = "edgeflow chart"  # in every chart's metadata: what `--plot` may replace (edgeflow.files)


def _change_label(point: Point) -> str:
    parts = changes(point)
    text = parts[0].replace("->", "→") if parts else ""
    if len(parts) > 1:
        text += f" (+{len(parts) - 1} more)"
    return text if len(text) <= CHANGE_LABEL_MAX else text[:CHANGE_LABEL_MAX - 1] + "…"


def sweep_chart(kind: str, app: str, sweeps: list[Sweep], points: list[Point],
                slos: dict[str, float | None], terms: list[str]) -> bytes:
    """Latency of each pipeline against the swept parameter, each pipeline's latency SLO as a
    dashed line, the points where the plan changes marked and labelled with what moved, and
    the other objective terms in panels below. With two parameters: the first pipeline's
    latency against the first, one line per value of the second."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    first = sweeps[0]
    extra = [t for t in terms if t != "latency"]
    with matplotlib.rc_context(_STYLE):
        fig, axes = plt.subplots(1 + len(extra), 1, sharex=True, squeeze=False,
                                 figsize=(8, 4.2 + 1.8 * len(extra)),
                                 gridspec_kw={"height_ratios": [3] + [1.3] * len(extra)})
        ax = axes[0][0]
        pipelines = list(slos)
        if len(sweeps) == 1:
            series: list[tuple[str, str, list[float], list[float | None]]] = [
                (p, COLOURS[k % len(COLOURS)], [pt.values[first.path] for pt in points],
                 [pt.latency_s[p] * 1e3 if p in pt.latency_s else None for pt in points])
                for k, p in enumerate(pipelines)]
        else:
            second = sweeps[1]
            target = pipelines[0]
            series = []
            for k, v in enumerate(second.values):
                row = [pt for pt in points if pt.values[second.path] == v]
                series.append((f"{target}, {second.path} = {human(v, second.prop.dimension)}",
                               COLOURS[k % len(COLOURS)], [pt.values[first.path] for pt in row],
                               [pt.latency_s[target] * 1e3 if target in pt.latency_s else None
                                for pt in row]))
        for label, colour, xs, ys in series:
            ax.plot([x for x, y in zip(xs, ys, strict=True) if y is not None],
                    [y for y in ys if y is not None], marker="o", markersize=3, lw=1.5,
                    color=colour, label=f"{label} latency")
        highest = max((y for *_, ys in series for y in ys if y is not None), default=1.0)
        top = highest * 1.2
        swept = next((s.name for s in sweeps if s.prop.key == "slo.latency"), None)
        if swept is not None and swept in slos:  # the SLO is what is swept: a line y = x
            k = pipelines.index(swept)
            slo_xs = [pt.values[first.path] for pt in points]
            slo_ys = [pt.values[s.path] * 1e3 for pt in points for s in sweeps
                      if s.prop.key == "slo.latency" and s.name == swept]
            if first.prop.key == "slo.latency" and first.name == swept:
                ax.plot(slo_xs, slo_ys, color=COLOURS[k % len(COLOURS)], ls="--", lw=1,
                        label=f"{swept} SLO (swept)")
                top = max(top, max(slo_ys) * 1.1)
        for k, (name, slo) in enumerate(slos.items()):
            if name == swept:
                continue
            if slo is not None and (len(sweeps) == 1 or k == 0):
                # an SLO far above every latency would flatten the curves: it stays in the
                # legend, drawn at its height but outside the view
                off = slo * 1e3 > 3 * highest
                top = top if off else max(top, slo * 1e3 * 1.1)
                ax.axhline(slo * 1e3, color=COLOURS[k % len(COLOURS)], ls="--", lw=1,
                           label=f"{name} SLO {slo * 1e3:g} ms" + (" (off scale)" if off
                                                                   else ""))
        infeasible = [pt.values[first.path] for pt in points
                      if pt.status not in ("optimal", "feasible")]
        if infeasible:
            ax.plot(infeasible, [0] * len(infeasible), "x", color="#555555",
                    label="no plan (infeasible, invalid, unknown or too large)")
        if len(sweeps) == 1:
            for pt in points:
                if pt.moved or pt.recut:
                    x = pt.values[first.path]
                    ax.axvline(x, color="#888888", ls=":", lw=1)
                    ax.annotate(_change_label(pt), (x, 1), xycoords=("data", "axes fraction"),
                                rotation=90, va="top", ha="right", fontsize=7,
                                color="#444444", xytext=(-2, -4),
                                textcoords="offset points")
        ax.set_ylabel("latency (ms)")
        ax.set_ylim(0, top)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=7)
        ax.set_title(f"{app}: {first.path}" + (f" × {sweeps[1].path}" if len(sweeps) > 1
                                                else ""))
        for k, term in enumerate(extra):
            axis = axes[k + 1][0]
            rows = [(pt.values[first.path], pt.objective[term]) for pt in points
                    if term in pt.objective and (len(sweeps) == 1 or
                                                 pt.values[sweeps[1].path] == sweeps[1].values[0])]
            axis.plot([r[0] for r in rows], [r[1] for r in rows], marker="o", markersize=3,
                      color=COLOURS[(k + 3) % len(COLOURS)])
            axis.set_ylabel(term if len(sweeps) == 1 else
                            f"{term} at\n{human(sweeps[1].values[0], sweeps[1].prop.dimension)}")
            axis.grid(True, alpha=0.3)
        bottom = axes[-1][0]
        if first.log:
            bottom.set_xscale("log")
            _log_ticks(bottom, min(first.values), max(first.values))
        bottom.xaxis.set_major_formatter(FuncFormatter(
            lambda v, _pos: human(v, first.prop.dimension)))
        bottom.set_xlabel(first.path)
        fig.tight_layout()
        return _save(fig, kind)


def _tight(fig: Any, **options: Any) -> None:
    """`fig.tight_layout`, without its warning when long labels leave it no room (the chart
    is drawn as it is rather than printing a warning to the user)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout(**options)


def _log_ticks(axis: Any, low: float, high: float) -> None:
    """Ticks of a log x axis that do not collide: at 1, 2 and 5 of each decade over a range
    of two decades or less, at each decade over more."""
    from matplotlib.ticker import LogLocator, NullFormatter

    subs = (1.0, 2.0, 5.0) if high <= 100 * low else (1.0,)
    axis.xaxis.set_major_locator(LogLocator(subs=subs))
    axis.xaxis.set_minor_formatter(NullFormatter())


def _save(fig: Any, kind: str) -> bytes:
    """`fig` as `kind` (svg or png) bytes, with the mark and without dates."""
    import matplotlib.pyplot as plt

    metadata: dict[str, Any] = {"Date": None, "Creator": MARK} if kind == "svg" else \
        {"Software": MARK}
    out = io.BytesIO()
    fig.savefig(out, format=kind, metadata=metadata, dpi=120)
    plt.close(fig)
    return out.getvalue()


def _cut_label(cut: list[str]) -> str:
    text = ", ".join(cut) if cut else "(whole on one side)"
    return text if len(text) <= CHANGE_LABEL_MAX else text[:CHANGE_LABEL_MAX - 1] + "…"


def split_chart(kind: str, model: str, candidates: list[dict[str, Any]],
                envelope: list[dict[str, Any]], low_bps: float, high_bps: float,
                latency_s: float) -> bytes:
    """`split --sweep ... --plot`: the total latency of every Pareto-optimal cut against the
    link bandwidth (log axis), thin, and the optimal cut per bandwidth range over them, thick
    and labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import FuncFormatter

    from edgeflow.syntax.units import BANDWIDTH

    xs = np.geomspace(low_bps, high_bps, 200)
    with matplotlib.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(8, 4.6))
        for c in candidates:
            compute = float(c["head_ms"]) + float(c["tail_ms"])
            ys = compute + 8e3 * int(c["transfer_bytes"]) / xs + latency_s * 1e3
            ax.plot(xs, ys, color="#bbbbbb", lw=0.8)
        for k, row in enumerate(envelope):
            lo, hi = float(row["from_bps"]), float(row["to_bps"])
            nbytes = int(row["transfer_bytes"])
            compute = float(row["total_ms_at_from"]) - 8e3 * nbytes / lo - latency_s * 1e3
            seg = np.geomspace(lo, hi, 50)
            colour = COLOURS[k % len(COLOURS)]
            ax.plot(seg, compute + 8e3 * nbytes / seg + latency_s * 1e3, color=colour, lw=2.5,
                    label=f"{human(lo, BANDWIDTH)}–{human(hi, BANDWIDTH)}: "
                          f"{_cut_label(list(row['cut']))}")
            if k:
                ax.axvline(lo, color="#888888", ls=":", lw=1)
        ax.plot([], [], color="#bbbbbb", lw=0.8, label="every Pareto-optimal cut")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _log_ticks(ax, low_bps, high_bps)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: human(v, BANDWIDTH)))
        ax.set_xlabel("link bandwidth")
        ax.set_ylabel("latency, edge + link + cloud (ms)")
        ax.set_title(f"{model}: the optimal cut by bandwidth")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(loc="best", fontsize=7)
        fig.tight_layout()
        return _save(fig, kind)


def profile_chart(kind: str, model: str, node_seconds: dict[str, float], top: int = 25) -> bytes:
    """`profile --plot`: the measured time of each node, slowest first; the `top` slowest
    labelled, the rest summed in one bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = sorted(node_seconds.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ranked[:top]
    rest = sum(s for _, s in ranked[top:])
    labels = [_cut_label([n]) for n, _ in shown] + ([f"{len(ranked) - top} other nodes"]
                                                     if rest else [])
    values = [s * 1e3 for _, s in shown] + ([rest * 1e3] if rest else [])
    total = sum(node_seconds.values()) * 1e3
    with matplotlib.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(8, 1.2 + 0.26 * len(labels)))
        positions = list(range(len(labels)))[::-1]
        ax.barh(positions, values, color=[COLOURS[0]] * len(shown) + ["#aaaaaa"] * bool(rest))
        ax.set_yticks(positions, labels, fontsize=7)
        for y, v in zip(positions, values, strict=True):
            ax.annotate(f"{v:.3g} ms ({v / total:.0%})" if total else f"{v:.3g} ms", (v, y),
                        xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        ax.set_xlabel("measured time per run (ms)")
        ax.set_title(f"{model}: {total:.3g} ms over {len(ranked)} nodes")
        ax.grid(True, axis="x", alpha=0.3)
        ax.margins(x=0.15)
        fig.tight_layout()
        return _save(fig, kind)


TIER_COLOURS = {"edge": "#2e7d32", "fog": "#ef6c00", "cloud": "#1565c0"}  # as report.html
TRANSFER_LOCAL, TRANSFER_NETWORK = "#cfd8dc", "#78909c"


def latency_chart(program: ir.Program, plan: Plan) -> bytes:
    """report.html: the latency of each pipeline's worst replica as a stacked bar, a segment per
    step (compute coloured by the tier that runs it, transfers grey: light on one device, dark
    across a link), and the pipeline's latency SLO as a red mark. A panel per pipeline, each on
    its own scale; an SLO far above the latency is named at the panel's edge instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    tier_of = {inst: d.tier.value for d in program.devices.values() for inst in d.instances()}
    worst = plan.worst_pipelines()
    with matplotlib.rc_context(_STYLE):
        fig, axes = plt.subplots(len(worst), 1, squeeze=False,
                                 figsize=(10, 0.9 + 0.75 * len(worst)))
        for k, p in enumerate(worst):
            ax = axes[k][0]
            latency = p.latency_s * 1e3
            slo = p.slo_latency_s * 1e3 if p.slo_latency_s is not None else None
            shown = slo is not None and slo <= 10 * latency
            top = max(latency, slo if shown and slo is not None else 0.0) * 1.15 or 1.0
            left = 0.0
            for b in p.breakdown:
                ms = b.seconds * 1e3
                if b.kind == "compute":
                    colour, text = TIER_COLOURS[tier_of[b.device]], b.unit
                else:
                    colour = TRANSFER_LOCAL if len(b.route) == 1 else TRANSFER_NETWORK
                    text = "" if len(b.route) == 1 else f"{b.route[0]}→{b.route[-1]}"
                ax.barh(0, ms, left=left, height=0.6, color=colour, edgecolor="white",
                        linewidth=0.6)
                room = int(ms / top * 150)  # characters that fit the segment, about
                if text and room >= 3:
                    ax.text(left + ms / 2, 0, text if len(text) <= room else
                            text[:room - 1] + "…", ha="center", va="center", fontsize=7,
                            color="white" if b.kind == "compute" else "#102027")
                left += ms
            ax.text(left + top * 0.005, 0, f"{latency:.3g} ms", va="center", fontsize=7)
            if slo is not None and shown:
                ax.plot([slo, slo], [-0.45, 0.45], color="#c62828", lw=2)
                ax.text(slo, 0.5, f"SLO {slo:g} ms", color="#c62828", fontsize=7,
                        ha="center", va="bottom")
            elif slo is not None:
                ax.text(top, 0.5, f"SLO {slo:g} ms (off scale) →", color="#c62828",
                        fontsize=7, ha="right", va="bottom")
            ax.set_yticks([0], [_cut_label([p.name])])
            ax.set_ylim(-0.5, 1.1)
            ax.set_xlim(0, top)
            ax.grid(True, axis="x", alpha=0.3)
            ax.tick_params(axis="x", labelsize=7)
        axes[-1][0].set_xlabel("latency of the worst replica (ms)")
        tiers = {tier_of[b.device] for p in worst for b in p.breakdown if b.kind == "compute"}
        handles = [Patch(color=TIER_COLOURS[t], label=f"compute on {t}")
                   for t in TIER_COLOURS if t in tiers]
        handles += [Patch(color=TRANSFER_LOCAL, label="message on one device"),
                    Patch(color=TRANSFER_NETWORK, label="message across a link")]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7,
                   frameon=False)
        _tight(fig, rect=(0, 0.35 / (0.9 + 0.75 * len(worst)), 1, 1))
        return _save(fig, "svg")


def utilisation_chart(rows: list[tuple[str, str, float, float, float]]) -> bytes:
    """report.html: per declared device (its busiest instance), the share of its compute its
    units use, of its CPU reserved and of its memory reserved; 100 % marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = (("compute", "#1565c0"), ("CPU reserved", "#8e24aa"),
                ("memory reserved", "#00897b"))
    with matplotlib.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(10, 1.0 + 0.5 * len(rows)))
        height = 0.26
        top = max([1.0] + [v for r in rows for v in r[2:]]) * 100 * 1.15
        for k, (name, _tier, *values) in enumerate(rows):
            y = len(rows) - 1 - k
            for m, ((label, colour), value) in enumerate(zip(measures, values, strict=True)):
                yy = y + (1 - m) * height
                ax.barh(yy, value * 100, height=height * 0.9, color=colour,
                        label=label if k == 0 else None)
                ax.text(value * 100 + top * 0.005, yy, f"{value:.1%}", va="center",
                        fontsize=6.5)
        ax.axvline(100, color="#c62828", lw=1, ls="--")
        ax.set_yticks(range(len(rows)), [_cut_label([f"{r[0]} ({r[1]})"])
                                          for r in reversed(rows)])
        ax.set_xlim(0, top)
        ax.set_xlabel("share of the busiest instance (%)")
        ax.grid(True, axis="x", alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
        _tight(fig)
        return _save(fig, "svg")
