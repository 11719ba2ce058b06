"""The cost model's work formulas (docs/split.md, "Analysis of the model") for recurrent and
quantized operators, on models built with onnx.helper, with the expected FLOP written out from
the formula's definition; and the operators without a formula, which the analysis names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeflow.models.analysis import analyse


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
           outputs: list[str], initializers: list[np.ndarray | tuple[str, np.ndarray]],
           domains: tuple[str, ...] = ()) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(a, n) for n, a in initializers]  # type: ignore[misc]
    graph = helper.make_graph(nodes, "g", inputs,
                              [helper.make_empty_tensor_value_info(o) for o in outputs],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), *(
        helper.make_opsetid(d, 1) for d in domains)])
    model.ir_version = 8
    return model


def _work(model: onnx.ModelProto, **inputs: tuple[int, ...]) -> dict[str, int]:
    analysis = analyse(model, inputs)
    return {n.op: n.work for n in analysis.dynamic_nodes()}


@pytest.mark.parametrize(("op", "gates", "per_unit"), [("LSTM", 4, 9), ("GRU", 3, 8),
                                                       ("RNN", 1, 1)])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("bias", [False, True])
def test_recurrent_work_counts_gates_steps_directions_and_batch(
        op: str, gates: int, per_unit: int, direction: str, bias: bool) -> None:
    steps, batch, size, hidden = 7, 2, 5, 6
    dirs = 2 if direction == "bidirectional" else 1
    rng = np.random.default_rng(0)
    inits = [("W", rng.standard_normal((dirs, gates * hidden, size)).astype(np.float32)),
             ("R", rng.standard_normal((dirs, gates * hidden, hidden)).astype(np.float32))]
    if bias:
        inits.append(("B", rng.standard_normal((dirs, 2 * gates * hidden)).astype(np.float32)))
    node = helper.make_node(op, ["x", "W", "R", *(["B"] if bias else [])], ["y"],
                            hidden_size=hidden, direction=direction)
    model = _model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                          ["T", "N", size])], ["y"], inits)
    per_step = 2 * gates * hidden * (size + hidden) + (2 * gates * hidden if bias else 0) + \
        per_unit * hidden
    assert _work(model, x=(steps, batch, size)) == {op: dirs * steps * batch * per_step}


def test_batch_first_layout_reads_the_steps_from_the_second_axis() -> None:
    hidden, size = 3, 4
    node = helper.make_node("GRU", ["x", "W", "R"], ["y"], hidden_size=hidden, layout=1)
    model = _model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 9, size])],
                   ["y"], [("W", np.zeros((1, 3 * hidden, size), np.float32)),
                           ("R", np.zeros((1, 3 * hidden, hidden), np.float32))])
    model.opset_import[0].version = 14  # layout came with opset 14
    assert _work(model, x=(2, 9, size)) == {"GRU": 9 * 2 * (2 * 3 * hidden * (size + hidden)
                                                             + 8 * hidden)}


def _conv_pair(quantized: str) -> tuple[int, int]:
    """The work of a float Conv and of its quantized twin on the same shapes."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 10, 10])
    w = np.ones((8, 2, 3, 3), np.float32)
    conv = _model([helper.make_node("Conv", ["x", "w"], ["y"], group=2, pads=[1, 1, 1, 1])],
                  [x], ["y"], [("w", w)])
    xq = helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 4, 10, 10])
    if quantized == "ConvInteger":
        node = helper.make_node("ConvInteger", ["x", "w"], ["y"], group=2, pads=[1, 1, 1, 1])
        inits = [("w", w.astype(np.uint8))]
    else:
        node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"],
                                ["y"], group=2, pads=[1, 1, 1, 1])
        inits = [("xs", np.array(0.1, np.float32)), ("xz", np.array(0, np.uint8)),
                 ("w", w.astype(np.uint8)), ("ws", np.array(0.1, np.float32)),
                 ("wz", np.array(0, np.uint8)), ("ys", np.array(0.1, np.float32)),
                 ("yz", np.array(0, np.uint8))]
    twin = _model([node], [xq], ["y"], inits)
    return _work(conv, x=(1, 4, 10, 10))["Conv"], _work(twin, x=(1, 4, 10, 10))[quantized]


