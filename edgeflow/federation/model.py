"""The model side of a federation: the ONNX file's initializers, a copy with trained weights put
in (bytes deterministic for equal weights), its held-out evaluation with onnxruntime, and the
versions folder with its manifest."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def load(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as e:  # noqa: BLE001  (protobuf and file errors alike)
        raise ValueError(f"cannot read the model {path}: {e}") from None


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every initializer of the model's graph by name, read-only."""
    out: dict[str, np.ndarray] = {}
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        array.flags.writeable = False
        out[init.name] = array
    return out


def check_trainable(model: onnx.ModelProto, trainable: tuple[str, ...]) -> None:
    """Every trainable name is a floating-point initializer of the model (ValueError)."""
    found = {i.name: i for i in model.graph.initializer}
    if not trainable:
        raise ValueError("no trainable initializer named")
    for name in trainable:
        if name not in found:
            raise ValueError(f"the model has no initializer `{name}`")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(found[name].data_type)
        if np.dtype(dtype) not in _FLOATS:
            raise ValueError(f"initializer `{name}` is {np.dtype(dtype)}, not floating point")


def with_weights(model: onnx.ModelProto, arrays: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` whose initializers named in `arrays` hold those values (in the
    initializer's own dtype)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.name in arrays:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
            new = numpy_helper.from_array(np.ascontiguousarray(arrays[init.name], dtype=dtype),
                                          init.name)
            init.CopyFrom(new)
    return out


def serialize(model: onnx.ModelProto) -> bytes:
    return bytes(model.SerializeToString(deterministic=True))


@dataclass(frozen=True)
class Evaluation:
    loss_sum: float  # cross-entropy summed over the examples
    correct: int
    count: int


class Evaluator:
    """The held-out evaluation of a model with given weights: onnxruntime on the model as it
    will be deployed; accuracy is the argmax of the first output against `y`, loss the
    cross-entropy of that output (as probabilities, else of its softmax)."""

    def __init__(self, model: onnx.ModelProto, output_is_probabilities: bool) -> None:
        self.model = model
        self.probabilities = output_is_probabilities

    def __call__(self, arrays: Mapping[str, np.ndarray], x: np.ndarray,
                 y: np.ndarray) -> Evaluation:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(serialize(with_weights(self.model, arrays)), options,
                                       providers=["CPUExecutionProvider"])
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"the model has {len(inputs)} graph inputs; evaluation needs one")
        name, shape = inputs[0].name, inputs[0].shape
        dtype = _ORT_TYPES.get(inputs[0].type, np.float32)
        one_at_a_time = bool(shape) and shape[0] == 1
        step = 1 if one_at_a_time else 256
        outputs = []
        for start in range(0, len(x), step):
            batch = np.ascontiguousarray(x[start:start + step], dtype=dtype)
            first = session.run([session.get_outputs()[0].name], {name: batch})[0]
            outputs.append(np.asarray(first, dtype=np.float64).reshape(len(batch), -1))
        if not outputs:
            return Evaluation(0.0, 0, 0)
        scores = np.concatenate(outputs)
        if self.probabilities:
            p = scores
        else:
            shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
            p = shifted / shifted.sum(axis=1, keepdims=True)
        labels = np.asarray(y, dtype=np.int64).reshape(-1)
        if labels.min(initial=0) < 0 or labels.max(initial=0) >= p.shape[1]:
            raise ValueError(f"a class id in y_test is outside the model's {p.shape[1]} "
                             "outputs")
        picked = np.clip(p[np.arange(len(labels)), labels], 1e-12, 1.0)
        return Evaluation(float(-np.log(picked).sum()),
                          int((scores.argmax(axis=1) == labels).sum()), len(labels))


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
              "tensor(float16)": np.float16}


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class Version:
    version: str
    sha256: str
    file: Path


def write_version(versions: Path, stem: str, model: onnx.ModelProto,
                  arrays: Mapping[str, np.ndarray], *, round: int, test_loss: float,
                  test_accuracy: float, epsilon: float | None) -> Version:
    """`versions`/STEM-VERSION.onnx (the model with `arrays` put in) and its entry appended to
    `versions`/manifest.json, both atomically."""
    versions.mkdir(parents=True, exist_ok=True)
    data = serialize(with_weights(model, arrays))
    sha = hashlib.sha256(data).hexdigest()
    path = versions / f"{stem}-{sha[:12]}.onnx"
    if not (path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha):
        _atomic_write(path, data)
    manifest = versions / "manifest.json"
    entries: list[Any] = []
    if manifest.is_file():
        try:
            loaded = json.loads(manifest.read_text())
            entries = loaded if isinstance(loaded, list) else []
        except ValueError:
            entries = []
    entry: dict[str, Any] = {"model": stem, "version": sha[:12], "sha256": sha,
                             "file": path.name, "round": round, "test_accuracy": test_accuracy,
                             "test_loss": test_loss, "epsilon": epsilon}
    if epsilon is not None and not math.isfinite(epsilon):
        entry["epsilon"] = None
        entry["epsilon_note"] = "the privacy accountant could not bound epsilon"
    entries.append(entry)
    _atomic_write(manifest, (json.dumps(entries, indent=2) + "\n").encode())
    return Version(sha[:12], sha, path)


def rounds_before(versions: Path, stem: str, start: Path) -> int:
    """How many rounds made `start`: its position among `stem`'s entries in `versions`'s
    manifest (the rounds of every run that led to it), 0 for a file that is no version there."""
    try:
        if start.resolve().parent != versions.resolve():
            return 0
        entries = json.loads((versions / "manifest.json").read_text())
    except (OSError, ValueError):
        return 0
    mine = [e for e in entries if isinstance(e, dict) and e.get("model") == stem] \
        if isinstance(entries, list) else []
    found = [k for k, e in enumerate(mine) if e.get("file") == start.name]
    return found[-1] + 1 if found else 0
