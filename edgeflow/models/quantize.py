"""Static int8 quantization of an ONNX model, and what it costs in fidelity (`edgeflow quantize`;
docs/split.md, "Quantized models").

The quantizer is onnxruntime's (`onnxruntime.quantization`): the model is first pre-processed
(shape inference and graph optimisation: batch normalisations folded into convolutions, so
fewer tensors need scales), then quantized statically in QDQ format — QuantizeLinear /
DequantizeLinear pairs around each quantized operator, weights int8 per output channel,
activations int8 with a scale per tensor from the MinMax of the calibration frames. The same
model and frames give the same bytes.

Frames are read from a folder: `*.npy` files (for a model with one input: that input) or `*.npz`
files (one array per input, by input name), in file-name order, each exactly the bound type.
`--synthetic N` calibrates on N frames drawn from a fixed seed instead (floats uniform in
[0, 1), integers in [0, 10)): the scales then fit no real data, so the model is only good for
measuring speed, and no fidelity is claimed for it unless validation frames are given.

Fidelity is measured against the base model on validation frames kept apart from the calibration
frames (`--validation DIR`; without it, every fifth calibration frame is held out when there are
at least five). Per output, over the frames:

- class scores (an output of one row of at least two scores, `[1, C]` or `[C]`): the share of
  frames whose top-1 class is the same — top-1 agreement;
- any other output: `max(0, 1 - ||q - f|| / ||f||)`, one minus the relative L2 error of the
  quantized output q against the float output f, averaged over the frames.

The model's fidelity is the lowest of its outputs'. Speed is measured on this machine with one
thread, the median of interleaved runs of both models on the first frame.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeflow import __version__
from edgeflow.models.signature import BoundInputs

Frame = dict[str, np.ndarray[Any, Any]]
HOLD_OUT_EVERY = 5     # without validation frames, every fifth calibration frame validates
SYNTHETIC_SEED = 0
VALIDATION_SEED = 1


class QuantizeError(Exception):
    """A user error with its diagnostic code; `file` is the file or folder at fault."""

    def __init__(self, code: str, message: str, file: str, help: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.file, self.help = code, message, file, help


def read_frames(folder: Path, inputs: BoundInputs, role: str) -> list[Frame]:
    """The frames in `folder` (`role`: calibration or validation), checked against `inputs`."""
    if not folder.is_dir():
        raise QuantizeError("E0610", f"{role} folder `{folder}` not found", str(folder),
                            "give a folder of .npy or .npz frames")
    files = sorted(p for p in folder.iterdir() if p.suffix in (".npy", ".npz") and p.is_file())
    if not files:
        raise QuantizeError("E0610", f"{role} folder `{folder}` holds no .npy or .npz frames",
                            str(folder), "save each frame with numpy.save (one input) or "
                                         "numpy.savez (an array per input name)")
    return [_frame(path, inputs) for path in files]


def _arrays(path: Path) -> dict[str, np.ndarray[Any, Any]]:
    """The arrays of a .npy (under "") or .npz file; never unpickles."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return {"": loaded}
        with loaded:
            return {k: loaded[k] for k in loaded.files}
    except (OSError, ValueError, EOFError):
        raise QuantizeError("E0611", f"`{path.name}` is not a numpy array file (.npy) or archive "
                            "(.npz) of plain arrays", str(path),
                            "pickled objects are never loaded: save plain arrays with "
                            "numpy.save or numpy.savez") from None


def _frame(path: Path, inputs: BoundInputs) -> Frame:
    arrays = _arrays(path)
    if "" in arrays:
        if len(inputs) != 1:
            raise QuantizeError("E0611", f"`{path.name}` holds one array, but the model has "
                                f"{len(inputs)} inputs", str(path),
                                "save an .npz with an array per input: numpy.savez(f, " +
                                ", ".join(f"{n}=..." for n in inputs) + ")")
        arrays = {next(iter(inputs)): arrays[""]}
    frame = {}
    for name, (dtype, shape) in inputs.items():
        if name not in arrays:
            raise QuantizeError("E0611", f"`{path.name}` has no array `{name}`", str(path),
                                f"it holds: {', '.join(sorted(arrays)) or 'nothing'}")
        array = arrays[name]
        if str(array.dtype) != dtype or tuple(array.shape) != tuple(shape):
            raise QuantizeError("E0611", f"`{path.name}`: `{name}` is {array.dtype}"
                                f"{list(array.shape)}, the model takes {dtype}{list(shape)}",
                                str(path))
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise QuantizeError("E0611", f"`{path.name}`: `{name}` holds NaN or infinite "
                                "values", str(path), "calibrate on frames of real, finite data")
        frame[name] = array
    return frame


def synthetic_frames(inputs: BoundInputs, n: int, seed: int = SYNTHETIC_SEED) -> list[Frame]:
    rng = np.random.default_rng(seed)
    return [{name: (rng.random(shape).astype(dtype) if np.dtype(dtype).kind == "f"
                    else rng.integers(0, 10, shape).astype(dtype))
             for name, (dtype, shape) in inputs.items()} for _ in range(n)]


