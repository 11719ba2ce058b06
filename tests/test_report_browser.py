"""report.html in a real browser: Debian's Chromium (installed by .ci/run), driven headless by
Playwright. Each page loads from a file with no console error and no request beyond itself;
every declared device and pipeline is on it, boxes visible and inside the page (the drawing is
scaled to fit, never scrolled or clipped), devices apart,
and every line of text inside its device's box (so the widths measured in Python hold in a
browser). Screenshots go to a folder the test prints (EDGEFLOW_SCREENSHOTS to choose it)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeflow import api
from edgeflow.api import check_text
from edgeflow.emit.report_html import render_html_report
from tests.test_placement import SPLIT_APP

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("EDGEFLOW_CHROMIUM", "/usr/bin/chromium")
# as the machine notes say: without these, Chromium keeps dialling Google's hosts
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SMART_CITY = (ROOT / "examples" / "smart_city_traffic.ef").read_text()


def _apps() -> list[tuple[str, str, str]]:
    """(name, source, file) of every example and the larger cases."""
    out = [(p.stem, p.read_text(), str(p)) for p in sorted((ROOT / "examples").glob("*.ef"))]
    out.append(("smart_city_120", SMART_CITY.replace("count   = 12 ", "count   = 120 "),
                str(ROOT / "examples" / "smart_city_traffic.ef")))
    out.append(("split_demo", SPLIT_APP, str(ROOT / "examples" / "split_demo.ef")))
    # names long enough that the text, not the narrowest box, sets the boxes' widths
    reference = (ROOT / "examples" / "reference.ef").read_text()
    for short, long in (("blur_faces", "blur_every_face_and_licence_plate_in_each_frame"),
                        ("plant_server", "plant_server_in_the_basement_of_hall_seven"),
                        ("normalize", "normalize_to_the_mean_and_deviation_of_imagenet")):
        reference = reference.replace(short, long)
    out.append(("long_names", reference, str(ROOT / "examples" / "reference.ef")))
    # connections that skip the fog lane, and links and flows within one lane
    out.append(("skipping", """
app skip { objective = minimize(latency) }
device cam { tier = edge, count = 2, compute = 1 TFLOPS, memory = 1 GiB }
device cam_b { tier = edge, compute = 1 TFLOPS, memory = 1 GiB }
device hub { tier = fog, count = 2, compute = 2 TFLOPS, memory = 8 GiB }
device dc  { tier = cloud, count = 2, compute = 100 TFLOPS, memory = 64 GiB }
link cam <-> hub { bandwidth = 100 Mbps, latency = 2 ms }
link cam <-> cam_b { bandwidth = 100 Mbps, latency = 2 ms }
link hub <-> dc  { bandwidth = 1 Gbps, latency = 10 ms }
link cam <-> dc  { bandwidth = 10 Mbps, latency = 30 ms }
sensor camera { on = cam, rate = 10 Hz, emits = float32[1, 3, 64, 64] }
actuator arm { on = hub }
actuator light { on = cam_b }
store log { on = dc }
pipeline a { flow = camera -> arm }
pipeline b { flow = camera -> log }
pipeline c { flow = camera -> light }
""", str(ROOT / "examples" / "skip.ef")))
    return out


APPS = _apps()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - the test extra installs it
        if os.environ.get("CI"):
            raise
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            raise AssertionError(f"{CHROMIUM} missing: .ci/run installs Debian's chromium")
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shots() -> Iterator[Path]:
    chosen = os.environ.get("EDGEFLOW_SCREENSHOTS")
    folder = Path(chosen) if chosen else Path(tempfile.mkdtemp(prefix="edgeflow-report-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nreport screenshots: {folder}")  # the folder the screenshots are in
    yield folder
    if not chosen and not os.environ.get("EDGEFLOW_KEEP_SCREENSHOTS"):
        shutil.rmtree(folder, ignore_errors=True)


GEOMETRY = """() => {
  const page = {w: document.documentElement.scrollWidth, h: document.documentElement.scrollHeight};
  const rect = (e) => { const r = e.getBoundingClientRect();
    return {x: r.x + window.scrollX, y: r.y + window.scrollY, w: r.width, h: r.height}; };
  const devices = {};
  for (const g of document.querySelectorAll('g.device')) {
    devices[g.dataset.device] = {box: rect(g.querySelector('rect.box')),
                                 texts: [...g.querySelectorAll('text')].map(rect),
                                 visible: g.querySelector('rect.box').checkVisibility()};
  }
  const pipelines = {};
  for (const tr of document.querySelectorAll('tr[data-pipeline]')) {
    pipelines[tr.dataset.pipeline] = {box: rect(tr), visible: tr.checkVisibility()};
  }
  const labels = [...document.querySelectorAll('g.flow-label rect, g.link-label rect')]
    .map(rect);
  return {page, devices, pipelines, labels,
          drawing: rect(document.querySelector('div.drawing')),
          svg: rect(document.querySelector('svg.dataflow')),
          charts: document.querySelectorAll('svg.chart').length};
}"""


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and \
        a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]


def _inside(inner: dict[str, float], outer: dict[str, float], slack: float = 0.5) -> bool:
    return inner["x"] >= outer["x"] - slack and inner["y"] >= outer["y"] - slack and \
        inner["x"] + inner["w"] <= outer["x"] + outer["w"] + slack and \
        inner["y"] + inner["h"] <= outer["y"] + outer["h"] + slack


@pytest.mark.parametrize(("name", "text", "file"), APPS, ids=[a[0] for a in APPS])
def test_the_report_renders_in_chromium(browser: Any, shots: Path, tmp_path: Path, name: str,
                                        text: str, file: str) -> None:
    checked = check_text(text, file)
    program = checked.program
    assert program is not None
    planned = api.plan(program, 30.0, compare=True)
    assert planned.plan is not None and planned.execution is not None
    page_file = tmp_path / f"{name}.html"
    page_file.write_text(render_html_report(planned.execution, planned.plan, planned.baselines,
                                            file), encoding="utf-8")
    url = page_file.as_uri()
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("request", lambda r: problems.append(f"request: {r.url}") if r.url != url else None)
    page.goto(url, wait_until="load")
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    found = page.evaluate(GEOMETRY)
    page.close()
    assert problems == [], f"{problems} (screenshot in {shots})"
    whole = {"x": 0.0, "y": 0.0, "w": found["page"]["w"], "h": found["page"]["h"]}
    assert set(found["devices"]) == set(program.devices)
    for device, seen in found["devices"].items():
        box = seen["box"]
        assert seen["visible"] and box["w"] > 0 and box["h"] > 0, device
        assert _inside(box, found["drawing"]) and _inside(box, whole), (device, box)
        for t in seen["texts"]:
            assert _inside(t, box), (device, t, box, f"screenshot in {shots}")
    boxes = [s["box"] for s in found["devices"].values()]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not _overlap(a, b), (a, b)
    # every label of an arrow or a link is in the drawing, whole, and covers no device
    for label in found["labels"]:
        assert _inside(label, found["svg"]), (label, found["svg"], f"screenshot in {shots}")
        assert not any(_overlap(label, box) for box in boxes), (label, f"screenshot in {shots}")
    assert set(found["pipelines"]) == set(program.pipelines)
    for pipeline, seen in found["pipelines"].items():
        assert seen["visible"] and seen["box"]["w"] > 0 and seen["box"]["h"] > 0, pipeline
        assert _inside(seen["box"], whole), pipeline
    assert found["charts"] == (2 if planned.plan.feasible else 0)
