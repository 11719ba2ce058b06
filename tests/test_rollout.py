"""`edgeflow run --rollout`: a new model version reaches running inference wave by wave without
stopping it. Real runs (workers, embedded brokers, sensors replaying fixed frames, sinks) of a
small app whose model has four replicas on four hubs: a good version goes through every wave with
every frame made by the version it says; a slow one fails its first wave's latency rule and every
replica goes back; a file that is not a model is refused before anything starts, and one that
cannot be loaded in the worker fails the wave. The wave and health logic is tested alone too."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from edgeflow import api, ir, local_run
from edgeflow import rollout as ro
from edgeflow.runtime import wire

FRAMES = 20
REPLICAS = 4

APP = """app rollout_test {{ description = "a new version reaches running inference" }}

device hub {{ tier = edge, count = {replicas}, compute = 1 TFLOPS, memory = 2 GiB }}

sensor probe {{ on = hub, rate = 10 Hz, emits = float32[1, 16] }}
actuator alarm {{ on = hub }}

model scorer {{
  source  = "scorer.onnx"
  inputs  = {{ x = float32[1, 16] }}
  {rollout}
}}

pipeline score {{ flow = probe -> scorer -> alarm }}
"""
ROLLOUT = "rollout = { waves = [0.25, 0.5, 1], health = [latency_p95 < 100 ms, " \
          "drops <= 0.2], hold = 1 s }"


def scorer(path: Path, seed: int, heavy: int = 0, input_name: str = "x") -> Path:
    """x: float32[1, 16] -> Gemm -> Softmax -> y: float32[1, 4], weights from `seed`. With
    `heavy`, a chain of that many 512 x 512 MatMul + Tanh on a tensor made from x, summed,
    times 0 and added before the Softmax: the output is the light model's, only slower."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")]
    nodes = [helper.make_node("Gemm", [input_name, "W", "b"], ["logits"])]
    last = "logits"
    if heavy:
        n = 512
        inits += [numpy_helper.from_array(np.full((16, n), 1 / 16, np.float32), "U"),
                  numpy_helper.from_array(np.ones((n, 1), np.float32), "ones"),
                  numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
                  numpy_helper.from_array(
                      (rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32), "M")]
        nodes += [helper.make_node("MatMul", ["ones", input_name], ["tiled"]),
                  helper.make_node("MatMul", ["tiled", "U"], ["h0"])]
        for i in range(heavy):
            nodes += [helper.make_node("MatMul", [f"h{i}", "M"], [f"m{i}"]),
                      helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"])]
        nodes += [helper.make_node("ReduceSum", [f"h{heavy}"], ["s"], keepdims=0),
                  helper.make_node("Mul", ["s", "zero"], ["nothing"]),
                  helper.make_node("Add", ["logits", "nothing"], ["slow_logits"])]
        last = "slow_logits"
    nodes.append(helper.make_node("Softmax", [last], ["y"], axis=1))
    graph = helper.make_graph(
        nodes, "scorer", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def app(tmp: Path, rollout: str = ROLLOUT) -> Path:
    scorer(tmp / "scorer.onnx", seed=1)
    (tmp / "app.ef").write_text(APP.format(replicas=REPLICAS, rollout=rollout))
    (tmp / "frames").mkdir(exist_ok=True)
    rng = np.random.default_rng(5)
    for i in range(FRAMES):
        np.save(tmp / "frames" / f"{i:03d}.npy", rng.standard_normal((1, 16)).astype(np.float32))
    return tmp / "app.ef"


def execute(ef: Path, seconds: float, *specs: str,
            during: Any = None) -> dict[str, Any]:
    checked = api.check_file(str(ef))
    assert checked.program is not None, checked.diagnostics
    planned = api.plan(checked.program)
    assert planned.ok and planned.plan is not None and planned.execution is not None
    if during is not None:
        threading.Thread(target=during, daemon=True).start()
    report = local_run.execute(planned.execution, planned.plan, ef, local_run.Options(
        seconds, "embedded", {"probe": ef.parent / "frames"}, ef.parent / "run", (),
        tuple(ro.parse(s) for s in specs)))
    assert json.loads((ef.parent / "run" / "run.json").read_text()) == report
    return report


def rows(out: Path) -> list[dict[str, Any]]:
    """Every sink row with its header, its output tensor and the time the model started it."""
    found = []
    for db_path in sorted((out / "sinks").glob("*.sqlite")):
        with sqlite3.connect(db_path) as db:
            for replica, frame, header, payload in db.execute(
                    "SELECT replica, frame, header, payload FROM messages ORDER BY rowid"):
                fields = json.loads(header)
                started = next(h[2] for h in fields["trace"] if h[0] == "scorer")
                found.append({"replica": replica, "frame": frame, "started": started,
                              "version": fields.get("version"),
                              "y": wire.decode(payload).tensors["y"]})
    return found


def version_of(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:ro.VERSION_CHARS]


def no_worker_left() -> bool:
    return not [p for p in psutil.Process().children(recursive=True)
                if "edgeflow" in " ".join(p.cmdline())]


# ---- real runs ---------------------------------------------------------------------------------


def test_a_good_version_goes_through_every_wave_and_every_frame_is_its_versions(
        tmp_path: Path) -> None:
    ef = app(tmp_path)
    new = scorer(tmp_path / "v2.onnx", seed=2)
    report = execute(ef, 8.0, f"scorer={new}@1s")
    (r,) = report["rollouts"]
    old = r["old_version"]
    assert r["new_version"] == version_of(new) != old
    assert r["outcome"] == "completed"
    assert [w["replicas"] for w in r["waves"]] == [[0], [0, 1], [0, 1, 2, 3]]
    assert all(w["passed"] and w["new_version_frames"] >= 8 for w in r["waves"])
    assert all(w["drops"] == 0 for w in r["waves"])
    for before, after in pairwise(r["waves"]):  # in turn, each held
        assert after["requested_s"] >= before["end_s"] >= before["start_s"] + 1.0 - 1e-3
    assert r["final_versions"] == {str(i): r["new_version"] for i in range(REPLICAS)}
    (score,) = report["pipelines"]
    assert score["lost_frames"] == 0, "no frame lost"
    assert set(score["frames_by_version"]) == {old, r["new_version"]}
    assert sum(score["frames_by_version"].values()) == score["frames"]
    for i in range(REPLICAS):
        versions = report["units"][f"scorer-r{i}"]["versions"]
        assert versions["switches"] == 1 and versions["running"] == r["new_version"]

    # every frame's output is what its recorded version computes on its input
    inputs = [np.load(p) for p in sorted((tmp_path / "frames").glob("*.npy"))]
    sessions = {version_of(f): ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
                for f in (tmp_path / "scorer.onnx", new)}
    got = rows(tmp_path / "run")
    assert len(got) == score["frames"]
    for row in got:
        x = inputs[row["frame"] % FRAMES]
        outputs = {v: s.run(None, {"x": x})[0] for v, s in sessions.items()}
        np.testing.assert_allclose(row["y"], outputs[row["version"]], rtol=1e-5, atol=1e-6)
        other = next(y for v, y in outputs.items() if v != row["version"])
        assert not np.allclose(other, outputs[row["version"]], atol=1e-3), \
            "the versions must differ for this check to mean something"
    # per replica, in the order the model ran them: old frames, then new ones, never back
    first_new = {}
    for i in range(REPLICAS):
        seq = [x["version"] for x in sorted(got, key=lambda x: x["started"])
               if x["replica"] == i]
        switch = seq.index(r["new_version"])
        assert set(seq[:switch]) <= {old} and set(seq[switch:]) == {r["new_version"]}
        first_new[i] = min(x["started"] for x in got
                           if x["replica"] == i and x["version"] == r["new_version"])
    assert first_new[0] < first_new[1] < min(first_new[2], first_new[3])
    assert "rollout scorer" in local_run.render(report)
    assert no_worker_left()


def test_a_slow_version_fails_its_first_wave_and_every_replica_goes_back(
        tmp_path: Path) -> None:
    ef = app(tmp_path)
    slow = scorer(tmp_path / "slow.onnx", seed=1, heavy=150)  # ~0.15 s a frame, at 10 Hz
    report = execute(ef, 6.0, f"scorer={slow}@1s")
    (r,) = report["rollouts"]
    assert r["outcome"] == "rolled_back"
    (wave,) = r["waves"]
    assert wave["replicas"] == [0] and wave["passed"] is False
    latency = next(x for x in wave["rules"] if x["rule"] == "latency_p95 < 100 ms")
    assert not latency["held"] and latency["measured"] > 100
    assert r["rolled_back_s"] is not None and r["rolled_back_s"] >= wave["end_s"]
    assert r["final_versions"] == {str(i): r["old_version"] for i in range(REPLICAS)}
    got = rows(tmp_path / "run")
    for i in range(REPLICAS):  # in the order the model ran them
        seq = [x["version"] for x in sorted(got, key=lambda x: x["started"])
               if x["replica"] == i]
        runs = [v for k, v in enumerate(seq) if k == 0 or seq[k - 1] != v]
        # replica 0: old (once its sensor runs), the slow version in its wave, old again
        assert runs[-2:] == ([r["new_version"], r["old_version"]] if i == 0
                             else [r["old_version"]]) and len(runs) <= 3
        assert seq[-20:] == [r["old_version"]] * 20
    assert report["units"]["scorer-r0"]["versions"]["switches"] == 2
    text = local_run.render(report)
    assert "rolled back in wave 1" in text and "latency_p95 < 100 ms measured" in text
    assert no_worker_left()


def test_a_version_the_worker_cannot_load_fails_the_wave_and_is_rolled_back(
        tmp_path: Path) -> None:
    ef = app(tmp_path)
    new = scorer(tmp_path / "v2.onnx", seed=2)
    copied = tmp_path / "run" / "models" / "versions" / f"scorer-{version_of(new)}.onnx"

    def damage() -> None:  # the copy the workers read goes bad after the run checked it
        deadline = time.monotonic() + 60
        while not copied.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)
        copied.write_bytes(b"not a model any more")

    report = execute(ef, 4.0, f"scorer={new}@1s", during=damage)
    (r,) = report["rollouts"]
    assert r["outcome"] == "rolled_back"
    (wave,) = r["waves"]
    assert wave["passed"] is False and "replica 0 could not load" in wave["failure"]
    assert "sha256" in wave["failure"]
    unit = report["units"]["scorer-r0"]
    assert unit["versions"]["load_failures"] == 1 and unit["versions"]["switches"] == 0
    assert unit["restarts"] == [], "a version that cannot load does not stop the worker"
    (score,) = report["pipelines"]
    assert score["lost_frames"] == 0
    assert score["frames_by_version"] == {r["old_version"]: score["frames"]}
    assert no_worker_left()


def test_a_model_without_rollout_gets_the_version_everywhere_at_once(tmp_path: Path) -> None:
    ef = app(tmp_path, rollout="")
    new = scorer(tmp_path / "v2.onnx", seed=2)
    report = execute(ef, 3.0, f"scorer={new}@0.5s")
    (r,) = report["rollouts"]
    assert r["outcome"] == "completed" and not r["gated"]
    (wave,) = r["waves"]
    assert wave["replicas"] == [0, 1, 2, 3] and wave["rules"] == []
    assert r["completed_s"] >= wave["switched_s"] >= wave["requested_s"]
    assert report["pipelines"][0]["lost_frames"] == 0
    assert no_worker_left()


def test_a_worker_restarted_mid_rollout_comes_back_on_the_version_it_was_asked_for(
        tmp_path: Path) -> None:
    ef = app(tmp_path, rollout="")
    new = scorer(tmp_path / "v2.onnx", seed=2)
    status = tmp_path / "run" / "config" / "scorer-r0.control.status.json"

    def kill() -> None:  # once replica 0 runs the new version
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if json.loads(status.read_text())["version"] == version_of(new):
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        time.sleep(0.5)
        for proc in psutil.Process().children(recursive=True):
            if "config/scorer-r0.json" in " ".join(proc.cmdline()):
                proc.send_signal(signal.SIGKILL)

    report = execute(ef, 5.0, f"scorer={new}@1s", during=kill)
    (r,) = report["rollouts"]
    assert r["outcome"] == "completed"
    unit = report["units"]["scorer-r0"]
    assert len(unit["restarts"]) == 1 and unit["versions"]["running"] == r["new_version"]
    # counters of both lives, the labelled ones too
    assert sum(unit["versions"]["frames_by_version"].values()) == unit["frames_out"]
    seq = [x["version"] for x in sorted(rows(tmp_path / "run"), key=lambda x: x["started"])
           if x["replica"] == 0]
    runs = [v for k, v in enumerate(seq) if k == 0 or seq[k - 1] != v]
    # it loads what it was asked for before it connects again: no old frame after the restart
    assert runs[-1:] == [r["new_version"]] and len(runs) <= 2
    assert no_worker_left()


@pytest.mark.parametrize("damage", ["not onnx", "other input", "other output", "missing",
                                    "unknown model", "too late", "same version"])
def test_a_version_that_cannot_stand_in_is_refused_before_anything_starts(
        tmp_path: Path, damage: str) -> None:
    ef = app(tmp_path)
    bad = tmp_path / "bad.onnx"
    spec = f"scorer={bad}@1s"
    if damage == "not onnx":
        bad.write_bytes(b"\x08\x07garbage that protobuf cannot read" * 10)
        expect = "not an ONNX model"
    elif damage == "other input":
        scorer(bad, seed=2, input_name="window")
        expect = "inputs are window"
    elif damage == "other output":
        model = onnx.load(tmp_path / "scorer.onnx")
        model.graph.output[0].name = "probabilities"
        model.graph.node[-1].output[0] = "probabilities"
        onnx.save(model, bad)
        expect = "its outputs are probabilities"
    elif damage == "missing":
        expect = "no such file"
    elif damage == "unknown model":
        scorer(bad, seed=2)
        spec = f"detector={bad}"
        expect = "no model `detector`"
    elif damage == "too late":
        scorer(bad, seed=2)
        spec = f"scorer={bad}@30s"
        expect = "the run lasts"
    else:
        bad.write_bytes((tmp_path / "scorer.onnx").read_bytes())
        expect = "already runs"
    with pytest.raises(local_run.RunError, match=expect):
        execute(ef, 3.0, spec)
    if damage != "same version":  # known only once the run's models are written
        assert not (tmp_path / "run").exists(), "nothing was started or written"
    assert no_worker_left()


# ---- the option --------------------------------------------------------------------------------


def test_parse_reads_model_file_and_time() -> None:
    assert ro.parse("m=v2.onnx") == ro.RolloutSpec("m", Path("v2.onnx"), 2.0)
    assert ro.parse("m=dir/v2.onnx@5s").start_s == 5.0
    assert ro.parse("m = a/b.onnx@500ms") == ro.RolloutSpec("m", Path("a/b.onnx"), 0.5)
    assert ro.parse("m=at@home/v.onnx").file == Path("at@home/v.onnx")
    assert ro.parse("m=v.onnx@0s").start_s == 0.0


@pytest.mark.parametrize("text", ["m", "=v.onnx", "m=", "9m=v.onnx", "m=v.onnx@soon",
                                  "m=v.onnx@-1s", "m=@5s", "m=v.onnx@5 Mbps"])
def test_parse_refuses_bad_text_with_a_reason(text: str) -> None:
    with pytest.raises(ro.RolloutSpecError) as e:
        ro.parse(text)
    assert isinstance(e.value, ValueError) and str(e.value)


# ---- waves and health, alone -------------------------------------------------------------------


def test_waves_are_the_first_ceil_share_replicas_in_order() -> None:
    rollout = ir.Rollout(waves=(0.25, 0.5, 1.0))
    waves = ro.plan_waves(rollout, list(range(16)))
    assert [len(w.replicas) for w in waves] == [4, 8, 16]
    assert waves[1].added == tuple(range(4, 8))
    assert [w.replicas for w in ro.plan_waves(rollout, [3, 1, 2, 0])] == \
        [(0,), (0, 1), (0, 1, 2, 3)]
    assert ro.wave_size(0.3, 10) == 3 and ro.wave_size(0.01, 3) == 1
    (only,) = ro.plan_waves(None, [0, 1, 2])
    assert only.replicas == (0, 1, 2) and only.share == 1.0
    tiny = ro.plan_waves(ir.Rollout(waves=(0.1, 0.2, 1.0)), [0, 1])
    assert [w.added for w in tiny] == [(0,), (), (1,)]  # held and judged again


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 63), min_size=1, max_size=40, unique=True),
       st.floats(0.001, 1.0), st.floats(0.001, 1.0))
