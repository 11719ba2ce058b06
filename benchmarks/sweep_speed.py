"""What-if sweep speed (issue 17's target: 50 points of the reference app in under 30 s).

Plans the reference app at 50 uplink bandwidths (plant_server<->gpu_pool, 100 Mbps..10 Gbps,
log-spaced) and at 50 fog compute values, each with every solve starting from the point
before's placement (as `plan --sweep` does) and from scratch, and prints the totals and the
slowest point. Run: `python benchmarks/sweep_speed.py`.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from edgeflow import load, whatif

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = ["link.plant_server<->gpu_pool.bandwidth=100Mbps..10Gbps:50:log",
          "device.plant_server.compute=1TFLOPS..200TFLOPS:50:log"]


def main() -> int:
    program = load(ROOT / "examples" / "reference.ef")
    source = (ROOT / "examples" / "reference.ef").read_text()
    for spec in SWEEPS:
        sweep = whatif.parse_sweep(spec, program)
        for warm in (True, False):
            started = time.perf_counter()
            points = list(whatif.run(program, source, [sweep], 30.0, warm_start=warm))
            total = time.perf_counter() - started
            seconds = [p.seconds for p in points]
            statuses = {s: sum(p.status == s for p in points) for s in
                        sorted({p.status for p in points})}
            print(f"{spec.split('=')[0]:45s} {'warm' if warm else 'cold'}: {len(points)} points "
                  f"in {total:.2f} s (median {statistics.median(seconds) * 1e3:.0f} ms, "
                  f"max {max(seconds) * 1e3:.0f} ms) {statuses}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
