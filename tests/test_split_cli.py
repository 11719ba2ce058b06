"""`edgeflow split` and `edgeflow profile` as a user runs them, and `api.split` and
`api.profile` beneath them."""

from __future__ import annotations

import json
import subprocess
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgeflow import api
from edgeflow.models.split import Setting
from tests.conftest import ROOT
from tests.test_cli import run

DETECTOR = str(ROOT / "examples" / "models" / "detector.onnx")
BASE = ["split", DETECTOR, "--input", "images=float32[1,3,320,320]", "--edge-compute",
        "5GFLOPS", "--cloud-compute", "100TFLOPS", "--bandwidth", "100Mbps", "--latency", "10ms"]


def result(proc: subprocess.CompletedProcess[str], command: str = "split") -> Any:
    """The `result` of a successful command's JSON envelope."""
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["command"] == command and out["ok"] is True and out["diagnostics"] == []
    return out["result"]


def test_json_follows_the_contract() -> None:
    data = result(run(*BASE, "--json"))
    assert data == result(run(*BASE, "--format", "json"))  # --json is an alias
    assert data["model"] == "detector.onnx"
    assert data["inputs"] == {"images": "float32[1,3,320,320]"}
    assert data["total_work_flop"] == 293465600
    fields = {"cut", "transfer_bytes", "head_work_flop", "tail_work_flop", "head_ms",
              "transfer_ms", "tail_ms", "total_ms"}
    for row in data["candidates"]:
        assert set(row) == fields
        assert row["total_ms"] == pytest.approx(row["head_ms"] + row["transfer_ms"] +
                                                row["tail_ms"], abs=1e-5)
    best = min(data["candidates"], key=lambda r: r["total_ms"])
    assert data["optimal"] == best
    # cloud only sends the 1,228,800-byte input: 8·B/100e6 s + 10 ms
    assert data["cloud_only_ms"] == pytest.approx(8 * 1228800 / 100e6 * 1e3 + 10 + 293465600 / 100e12 * 1e3)
    assert data["speedup"] == pytest.approx(min(data["edge_only_ms"], data["cloud_only_ms"])
                                            / data["optimal"]["total_ms"], rel=1e-6)
    assert data["speedup"] > 1  # with a slow edge, a cut inside the model wins
    assert data["optimal"]["cut"] not in (["images"], ["detections"])


def test_table_marks_the_optimum() -> None:
    proc = run(*BASE)
    assert proc.returncode == 0
    starred = [line for line in proc.stdout.splitlines() if line.startswith("* ")]
    assert len(starred) == 1
    assert "speed-up" in proc.stdout and "edge only" in proc.stdout


def test_emit_writes_equivalent_halves(tmp_path: Path) -> None:
    proc = run(*BASE, "--emit", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    head = onnx.load(str(tmp_path / "out" / "head.onnx"))
    tail = onnx.load(str(tmp_path / "out" / "tail.onnx"))
    onnx.checker.check_model(head, full_check=True)
    onnx.checker.check_model(tail, full_check=True)
    x = np.random.default_rng(1).random((1, 3, 320, 320)).astype(np.float32)
    whole = ort.InferenceSession(DETECTOR).run(None, {"images": x})[0]
    h = ort.InferenceSession(head.SerializeToString())
    sent = dict(zip([o.name for o in h.get_outputs()], h.run(None, {"images": x}), strict=True))
    t = ort.InferenceSession(tail.SerializeToString())
    out = t.run(None, {i.name: sent[i.name] for i in t.get_inputs()})[0]
    assert np.abs(out - whole).max() <= 1e-4
    again = run(*BASE, "--emit", str(tmp_path / "out"))  # its own files may be replaced
    assert again.returncode == 0
    assert (tmp_path / "out" / "head.onnx").read_bytes() == head.SerializeToString(
        deterministic=True)


def test_emit_never_replaces_a_file_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "head.onnx").write_text("mine")
    proc = run(*BASE, "--emit", str(tmp_path))
    assert proc.returncode == 1 and "error[E1002]" in proc.stderr
    assert "not written by edgeflow" in proc.stderr
    assert (tmp_path / "head.onnx").read_text() == "mine"
    assert not (tmp_path / "tail.onnx").exists()


def test_emit_writes_both_halves_or_neither(tmp_path: Path) -> None:
    (tmp_path / "tail.onnx").mkdir()  # the second file cannot be written
    proc = run(*BASE, "--emit", str(tmp_path))
    assert proc.returncode == 1 and "error[E1001]" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tail.onnx"]  # no head, no temp


