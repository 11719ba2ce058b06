"""Small, real-shaped ONNX test models for the split machinery, built with onnx.helper.

    python tests/onnx_models.py OUT_DIR      # writes every model, to look at them in Netron

Each builder returns (model, inputs) where inputs binds every graph input to a concrete shape.
They show what real exported models do: chains, residual DAGs, depthwise convolutions, parallel
branches with Concat, FPN skip connections across scales with several outputs, weights stored as
`Constant` nodes, dynamic batch/height/width, a `Reshape` fed by a `Shape -> Gather -> Concat`
subgraph, and an `If` node whose branches read an outer-scope tensor.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgeflow.models.samples import Builder, rename_output

Inputs = dict[str, tuple[int, ...]]
F = TensorProto.FLOAT


def _io(name: str, dims: list[object]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, F, dims)


def vgg_chain() -> tuple[onnx.ModelProto, Inputs]:
    b = Builder(seed=11)
    x, c = "input", 3
    for cout in (8, 16, 16):
        x = b.conv(x, c, cout, 3, bn=False)
        x = b.conv(x, cout, cout, 3, bn=False)
        x = b.node("MaxPool", [x], "pool", kernel_shape=[2, 2], strides=[2, 2])
        c = cout
    x = b.node("Flatten", [x], "flatten", axis=1)
    w1 = b.weight("fc1_w", b.rng.normal(0, 0.05, (16 * 4 * 4, 32)))
    x = b.node("Relu", [b.node("Gemm", [x, w1, b.weight("fc1_b", np.zeros(32))], "gemm")], "relu")
    w2 = b.weight("fc2_w", b.rng.normal(0, 0.1, (32, 10)))
    x = b.node("Gemm", [x, w2, b.weight("fc2_b", np.zeros(10))], "gemm")
    rename_output(b, x, "logits")
    return b.model("vgg_chain", [_io("input", [1, 3, 32, 32])], [_io("logits", [1, 10])],
                   "VGG-like chain"), {"input": (1, 3, 32, 32)}


def resnet() -> tuple[onnx.ModelProto, Inputs]:
    b = Builder(seed=12)
    x = b.conv("input", 3, 8, 3)
    for cin, cout, stride in ((8, 8, 1), (8, 16, 2), (16, 16, 1)):
        y = b.conv(x, cin, cout, 3, stride=stride)
        y = b.conv(y, cout, cout, 3, act=False)
        skip = x if stride == 1 and cin == cout else b.conv(x, cin, cout, 1, stride=stride,
                                                             act=False)
        x = b.node("Relu", [b.node("Add", [y, skip], "add")], "relu")
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x], "gap")], "flatten", axis=1)
    w = b.weight("fc_w", b.rng.normal(0, 0.2, (16, 10)))
    x = b.node("Gemm", [x, w, b.weight("fc_b", np.zeros(10))], "gemm")
    rename_output(b, x, "logits")
    return b.model("resnet", [_io("input", [1, 3, 32, 32])], [_io("logits", [1, 10])],
                   "ResNet-like residual net with a projection shortcut"), {"input": (1, 3, 32, 32)}


def mobilenet() -> tuple[onnx.ModelProto, Inputs]:
    b = Builder(seed=13)
    x = b.conv("input", 3, 8, 3, stride=2)
    for cin, cout, stride in ((8, 16, 1), (16, 24, 2), (24, 24, 1)):
        y = b.conv(x, cin, cin, 3, stride=stride, group=cin)   # depthwise
        y = b.conv(y, cin, cout, 1, act=False)                 # pointwise, linear bottleneck
        x = b.node("Add", [x, y], "add") if stride == 1 and cin == cout else y
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x], "gap")], "flatten", axis=1)
    rename_output(b, x, "features")
    return b.model("mobilenet", [_io("input", [1, 3, 32, 32])], [_io("features", [1, 24])],
                   "MobileNet-like depthwise-separable net"), {"input": (1, 3, 32, 32)}


def inception() -> tuple[onnx.ModelProto, Inputs]:
    b = Builder(seed=14)
    x, c = b.conv(b.conv("input", 3, 16, 3, stride=2), 16, 16, 3, stride=2), 16
    for _ in range(2):
        b1 = b.conv(x, c, 8, 1)
        b2 = b.conv(b.conv(x, c, 8, 1), 8, 12, 3)
        b3 = b.conv(b.conv(b.conv(x, c, 4, 1), 4, 6, 3), 6, 6, 3)
        b4 = b.conv(b.node("MaxPool", [x], "pool", kernel_shape=[3, 3], strides=[1, 1],
                           pads=[1, 1, 1, 1]), c, 6, 1)
        x, c = b.node("Concat", [b1, b2, b3, b4], "concat", axis=1), 32
    rename_output(b, x, "features")
    return b.model("inception", [_io("input", [1, 3, 32, 32])], [_io("features", [1, 32, 8, 8])],
                   "Inception-like blocks of parallel branches"), {"input": (1, 3, 32, 32)}


def fpn() -> tuple[onnx.ModelProto, Inputs]:
    b = Builder(seed=15)
    c2 = b.conv(b.conv("input", 3, 8, 3, stride=2), 8, 8, 3)       # /2
    c3 = b.conv(c2, 8, 16, 3, stride=2)                             # /4
    c4 = b.conv(c3, 16, 32, 3, stride=2)                            # /8
    p4 = b.conv(c4, 32, 8, 1, bn=False, act=False)
    scales = b.weight("scales", np.array([1, 1, 2, 2], dtype=np.float32))
    up4 = b.node("Resize", [p4, "", scales], "resize", mode="nearest")
    p3 = b.node("Add", [b.conv(c3, 16, 8, 1, bn=False, act=False), up4], "add")
    up3 = b.node("Resize", [p3, "", scales], "resize", mode="nearest")
    p2 = b.node("Add", [b.conv(c2, 8, 8, 1, bn=False, act=False), up3], "add")
    outs = []
    for level, p in (("p2", p2), ("p3", p3), ("p4", p4)):
        head = b.conv(p, 8, 4, 3, bn=False, act=False)
        rename_output(b, head, level)
        outs.append(level)
    sizes = {"p2": 16, "p3": 8, "p4": 4}
    return b.model("fpn", [_io("input", [1, 3, 32, 32])],
                   [_io(o, [1, 4, sizes[o], sizes[o]]) for o in outs],
                   "FPN-like net: top-down pathway with lateral skips, three outputs"), \
        {"input": (1, 3, 32, 32)}


def constant_weights() -> tuple[onnx.ModelProto, Inputs]:
    b = Builder(seed=16, constant_weights=True)
    x = b.conv("input", 3, 8, 3)
    x = b.conv(x, 8, 8, 3, stride=2)
    x = b.conv(x, 8, 4, 1, bn=False, act=False)
    rename_output(b, x, "output")
    return b.model("constant_weights", [_io("input", [1, 3, 16, 16])], [_io("output", [1, 4, 8, 8])],
                   "weights as Constant nodes, as some exporters write them"), \
        {"input": (1, 3, 16, 16)}


def dynamic_dims() -> tuple[onnx.ModelProto, Inputs]:
    b = Builder(seed=17)
    x = b.conv("input", 3, 8, 3, stride=2)
    x = b.conv(x, 8, 8, 3)
    x = b.conv(x, 8, 2, 1, bn=False, act=False)
    rename_output(b, x, "mask")
    return b.model("dynamic_dims", [_io("input", ["batch", 3, "height", "width"])],
                   [_io("mask", ["batch", 2, "out_h", "out_w"])],
                   "dynamic batch, height and width"), {"input": (2, 3, 24, 40)}


def shape_reshape() -> tuple[onnx.ModelProto, Inputs]:
    b = Builder(seed=18)
    x = b.conv("input", 3, 8, 3, stride=2)
    x = b.conv(x, 8, 8, 3, stride=2)
    shape = b.node("Shape", [x], "shape")
    batch = b.node("Gather", [shape, b.weight("zero", np.array([0]), np.int64)], "gather", axis=0)
    target = b.node("Concat", [batch, b.weight("minus_one", np.array([-1]), np.int64)], "concat", axis=0)
    flat = b.node("Reshape", [x, target], "reshape")
    w = b.weight("fc_w", b.rng.normal(0, 0.1, (8 * 4 * 4, 5)))
    y = b.node("MatMul", [flat, w], "matmul")
    rename_output(b, y, "scores")
    return b.model("shape_reshape", [_io("input", ["batch", 3, 16, 16])], [_io("scores", ["batch", 5])],
                   "Reshape fed by a Shape -> Gather -> Concat subgraph"), {"input": (3, 3, 16, 16)}


def if_node() -> tuple[onnx.ModelProto, Inputs]:
    b = Builder(seed=19)
    y = b.conv("input", 3, 8, 3)
    mean = b.node("ReduceMean", [y], "mean", keepdims=0)
    cond = b.node("Greater", [mean, b.weight("threshold", np.array(0.5))], "greater")
    then_out = helper.make_tensor_value_info("then_out", F, [1, 8, 16, 16])
    else_out = helper.make_tensor_value_info("else_out", F, [1, 8, 16, 16])
    then_graph = helper.make_graph([helper.make_node("Relu", [y], ["then_out"])], "then", [],
                                   [then_out])
    else_graph = helper.make_graph([helper.make_node("Neg", [y], ["neg"]),
                                    helper.make_node("Sigmoid", ["neg"], ["else_out"])],
                                   "else", [], [else_out])
    branched = b.fresh("if")
    b.nodes.append(helper.make_node("If", [cond], [branched], name=branched,
                                    then_branch=then_graph, else_branch=else_graph))
    x = b.conv(branched, 8, 4, 3, bn=False, act=False)
    rename_output(b, x, "output")
    return b.model("if_node", [_io("input", [1, 3, 16, 16])], [_io("output", [1, 4, 16, 16])],
                   "an If node reading an outer-scope tensor in both branches"), \
        {"input": (1, 3, 16, 16)}


MODELS: dict[str, Callable[[], tuple[onnx.ModelProto, Inputs]]] = {
    "vgg_chain": vgg_chain, "resnet": resnet, "mobilenet": mobilenet, "inception": inception,
    "fpn": fpn, "constant_weights": constant_weights, "dynamic_dims": dynamic_dims,
    "shape_reshape": shape_reshape, "if_node": if_node,
}

if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, build in MODELS.items():
        model, _ = build()
        onnx.save(model, out / f"{name}.onnx")
        print(out / f"{name}.onnx")
