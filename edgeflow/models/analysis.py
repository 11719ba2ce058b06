"""Analysis of an ONNX model with its dynamic dimensions bound: the shape of every tensor, and per
node its work (FLOP, as docs/split.md defines it), output bytes and weight bytes.

Tensors are *static* when their value follows from the model and the bound input shapes alone:
initializers, `Constant` outputs, `Shape`/`Size` of any tensor, and whatever static nodes compute
from those (the `Shape -> Gather -> Concat -> Reshape` subgraphs exporters write). Static nodes
carry no activation and no work; a model half that needs a static tensor recomputes it (see
`extract.py`), so static tensors are never transfer. Where ONNX shape inference stops (a
`Reshape` whose shape comes from such a subgraph), the static subgraph is evaluated with the ONNX
reference evaluator and folded into initializers, and inference runs again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from math import prod

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from edgeflow.models.measure import Measured, measure_shapes
from edgeflow.models.signature import bind_inputs

# Nodes whose output depends only on their inputs' shapes.
SHAPE_OPS = {"Shape", "Size"}
# Nodes that are never static: their values change from run to run.
NONDETERMINISTIC_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform",
                        "RandomUniformLike", "Multinomial", "Bernoulli"}


class ModelError(Exception):
    """A user-facing problem with a model file or its bound inputs; the message says what, and
    `code` is the diagnostic code (docs/diagnostics.md) that `edgeflow check` uses for it."""

    def __init__(self, message: str, code: str = "E0606") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Tensor:
    name: str
    elem_type: int
    shape: tuple[int, ...]

    @property
    def dtype(self) -> str:
        return str(helper.tensor_dtype_to_np_dtype(self.elem_type))

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * helper.tensor_dtype_to_np_dtype(self.elem_type).itemsize

    def type_text(self) -> str:
        return f"{self.dtype}[{', '.join(map(str, self.shape))}]"


@dataclass
class Node:
    index: int
    name: str
    op: str
    inputs: tuple[str, ...]  # explicit inputs and, for control flow, outer-scope references
    outputs: tuple[str, ...]
    static: bool = False
    work: int = 0
    weight_bytes: int = 0
    output_bytes: int = 0
    needed: bool = True  # False: dynamic, but nothing reads its values (see _mark_unneeded)


@dataclass
class Analysis:
    model: onnx.ModelProto           # the original model, unchanged
    inputs: dict[str, Tensor]        # bound graph inputs
    outputs: tuple[str, ...]
    tensors: dict[str, Tensor]       # every tensor with a known shape
    nodes: list[Node]                # graph order (topological)
    static: set[str]                 # static tensor names
    static_values: dict[str, np.ndarray] = field(default_factory=dict)  # folded, computed ones
    producer: dict[str, int] = field(default_factory=dict)
    consumers: dict[str, list[int]] = field(default_factory=dict)
    # ops (`domain.op` outside the default domain) whose work has no formula of its own and
    # was counted as one FLOP per output element, with how many nodes: see `has_formula`
    no_formula: dict[str, int] = field(default_factory=dict)
    # tensors whose shape ONNX inference did not give: "branch" (an If's branches agree, or
    # its static condition picks one) or "measured" (edgeflow.models.measure)
    shape_sources: dict[str, str] = field(default_factory=dict)

    @property
    def total_work(self) -> int:
        return sum(n.work for n in self.dynamic_nodes())

    @property
    def initializers(self) -> dict[str, onnx.TensorProto]:
        return {t.name: t for t in self.model.graph.initializer}

    def dynamic_nodes(self) -> list[Node]:
        """The nodes that carry activations and are needed (those the halves run)."""
        return [n for n in self.nodes if not n.static and n.needed]


def outer_references(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from enclosing scopes (recursively)."""
    local = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    for node in graph.node:
        local.update(node.output)
    used: set[str] = set()
    for node in graph.node:
        used.update(i for i in node.input if i)
        for attr in node.attribute:
            for sub in _subgraphs(attr):
                used |= outer_references(sub)
    return used - local


