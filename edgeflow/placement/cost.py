"""LANGUAGE.md's cost model, in one place: what a unit costs to run on a device, what a message
costs to send over a link, what a device and traffic cost per hour, and what a model costs
(its work, weights and the Pareto cuts of a splittable one, from its ONNX file). The MILP
formulation, the evaluator, the explanations and the baselines all compute with these; the
Plan carries their results to the emitters. `edgeflow.verify` recomputes everything on its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import onnx

from edgeflow import ir
from edgeflow.models.analysis import Analysis, analyse, weight_bytes_of
from edgeflow.models.cuts import CutProblem


def compute_s(work_flop: float, device: ir.Device) -> float:
    """Seconds one run of `work_flop` takes on `device`."""
    return work_flop / device.compute_flops


def hop_s(nbytes: int, link: ir.Link) -> float:
    """Seconds a message of `nbytes` takes over one link: serialisation plus latency."""
    return 8 * nbytes / link.bandwidth_bps + link.latency_s


def stream_bps(rate_hz: float, nbytes: int) -> float:
    """Bits per second a stream of `nbytes` messages at `rate_hz` puts on every link it uses."""
    return rate_hz * 8 * nbytes


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


def _file_key(source: str) -> tuple[str, int, int]:
    """The cache key of a file's content: its path, modification time and size."""
    stat = os.stat(source)
    return source, stat.st_mtime_ns, stat.st_size


@lru_cache(maxsize=64)
def _analysed(key: tuple[str, int, int], inputs: Inputs) -> tuple[Analysis, CutProblem]:
    analysis = analyse(onnx.load(key[0]), dict(inputs))
    return analysis, CutProblem(analysis)


def analysed(model: ir.Model) -> tuple[Analysis, CutProblem]:
    """The ONNX analysis of a model and its cut problem, cached on the file's content (path,
    mtime, size) and the bound inputs, so a changed file is analysed again."""
    return _analysed(_file_key(model.source), _inputs(model))


def _inputs(model: ir.Model) -> Inputs:
    return tuple((n, t.shape) for n, t in model.inputs.items())


@lru_cache(maxsize=64)
def _model_cost(key: tuple[str, int, int], inputs: Inputs, split: bool) -> ModelCost:
    analysis, problem = _analysed(key, inputs)
    out_bytes = sum(analysis.tensors[o].nbytes for o in analysis.outputs)
    weights = weight_bytes_of(analysis, analysis.dynamic_nodes())
    cuts: list[CutOption] = []
    if split:
        front, _ = problem.pareto()
        for cut in front:
            head = [problem.nodes[v] for v in cut.head]
            tail = [n for v, n in problem.nodes.items() if v not in cut.head]
            cuts.append(CutOption(cut.tensors, cut.head_work, cut.tail_work, cut.transfer_bytes,
                                  weight_bytes_of(analysis, head), weight_bytes_of(analysis, tail)))
    return ModelCost(problem.total_work, weights, out_bytes, tuple(cuts))


def model_cost(model: ir.Model) -> ModelCost:
    """Work, weights, output size and (for `split = auto`) the Pareto cuts of a model."""
    return _model_cost(_file_key(model.source), _inputs(model), model.split == "auto")
