"""`edgeflow quantize`: onnxruntime's static int8 quantization (QDQ, per-channel), with the
fidelity, size and speed it gives. The int8 model runs, its fidelity is what an independent
computation of the documented metric gives, the same input gives the same bytes, the split
analysis counts int8 tensors as one byte an element, and the halves of every Pareto cut of a
quantized model equal its whole."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from edgeflow import api
from edgeflow.files import written_by_edgeflow
from edgeflow.models import quantize as q
from edgeflow.models.split import Setting, analyse_model, load_model
from tests.conftest import FIXTURES, ROOT, assert_golden
from tests.test_cli import run

MODELS = ROOT / "examples" / "models"
VITALS_MODEL = MODELS / "vitals.onnx"
GOLDEN = FIXTURES / "quantize"
# every example model, bound as the examples bind them (smaller where the model allows)
EXAMPLES = {"detector": {"images": ("float32", (1, 3, 64, 64))},
            "pose": {"frame": ("float32", (1, 3, 192, 192))},
            "vitals": {"window": ("float32", (1, 6, 250))},
            "lidar_encoder": {"points": ("float32", (1, 16384, 4))}}


def frames(folder: Path, inputs: dict[str, tuple[str, tuple[int, ...]]], n: int,
           seed: int) -> Path:
    """`n` frames in `folder`, .npy for one input and .npz for several."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(n):
        arrays = {name: rng.random(shape).astype(dtype) for name, (dtype, shape)
                  in inputs.items()}
        if len(arrays) == 1:
            np.save(folder / f"frame{k:03d}.npy", next(iter(arrays.values())))
        else:
            np.savez(folder / f"frame{k:03d}.npz", **arrays)  # type: ignore[arg-type]
    return folder


def session(path: Path | bytes) -> Any:
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path),
                                providers=["CPUExecutionProvider"])


def run_halves(model: Path, inputs: dict[str, tuple[str, tuple[int, ...]]], setting: Setting,
               cut: list[str], folder: Path, x: dict[str, Any]) -> list[Any]:
    """The outputs of the model's halves at `cut` (emitted into `folder`), head then tail."""
    assert api.split(model, inputs, setting, cut=cut, emit=folder).ok
    head, tail = session(folder / "head.onnx"), session(folder / "tail.onnx")
    sent = dict(zip([o.name for o in head.get_outputs()], head.run(None, x)))
    return list(tail.run(None, {i.name: sent.get(i.name, x.get(i.name))
                                for i in tail.get_inputs()}))


def classifier(path: Path) -> Path:
    """A small image classifier: conv, relu, global pool, a linear layer to 10 scores."""
    rng = np.random.default_rng(7)
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 3, 3, 3],
                           rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32).ravel())
    fc = helper.make_tensor("fc", TensorProto.FLOAT, [8, 10],
                            rng.normal(0, 1, (8, 10)).astype(np.float32).ravel())
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["scores"])]
    graph = helper.make_graph(nodes, "classifier",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT,
                                                             [1, 10])], initializer=[w, fc])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_each_example_model_quantizes_runs_and_reports_its_fidelity(name: str,
                                                                   tmp_path: Path) -> None:
    inputs = EXAMPLES[name]
    cal = frames(tmp_path / "cal", inputs, 6, seed=1)
    val = frames(tmp_path / "val", inputs, 4, seed=2)
    out = tmp_path / "int8.onnx"
    result = api.quantize(MODELS / f"{name}.onnx", inputs, out, cal, validation=val, runs=3)
    assert result.ok and result.diagnostics == [], result.diagnostics
    report = result.report
    assert report is not None and report.fidelity is not None
    assert report.calibration_frames == 6 and report.validation_frames == 4
    assert written_by_edgeflow(out)
    assert report.int8_bytes == out.stat().st_size < report.base_bytes
    quantized = onnx.load(str(out))
    onnx.checker.check_model(quantized)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in quantized.graph.node}
    # the fidelity is the documented metric, recomputed here from both models' outputs
    base, int8 = session(MODELS / f"{name}.onnx"), session(out)
    feeds = [dict(zip(inputs, [np.load(p)])) for p in sorted(val.glob("*.npy"))]
    for k, output in enumerate(o.name for o in base.get_outputs()):
        f = [base.run(None, x)[k].astype(np.float64) for x in feeds]
        g = [int8.run(None, x)[k].astype(np.float64) for x in feeds]
        if f[0].size >= 2 and f[0].shape in ((f[0].size,), (1, f[0].size)):
            expected = np.mean([np.argmax(a) == np.argmax(b) for a, b in zip(f, g)])
        else:
            expected = np.mean([max(0.0, 1 - np.linalg.norm(b - a) / np.linalg.norm(a))
                                for a, b in zip(f, g)])
        assert report.outputs[output]["fidelity"] == pytest.approx(expected, abs=1e-9)
    assert 0.5 < report.fidelity <= 1.0