def quantize(model: onnx.ModelProto, frames: list[Frame]) -> bytes:
    """The model quantized to int8 (QDQ, per-channel weights), calibrated on `frames`."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.frames = iter(frames)

        def get_next(self) -> Frame | None:
            return next(self.frames, None)

    quiet = logging.root.manager.disable
    logging.disable(logging.WARNING)  # the quantizer's advice goes to the root logger
    try:
        with tempfile.TemporaryDirectory(prefix="edgeflow-quantize-") as tmp:
            base, pre, out = (Path(tmp) / n for n in ("base.onnx", "pre.onnx", "int8.onnx"))
            base.write_bytes(model.SerializeToString(deterministic=True))
            quant_pre_process(str(base), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel(model), activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
            quantized = onnx.load(str(out))
    finally:
        logging.disable(quiet)
    quantized.producer_name, quantized.producer_version = "edgeflow", __version__
    del quantized.metadata_props[:]
    quantized.metadata_props.add(key="edgeflow.quantized_from", value=model.graph.name)
    data: bytes = quantized.SerializeToString(deterministic=True)
    return data


def per_channel(model: onnx.ModelProto) -> bool:
    """Whether weights get a scale per output channel: DequantizeLinear takes an `axis` from
    opset 13; an older model is quantized per tensor (coarser, but a model onnxruntime loads)."""
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return version >= 13


def is_class_scores(shape: tuple[int, ...]) -> bool:
    """One row of at least two scores: `[C]` or `[1, C]`."""
    return (len(shape) == 1 and shape[0] >= 2) or (len(shape) == 2 and shape[0] == 1
                                                   and shape[1] >= 2)


def output_fidelity(float_out: list[np.ndarray[Any, Any]],
                    quant_out: list[np.ndarray[Any, Any]]) -> tuple[str, float]:
    """(metric, value) of one output over the frames, as the module says."""
    if is_class_scores(tuple(float_out[0].shape)):
        same = [int(np.argmax(f) == np.argmax(q)) for f, q in zip(float_out, quant_out,
                                                                   strict=True)]
        return "top-1 agreement", sum(same) / len(same)
    errors = []
    for f, q in zip(float_out, quant_out, strict=True):
        f64, q64 = f.astype(np.float64), q.astype(np.float64)
        norm = float(np.linalg.norm(f64))
        diff = float(np.linalg.norm(q64 - f64))
        errors.append(max(0.0, 1.0 - diff / norm) if norm > 0 else float(diff == 0))
    return "1 - relative L2 error", sum(errors) / len(errors)


@dataclass
class Report:
    """What a quantization gives and costs."""

    base_bytes: int
    int8_bytes: int
    base_seconds: float
    int8_seconds: float
    calibration_frames: int
    validation_frames: int
    fidelity: float | None = None  # None: no validation frames, no claim
    outputs: dict[str, dict[str, object]] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return self.base_seconds / self.int8_seconds if self.int8_seconds > 0 else 0.0

    def to_json(self) -> dict[str, object]:
        return {"fidelity": self.fidelity, "outputs": self.outputs,
                "base_bytes": self.base_bytes, "int8_bytes": self.int8_bytes,
                "size_ratio": self.int8_bytes / self.base_bytes,
                "base_ms": self.base_seconds * 1e3, "int8_ms": self.int8_seconds * 1e3,
                "speedup": self.speedup, "calibration_frames": self.calibration_frames,
                "validation_frames": self.validation_frames}


def _session(data: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def measure(base: bytes, int8: bytes, validation: list[Frame], speed_frame: Frame,
            calibration_frames: int, runs: int = 20) -> Report:
    """Fidelity of `int8` against `base` on `validation` (none: no claim), sizes and speed."""
    a, b = _session(base), _session(int8)
    names = [o.name for o in a.get_outputs()]
    report = Report(len(base), len(int8), 0.0, 0.0, calibration_frames, len(validation))
    if validation:
        float_runs = [a.run(None, f) for f in validation]
        quant_runs = [b.run(None, f) for f in validation]
        for k, name in enumerate(names):
            metric, value = output_fidelity([r[k] for r in float_runs],
                                            [r[k] for r in quant_runs])
            report.outputs[name] = {"metric": metric, "fidelity": value}
        report.fidelity = min(float(o["fidelity"]) for o in report.outputs.values())  # type: ignore[arg-type]
    for session in (a, b):  # warm up
        session.run(None, speed_frame)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        for session, out in ((a, times[0]), (b, times[1])):
            start = time.perf_counter()
            session.run(None, speed_frame)
            out.append(time.perf_counter() - start)
    report.base_seconds, report.int8_seconds = (statistics.median(t) for t in times)
    return report


def split_frames(calibration: list[Frame], validation: list[Frame] | None
                 ) -> tuple[list[Frame], list[Frame]]:
    """(calibration, validation): the validation frames given, else every fifth calibration
    frame held out (with at least five), else none."""
    if validation is not None:
        return calibration, validation
    if len(calibration) < HOLD_OUT_EVERY:
        return calibration, []
    held = [f for k, f in enumerate(calibration) if k % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1]
    kept = [f for k, f in enumerate(calibration) if k % HOLD_OUT_EVERY != HOLD_OUT_EVERY - 1]
    return kept, held
