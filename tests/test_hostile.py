"""Hostile and extreme input (issue 14): model files outside the app, external data, oversized
and too-new models, numbers at the edges, huge fleets. Each is a located, coded error or a
correct result: never a traceback, never a false "optimal", never a file read it need not read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeflow import api, check_text
from tests.conftest import ROOT
from tests.test_cli import run

APP = """app a { objective = minimize(latency) }
device cam { tier = edge, compute = 1 GFLOPS, memory = 1 GiB }
device dc  { tier = cloud, compute = 1 TFLOPS, memory = 8 GiB }
link cam <-> dc { bandwidth = 100 Mbps, latency = 5 ms }
sensor camera { on = cam, rate = 1 Hz, emits = float32[1, 64] }
model net { source = "@SOURCE@", inputs = { x = float32[1, 64] } }
store out { on = dc }
pipeline p { flow = camera -> net -> out }
"""


def _app(source: str) -> str:
    return APP.replace("@SOURCE@", source)


def _model(opset: int = 17) -> onnx.ModelProto:
    """x[1,64] -> MatMul(64x64) -> Relu -> MatMul(64x8): big enough weights to keep external."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((64, 8)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])], "net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=8)


def _codes(text: str, file: Path) -> set[str]:
    return {d.code for d in check_text(text, str(file)).diagnostics}