def test_forced_cut(tmp_path: Path) -> None:
    data = result(run(*BASE, "--json"))
    other = next(r for r in data["candidates"] if r != data["optimal"])
    proc = run(*BASE, "--json", "--cut", ",".join(other["cut"]), "--emit", str(tmp_path))
    assert result(proc)["forced"] == other
    tail = onnx.load(str(tmp_path / "tail.onnx"))
    assert [i.name for i in tail.graph.input] == other["cut"]


def test_sweep_gives_a_decision_table() -> None:
    proc = run(*BASE, "--json", "--sweep", "bandwidth=1Mbps..1Gbps")
    rows = result(proc)["sweep"]
    assert rows[0]["from_bps"] == 1e6 and rows[-1]["to_bps"] == 1e9
    for a, b in pairwise(rows):
        assert a["to_bps"] == pytest.approx(b["from_bps"])
        assert a["transfer_bytes"] < b["transfer_bytes"]  # more bandwidth, earlier cut
    assert len(rows) >= 2


@pytest.mark.parametrize(("args", "code", "text"), [
    (["--cut", "nonexistent"], "E0801", "not a tensor that can be cut"),
    (["--input", "imgs=float32[1,3,320,320]"], "E0603", "no input `imgs`"),
], ids=["bad-cut", "unknown-input"])
def test_user_errors(args: list[str], code: str, text: str) -> None:
    base = BASE if "--input" not in args else [a for a in BASE if a not in
                                               ("--input", "images=float32[1,3,320,320]")]
    proc = run(*base, *args)
    assert proc.returncode == 1
    assert f"error[{code}]" in proc.stderr and text in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unbound_input_bad_file_and_bad_units(tmp_path: Path) -> None:
    proc = run("split", DETECTOR, "--edge-compute", "1TFLOPS", "--cloud-compute", "1TFLOPS",
               "--bandwidth", "1Mbps")
    assert proc.returncode == 2  # --input is required
    junk = tmp_path / "junk.onnx"
    junk.write_text("not onnx")
    proc = run("split", str(junk), *BASE[2:])
    assert proc.returncode == 1 and "error[E0602]" in proc.stderr
    proc = run("split", str(tmp_path / "missing.onnx"), *BASE[2:])
    assert proc.returncode == 1 and "error[E0601]" in proc.stderr
    proc = run(*BASE[:-1], "10 parsecs")
    assert proc.returncode == 2 and "--latency" in proc.stderr
    proc = run(*[a.replace("float32[1,3,320,320]", "float32[1,3,0,320]") for a in BASE])
    assert proc.returncode == 2 and "dimension" in proc.stderr


def test_profile_refuses_to_replace_a_foreign_file(tmp_path: Path) -> None:
    mine = tmp_path / "notes.json"
    mine.write_text('{"mine": true}')
    proc = run("profile", DETECTOR, "--input", "images=float32[1,3,320,320]", "-o", str(mine))
    assert proc.returncode == 1 and "error[E1002]" in proc.stderr
    assert "not written by edgeflow" in proc.stderr
    assert mine.read_text() == '{"mine": true}'
    blocked = run("profile", DETECTOR, "--input", "images=float32[1,3,320,320]", "-o",
                  "/proc/edgeflow/profile.json")
    assert blocked.returncode == 1 and "error[E1001]" in blocked.stderr
    assert "cannot write" in blocked.stderr
    assert "Traceback" not in blocked.stderr


def test_profile_then_split_with_it(tmp_path: Path) -> None:
    out = tmp_path / "edge.json"
    proc = run("profile", DETECTOR, "--input", "images=float32[1,3,320,320]", "-o", str(out),
               "--runs", "3", "--warmup", "1")
    assert proc.returncode == 0, proc.stderr
    again = run("profile", DETECTOR, "--input", "images=float32[1,3,320,320]", "-o", str(out),
                "--runs", "1", "--warmup", "0")
    assert again.returncode == 0, again.stderr  # its own profile may be replaced
    proc = run("profile", DETECTOR, "--input", "images=float32[1,3,320,320]", "-o", str(out),
               "--runs", "3", "--warmup", "1", "--format", "json")
    profile = json.loads(out.read_text())
    assert result(proc, "profile") == {**profile, "output": str(out)}
    model = onnx.load(DETECTOR)
    assert set(profile["node_seconds"]) == {n.name for n in model.graph.node}
    assert all(t >= 0 for t in profile["node_seconds"].values())
    data = result(run(*BASE, "--json", "--edge-profile", str(out)))
    edge_only = next(r for r in data["candidates"] if r["cut"] == ["detections"])
    assert edge_only["head_ms"] == pytest.approx(profile["total_seconds"] * 1e3, rel=1e-6)
    # the profile gives every edge time: --edge-compute is not needed
    at = BASE.index("--edge-compute")
    no_compute = BASE[:at] + BASE[at + 2:]
    assert result(run(*no_compute, "--json", "--edge-profile", str(out))) == data
    neither = run(*no_compute)
    assert neither.returncode == 2 and "--edge-compute" in neither.stderr
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"node_seconds": dict(list(
        profile["node_seconds"].items())[:3])}))
    lacking = run(*no_compute, "--edge-profile", str(partial))
    assert lacking.returncode == 1 and "error[E0802]" in lacking.stderr
    assert "has no time for node" in lacking.stderr


