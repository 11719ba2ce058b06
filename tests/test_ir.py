"""Lowering to IR: SI normalisation, the dataflow graph, replicas and label propagation."""

from __future__ import annotations

import pytest

from edgeflow import load
from edgeflow.dataflow import build, instance_graph
from edgeflow.execution import build_execution
from edgeflow.ir import TensorType, Tier
from tests.conftest import ROOT

REFERENCE = ROOT / "examples" / "reference.ef"


@pytest.fixture(scope="module")
def program():  # type: ignore[no-untyped-def]
    return load(REFERENCE)


def test_values_are_si(program) -> None:  # type: ignore[no-untyped-def]
    gw = program.devices["line_gw"]
    assert gw.tier is Tier.EDGE and gw.count == 4
    assert gw.compute_flops == 0.1e12 and gw.memory_bytes == 4 * 2**30 and gw.power_w == 10
    assert gw.labels == {"zone": "line-a", "accelerator": "jetson-nano"}
    assert program.devices["gpu_pool"].cost_usd_per_s == pytest.approx(3.20 / 3600)
    uplink = program.links[1]
    assert (uplink.a, uplink.b) == ("plant_server", "gpu_pool")
    assert uplink.bandwidth_bps == 1e9 and uplink.latency_s == pytest.approx(0.018)
    assert uplink.cost_usd_per_byte == pytest.approx(0.08e-9)
    camera = program.sensors["camera"]
    assert camera.rate_hz == 30 and camera.privacy == ("pii",)
    assert camera.emits == TensorType(dtype="uint8", shape=(1, 3, 320, 320))
    assert camera.emits.nbytes == 3 * 320 * 320
    assert program.operators["normalize"].work_flop == pytest.approx(0.01e9)
    assert program.operators["blur_faces"].memory_bytes == 200 * 2**20
    assert program.pipelines["inspect"].slo.latency_s == pytest.approx(0.05)
    audit = program.pipelines["audit"].slo
    assert audit.latency_s == 2 and audit.throughput_hz == 30
    assert program.app.objective == ("latency", "cost")
    assert program.privacy["pii"].allow == (Tier.EDGE, Tier.FOG)


def test_model_outputs_are_inferred(program) -> None:  # type: ignore[no-untyped-def]
    detector = program.models["detector"]
    assert detector.inputs == {"images": TensorType(dtype="float32", shape=(1, 3, 320, 320))}
    assert detector.outputs == {"detections": TensorType(dtype="float32", shape=(1, 21, 10, 10))}
    assert detector.split == "auto" and \
        detector.source.endswith("models/bottleneck_detector.onnx")
    assert detector.adapt is not None and detector.on_disconnect is not None
    assert (detector.adapt.low_bps, detector.adapt.high_bps) == (20e6, 1e9)
    assert (detector.adapt.margin, detector.adapt.hold_s) == (0.1, 1.0)
    assert detector.on_disconnect.action == "local"


def test_dataflow_graph(program) -> None:  # type: ignore[no-untyped-def]
    df = build(program)
    assert list(df.graph.edges) == [("camera", "normalize"), ("camera", "blur_faces"),
                                    ("normalize", "detector"), ("detector", "reject_arm"),
                                    ("blur_faces", "archive")]
    (component,) = df.components
    assert component.replicas == 4 and component.sensors == ("camera",)
    labels = {n: set(d["labels"]) for n, d in df.graph.nodes(data=True)}
    assert labels["detector"] == {"pii"} and labels["reject_arm"] == {"pii"}
    assert labels["blur_faces"] == set() and labels["archive"] == set()
    execution = build_execution(program)
    # 4 replicas of 5 nodes, plus the archive on the single gpu_pool shared by all of them
    assert len(execution.steps) == 21
    assert sum(v == ("archive", None) for _, v in execution.edges) == 4
    assert execution.steps[("camera", 2)].device == "line_gw[2]"
    assert execution.steps[("detector", 0)].labels == {"pii"}
    assert execution.steps[("blur_faces", 0)].out_labels == frozenset()
    assert len(execution.pipelines) == 2 * 4


def test_instance_graph_pairs_sites(program) -> None:  # type: ignore[no-untyped-def]
    g = instance_graph(program.devices, program.links)
    assert sorted(g.neighbors("plant_server")) == ["gpu_pool"] + [f"line_gw[{i}]" for i in range(4)]
    assert not g.has_edge("line_gw[0]", "line_gw[1]")


def test_equal_counts_link_instance_wise() -> None:
    from edgeflow import check_text
    text = (ROOT / "examples" / "reference.ef").read_text().replace(
        "device plant_server {\n  tier    = fog", "device plant_server {\n  tier    = fog\n  count = 4")
    result = check_text(text, str(ROOT / "examples" / "variant.ef"))
    assert result.program is not None, result.diagnostics
    g = instance_graph(result.program.devices, result.program.links)
    assert sorted(g.neighbors("line_gw[2]")) == ["plant_server[2]"]


def test_ir_is_deterministic() -> None:
    a = load(REFERENCE).model_dump_json()
    b = load(REFERENCE).model_dump_json()
    assert a == b and '"compute_flops":100000000000.0' in a


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.ef")), ids=lambda p: p.stem)
def test_every_example_lowers(path) -> None:  # type: ignore[no-untyped-def]
    program = load(path)
    df = build(program)
    assert df.components and all(c.replicas >= 1 for c in df.components)
