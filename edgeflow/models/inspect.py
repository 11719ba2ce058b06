"""`edgeflow models inspect`: an ONNX model's signature (inputs with their dynamic dimensions
named, outputs, operator sets, node count) and, once every input is bound, its work, weights and
output types from the analysis of docs/split.md.
"""

from __future__ import annotations

from typing import Any

import onnx

from edgeflow.models.analysis import weight_bytes_of
from edgeflow.models.signature import BoundInputs, Dim, TensorSig, graph_inputs, graph_outputs
from edgeflow.models.split import SplitError, analyse_model


def _dims_text(dims: tuple[Dim, ...] | None) -> str:
    return "[...]" if dims is None else f"[{','.join('?' if d is None else str(d) for d in dims)}]"


def _tensor(sig: TensorSig) -> dict[str, object]:
    return {"name": sig.name, "dtype": sig.dtype,
            "dims": None if sig.dims is None else list(sig.dims)}


def _static(sig: TensorSig) -> tuple[int, ...] | None:
    if sig.dims is None or not all(isinstance(d, int) for d in sig.dims):
        return None
    return tuple(int(d) for d in sig.dims if d is not None)


def _hint(sig: TensorSig) -> str:
    """The `--input` to give for an input with dynamic dimensions, each named (anonymous ones
    by their position)."""
    dims = None if sig.dims is None else tuple(f"d{i}" if d is None else d
                                               for i, d in enumerate(sig.dims))
    return f"--input {sig.name}={sig.dtype}{_dims_text(dims)}"


def report(model: onnx.ModelProto, name: str, given: BoundInputs,
           ) -> tuple[dict[str, object], SplitError | None]:
    """The inspection (the `result` of docs/cli.md) and the problem with the bound inputs, if
    any. The model is analysed when every input is static or `given` binds some."""
    bound = dict(given)
    inputs: list[dict[str, object]] = []
    for sig in graph_inputs(model):
        static = _static(sig)
        if sig.name not in bound and static is not None:
            bound[sig.name] = (sig.dtype, static)
        binding = bound.get(sig.name)
        inputs.append({**_tensor(sig),
                       "bound": None if binding is None else
                       f"{binding[0]}{_dims_text(binding[1])}",
                       "hint": None if binding is not None else _hint(sig)})
    data: dict[str, object] = {
        "model": name,
        "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "nodes": len(model.graph.node),
        "inputs": inputs,
        "outputs": [_tensor(sig) for sig in graph_outputs(model)],
        "analysis": None}
    if not given and any(i["bound"] is None for i in inputs):
        return data, None
    try:
        analysis = analyse_model(model, bound)
    except SplitError as exc:
        return data, exc
    data["analysis"] = {
        "work_flop": analysis.total_work,
        "weight_bytes": weight_bytes_of(analysis, analysis.dynamic_nodes()),
        "outputs": [{"name": o, "dtype": analysis.tensors[o].dtype,
                     "dims": list(analysis.tensors[o].shape)} for o in analysis.outputs]}
    return data, None


def _type(entry: dict[str, Any]) -> str:
    dims = entry["dims"]
    return f"{entry['dtype']}{_dims_text(None if dims is None else tuple(dims))}"


def render_text(data: dict[str, Any]) -> str:
    """The inspection as `edgeflow models inspect` prints it without `--format json`."""
    opsets = ", ".join(f"{domain} {version}" for domain, version in data["opset"].items())
    lines = [f"model {data['model']}: {data['nodes']} nodes, opset {opsets}", "inputs:"]
    for entry in data["inputs"]:
        state = f"bound to {entry['bound']}" if entry["bound"] else \
            f"dynamic: bind it with {entry['hint']}"
        lines.append(f"  {entry['name']}: {_type(entry)}  ({state})")
    lines.append("outputs:")
    lines += [f"  {entry['name']}: {_type(entry)}" for entry in data["outputs"]]
    analysis = data["analysis"]
    if any(entry["bound"] is None for entry in data["inputs"]):
        lines.append("not analysed: give every dynamic input with --input, each named "
                     "dimension replaced by its size")
    if analysis is not None:
        lines.append(f"work {analysis['work_flop'] / 1e9:.3f} GFLOP per run, weights "
                     f"{analysis['weight_bytes'] / 2**20:.2f} MiB "
                     f"({analysis['weight_bytes']} bytes); outputs with the inputs bound:")
        lines += [f"  {entry['name']}: {_type(entry)}" for entry in analysis["outputs"]]
    return "\n".join(lines) + "\n"
