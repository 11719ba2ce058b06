"""report.html (`edgeflow report`, and `compile` beside report.md): self-contained, valid,
deterministic, and what it draws agrees with the plan, checked against the placements read
back from plan.json (not through the page's own bookkeeping). tests/test_report_browser.py
opens the pages in a real browser."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from hypothesis import HealthCheck, given, settings

from edgeflow import api
from edgeflow.api import check_text
from edgeflow.emit.report_html import render_html_report
from edgeflow.files import written_by_edgeflow
from tests.test_cli import run
from tests.test_placement import SPLIT_APP, random_app

ROOT = Path(__file__).resolve().parent.parent
SVG = "{http://www.w3.org/2000/svg}"


def page_of(text: str, file: str) -> tuple[str, api.PlanResult]:
    checked = check_text(text, file)
    assert checked.program is not None, checked.diagnostics
    planned = api.plan(checked.program, 30.0, compare=True)
    assert planned.plan is not None and planned.execution is not None
    return render_html_report(planned.execution, planned.plan, planned.baselines, file), planned


def svgs(page: str) -> list[ET.Element]:
    """Every inline SVG of the page, parsed as XML (so each is well-formed)."""
    return [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", page, flags=re.DOTALL)]


def dataflow(page: str) -> ET.Element:
    (drawing,) = [s for s in svgs(page) if s.get("class") == "dataflow"]
    return drawing


def boxes(drawing: ET.Element) -> dict[str, dict[str, int]]:
    """device -> row label -> replicas, read from the drawing's text."""
    out: dict[str, dict[str, int]] = {}
    for g in drawing.iter(f"{SVG}g"):
        if g.get("class") != "device":
            continue
        rows = out.setdefault(g.get("data-device", ""), {})
        for row in g.iter(f"{SVG}g"):
            if row.get("class") == "row":
                text = "".join(row.find(f"{SVG}text").itertext())  # type: ignore[union-attr]
                m = re.fullmatch(r"(.*?)(?: ×([0-9]+))?(?: \(([^)]*)\))?", text)
                assert m is not None and m[1] == row.get("data-row")
                rows[row.get("data-row", "")] = int(m[2]) if m[2] else 1
    return out


def flows(drawing: ET.Element) -> dict[tuple[str, str], str]:
    out = {}
    for g in drawing.iter(f"{SVG}g"):
        if g.get("class") == "flow":
            title = "".join(g.find(f"{SVG}title").itertext())  # type: ignore[union-attr]
            out[(g.get("data-from", ""), g.get("data-to", ""))] = title.rsplit(": ", 1)[1]
    return out


def expected_picture(program_text: str, file: str) -> tuple[dict[str, dict[str, int]],
                                                           set[tuple[str, str]]]:
    """Rows and crossing flows from plan.json's placements and the declarations alone."""
    checked = check_text(program_text, file)
    program = checked.program
    assert program is not None
    plan = json.loads(api.plan(program).plan.to_json())  # type: ignore[union-attr]
    where = {(p["unit"], p["replica"]): p["device"] for p in plan["placements"]}
    group = {inst: d.name for d in program.devices.values() for inst in d.instances()}
    replicas = next(iter(program.devices.values())).count  # the sensor sits on the first
    rows: dict[str, dict[str, set[tuple[str, int]]]] = {d: {} for d in program.devices}
    for (unit, r), inst in where.items():
        rows[group[inst]].setdefault(unit, set()).add((inst, r))
    crossing = set()

    def at(name: str, end: str, r: int) -> tuple[str, str]:
        """Where replica r of `name` receives (end "head") or sends (end "tail")."""
        if name in program.sensors or name in program.sinks:
            d = program.devices[(program.sensors.get(name) or program.sinks[name]).device]
            inst = d.instance(r)
            rows[d.name].setdefault(name, set()).add(
                (inst, r if name in program.sensors or d.count > 1 else -1))
            return inst, name
        half = f"{name}.{end}"
        if (half, r) in where:
            return where[(half, r)], half
        return where[(name, r)], name

    for r in range(replicas):
        for p in program.pipelines.values():
            for a, b in zip(p.flow, p.flow[1:]):
                (ia, la), (ib, lb) = at(a, "tail", r), at(b, "head", r)
                if ia != ib:
                    crossing.add((la, lb))
        for m in program.models:
            if (f"{m}.head", r) in where and \
                    where[(f"{m}.head", r)] != where[(f"{m}.tail", r)]:
                crossing.add((f"{m}.head", f"{m}.tail"))
    return ({d: {label: len(s) for label, s in found.items()} for d, found in rows.items()},
            crossing)


