"""Split inference: analysis of real-shaped ONNX models, exact optimal cuts (min-cut against
exhaustive enumeration), the Pareto frontier, and emitted halves checked in onnxruntime."""

from __future__ import annotations

import random
from fractions import Fraction

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from edgeflow.models.analysis import analyse
from edgeflow.models.cuts import Cut, CutProblem
from edgeflow.models.extract import split_model
from tests.onnx_models import MODELS


def pareto_front(cuts: list[Cut]) -> list[Cut]:
    """All Pareto-optimal cuts of a list, in (head work, bytes), one per distinct point."""
    best: dict[tuple[int, int], Cut] = {}
    for cut in sorted(cuts, key=lambda c: c.key):
        if not best or cut.transfer_bytes < min(c.transfer_bytes for c in best.values()):
            best.setdefault(cut.key, cut)
    return sorted(best.values(), key=lambda c: c.head_work)


EXACT = settings(derandomize=True, max_examples=60, deadline=None)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds),
                    strict=True))


def assert_equivalent(analysis, cut: Cut, feeds, whole) -> None:  # type: ignore[no-untyped-def]
    head, tail = split_model(analysis, cut)  # onnx.checker full check inside
    assert [i.name for i in head.graph.input] == list(analysis.inputs)
    assert [o.name for o in head.graph.output] == list(cut.tensors)
    assert [i.name for i in tail.graph.input] == list(cut.tensors)
    assert [o.name for o in tail.graph.output] == list(analysis.outputs)
    assert head.opset_import == analysis.model.opset_import
    for value in [*head.graph.input, *head.graph.output, *tail.graph.input, *tail.graph.output]:
        assert all(d.dim_value > 0 for d in value.type.tensor_type.shape.dim), value.name
    sent = run(head, feeds)
    out = run(tail, {name: sent[name] for name in cut.tensors})
    for name, expected in whole.items():
        assert np.abs(out[name] - expected).max() <= 1e-4, (name, cut.tensors)
    # the weights a half holds are static: the model's own, or values the analysis evaluated
    # (never an activation)
    head_weights = {i.name for i in head.graph.initializer}
    assert all(analysis.producer.get(w) is None or w in analysis.static_values
               for w in head_weights)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_candidate_and_forced_cut_is_equivalent(name: str) -> None:
    model, inputs = MODELS[name]()
    analysis = analyse(model, inputs)
    problem = CutProblem(analysis)
    rng = np.random.default_rng(0)
    feeds = {k: rng.random(v).astype(np.float32) for k, v in inputs.items()}
    whole = run(model, feeds)
    candidates, complete = problem.pareto()
    assert complete
    every = list(problem.enumerate())
    forced = every if len(every) <= 80 else random.Random(0).sample(every, 80)
    optimum = problem.optimal(1e9, 1e11, 1e7)
    for cut in {c.head: c for c in [*candidates, *forced, optimum]}.values():
        assert_equivalent(analysis, cut, feeds, whole)
        assert problem.from_tensors(list(cut.tensors)).key == cut.key


def test_model_analysis_counts_work_bytes_and_weights() -> None:
    model, inputs = MODELS["vgg_chain"]()
    analysis = analyse(model, inputs)
    first = analysis.nodes[0]
    assert first.op == "Conv"
    assert first.work == 2 * 1 * 8 * 32 * 32 * 3 * 3 * 3       # 2·N·Cout·H·W·Cin·kH·kW
    assert first.output_bytes == 8 * 32 * 32 * 4
    assert first.weight_bytes == (8 * 3 * 3 * 3 + 8) * 4
    gemm = next(n for n in analysis.nodes if n.op == "Gemm")
    assert gemm.work == 2 * 1 * 32 * 256                        # 2·M·N·K
    relu = analysis.nodes[1]
    assert relu.work == 8 * 32 * 32                             # one FLOP per output element


def test_constant_nodes_and_shape_subgraphs_are_static() -> None:
    model, inputs = MODELS["constant_weights"]()
    analysis = analyse(model, inputs)
    consts = [n for n in analysis.nodes if n.op == "Constant"]
    assert consts and all(n.static and n.work == 0 for n in consts)
    conv = next(n for n in analysis.nodes if n.op == "Conv")
    assert conv.weight_bytes == (8 * 3 * 3 * 3 + 8) * 4
    model, inputs = MODELS["shape_reshape"]()
    analysis = analyse(model, inputs)
    static_ops = {n.op for n in analysis.nodes if n.static}
    assert static_ops == {"Shape", "Gather", "Concat"}
    problem = CutProblem(analysis)
    shape_out = next(n for n in analysis.nodes if n.op == "Shape").outputs[0]
    assert shape_out not in problem.order  # never transfer
    matmul = next(n for n in analysis.nodes if n.op == "MatMul")
    assert matmul.work == 2 * 3 * 5 * 128


def test_dynamic_dims_are_bound() -> None:
    model, inputs = MODELS["dynamic_dims"]()
    analysis = analyse(model, inputs)
    assert analysis.tensors["mask"].shape == (2, 2, 12, 20)