def test_membership_grows_with_the_share(replicas: list[int], a: float, b: float) -> None:
    low, high = sorted((a, b))
    small, large = ro.members(low, replicas), ro.members(high, replicas)
    assert set(small) <= set(large) and large[:len(small)] == small
    assert 1 <= len(small) and len(large) <= len(replicas)
    assert len(small) >= low * len(replicas) - 1e-6 > len(small) - 1 - 1e-6
    assert ro.members(1.0, replicas) == tuple(sorted(replicas))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.01, 0.99), max_size=5).map(lambda s: sorted(set(s))),
       st.integers(1, 40))
def test_the_last_wave_holds_every_replica(shares: list[float], count: int) -> None:
    waves = ro.plan_waves(ir.Rollout(waves=(*shares, 1.0)), list(range(count)))
    assert waves[-1].replicas == tuple(range(count))
    assert sorted(r for w in waves for r in w.added) == list(range(count))
    for before, after in pairwise(waves):
        assert set(before.replicas) <= set(after.replicas)


def _arrivals(replicas: range, frames: range, t0: float = 100.0, rate: float = 10.0,
              latency: float = 0.01, version: str = "new") -> list[ro.Arrival]:
    return [ro.Arrival("p", r, n, t0 + n / rate + 0.001, t0 + n / rate + 0.001 + latency,
                       version) for r in replicas for n in frames]


