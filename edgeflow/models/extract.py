"""Emit the two halves of a cut model as runnable ONNX models.

The head's inputs are the model's inputs and its outputs the cut tensors; the tail's inputs are
the cut tensors and its outputs the model's outputs. Each half holds its own dynamic nodes (in the
original order), the weights those read, and its own copy of every static subgraph it needs, with
`Shape`/`Size` nodes replaced by the constants they evaluate to under the bound inputs, so both
halves have static shapes throughout and nothing but activations crosses the cut.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeflow.models.analysis import SHAPE_OPS, Analysis, _shape_value
from edgeflow.models.cuts import Cut


def _value_info(analysis: Analysis, name: str) -> onnx.ValueInfoProto:
    t = analysis.tensors[name]
    return helper.make_tensor_value_info(name, t.elem_type, list(t.shape))


def _half(analysis: Analysis, suffix: str, dynamic: Iterable[int], inputs: Iterable[str],
          outputs: Iterable[str]) -> onnx.ModelProto:
    g = analysis.model.graph
    initializers = {i.name: i for i in g.initializer}
    include: set[int] = set(dynamic)
    used_inits: set[str] = set()
    replaced: dict[int, onnx.NodeProto] = {}
    stack = [i for n in include for i in analysis.nodes[n].inputs if i in analysis.static]
    seen: set[str] = set()
    folded: list[onnx.TensorProto] = []
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in initializers:
            used_inits.add(name)
            continue
        if name in analysis.static_values:  # the analysis evaluated it: its value, once
            folded.append(numpy_helper.from_array(np.asarray(analysis.static_values[name]),
                                                  name))
            continue
        index = analysis.producer[name]
        if index in include:
            continue
        proto = g.node[index]
        if proto.op_type in SHAPE_OPS and proto.input[0] in analysis.tensors:
            source = analysis.tensors[proto.input[0]].shape
            replaced[index] = helper.make_node(
                "Constant", [], [proto.output[0]], name=proto.name or f"shape_{index}",
                value=numpy_helper.from_array(np.asarray(_shape_value(proto, source)),
                                              proto.output[0]))
        else:
            stack.extend(analysis.nodes[index].inputs)
        include.add(index)
    nodes = [replaced.get(i) or _typed_branches(analysis, g.node[i]) for i in sorted(include)]
    graph = helper.make_graph(
        nodes, f"{g.name or 'model'}_{suffix}", [_value_info(analysis, i) for i in inputs],
        [_value_info(analysis, o) for o in outputs],
        initializer=[initializers[name] for name in initializers if name in used_inits]
        + sorted(folded, key=lambda t: t.name))
    model = helper.make_model(graph, opset_imports=list(analysis.model.opset_import),
                              producer_name="edgeflow",
                              doc_string=f"{suffix} of {g.name or 'model'} split by edgeflow")
    # IR 3 listed every initializer among the graph inputs too; a half lists only its real
    # inputs, which IR 4 allows (every opset a model of IR 3 uses runs under IR 4)
    model.ir_version = max(analysis.model.ir_version, 4)
    model.functions.extend(analysis.model.functions)
    return model


def _typed_branches(analysis: Analysis, node: onnx.NodeProto) -> onnx.NodeProto:
    """`node`, with the outputs of an `If`'s branches that declare no type given the type and
    shape the analysis found for the If's outputs (onnx.checker insists on them)."""
    if node.op_type != "If":
        return node
    typed = onnx.NodeProto()
    typed.CopyFrom(node)
    for attr in typed.attribute:
        if attr.type != onnx.AttributeProto.GRAPH:
            continue
        for value, name in zip(attr.g.output, typed.output, strict=False):
            if not value.type.HasField("tensor_type") or not value.type.tensor_type.elem_type:
                value.CopyFrom(helper.make_tensor_value_info(value.name, *(
                    (t.elem_type, list(t.shape)) if (t := analysis.tensors.get(name)) else
                    (onnx.TensorProto.UNDEFINED, None))))
    return typed


def split_model(analysis: Analysis, cut: Cut) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The head and tail models of `cut`, each checked with onnx.checker (full check)."""
    tail_nodes = [n.index for n in analysis.dynamic_nodes() if n.index not in cut.head]
    head = _half(analysis, "head", sorted(cut.head), analysis.inputs, cut.tensors)
    tail = _half(analysis, "tail", tail_nodes, cut.tensors, analysis.outputs)
    for half in (head, tail):
        onnx.checker.check_model(half, full_check=True)
    return head, tail
