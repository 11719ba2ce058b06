"""The runtime end to end: `edgeflow run` on the embedded broker and on mosquitto, a split model
and an operator with a real `impl`, faults (a killed worker, SIGTERM, a tampered model), and the
local broker configs against the bundle's."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import psutil
import pytest

from edgeflow import api, local_run
from edgeflow.emit.mqtt import render_conf
from edgeflow.plan import Part
from edgeflow.runtime import wire
from edgeflow.runtime.drivers import frames
from edgeflow.unit_config import DriverConfig
from tests.conftest import ROOT

FIXTURE = ROOT / "tests" / "fixtures" / "runtime"
ENGINES = ["embedded", pytest.param("mosquitto", marks=pytest.mark.skipif(
    shutil.which("mosquitto") is None and not os.environ.get("CI"),
    reason="mosquitto is not installed (.ci/run installs it)"))]


def _split_app(folder: Path) -> Path:
    app = folder / "app"
    (app / "models").mkdir(parents=True)
    shutil.copy(FIXTURE / "split_app.ef", app / "app.ef")
    shutil.copy(FIXTURE / "ops.py", app / "ops.py")
    shutil.copy(ROOT / "examples" / "models" / "vitals.onnx", app / "models" / "vitals.onnx")
    for p in (app, app / "models"):
        p.chmod(0o755)
    return app / "app.ef"


def _run(ef: Path, out: Path, engine: str, seconds: float,
         during: Any = None) -> dict[str, Any]:
    checked = api.check_file(ef)
    assert checked.program is not None, checked.diagnostics
    planned = api.plan(checked.program)
    assert planned.plan is not None and planned.execution is not None and planned.plan.feasible
    if during is not None:
        threading.Thread(target=during, daemon=True).start()
    report = local_run.execute(planned.execution, planned.plan, ef,
                               local_run.Options(seconds, engine, {}, out))
    assert json.loads((out / "run.json").read_text()) == report
    report["_plan"] = planned.plan
    return report


def _rows(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as c:
        return list(c.execute("SELECT replica, frame, payload FROM messages ORDER BY rowid"))


@pytest.mark.parametrize("engine", ENGINES)
def test_a_split_model_and_a_python_operator_run_and_compute_what_the_model_computes(
        folder: Path, engine: str) -> None:
    ef = _split_app(folder)
    report = _run(ef, folder / "out", engine, 3.0)
    plan = report.pop("_plan")
    halves = {u.part: u.device for u in plan.units if u.step == "risk" and u.replica == 0}
    assert halves[Part.HEAD] != halves[Part.TAIL], "the plan must split the model"
    rows = _rows(folder / "out" / "sinks" / "records.sqlite")
    for replica in (0, 1):
        assert sum(1 for r in rows if r[0] == replica) >= 10, "every replica reaches the store"
    # the same frames through the operator and the whole model, in-process
    sys.path.insert(0, str(ef.parent))
    try:
        import ops  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(ef.parent))
    session = ort.InferenceSession(str(ef.parent / "models" / "vitals.onnx"))
    outputs = []
    for replica, frame, payload in rows:
        config = DriverConfig.model_validate({
            "app": "split_check", "name": "vitals", "replica": replica, "kind": "sensor",
            "device": "x", "metrics_port": 1, "rate_hz": 5, "topics": [], "emits": "float32[1, 6, 250]",
            "broker": {"host": "h", "port": 1, "client_id": "c",
                       "tls": {"ca": "a", "cert": "b", "key": "c"}}})
        source = frames(config)
        for _ in range(frame):
            next(source)
        expected = session.run(None, {"window": ops.bandpass(next(source))})
        got = list(wire.decode(payload).tensors.values())
        assert len(got) == len(expected)
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)
        outputs.append(got[0].tobytes())
    assert len(set(outputs)) > len(outputs) // 2, "outputs differ from frame to frame"
    alert = next(p for p in report["pipelines"] if p["name"] == "alert")
    for key in ("p50_ms", "p95_ms", "p99_ms", "predicted_ms", "hops", "slo", "frames",
                "lost_frames", "throughput_hz_per_replica", "replicas"):
        assert key in alert
    assert [h["step"] for h in alert["hops"]] == ["vitals", "bandpass", "risk.head",
                                                  "risk.tail", "records"]
    assert all(u["frames_out"] > 0 and not u["drops"] for u in report["units"].values())


def test_the_reference_example_runs_and_reports_every_field(folder: Path) -> None:
    report = _run(ROOT / "examples" / "reference.ef", folder / "out", "embedded", 2.0)
    report.pop("_plan")
    assert {p["name"] for p in report["pipelines"]} == {"inspect", "audit"}
    for p in report["pipelines"]:
        assert p["predicted_ms"] is not None and "latency_ms" in p["slo"]
    assert set(report) >= {"app", "broker", "duration_s", "pipelines", "units", "drivers",
                           "emulation"}
    # normalize, the detector's head and tail, blur_faces per line
    assert len(report["units"]) == 4 * 4
    assert sum(u["frames_out"] for u in report["units"].values()) > 0


def test_a_killed_worker_is_restarted_and_the_gap_reported(folder: Path) -> None:
    ef = _split_app(folder)

    kill = _kill_when_running("config/bandpass-r0.json", 1.5)  # its worker, mid-run
    report = _run(ef, folder / "out", "embedded", 4.0, during=kill)
    report.pop("_plan")
    restarts = report["units"]["bandpass-r0"]["restarts"]
    assert len(restarts) == 1 and restarts[0]["exit_status"] == -signal.SIGKILL
    assert restarts[0]["downtime_s"] > 0
    rows = _rows(folder / "out" / "sinks" / "records.sqlite")
    assert max(frame for replica, frame, _ in rows if replica == 0) >= 15, \
        "replica 0 delivers again after the restart"
    assert not any(_children())


def _children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True)
            if "edgeflow" in " ".join(p.cmdline())]


def _unit_json(folder: Path) -> Path:
    """A unit.json of the split app as `edgeflow run` writes it, without running anything."""
    ef = _split_app(folder)
    checked = api.check_file(ef)
    assert checked.program is not None
    planned = api.plan(checked.program)
    assert planned.plan is not None and planned.execution is not None
    out = folder / "out"
    local_run.prepare_output(out)
    dep = local_run.Deployment(planned.execution, planned.plan, out, "embedded", {}, ef.parent)
    dep.write_pki()
    return dep.unit_configs(dep.write_models())["risk-head-r0"]


def test_sigterm_ends_a_worker_within_5_s_with_status_0(folder: Path) -> None:
    config = _unit_json(folder)  # its broker is not running: the worker keeps retrying
    worker = subprocess.Popen([sys.executable, "-m", "edgeflow.runtime", "--config",
                               str(config), "--metrics-host", "127.0.0.1"],
                              stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    assert worker.poll() is None
    start = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(5) == 0 and time.monotonic() - start < 5
    assert "Traceback" not in (worker.stderr.read() if worker.stderr else "")


@pytest.mark.parametrize("damage", ["tampered model", "broken unit.json", "missing impl"])
def test_a_worker_that_cannot_start_says_why_and_exits_2(folder: Path, damage: str) -> None:
    config = _unit_json(folder)
    data = json.loads(config.read_text())
    if damage == "tampered model":
        model = Path(data["model"]["file"])
        model.write_bytes(model.read_bytes() + b"\0")
        expect = "sha256"
    elif damage == "broken unit.json":
        config.write_text('{"app": 1}')
        expect = "not a valid unit.json"
    else:
        config = config.with_name("bandpass-r0.json")
        data = json.loads(config.read_text())
        data["operator"]["impl"] = "no_such_module:f"
        config.write_text(json.dumps(data))
        expect = "No module named"
    proc = subprocess.run([sys.executable, "-m", "edgeflow.runtime", "--config", str(config)], check=False,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and expect in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_local_mosquitto_configs_differ_from_the_bundles_only_in_ports_paths_and_hosts(
        folder: Path) -> None:
    checked = api.check_file(ROOT / "examples" / "reference.ef")
    assert checked.program is not None
    planned = api.plan(checked.program)
    assert planned.plan is not None and planned.execution is not None
    dep = local_run.Deployment(planned.execution, planned.plan, folder, "mosquitto", {}, folder)
    dep.broker_procs()
    substituted = {"listener", "cafile", "certfile", "keyfile", "acl_file",
                   "persistence_location", "address", "bridge_cafile", "bridge_certfile",
                   "bridge_keyfile"}
    for broker in dep.bundle.brokers.values():
        bundled = render_conf(dep.bundle, broker).splitlines()
        local = dep.mosquitto_conf(broker).splitlines()
        assert len(bundled) == len(local)
        for a, b in zip(bundled, local, strict=True):
            if a != b:
                assert a.split()[0] == b.split()[0] and a.split()[0] in substituted, (a, b)


def test_check_finds_an_operators_module_without_importing_it(tmp_path: Path) -> None:
    pkg = tmp_path / "evil"
    pkg.mkdir()
    marker = tmp_path / "imported"
    (pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (pkg / "ops.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    text = (FIXTURE / "split_app.ef").read_text().replace('"ops:bandpass"', '"evil.ops:f"')
    (tmp_path / "models").mkdir()
    shutil.copy(ROOT / "examples" / "models" / "vitals.onnx", tmp_path / "models")
    (tmp_path / "app.ef").write_text(text)
    result = api.check_file(tmp_path / "app.ef")
    assert result.program is not None and "W0608" not in {d.code for d in result.diagnostics}
    missing = api.check_text(text.replace("evil.ops", "evil.nothing"), str(tmp_path / "a.ef"))
    assert "W0608" in {d.code for d in missing.diagnostics}
    assert not marker.exists()


def test_run_refuses_a_folder_it_did_not_write(folder: Path) -> None:
    out = folder / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    proc = subprocess.run([sys.executable, "-m", "edgeflow", "run", "examples/reference.ef",  # noqa: PLW1510
                           "-o", str(out)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 1 and "error[E1101]" in proc.stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    from tests.conftest import assert_golden
    assert_golden(ROOT / "tests" / "fixtures" / "plans" / "E1101_run_refused.out",
                  proc.stderr.replace(str(out), "OUT"))


def _kill_when_running(pattern: str, after_s: float) -> Any:
    """A function that SIGKILLs the first process whose command line holds `pattern`, `after_s`
    seconds after it appears."""
    def kill() -> None:
        deadline = time.time() + 60
        while time.time() < deadline:
            for proc in psutil.process_iter(["cmdline"]):
                if pattern in " ".join(proc.info["cmdline"] or []):
                    time.sleep(after_s)
                    proc.send_signal(signal.SIGKILL)
                    return
            time.sleep(0.1)
    return kill


@pytest.mark.parametrize("engine", ENGINES)
def test_a_broker_that_dies_mid_run_is_restarted_and_reconnected_to(
        folder: Path, engine: str) -> None:
    ef = _split_app(folder)
    pattern = "broker-ward-server/mosquitto.conf" if engine == "mosquitto" else \
        "edgeflow.runtime.embedded"
    # mosquitto's bridges dial again 5 s after they lose their peer (restart_timeout 5 60)
    seconds = 14.0 if engine == "mosquitto" else 8.0
    report = _run(ef, folder / "out", engine, seconds, during=_kill_when_running(pattern, 3.0))
    report.pop("_plan")
    restarts = [r for b in report["brokers_and_links"].values() for r in b["restarts"]]
    assert len(restarts) == 1 and restarts[0]["downtime_s"] > 0
    back = restarts[0]["at_s"] + restarts[0]["downtime_s"]
    rows = _rows(folder / "out" / "sinks" / "records.sqlite")
    for replica in (0, 1):  # frames sent (5 Hz) well after the broker came back arrive
        latest = max(frame for r, frame, _ in rows if r == replica)
        assert latest >= 5 * (back + 1), (replica, latest, back)


def test_overload_is_counted_drops_and_flat_memory(folder: Path) -> None:
    app = folder / "slow"
    app.mkdir()
    app.chmod(0o755)
    (app / "slow_ops.py").write_text(
        "import time\n\n\ndef slow(x):\n    time.sleep(0.05)\n    return x\n")
    (app / "app.ef").write_text(
        'app overload { objective = minimize(latency) }\n'
        "device box { tier = edge, compute = 1 TFLOPS, memory = 4 GiB }\n"
        "sensor cam { on = box, rate = 100 Hz, emits = float32[1, 3, 128, 128] }\n"
        'operator slow { work = 1 MFLOP, emits = float32[1, 3, 128, 128], impl = "slow_ops:slow" }\n'
        "store out { on = box }\n"
        "pipeline p { flow = cam -> slow -> out }\n")
    rss: list[float] = []

    def sample() -> None:
        deadline = time.time() + 60
        while time.time() < deadline:
            for proc in psutil.process_iter(["cmdline"]):
                if "slow-r0.json" in " ".join(proc.info["cmdline"] or []):
                    time.sleep(2.0)  # past start-up
                    for _ in range(8):
                        rss.append(proc.memory_info().rss / 2**20)
                        time.sleep(0.5)
                    return
            time.sleep(0.1)

    report = _run(app / "app.ef", folder / "out", "embedded", 7.0, during=sample)
    report.pop("_plan")
    unit = report["units"]["slow-r0"]
    assert unit["drops"].get("overload", 0) > 100, unit  # ~100 Hz offered, ~20 Hz served
    assert unit["frames_out"] < unit["frames_in"]
    assert len(rss) == 8 and max(rss) - rss[0] < 16, rss  # 16 queued frames are 3 MiB


def test_run_replays_recorded_frames_through_the_cli(folder: Path) -> None:
    ef = _split_app(folder)
    frames_dir = folder / "frames"
    frames_dir.mkdir()
    recorded = [np.random.default_rng(i).standard_normal((1, 6, 250)).astype(np.float32)
                for i in range(3)]
    for i, frame in enumerate(recorded):
        np.save(frames_dir / f"{i:03d}.npy", frame)
    proc = subprocess.run(  # noqa: PLW1510
        [sys.executable, "-m", "edgeflow", "run", str(ef), "--duration", "2s", "--replay",
         f"vitals={frames_dir}", "-o", str(folder / "out"), "--json"],
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    envelope = json.loads(proc.stdout)
    assert envelope["command"] == "run" and envelope["ok"]
    assert envelope["result"] == json.loads((folder / "out" / "run.json").read_text())
    sys.path.insert(0, str(ef.parent))
    try:
        import ops
    finally:
        sys.path.remove(str(ef.parent))
    session = ort.InferenceSession(str(ef.parent / "models" / "vitals.onnx"))
    expected = [session.run(None, {"window": ops.bandpass(f)})[0] for f in recorded]
    rows = _rows(folder / "out" / "sinks" / "records.sqlite")
    assert len(rows) >= 6
    for _, frame, payload in rows:  # frame n is file n mod 3, looped
        got = next(iter(wire.decode(payload).tensors.values()))
        np.testing.assert_allclose(got, expected[frame % 3], rtol=1e-4, atol=1e-4)
    bad = subprocess.run(  # noqa: PLW1510
        [sys.executable, "-m", "edgeflow", "run", str(ef), "--replay", "nosuch=" + str(frames_dir)],
        capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "names no sensor" in bad.stderr