def test_measure_counts_the_frames_due_in_the_window_and_their_latency() -> None:
    got = _arrivals(range(2), range(50))
    figures = ro.measure(got, {"p": 10.0}, [0, 1], "new", 102.0, 103.0, 0.0)
    assert figures.due == 20 and figures.arrived == 20 and figures.frames == 20
    assert figures.drops == 0 and figures.latency_p95_s == pytest.approx(0.01)
    lost = [a for a in got if not (a.replica == 1 and 20 <= a.frame < 25)]
    assert ro.measure(lost, {"p": 10.0}, [0, 1], "new", 102.0, 103.0, 0.0).drops == 0.25
    # a replica none of whose frames arrived: every frame due is a drop
    figures = ro.measure(got, {"p": 10.0}, [0, 1, 2], "new", 102.0, 103.0, 100.0)
    assert figures.due == 30 and figures.drops == pytest.approx(1 / 3)
    # frames made by another version arrive, but say nothing of the new one's latency
    old = _arrivals(range(1), range(50), version="old")
    assert ro.measure(old, {"p": 10.0}, [0], "new", 102.0, 103.0, 0.0).frames == 0


def test_judge_holds_each_rule_as_written_and_nothing_measured_fails() -> None:
    figures = ro.Figures(10, 9, 9, 0.02, 0.05, 0.08, 0.1)
    rules = (ir.Health(metric="latency_p95", op="<", bound=0.1),
             ir.Health(metric="drops", op="<=", bound=0.1))
    assert ro.judge(rules, figures).passed
    assert not ro.judge((ir.Health(metric="drops", op="<", bound=0.1),), figures).passed
    assert not ro.judge((ir.Health(metric="latency_p99", op="<", bound=0.05),), figures).passed
    empty = ro.Figures(0, 0, 0, None, None, None, None)
    assert not ro.judge(rules, empty).passed
    assert ro.judge((), empty).passed
    assert ro.rule_text(rules[0]) == "latency_p95 < 100 ms"


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 2), st.floats(0, 2), st.sampled_from(["<", "<=", ">", ">="]))
def test_a_rule_holds_exactly_when_its_comparison_does(value: float, bound: float,
                                                      op: str) -> None:
    figures = ro.Figures(1, 1, 1, value, value, value, value / 2)
    verdict = ro.judge((ir.Health(metric="latency_p50", op=op, bound=bound),), figures)  # type: ignore[arg-type]
    expected = {"<": value < bound, "<=": value <= bound, ">": value > bound,
                ">=": value >= bound}[op]
    assert verdict.passed is expected and verdict.rules[0].measured == value


