"""The Plan: what placement decided, typed and frozen. Every placed unit replica with its device,
part and cut, compute share and memory; the chosen cut of every split model replica; each
pipeline replica's latency and its breakdown; device and link use; the objective; and, for an
infeasible app, the reasons with the spans of the declarations involved.

Placement produces it; the terminal rendering, the bundle emitters, report.md, the verifier and
the language server read it. Quantities are in SI units (seconds, bytes, FLOP, shares of a
capacity); objective values in each term's unit (see `edgeflow.objectives`). plan.json is the
view `to_json` writes (docs/placement.md documents it): milliseconds there, as users read them.
"""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgeflow.ir import Tier
from edgeflow.objectives import plan_objective
from edgeflow.span import Span
from edgeflow.unit_config import UnitKind


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


class Status(str, Enum):
    OPTIMAL = "optimal"          # proven optimal (every objective stage, within the MIP gap)
    FEASIBLE = "feasible"        # a plan meeting every constraint; not proven optimal
    INFEASIBLE = "infeasible"    # proven: no plan exists (the explanation says why)
    UNKNOWN = "unknown"          # the time limit ran out before any plan was found


class Part(str, Enum):
    """What of a declared step a unit runs."""

    OPERATOR = "operator"
    WHOLE = "whole"              # a model run whole
    HEAD = "head"                # a split model's first part, up to the cut
    TAIL = "tail"                # a split model's rest, from the cut

    @property
    def unit_kind(self) -> UnitKind:
        """The `kind` in the unit.json of a unit that runs this part."""
        return _UNIT_KINDS[self]


_UNIT_KINDS: dict[Part, UnitKind] = {Part.OPERATOR: "operator", Part.WHOLE: "model",
                                     Part.HEAD: "head", Part.TAIL: "tail"}


def unit_name(step: str, part: Part) -> str:
    """The name of a unit: the step's, `MODEL.head` / `MODEL.tail` for split halves."""
    return f"{step}.{part.value}" if part in (Part.HEAD, Part.TAIL) else step


class PlacedUnit(_Frozen):
    step: str                    # the declared operator or model
    part: Part
    replica: int
    device: str                  # device instance
    tier: Tier
    cut: tuple[str, ...] = ()    # head and tail: the tensors the head sends the tail
    compute_share: float         # of its device's compute (runs per second x seconds per run)
    memory_bytes: float
    variant: str | None = None   # a model's: the variant it runs (None: the model itself)

    @property
    def name(self) -> str:
        return unit_name(self.step, self.part)


class SplitChoice(_Frozen):
    model: str
    replica: int
    cut: tuple[str, ...]
    transfer_bytes: int
    head_work_flop: int          # the ONNX analysis counts whole FLOP
    tail_work_flop: int
    variant: str | None = None   # the variant that is cut (None: the model itself)


class Compute(_Frozen):
    kind: Literal["compute"] = "compute"
    unit: str
    device: str
    seconds: float


class Transfer(_Frozen):
    kind: Literal["transfer"] = "transfer"
    route: tuple[str, ...]       # device instances, source first
    bytes: int
    seconds: float


class VariantUse(_Frozen):
    """A declared model variant: what it costs in fidelity and where the plan runs it."""

    model: str
    variant: str
    fidelity: float | None       # measured against the model; None: not measured
    int8: bool
    eligible: bool               # meets the model's fidelity floor (or there is none)
    replicas: tuple[int, ...]    # the model replicas that run it


class PipelineLatency(_Frozen):
    name: str
    replica: int
    latency_s: float
    slo_latency_s: float | None
    met: bool
    breakdown: tuple[Compute | Transfer, ...]


class DeviceUse(_Frozen):
    device: str
    tier: Tier
    utilization: float           # of its compute, by its units' work
    cpu: float                   # of its CPU reserved: the work and the runtime's processes
    memory_bytes: float          # weights and the runtime's processes: what the bundle requests


class LinkUse(_Frozen):
    source: str
    target: str
    utilization: float


class Reason(_Frozen):
    """Why no plan exists, with the declarations involved (the first is the primary one)."""

    message: str
    spans: tuple[Span, ...] = ()


