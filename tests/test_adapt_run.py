"""Run-time adaptation under `edgeflow run --link` (real workers, brokers and link emulation on
127.0.0.1): a bandwidth step makes the head switch to the cut the table predicts, not before the
hold time, and every frame's output across the switch equals the whole model's; an outage with
`local` keeps every frame flowing at the edge; with `buffer` nothing is lost and what arrives
after the reconnect is in order."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgeflow import api, local_run
from edgeflow.link_schedule import parse
from edgeflow.runtime import wire
from tests.conftest import ROOT

MODEL = ROOT / "examples" / "models" / "bottleneck_detector.onnx"
FRAMES = 16
HOLD_S = 1.0

APP = """app adaptive_test {{ description = "adaptation under a changing link" }}

device cam_box {{ tier = edge, compute = 1 GFLOPS, memory = 2 GiB }}
device server {{ tier = fog, compute = 20 TFLOPS, memory = 32 GiB }}
link cam_box <-> server {{ bandwidth = 100 Mbps, latency = 1 ms }}

sensor camera {{ on = cam_box, rate = 10 Hz, emits = float32[1, 3, 64, 64] }}
actuator light {{ on = cam_box }}

model detector {{
  source        = "bottleneck_detector.onnx"
  inputs        = {{ images = float32[1, 3, 64, 64] }}
  adapt         = {{ bandwidth = [500 Kbps, 100 Mbps], margin = 0.1, hold = {hold} s }}
  on_disconnect = {on_disconnect}
}}

pipeline watch {{ flow = camera -> detector -> light }}
"""


def run_app(tmp: Path, on_disconnect: str, link: str, seconds: float) -> tuple[
        dict, list[dict], list[np.ndarray]]:
    """Run the app with `link` changing; run.json, the sink's rows (payload decoded) and the
    frames sent."""
    shutil.copy(MODEL, tmp / MODEL.name)
    (tmp / "app.ef").write_text(APP.format(hold=HOLD_S, on_disconnect=on_disconnect))
    rng = np.random.default_rng(3)
    frames = [rng.random((1, 3, 64, 64), dtype=np.float32) for _ in range(FRAMES)]
    (tmp / "frames").mkdir()
    for i, f in enumerate(frames):
        np.save(tmp / "frames" / f"{i:03d}.npy", f)
    checked = api.check_file(str(tmp / "app.ef"))
    assert checked.program is not None, checked.diagnostics
    planned = api.plan(checked.program)
    assert planned.ok and planned.plan is not None and planned.execution is not None
    assert planned.plan.splits, "the test app must be split"
    report = local_run.execute(planned.execution, planned.plan, tmp / "app.ef", local_run.Options(
        seconds, "embedded", {"camera": tmp / "frames"}, tmp / "run", (parse(link),)))
    rows = [r for r in local_run.sink_rows(tmp / "run")]
    import sqlite3

    db = sqlite3.connect(tmp / "run" / "sinks" / "light.sqlite")
    payloads = [p for (p,) in db.execute("SELECT payload FROM messages ORDER BY rowid")]
    db.close()
    for row, payload in zip(rows, payloads, strict=True):
        row["output"] = next(iter(wire.decode(payload).tensors.values()))
    return report, rows, frames


@pytest.fixture(scope="module")
def whole() -> ort.InferenceSession:
    return ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])


def test_a_bandwidth_step_switches_the_cut_after_the_hold_and_loses_nothing(
        tmp_path: Path, whole: ort.InferenceSession) -> None:
    report, rows, frames = run_app(tmp_path, "local",
                                   "cam_box<->server=bandwidth:100Mbps@0s,1Mbps@4s", 10.0)
    (watch,) = report["pipelines"]
    assert watch["lost_frames"] == 0 and watch["frames"] >= 90
    head = report["units"]["detector-head-r0"]["adaptation"]
    assert head["cut_switches"] == 1 and head["outages"] == 0
    t0 = min(r["captured"] for r in rows)
    first_local = min((r for r in rows if r["unit"] == "detector.head"),
                      key=lambda r: r["captured"])
    # the step is at 4 s: the head may switch only once the gain has held for HOLD_S
    assert first_local["captured"] - t0 >= 4.0 + HOLD_S - 0.2
    assert all(r["unit"] == "detector.tail" for r in rows if r["captured"] - t0 < 4.0)
    assert len({r["cut"] for r in rows}) == 2
    for r in rows:  # every output, split or whole, is the whole model's on its frame
        expected = whole.run(None, {"images": frames[r["frame"] % FRAMES]})[0]
        np.testing.assert_allclose(r["output"], expected, atol=1e-4, rtol=1e-4)


def test_an_outage_with_local_keeps_every_frame_flowing_at_the_edge(tmp_path: Path) -> None:
    report, rows, _ = run_app(tmp_path, "local",
                              "cam_box<->server=bandwidth:100Mbps@0s,down@3s,100Mbps@6s", 9.0)
    (watch,) = report["pipelines"]
    assert watch["lost_frames"] == 0
    head = report["units"]["detector-head-r0"]["adaptation"]
    assert head["outages"] == 1
    t0 = min(r["captured"] for r in rows)
    # once the outage is seen (feedback missing for a second), frames go on at the edge: each
    # frame captured in the outage after that arrives within the outage
    during = [r for r in rows if 4.5 <= r["captured"] - t0 < 5.8]
    assert len(during) >= 10
    assert all(r["unit"] == "detector.head" and r["received"] - t0 < 6.0 for r in during)
    (sched,) = report["link_schedules"]
    assert sched["down_s"] == pytest.approx(3.0, abs=0.3)


def test_an_outage_with_buffer_loses_nothing_and_delivers_in_order(tmp_path: Path) -> None:
    report, rows, _ = run_app(tmp_path, "buffer(frames = 64)",
                              "cam_box<->server=bandwidth:100Mbps@0s,down@3s,100Mbps@6s", 9.0)
    (watch,) = report["pipelines"]
    assert watch["lost_frames"] == 0
    assert report["units"]["detector-head-r0"]["adaptation"]["outages"] == 1
    t0 = min(r["captured"] for r in rows)
    held = [r for r in rows if 3.5 <= r["captured"] - t0 < 5.5]  # made while the link was down
    assert len(held) >= 15
    reconnect = min(r["received"] for r in held)
    assert reconnect - t0 > 5.5
    after = [r for r in rows if r["received"] >= reconnect]
    assert len(after) >= 45
    frames = [r["frame"] for r in after]
    assert frames == sorted(frames)
    # nothing it held misleads the head about the link: it keeps its cut
    assert not any(r["unit"] == "detector.head" for r in rows)
    assert report["units"]["detector-head-r0"]["adaptation"]["cut_switches"] == 0
