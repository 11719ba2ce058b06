"""Measured per-node latency with onnxruntime's profiler, on the machine the command runs on.

Graph optimisations are disabled so every ONNX node is timed as itself (fused kernels would hide
nodes); unnamed nodes get the names `analysis.py` gives them (`OP_INDEX`), so a profile's keys
match the nodes the split and placement solvers see. Each node's figure is the median over the
measured runs, after warm-up runs.
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
from pathlib import Path

import numpy as np
import onnx

from edgeflow.models.signature import BoundInputs, inputs_text


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    named = onnx.ModelProto()
    named.CopyFrom(model)
    for index, node in enumerate(named.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"
    return named


def profile(model: onnx.ModelProto, inputs: BoundInputs,
            runs: int = 20, warmup: int = 3, seed: int = 0) -> dict[str, object]:
    import onnxruntime as ort  # optional dependency: `pip install 'edgeflow[runtime]'`

    rng = np.random.default_rng(seed)
    feeds = {name: (rng.random(shape) * 2 - 1).astype(dtype) if dtype.startswith("float")
             else rng.integers(0, 2, shape).astype(dtype) for name, (dtype, shape) in
             inputs.items()}
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "edgeflow")
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(name_nodes(model).SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        for _ in range(warmup + runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    times: dict[str, list[float]] = {}
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            times.setdefault(event["name"][: -len("_kernel_time")], []).append(event["dur"] / 1e6)
    node_seconds = {name: statistics.median(ts[-runs:]) for name, ts in sorted(times.items())}
    return {
        "inputs": inputs_text(inputs),
        "machine": platform.node(), "processor": platform.processor() or platform.machine(),
        "onnxruntime": ort.__version__, "threads": 1, "runs": runs, "warmup": warmup,
        "node_seconds": node_seconds, "total_seconds": sum(node_seconds.values()),
    }
