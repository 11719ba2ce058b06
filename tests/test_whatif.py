"""What-if sweeps (`plan --sweep`, edgeflow/whatif.py): the property table covers every numeric
key of the language, paths and ranges are checked, each point equals an independent `plan` of
the changed app (the solver starting from the previous point's placement changes nothing but
time), and the charts are valid, deterministic SVG and PNG."""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeflow import api, check_text, load, whatif
from edgeflow.plots import sweep_chart
from edgeflow.semantics.lower import _schemas
from edgeflow.semantics.values import Reader
from tests.conftest import ROOT
from tests.test_cli import run
from tests.test_placement import random_app

REFERENCE = ROOT / "examples" / "reference.ef"


def test_every_numeric_key_of_the_language_can_be_swept() -> None:
    """A key whose example value is a number or a quantity is in the table (and the table
    names no key the language lacks), so a new numeric key cannot be forgotten."""
    from edgeflow.diagnostics import DiagnosticSink
    from edgeflow.semantics.values import Symbols

    schemas = _schemas(Reader(DiagnosticSink(), Symbols({})))
    numeric = set()
    for kind in ("device", "link", "sensor", "operator"):
        for key, entry in schemas[kind].items():
            value = entry.example.split("=", 1)[1].strip()
            if re.fullmatch(r"-?\d+(\.\d+)?(\s*[A-Za-z]+(/[A-Za-z]+)?)?", value):
                numeric.add((kind, key))
    numeric |= {("pipeline", "slo.latency"), ("pipeline", "slo.throughput")}
    assert {(p.kind, p.key) for p in whatif.PROPERTIES} == numeric


@pytest.mark.parametrize(("spec", "message"), [
    ("device.gpu_pool.compute", "takes PATH=LO..HI"),
    ("device.gpu_pool.colour=1..2", "names no property"),
    ("device.nowhere.compute=1TFLOPS..2TFLOPS", "no device `nowhere`"),
    ("link.line_gw<->gpu_pool.bandwidth=1Mbps..2Mbps", "no link `line_gw<->gpu_pool`"),
    ("device.gpu_pool.compute=1TFLOPS", "give a range LO..HI"),
    ("device.gpu_pool.compute=1Mbps..2Mbps", "is not a unit of compute"),
    ("device.gpu_pool.compute=0TFLOPS..2TFLOPS", "must be greater than zero"),
    ("device.gpu_pool.count=0..3", "out of range"),
    ("device.gpu_pool.count=1..x", "not a whole number"),
    ("link.line_gw<->plant_server.latency=0ms..5ms:log", "a log sweep needs values above 0"),
    ("sensor.camera.rate=1Hz..5Hz:1", "neither a number of steps"),
])
def test_bad_sweeps_are_usage_errors_that_say_why(spec: str, message: str) -> None:
    with pytest.raises(whatif.SweepError, match=re.escape(message)):
        whatif.parse_sweep(spec, load(REFERENCE))


def test_values_are_spaced_linearly_or_geometrically_and_counts_are_whole() -> None:
    program = load(REFERENCE)
    linear = whatif.parse_sweep("sensor.camera.rate=10Hz..30Hz:5", program)
    assert linear.values == (10.0, 15.0, 20.0, 25.0, 30.0)
    log = whatif.parse_sweep("link.plant_server<->gpu_pool.bandwidth=10Mbps..1Gbps:3:log",
                             program)
    assert log.values == (10e6, 100e6, 1e9) and log.log
    counts = whatif.parse_sweep("device.line_gw.count=1..4:7", program)
    assert counts.values == (1.0, 2.0, 3.0, 4.0)
    swapped = whatif.apply(program, log, 250e6)
    assert [x.bandwidth_bps for x in swapped.links] == [1e9, 250e6]
    assert program.links[1].bandwidth_bps == 1e9  # the original is untouched
    slo = whatif.parse_sweep("pipeline.inspect.slo.latency=20ms..80ms:2", program)
    assert whatif.apply(program, slo, 0.02).pipelines["inspect"].slo.latency_s == 0.02


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


@given(random_app(), st.data())
@settings(derandomize=True, max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
def test_each_point_equals_an_independent_plan(text: str, data: st.DataObject) -> None:
    """Status and objective of every point equal those of `plan` run on the changed app
    alone (placements may differ where they tie)."""
    result = check_text(text, str(ROOT / "examples" / "random.ef"))
    assert result.program is not None
    program = result.program
    options = [f"sensor.{s}.rate=1Hz..60Hz:4:log" for s in program.sensors]
    options += [f"link.{x.a}<->{x.b}.bandwidth=1Mbps..1Gbps:4:log" for x in program.links]
    options += [f"device.{d}.compute=0.01TFLOPS..5TFLOPS:4:log" for d in program.devices]
    spec = data.draw(st.sampled_from(options))
    sweep = whatif.parse_sweep(spec, program)
    for point in whatif.run(program, [sweep], 30.0):
        alone = api.plan(whatif.apply(program, sweep, point.values[sweep.path])).plan
        assert alone is not None
        assert point.status == alone.status.value, spec
        assert set(point.objective) == set(alone.objective)
        first = program.app.objective[0]
        if point.status == "optimal":
            assert _same(point.objective[first], alone.objective[first]), spec


def test_a_sweep_reports_what_moved_and_prints_a_table() -> None:
    proc = run("plan", "examples/reference.ef", "--sweep",
               "device.plant_server.compute=1TFLOPS..200TFLOPS:12:log")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:4] == ["device.plant_server.compute", "status", "inspect", "ms"]
    assert len(lines) == 13 and "blur_faces ×4 -> plant_server" in proc.stdout
    as_json = json.loads(run("plan", "examples/reference.ef", "--json", "--sweep",
                             "device.plant_server.compute=1TFLOPS..200TFLOPS:12:log").stdout)
    points = as_json["result"]["points"]
    assert len(points) == 12 and points[0]["status"] == "optimal"
    moved = [p for p in points if p["moved"]]
    assert len(moved) == 1 and all(p["placement"][u] == "plant_server"
                                   for p in moved for u in p["moved"])


