"""What-if sweeps (`plan --sweep`, edgeflow/whatif.py): the property table covers every numeric
key of the language, paths and ranges are checked, each point equals an independent `plan` of
the changed app (the solver starting from the previous point's placement changes nothing but
time), and the charts are valid, deterministic SVG and PNG."""

from __future__ import annotations

import itertools
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
from edgeflow.syntax.parser import parse
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
    ("sensor.camera.rate=1Hz..5Hz:²", "neither a number of steps"),
    ("sensor.camera.rate=1Hz..5Hz:3:3", "repeats an option"),
    ("sensor.camera.rate=5Hz..5Hz", "the range is one value"),
    ("device.gpu_pool.count=1..١٢", "not a whole number"),
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


def test_a_point_is_the_source_with_the_value_written_in() -> None:
    """The key's value is replaced where the declaration has it, added where not, and an
    SLO is written whole; the edited file checks."""
    program = load(REFERENCE)
    source = REFERENCE.read_text()

    def edited(spec: str, value: float) -> str:
        sweep = whatif.parse_sweep(spec, program)
        text = whatif.edit_source(source, parse(source, str(REFERENCE))[0], [sweep],
                                  {sweep.path: value}, program)
        assert check_text(text, str(REFERENCE)).program is not None
        return text

    text = edited("link.plant_server<->gpu_pool.bandwidth=10Mbps..1Gbps", 333_333_333.5)
    assert "link plant_server <-> gpu_pool { bandwidth = 333.3333335 Mbps," in text
    assert "link line_gw <-> plant_server { bandwidth = 1 Gbps," in text
    text = edited("pipeline.inspect.slo.latency=20ms..80ms", 0.02)
    assert "  slo  = [latency < 20 ms]\n" in text
    text = edited("pipeline.audit.slo.latency=1s..3s", 1.5)  # its throughput bound stays
    assert "  slo  = [latency < 1.5 s, throughput >= 30 Hz]\n" in text
    text = edited("device.line_gw.power=1W..9W", 7.5)  # the key was not declared
    assert load(REFERENCE).devices["line_gw"].power_w != 7.5
    assert check_text(text, str(REFERENCE)).program.devices["line_gw"].power_w == 7.5  # type: ignore[union-attr]
    assert source.count("\n") == text.count("\n")  # nothing else moved


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def _independent_edit(text: str, kind: str, name: str, value: float) -> str:
    """The random app's text with one value replaced by a regular expression (sharing nothing
    with `edit_source`)."""
    patterns = {
        "rate": (rf"(sensor {name} \{{[^}}]*?rate = )[^,}}]+", f"{value:.12g} Hz"),
        "bandwidth": (rf"(link {name} \{{ bandwidth = )[^,}}]+", f"{value:.12g} bps"),
        "compute": (rf"(device {name} \{{[^}}]*?compute = )[^,}}]+", f"{value / 1e9:.12g} GFLOPS"),
        "count": (rf"(device {name} \{{[^}}]*?count = )\d+", f"{round(value)}"),
        "slo": (rf"(pipeline {name} \{{[^}}]*?slo = latency < )[^,}}]+", f"{value * 1e3:.12g} ms"),
    }
    pattern, replacement = patterns[kind]
    edited, n = re.subn(pattern, lambda m: m.group(1) + replacement, text)
    assert n == 1, (pattern, text)
    return edited