# ---- the controller, step by step --------------------------------------------------------------


def _controller(rules: tuple[ir.Health, ...] = (), gate: bool = True) -> ro.Controller:
    rollout = ir.Rollout(waves=(0.5, 1.0), health=rules, hold_s=1.0)
    return ro.Controller("m", "old", "new", ro.plan_waves(rollout if gate else None, [0, 1]),
                         rules, 1.0 if gate else 0.0, start_at=10.0, grace_s=0.5, gate=gate)


def _answer(c: ro.Controller, at: float, error: str | None = None) -> dict[int, ro.Status]:
    """Every replica did what it was last asked (or failed to, with `error`)."""
    return {r: ro.Status(("old" if error else v), req, at, error)
            for r, (v, req) in c.desired.items()}


def test_the_controller_goes_wave_by_wave_and_completes() -> None:
    good = ro.Figures(10, 10, 10, 0.01, 0.01, 0.01, 0.0)
    c = _controller((ir.Health(metric="latency_p95", op="<", bound=0.1),))
    assert c.step(9.0, {}, lambda *_: good) == [] and c.phase == "waiting"
    assert c.step(10.0, {}, lambda *_: good) == [0] and c.desired[0][0] == "new"
    assert c.step(10.1, {}, lambda *_: good) == []  # nobody answered yet
    c.step(10.2, _answer(c, 10.15), lambda *_: good)
    assert c.phase == "holding" and c.records[0].window == (10.15, 11.15)
    assert c.step(11.5, {}, lambda *_: good) == []  # the grace is not over
    windows: list[tuple[float, float]] = []
    assert c.step(11.7, {}, lambda w, a, b: windows.append((a, b)) or good) == [1]
    assert windows == [(10.15, 11.15)]
    c.step(11.8, _answer(c, 11.75), lambda *_: good)
    c.step(13.3, {}, lambda *_: good)
    assert c.phase == "done" and c.outcome == "completed" and c.completed == 13.3
    report = c.report(t0=10.0)
    assert [w["passed"] for w in report["waves"]] == [True, True]
    assert report["final_versions"] == {"0": "new", "1": "new"}


