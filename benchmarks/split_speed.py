"""How fast the split analysis and the exact optimal cut are on a 1,000-node DAG model.

    python benchmarks/split_speed.py [--blocks N]

Builds (with onnx.helper, in memory) a ResNet-like model of residual blocks with an
Inception-like block of parallel branches every tenth block: about 1,000 ONNX nodes. Prints the
time to analyse it, to find the optimal cut by min s-t cut, to find the Pareto cuts on the convex
hull by parametric min-cut, and to enumerate every valid cut exhaustively, with the ratio of
exhaustive to min-cut time, and checks that both optima agree. Target: analysis + optimal cut
under 1 s.
"""

from __future__ import annotations

import argparse
import sys
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(blocks: int):  # type: ignore[no-untyped-def]
    import onnx
    from onnx import TensorProto, helper

    from tests.onnx_models import Builder

    b = Builder(seed=7)
    x = b.conv("input", 3, 8, 3, stride=2, bn=False)
    for i in range(blocks):
        if i % 10 == 9:
            branches = [b.conv(x, 8, 2, 1, bn=False),
                        b.conv(b.conv(x, 8, 2, 1, bn=False), 2, 2, 3, bn=False),
                        b.conv(b.conv(x, 8, 2, 1, bn=False), 2, 4, 3, bn=False)]
            x = b.node("Concat", branches, "concat", axis=1)
        else:
            y = b.conv(x, 8, 8, 3, bn=False)
            y = b.conv(y, 8, 8, 3, bn=False, act=False)
            x = b.node("Relu", [b.node("Add", [x, y], "add")], "relu")
    out = b.conv(x, 8, 4, 1, bn=False, act=False)
    for node in b.nodes:
        node.output[:] = ["output" if o == out else o for o in node.output]
    graph = helper.make_graph(b.nodes, "dag", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, [1, 3, 32, 32])], [helper.make_tensor_value_info(
            "output", TensorProto.FLOAT, [1, 4, 16, 16])], initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=170)
    args = ap.parse_args()
    from edgeflow.models.analysis import analyse
    from edgeflow.models.cuts import CutProblem

    model = build(args.blocks)
    edge, cloud, bw = 2e9, 50e12, 50e6
    t0 = time.perf_counter()
    analysis = analyse(model, {"input": (1, 3, 32, 32)})
    t1 = time.perf_counter()
    problem = CutProblem(analysis)
    optimum = problem.optimal(edge, cloud, bw)
    t2 = time.perf_counter()
    hull = problem.hull(lambda v: problem.work[v], lambda v: 0)
    t3 = time.perf_counter()
    count, best = 0, None
    for cut in problem.enumerate(limit=10_000_000):
        count += 1
        cost = (Fraction(cut.head_work) / Fraction(edge) + Fraction(cut.tail_work) /
                Fraction(cloud) + Fraction(8 * cut.transfer_bytes) / Fraction(bw))
        best = cost if best is None or cost < best else best
    t4 = time.perf_counter()
    found = (Fraction(optimum.head_work) / Fraction(edge) + Fraction(optimum.tail_work) /
             Fraction(cloud) + Fraction(8 * optimum.transfer_bytes) / Fraction(bw))
    print(f"model: {len(analysis.nodes)} ONNX nodes, {analysis.total_work / 1e9:.3f} GFLOP")
    print(f"analyse: {(t1 - t0) * 1000:.0f} ms; optimal cut (min s-t cut): "
          f"{(t2 - t1) * 1000:.0f} ms; together {(t2 - t0) * 1000:.0f} ms "
          f"(target < 1000 ms: {'met' if t2 - t0 < 1 else 'MISSED'})")
    print(f"Pareto cuts on the convex hull (parametric min-cut): {len(hull)} in "
          f"{(t3 - t2) * 1000:.0f} ms")
    print(f"exhaustive enumeration: {count} valid cuts in {(t4 - t3) * 1000:.0f} ms = "
          f"{(t4 - t3) / (t2 - t1):.1f}x the min-cut time")
    print(f"optimum: min-cut {float(found) * 1000:.4f} ms, exhaustive {float(best) * 1000:.4f} ms"
          f" ({'equal' if found == best else 'DIFFERENT'}), cut at {', '.join(optimum.tensors)}")


if __name__ == "__main__":
    main()
