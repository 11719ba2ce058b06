"""The cost model (docs/placement.md, docs/split.md), in one place: what a unit costs to run on a device, what a message
costs to send over a link, what a device and traffic cost per hour, and what a model costs
(its work, weights and the Pareto cuts of a splittable one, from its ONNX file). The MILP
formulation, the evaluator, the explanations and the baselines all compute with these; the
Plan carries their results to the emitters. `edgeflow.verify` recomputes everything on its own.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx.external_data_helper import load_external_data_for_model

from edgeflow import ir
from edgeflow.models.analysis import Analysis, analyse, weight_bytes_of
from edgeflow.models.cuts import CutProblem
from edgeflow.models.signature import external_data


def compute_s(work_flop: float, device: ir.Device, int8: bool = False) -> float:
    """Seconds one run of `work_flop` takes on `device`; an int8 model variant's work at the
    device's int8 rate (`compute_int8`, else its float rate)."""
    return work_flop / device.rate(int8)


def hop_s(nbytes: int, link: ir.Link) -> float:
    """Seconds a message of `nbytes` tensor bytes (and its header) takes over one link:
    serialisation plus latency."""
    return 8 * (nbytes + ir.MESSAGE_HEADER_BYTES) / link.bandwidth_bps + link.latency_s


def message_s(nbytes: int, device: ir.Device) -> float:
    """Seconds a message of `nbytes` tensor bytes takes through the broker of `device`: from the
    sender's publish to the receiver's hands, header included. Every message passes one broker
    on a device, two between devices (its sender's and its receiver's, which a bridge joins)."""
    return device.message_latency_s + 8 * (nbytes + ir.MESSAGE_HEADER_BYTES) / \
        device.message_bandwidth_bps


def unit_memory_bytes(model_bytes: float, device: ir.Device) -> int:
    """Memory a unit takes on `device`: its model's weights (or an operator's declared memory)
    rounded up to whole KiB, and its worker process. The k8s bundle requests exactly this."""
    return reserved_bytes(model_bytes) + device.worker_memory_bytes


def reserved_bytes(nbytes: float) -> int:
    """Bytes as reserved: rounded up to whole KiB (requests read `NKi`)."""
    return 1024 * math.ceil(nbytes / 1024)


def unit_cpu(compute_share: float, device: ir.Device) -> float:
    """The share of its device's CPUs a unit reserves: the compute its work takes and the
    worker's floor."""
    return compute_share + ir.WORKER_CPU / device.cpus


def runtime_memory_bytes(device: ir.Device, broker: bool, drivers: int) -> int:
    """Memory of a device's broker (if it hosts one) and its sensors' and sinks' drivers."""
    return broker * device.broker_memory_bytes + drivers * device.driver_memory_bytes


def runtime_cpu(device: ir.Device, broker: bool, drivers: int) -> float:
    """The share of its CPUs the broker (if any) and the drivers of a device reserve."""
    return (broker * ir.BROKER_CPU + drivers * ir.DRIVER_CPU) / device.cpus


def millicores(cpu_share: float, device: ir.Device) -> int:
    """A share of a device's CPUs as the k8s request: whole millicores, rounded down (so
    requests that fit the plan's shares fit the device's CPUs), at least 1m."""
    return max(1, math.floor(cpu_share * device.cpus * 1000 + 1e-9))


def stream_bps(rate_hz: float, nbytes: int) -> float:
    """Bits per second a stream of `nbytes` messages (and their headers) at `rate_hz` puts on
    every link it uses."""
    return rate_hz * 8 * (nbytes + ir.MESSAGE_HEADER_BYTES)


def traffic_usd_per_h(bps: float, usd_per_byte: float) -> float:
    """What a stream of `bps` costs per hour over links priced `usd_per_byte` in all."""
    return bps / 8 * 3600 * usd_per_byte


def host_usd_per_h(device: ir.Device) -> float:
    """What an instance of `device` costs per hour while it hosts a unit."""
    return device.cost_usd_per_s * 3600