@pytest.mark.parametrize("quantized", ["ConvInteger", "QLinearConv"])
def test_a_quantized_conv_does_the_work_of_its_float_twin(quantized: str) -> None:
    float_work, quantized_work = _conv_pair(quantized)
    assert quantized_work == float_work == 2 * 1 * 8 * 100 * 2 * 9


@pytest.mark.parametrize("quantized", ["MatMulInteger", "QLinearMatMul"])
def test_a_quantized_matmul_does_the_work_of_its_float_twin(quantized: str) -> None:
    a = helper.make_tensor_value_info("a", TensorProto.UINT8, [3, 16, 32])
    b = np.ones((32, 8), np.uint8)
    if quantized == "MatMulInteger":
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
        inits = [("b", b)]
    else:
        node = helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"],
                                ["y"])
        inits = [("as", np.array(0.1, np.float32)), ("az", np.array(0, np.uint8)), ("b", b),
                 ("bs", np.array(0.1, np.float32)), ("bz", np.array(0, np.uint8)),
                 ("ys", np.array(0.1, np.float32)), ("yz", np.array(0, np.uint8))]
    assert _work(_model([node], [a], ["y"], inits), a=(3, 16, 32)) == \
        {quantized: 2 * 3 * 16 * 8 * 32}


def test_operators_without_a_formula_are_named_once_per_op_with_their_count() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])
    nodes = [helper.make_node("Einsum", ["x", "w"], ["a"], equation="ij,jk->ik"),
             helper.make_node("Einsum", ["a", "w2"], ["b"], equation="ij,jk->ik"),
             helper.make_node("Relu", ["b"], ["y"])]
    model = _model(nodes, [x], ["y"], [("w", np.ones((8, 8), np.float32)),
                                       ("w2", np.ones((8, 3), np.float32))])
    analysis = analyse(model, {"x": (4, 8)})
    assert analysis.no_formula == {"Einsum": 2}  # Relu's one FLOP per element is its formula


def _if_model(condition: str) -> onnx.ModelProto:
    """x [1, 4] -> If -> y: the then branch keeps x's shape, the else branch adds an axis
    (the `if x.dim() == 2` of exporters); `condition` is `static` (computed from x's shape)
    or `input` (a graph input of its own)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    then = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                             [helper.make_empty_tensor_value_info("t")])
    other = helper.make_graph([helper.make_node("Unsqueeze", ["x", "axis"], ["e"])], "else", [],
                              [helper.make_empty_tensor_value_info("e")],
                              initializer=[numpy_helper.from_array(np.array([0], np.int64),
                                                                   "axis")])
    nodes, inputs = [], [x]
    if condition == "static":
        nodes += [helper.make_node("Shape", ["x"], ["shape"]),
                  helper.make_node("Size", ["shape"], ["rank"]),
                  helper.make_node("Equal", ["rank", "two"], ["cond"])]
    else:
        inputs.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    nodes += [helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other),
              helper.make_node("Sigmoid", ["y"], ["z"])]
    return _model(nodes, inputs, ["z"], [("two", np.array(2, np.int64))])


def test_an_if_with_a_static_condition_takes_the_shape_of_the_branch_that_runs() -> None:
    analysis = analyse(_if_model("static"), {"x": (1, 4)})
    assert analysis.tensors["y"].shape == (1, 4)  # rank 2: the then branch
    assert analysis.tensors["z"].shape == (1, 4)


def test_an_if_whose_branches_disagree_on_a_condition_from_an_input_is_refused() -> None:
    """The shape depends on a value only known at run time: a located refusal naming the node,
    not a guess."""
    from edgeflow.models.analysis import ModelError
    with pytest.raises(ModelError, match="output of If node"):
        analyse(_if_model("input"), {"x": (1, 4), "cond": ()})


def test_shapes_onnx_cannot_infer_are_measured_and_named() -> None:
    """A contrib op ONNX shape inference has no rule for (onnxruntime runs it) and an output
    declared with a dimension of -1: their shapes come from running the model, and the
    analysis says so."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])
    nodes = [helper.make_node("FusedMatMul", ["x", "w"], ["a"], domain="com.microsoft"),
             helper.make_node("Relu", ["a"], ["y"])]
    model = _model(nodes, [x], ["y"], [("w", np.ones((8, 5), np.float32))],
                   domains=("com.microsoft",))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                 [-1, 5]))
    analysis = analyse(model, {"x": (2, 8)})
    assert analysis.tensors["a"].shape == (2, 5) and analysis.tensors["y"].shape == (2, 5)
    assert analysis.shape_sources == {"a": "measured", "y": "measured"}
    assert {n.op: n.work for n in analysis.dynamic_nodes()}["FusedMatMul"] == 2 * 2 * 5 * 8