def cut_id(cut: tuple[str, ...] | list[str]) -> str:
    """The id of a cut: 10 hex of the sha256 of its tensor names, one per line. It names the
    cut's folder in a bundle (`cut-ID`) and travels in every message a head sends."""
    return hashlib.sha256("\n".join(cut).encode()).hexdigest()[:10]


class CutCost(_Frozen):
    """One cut of a decision table, timed on the plan's head and tail devices."""

    id: str                      # cut_id(cut)
    cut: tuple[str, ...]
    transfer_bytes: int
    head_s: float                # the head's compute on the head's device
    tail_s: float                # the tail's compute on the tail's device

    def latency_s(self, bandwidth_bps: float, link_latency_s: float) -> float:
        """Head, transfer and tail at `bandwidth_bps` (as `edgeflow split` times a cut)."""
        return self.head_s + 8 * self.transfer_bytes / bandwidth_bps + link_latency_s + \
            self.tail_s


class Band(_Frozen):
    """Bandwidths from `from_bps` to `to_bps` in which cut `cut` is the fastest."""

    from_bps: float
    to_bps: float
    cut: str                     # a CutCost id


class Adaptation(_Frozen):
    """A split model replica's run-time adaptation (docs/runtime.md, "Adaptation"): the decision
    table (the fastest cut per bandwidth of the link between its halves, as `edgeflow split
    --sweep` computes it) and what its head does while that link is down."""

    model: str
    replica: int
    variant: str | None = None
    head_device: str
    tail_device: str
    latency_s: float             # the link's declared latency
    bandwidth_bps: float         # the link's declared bandwidth (the plan's)
    low_bps: float | None = None  # the table's range (None: no `adapt`, the plan's cut only)
    high_bps: float | None = None
    margin: float = 0.1
    hold_s: float = 1.0
    start: str                   # the plan's cut: the head starts with it
    cuts: tuple[CutCost, ...]    # every cut the head may send, the fallback's included
    bands: tuple[Band, ...] = ()  # ascending bandwidth
    on_disconnect: Literal["local", "buffer", "drop"] | None = None
    buffer_frames: int = 0
    fallback: str | None = None  # `local`: the cut whose head is the whole model
    bypass: bool = False         # the head may send the model's output to its consumers itself
    whole: str | None = None     # the cut whose head is the whole model (a table's or fallback)

    def cut(self, id: str) -> CutCost:
        return next(c for c in self.cuts if c.id == id)


class Method(str, Enum):
    """How the plan was found (docs/placement.md, "At fleet scale")."""

    MILP = "milp"                    # one exact MILP over the whole app
    DECOMPOSITION = "decomposition"  # part by part, each exact, with a bound from the parts