def test_a_failed_rule_or_a_load_failure_rolls_every_replica_back() -> None:
    slow = ro.Figures(10, 10, 10, 0.5, 0.9, 1.0, 0.0)
    c = _controller((ir.Health(metric="latency_p95", op="<", bound=0.1),))
    c.step(10.0, {}, lambda *_: slow)
    c.step(10.2, _answer(c, 10.1), lambda *_: slow)
    assert c.step(11.7, {}, lambda *_: slow) == [0] and c.desired[0][0] == "old"
    assert c.phase == "rolling_back"
    c.step(11.8, _answer(c, 11.75), lambda *_: slow)
    assert c.outcome == "rolled_back" and c.rolled_back == 11.8
    assert c.report(10.0)["waves"][0]["rules"][0] == {
        "rule": "latency_p95 < 100 ms", "measured": 900.0, "held": False}

    c = _controller()
    c.step(10.0, {}, lambda *_: slow)
    c.step(10.3, _answer(c, 10.3, error="sha256 differs"), lambda *_: slow)
    assert c.phase == "rolling_back" and "sha256 differs" in (c.records[0].failure or "")
    c.step(10.4, _answer(c, 10.4), lambda *_: slow)
    assert c.outcome == "rolled_back" and c.records[0].passed is False


def test_a_replica_that_never_answers_fails_the_wave_and_a_run_that_ends_leaves_it_unfinished(
        ) -> None:
    c = _controller()
    c.step(10.0, {}, lambda *_: pytest.fail("nothing to measure"))
    c.step(10.0 + ro.SWITCH_TIMEOUT_S + 1, {}, lambda *_: pytest.fail("nothing to measure"))
    assert c.phase == "rolling_back" and "did not switch" in (c.records[0].failure or "")
    c.finish()
    assert c.outcome == "rolled_back" and c.report(0)["rolled_back_s"] is None

    c = _controller()
    c.step(10.0, {}, lambda *_: pytest.fail("nothing to measure"))
    c.finish()
    assert c.outcome == "unfinished" and c.report(0)["waves"][0]["passed"] is None


