"""Federated training of the healthcare example with real Flower processes.

    python benchmarks/training.py [--rounds 3] [--keep DIR]

Runs `edgeflow train examples/healthcare_vitals.ef --rounds N --format json` (16 bedside hubs,
the ward server aggregating, differential privacy at the ward) into a scratch folder and prints
per round: the seconds it took, the held-out accuracy and loss, the privacy budget spent, and
the bytes each declared link carried (all the hub links together, and the most on one of them),
beside the bytes one update weighs (the trainable weights, from the model file). Then the whole
run's wall time and the peak memory of the machine's processes during it. Targets (issue 20):
the held-out accuracy improves over the rounds, and every hub link carries at least one update
each way per round (the rest is Flower's polling, gRPC and TLS: the ratio is printed).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import onnx
import psutil

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "examples" / "healthcare_vitals.ef"


def update_bytes() -> int:
    graph = onnx.load(str(ROOT / "examples" / "models" / "vitals.onnx")).graph
    head = {"fc1_w", "fc1_b", "fc2_w", "fc2_b"}
    return sum(4 * math.prod(i.dims) for i in graph.initializer if i.name in head)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="write the training here and keep it")
    args = parser.parse_args()
    out = args.keep or Path(tempfile.mkdtemp(prefix="edgeflow-train-bench-")) / "out"
    peak = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            used = psutil.virtual_memory().total - psutil.virtual_memory().available
            peak[0] = max(peak[0], used)
            time.sleep(0.5)

    base = psutil.virtual_memory().total - psutil.virtual_memory().available
    threading.Thread(target=watch, daemon=True).start()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgeflow", "train", str(APP), "--rounds",  # noqa: PLW1510
                           str(args.rounds), "-o", str(out), "--format", "json", "--fresh"],
                          capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    done.set()
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
        return 1
    report = json.loads(proc.stdout)["result"]
    update = update_bytes()
    print(f"healthcare_vitals: {report['clients']} clients, {len(report['sites'])} site, "
          f"{report['strategy']}, dp {report['dp']}")
    print(f"one update (the trainable head): {update} bytes")
    init = report["initial"]
    print(f"round 0: accuracy {init['test_accuracy']:.3f}, loss {init['test_loss']:.4f}")
    ok = True
    for row in report["rounds"]:
        hub = {k: v for k, v in row["link_bytes"].items() if k.startswith("bedside_hub[")}
        print(f"round {row['round']}: {row['seconds']:.1f} s, accuracy "
              f"{row['test_accuracy']:.3f}, loss {row['test_loss']:.4f}, epsilon "
              f"{row['epsilon']}, hub links {len(hub)}: total {sum(hub.values())} B, "
              f"least {min(hub.values())} B, most {max(hub.values())} B "
              f"({max(hub.values()) / (2 * update):.2f} x the update each way)")
        ok &= min(hub.values()) >= 2 * update
    accuracies = [init["test_accuracy"], *(r["test_accuracy"] for r in report["rounds"])]
    improved = accuracies[-1] > accuracies[0]
    print(f"accuracy {' -> '.join(f'{a:.3f}' for a in accuracies)}: "
          f"{'improved' if improved else 'NOT improved'}")
    print(f"wall {wall:.1f} s for {args.rounds} rounds; peak memory in use "
          f"{peak[0] / 2**30:.2f} GiB ({(peak[0] - base) / 2**30:.2f} GiB above the start)")
    return 0 if ok and improved else 1


if __name__ == "__main__":
    sys.exit(main())
