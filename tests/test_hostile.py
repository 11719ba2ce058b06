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


def _bottleneck_model() -> onnx.ModelProto:
    """x[1,256] -> MatMul(256x4) -> Relu -> MatMul(4x256): a 16 B cut between 1 KiB ends."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((256, 4)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 256)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])], "net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_split_halves_of_a_model_with_external_data_run(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    app = tmp_path / "app"
    (app / "models").mkdir(parents=True)
    onnx.save_model(_bottleneck_model(), str(app / "models" / "net.onnx"),
                    save_as_external_data=True, location="w.bin", size_threshold=0)
    # the camera cannot hold both weights (8 KiB) besides its runtime (a broker, the camera's
    # driver and the head's worker: 256 MiB) and its link cannot carry the 1 KiB input or
    # output (with their headers) once a second: only the split at the 16 B cut is feasible
    text = APP.replace("@SOURCE@", "models/net.onnx").replace(
        "memory = 1 GiB", "memory = 262150 KiB").replace(
        "bandwidth = 100 Mbps", "bandwidth = 10 Kbps").replace(
        "float32[1, 64]", "float32[1, 256]")
    result = check_text(text, str(app / "app.ef"))
    assert result.program is not None, result.diagnostics
    plan = api.plan(result.program).plan
    assert plan is not None and plan.splits, "expected the camera to keep only part of the model"
    files = api.bundle(result.program, plan, "k8s")
    head = next(d for p, d in files.items() if p.endswith("head.onnx"))
    tail = next(d for p, d in files.items() if p.endswith("tail.onnx"))
    x = np.random.default_rng(1).standard_normal((1, 256)).astype(np.float32)
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
    text = ("app a {}\ndevice gw { tier = edge, compute = 1 GFLOPS, memory = 1 GiB }\n"
            "device d0 { tier = edge, compute = 1 GFLOPS, memory = 2 GiB }\n"
            "link gw <-> d0 { bandwidth = 1 Mbps, latency = 1 ms }\n"
            "sensor cam { on = gw, rate = 30 Hz, emits = float32[1, 6, 250] }\n"
            "store out { on = d0 }\npipeline p { flow = cam -> out }\n")
    result = check_text(text, str(tmp_path / "a.ef"))
    planned = api.plan(result.program)  # type: ignore[arg-type]
    assert planned.plan is not None and planned.plan.status == "infeasible"
    assert [d.code for d in planned.diagnostics] == ["E0901"]
    assert "1.6 Mbps" in planned.diagnostics[0].message  # 30 x (6000 B + a 512 B header)
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
    # the output really is empty (a Slice past the end): declared shapes are not trusted
    nodes = [helper.make_node("Slice", ["x", "at", "at", "axis"], ["z"]),
             helper.make_node("Relu", ["z"], ["y"])]
    graph = helper.make_graph(nodes, "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 0])],
                              initializer=[helper.make_tensor("at", TensorProto.INT64, [1], [4]),
                                           helper.make_tensor("axis", TensorProto.INT64, [1],
                                                              [1])])
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


def _external(folder: Path, location: str = "w.bin", **fields: str) -> Path:
    """models/net.onnx in `folder` with its weights in `location`, fields patched after."""
    (folder / "models").mkdir(parents=True, exist_ok=True)
    path = folder / "models" / "net.onnx"
    onnx.save_model(_model(), str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
            elif entry.key in fields:
                entry.value = fields[entry.key]
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(("location", "fields", "fragment"), [
    ("link.bin", {}, "symbolic link"),
    ("model.onnx", {}, "bundles use"),
    ("w.bin", {"offset": "100000"}, "too short"),
    ("w.bin", {"length": "4"}, "the tensor holds"),
    ("w.bin", {"offset": "abc"}, "unreadable offset"),
])
def test_external_data_that_is_not_what_it_claims_is_refused(
        tmp_path: Path, location: str, fields: dict[str, str], fragment: str) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"TOP SECRET" * 4000)
    _external(tmp_path, location, **fields)
    models = tmp_path / "models"
    (models / "link.bin").symlink_to(secret)
    if location == "model.onnx":
        (models / "model.onnx").write_bytes((models / "w.bin").read_bytes())
    (diag,) = check_text(_app("models/net.onnx"), str(tmp_path / "app.ef")).diagnostics
    assert diag.code == "E0602" and fragment in diag.label, diag.label


def test_unnormalised_external_locations_recompile_into_the_same_folder(tmp_path: Path) -> None:
    _external(tmp_path, "./w.bin")
    app = _write(tmp_path / "app.ef", _app("models/net.onnx"))
    for _ in range(2):
        result = api.compile(app, "compose", tmp_path / "out")
        assert result.ok, result.diagnostics


def test_split_emits_self_contained_halves_of_an_external_data_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _external(tmp_path / "app")
    monkeypatch.chdir(tmp_path)
    proc = run("split", str(model), "--input", "x=float32[1,64]", "--edge-compute",
               "0.001GFLOPS", "--cloud-compute", "1TFLOPS", "--bandwidth", "100Mbps",
               "--cut", "r", "--emit", str(tmp_path / "halves"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for half in ("head.onnx", "tail.onnx"):
        loaded = onnx.load(str(tmp_path / "halves" / half), load_external_data=False)
        assert all(t.data_location != TensorProto.EXTERNAL for t in loaded.graph.initializer)


def test_unreadable_model_sources_are_errors_not_crashes(tmp_path: Path) -> None:
    (diag,) = check_text(_app("m" * 300 + ".onnx"), str(tmp_path / "app.ef")).diagnostics
    assert diag.code == "E0601" and "cannot read" in diag.message


def test_force_merges_all_or_nothing_and_reads_every_folder(tmp_path: Path) -> None:
    from edgeflow.emit import MARKER, BundleError, write_bundle

    def bundle(files: dict[str, bytes]) -> dict[str, bytes]:
        return {**files, MARKER: json.dumps({"files": sorted([*files, MARKER])}).encode()}

    out = tmp_path / "out"
    write_bundle(out, bundle({"a.txt": b"1", "b.txt": b"1"}), force=False)
    (out / "notes.txt").write_text("mine")
    (out / "b.txt").unlink()
    (out / "b.txt").mkdir()  # the second file cannot be written
    with pytest.raises(BundleError):
        write_bundle(out, bundle({"a.txt": b"2", "b.txt": b"2"}), force=True)
    assert (out / "a.txt").read_bytes() == b"1"  # nothing was replaced
    shutil_rmtree(out / "b.txt")
    (out / "empty").mkdir()  # an empty folder is the user's: it is not silently dropped
    with pytest.raises(BundleError) as refused:
        write_bundle(out, bundle({"a.txt": b"3"}), force=False)
    assert "empty" in refused.value.diagnostic.message or "notes" in \
        refused.value.diagnostic.message
    (out / "notes.txt").unlink()
    with pytest.raises(BundleError) as still:
        write_bundle(out, bundle({"a.txt": b"3"}), force=False)
    assert "empty" in still.value.diagnostic.message
    (out / MARKER).write_text("[" * 200_000)  # a hostile marker is just not ours
    with pytest.raises(BundleError):
        write_bundle(out, bundle({"a.txt": b"3"}), force=False)


def shutil_rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)


def test_an_output_that_is_a_link_is_written_where_it_points(tmp_path: Path) -> None:
    from edgeflow.emit import write_bundle

    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    write_bundle(tmp_path / "link", {"a.txt": b"1", ".edgeflow-bundle": b'{"files": []}'},
                 force=False)
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "a.txt").is_file()


def test_tiny_values_give_a_plan_not_a_false_infeasible(tmp_path: Path) -> None:
    text = ("app a {}\ndevice cam { tier = edge, compute = 0.001 FLOPS, memory = 1 GiB }\n"
            "device dc { tier = cloud, compute = 1 TFLOPS, memory = 8 GiB }\n"
            "link cam <-> dc { bandwidth = 100 Mbps, latency = 10 ms }\n"
            "sensor s { on = cam, rate = 1 Hz, emits = float32[1, 4] }\n"
            "operator op { work = 0.5 TFLOP, emits = float32[1, 4] }\n"
            "store out { on = dc }\npipeline p { flow = s -> op -> out }\n")
    planned = api.plan(check_text(text, str(tmp_path / "a.ef")).program)  # type: ignore[arg-type]
    assert planned.plan is not None and planned.plan.feasible, planned.diagnostics
    assert planned.plan.units[0].device == "dc"


def test_the_size_limit_counts_every_link(tmp_path: Path) -> None:
    devices = "".join(f"device d{i} {{ tier = edge, compute = 1 TFLOPS, memory = 1 GiB, "
                      f"count = {1000 - i} }}\n" for i in range(3))
    links = "link d0 <-> d1 { bandwidth = 1 Gbps, latency = 1 ms }\n" \
            "link d1 <-> d2 { bandwidth = 1 Gbps, latency = 1 ms }\n"
    text = ("app a {}\n" + devices + links + "sensor s { on = d0, rate = 1 Hz, emits = "
            "float32[1, 4] }\nstore out { on = d0 }\npipeline p { flow = s -> out }\n")
    planned = api.plan(check_text(text, str(tmp_path / "a.ef")).program)  # type: ignore[arg-type]
    assert planned.plan is None and [d.code for d in planned.diagnostics] == ["E0902"]
