"""How the k8s bundle grows with the number of sites.

    python benchmarks/bundle_size.py [--counts 12,13,120,121]

Compiles examples/smart_city_traffic.ef with its street cabinets (one per intersection: a
site) at each count, in memory, and prints per count: the bundle's files, its YAML files and
lines (k8s/ and, apart, k8s/cert-manager/), the other files under k8s/ (each instance's
configuration) and their lines, and the objects `kubectl apply -k` creates (rendered by the
tests' kustomize renderer, which the tests check against kubectl). Then the YAML lines each
added site costs, between consecutive counts. Target: at most 120 lines of YAML per site.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeflow import api, check_text
from tests import kustomize

SOURCE = ROOT / "examples" / "smart_city_traffic.ef"
COUNT = "count   = 12"


def measure(count: int) -> dict[str, float]:
    text = SOURCE.read_text()
    assert COUNT in text, "the example no longer declares its cabinets as expected"
    result = check_text(text.replace(COUNT, f"count   = {count}"), str(SOURCE))
    assert result.program is not None, result.diagnostics
    started = time.perf_counter()
    plan = api.plan(result.program).plan
    files = api.bundle(result.program, plan, "k8s", "smart_city_traffic.ef")
    seconds = time.perf_counter() - started

    def lines(paths: list[str]) -> int:
        return sum(files[p].count(b"\n") for p in paths)

    yaml_files = [p for p in files if p.startswith("k8s/") and p.endswith(".yaml")]
    certs = [p for p in yaml_files if p.startswith("k8s/cert-manager/")]
    other = [p for p in files if p.startswith("k8s/") and not p.endswith(".yaml")]
    return {"count": count, "seconds": seconds, "files": len(files),
            "yaml_files": len(yaml_files), "yaml_lines": lines(yaml_files),
            "cert_lines": lines(certs), "config_files": len(other),
            "config_lines": lines(other),
            "objects": len(kustomize.build(files, "k8s")) +
            len(kustomize.build(files, "k8s/cert-manager"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="12,13,120,121")
    args = ap.parse_args()
    rows = [measure(int(c)) for c in args.counts.split(",")]
    print(f"{'sites':>6} {'files':>6} {'yaml files':>10} {'yaml lines':>10} "
          f"{'of it certs':>11} {'config files':>12} {'config lines':>12} {'objects':>8} "
          f"{'plan+emit s':>11}")
    for r in rows:
        print(f"{r['count']:>6} {r['files']:>6} {r['yaml_files']:>10} {r['yaml_lines']:>10} "
              f"{r['cert_lines']:>11} {r['config_files']:>12} {r['config_lines']:>12} "
              f"{r['objects']:>8} {r['seconds']:>11.2f}")
    worst = 0.0
    for a, b in itertools.pairwise(rows):
        if b["count"] > a["count"]:
            per = (b["yaml_lines"] - a["yaml_lines"]) / (b["count"] - a["count"])
            worst = max(worst, per)
            print(f"sites {a['count']} -> {b['count']}: {per:.1f} YAML lines per added site "
                  f"({(b['config_lines'] - a['config_lines']) / (b['count'] - a['count']):.0f} "
                  "lines of configuration files)")
    print(f"target: at most 120 YAML lines per added site: {'met' if worst <= 120 else 'MISSED'}")


if __name__ == "__main__":
    main()