def test_two_sweeps_plan_every_pair() -> None:
    program = load(REFERENCE)
    sweeps = [whatif.parse_sweep("sensor.camera.rate=10Hz..30Hz:3", program),
              whatif.parse_sweep("device.plant_server.compute=5TFLOPS..20TFLOPS:2", program)]
    points = list(whatif.run(program, sweeps, 30.0))
    assert [(p.values["sensor.camera.rate"], p.values["device.plant_server.compute"])
            for p in points] == [(r, c) for r in (10.0, 20.0, 30.0) for c in (5e12, 20e12)]


def test_charts_are_valid_deterministic_svg_and_png(tmp_path: Path) -> None:
    program = load(REFERENCE)
    sweeps = [whatif.parse_sweep("device.plant_server.compute=1TFLOPS..200TFLOPS:8:log",
                                 program)]
    points = list(whatif.run(program, sweeps, 30.0))
    slos = {p: program.pipelines[p].slo.latency_s for p in program.pipelines}
    svg = sweep_chart("svg", program.app.name, sweeps, points, slos, ["latency", "cost"])
    again = sweep_chart("svg", program.app.name, sweeps, points, slos, ["latency", "cost"])
    assert svg == again
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    text = svg.decode()
    for expected in ("inspect latency", "audit latency", "inspect SLO 50 ms",
                     "blur_faces ×4 → plant_server", "device.plant_server.compute"):
        assert expected in text, expected
    png = sweep_chart("png", program.app.name, sweeps, points, slos, ["latency"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert png == sweep_chart("png", program.app.name, sweeps, points, slos, ["latency"])


def test_plot_is_written_atomically_and_never_over_a_users_file(tmp_path: Path) -> None:
    spec = "sensor.camera.rate=10Hz..30Hz:3"
    mine = tmp_path / "mine.svg"
    mine.write_text("<svg/>")
    refused = run("plan", "examples/reference.ef", "--sweep", spec, "--plot", str(mine))
    assert refused.returncode == 1 and "error[E1002]" in refused.stderr
    assert mine.read_text() == "<svg/>"
    chart = tmp_path / "chart.svg"
    assert run("plan", "examples/reference.ef", "--sweep", spec, "--plot",
               str(chart)).returncode == 0
    first = chart.read_bytes()
    assert run("plan", "examples/reference.ef", "--sweep", spec, "--plot",
               str(chart)).returncode == 0  # its own chart: replaced
    assert chart.read_bytes() == first
    for args, message in ((["--plot", str(chart)], "--plot draws a sweep"),
                          (["--sweep", spec, "--plot", str(tmp_path / "c.pdf")],
                           "writes .svg or .png"),
                          (["--sweep", spec, "--explain"], "leave out --explain")):
        usage = run("plan", "examples/reference.ef", *args)
        assert usage.returncode == 2 and message in usage.stderr, usage.stderr


DETECTOR = str(ROOT / "examples" / "models" / "detector.onnx")
SPLIT = ["split", DETECTOR, "--input", "images=float32[1,3,320,320]", "--edge-compute",
         "5GFLOPS", "--cloud-compute", "100TFLOPS", "--bandwidth", "100Mbps", "--latency",
         "10ms", "--sweep", "bandwidth=1Mbps..1Gbps"]


def test_split_sweep_chart_shows_every_cut_and_the_envelope(tmp_path: Path) -> None:
    chart = tmp_path / "split.svg"
    proc = run(*SPLIT, "--plot", str(chart), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["result"]["sweep"]
    svg = chart.read_bytes()
    ET.fromstring(svg)
    text = svg.decode()
    for row in rows:  # each range of the envelope is labelled with its cut
        assert ", ".join(row["cut"])[:20] in text
    assert "every Pareto-optimal cut" in text
    again = tmp_path / "again.svg"
    assert run(*SPLIT, "--plot", str(again)).returncode == 0
    assert again.read_bytes() == svg  # deterministic
    usage = run(*SPLIT[:-2], "--plot", str(tmp_path / "x.svg"))
    assert usage.returncode == 2 and "--plot draws the bandwidth sweep" in usage.stderr


def test_profile_chart_ranks_the_nodes(tmp_path: Path) -> None:
    chart = tmp_path / "profile.png"
    proc = run("profile", DETECTOR, "--input", "images=float32[1,3,320,320]", "-o",
               str(tmp_path / "p.json"), "--runs", "2", "--warmup", "0", "--plot", str(chart))
    assert proc.returncode == 0, proc.stderr
    assert chart.read_bytes().startswith(b"\x89PNG")
    from edgeflow.plots import profile_chart

    seconds = json.loads((tmp_path / "p.json").read_text())["node_seconds"]
    svg = profile_chart("svg", "detector.onnx", seconds, top=3).decode()
    slowest = sorted(seconds, key=lambda n: -seconds[n])[:3]
    assert all(n in svg for n in slowest)
    assert f"{len(seconds) - 3} other nodes" in svg
