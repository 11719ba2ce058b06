"""Checks a `model` declaration against its ONNX file: the file exists and is a valid model, the
declared `inputs` bind exactly the graph's inputs with compatible types, and the outputs' types can
be inferred from them; and each file variant against the model (`check_variant`).
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from edgeflow import ir
from edgeflow.diagnostics import DiagnosticSink
from edgeflow.models import signature
from edgeflow.semantics.values import did_you_mean
from edgeflow.span import Span
from edgeflow.syntax import ast

MODEL_ROOTS_ENV = "EDGEFLOW_MODEL_ROOTS"


def model_roots() -> tuple[Path, ...]:
    """Folders besides the app's own that model files may come from: `EDGEFLOW_MODEL_ROOTS`,
    separated like PATH."""
    return tuple(Path(p).resolve() for p in os.environ.get(MODEL_ROOTS_ENV, "").split(os.pathsep)
                 if p)


def locate(source: str, base_dir: Path, span: Span, sink: DiagnosticSink) -> Path | None:
    """The model file `source` names, relative to the app's folder `base_dir`; None (with an
    error) when it is empty, missing, not a file, or outside the app's folder and every folder
    in `EDGEFLOW_MODEL_ROOTS` (symbolic links resolved)."""
    if not source.strip():
        sink.error("E0601", "`source` is empty", span, "no file named",
                   help='name the ONNX file, e.g. `source = "models/detector.onnx"`')
        return None
    path = base_dir / source
    try:
        return _located(source, path, base_dir, span, sink)
    except OSError as exc:  # unreadable folder, name too long, ...
        sink.error("E0601", f"cannot read model file `{source}`: {exc.strerror or exc}", span,
                   "cannot be read")
        return None


def _located(source: str, path: Path, base_dir: Path, span: Span,
             sink: DiagnosticSink) -> Path | None:
    if path.is_dir():
        sink.error("E0601", f"`{source}` is a folder, not a model file", span, "a folder",
                   help='name the ONNX file, e.g. `source = "models/detector.onnx"`')
        return None
    if not path.is_file():
        sink.error("E0601", f"model file `{source}` not found", span, "no such file",
                   help="`source` is relative to the folder of the .ef file")
        return None
    real = path.resolve()
    roots = (base_dir.resolve(), *model_roots())
    if not any(real.is_relative_to(root) for root in roots):
        sink.error("E0607", f"model file `{source}` is outside the app's folder", span,
                   "outside the folder of the .ef file",
                   help=f"move the model into the app's folder, or allow the folder it is in "
                        f"with the environment variable {MODEL_ROOTS_ENV}")
        return None
    return real


def check_model(decl: ast.Decl, path: Path, inputs: dict[str, ir.TensorType],
                input_entries: dict[str, ast.Entry], source_span: Span,
                sink: DiagnosticSink) -> dict[str, ir.TensorType] | None:
    """Report every mismatch of the model file `path` (located by `locate`); return the output
    types when the model is usable, else None."""
    name = decl.name.value
    model = _load(path, source_span, sink)
    if model is None:
        return None
    actual = {sig.name: sig for sig in signature.graph_inputs(model)}
    inputs_span = next(e.value.span for e in decl.entries if e.key.value == "inputs")
    ok = True
    for input_name, entry in input_entries.items():
        if input_name not in actual:
            sink.error("E0603", f"model `{name}` has no input `{input_name}`", entry.key.span,
                       "not an input of the ONNX graph",
                       help=did_you_mean(input_name, list(actual))
                       or "its inputs are: " + ", ".join(f"`{n}`" for n in actual))
            ok = False
    for input_name, sig in actual.items():
        if input_name not in inputs:
            sink.error("E0603", f"input `{input_name}` of model `{name}` is not bound", inputs_span,
                       f"`{input_name}` missing",
                       help=f"add `{input_name} = {_example(sig)}` to `inputs`"
                            f"{_binding_help(sig)}")
            ok = False
            continue
        declared, entry = inputs[input_name], input_entries[input_name]
        ok &= _compatible(name, sig, declared, entry, sink)
    if not ok:
        return None
    bound = {n: t.shape for n, t in inputs.items()}
    outputs: dict[str, ir.TensorType] = {}
    for out in signature.output_types(model, bound):
        dims = out.dims or ()
        if out.dims is None or not all(isinstance(d, int) for d in dims) or out.dtype not in \
                ir.DTYPE_BYTES:
            sink.error("E0604", f"the shape of output `{out.name}` of model `{name}` cannot be "
                       "inferred from the bound inputs", source_span, "output shape unknown",
                       notes=(f"inferred: {out.dtype}{list(dims) if out.dims else '[?]'}",),
                       help="export the model with static output shapes or shape-inferable ops")
            return None
        outputs[out.name] = ir.TensorType(dtype=out.dtype, shape=tuple(dims))  # type: ignore
    return outputs


def _example(sig: signature.TensorSig) -> str:
    dims = ", ".join(str(d) if d is not None else "?" for d in sig.dims or ("...",))
    return f"{sig.dtype}[{dims}]"


def _binding_help(sig: signature.TensorSig) -> str:
    dynamic = [f"`{d}`" if d is not None else "`?`" for d in sig.dims or () if not
               isinstance(d, int)]
    return " with " + ", ".join(dynamic) + " bound to numbers" if dynamic else ""


def _compatible(model: str, sig: signature.TensorSig, declared: ir.TensorType, entry: ast.Entry,
                sink: DiagnosticSink) -> bool:
    def fail(message: str, label: str, note: str) -> bool:
        sink.error("E0605", message, entry.value.span, label,
                   notes=(f"the ONNX file declares `{sig.name}` as {note}",),
                   help=f"declare `{sig.name} = {_example(sig)}`{_binding_help(sig)}")
        return False

    onnx_type = _example(sig)
    if sig.dtype != declared.dtype:
        return fail(f"input `{sig.name}` of model `{model}` is {sig.dtype}, not {declared.dtype}",
                    "wrong element type", onnx_type)
    if sig.dims is None:
        return True
    if len(sig.dims) != len(declared.shape):
        return fail(f"input `{sig.name}` of model `{model}` has rank {len(sig.dims)}, not "
                    f"{len(declared.shape)}", "wrong rank", onnx_type)
    for i, (want, got) in enumerate(zip(sig.dims, declared.shape)):
        if isinstance(want, int) and want != got:
            return fail(f"dimension {i} of input `{sig.name}` of model `{model}` is {want}, not "
                        f"{got}", "wrong size", onnx_type)
    return True


def _load(path: Path, span: Span, sink: DiagnosticSink) -> onnx.ModelProto | None:
    """The ONNX model at `path`, or None with E0602 (at `span`) when it is not one."""
    try:
        return signature.load(str(path))
    except signature.ModelLoadError as exc:
        sink.error("E0602", f"`{path.name}` is not a valid ONNX model", span, str(exc),
                   help=exc.help)
        return None


QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                           "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"})


def check_variant(model: str, variant: str, path: Path, inputs: dict[str, ir.TensorType],
                    outputs: dict[str, ir.TensorType], span: Span,
                    sink: DiagnosticSink) -> bool | None:
    """Whether the variant file is quantized (its work then runs at a device's int8 rate), if
    it takes the model's inputs and gives its outputs (names, element types, shapes under the
    model's bound inputs); None, with E0613 saying how it differs, otherwise."""
    def differ(why: str) -> bool | None:
        sink.error("E0613", f"variant `{variant}` of model `{model}` {why}", span,
                   "not interchangeable with the model",
                   help="a variant must take the model's inputs and give its outputs, with the "
                        "same names, element types and shapes")
        return None

    onnx_model = _load(path, span, sink)
    if onnx_model is None:
        return None
    actual = {sig.name: sig for sig in signature.graph_inputs(onnx_model)}
    def names(found: set[str]) -> str:
        return ", ".join(f"`{n}`" for n in sorted(found)) or "none"

    if set(actual) != set(inputs):
        return differ(f"takes input {names(set(actual))}, the model {names(set(inputs))}")
    for name, sig in actual.items():
        if sig.dtype != inputs[name].dtype:
            return differ(f"takes `{name}` as {sig.dtype}, the model as {inputs[name].dtype}")
        bound = inputs[name].shape
        if sig.dims is not None and (len(sig.dims) != len(bound) or any(
                isinstance(d, int) and d != b for d, b in zip(sig.dims, bound, strict=False))):
            return differ(f"takes `{name}` as {sig.dtype}{list(sig.dims)}, which "
                          f"{inputs[name]} does not fit")
    got = {o.name: o for o in signature.output_types(onnx_model, {n: t.shape for n, t
                                                                  in inputs.items()})}
    if set(got) != set(outputs):
        return differ(f"gives output {names(set(got))}, the model {names(set(outputs))}")
    for name, o in got.items():
        want = outputs[name]
        if o.dtype != want.dtype or tuple(o.dims or ()) != want.shape:
            return differ(f"gives `{name}` as {o.dtype}{list(o.dims or ())}, the model as "
                          f"{want}")
    return any(n.op_type in QUANTIZED_OPS for n in onnx_model.graph.node)