def test_binding_errors_use_the_check_codes() -> None:
    wrong_rank = [a.replace("float32[1,3,320,320]", "float32[1,3,320]") for a in BASE]
    proc = run(*wrong_rank)
    assert proc.returncode == 1 and "error[E0605]" in proc.stderr and "rank 4" in proc.stderr
    vitals = str(ROOT / "examples" / "models" / "vitals.onnx")
    fixed = run("split", vitals, "--input", "window=float32[1,6,500]", *BASE[4:])
    assert fixed.returncode == 1 and "error[E0605]" in fixed.stderr and "250" in fixed.stderr


def test_json_error_is_an_envelope_with_the_coded_diagnostic(tmp_path: Path) -> None:
    proc = run(*BASE, "--format", "json", "--cut", "nonexistent")
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert out["command"] == "split" and out["ok"] is False and out["result"] is None
    (diag,) = out["diagnostics"]
    assert diag["code"] == "E0801" and diag["severity"] == "error"
    assert diag["span"]["file"] == DETECTOR and diag["span"]["start"]["line"] == 1
    mine = tmp_path / "notes.json"
    mine.write_text("mine")
    proc = run("profile", DETECTOR, "--input", "images=float32[1,3,320,320]", "-o", str(mine),
               "--runs", "1", "--warmup", "0", "--format", "json")
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert out["command"] == "profile" and out["ok"] is False and out["result"] is None
    assert [d["code"] for d in out["diagnostics"]] == ["E1002"]
    assert out["diagnostics"][0]["span"]["file"] == str(mine)


# ---- the API: user errors come back as diagnostics, never as exceptions

IMAGES = {"images": ("float32", (1, 3, 64, 64))}
SETTING = Setting(1e12, 1e13, 1e7, 0.0)