def _subgraphs(attr: onnx.AttributeProto) -> list[onnx.GraphProto]:
    if attr.type == onnx.AttributeProto.GRAPH:
        return [attr.g]
    if attr.type == onnx.AttributeProto.GRAPHS:
        return list(attr.graphs)
    return []


def node_inputs(node: onnx.NodeProto) -> tuple[str, ...]:
    names = [i for i in node.input if i]
    for attr in node.attribute:
        for sub in _subgraphs(attr):
            names.extend(sorted(outer_references(sub) - set(names)))
    return tuple(dict.fromkeys(names))


def _tensor_of(value: onnx.ValueInfoProto) -> Tensor | None:
    ttype = value.type.tensor_type
    if not value.type.HasField("tensor_type") or not ttype.HasField("shape"):
        return None
    dims = []
    for d in ttype.shape.dim:
        if not d.HasField("dim_value") or d.dim_value < 0:
            return None
        dims.append(int(d.dim_value))
    return Tensor(value.name, ttype.elem_type, tuple(dims))


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises InferenceError and C++ errors alike
        raise ModelError(f"ONNX shape inference failed: {str(exc).splitlines()[0]}") from None


def _known_tensors(model: onnx.ModelProto) -> dict[str, Tensor]:
    g = model.graph
    known = {}
    for value in [*g.input, *g.value_info, *g.output]:
        t = _tensor_of(value)
        if t is not None:
            known[t.name] = t
    for init in g.initializer:
        known[init.name] = Tensor(init.name, init.data_type, tuple(init.dims))
    for node in g.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    known[node.output[0]] = Tensor(node.output[0], attr.t.data_type,
                                                   tuple(attr.t.dims))
    return known


def _classify_static(model: onnx.ModelProto) -> set[str]:
    static = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        ins = node_inputs(node)
        if node.op_type in NONDETERMINISTIC_OPS:
            continue
        if node.op_type in SHAPE_OPS or all(i in static for i in ins):
            static.update(o for o in node.output if o)
    return static


def _fold_static(model: onnx.ModelProto, static: set[str], known: dict[str, Tensor],
                 wanted: Iterable[str]) -> dict[str, np.ndarray]:
    """Evaluate the computed static tensors in `wanted` with the ONNX reference evaluator.
    `Shape`/`Size` of a tensor whose shape is known become constants, of a computed static
    tensor are evaluated with it; a static tensor that depends on an unknown shape of a dynamic
    tensor is left out."""
    from onnx.reference import ReferenceEvaluator

    wanted = [w for w in wanted if w in static]
    nodes = []
    for node in model.graph.node:
        if not node.output or node.output[0] not in static:
            continue
        source = known.get(node.input[0]) if node.op_type in SHAPE_OPS else None
        if source is not None:
            value = _shape_value(node, source.shape)
            nodes.append(helper.make_node("Constant", [], [node.output[0]],
                                          value=numpy_helper.from_array(value)))
        elif node.op_type not in SHAPE_OPS or node.input[0] in static:
            # (the Shape of a computed static tensor, e.g. a YOLO head's anchor grid: the
            # evaluator takes it from the value it computes)
            nodes.append(node)
    available = {i.name for i in model.graph.initializer}
    kept = []
    for node in nodes:
        if all(i in available for i in node_inputs(node)):
            kept.append(node)
            available.update(node.output)
    targets = [w for w in wanted if w in available and w not in
               {i.name for i in model.graph.initializer}]
    if not targets:
        return {}
    graph = helper.make_graph(kept, "static", [], [helper.make_empty_tensor_value_info(t)
                                                   for t in targets],
                              initializer=list(model.graph.initializer))
    sub = helper.make_model(graph, opset_imports=model.opset_import)
    sub.ir_version = model.ir_version
    try:
        values = ReferenceEvaluator(sub).run(None, {})
    except Exception as exc:  # noqa: BLE001 - the evaluator raises whatever the op raises
        raise ModelError(f"cannot evaluate the model's shape subgraph: {exc}") from None
    return {t: np.asarray(v) for t, v in zip(targets, values, strict=True)}