def test_the_reference_page_is_self_contained_and_complete() -> None:
    text = (ROOT / "examples" / "reference.ef").read_text()
    page, planned = page_of(text, str(ROOT / "examples" / "reference.ef"))
    assert page.startswith("<!DOCTYPE html>")
    # nothing is fetched: no script, stylesheet, image or frame from anywhere
    assert not re.search(r"<(script|link|img|iframe|object|embed)\b", page)
    assert not re.search(r"(src|href)\s*=", page.replace('href="#', ""))
    assert not re.search(r"url\((?!#)", page)
    assert [u for u in re.findall(r"https?://[^\s\"'<>]+", page)
            if not u.startswith(("http://www.w3.org/", "http://purl.org/dc/",
                                 "http://creativecommons.org/ns#"))] == []
    for svg in svgs(page):
        assert svg.tag == f"{SVG}svg"
    drawing = dataflow(page)
    assert boxes(drawing) == {
        "line_gw": {"camera": 4, "normalize": 4, "detector.head": 4, "reject_arm": 4},
        "plant_server": {"blur_faces": 4, "detector.tail": 4}, "gpu_pool": {"archive": 1}}
    # the audit path crosses both links: blurred frames of 3 x 320 x 320 bytes at 30 Hz; the
    # detector's head sends its 4 x 80 x 80 float bottleneck, its tail the detections back
    assert flows(drawing) == {("camera", "blur_faces"): "30 Hz × 307 kB (×4)",
                              ("blur_faces", "archive"): "30 Hz × 307 kB (×4)",
                              ("detector.head", "detector.tail"): "30 Hz × 102 kB (×4)",
                              ("detector.tail", "reject_arm"): "30 Hz × 8.4 kB (×4)"}
    for name in ("inspect", "audit"):
        assert f'data-pipeline="{name}"' in page
    for name in ("sensor", "cloud", "neurosurgeon", "edgeward"):
        assert f"<tr><td>{name}</td>" in page
    assert "which privacy labels pii do not allow" in page  # why the cloud baseline fails
    assert planned.plan is not None
    # links coloured by their use: both are below half of their bandwidth
    colours = {g.get("data-link"): g.find(f"{SVG}path").get("stroke")  # type: ignore[union-attr]
               for g in drawing.iter(f"{SVG}g") if g.get("class") == "link"}
    assert colours == {"line_gw<->plant_server": "#2e7d32", "plant_server<->gpu_pool": "#2e7d32"}


def test_the_page_is_byte_identical_for_the_same_input() -> None:
    text = (ROOT / "examples" / "reference.ef").read_text()
    first, _ = page_of(text, str(ROOT / "examples" / "reference.ef"))
    second, _ = page_of(text, str(ROOT / "examples" / "reference.ef"))
    assert first == second


def test_replicas_collapse_so_120_sites_draw_as_12_do() -> None:
    text = (ROOT / "examples" / "smart_city_traffic.ef").read_text()
    assert "count   = 12 " in text
    file = str(ROOT / "examples" / "smart_city_traffic.ef")
    small, _ = page_of(text, file)
    large, _ = page_of(text.replace("count   = 12 ", "count   = 120 "), file)
    big, little = boxes(dataflow(large)), boxes(dataflow(small))
    assert big.keys() == little.keys()
    assert {d: set(rows) for d, rows in big.items()} == {d: set(r) for d, r in little.items()}
    assert big["street_cabinet"]["traffic_cam"] == 120
    assert little["street_cabinet"]["traffic_cam"] == 12
    assert abs(len(large) - len(small)) < 0.02 * len(small)


def test_a_split_model_is_drawn_as_its_head_and_tail() -> None:
    page, planned = page_of(SPLIT_APP, str(ROOT / "examples" / "split_demo.ef"))
    drawing = dataflow(page)
    assert boxes(drawing) == {"cam_box": {"camera": 2, "detector.head": 2},
                              "cloud": {"detector.tail": 2, "detections": 1}}
    assert planned.plan is not None
    nbytes = {s.transfer_bytes for s in planned.plan.splits}
    assert nbytes == {307200}
    assert flows(drawing) == {("detector.head", "detector.tail"): "1 Hz × 307 kB (×2)"}
    assert "head on cam_box, tail on cloud" in page and "<code>conv_21</code>" in page