@given(random_app(), st.data())
@settings(derandomize=True, max_examples=16, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
def test_each_point_equals_an_independent_check_and_plan(text: str,
                                                           data: st.DataObject) -> None:
    """Every point equals `check` + `plan` of the app's text with the value written in by
    other means: the same error code where the checker refuses it, else the same status and
    first objective term (placements may differ where they tie)."""
    file = str(ROOT / "examples" / "random.ef")
    result = check_text(text, file)
    assert result.program is not None
    program = result.program
    options = [(f"sensor.{s}.rate=1Hz..60Hz:4:log", "rate", s) for s in program.sensors]
    options += [(f"link.{x.a}<->{x.b}.bandwidth=1Mbps..1Gbps:4:log", "bandwidth",
                 f"{x.a} <-> {x.b}") for x in program.links]
    options += [(f"device.{d}.compute=0.01TFLOPS..5TFLOPS:4:log", "compute", d)
                for d in program.devices]
    options += [("device.gw.count=1..3:3", "count", "gw")]
    options += [(f"pipeline.{p}.slo.latency=1ms..400ms:4:log", "slo", p)
                for p, x in program.pipelines.items() if x.slo.latency_s is not None]
    spec, kind, name = data.draw(st.sampled_from(options))
    sweep = whatif.parse_sweep(spec, program)
    for point in whatif.run(program, text, [sweep], 30.0):
        alone = check_text(_independent_edit(text, kind, name, point.values[sweep.path]), file)
        errors = [d for d in alone.diagnostics if d.severity.value == "error"]
        if errors:
            assert point.status == "invalid" and point.error is not None
            assert point.error.startswith(errors[0].code), (spec, point.error)
            continue
        assert alone.program is not None
        planned = api.plan(alone.program).plan
        assert planned is not None
        assert point.status == planned.status.value, spec
        first = program.app.objective[0]
        if point.status == "optimal":
            assert _same(point.objective[first], planned.objective[first]), spec


def test_a_throughput_above_the_sensor_rate_is_an_invalid_point() -> None:
    program = load(REFERENCE)
    sweep = whatif.parse_sweep("sensor.camera.rate=20Hz..40Hz:3", program)  # audit: 30 Hz
    points = list(whatif.run(program, REFERENCE.read_text(), [sweep], 30.0))
    assert [p.status for p in points] == ["invalid", "optimal", "optimal"]
    assert points[0].error is not None and points[0].error.startswith("E0507")


def test_a_count_sweep_reports_new_replicas_not_false_moves() -> None:
    program = load(REFERENCE)
    sweep = whatif.parse_sweep("device.line_gw.count=1..4:4", program)
    points = list(whatif.run(program, REFERENCE.read_text(), [sweep], 30.0))
    assert all(p.status == "optimal" for p in points)
    for before, after in itertools.pairwise(points):
        assert not after.moved  # the same devices; only more of them
        assert len(after.added) > 0 and not after.removed
        assert set(before.placement) < set(after.placement)


def test_a_sweep_reports_what_moved_and_prints_a_table() -> None:
    # a faster gateway first runs the detector whole (no more split halves), then blurs there
    proc = run("plan", "examples/reference.ef", "--sweep",
               "device.line_gw.compute=0.05TFLOPS..5TFLOPS:12:log")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:4] == ["device.line_gw.compute", "status", "inspect", "ms"]
    assert len(lines) == 13 and "blur_faces ×4 -> line_gw" in proc.stdout
    assert "+4 units; -8 units" in proc.stdout  # detector whole instead of head and tail
    as_json = json.loads(run("plan", "examples/reference.ef", "--json", "--sweep",
                             "device.line_gw.compute=0.05TFLOPS..5TFLOPS:12:log").stdout)
    points = as_json["result"]["points"]
    assert len(points) == 12 and points[0]["status"] == "optimal"
    moved = [p for p in points if p["moved"]]
    assert len(moved) == 1 and all(p["placement"][u].startswith("line_gw[")
                                   for p in moved for u in p["moved"])


def test_two_sweeps_plan_every_pair() -> None:
    program = load(REFERENCE)
    sweeps = [whatif.parse_sweep("sensor.camera.rate=30Hz..50Hz:3", program),
              whatif.parse_sweep("device.plant_server.compute=5TFLOPS..20TFLOPS:2", program)]
    points = list(whatif.run(program, REFERENCE.read_text(), sweeps, 30.0))
    assert [(p.values["sensor.camera.rate"], p.values["device.plant_server.compute"])
            for p in points] == [(r, c) for r in (30.0, 40.0, 50.0) for c in (5e12, 20e12)]


def test_charts_are_valid_deterministic_svg_and_png(tmp_path: Path) -> None:
    program = load(REFERENCE)
    sweeps = [whatif.parse_sweep("device.line_gw.compute=0.05TFLOPS..5TFLOPS:8:log",
                                 program)]
    points = list(whatif.run(program, REFERENCE.read_text(), sweeps, 30.0))
    slos = {p: program.pipelines[p].slo.latency_s for p in program.pipelines}
    svg = sweep_chart("svg", program.app.name, sweeps, points, slos, ["latency", "cost"])
    again = sweep_chart("svg", program.app.name, sweeps, points, slos, ["latency", "cost"])
    assert svg == again
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    text = svg.decode()
    for expected in ("inspect latency", "audit latency", "inspect SLO 50 ms",
                     "blur_faces ×4 → line_gw", "device.line_gw.compute"):
        assert expected in text, expected
    png = sweep_chart("png", program.app.name, sweeps, points, slos, ["latency"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert png == sweep_chart("png", program.app.name, sweeps, points, slos, ["latency"])


def test_plot_is_written_atomically_and_never_over_a_users_file(tmp_path: Path) -> None:
    spec = "sensor.camera.rate=30Hz..40Hz:3"
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