def _shape_value(node: onnx.NodeProto, shape: tuple[int, ...]) -> np.ndarray:
    if node.op_type == "Size":
        return np.array(prod(shape), dtype=np.int64)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    start, end = attrs.get("start", 0), attrs.get("end", len(shape))
    return np.array(shape[start:end], dtype=np.int64)


def _with_folded(model: onnx.ModelProto, values: dict[str, np.ndarray],
                 shapes: Mapping[str, Tensor] | None = None) -> onnx.ModelProto:
    """`model` with the static tensors in `values` as initializers (their nodes dropped) and
    the tensor shapes in `shapes` declared, for inference to start from."""
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    g = folded.graph
    keep = [n for n in g.node if not (n.output and all(o in values for o in n.output if o))]
    del g.node[:]
    g.node.extend(keep)
    g.initializer.extend(numpy_helper.from_array(v, name) for name, v in values.items())
    del g.value_info[:]
    g.value_info.extend(helper.make_tensor_value_info(t.name, t.elem_type, list(t.shape))
                        for t in (shapes or {}).values())
    return folded


def _branch_shapes(model: onnx.ModelProto, known: Mapping[str, Tensor],
                   values: Mapping[str, np.ndarray], static: set[str],
                   refused: dict[str, str] | None = None) -> dict[str, Tensor]:
    """The outputs of `If` nodes that ONNX inference left without a shape: the branch a
    static condition (in `values`) takes decides, else every branch must give the output the
    same type and shape. A branch is inferred as a model of its own, and where that falls short
    analysed as one (`analyse_branch`: folded, measured, its own `If`s in turn); why a branch
    could not be is put in `refused` under the `If`'s output names."""
    out: dict[str, Tensor] = {}
    for node in model.graph.node:
        if node.op_type != "If" or all(o in known for o in node.output if o):
            continue
        by_name = {a.name: a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH}
        if node.input[0] in values:  # a static condition: its branch is the one that runs
            taken = "then_branch" if bool(np.asarray(values[node.input[0]]).item()) else \
                "else_branch"
            by_name = {taken: by_name[taken]}
        branches = list(by_name.values())
        inner = []
        for branch in branches:
            tensors = _subgraph_tensors(branch, known)
            if not all(o.name in tensors for o in branch.output):
                try:
                    tensors = {**tensors, **analyse_branch(branch, model, known, values,
                                                            static).tensors}
                except ModelError as exc:
                    for o in node.output:
                        if o and refused is not None:
                            refused[o] = f"its branch {branch.name or '?'} cannot be " \
                                         f"analysed: {exc}"
            inner.append(tensors)
        for k, name in enumerate(node.output):
            if not name or name in known:
                continue
            found = {(t.elem_type, t.shape) for b, tensors in zip(branches, inner, strict=True)
                     if k < len(b.output) and (t := tensors.get(b.output[k].name)) is not None}
            if len(found) == 1 and all(k < len(b.output) and b.output[k].name in tensors
                                       for b, tensors in zip(branches, inner, strict=True)):
                elem_type, shape = found.pop()
                out[name] = Tensor(name, elem_type, shape)
    return out


