"""`edgeflow split`: a model's cut candidates timed for one edge device, one link and one cloud
device, the exact optimum, the edge-only and cloud-only baselines, and the bandwidth decision
table. Produces the split JSON of docs/split.md ("JSON output"). Problems are raised as `SplitError`,
which `edgeflow.api` turns into diagnostics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import onnx
from onnx.external_data_helper import load_external_data_for_model

from edgeflow.models.analysis import Analysis, ModelError, analyse
from edgeflow.models.cuts import Cut, CutProblem
from edgeflow.models.signature import (
    BoundInputs,
    ModelLoadError,
    external_data,
    inputs_text,
    load,
)


@dataclass(frozen=True)
class SplitError(Exception):
    """A user error: `code` is a diagnostic code (see docs/diagnostics.md); `file` is the file at
    fault when it is not the model (a profile)."""

    code: str
    message: str
    help: str | None = None
    file: str | None = None


MIN_GAIN = 0.05  # a cut that saves less than 5 % over running whole is not worth its moving parts


@dataclass
class Setting:
    """The devices and link a split is timed for. A profile maps node names to measured seconds
    on that device and replaces the FLOP estimate for the nodes it covers."""

    edge_flops: float | None    # None: every node's time comes from the edge profile
    cloud_flops: float | None
    bandwidth_bps: float
    latency_s: float
    edge_profile: dict[str, float] = field(default_factory=dict)
    cloud_profile: dict[str, float] = field(default_factory=dict)
    # the relative latency gain over running whole a cut must bring to be recommended
    min_gain: float = MIN_GAIN


def load_model(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise SplitError("E0601", f"model file `{path}` not found")
    try:
        model = load(str(path))
    except ModelLoadError as exc:
        raise SplitError("E0602", f"`{path.name}` is not a valid ONNX model: {exc}") from None
    if not external_data(model):
        return model
    full = onnx.ModelProto()  # with its weights in it, so halves and profiles need no files
    full.CopyFrom(model)
    load_external_data_for_model(full, str(path.parent))
    return full


def analyse_model(model: onnx.ModelProto, inputs: BoundInputs) -> Analysis:
    """Analyse with inputs bound to (dtype, shape); dtype mismatches and binding problems are
    SplitErrors with the codes `edgeflow check` uses for the same problems."""
    init = {i.name for i in model.graph.initializer}
    actual = {v.name: v for v in model.graph.input if v.name not in init}
    for name, (dtype, _) in inputs.items():
        if name not in actual:
            raise SplitError("E0603", f"the model has no input `{name}`",
                             "its inputs are: " + ", ".join(f"`{n}`" for n in actual))
        want = onnx.helper.tensor_dtype_to_np_dtype(actual[name].type.tensor_type.elem_type)
        if str(want) != dtype:
            raise SplitError("E0605", f"input `{name}` is {want}, not {dtype}")
    for name in actual:
        if name not in inputs:
            raise SplitError("E0603", f"input `{name}` of the model is not bound",
                             f"add `--input {name}=TYPE[dims]`")
    try:
        return analyse(model, {n: shape for n, (_, shape) in inputs.items()})
    except ModelError as exc:
        raise SplitError(exc.code, str(exc)) from None


class Timing:
    """Milliseconds of cuts under one Setting (exact arithmetic, floats only on output)."""

    def __init__(self, problem: CutProblem, setting: Setting) -> None:
        self.problem, self.setting = problem, setting
        names = {v: n.name for v, n in problem.nodes.items()}

        def per_node(side: str, flops: float | None,
                     profile: dict[str, float]) -> dict[int, Fraction]:
            missing = [names[v] for v in problem.nodes if names[v] not in profile]
            if flops is None and missing:
                raise SplitError("E0802", f"the {side} profile has no time for node "
                                 f"`{missing[0]}`" + (f" and {len(missing) - 1} more"
                                                      if len(missing) > 1 else ""),
                                 f"give --{side}-compute for the nodes it does not cover, or "
                                 "profile this model")
            return {v: Fraction(profile[names[v]]) if names[v] in profile
                    else Fraction(problem.work[v]) / Fraction(flops)  # type: ignore[arg-type]
                    for v in problem.nodes}

        self.edge = per_node("edge", setting.edge_flops, setting.edge_profile)
        self.cloud = per_node("cloud", setting.cloud_flops, setting.cloud_profile)

    def send(self, nbytes: int, bandwidth: Fraction | float | None = None) -> Fraction:
        bw = Fraction(bandwidth if bandwidth is not None else self.setting.bandwidth_bps)
        return Fraction(8 * nbytes) / bw + Fraction(self.setting.latency_s)

    def compute(self, cut: Cut) -> Fraction:
        return sum((self.edge[v] for v in cut.head), Fraction(0)) + sum(
            (self.cloud[v] for v in self.problem.nodes if v not in cut.head), Fraction(0))

    def optimal(self) -> Cut:
        per_byte = Fraction(8) / Fraction(self.setting.bandwidth_bps)
        return self.problem.min_cut(self.edge.__getitem__, self.cloud.__getitem__,
                                    lambda t: per_byte * self.problem.nbytes[t])

    def row(self, cut: Cut) -> dict[str, object]:
        head = sum((self.edge[v] for v in cut.head), Fraction(0))
        tail = sum((self.cloud[v] for v in self.problem.nodes if v not in cut.head), Fraction(0))
        transfer = self.send(cut.transfer_bytes)
        return {"cut": list(cut.tensors), "transfer_bytes": cut.transfer_bytes,
                "head_work_flop": cut.head_work, "tail_work_flop": cut.tail_work,
                "head_ms": _ms(head), "transfer_ms": _ms(transfer), "tail_ms": _ms(tail),
                "total_ms": _ms(head + transfer + tail)}

    def sweep(self, low_bps: float, high_bps: float) -> list[dict[str, object]]:
        """The optimal cut for every bandwidth in [low, high], as ranges: the lower envelope of
        the cuts' cost lines in 1/bandwidth, over the exact convex hull of (compute time, bytes)."""
        hull = self.problem.hull(self.edge.__getitem__, self.cloud.__getitem__)
        # The hull runs from least compute time (most bytes) to most compute time (fewest
        # bytes); cut i beats cut i+1 above the bandwidth where their totals are equal.
        breaks = [Fraction(8 * (a.transfer_bytes - b.transfer_bytes))
                  / (self.compute(b) - self.compute(a)) for a, b in pairwise(hull)]
        uppers = [None, *breaks]
        lowers = [*breaks, Fraction(0)]
        rows = []
        for cut, upper, lower in zip(hull, uppers, lowers):
            lo = max(lower, Fraction(low_bps))
            hi = Fraction(high_bps) if upper is None else min(upper, Fraction(high_bps))
            if lo >= hi:
                continue
            compute = self.compute(cut)
            rows.append({"from_bps": float(lo), "to_bps": float(hi), "cut": list(cut.tensors),
                         "transfer_bytes": cut.transfer_bytes,
                         "total_ms_at_from": _ms(compute + self.send(cut.transfer_bytes, lo)),
                         "total_ms_at_to": _ms(compute + self.send(cut.transfer_bytes, hi))})
        return rows[::-1]  # ascending bandwidth