@pytest.fixture
def junk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current folder, holding a file that is not ONNX, a profile without `node_seconds` and
    a `head.onnx` that edgeflow did not write."""
    monkeypatch.chdir(tmp_path)
    Path("junk.onnx").write_text("not onnx")
    Path("profile.json").write_text('{"nodes": []}')
    Path("head.onnx").write_text("mine")
    return tmp_path


# case: (the arguments changed, the code, the file reported on; None for the model)
SPLIT_ERRORS: dict[str, tuple[dict[str, Any], str, str | None]] = {
    "missing model": ({"model_path": "missing.onnx"}, "E0601", "missing.onnx"),
    "not onnx": ({"model_path": "junk.onnx"}, "E0602", "junk.onnx"),
    "unbound input": ({"inputs": {}}, "E0603", None),
    "invalid cut": ({"cut": ["conv_30"]}, "E0801", None),
    "bad profile": ({"edge_profile": Path("profile.json")}, "E0802", "profile.json"),
    "cannot write": ({"emit": Path("junk.onnx")}, "E1001", "junk.onnx/head.onnx"),
    "foreign file": ({"emit": Path()}, "E1002", "head.onnx"),
}
PROFILE_ERRORS: dict[str, tuple[dict[str, Any], str, str | None]] = {
    **{case: SPLIT_ERRORS[case] for case in ("missing model", "not onnx", "unbound input")},
    "cannot write": ({"output": Path("junk.onnx/p.json")}, "E1001", "junk.onnx/p.json"),
    "foreign file": ({"output": Path("head.onnx")}, "E1002", "head.onnx"),
}


@pytest.mark.parametrize("case", list(SPLIT_ERRORS))
def test_api_split_returns_diagnostics(case: str, junk: Path) -> None:
    changes, code, file = SPLIT_ERRORS[case]
    out = api.split(**{"model_path": DETECTOR, "inputs": IMAGES, "setting": SETTING, **changes})
    assert not out.ok and out.data is None and out.cut is None and out.emitted == []
    assert [(d.code, d.span.file) for d in out.diagnostics] == [(code, file or DETECTOR)]
    assert not list(junk.glob("**/tail.onnx"))


@pytest.mark.parametrize("case", list(PROFILE_ERRORS))
def test_api_profile_returns_diagnostics(case: str, junk: Path) -> None:
    changes, code, file = PROFILE_ERRORS[case]
    out = api.profile(**{"model_path": DETECTOR, "inputs": IMAGES, "output": Path("p.json"),
                         "runs": 1, "warmup": 0, **changes})
    assert not out.ok and out.data is None and out.to_json() is None
    assert [(d.code, d.span.file) for d in out.diagnostics] == [(code, file or DETECTOR)]
    assert Path("head.onnx").read_text() == "mine"


def test_api_split_and_profile(tmp_path: Path) -> None:
    written = api.profile(DETECTOR, IMAGES, tmp_path / "edge.json", runs=1, warmup=0)
    assert written.ok and written.data == json.loads((tmp_path / "edge.json").read_text())
    out = api.split(DETECTOR, IMAGES, SETTING, emit=tmp_path / "out",
                    edge_profile=tmp_path / "edge.json")
    assert out.ok and out.diagnostics == [] and out.data is not None
    assert out.cut == out.data["optimal"]["cut"]  # type: ignore[index]
    assert out.emitted == [tmp_path / "out" / "head.onnx", tmp_path / "out" / "tail.onnx"]
    assert out.setting.edge_profile and not SETTING.edge_profile  # the caller's is untouched
    assert "edge times from a measured profile" in out.render_text()


def test_the_recommendation_keeps_the_optimum_exact_and_skips_tiny_gains() -> None:
    data = result(run(*BASE, "--json"))
    assert data["recommended"]["runs"] == "split"
    assert data["recommended"]["cut"] == data["optimal"]["cut"] == ["conv_21"]
    assert data["recommended"]["gain"] == pytest.approx(
        1 - data["optimal"]["total_ms"] / min(data["edge_only_ms"], data["cloud_only_ms"]),
        abs=1e-6)
    strict = result(run(*BASE, "--json", "--min-gain", "0.5"))
    assert strict["optimal"] == data["optimal"]  # the optimum is what it is
    whole = "edge" if data["edge_only_ms"] <= data["cloud_only_ms"] else "cloud"
    assert strict["recommended"]["runs"] == whole and strict["recommended"]["min_gain"] == 0.5
    text = run(*BASE, "--min-gain", "0.5").stdout.splitlines()
    assert text[2].startswith(f"recommended: run whole on the {whole}, ")
    assert "below --min-gain 50%" in text[2]


def test_a_scalar_input_binds_as_an_empty_shape(tmp_path: Path) -> None:
    """`--input s=float32[]` binds a rank-0 input (a sample rate, a threshold); the halves of
    the optimal cut both take it where they need it."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Mul", ["x", "s"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Add", ["b", "s"], ["y"])]
    graph = helper.make_graph(nodes, "scalar", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64]),
        helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "scalar.onnx")
    proc = run("split", "scalar.onnx", "--input", "x=float32[1,64]", "--input", "s=float32[]",
               "--edge-compute", "1GFLOPS", "--cloud-compute", "1TFLOPS", "--bandwidth",
               "1Mbps", "--format", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["result"]["inputs"] == {"x": "float32[1,64]", "s": "float32[]"}


def test_no_cache_leaves_the_cache_folder_alone(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A model whose shapes must be measured: `split` keeps them in the cache folder,
    `--no-cache` writes nothing there."""
    from onnx import TensorProto, helper

    node = helper.make_node("FusedMatMul", ["x", "w"], ["y"], domain="com.microsoft")
    graph = helper.make_graph([node], "contrib", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, [8, 5], [0.5] * 40)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "contrib.onnx")
    args = ["split", "contrib.onnx", "--input", "x=float32[2,8]", "--edge-compute", "1GFLOPS",
            "--cloud-compute", "1TFLOPS", "--bandwidth", "1Mbps"]
    monkeypatch.setenv("EDGEFLOW_CACHE_DIR", str(tmp_path / "cache"))
    proc = run("--no-cache", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "cache").exists()
    assert run(*args, cwd=tmp_path).returncode == 0
    assert list((tmp_path / "cache" / "shapes").glob("*.json"))
