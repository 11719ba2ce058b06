"""Regenerate the pictures under docs/img (the README, docs/whatif.md and docs/report.md show
them):

    python docs/img/make.py

Each is drawn by edgeflow itself from a bundled example, so it shows what a user gets: two
sweep charts (`plan --sweep --plot`), a split chart (`split --sweep --plot`), a profile chart
(`profile --plot`: measured on this machine, so it differs a little from run to run) and a
screenshot of the reference app's report.html (`edgeflow report`), taken in headless Chromium
(Debian's `chromium`, driven by Playwright: the browser the report's tests use).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from edgeflow import load, whatif
from edgeflow.plots import sweep_chart

ROOT = Path(__file__).resolve().parents[2]
IMG = ROOT / "docs" / "img"
SWEEPS = {
    # docs/whatif.md: choosing the reference app's uplink
    "sweep-reference-uplink.svg": ("reference",
                                   ["link.plant_server<->gpu_pool.bandwidth=100Mbps..2Gbps:40:log"]),
    # a sweep where the plan changes: the fog server's compute
    "sweep-reference-fog-compute.svg": ("reference",
                                        ["device.plant_server.compute=0.5TFLOPS..50TFLOPS:30:log"]),
}
DETECTOR = ["examples/models/detector.onnx", "--input", "images=float32[1,3,320,320]"]
COMMANDS = {
    # docs/split.md: the optimal cut of the example detector by bandwidth
    "split-detector.svg": ["split", *DETECTOR, "--bandwidth", "20Mbps", "--edge-compute",
                           "50GFLOPS", "--cloud-compute", "100TFLOPS", "--latency", "10ms",
                           "--sweep", "bandwidth=1Mbps..1Gbps", "--plot"],
    # docs/split.md: where the detector's time goes, measured
    "profile-detector.svg": ["profile", *DETECTOR, "-o", "{tmp}/profile.json", "--plot"],
}
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def edgeflow(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "edgeflow", *args], cwd=ROOT, check=True)


def report_picture(tmp: Path) -> None:
    """The top of the reference app's report.html (header, dataflow, latency), as a PNG."""
    from playwright.sync_api import sync_playwright

    page_file = tmp / "report.html"
    edgeflow("report", "examples/reference.ef", "-o", str(page_file))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(page_file.as_uri(), wait_until="load")
        height = page.evaluate("document.querySelector('table.pipelines')"
                               ".getBoundingClientRect().bottom + 16")
        page.screenshot(path=str(IMG / "report-reference.png"),
                        clip={"x": 0, "y": 0, "width": 1100, "height": height})
        browser.close()
    print(IMG / "report-reference.png")


def main() -> int:
    for name, (example, specs) in SWEEPS.items():
        program = load(ROOT / "examples" / f"{example}.ef")
        source = (ROOT / "examples" / f"{example}.ef").read_text()
        sweeps = [whatif.parse_sweep(s, program) for s in specs]
        points = list(whatif.run(program, source, sweeps, 30.0))
        data = sweep_chart("svg", program.app.name, sweeps, points,
                           {p: program.pipelines[p].slo.latency_s for p in program.pipelines},
                           list(program.app.objective))
        (IMG / name).write_bytes(data)
        print(IMG / name)
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in COMMANDS.items():
            edgeflow(*[a.format(tmp=tmp) for a in args], str(IMG / name), "--force")
            print(IMG / name)
        report_picture(Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