def test_a_shape_that_depends_on_the_input_values_is_refused_not_fixed() -> None:
    from edgeflow.models.analysis import ModelError

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])
    nodes = [helper.make_node("Greater", ["x", "zero"], ["mask"]),
             helper.make_node("NonZero", ["mask"], ["idx"]),
             helper.make_node("Cast", ["idx"], ["y"], to=TensorProto.FLOAT)]
    model = _model(nodes, [x], ["y"], [("zero", np.array(0.0, np.float32))])
    with pytest.raises(ModelError, match="depends on the input values"):
        analyse(model, {"x": (64,)})


def test_where_models_may_not_run_nothing_is_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    """The language server analyses models inside `never_run`: a model whose shapes need
    measuring is refused with the reason, and onnxruntime is never asked to run it."""
    import onnxruntime

    from edgeflow.models.analysis import ModelError
    from edgeflow.models.measure import never_run

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was run")

    monkeypatch.setattr(onnxruntime, "InferenceSession", forbidden)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])
    model = _model([helper.make_node("FusedMatMul", ["x", "w"], ["y"], domain="com.microsoft")],
                   [x], ["y"], [("w", np.ones((8, 5), np.float32))], domains=("com.microsoft",))
    with never_run(), pytest.raises(ModelError, match="models are not run here"):
        analyse(model, {"x": (2, 8)})


def test_measured_shapes_are_kept_in_the_cache_folder_and_no_cache_keeps_nothing(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The first analysis runs the model, the second reads its shapes from edgeflow's cache
    folder (even where no model may run); with EDGEFLOW_NO_CACHE (`--no-cache`) nothing is
    read or written."""
    import onnxruntime

    from edgeflow.models.measure import never_run

    runs: list[object] = []
    real = onnxruntime.InferenceSession

    def counted(*args: object, **kwargs: object) -> object:
        runs.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(onnxruntime, "InferenceSession", counted)
    monkeypatch.setenv("EDGEFLOW_CACHE_DIR", str(tmp_path / "cache"))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])
    model = _model([helper.make_node("FusedMatMul", ["x", "w"], ["y"], domain="com.microsoft")],
                   [x], ["y"], [("w", np.ones((8, 5), np.float32))], domains=("com.microsoft",))
    monkeypatch.setenv("EDGEFLOW_NO_CACHE", "1")
    analyse(model, {"x": (3, 8)})
    assert len(runs) == 1 and not (tmp_path / "cache").exists()
    monkeypatch.delenv("EDGEFLOW_NO_CACHE")
    analyse(model, {"x": (3, 8)})
    assert len(runs) == 2 and list((tmp_path / "cache" / "shapes").glob("*.json"))
    with never_run():
        assert analyse(model, {"x": (3, 8)}).tensors["y"].shape == (3, 5)
    assert len(runs) == 2  # read from the cache, not run
    analyse(model, {"x": (4, 8)})  # other shapes: measured again
    assert len(runs) == 3


def test_inputs_too_large_to_make_up_are_not_run() -> None:
    """Measuring runs the model on random inputs of the bound shapes: bound absurdly large,
    it refuses with the reason instead of allocating them."""
    from edgeflow.models.analysis import ModelError

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])
    model = _model([helper.make_node("FusedMatMul", ["x", "w"], ["y"], domain="com.microsoft")],
                   [x], ["y"], [("w", np.ones((8, 5), np.float32))], domains=("com.microsoft",))
    with pytest.raises(ModelError, match="more than the 256 MiB"):
        analyse(model, {"x": (2**31 - 1, 8)})


def _opaque_if_model() -> onnx.ModelProto:
    """x [2, 8] -> If(cond, a graph input) -> y [10] -> Sigmoid: the then branch holds a contrib
    op ONNX inference has no rule for (FusedMatMul), so inference gives neither branch's
    shapes; both reshape with a shape the main graph computes (an outer-scope Constant)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    then = helper.make_graph([
        helper.make_node("FusedMatMul", ["x", "w"], ["a"], domain="com.microsoft", alpha=2.0),
        helper.make_node("Reshape", ["a", "flat"], ["t"])], "then", [],
        [helper.make_empty_tensor_value_info("t")])
    other = helper.make_graph([
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Relu", ["m"], ["r"]),
        helper.make_node("Reshape", ["r", "flat"], ["e"])], "else", [],
        [helper.make_empty_tensor_value_info("e")])
    nodes = [helper.make_node("Constant", [], ["flat"],
                              value=numpy_helper.from_array(np.array([10], np.int64))),
             helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other),
             helper.make_node("Sigmoid", ["y"], ["z"])]
    rng = np.random.default_rng(3)
    return _model(nodes, [x, cond], ["z"], [("w", rng.standard_normal((8, 5), np.float32))],
                  domains=("com.microsoft",))


