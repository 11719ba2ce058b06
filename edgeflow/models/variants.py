"""Making and measuring a program's model variants before placement (`plan`, `compile`; never
`check` or the language server, which do not run models).

- A `quantize(...)` variant is made from its model by `edgeflow.models.quantize` on its
  calibration frames (or synthetic ones), and kept in edgeflow's cache folder under the sha256 of
  what made it (the model file, the frames, the settings, onnxruntime's and edgeflow's versions);
  with the cache off it lives in a temporary folder for the process.
- Every variant's fidelity is measured against its model on validation frames: the variant's own
  (`quantize(validation = ...)`), else the model's (`validation = "DIR"`), else, for a variant
  calibrated on frames, every fifth of them held out. A variant with none stays unmeasured: it
  never meets a fidelity floor, and without a floor placement may still choose it.

The program comes back with each variant's `source` and `fidelity` filled in; placement reads
nothing else.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeflow import __version__, cache, ir
from edgeflow.diagnostics import Diagnostic
from edgeflow.models import quantize as q
from edgeflow.models.split import load_model
from edgeflow.span import Span

KIND = "variants"
_SCRATCH: list[Path] = []  # the process's folder for variants when the cache is off


def _scratch() -> Path:
    if not _SCRATCH:
        folder = Path(tempfile.mkdtemp(prefix="edgeflow-variants-"))
        atexit.register(shutil.rmtree, folder, True)
        _SCRATCH.append(folder)
    return _SCRATCH[0]


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _frames_digest(frames: list[q.Frame]) -> str:
    return _digest(*(f"{name}:{a.dtype}:{a.shape}".encode() + np.ascontiguousarray(a).tobytes()
                     for frame in frames for name, a in sorted(frame.items())))


def _bound(model: ir.Model) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {n: (t.dtype, t.shape) for n, t in model.inputs.items()}


def materialise(program: ir.Program) -> tuple[ir.Program, list[Diagnostic]]:
    """The program with every variant made and measured, and the diagnostics (E0611: frames
    that do not match the model, located on the variant or the model)."""
    if not any(m.variants for m in program.models.values()):
        return program, []
    models = dict(program.models)
    problems: list[Diagnostic] = []
    for name, model in program.models.items():
        if not model.variants:
            continue
        try:
            models[name] = _made(model)
        except _Failed as failed:  # located on the variant whose frames these are
            exc = failed.error
            problems.append(Diagnostic(exc.code, exc.message, failed.span or model.span,
                                       "these frames", help=exc.help))
    if problems:
        return program, problems
    return program.model_copy(update={"models": models}), []


class _Failed(Exception):
    def __init__(self, error: q.QuantizeError, span: Span | None) -> None:
        super().__init__(error.message)
        self.error, self.span = error, span


def _made(model: ir.Model) -> ir.Model:
    inputs = _bound(model)
    base = load_model(Path(model.source))
    base_bytes = base.SerializeToString(deterministic=True)
    try:
        shared = q.read_frames(Path(model.validation), inputs, "validation") \
            if model.validation else None
    except q.QuantizeError as exc:
        raise _Failed(exc, model.span) from None
    variants = []
    for v in model.variants:
        try:
            variants.append(_made_variant(model, v, base, base_bytes, inputs, shared))
        except q.QuantizeError as exc:
            raise _Failed(exc, v.span) from None
    return model.model_copy(update={"variants": tuple(variants)})


def _made_variant(model: ir.Model, v: ir.ModelVariant, base: Any, base_bytes: bytes,
                  inputs: dict[str, tuple[str, tuple[int, ...]]],
                  shared: list[q.Frame] | None) -> ir.ModelVariant:
    """Variant `v` made (a `quantize(...)` one) and measured."""
    import onnxruntime  # the variants are made and run with it

    if v.quantize is None:  # a file: measured on the model's validation frames, if any
        if shared:
            return v.model_copy(update={"fidelity": _fidelity(
                base_bytes, Path(v.source).read_bytes(), shared)})
        return v
    if v.source:  # made already (a program materialised before)
        return v
    spec = v.quantize
    frames = q.read_frames(Path(spec.calibration), inputs, "calibration") \
        if spec.calibration else q.synthetic_frames(inputs, spec.synthetic or 0)
    own = q.read_frames(Path(spec.validation), inputs, "validation") \
        if spec.validation else None
    given = own if own is not None else shared
    calibrate, check = (frames, given or []) if spec.calibration is None else \
        q.split_frames(frames, given)
    key = _digest("quantize", base_bytes, _frames_digest(calibrate), _frames_digest(check),
                  __version__, onnxruntime.__version__)
    path, fidelity = _cached(key)
    if path is None:
        data = q.quantize(base, calibrate)
        fidelity = _fidelity(base_bytes, data, check or None)
        path = _keep(key, data, fidelity)
    return v.model_copy(update={"source": str(path), "fidelity": fidelity})


def _fidelity(base: bytes, variant: bytes, frames: list[q.Frame] | None) -> float | None:
    """The variant's fidelity on `frames` (quantize.py's metric), None without frames."""
    if not frames:
        return None
    report = q.measure(base, variant, frames, frames[0], 0, runs=1)
    return report.fidelity


def _cached(key: str) -> tuple[Path | None, float | None]:
    entry: Any = cache.get(KIND, key)
    if isinstance(entry, dict):
        path = cache.folder() / KIND / f"{key}.onnx"
        if path.is_file() and _digest(path.read_bytes()) == entry.get("sha256"):
            fidelity = entry.get("fidelity")
            return path, None if fidelity is None else float(fidelity)
    scratch = _scratch() / f"{key}.onnx"
    meta = _scratch() / f"{key}.json"
    if scratch.is_file() and meta.is_file():
        return scratch, json.loads(meta.read_text())["fidelity"]
    return None, None


def _keep(key: str, data: bytes, fidelity: float | None) -> Path:
    """Write the variant where it is kept: the cache folder, else the process's scratch."""
    if cache.enabled():
        path = cache.folder() / KIND / f"{key}.onnx"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, delete=False,
                                             suffix=".tmp") as tmp:
                tmp.write(data)
            Path(tmp.name).replace(path)
            cache.put(KIND, key, {"sha256": _digest(data), "fidelity": fidelity})
            return path
        except OSError:
            pass  # the cache never fails a command: fall back to the scratch folder
    path = _scratch() / f"{key}.onnx"
    path.write_bytes(data)
    (_scratch() / f"{key}.json").write_text(json.dumps({"fidelity": fidelity}))
    return path