def test_the_same_input_gives_a_byte_identical_model(tmp_path: Path) -> None:
    inputs = EXAMPLES["detector"]
    cal = frames(tmp_path / "cal", inputs, 5, seed=3)
    model = load_model(MODELS / "detector.onnx")
    calibration = q.read_frames(cal, inputs, "calibration")
    assert q.quantize(model, calibration) == q.quantize(model, calibration)
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    for out in (a, b):
        assert api.quantize(MODELS / "detector.onnx", inputs, out, cal, runs=1).ok
    assert a.read_bytes() == b.read_bytes()


def test_int8_tensors_cross_as_one_byte_and_every_cut_splits_exactly(tmp_path: Path) -> None:
    inputs = EXAMPLES["detector"]
    cal = frames(tmp_path / "cal", inputs, 5, seed=4)
    out = tmp_path / "int8.onnx"
    assert api.quantize(MODELS / "detector.onnx", inputs, out, cal, runs=1).ok
    model = load_model(out)
    analysis = analyse_model(model, inputs)
    quantized = [n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert quantized
    for name in quantized:
        tensor = analysis.tensors[name]
        assert tensor.nbytes == int(np.prod(tensor.shape))  # int8: one byte an element
    setting = Setting(edge_flops=5e10, cloud_flops=1e13, bandwidth_bps=2e7, latency_s=0.0)
    result = api.split(out, inputs, setting)
    assert result.ok and not [d for d in result.diagnostics if d.code == "W0609"]
    assert result.data is not None
    candidates = result.data["candidates"]
    assert any(c["cut"][0] in quantized for c in candidates)  # int8 cuts are candidates
    whole = session(out)
    x = {"images": np.random.default_rng(9).random((1, 3, 64, 64)).astype(np.float32)}
    expected = whole.run(None, x)
    # a cut at a float tensor inside a Q/DQ pair leaves the halves to compute in float what
    # the whole's fused int8 kernel rounds in integers: they may differ by one step of the
    # output's quantization, the scale of the DequantizeLinear that makes it
    made_by = {n.output[0]: n for n in model.graph.node}
    scales = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    step = [float(np.max(scales[made_by[o.name].input[1]])) for o in model.graph.output]
    exact = 0
    for k, c in enumerate(candidates):
        got = run_halves(out, inputs, setting, c["cut"], tmp_path / f"cut{k}", x)
        for a, b, one in zip(expected, got, step, strict=True):
            np.testing.assert_allclose(b, a, rtol=0, atol=one * 1.001)
        exact += all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))
    assert exact >= len(candidates) - 2  # cuts at int8 tensors are exact


def test_a_classifier_is_measured_by_top1_agreement(tmp_path: Path) -> None:
    model = classifier(tmp_path / "cls.onnx")
    inputs = {"x": ("float32", (1, 3, 16, 16))}
    cal = frames(tmp_path / "cal", inputs, 10, seed=5)  # 8 calibrate, 2 held out
    result = api.quantize(model, inputs, tmp_path / "int8.onnx", cal, runs=1)
    assert result.report is not None
    assert result.report.outputs["scores"]["metric"] == "top-1 agreement"
    assert result.report.validation_frames == 2 and result.report.calibration_frames == 8
    assert result.report.fidelity in (0.0, 0.5, 1.0)


@given(st.lists(st.lists(st.floats(-10, 10), min_size=3, max_size=3), min_size=1,
                max_size=6), st.lists(st.lists(st.floats(-10, 10), min_size=3, max_size=3),
                                      min_size=6, max_size=6))