@dataclass(frozen=True)
class CutOption:
    tensors: tuple[str, ...]
    head_work: int
    tail_work: int
    transfer_bytes: int
    head_weights: int
    tail_weights: int


@dataclass(frozen=True)
class ModelCost:
    work: float
    weights: int
    output_bytes: int
    cuts: tuple[CutOption, ...]  # the Pareto cuts; empty for split = none


Inputs = tuple[tuple[str, tuple[int, ...]], ...]


def _inputs(model: ir.Model) -> Inputs:
    return tuple((n, t.shape) for n, t in model.inputs.items())


_ANALYSES: OrderedDict[tuple[str, Inputs], tuple[Analysis, CutProblem]] = OrderedDict()


def _analysed(source: ModelSource, inputs: Inputs) -> tuple[Analysis, CutProblem]:
    """Analyses by (content digest, inputs), the 16 most recent kept: equal digests mean equal
    bytes, so a hit never needs the bytes again and the cache does not hold them."""
    key = (source.digest, inputs)
    if key in _ANALYSES:
        _ANALYSES.move_to_end(key)
    else:
        model = onnx.load_from_string(source.data)
        load_external_data_for_model(model, str(source.path.parent))  # halves carry weights
        analysis = analyse(model, dict(inputs))
        _ANALYSES[key] = analysis, CutProblem(analysis)
        if len(_ANALYSES) > 16:
            _ANALYSES.popitem(last=False)
    return _ANALYSES[key]


@dataclass(frozen=True)
class ModelSource:
    """A model file's bytes, the external data files beside it (by relative location), and
    the sha256 of both: what identifies the model's version and keys the caches."""

    path: Path
    data: bytes
    external: dict[str, bytes]
    digest: str


def read_model(model: ir.Model) -> ModelSource:
    """The model's file and external data, read once, with their digest."""
    path = Path(model.source)
    data = path.read_bytes()
    locations = external_data(onnx.load_from_string(data))  # tensors not loaded: only names
    external = {loc: (path.parent / loc).read_bytes() for loc in locations}
    digest = hashlib.sha256(data)
    for location, blob in sorted(external.items()):
        digest.update(f"\0{location}\0{len(blob)}\0".encode())
        digest.update(blob)
    return ModelSource(path, data, external, digest.hexdigest())


def analysed(model: ir.Model, source: ModelSource | None = None,
             ) -> tuple[Analysis, CutProblem]:
    """The ONNX analysis of a model and its cut problem, cached on the file's content (its
    sha256) and the bound inputs: a changed file is analysed again, an unchanged one once.
    `source` is the model's content when the caller has read it already."""
    return _analysed(source or read_model(model), _inputs(model))


_COSTS: dict[tuple[str, Inputs, bool], ModelCost] = {}  # small values: kept for the process


def model_cost(model: ir.Model) -> ModelCost:
    """Work, weights, output size and (for `split = auto`) the Pareto cuts of a model, cached
    on the file's content."""
    source = read_model(model)
    key = (source.digest, _inputs(model), model.split == "auto")
    if key not in _COSTS:
        analysis, problem = _analysed(source, key[1])
        out_bytes = sum(analysis.tensors[o].nbytes for o in analysis.outputs)
        weights = weight_bytes_of(analysis, analysis.dynamic_nodes())
        cuts: list[CutOption] = []
        if key[2]:
            front, _ = problem.pareto()
            for cut in front:
                head = [problem.nodes[v] for v in cut.head]
                tail = [n for v, n in problem.nodes.items() if v not in cut.head]
                cuts.append(CutOption(cut.tensors, cut.head_work, cut.tail_work,
                                      cut.transfer_bytes, weight_bytes_of(analysis, head),
                                      weight_bytes_of(analysis, tail)))
        _COSTS[key] = ModelCost(problem.total_work, weights, out_bytes, tuple(cuts))
    return _COSTS[key]