def analyse_branch(graph: onnx.GraphProto, model: onnx.ModelProto,
                   outer: Mapping[str, Tensor], values: Mapping[str, np.ndarray],
                   static: set[str]) -> Analysis:
    """A subgraph without inputs of its own (an `If` branch) analysed as a model of its own:
    the outer-scope static tensors it reads (weights in `model`, evaluated ones in `values`)
    become its initializers, the dynamic ones its inputs, bound to their `outer` shapes.
    Raises ModelError when that cannot be done."""
    initializers = {i.name: i for i in model.graph.initializer}
    inputs: list[Tensor] = []
    constants: list[onnx.TensorProto] = []
    for name in sorted(outer_references(graph)):
        if name in initializers:
            constants.append(initializers[name])
        elif name in values:
            constants.append(numpy_helper.from_array(np.asarray(values[name]), name))
        elif name in static:
            raise ModelError(f"the value of {name}, which it reads, could not be evaluated")
        elif name in outer:
            inputs.append(outer[name])
        else:
            raise ModelError(f"the shape of {name}, which it reads, is not known")
    own = {i.name for i in inputs} | {c.name for c in constants}
    if any(o.name in own for o in graph.output):  # (a branch passing an outer tensor through)
        raise ModelError("it passes an outer tensor through as its output")
    standalone = helper.make_graph(
        list(graph.node), graph.name or "branch",
        [helper.make_tensor_value_info(t.name, t.elem_type, list(t.shape)) for t in inputs],
        list(graph.output), initializer=[*graph.initializer, *constants])
    sub = helper.make_model(standalone, opset_imports=list(model.opset_import))
    sub.ir_version = max(model.ir_version, 4)  # initializers that are not inputs
    sub.functions.extend(model.functions)
    return analyse(sub, {t.name: t.shape for t in inputs})