@settings(max_examples=60, deadline=None)
def test_top1_agreement_counts_frames_whose_best_class_is_the_same(
        base: list[list[float]], other: list[list[float]]) -> None:
    f = [np.array([row]) for row in base]
    g = [np.array([row]) for row in other[:len(base)]]
    metric, value = q.output_fidelity(f, g)
    same = sum(int(max(range(3), key=lambda i: (a[i], -i)) ==
                   max(range(3), key=lambda i: (b[i], -i))) for a, b in zip(base, other))
    assert metric == "top-1 agreement" and value == same / len(base)


@given(st.lists(st.floats(-5, 5), min_size=4, max_size=4), st.floats(0, 2))
@settings(max_examples=60, deadline=None)
def test_relative_error_fidelity_is_one_minus_the_error_and_never_negative(
        values: list[float], scale: float) -> None:
    f = np.array(values).reshape(2, 2)
    g = f * scale
    metric, value = q.output_fidelity([f], [g])
    assert metric == "1 - relative L2 error" and 0.0 <= value <= 1.0
    if np.linalg.norm(f) > 0:
        assert value == pytest.approx(max(0.0, 1 - abs(scale - 1)), abs=1e-9)


def test_every_fifth_frame_is_held_out_only_when_there_are_five() -> None:
    frames_ = [{"x": np.full((1,), k)} for k in range(11)]
    kept, held = q.split_frames(frames_, None)
    assert [int(f["x"][0]) for f in held] == [4, 9]
    assert len(kept) == 9
    assert q.split_frames(frames_[:4], None) == (frames_[:4], [])
    given_ = frames_[:2]
    assert q.split_frames(frames_, given_) == (frames_, given_)


