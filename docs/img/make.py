"""Regenerate the pictures under docs/img (the README and docs/whatif.md show them):

    python docs/img/make.py

Each is drawn by edgeflow itself from a bundled example, so it shows what a user gets.
"""

from __future__ import annotations

import sys
from pathlib import Path

from edgeflow import load, whatif
from edgeflow.plots import sweep_chart

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {
    # docs/whatif.md: choosing the reference app's uplink
    "sweep-reference-uplink.svg": ("reference",
                                   ["link.plant_server<->gpu_pool.bandwidth=100Mbps..2Gbps:40:log"]),
    # a sweep where the plan changes: the fog server's compute
    "sweep-reference-fog-compute.svg": ("reference",
                                        ["device.plant_server.compute=0.5TFLOPS..50TFLOPS:30:log"]),
}


def main() -> int:
    for name, (example, specs) in IMAGES.items():
        program = load(ROOT / "examples" / f"{example}.ef")
        source = (ROOT / "examples" / f"{example}.ef").read_text()
        sweeps = [whatif.parse_sweep(s, program) for s in specs]
        points = list(whatif.run(program, source, sweeps, 30.0))
        data = sweep_chart("svg", program.app.name, sweeps, points,
                           {p: program.pipelines[p].slo.latency_s for p in program.pipelines},
                           list(program.app.objective))
        (ROOT / "docs" / "img" / name).write_bytes(data)
        print(ROOT / "docs" / "img" / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