class Plan(_Frozen):
    app: str
    status: Status
    gap: float = 0.0             # of the first objective term, against `bound`
    method: Method = Method.MILP
    bound: dict[str, float] = Field(default_factory=dict)  # the first term's proven lower bound
    objective: dict[str, float] = Field(default_factory=dict)   # by term name
    units: tuple[PlacedUnit, ...] = ()
    splits: tuple[SplitChoice, ...] = ()
    pipelines: tuple[PipelineLatency, ...] = ()
    devices: tuple[DeviceUse, ...] = ()
    links: tuple[LinkUse, ...] = ()
    variants: tuple[VariantUse, ...] = ()
    adaptations: tuple[Adaptation, ...] = ()
    explanation: tuple[Reason, ...] = ()

    @property
    def feasible(self) -> bool:
        return self.status in (Status.OPTIMAL, Status.FEASIBLE)

    def worst_pipelines(self) -> list[PipelineLatency]:
        """Each pipeline's slowest replica (the first of equals), in plan order."""
        worst: dict[str, PipelineLatency] = {}
        for p in self.pipelines:
            if p.name not in worst or p.latency_s > worst[p.name].latency_s:
                worst[p.name] = p
        return list(worst.values())

    def used_devices(self) -> list[DeviceUse]:
        return [d for d in self.devices if d.utilization > 0 or d.cpu > 0 or
                d.memory_bytes > 0]

    # ---------------------------------------------------------------- plan.json
    def to_dict(self) -> dict[str, Any]:
        """plan.json's content (docs/placement.md): the Plan with times in milliseconds."""
        out: dict[str, Any] = {"app": self.app, "status": self.status.value}
        if not self.feasible:
            out.update({"objective": None, "placements": [], "splits": [], "pipelines": [],
                        "devices": [], "links": [],
                        "explanation": [{"message": r.message,
                                         "related": [s.to_json() for s in r.spans]}
                                        for r in self.explanation]})
            if self.status is Status.UNKNOWN:  # what was proven before the time ran out
                out.update({"method": self.method.value, "bound": plan_objective(self.bound)})
            return out
        out["gap"] = self.gap
        out["method"] = self.method.value
        out["bound"] = plan_objective(self.bound)
        out["objective"] = plan_objective(self.objective)
        out["placements"] = [{"unit": u.name, "replica": u.replica, "device": u.device,
                              "tier": u.tier.value,
                              **({"variant": u.variant} if u.variant is not None else {})}
                             for u in self.units]
        out["splits"] = [{"model": s.model, "replica": s.replica, "cut": list(s.cut),
                          "transfer_bytes": s.transfer_bytes,
                          "head_work_flop": s.head_work_flop,
                          "tail_work_flop": s.tail_work_flop,
                          **({"variant": s.variant} if s.variant is not None else {})}
                         for s in self.splits]
        out["pipelines"] = [{"name": p.name, "replica": p.replica,
                             "latency_ms": p.latency_s * 1e3,
                             "slo_latency_ms": p.slo_latency_s * 1e3
                             if p.slo_latency_s is not None else None,
                             "met": p.met, "breakdown": [_row(b) for b in p.breakdown]}
                            for p in self.pipelines]
        out["devices"] = [{"device": d.device, "tier": d.tier.value,
                           "utilization": d.utilization, "cpu": d.cpu,
                           "memory_bytes": d.memory_bytes}
                          for d in self.devices]
        out["links"] = [{"from": lk.source, "to": lk.target, "utilization": lk.utilization}
                        for lk in self.links]
        if self.variants:  # only for an app whose models have variants
            out["variants"] = [{"model": v.model, "variant": v.variant, "fidelity": v.fidelity,
                                "int8": v.int8, "eligible": v.eligible,
                                "replicas": list(v.replicas)} for v in self.variants]
        if self.adaptations:  # only for an app whose split models adapt
            out["adaptations"] = [_adaptation(a) for a in self.adaptations]
        out["explanation"] = []
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def _adaptation(a: Adaptation) -> dict[str, Any]:
    return {"model": a.model, "replica": a.replica,
            **({"variant": a.variant} if a.variant is not None else {}),
            "head_device": a.head_device, "tail_device": a.tail_device,
            "latency_ms": a.latency_s * 1e3, "bandwidth_bps": a.bandwidth_bps,
            "range_bps": None if a.low_bps is None else [a.low_bps, a.high_bps],
            "margin": a.margin, "hold_ms": a.hold_s * 1e3, "start": a.start,
            "cuts": [{"id": c.id, "cut": list(c.cut), "transfer_bytes": c.transfer_bytes,
                      "head_ms": c.head_s * 1e3, "tail_ms": c.tail_s * 1e3} for c in a.cuts],
            "bands": [{"from_bps": b.from_bps, "to_bps": b.to_bps, "cut": b.cut}
                      for b in a.bands],
            "on_disconnect": a.on_disconnect,
            **({"buffer_frames": a.buffer_frames} if a.on_disconnect == "buffer" else {}),
            **({"fallback": a.fallback} if a.fallback is not None else {}),
            "bypass": a.bypass}


def _row(b: Compute | Transfer) -> dict[str, Any]:
    if isinstance(b, Compute):
        return {"kind": "compute", "unit": b.unit, "device": b.device, "ms": b.seconds * 1e3}
    return {"kind": "transfer", "from": b.route[0], "to": b.route[-1], "route": list(b.route),
            "bytes": b.bytes, "ms": b.seconds * 1e3}