def test_if_node_is_atomic_with_its_outer_scope_input() -> None:
    model, inputs = MODELS["if_node"]()
    analysis = analyse(model, inputs)
    node = next(n for n in analysis.nodes if n.op == "If")
    features = next(n for n in analysis.nodes if n.op == "Relu").outputs[0]
    cond = next(n for n in analysis.nodes if n.op == "Greater").outputs[0]
    assert node.inputs == (cond, features)  # `features` is read inside both branches
    assert node.work == 2 * 8 * 16 * 16  # the costlier branch: Neg + Sigmoid


# ------------------------------------------------------------------ optimality, random DAGs

@st.composite
def random_dag(draw: st.DrawFn, shape_readers: bool = False,
               ) -> tuple[onnx.ModelProto, dict[str, tuple[int, ...]]]:
    """A random DAG of 1x1 convolutions, ReLUs and Concats over 4x4 feature maps; with
    `shape_readers`, also a convolution whose only reader is a `Shape` that reshapes another
    tensor (a dynamic node that only a static node reads)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    tensors = [("input", draw(st.integers(1, 6)))]
    nodes, inits = [], []
    kinds = ["conv", "conv", "relu", "concat"] + (["shape"] if shape_readers else [])
    for i in range(draw(st.integers(1, 9))):
        kind = draw(st.sampled_from(kinds))
        a = draw(st.sampled_from(tensors))
        out = f"t{i}"
        if kind == "shape":
            b = draw(st.sampled_from(tensors))
            w = onnx.numpy_helper.from_array(rng.normal(0, 1, (b[1], a[1], 1, 1)).astype(
                np.float32), f"w{i}")
            inits.append(w)
            nodes += [helper.make_node("Conv", [a[0], w.name], [f"x{i}"], name=f"n{i}"),
                      helper.make_node("Shape", [f"x{i}"], [f"s{i}"], name=f"shape{i}"),
                      helper.make_node("Reshape", [b[0], f"s{i}"], [out], name=f"r{i}")]
            tensors.append((out, b[1]))
        elif kind == "conv":
            cout = draw(st.integers(1, 8))
            w = onnx.numpy_helper.from_array(rng.normal(0, 1, (cout, a[1], 1, 1)).astype(
                np.float32), f"w{i}")
            inits.append(w)
            nodes.append(helper.make_node("Conv", [a[0], w.name], [out], name=f"n{i}"))
            tensors.append((out, cout))
        elif kind == "relu":
            nodes.append(helper.make_node("Relu", [a[0]], [out], name=f"n{i}"))
            tensors.append((out, a[1]))
        else:
            b = draw(st.sampled_from(tensors))
            nodes.append(helper.make_node("Concat", [a[0], b[0]], [out], name=f"n{i}", axis=1))
            tensors.append((out, a[1] + b[1]))
    used = {i for n in nodes for i in n.input}
    outputs = [t for t in tensors[1:] if t[0] not in used] or [tensors[-1]]
    graph = helper.make_graph(
        nodes, "dag", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                     [1, tensors[0][1], 4, 4])],
        [helper.make_tensor_value_info(t, TensorProto.FLOAT, [1, c, 4, 4]) for t, c in outputs],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, {"input": (1, tensors[0][1], 4, 4)}


def _cost(p: CutProblem, cut: Cut, edge: float, cloud: float, bw: float) -> Fraction:
    return (Fraction(cut.head_work) / Fraction(edge) + Fraction(cut.tail_work) / Fraction(cloud)
            + Fraction(8 * cut.transfer_bytes) / Fraction(bw))


@given(random_dag(), st.floats(1e3, 1e9), st.floats(1e3, 1e9), st.floats(1e3, 1e9))
@EXACT
def test_min_cut_optimum_equals_exhaustive_optimum(dag, edge, cloud, bw) -> None:  # type: ignore[no-untyped-def]
    model, inputs = dag
    problem = CutProblem(analyse(model, inputs))
    every = list(problem.enumerate())
    best = min(_cost(problem, c, edge, cloud, bw) for c in every)
    found = problem.optimal(edge, cloud, bw)
    assert problem.is_valid(found.head)
    assert _cost(problem, found, edge, cloud, bw) == best


@given(random_dag(), st.integers(0, 10**6), st.integers(0, 10**6))
@EXACT
def test_pareto_front_holds_every_weighted_optimum(dag, a, b) -> None:  # type: ignore[no-untyped-def]
    model, inputs = dag
    problem = CutProblem(analyse(model, inputs))
    every = list(problem.enumerate())
    front, complete = problem.pareto()
    assert complete and [c.key for c in front] == [c.key for c in pareto_front(every)]
    for cut in every:  # nothing dominates a front point; every cut is dominated by one
        assert not any(c.head_work <= f.head_work and c.transfer_bytes <= f.transfer_bytes
                       and c.key != f.key for f in front for c in [cut])
    hull = problem.hull(lambda v: problem.work[v], lambda v: 0)
    assert {c.key for c in hull} <= {c.key for c in front}
    best = min(a * c.head_work + b * c.transfer_bytes for c in every)
    assert min(a * c.head_work + b * c.transfer_bytes for c in hull) == best


def test_forced_cut_that_is_not_a_cut_is_refused() -> None:
    model, inputs = MODELS["resnet"]()
    problem = CutProblem(analyse(model, inputs))
    add = next(n for n in problem.nodes.values() if n.op == "Add")
    with pytest.raises(ValueError, match="not a cut"):
        problem.from_tensors([add.inputs[0]])  # one side of a residual block alone
    with pytest.raises(ValueError, match="not a tensor that can be cut"):
        problem.from_tensors(["no_such_tensor"])


@given(random_dag())
@EXACT
def test_incremental_walk_agrees_with_direct_evaluation(dag) -> None:  # type: ignore[no-untyped-def]
    model, inputs = dag
    problem = CutProblem(analyse(model, inputs))
    seen: list[tuple[int, int, frozenset[int]]] = []
    problem._walk(lambda w, b: True, lambda w, b, head: seen.append((w, b, head)), 10_000)
    assert len({h for _, _, h in seen}) == len(seen)  # each head once
    for work, nbytes, head in seen:
        assert problem.is_valid(head)
        assert problem.evaluate(head).key == (work, nbytes)


def test_a_model_of_ir_3_with_its_weights_among_the_inputs_splits() -> None:
    """IR 3 listed every initializer as a graph input too (caffe2-era exports): the analysis
    binds only the real inputs, and each half is emitted under IR 4, which needs no such list."""
    w = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("MatMul", ["b", "w"], ["y"])]
    graph = helper.make_graph(
        nodes, "ir3", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]),
                       helper.make_tensor_value_info("w", TensorProto.FLOAT, [8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        initializer=[onnx.numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    analysis = analyse(model, {"x": (1, 8)})
    feeds = {"x": np.ones((1, 8), np.float32)}
    whole = run(model, feeds)
    for cut in CutProblem(analysis).enumerate():
        assert_equivalent(analysis, cut, feeds, whole)


def test_a_shape_read_from_a_computed_static_tensor_is_folded_and_emitted() -> None:
    """A YOLO head's anchor grid: `Shape(x) -> Gather -> Range -> Add -> Shape -> Concat ->
    Reshape`. ONNX inference cannot tell the Range's length; the reference evaluator computes
    the whole static subgraph, Shape of the computed tensor included, with no model run, and
    every cut's halves take the evaluated values."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Shape", ["x"], ["xs"]),
             helper.make_node("Gather", ["xs", "one"], ["n"]),
             helper.make_node("Range", ["zero", "n", "one"], ["r"]),
             helper.make_node("Add", ["r", "one"], ["a"]),
             helper.make_node("Cast", ["a"], ["grid"], to=TensorProto.FLOAT),
             helper.make_node("Shape", ["a"], ["s"]),
             helper.make_node("Concat", ["lead", "s"], ["shape"], axis=0),
             helper.make_node("Relu", ["x"], ["h"]),
             helper.make_node("Reshape", ["h", "shape"], ["y0"]),
             helper.make_node("Add", ["y0", "grid"], ["y"])]
    inits = [onnx.numpy_helper.from_array(np.array(v, np.int64), n)
             for n, v in (("zero", 0), ("one", 1), ("lead", [1]))]
    graph = helper.make_graph(nodes, "anchors", [x], [helper.make_tensor_value_info(
        "y", TensorProto.FLOAT, [1, 4])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    analysis = analyse(model, {"x": (1, 4)})
    assert analysis.shape_sources == {}  # evaluated, not measured
    assert {"shape", "grid"} <= set(analysis.static_values)
    feeds = {"x": np.arange(4, dtype=np.float32).reshape(1, 4)}
    whole = run(model, feeds)
    for cut in CutProblem(analysis).enumerate():
        assert_equivalent(analysis, cut, feeds, whole)


@given(random_dag(shape_readers=True))
@EXACT
def test_every_cut_of_a_dag_with_shape_only_readers_is_accepted_and_exact(dag) -> None:  # type: ignore[no-untyped-def]
    """A dynamic node that only a `Shape` reads: the solver, `--cut` (`from_tensors`) and the
    emitted halves agree on which side it is, for every valid cut and every listed candidate."""
    model, inputs = dag
    analysis = analyse(model, inputs)
    problem = CutProblem(analysis)
    feeds = {"input": np.random.default_rng(0).random(inputs["input"]).astype(np.float32)}
    whole = run(model, feeds)
    candidates, _ = problem.pareto()
    for cut in [*candidates, *problem.enumerate(), problem.optimal(1e9, 1e11, 1e7)]:
        assert problem.from_tensors(list(cut.tensors)).key == cut.key
        assert_equivalent(analysis, cut, feeds, whole)
