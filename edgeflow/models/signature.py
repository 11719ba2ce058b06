"""An ONNX model's signature as the checker needs it: its graph inputs (initializers excluded) with
element types and dimensions, and its output types once the inputs are bound to concrete shapes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from math import prod
from pathlib import Path, PurePosixPath

import onnx
from onnx import TensorProto, helper, shape_inference

ONNX_DTYPES: dict[int, str] = {
    TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.INT8: "int8",
    TensorProto.UINT8: "uint8", TensorProto.INT32: "int32", TensorProto.INT64: "int64",
    TensorProto.BOOL: "bool", TensorProto.DOUBLE: "float64", TensorProto.INT16: "int16",
    TensorProto.UINT16: "uint16", TensorProto.UINT32: "uint32", TensorProto.UINT64: "uint64",
    TensorProto.BFLOAT16: "bfloat16", TensorProto.STRING: "string",
}

Dim = int | str | None  # a fixed size, a named dynamic dimension, or an anonymous one

BoundInputs = Mapping[str, tuple[str, tuple[int, ...]]]  # input name -> (dtype, concrete shape)


@dataclass(frozen=True)
class TensorSig:
    name: str
    dtype: str
    dims: tuple[Dim, ...] | None  # None: rank unknown


class ModelLoadError(Exception):
    """The file is not a loadable, valid ONNX model; the message says why (and `help` how to
    fix it, where one can)."""

    def __init__(self, message: str, help: str | None = None) -> None:
        super().__init__(message)
        self.help = help


MAX_MODEL_BYTES = 2**31  # protobuf's limit: larger weights live in external data files


def _tensor_sig(value: onnx.ValueInfoProto) -> TensorSig:
    ttype = value.type.tensor_type
    dtype = ONNX_DTYPES.get(ttype.elem_type, f"onnx type {ttype.elem_type}")
    if not ttype.HasField("shape"):
        return TensorSig(value.name, dtype, None)
    dims: list[Dim] = []
    for d in ttype.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return TensorSig(value.name, dtype, tuple(dims))


def _opsets(model: onnx.ModelProto) -> None:
    """Refuse operator sets newer than the installed onnx knows (onnxruntime of the same era
    runs them; it offers no way to ask)."""
    top = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > top:
            raise ModelLoadError(f"uses opset {opset.version} of `ai.onnx`, newer than the "
                                 f"supported 1 to {top}",
                                 help="export the model with an older opset, or upgrade onnx")


@lru_cache(maxsize=64)
def _load_cached(path: str, mtime_ns: int, size: int) -> onnx.ModelProto:
    if size > MAX_MODEL_BYTES:  # refused before it is read
        raise ModelLoadError(f"is {size / 2**30:.1f} GiB; an ONNX file holds at most 2 GiB",
                             help="save weights beyond that as external data "
                                  "(onnx.save_model(..., save_as_external_data=True))")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises unrelated types on garbage
        raise ModelLoadError(f"cannot be read as ONNX: {type(exc).__name__}") from None
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError("holds no graph")
    _opsets(model)
    try:
        # by path, so external data files are looked for beside the model, not in the cwd
        onnx.checker.check_model(path)
    except (onnx.checker.ValidationError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid model"
        raise ModelLoadError(f"fails the ONNX checker: {first}") from None
    return model


def load(path: str) -> onnx.ModelProto:
    """Load and check a model, cached by path, modification time and size; its external data
    files (beside it) are looked for on every call, since they may change on their own."""
    st = os.stat(path)
    model = _load_cached(path, st.st_mtime_ns, st.st_size)
    _check_external(model, Path(path).parent)
    return model


RESERVED = ("model.onnx", "cut-")  # names a bundle's model folder uses itself


def _check_external(model: onnx.ModelProto, folder: Path) -> None:
    """Every external tensor's data lies in a regular file inside the model's folder (no link,
    no `..`), at an offset and length that fit the file and the tensor."""
    for tensor in _tensors(model.graph):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        rel = PurePosixPath(os.path.normpath(location)) if location else PurePosixPath()
        where = f"the external data `{location}` of tensor `{tensor.name}`"
        if not location or rel.is_absolute() or ".." in rel.parts:
            raise ModelLoadError(f"{where} is not a file beside the model")
        if str(rel) == RESERVED[0] or rel.parts[0].startswith(RESERVED[1]):
            raise ModelLoadError(f"{where} has a name bundles use for their own files",
                                 help="save the weights under another name, e.g. weights.bin")
        step = folder
        for part in rel.parts:
            step = step / part
            if step.is_symlink():
                raise ModelLoadError(f"{where} is reached through a symbolic link")
        if not step.is_file():
            raise ModelLoadError(f"{where} is missing",
                                 help="keep the data files beside the model, as it was saved")
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else None
            need = prod(tensor.dims) * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        except (ValueError, TypeError, KeyError):
            raise ModelLoadError(f"{where} has an unreadable offset, length or type") from None
        if offset < 0 or (length is not None and length != need):
            raise ModelLoadError(f"{where} gives offset {offset} and length {length}; the tensor "
                                 f"holds {need} bytes")
        if offset + need > step.stat().st_size:
            raise ModelLoadError(f"{where} is {step.stat().st_size} bytes, too short for the "
                                 f"tensor's {need} bytes at offset {offset}")


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def external_data(model: onnx.ModelProto) -> list[str]:
    """The files (relative to the model's folder, sorted) that hold its external tensors."""
    return sorted({entry.value for t in _tensors(model.graph)
                   if t.data_location == TensorProto.EXTERNAL
                   for entry in t.external_data if entry.key == "location"})


def graph_inputs(model: onnx.ModelProto) -> list[TensorSig]:
    initializers = {init.name for init in model.graph.initializer}
    return [_tensor_sig(v) for v in model.graph.input if v.name not in initializers]


def graph_outputs(model: onnx.ModelProto) -> list[TensorSig]:
    """The outputs as the model declares them (no inference)."""
    return [_tensor_sig(v) for v in model.graph.output]


def bind_inputs(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Set the graph inputs named in `shapes` to those concrete shapes, in place."""
    for value in model.graph.input:
        if value.name in shapes:
            shape = value.type.tensor_type.shape
            shape.ClearField("dim")
            for size in shapes[value.name]:
                shape.dim.add().dim_value = size


def output_types(model: onnx.ModelProto, bound: dict[str, tuple[int, ...]]) -> list[TensorSig]:
    """The model's outputs with shapes inferred from `bound` input shapes; a dimension that
    inference cannot fix stays None or symbolic."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    bind_inputs(fixed, bound)
    del fixed.graph.value_info[:]
    try:
        inferred = shape_inference.infer_shapes(fixed, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference gives up on some graphs; keep declared outputs
        inferred = fixed
    return [_tensor_sig(v) for v in inferred.graph.output]


def inputs_text(inputs: BoundInputs) -> dict[str, str]:
    """Bound inputs as the text of their types, e.g. {"images": "float32[1,3,320,320]"}."""
    return {name: f"{dtype}[{','.join(map(str, shape))}]" for name, (dtype, shape) in
            inputs.items()}