def _ms(seconds: Fraction) -> float:
    return round(float(seconds) * 1000, 6)


def report(analysis: Analysis, model_name: str, inputs: BoundInputs, setting: Setting,
           forced: list[str] | None = None, sweep: tuple[float, float] | None = None,
           ) -> tuple[dict[str, object], Cut]:
    """The split JSON and the cut to emit (the forced one, else the optimum)."""
    problem = CutProblem(analysis)
    timing = Timing(problem, setting)
    candidates, complete = problem.pareto()
    optimal = timing.optimal()
    keys = {c.key for c in candidates}
    if optimal.key not in keys:  # a faster edge, or measured profiles: add it to the table
        candidates = sorted([*candidates, optimal], key=lambda c: c.head_work)
    cloud_only = problem.evaluate(frozenset())
    edge_only = problem.evaluate(frozenset(problem.nodes))
    out: dict[str, object] = {
        "model": model_name,
        "inputs": inputs_text(inputs),
        "total_work_flop": problem.total_work,
        "no_formula_ops": dict(sorted(analysis.no_formula.items())),
        "shape_sources": analysis.shape_sources,
        "edge_only_ms": timing.row(edge_only)["total_ms"],
        "cloud_only_ms": timing.row(cloud_only)["total_ms"],
        "candidates": [timing.row(c) for c in candidates],
        "frontier": "complete" if complete else "convex hull",
        "optimal": timing.row(optimal),
    }
    best = min(float(out["edge_only_ms"]), float(out["cloud_only_ms"]))  # type: ignore[arg-type]
    total = float(timing.row(optimal)["total_ms"])  # type: ignore[arg-type]
    out["speedup"] = round(best / total, 6) if total > 0 else None
    out["recommended"] = _recommended(timing, optimal, edge_only, cloud_only, setting.min_gain)
    chosen = optimal
    if forced is not None:
        try:
            chosen = problem.from_tensors(forced)
        except ValueError as exc:
            raise SplitError("E0801", f"cannot cut at {', '.join(forced)}: {exc}",
                             "pick the tensors of a candidate, listed by `edgeflow split`"
                             ) from None
        out["forced"] = timing.row(chosen)
    if sweep is not None:
        out["sweep"] = timing.sweep(*sweep)
    return out, chosen