def test_an_infeasible_app_gets_a_page_that_says_why() -> None:
    file = ROOT / "examples" / "factory_infeasible.ef"
    page, planned = page_of(file.read_text(), str(file))
    assert planned.plan is not None and not planned.plan.feasible
    assert "Why there is no plan" in page and "148% of its 200 Mbps" in page
    assert set(boxes(dataflow(page))) == {"line_gw", "plant_server", "gpu_pool"}
    for name in ("inspect", "audit"):
        assert f'data-pipeline="{name}"' in page


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_app())
def test_the_drawing_agrees_with_plan_json_on_random_apps(text: str) -> None:
    file = str(ROOT / "examples" / "random.ef")
    checked = check_text(text, file)
    assert checked.program is not None
    planned = api.plan(checked.program, 30.0, compare=True)
    assert planned.plan is not None and planned.execution is not None
    if not planned.plan.feasible:
        return
    page = render_html_report(planned.execution, planned.plan, planned.baselines, file)
    drawing = dataflow(page)
    rows, crossing = expected_picture(text, file)
    assert boxes(drawing) == rows
    assert set(flows(drawing)) == crossing


def test_report_command_writes_the_page_and_never_over_a_foreign_file(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    proc = run("report", "examples/reference.ef", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert written_by_edgeflow(out) and f"wrote {out} (optimal plan)" in proc.stderr
    again = run("report", "examples/reference.ef", "-o", str(out), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["result"] == {
        "output": str(out), "status": "optimal"}
    foreign = tmp_path / "mine.html"
    foreign.write_text("<html>my own notes</html>")
    refused = run("report", "examples/reference.ef", "-o", str(foreign))
    assert refused.returncode == 1 and "E1002" in refused.stderr
    assert foreign.read_text() == "<html>my own notes</html>" and not written_by_edgeflow(foreign)
    assert "Traceback" not in refused.stderr


def test_report_of_an_infeasible_app_is_written_and_exits_1(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    proc = run("report", "examples/factory_infeasible.ef", "-o", str(out))
    assert proc.returncode == 1 and "E0901" in proc.stderr
    assert "Why there is no plan" in out.read_text()


def test_compile_writes_report_html_beside_report_md(tmp_path: Path) -> None:
    result = api.compile(ROOT / "examples" / "reference.ef", "compose", tmp_path / "b")
    assert result.ok, result.diagnostics
    assert "report.html" in result.files and "report.md" in result.files
    page = result.files["report.html"].decode()
    assert page == page_of((ROOT / "examples" / "reference.ef").read_text(),
                           str(ROOT / "examples" / "reference.ef"))[0]


def test_an_app_with_nothing_to_place_still_gets_a_page() -> None:
    """No devices, no pipelines: the page says so rather than failing (found by the fuzzer)."""
    cases = {"app empty { objective = minimize(latency) }\n": 0,
             "app idle { objective = minimize(latency) }\n"
             "device gw { tier = edge, compute = 1 TFLOPS, memory = 1 GiB }\n": 1}
    for text, charts in cases.items():
        page, planned = page_of(text, str(ROOT / "examples" / "empty.ef"))
        assert planned.plan is not None and planned.plan.feasible
        assert page.count(' class="chart"') == charts  # utilisation only: no pipeline
        assert len(svgs(page)) == 1 + charts  # the drawing, well-formed, and the charts


def test_rows_follow_the_dataflow_and_pages_are_recognised_by_content(tmp_path: Path) -> None:
    """In the car of autonomous_vehicle, the lidar path's steps come before `fuse`, which they
    feed, and the actuator last; a page is edgeflow's whatever its file is called."""
    file = ROOT / "examples" / "autonomous_vehicle.ef"
    page, _ = page_of(file.read_text(), str(file))
    drawing = dataflow(page)
    (car,) = [g for g in drawing.iter(f"{SVG}g") if g.get("data-device") == "car"]
    rows = [r.get("data-row") for r in car.iter(f"{SVG}g") if r.get("class") == "row"]
    assert rows.index("lidar") < rows.index("fuse") and rows.index("lidar_encoder") < \
        rows.index("fuse") and rows[-1] == "brake_controller"
    out = tmp_path / "page"
    proc = run("report", "examples/reference.ef", "-o", str(out))
    assert proc.returncode == 0 and written_by_edgeflow(out)
    again = run("report", "examples/reference.ef", "-o", str(out))
    assert again.returncode == 0, again.stderr