def test_without_rollout_one_wave_completes_when_every_replica_switched() -> None:
    c = _controller(gate=False)
    assert c.step(10.0, {}, lambda *_: pytest.fail("no gate, no measure")) == [0, 1]
    c.step(10.3, _answer(c, 10.25), lambda *_: pytest.fail("no gate, no measure"))
    assert c.outcome == "completed" and c.completed == 10.3
    assert c.records[0].switched == 10.25


def test_the_summary_says_when_the_run_ended_mid_rollout() -> None:
    c = _controller((ir.Health(metric="latency_p95", op="<", bound=0.1),))
    c.step(10.0, {}, lambda *_: pytest.fail("nothing to measure"))
    c.step(10.2, _answer(c, 10.1), lambda *_: pytest.fail("nothing to measure yet"))
    c.finish()
    entry = {**c.report(t0=8.0), "measured_on": ["p"]}
    assert entry["outcome"] == "unfinished" and entry["waves"][0]["start_s"] == 2.1
    lines = local_run.render_rollouts({"rollouts": [entry], "pipelines": [
        {"name": "p", "frames_by_version": {"old": 30, "new": 2}}]})
    assert "unfinished: the run ended in wave 1 of 2" in lines[0]
    assert "not judged" in lines[1] and lines[2].endswith("old 30, new 2")


def test_a_message_carries_its_version_and_a_bad_one_is_refused() -> None:
    message = wire.Message("a", "m", 0, 7, 1.0, 1, {"y": np.zeros((1, 4), np.float32)},
                           version="0123456789ab")
    assert wire.decode(wire.encode(message)).version == "0123456789ab"
    plain = wire.encode(wire.Message("a", "m", 0, 7, 1.0, 1, {}))
    assert b"version" not in plain and wire.decode(plain).version is None
    bad = wire.encode(message).replace(b'"version":"0123456789ab"', b'"version":12345678901234')
    with pytest.raises(wire.WireError, match="version"):
        wire.decode(bad)