def _conv_work(node: onnx.NodeProto, tensors: Mapping[str, Tensor]) -> int:
    out = tensors[node.output[0]].shape
    weight = tensors[node.input[1]].shape
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    group = int(attrs.get("group", 1))
    cin = tensors[node.input[0]].shape[1]
    # 2 * N * Cout * (output spatial) * (Cin / group) * (kernel spatial)
    return 2 * out[0] * out[1] * prod(out[2:]) * (cin // group) * prod(weight[2:])


def _matmul_work(node: onnx.NodeProto, tensors: Mapping[str, Tensor]) -> int:
    a, b = tensors[node.input[0]].shape, tensors[node.input[1]].shape
    if node.op_type == "Gemm":
        attrs = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        m, k = (a[1], a[0]) if attrs.get("transA", 0) else (a[0], a[1])
        n = b[0] if attrs.get("transB", 0) else b[1]
        return 2 * m * n * k
    if len(a) == 1:
        a = (1, *a)
    if len(b) == 1:
        b = (*b, 1)
    batch = prod(tensors[node.output[0]].shape[:-2]) if len(tensors[node.output[0]].shape) > 2 \
        else 1
    return 2 * batch * a[-2] * b[-1] * a[-1]


def _elementwise_work(node: onnx.NodeProto, tensors: Mapping[str, Tensor]) -> int:
    return sum(prod(tensors[o].shape) for o in node.output if o in tensors)


# Recurrent ops: (gates, element-wise operations per hidden unit and step after the gates'
# matrix products: LSTM 3 sigmoids, 2 tanh, 3 products, 1 sum; GRU 2 sigmoids, 1 tanh,
# 3 products, 1 difference, 1 sum; RNN 1 activation).
_RECURRENT = {"LSTM": (4, 9), "GRU": (3, 8), "RNN": (1, 1), "DynamicQuantizeLSTM": (4, 9)}


def _recurrent_work(node: onnx.NodeProto, tensors: Mapping[str, Tensor]) -> int:
    """Per direction and time step: the gates' products with the input and the hidden state
    (2·G·H·(I + H) per sequence), their biases (2·G·H when given), and the element-wise rest
    (E·H); times the directions, the steps and the batch."""
    gates, per_unit = _RECURRENT[node.op_type]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    x = tensors[node.input[0]].shape
    steps, batch = (x[1], x[0]) if attrs.get("layout", 0) else (x[0], x[1])
    hidden = int(attrs["hidden_size"])
    directions = 2 if attrs.get("direction", b"forward") in (b"bidirectional",
                                                            "bidirectional") else 1
    bias = 2 * gates * hidden if len(node.input) > 3 and node.input[3] else 0
    per_step = 2 * gates * hidden * (x[2] + hidden) + bias + per_unit * hidden
    return directions * steps * batch * per_step


# Where a quantized op's float operands sit: (input, weight) indices of the Conv or MatMul
# it computes.
_QUANTIZED = {"ConvInteger": ("conv", 0, 1), "QLinearConv": ("conv", 0, 3),
              "MatMulInteger": ("matmul", 0, 1), "QLinearMatMul": ("matmul", 0, 3),
              "MatMulIntegerToFloat": ("matmul", 0, 1), "DynamicQuantizeMatMul": ("matmul", 0, 1),
              "FusedConv": ("conv", 0, 1), "FusedMatMul": ("matmul", 0, 1),
              "QGemm": ("gemm", 0, 3), "FusedGemm": ("gemm", 0, 1)}


def _quantized_work(node: onnx.NodeProto, tensors: Mapping[str, Tensor]) -> int:
    kind, a, b = _QUANTIZED[node.op_type]
    view = helper.make_node("Conv" if kind == "conv" else "Gemm" if kind == "gemm" else "MatMul",
                            [node.input[a], node.input[b]], list(node.output[:1]))
    if kind != "matmul":
        view.attribute.extend(x for x in node.attribute if x.name in
                              ("group", "transA", "transB"))
    return _conv_work(view, tensors) if kind == "conv" else _matmul_work(view, tensors)


def _matmul_nbits_work(node: onnx.NodeProto, tensors: Mapping[str, Tensor]) -> int:
    """com.microsoft MatMulNBits: A [..., K] times a packed K x N weight (attributes K, N)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return 2 * prod(tensors[node.input[0]].shape[:-1]) * int(attrs["K"]) * int(attrs["N"])


# Ops whose work is one FLOP per output element by definition (docs/split.md): element-wise
# arithmetic and activations, data movement, reductions, normalisations and pooling (their
# per-element cost is a small constant), and quantize/dequantize. The default ONNX domain's ops
# not listed here, and every op of another domain not listed here or among the formulas, are
# counted the same way, but the analysis names them (`Analysis.no_formula`).
_HEAVY_WITHOUT_FORMULA = {"Einsum", "Attention", "DFT", "STFT", "LRN"}
_CONTRIB_ELEMENTWISE = {
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearAdd", "QLinearMul",
    "QLinearSigmoid", "QLinearLeakyRelu", "QLinearAveragePool", "QLinearGlobalAveragePool",
    "QLinearConcat", "QLinearReduceMean", "QLinearSoftmax", "FastGelu", "Gelu", "BiasGelu",
    "QuickGelu", "BiasAdd", "SkipLayerNormalization", "LayerNormalization",
    "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "BiasSoftmax",
    "NhwcMaxPool", "QLinearWhere"}
_FORMULA_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm", "If", "Loop", "Scan",
                "MatMulNBits", *_RECURRENT, *_QUANTIZED}


def op_label(node: onnx.NodeProto) -> str:
    """`Conv`, or `com.microsoft.QAttention` outside the default domain."""
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def has_formula(node: onnx.NodeProto) -> bool:
    """Whether the cost model counts `node`'s work by a formula meant for it (docs/split.md):
    a formula of its own, or one FLOP per output element for ops that do about that."""
    if node.op_type in _FORMULA_OPS:
        return True
    if node.domain in ("", "ai.onnx"):
        return node.op_type not in _HEAVY_WITHOUT_FORMULA
    return node.domain == "com.microsoft" and node.op_type in _CONTRIB_ELEMENTWISE


def _subgraph_tensors(graph: onnx.GraphProto, outer: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Shapes inside a subgraph: it is inferred as a model of its own whose inputs are the
    outer-scope tensors it reads (ONNX inference does not always fill a subgraph's value_info)."""
    refs = [outer[n] for n in sorted(outer_references(graph)) if n in outer]
    standalone = helper.make_graph(
        list(graph.node), "subgraph",
        [*graph.input, *(helper.make_tensor_value_info(t.name, t.elem_type, list(t.shape))
                         for t in refs)],
        list(graph.output), initializer=list(graph.initializer))
    model = helper.make_model(standalone)
    try:
        return _known_tensors(shape_inference.infer_shapes(model, data_prop=True))
    except Exception:  # noqa: BLE001 - fall back to what the graph itself declares
        return _known_tensors(model)


def _graph_work(graph: onnx.GraphProto, tensors: Mapping[str, Tensor], static: set[str]) -> int:
    """Work of a subgraph; shapes come from `tensors` and the subgraph's own value_info,
    `static` names the enclosing scope's static tensors."""
    scope = {**tensors, **_subgraph_tensors(graph, tensors)}
    inner_static = set(static) | {i.name for i in graph.initializer}
    for node in graph.node:
        if node.op_type not in NONDETERMINISTIC_OPS and (
                node.op_type in SHAPE_OPS or all(i in inner_static for i in node_inputs(node))):
            inner_static.update(o for o in node.output if o)
    return sum(node_work(node, scope, inner_static) for node in graph.node
               if not (node.output and node.output[0] in inner_static))


def node_work(node: onnx.NodeProto, tensors: Mapping[str, Tensor],
              static: set[str] | None = None) -> int:
    """FLOP of one node under the cost model of docs/split.md."""
    op = node.op_type
    try:
        if op in ("Conv", "ConvTranspose"):
            return _conv_work(node, tensors)
        if op in ("MatMul", "Gemm"):
            return _matmul_work(node, tensors)
        if op in _RECURRENT:
            return _recurrent_work(node, tensors)
        if op in _QUANTIZED:
            return _quantized_work(node, tensors)
        if op == "MatMulNBits":
            return _matmul_nbits_work(node, tensors)
        if op == "If":
            branches = [_graph_work(a.g, tensors, static or set()) for a in node.attribute
                        if a.type == onnx.AttributeProto.GRAPH]
            return max(branches, default=0)
        if op in ("Loop", "Scan"):
            body = next(a.g for a in node.attribute if a.name == "body")
            return _graph_work(body, tensors, static or set()) * _trip_count(node, tensors)
    except (KeyError, IndexError, ValueError):
        pass  # a shape inside the formula is unknown: count output elements instead
    return _elementwise_work(node, tensors)


def _if_work(node: onnx.NodeProto, model: onnx.ModelProto, tensors: Mapping[str, Tensor],
             values: Mapping[str, np.ndarray], static: set[str]) -> int:
    """Work of an `If`: its costlier branch. A branch whose shapes inference does not give
    throughout is analysed as a model of its own (`analyse_branch`)."""
    works = []
    for attr in node.attribute:
        if attr.type != onnx.AttributeProto.GRAPH:
            continue
        inner = _subgraph_tensors(attr.g, tensors)
        if not all(o in inner for n in attr.g.node for o in n.output if o):
            try:
                works.append(analyse_branch(attr.g, model, tensors, values, static).total_work)
                continue
            except ModelError:
                pass  # count what inference gives
        works.append(_graph_work(attr.g, tensors, static))
    return max(works, default=0)


def _trip_count(node: onnx.NodeProto, tensors: Mapping[str, Tensor]) -> int:
    """Iterations of a Loop (its static trip count, else 1) or a Scan (the scanned axis)."""
    if node.op_type == "Scan":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        n_scan = int(attrs["num_scan_inputs"])
        first_scan = node.input[len(node.input) - n_scan]
        axes = attrs.get("scan_input_axes", [0] * n_scan)
        return int(tensors[first_scan].shape[int(axes[0])])
    return 1


def analyse(model: onnx.ModelProto, inputs: Mapping[str, tuple[int, ...]]) -> Analysis:
    """Bind the graph inputs to `inputs` shapes and analyse. Raises ModelError for unknown input
    names, unbound dimensions and tensors whose shape cannot be determined."""
    g = model.graph
    initializer_names = {i.name for i in g.initializer}
    graph_inputs = [v for v in g.input if v.name not in initializer_names]
    names = {v.name for v in graph_inputs}
    unknown = set(inputs) - names
    if unknown:
        raise ModelError(f"the model has no input {', '.join(sorted(unknown))}; its inputs are "
                         f"{', '.join(sorted(names))}", "E0603")
    missing = names - set(inputs)
    if missing:
        raise ModelError(f"input {', '.join(sorted(missing))} is not bound; bind every input "
                         "with --input NAME=TYPE[dims]", "E0603")
    work_model = onnx.ModelProto()
    work_model.CopyFrom(model)
    bind_inputs(work_model, inputs)
    # what the exporter declared of the rest may be wrong (a dimension of -1, an output
    # declared [1, seqlen] that is [T, 1, C]): inference works it out from the inputs
    del work_model.graph.value_info[:]
    for value in work_model.graph.output:
        if value.type.HasField("tensor_type"):
            value.type.tensor_type.ClearField("shape")
    for value in graph_inputs:
        declared = value.type.tensor_type.shape.dim
        if declared and len(declared) != len(inputs[value.name]):
            raise ModelError(f"input {value.name} has rank {len(declared)}, bound with rank "
                             f"{len(inputs[value.name])}", "E0605")
        for d, size in zip(declared, inputs[value.name], strict=False):
            if d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != size:
                raise ModelError(f"input {value.name}: the model fixes a dimension to "
                                 f"{d.dim_value}, bound to {size}", "E0605")
    static = _classify_static(work_model)
    folded: dict[str, np.ndarray] = {}
    branched: dict[str, Tensor] = {}  # shapes from If branches and from measuring
    sources: dict[str, str] = {}  # where each of those came from: "branch" or "measured"
    measured: Measured | None = None
    refused: dict[str, str] = {}  # If outputs whose branches could not be analysed, and why
    if_outputs = {o for n in g.node if n.op_type == "If" for o in n.output}
    inferred = _infer(work_model)
    for _ in range(8):  # fold, re-infer, until every consumed tensor has a shape
        known = _known_tensors(inferred)
        missing_shapes = {o for n in g.node for o in n.output  # (static ones need none)
                          if o and o not in known and o not in static}
        if not missing_shapes:
            break
        wanted = {i for n in g.node if n.output and n.output[0] not in static
                  for i in node_inputs(n) if i in static and i not in folded}
        values = _fold_static(inferred, static, known, wanted)
        agreed = {n: t for n, t in _branch_shapes(inferred, known, {**folded, **values},
                                                     static, refused).items()
                  if n not in branched}
        if not values and not agreed and measured is None:  # last resort: run the model
            measured = measure_shapes(work_model, inputs)
        if measured is not None:
            # (not an If's output: that its branches disagree is known, and which one runs
            # depends on input values that random inputs need not share with real ones)
            ran = {n: Tensor(n, *measured.shapes[n]) for n in missing_shapes - if_outputs
                   if n in measured.shapes and n not in branched and n not in agreed}
            sources.update(dict.fromkeys(ran, "measured"))
            agreed.update(ran)
        if not values and not agreed:
            break
        sources.update((n, "branch") for n in agreed if n not in sources)
        folded.update(values)
        branched.update(agreed)
        inferred = _infer(_with_folded(work_model, folded, branched))
    tensors = _known_tensors(inferred)
    for name, value in folded.items():
        tensors[name] = Tensor(name, helper.np_dtype_to_tensor_dtype(value.dtype),
                               tuple(value.shape))
    for name, t in branched.items():  # where inference still disagrees, what runs decides
        tensors.setdefault(name, t)
    analysis = Analysis(model, {v.name: Tensor(v.name, v.type.tensor_type.elem_type,
                                               tuple(inputs[v.name])) for v in graph_inputs},
                        tuple(o.name for o in g.output), tensors, [], static, folded,
                        shape_sources=dict(sorted(sources.items())))
    initializers = {i.name: i for i in g.initializer}
    for index, proto in enumerate(g.node):
        node = Node(index, proto.name or f"{proto.op_type}_{index}", proto.op_type,
                    node_inputs(proto), tuple(o for o in proto.output if o))
        node.static = bool(node.outputs) and all(o in static for o in node.outputs)
        for out in node.outputs:
            analysis.producer[out] = index
        for name in node.inputs:
            analysis.consumers.setdefault(name, []).append(index)
        if not node.static:
            unknown_out = [o for o in node.outputs if o not in tensors]
            if unknown_out:
                raise ModelError(f"cannot infer the shape of tensor {unknown_out[0]} (output of "
                                 f"{op_label(proto)} node {node.name}): "
                                 + _why_unknown(proto, unknown_out[0], measured, refused))
            node.work = _if_work(proto, inferred, tensors, folded, static) if proto.op_type == "If" \
                else node_work(proto, tensors, static)
            if not has_formula(proto):
                label = op_label(proto)
                analysis.no_formula[label] = analysis.no_formula.get(label, 0) + 1
            node.output_bytes = sum(tensors[o].nbytes for o in node.outputs)
            node.weight_bytes = sum(_weight_bytes(i, initializers, tensors, static)
                                    for i in node.inputs)
        analysis.nodes.append(node)
    _mark_unneeded(analysis)
    return analysis


def _mark_unneeded(analysis: Analysis) -> None:
    """Dynamic nodes whose values nothing needs — read only by static nodes (a `Shape` of
    them, which the bound shapes already give) or by other such nodes, and no model output —
    do no work that matters: neither half runs them, and they count for nothing."""
    outputs = set(analysis.outputs)
    needed: set[int] = set()
    stack = [i for i, n in enumerate(analysis.nodes)
             if not n.static and any(o in outputs for o in n.outputs)]
    while stack:
        i = stack.pop()
        if i in needed:
            continue
        needed.add(i)
        for name in analysis.nodes[i].inputs:
            p = analysis.producer.get(name)
            if p is not None and not analysis.nodes[p].static:
                stack.append(p)
    for i, node in enumerate(analysis.nodes):
        if not node.static and i not in needed:
            node.needed = False


def _why_unknown(node: onnx.NodeProto, tensor: str, measured: Measured | None,
                 refused: Mapping[str, str]) -> str:
    """Why a tensor's shape is unknown, for the E0606 message."""
    if tensor in refused:
        return refused[tensor]
    if node.op_type == "If":
        return ("ONNX inference cannot give it one shape whichever branch runs, and which "
                "one runs depends on the values of the inputs")
    if measured is not None and tensor in measured.varying:
        return ("its shape depends on the input values (it differed between two runs on "
                "random inputs)")
    reason = (f"ONNX shape inference has no rule for the operators of domain `{node.domain}`"
              if node.domain not in ("", "ai.onnx", "ai.onnx.ml") else
              "ONNX shape inference cannot tell it")
    if measured is not None and measured.failure:
        reason += f", and running the model to measure it failed: {measured.failure}"
    return reason


def _weight_bytes(name: str, initializers: Mapping[str, onnx.TensorProto],
                  tensors: Mapping[str, Tensor], static: set[str]) -> int:
    if name in initializers or (name in static and name in tensors):
        return tensors[name].nbytes if name in tensors else 0
    return 0


def weight_bytes_of(analysis: Analysis, nodes: Iterable[Node]) -> int:
    """Bytes of the distinct static tensors (weights) the given nodes read. A weight that a
    static DequantizeLinear makes from int8 data counts as that data and its scales, as
    onnxruntime holds it (the dequantization goes into the int8 kernel), not as the float
    tensor it folds to."""
    seen: set[str] = set()
    for node in nodes:
        seen.update(i for i in node.inputs if i in analysis.static)
    stored: set[str] = set()
    for t in seen:
        k = analysis.producer.get(t)
        maker = analysis.nodes[k] if k is not None else None
        if maker is not None and maker.op == "DequantizeLinear" and maker.static:
            stored.update(i for i in maker.inputs if i)
        else:
            stored.add(t)
    return sum(analysis.tensors[t].nbytes for t in stored if t in analysis.tensors)
