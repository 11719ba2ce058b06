"""Tensor shapes measured by running the model, for what ONNX shape inference cannot tell:
operators it has no rule for (`com.microsoft` contrib ops), dimensions declared `-1`, control
flow whose output shapes it gives up on. The model runs in onnxruntime on the bound input
shapes with every intermediate tensor exposed as an output, twice, on different random inputs:
a shape that differs between the runs depends on the input values (NonZero, NonMaxSuppression,
TopK on data) and is reported as such, never fixed. Only shapes are kept, never values.

Only `split`, `plan` and `compile` analyse models; `check` and the language server never run
one (docs/split.md, "Analysis of the model").
"""

from __future__ import annotations

import contextvars
import hashlib
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from edgeflow import cache

RUNS = 2  # different random inputs; a shape that differs between them is data-dependent
MAX_INPUT_BYTES = 256 * 2**20  # random inputs larger than this are not made up to run on
# False where no model may run (the language server: a file opened in an editor may be hostile)
_ALLOWED: contextvars.ContextVar[bool] = contextvars.ContextVar("measure_allowed", default=True)


@contextmanager
def never_run() -> Iterator[None]:
    """Within this block, `measure_shapes` runs nothing (it reports why instead)."""
    token = _ALLOWED.set(False)
    try:
        yield
    finally:
        _ALLOWED.reset(token)


@dataclass
class Measured:
    shapes: dict[str, tuple[int, tuple[int, ...]]] = field(default_factory=dict)  # elem, shape
    varying: set[str] = field(default_factory=set)  # shapes that differed between runs
    failure: str | None = None  # why the model could not be run


def _feed(value: onnx.ValueInfoProto, shape: tuple[int, ...], run: int) -> np.ndarray:
    """Random input of run `run`: the runs draw from different distributions (centred and
    all-positive reals, small integers of different ranges, mixed and all-true booleans), so
    that a shape that depends on the values shows it."""
    rng = np.random.default_rng(run)
    dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
    if dtype == np.bool_:
        return (rng.integers(0, 2, size=shape) if run == 0 else np.ones(shape)).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):  # small: safe as indices
        return rng.integers(0, 4 if run == 0 else 2, size=shape).astype(dtype)
    if run == 0:
        return rng.standard_normal(size=shape).astype(dtype)
    return rng.uniform(0.1, 2.0, size=shape).astype(dtype)


def measure_shapes(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> Measured:
    """The shape of every tensor the main graph's nodes produce, from `RUNS` runs on random
    inputs of the bound `shapes`; kept in edgeflow's cache folder (`edgeflow.cache`) by the
    model's sha256 and the shapes, and read from it even where no model may run."""
    key = hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest() + \
        json.dumps(sorted((name, list(shape)) for name, shape in shapes.items()))
    kept = cache.get("shapes", key)
    try:
        return Measured({str(n): (int(e), tuple(int(d) for d in dims))
                         for n, (e, dims) in kept["shapes"].items()},
                        {str(n) for n in kept["varying"]})
    except (KeyError, TypeError, ValueError, AttributeError):
        pass  # nothing kept, or an entry damaged: measure again
    measured = _measure(model, shapes)
    if measured.failure is None:
        cache.put("shapes", key, {"shapes": {n: [e, list(dims)] for n, (e, dims) in
                                             measured.shapes.items()},
                                  "varying": sorted(measured.varying)})
    return measured


def _measure(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> Measured:
    if not _ALLOWED.get():
        return Measured(failure="models are not run here (the language server never runs one; "
                                "`edgeflow split` or `plan` does)")
    try:
        import onnxruntime as ort
    except ImportError:  # an optional dependency for analysis: without it, nothing measured
        return Measured(failure="onnxruntime is not installed")
    size = sum(int(np.prod(shape, dtype=np.float64)) * helper.tensor_dtype_to_np_dtype(
        v.type.tensor_type.elem_type).itemsize for v in model.graph.input
        if (shape := shapes.get(v.name)) is not None)
    if size > MAX_INPUT_BYTES:
        return Measured(failure=f"the bound inputs take {size / 2**20:,.0f} MiB, more than the "
                                f"{MAX_INPUT_BYTES // 2**20} MiB edgeflow makes up to run on")
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    g = exposed.graph
    outputs = {o.name for o in g.output}
    names = [o for n in g.node for o in n.output if o and o not in outputs]
    g.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    del g.value_info[:]  # declared shapes may be what is wrong
    initializers = {i.name for i in g.initializer}
    inputs = [v for v in g.input if v.name not in initializers]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4  # a failed run is reported, not logged
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(exposed.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        order = [o.name for o in session.get_outputs()]
        runs = []
        for run in range(RUNS):
            feeds = {v.name: _feed(v, tuple(shapes[v.name]), run) for v in inputs}
            runs.append(dict(zip(order, session.run(None, feeds), strict=True)))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own and C++ errors alike
        return Measured(failure=str(exc).splitlines()[0][:300])
    out = Measured()
    for name in order:
        if not all(isinstance(r[name], np.ndarray) for r in runs):
            continue  # a sequence or a map, not a tensor
        seen = {(r[name].dtype, r[name].shape) for r in runs}
        if len(seen) != 1:
            out.varying.add(name)
            continue
        dtype, shape = seen.pop()
        out.shapes[name] = (helper.np_dtype_to_tensor_dtype(dtype), tuple(int(d) for d in shape))
    return out
