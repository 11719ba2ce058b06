"""The compiled decision tables (edgeflow/adapt.py): equal to `edgeflow split --sweep` for the
same model and devices, optimal at every bandwidth of the range against a brute force over every
cut, carried into plan.json, report.md, the bundle's model files and each half's unit.json; and
the plan-time diagnostics (W0616, E0617)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeflow import api
from edgeflow.cost import analysed, read_model
from edgeflow.plan import cut_id
from edgeflow.unit_config import UnitConfig
from tests.conftest import FIXTURES, ROOT, assert_golden

REFERENCE = ROOT / "examples" / "reference.ef"


@pytest.fixture(scope="module")
def planned() -> api.PlanResult:
    program = api.check_file(str(REFERENCE)).program
    assert program is not None
    result = api.plan(program)
    assert result.ok and result.plan is not None
    return result


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, EDGEFLOW_MODEL_ROOTS=str(ROOT / "examples" / "models"))
    return subprocess.run([sys.executable, "-m", "edgeflow", *args], check=False, cwd=ROOT,
                          env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_reference_detector_has_two_cuts_inside_its_range(planned: api.PlanResult) -> None:
    plan = planned.plan
    assert plan is not None
    tables = plan.adaptations
    assert [a.replica for a in tables] == [0, 1, 2, 3]
    for a in tables:
        assert a.low_bps == 20e6 and a.high_bps == 1e9
        assert len({b.cut for b in a.bands}) >= 2
        assert all(a.low_bps <= b.from_bps < b.to_bps <= a.high_bps for b in a.bands)
        assert a.start == cut_id(next(s.cut for s in plan.splits if s.replica == a.replica))
        assert a.on_disconnect == "local" and a.fallback is not None and a.bypass


def test_the_table_is_what_split_sweep_prints(planned: api.PlanResult) -> None:
    plan = planned.plan
    assert plan is not None
    a = plan.adaptations[0]
    proc = cli("split", "examples/models/bottleneck_detector.onnx",
               "--input", "images=float32[1,3,320,320]", "--edge-compute", "0.1TFLOPS",
               "--cloud-compute", "20TFLOPS", "--bandwidth", "1Gbps", "--latency", "0.5ms",
               "--sweep", "bandwidth=20Mbps..1Gbps", "--json")
    assert proc.returncode == 0, proc.stderr
    sweep = json.loads(proc.stdout)["result"]["sweep"]
    cuts = {c.id: c for c in a.cuts}
    assert [(b.from_bps, b.to_bps, list(cuts[b.cut].cut), cuts[b.cut].transfer_bytes)
            for b in a.bands] == [(r["from_bps"], r["to_bps"], r["cut"], r["transfer_bytes"])
                                  for r in sweep]


@settings(max_examples=60, deadline=None)
@given(fraction=st.floats(0.0, 1.0))
def test_each_band_holds_the_fastest_of_every_cut(fraction: float,
                                                  planned: api.PlanResult) -> None:
    """Brute force: every cut of the model enumerated, timed independently of the sweep
    (work / compute, bytes / bandwidth, the link's latency), at a bandwidth of the range."""
    plan, execution = planned.plan, planned.execution
    assert plan is not None and execution is not None
    a = plan.adaptations[0]
    assert a.low_bps is not None and a.high_bps is not None
    bw = a.low_bps * (a.high_bps / a.low_bps) ** fraction
    model = execution.program.models["detector"]
    _, problem = analysed(model, read_model(model))
    edge = execution.device(a.head_device).compute_flops
    cloud = execution.device(a.tail_device).compute_flops

    def seconds(head_work: int, tail_work: int, nbytes: int) -> float:
        return head_work / edge + tail_work / cloud + 8 * nbytes / bw + a.latency_s

    best = min(seconds(c.head_work, c.tail_work, c.transfer_bytes) for c in problem.enumerate())
    band = next(b for b in a.bands if b.from_bps <= bw <= b.to_bps)
    chosen = next(c for c in a.cuts if c.id == band.cut)
    at = problem.from_tensors(list(chosen.cut))
    assert seconds(at.head_work, at.tail_work, at.transfer_bytes) <= best * (1 + 1e-9)


def test_the_bundle_carries_every_cut_and_each_half_its_table(tmp_path: Path) -> None:
    result = api.compile(REFERENCE, "k8s", tmp_path / "out")
    assert result.ok, result.diagnostics
    out = tmp_path / "out"
    plan = json.loads((out / "plan.json").read_text())
    (a0, *_) = plan["adaptations"]
    for cut in a0["cuts"]:
        for part in ("head", "tail"):
            assert (out / "models" / "detector" / f"cut-{cut['id']}" / f"{part}.onnx").is_file()
    manifest = json.loads((out / "models" / "manifest.json").read_text())
    paths = {row["path"]: row for row in manifest["models"]}
    for cut in a0["cuts"]:
        assert paths[f"models/detector/cut-{cut['id']}/head.onnx"]["replicas"] == [0, 1, 2, 3]
    head = UnitConfig.from_json((out / "k8s/instances/line-gw-0/detector-head.json").read_text())
    assert head.adapt is not None
    assert [c.id for c in head.adapt.cuts] == [c["id"] for c in a0["cuts"]]
    assert head.adapt.bypass == ["edgeflow/factory_inspection/r0/detector.tail"]
    assert head.adapt.fallback == a0["fallback"]
    report = (out / "report.md").read_text()
    assert "## Run-time adaptation" in report and "The table holds 2 cut(s)" in report
    acl = (out / "mqtt/broker-line-gw-0/edgeflow.acl").read_text()
    # the head may write its tail's output (it runs the whole model) and read the feedback
    head_rules = acl.split("user factory_inspection.detector.head.r0\n")[1].split("\n\n")[0]
    assert "topic write edgeflow/factory_inspection/r0/detector.tail\n" in head_rules + "\n"
    assert "topic read edgeflow/factory_inspection/r0/detector.tail/feedback" in head_rules


def test_greengrass_ships_every_half_as_an_artifact_of_its_own_name(tmp_path: Path) -> None:
    result = api.compile(REFERENCE, "greengrass", tmp_path / "gg")
    assert result.ok, result.diagnostics
    recipes = [json.loads(p.read_text()) for p in (tmp_path / "gg/greengrass/recipes").iterdir()]
    head = next(r for r in recipes if "detector.head" in r["ComponentDescription"]
                and "replica 0" in r["ComponentDescription"])
    (manifest,) = head["Manifests"]
    names = [a["URI"].rsplit("/", 1)[1] for a in manifest["Artifacts"]]
    assert len(names) == len(set(names))
    config = UnitConfig.from_json(manifest["Lifecycle"]["Setenv"]["EDGEFLOW_CONFIG"])
    assert config.adapt is not None
    for cut in config.adapt.cuts:
        name = cut.file.removeprefix("{artifacts:path}/")
        assert name in names
        data = (tmp_path / "gg/greengrass/artifacts" / name).read_bytes()
        import hashlib

        assert hashlib.sha256(data).hexdigest() == cut.sha256


@pytest.mark.parametrize("name", ["W0616_nothing_to_adapt", "E0617_fallback_too_big"])
def test_plan_time_diagnostics(name: str) -> None:
    proc = cli("plan", f"tests/fixtures/plans/{name}.ef")
    assert proc.returncode == (1 if name.startswith("E") else 0), proc.stderr
    assert_golden(FIXTURES / "plans" / f"{name}.out", proc.stderr)


APP = """app t {{ description = "adaptation placement cases" }}
device cam_box {{ tier = edge, compute = {edge}, memory = 2 GiB }}
device server {{ tier = fog, compute = 20 TFLOPS, memory = 32 GiB }}
device panel {{ tier = edge, compute = 0.01 GFLOPS, memory = 2 GiB }}
link cam_box <-> server {{ bandwidth = 50 Mbps, latency = 1 ms }}
link panel <-> server {{ bandwidth = 1 Gbps, latency = 1 ms }}
sensor camera {{ on = cam_box, rate = {rate} Hz, emits = float32[1, 3, 64, 64] }}
actuator light {{ on = {sink} }}
{models}
{pipelines}
"""

MODEL = """model {name} {{
  source = "bottleneck_detector.onnx"
  inputs = {{ images = float32[1, 3, 64, 64] }}
  adapt  = {{ bandwidth = [5 Mbps, 1 Gbps] }}
  {policy}
}}
"""


def _planned(tmp_path: Path, sink: str, policy: str = "", models: int = 1,
             edge: str = "1 GFLOPS", rate: int = 10) -> api.PlanResult:
    import shutil

    shutil.copy(ROOT / "examples" / "models" / "bottleneck_detector.onnx", tmp_path)
    names = [f"detector{i}" for i in range(models)]
    text = APP.format(edge=edge, rate=rate, sink=sink,
                      models="".join(MODEL.format(name=n, policy=policy) for n in names),
                      pipelines="".join(f"pipeline p{i} {{ flow = camera -> {n} -> light }}\n"
                                        for i, n in enumerate(names)))
    (tmp_path / "app.ef").write_text(text)
    program = api.check_file(str(tmp_path / "app.ef")).program
    assert program is not None
    return api.plan(program)


@pytest.mark.parametrize("sink", ["server", "panel"])
def test_a_consumer_away_from_the_head_gets_the_output_through_the_tail(
        tmp_path: Path, sink: str) -> None:
    """The head may send the output itself only to a consumer on its own device: its broker
    bridges none of it. Elsewhere the whole-model cut goes through the tail, and `local` is
    refused (E0617), never a crash."""
    planned = _planned(tmp_path, sink)
    assert planned.ok and planned.plan is not None
    (a,) = planned.plan.adaptations
    assert not a.bypass
    refused = _planned(tmp_path, sink, "on_disconnect = local")
    assert [d.code for d in refused.diagnostics if d.severity.value == "error"] == ["E0617"]
    assert "not on `cam_box`" in refused.diagnostics[-1].message


def test_whole_models_falling_back_on_one_device_are_counted_together(tmp_path: Path) -> None:
    """Each of two models alone could run whole on the gateway; both together could not."""
    one = _planned(tmp_path, "cam_box", "on_disconnect = local", edge="0.4 GFLOPS", rate=10)
    assert one.ok, one.diagnostics
    two = _planned(tmp_path, "cam_box", "on_disconnect = local", models=2, edge="0.4 GFLOPS",
                   rate=10)
    errors = [d for d in two.diagnostics if d.code == "E0617"]
    assert len(errors) == 1 and "other models that fall back there" in errors[0].message