def test_synthetic_calibration_claims_no_fidelity(tmp_path: Path) -> None:
    (tmp_path / "detector.onnx").write_bytes((MODELS / "detector.onnx").read_bytes())
    args = ["quantize", "detector.onnx", "--input", "images=float32[1,3,64,64]",
            "--synthetic", "4", "-o", "int8.onnx", "--runs", "2"]
    proc = run(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "fidelity   not measured" in proc.stdout
    assert_golden(GOLDEN / "W0612_synthetic.out", proc.stderr.replace("wrote int8.onnx\n", ""))
    data = json.loads(run(*args, "--json", "--force", cwd=tmp_path).stdout)
    assert data["result"]["fidelity"] is None and data["result"]["calibration_frames"] == 4
    assert [d["code"] for d in data["diagnostics"]] == ["W0612"]
    # with validation frames, a fidelity is measured even on synthetic calibration
    frames(tmp_path / "val", EXAMPLES["detector"], 2, seed=6)
    data = json.loads(run(*args, "--json", "--force", "--validation", "val",
                          cwd=tmp_path).stdout)
    assert data["ok"] and data["diagnostics"] == [] and 0 < data["result"]["fidelity"] <= 1


# case: (arguments after the model, files made beforehand)
CASES: dict[str, tuple[list[str], dict[str, tuple[str, ...]]]] = {
    "E0610_no_folder": (["--calibration", "calib"], {}),
    "E0610_no_frames": (["--calibration", "empty"], {"empty/notes.txt": ()}),
    "E0611_wrong_shape": (["--calibration", "calib"], {"calib/a.npy": (1, 3, 32, 32)}),
    "E0611_not_numpy": (["--calibration", "calib"], {"calib/a.npy": ()}),
    "E0611_missing_input": (["--calibration", "calib"], {"calib/a.npz": (1, 3, 64, 64)}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_frame_errors_are_located_diagnostics(case: str, tmp_path: Path) -> None:
    args, made = CASES[case]
    (tmp_path / "detector.onnx").write_bytes((MODELS / "detector.onnx").read_bytes())
    for name, shape in made.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not shape:
            path.write_text("not a frame")
        elif path.suffix == ".npz":
            np.savez(path, other=np.zeros(shape, np.float32))
        else:
            np.save(path, np.zeros(shape, np.float32))
    proc = run("quantize", "detector.onnx", "--input", "images=float32[1,3,64,64]", *args,
               "-o", "int8.onnx", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error[{case.split('_')[0]}]")
    assert_golden(GOLDEN / f"{case}.out", proc.stderr)
    assert not (tmp_path / "int8.onnx").exists()


def test_usage_errors_and_foreign_outputs(tmp_path: Path) -> None:
    (tmp_path / "detector.onnx").write_bytes((MODELS / "detector.onnx").read_bytes())
    base = ["quantize", "detector.onnx", "--input", "images=float32[1,3,64,64]", "-o", "o.onnx"]
    assert run(*base, cwd=tmp_path).returncode == 2  # neither --calibration nor --synthetic
    both = run(*base, "--synthetic", "2", "--calibration", "c", cwd=tmp_path)
    assert both.returncode == 2 and "one of" in both.stderr
    (tmp_path / "o.onnx").write_text("my own file")
    refused = run(*base, "--synthetic", "2", cwd=tmp_path)
    assert refused.returncode == 1 and "E1002" in refused.stderr
    assert (tmp_path / "o.onnx").read_text() == "my own file"


def test_the_benchmark_runs_and_prints_its_figures() -> None:
    """benchmarks/variants.py, on a small model (the figures it prints are the benchmark)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "variants.py"), "--width",
                           "8", "--size", "64", "--runs", "2"], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for figure in ("fidelity: top-1 agreement", "size:", "speed-up", "deterministic: yes",
                   "| `risk_classifier` | `int8` |"):
        assert figure in proc.stdout


def output_steps(model: onnx.ModelProto) -> list[float]:
    """One quantization step of each output: the scale of the DequantizeLinear that makes it."""
    made_by = {n.output[0]: n for n in model.graph.node}
    scales = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    steps = []
    for o in model.graph.output:
        node = made_by[o.name]
        assert node.op_type == "DequantizeLinear", (o.name, node.op_type)
        steps.append(float(np.max(scales[node.input[1]])))
    return steps


@pytest.mark.parametrize("build", ["vgg_chain", "resnet", "mobilenet", "inception", "fpn"])
def test_the_test_models_quantize_and_their_halves_equal_their_whole(build: str,
                                                                    tmp_path: Path) -> None:
    """The split machinery's test models (tests/onnx_models.py): each quantizes, runs, has a
    measured fidelity, and the halves of every candidate cut equal its quantized whole within
    one quantization step of each output (onnxruntime's graph optimisations may fuse or drop
    quantize/dequantize pairs differently once the graph is cut: the FPN's skip connections
    do, by one step on a few elements)."""
    from tests import onnx_models

    model, shapes = getattr(onnx_models, build)()
    onnx.save(model, tmp_path / "m.onnx")
    inputs = {n: ("float32", s) for n, s in shapes.items()}
    cal = frames(tmp_path / "cal", inputs, 10, seed=7)
    out = tmp_path / "int8.onnx"
    result = api.quantize(tmp_path / "m.onnx", inputs, out, cal, runs=1)
    assert result.ok and result.report is not None and result.report.fidelity is not None
    quantized = load_model(out)
    steps = output_steps(quantized)
    setting = Setting(edge_flops=1e9, cloud_flops=1e12, bandwidth_bps=1e6, latency_s=0.0)
    split = api.split(out, inputs, setting)
    assert split.ok and split.data is not None and split.data["candidates"]
    whole = session(out)
    rng = np.random.default_rng(3)
    x = {n: rng.random(s).astype(np.float32) for n, s in shapes.items()}
    expected = whole.run(None, x)
    for k, c in enumerate(split.data["candidates"]):
        got = run_halves(out, inputs, setting, c["cut"], tmp_path / f"cut{k}", x)
        for a, b, step in zip(expected, got, steps, strict=True):
            np.testing.assert_allclose(b, a, rtol=0, atol=step * 1.001)


def test_onnxruntime_writes_nothing_in_the_home_folder(tmp_path: Path) -> None:
    """onnxruntime 1.29+ keeps a device id under ~/.cache/Microsoft unless told not to:
    edgeflow tells it (ORT_DISABLE_TELEMETRY), so a command that runs models writes only its
    output and edgeflow's cache folder."""
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("CI", "ORT_DISABLE_TELEMETRY", "ORT_TELEMETRY_DISABLED")}
    env.update(HOME=str(home), EDGEFLOW_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "edgeflow", "quantize", str(VITALS_MODEL),
                           "--input", "window=float32[1,6,250]", "--synthetic", "3", "-o",
                           str(tmp_path / "out.onnx"), "--runs", "1"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert [p for p in home.rglob("*")] == []