def _recommended(timing: Timing, optimal: Cut, edge_only: Cut, cloud_only: Cut,
                 min_gain: float) -> dict[str, object]:
    """The optimum when it gains at least `min_gain` over running the model whole on the faster
    device, else running it whole there (the optimum itself stays exact in `optimal`)."""
    edge, cloud = timing.row(edge_only), timing.row(cloud_only)
    whole, where = (edge, "edge") if edge["total_ms"] <= cloud["total_ms"] else (  # type: ignore
        cloud, "cloud")
    row = timing.row(optimal)
    whole_ms, best_ms = float(whole["total_ms"]), float(row["total_ms"])  # type: ignore
    gain = (whole_ms - best_ms) / whole_ms if whole_ms > 0 else 0.0
    if gain >= min_gain and optimal.key not in (edge_only.key, cloud_only.key):
        return {**row, "runs": "split", "gain": round(gain, 6), "min_gain": min_gain}
    return {**whole, "runs": where, "gain": round(gain, 6), "min_gain": min_gain}


def read_profile(path: Path) -> dict[str, float]:
    """Per-node seconds from a profile written by `edgeflow profile`."""
    try:
        data = json.loads(path.read_text())
        seconds = data.get("node_seconds") if isinstance(data, dict) else None
        if not isinstance(seconds, dict):
            raise ValueError("it has no `node_seconds` object")  # noqa: TRY004 - caught below
        return {str(k): float(v) for k, v in seconds.items()}
    except (OSError, ValueError, TypeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise SplitError("E0802", f"cannot read profile `{path}`: {reason}",
                         "write one with `edgeflow profile MODEL.onnx --input ... -o FILE`",
                         str(path)) from None


def _gflop(flop: object) -> str:
    return f"{float(flop) / 1e9:.3f}"  # type: ignore[arg-type]


def _recommendation_text(rec: dict[str, object]) -> str:
    gain = float(rec["gain"])  # type: ignore[arg-type]
    if rec["runs"] == "split":
        return (f"recommended: cut at {', '.join(rec['cut'])}, {rec['total_ms']:.3f} ms, "  # type: ignore
                f"{gain:.1%} faster than running whole")
    return (f"recommended: run whole on the {rec['runs']}, {rec['total_ms']:.3f} ms (the best "
            f"cut gains {max(gain, 0.0):.1%}, below --min-gain {rec['min_gain']:.0%})")


def render_text(data: dict[str, object], setting: Setting) -> str:
    """The Neurosurgeon-style table: one row per candidate cut, the optimum starred."""
    inputs = ", ".join(f"{k}={v}" for k, v in data["inputs"].items())  # type: ignore[attr-defined]
    def device(side: str, flops: float | None) -> str:
        return f"{side} measured" if flops is None else f"{side} {flops / 1e12:g} TFLOPS"

    lines = [f"model {data['model']} ({inputs}): {_gflop(data['total_work_flop'])} GFLOP",
             f"{device('edge', setting.edge_flops)}, {device('cloud', setting.cloud_flops)}, "
             f"link {setting.bandwidth_bps / 1e6:g} Mbps + {setting.latency_s * 1e3:g} ms"
             + ("; edge times from a measured profile" if setting.edge_profile else "")
             + ("; cloud times from a measured profile" if setting.cloud_profile else ""),
             _recommendation_text(data["recommended"]),  # type: ignore[arg-type]
             ""]
    header = (f"  {'cut':<40} {'head GFLOP':>10} {'bytes':>10} {'head ms':>9} {'transfer ms':>11}"
              f" {'tail ms':>9} {'total ms':>9}")
    lines.append(header)
    optimal = data["optimal"]
    rows: list[dict[str, object]] = list(data["candidates"])  # type: ignore[call-overload]
    for row in rows:
        cut = ", ".join(row["cut"])  # type: ignore[arg-type]
        if len(cut) > 40:
            cut = cut[:37] + "..."
        mark = "*" if row == optimal else " "
        lines.append(f"{mark} {cut:<40} {_gflop(row['head_work_flop']):>10} "
                     f"{row['transfer_bytes']:>10} {row['head_ms']:>9.3f} "
                     f"{row['transfer_ms']:>11.3f} {row['tail_ms']:>9.3f} {row['total_ms']:>9.3f}")
    lines.append("")
    frontier = ("every Pareto-optimal cut" if data["frontier"] == "complete" else
                "the Pareto-optimal cuts on the convex hull (too many cuts to list all)")
    lines.append(f"{len(rows)} candidates ({frontier}); * = optimal")
    lines.append(f"edge only {data['edge_only_ms']:.3f} ms, cloud only {data['cloud_only_ms']:.3f} "
                 f"ms, optimal {optimal['total_ms']:.3f} ms "  # type: ignore[index]
                 f"at {', '.join(optimal['cut'])}: speed-up "  # type: ignore[index]
                 + (f"{data['speedup']:.2f}x" if data["speedup"] is not None else
                    "undefined (the model takes no time)"))
    if "forced" in data:
        forced = data["forced"]
        lines.append(f"forced cut at {', '.join(forced['cut'])}: "  # type: ignore[index]
                     f"{forced['total_ms']:.3f} ms")  # type: ignore[index]
    if "sweep" in data:
        lines.append("")
        lines.append("optimal cut by bandwidth:")
        for r in data["sweep"]:  # type: ignore[attr-defined]
            lines.append(f"  {_bw(r['from_bps'])} .. {_bw(r['to_bps'])}: "
                         f"{', '.join(r['cut'])} ({r['transfer_bytes']} B, "
                         f"{r['total_ms_at_from']:.3f} .. {r['total_ms_at_to']:.3f} ms)")
    return "\n".join(lines) + "\n"


def _bw(bps: float) -> str:
    for unit, factor in (("Gbps", 1e9), ("Mbps", 1e6), ("Kbps", 1e3)):
        if bps >= factor:
            return f"{bps / factor:.4g} {unit}"
    return f"{bps:.4g} bps"
