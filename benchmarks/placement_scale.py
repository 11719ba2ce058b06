"""How the placement MILP scales, and how it compares with the baselines.

    python benchmarks/placement_scale.py [--sizes 10x5,50x20,...] [--time-limit S]

For each size UNITSxDEVICES it generates an app (seeded, deterministic): sites of an edge gateway
and a fog box each (devices of count N, one site per replica) running a pipeline of operators on a
camera stream, two cloud pools shared by all sites, links gateway-fog and fog-cloud, a privacy
label removed by the first operator, and latency SLOs. It solves with the given time limit and
prints the solve time, status, MIP gap, and the objective (lexicographic latency, then cost) of
the solver and of every baseline (feasible ones only; `-` where infeasible).
Targets: optimal within 1 s up to 50 units x 20 devices; within 1% of optimal within 10 s at
2,000 units x 200 devices; never worse than the best baseline.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def generate(units: int, devices: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    clouds = 2
    sites = max(1, (devices - clouds) // 2)
    per_site = max(1, units // sites)
    lines = ['app scale { objective = minimize(latency, cost) }']
    lines.append(f"device gw {{ tier = edge, count = {sites}, compute = 0.5 TFLOPS, "
                 "memory = 4 GiB, cpus = 4, power = 10 W }")
    lines.append(f"device fog {{ tier = fog, count = {sites}, compute = 4 TFLOPS, "
                 "memory = 16 GiB, cpus = 8, power = 120 W, cost = 0.2 USD/h }")
    for c in range(clouds):
        lines.append(f"device cloud{c} {{ tier = cloud, compute = {100 * (c + 1)} TFLOPS, "
                     f"memory = 512 GiB, cpus = 64, cost = {2.0 + c} USD/h }}")
    lines.append("link gw <-> fog { bandwidth = 1 Gbps, latency = 1 ms }")
    for c in range(clouds):
        lines.append(f"link fog <-> cloud{c} {{ bandwidth = {200 + 100 * c} Mbps, "
                     f"latency = {10 + 5 * c} ms, cost = 0.05 USD/GB }}")
    lines.append("sensor cam { on = gw, rate = 15 Hz, emits = uint8[1, 3, 224, 224], "
                 "privacy = [pii] }")
    steps = []
    for k in range(per_site):
        work = rng.choice([5, 20, 80, 300, 1000])
        size = rng.choice([1000, 20000, 150528])
        removes = ", removes = [pii]" if k == 0 else ""
        lines.append(f"operator op{k} {{ work = {work} MFLOP, emits = uint8[1, {size}], "
                     f"memory = {rng.choice([16, 64, 256])} MiB{removes} }}")
        steps.append(f"op{k}")
    lines.append("actuator act { on = gw }")
    lines.append("store archive { on = cloud0 }")
    half = max(1, per_site // 2)
    lines.append(f"pipeline control {{ flow = cam -> {' -> '.join(steps[:half])} -> act, "
                 "slo = latency < 80 ms }")
    lines.append(f"pipeline record {{ flow = cam -> {' -> '.join(steps)} -> archive, "
                 "slo = latency < 1 s }")
    lines.append("privacy pii { allow = [edge, fog] }")
    return "\n".join(lines) + "\n"


def _lex_better_or_equal(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    for x, y in zip(a, b, strict=True):
        if x < y * (1 - 1e-6) - 1e-12:
            return True
        if x > y * (1 + 1e-6) + 1e-12:
            return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10x5,50x20,200x50,500x100,1000x150,2000x200")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="default: 1 s up to 50 units, else 10 s")
    args = ap.parse_args()

    from edgeflow import check_text
    from edgeflow.execution import build_execution
    from edgeflow.placement.baselines import BASELINES
    from edgeflow.placement.evaluate import evaluate
    from edgeflow.placement.milp import solve
    from edgeflow.placement.problem import build_problem

    header = (f"{'size':>10} {'units':>6} {'inst':>5} {'build s':>8} {'solve s':>8} "
              f"{'status':>10} {'gaps':>15} {'edgeflow':>22} " +
              " ".join(f"{n:>22}" for n in BASELINES) + "  best baseline")
    print(header)
    for size in args.sizes.split(","):
        units, devices = (int(x) for x in size.split("x"))
        result = check_text(generate(units, devices), str(ROOT / "examples" / "scale.ef"))
        assert result.program is not None, result.diagnostics[:3]
        t0 = time.perf_counter()
        problem = build_problem(build_execution(result.program))
        t1 = time.perf_counter()
        limit = args.time_limit or (1.0 if units <= 50 else 10.0)
        solution = solve(problem, time_limit=limit)
        n_units = sum(1 for i in problem.steps.values() if i.is_unit)
        order = result.program.app.objective
        cells, best = [], None
        for baseline in BASELINES.values():
            assignment = baseline(problem)
            ev = evaluate(problem, assignment) if assignment is not None else None
            if ev is None or not ev.feasible:
                cells.append(f"{'-':>22}")
                continue
            terms = ev.terms(order)
            cells.append(f"{terms[0] * 1e3:>10.2f}ms {terms[1]:>7.3f}$/h")
            best = terms if best is None or _lex_better_or_equal(terms, best) else best
        if solution.assignment is not None:
            ev = evaluate(problem, solution.assignment)
            mine = ev.terms(order)
            own = f"{mine[0] * 1e3:>10.2f}ms {mine[1]:>7.3f}$/h"
            verdict = ("no feasible baseline" if best is None else
                       "solver <= best" if _lex_better_or_equal(mine, best) else "WORSE")
        else:
            own, verdict = f"{'-':>22}", "solver found no plan"
        gaps = "/".join(f"{solution.stage_gaps[t]:.1%}" if t in solution.stage_gaps else "-"
                        for t in order)
        print(f"{size:>10} {n_units:>6} {len(problem.instances):>5} {t1 - t0:>8.2f} "
              f"{solution.seconds:>8.2f} {solution.status:>10} {gaps:>15} {own} "
              + " ".join(cells) + f"  {verdict}", flush=True)


if __name__ == "__main__":
    main()