def test_model_sources_must_stay_in_the_apps_folder(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    app, shared = tmp_path / "app", tmp_path / "shared"
    (app / "models").mkdir(parents=True)
    shared.mkdir()
    onnx.save(_model(), str(shared / "net.onnx"))
    (app / "models" / "link.onnx").symlink_to(shared / "net.onnx")
    onnx.save(_model(), str(app / "models" / "net.onnx"))
    ef = app / "app.ef"
    assert _codes(_app("models/net.onnx"), ef) == set()
    for outside in ("../shared/net.onnx", str(shared / "net.onnx"), "models/link.onnx"):
        assert _codes(_app(outside), ef) == {"E0607"}, outside
    monkeypatch.setenv("EDGEFLOW_MODEL_ROOTS", str(shared))
    assert _codes(_app("../shared/net.onnx"), ef) == set()


@pytest.mark.parametrize(("source", "message"), [
    ("", "`source` is empty"), ("/", "`/` is a folder"), (".", "`.` is a folder"),
    ("models/none.onnx", "model file `models/none.onnx` not found")])
def test_bad_sources_name_what_was_written(tmp_path: Path, source: str, message: str) -> None:
    (diag,) = check_text(_app(source), str(tmp_path / "app.ef")).diagnostics
    assert diag.code == "E0601" and message in diag.message


def test_external_data_is_found_beside_the_model_and_shipped(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             ) -> None:
    app = tmp_path / "app"
    (app / "models").mkdir(parents=True)
    onnx.save_model(_model(), str(app / "models" / "net.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the data must be looked for beside the model, not here
    result = check_text(_app("models/net.onnx"), str(app / "app.ef"))
    assert result.ok and result.program is not None, result.diagnostics
    plan = api.plan(result.program).plan
    files = api.bundle(result.program, plan, "compose")
    whole = [u for u in plan.units if u.part.value == "whole"]
    if whole:  # the model file and its data, side by side, as onnxruntime loads them
        assert files["models/net/w.bin"] == (app / "models" / "w.bin").read_bytes()
    for path, data in files.items():
        if path.endswith(("head.onnx", "tail.onnx")):  # halves carry their weights inside
            half = onnx.load_from_string(data)
            assert all(t.data_location != TensorProto.EXTERNAL for t in half.graph.initializer)
    (app / "models" / "w.bin").unlink()
    broken = check_text(_app("models/net.onnx"), str(app / "app.ef"))
    assert {d.code for d in broken.diagnostics} == {"E0602"}


def test_split_halves_of_a_model_with_external_data_run(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    app = tmp_path / "app"
    (app / "models").mkdir(parents=True)
    onnx.save_model(_model(), str(app / "models" / "net.onnx"), save_as_external_data=True,
                    location="w.bin", size_threshold=0)
    text = _app("models/net.onnx").replace("compute = 1 GFLOPS", "compute = 0.001 GFLOPS")
    result = check_text(text, str(app / "app.ef"))
    assert result.program is not None
    plan = api.plan(result.program).plan
    assert plan.splits, "expected the slow camera to keep only part of the model"
    files = api.bundle(result.program, plan, "k8s")
    head = next(d for p, d in files.items() if p.endswith("head.onnx"))
    tail = next(d for p, d in files.items() if p.endswith("tail.onnx"))
    x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
    whole = ort.InferenceSession(str(app / "models" / "net.onnx")).run(None, {"x": x})[0]
    h = ort.InferenceSession(head)
    mid = dict(zip([o.name for o in h.get_outputs()], h.run(None, {"x": x}), strict=True))
    t = ort.InferenceSession(tail)
    out = t.run(None, {i.name: mid[i.name] for i in t.get_inputs()})[0]
    assert np.allclose(out, whole, atol=1e-4)


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    huge = tmp_path / "models" / "huge.onnx"
    with huge.open("wb") as f:  # sparse: 3 GB on paper, nothing on disk
        f.truncate(3 * 10**9)
    (diag,) = check_text(_app("models/huge.onnx"), str(tmp_path / "app.ef")).diagnostics
    assert diag.code == "E0602" and "at most 2 GiB" in diag.label


def test_an_opset_newer_than_onnx_knows_is_refused(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    onnx.save(_model(opset=999), str(tmp_path / "models" / "net.onnx"))
    (diag,) = check_text(_app("models/net.onnx"), str(tmp_path / "app.ef")).diagnostics
    assert diag.code == "E0602" and "opset 999" in diag.label
    assert f"1 to {onnx.defs.onnx_opset_version()}" in diag.label


@pytest.mark.parametrize(("change", "code"), [
    (("emits = float32[1, 64]", "emits = float32[100000000000000000000, 4]"), "E0304"),
    (("emits = float32[1, 64]", "emits = float32[1000000, 1000000]"), "E0304"),
    (("memory = 1 GiB", "memory = 1e309 GiB"), "E0303"),
    (("compute = 1 GFLOPS", "compute = 1e400 GFLOPS"), "E0303"),
    (("bandwidth = 100 Mbps", "bandwidth = 1e300 Gbps"), "E0303"),
    (("memory = 8 GiB }", "memory = 8 GiB, count = 10001 }"), "E0303"),
])
def test_numbers_beyond_the_bounds_are_located_errors(tmp_path: Path, change: tuple[str, str],
                                                      code: str) -> None:
    (tmp_path / "models").mkdir()
    onnx.save(_model(), str(tmp_path / "models" / "net.onnx"))
    text = _app("models/net.onnx")
    assert change[0] in text
    result = check_text(text.replace(change[0], change[1], 1), str(tmp_path / "app.ef"))
    assert code in {d.code for d in result.diagnostics}
    (diag,) = [d for d in result.diagnostics if d.code == code]
    assert diag.span.line >= 2


def test_work_beyond_the_bounds_is_an_error_and_a_big_count_checks_quickly(tmp_path: Path,
                                                                           ) -> None:
    text = ("app a {}\ndevice d { tier = edge, compute = 1 TFLOPS, memory = 1 GiB, "
            "count = 10000 }\ndevice f { tier = fog, compute = 1 TFLOPS, memory = 1 GiB, "
            "count = 9999 }\nlink d <-> f { bandwidth = 1 Gbps, latency = 1 ms }\n"
            "sensor c { on = d, rate = 1 Hz, emits = float32[1, 4] }\n"
            "operator o { work = 1 FLOP, emits = float32[1, 4] }\nstore s { on = d }\n"
            "pipeline p { flow = c -> o -> s }\n")
    assert check_text(text, str(tmp_path / "a.ef")).ok  # no instance graph is built
    planned = api.plan(check_text(text, str(tmp_path / "a.ef")).program)  # type: ignore[arg-type]
    assert planned.plan is None and [d.code for d in planned.diagnostics] == ["E0902"]
    huge = text.replace("work = 1 FLOP", "work = 1e30 FLOP")
    assert "E0303" in {d.code for d in check_text(huge, str(tmp_path / "a.ef")).diagnostics}


@pytest.mark.parametrize("args", [
    ["--edge-compute", "1e400TFLOPS"], ["--bandwidth", "1e300Gbps"],
    ["--sweep", "bandwidth=1bps..1e300Gbps"], ["--input", "images=float32[100000000000000000000,3]"],
])
def test_split_options_at_the_edges_are_usage_errors(args: list[str]) -> None:
    base = {"--input": "images=float32[1,3,320,320]", "--edge-compute": "5GFLOPS",
            "--cloud-compute": "100TFLOPS", "--bandwidth": "100Mbps"}
    base[args[0]] = args[1]
    flat = [x for kv in base.items() for x in kv]
    if args[0] == "--sweep":
        flat += args
    proc = run("split", str(ROOT / "examples" / "models" / "detector.onnx"), *flat)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr


def test_a_plan_the_cost_model_rejects_is_never_called_feasible(tmp_path: Path) -> None:
    # a pinned stream that overloads its link: nothing to decide, and still infeasible
    text = ("app a {}\ndevice gw { tier = edge, compute = 1 GFLOPS, memory = 1 MiB }\n"
            "device d0 { tier = edge, compute = 1 GFLOPS, memory = 2 MiB }\n"
            "link gw <-> d0 { bandwidth = 1 Mbps, latency = 1 ms }\n"
            "sensor cam { on = gw, rate = 30 Hz, emits = float32[1, 6, 250] }\n"
            "store out { on = d0 }\npipeline p { flow = cam -> out }\n")
    result = check_text(text, str(tmp_path / "a.ef"))
    planned = api.plan(result.program)  # type: ignore[arg-type]
    assert planned.plan is not None and planned.plan.status == "infeasible"
    assert [d.code for d in planned.diagnostics] == ["E0901"]
    assert "1.4 Mbps" in planned.diagnostics[0].message
    out = tmp_path / "bundle"
    compiled = api.compile(_write(tmp_path / "a.ef", text), output=out)
    assert not compiled.ok and not out.exists()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_json_outputs_stay_valid_json(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    onnx.save(_model(), str(tmp_path / "models" / "net.onnx"))
    app = _write(tmp_path / "app.ef", _app("models/net.onnx"))
    proc = run("plan", str(app), "--json")
    data = json.loads(proc.stdout)  # no NaN or Infinity anywhere
    assert data["ok"] and "Infinity" not in proc.stdout and "NaN" not in proc.stdout
    assert os.path.isfile(app)


def test_a_model_with_an_empty_output_is_reported_not_a_crash(tmp_path: Path) -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 0])])
    path = tmp_path / "zero.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8), str(path))
    proc = run("split", str(path), "--input", "x=float32[1,4]", "--edge-compute", "1GFLOPS",
               "--cloud-compute", "1TFLOPS", "--bandwidth", "1Mbps")
    assert proc.returncode == 0 and "speed-up undefined" in proc.stdout, proc.stderr
    text = ("app a {}\ndevice d { tier = edge, compute = 1 TFLOPS, memory = 1 GiB }\n"
            "sensor c { on = d, rate = 1 Hz, emits = float32[1, 4] }\n"
            'model m { source = "zero.onnx", inputs = { x = float32[1, 4] } }\n'
            "store s { on = d }\npipeline p { flow = c -> m -> s }\n")
    assert "E0604" in {d.code for d in check_text(text, str(tmp_path / "a.ef")).diagnostics}