def test_an_if_on_a_scalar_input_whose_branches_inference_cannot_follow_is_analysed() -> None:
    """Each branch is analysed as a model of its own (folded, measured): they agree on [10],
    so the If is one atomic node costing its costlier branch, and the halves of every cut
    equal the whole whichever branch runs."""
    import onnxruntime as ort

    from edgeflow.models.cuts import CutProblem
    from edgeflow.models.extract import split_model

    model = _opaque_if_model()
    analysis = analyse(model, {"x": (2, 8), "cond": ()})
    assert analysis.tensors["y"].shape == (10,) and analysis.tensors["z"].shape == (10,)
    assert analysis.shape_sources["y"] == "branch"
    # then: FusedMatMul 2*2*5*8 = 160 + Reshape 10 (one per element); else: MatMul 160 +
    # Relu 10 + Reshape 10: the else branch is the costlier
    assert {n.op: n.work for n in analysis.dynamic_nodes()} == {"If": 180, "Sigmoid": 10}
    cuts = CutProblem(analysis).enumerate(limit=100)
    assert len(cuts) >= 3
    options = ort.SessionOptions()
    options.log_severity_level = 4

    def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return ort.InferenceSession(model.SerializeToString(), options,
                                    providers=["CPUExecutionProvider"]).run(None, feeds)

    x = np.random.default_rng(4).standard_normal((2, 8)).astype(np.float32)
    for cond in (True, False):
        feeds = {"x": x, "cond": np.array(cond)}
        whole = run(model, feeds)[0]
        for cut in cuts:
            head, tail = split_model(analysis, cut)
            middle = dict(zip([o.name for o in head.graph.output],
                              run(head, {i.name: feeds[i.name] for i in head.graph.input}),
                              strict=True))
            both = {**feeds, **middle}
            np.testing.assert_allclose(run(tail, {i.name: both[i.name]
                                                  for i in tail.graph.input})[0], whole,
                                       rtol=1e-6)


def test_an_if_whose_branch_cannot_be_analysed_says_why() -> None:
    """A branch whose own shape depends on values: the refusal names the If and the reason
    its branch gave."""
    from edgeflow.models.analysis import ModelError

    model = _opaque_if_model()
    then = next(a.g for a in model.graph.node[1].attribute if a.name == "then_branch")
    then.node.extend([helper.make_node("Greater", ["x", "zero"], ["positive"]),
                      helper.make_node("NonZero", ["positive"], ["nz"]),  # [2, how many]
                      helper.make_node("Cast", ["nz"], ["t2"], to=TensorProto.FLOAT)])
    then.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero"))
    then.output[0].name = "t2"
    with pytest.raises(ModelError, match=r"output of If node .*its branch then cannot be "
                                         r"analysed: .*depends on the input values"):
        analyse(model, {"x": (2, 8), "cond": ()})
