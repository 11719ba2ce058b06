"""Small, real-shaped ONNX models built with `onnx.helper` only: those the examples use
(`examples/models/make_models.py` writes them there) and `edgeflow init` writes into a new app.

Deterministic: weights come from a fixed seed, so building again gives byte-identical files.
The models are small (well under 1 MB each) but shaped like the networks they stand for:
- detector      single-shot CNN detector; input `images` float32[batch, 3, height, width]
                (all three dynamic, as exporters write them); stride-2 conv stages with
                BatchNorm, a residual block, and a 1x1 head: 3 anchors x (4 box + 1 obj +
                2 classes) channels at stride 32
- bottleneck_detector
                a detector built for split computing: a light encoder squeezes the frame into
                a 4-channel bottleneck at stride 4 (a third of the raw frame's bytes), a heavier
                backbone with a residual block and the same 1x1 head decode it; input `images`
                float32[batch, 3, height, width] (dynamic, like `detector`)
- vitals        vital-sign classifier: 1-D conv over a window of 6 channels x 250 samples,
                global pooling, two Gemm layers and a Softmax over 4 risk classes
- pose          keypoint network for AR: conv stages down to stride 4, a depthwise-separable
                block, 17 keypoint heatmaps
- lidar_encoder PointNet-style point-cloud encoder: shared per-point MatMul layers and a max
                pool over points; weights stored as `Constant` nodes, as some exporters do
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class Builder:
    """Accumulates nodes and weights of one graph with deterministic names and values."""

    def __init__(self, seed: int, constant_weights: bool = False) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.constant_weights = constant_weights
        self.count = 0

    def fresh(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def weight(self, name: str, array: np.ndarray, dtype: type = np.float32) -> str:
        tensor = numpy_helper.from_array(array.astype(dtype), name)
        if self.constant_weights:
            self.nodes.append(helper.make_node("Constant", [], [name], value=tensor,
                                               name=f"{name}_const"))
        else:
            self.inits.append(tensor)
        return name

    def node(self, op: str, inputs: list[str], prefix: str, **attrs: Any) -> str:
        out = self.fresh(prefix)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1,
             bn: bool = True, act: bool = True) -> str:
        fan_in = cin // group * k * k
        w = self.weight(self.fresh("w"), self.rng.normal(0, (2 / fan_in) ** 0.5,
                                                          (cout, cin // group, k, k)))
        b = self.weight(self.fresh("b"), np.zeros(cout))
        y = self.node("Conv", [x, w, b], "conv", kernel_shape=[k, k], strides=[stride, stride],
                      pads=[k // 2] * 4, group=group)
        if bn:
            scale = self.weight(self.fresh("bn_scale"), 1 + 0.1 * self.rng.standard_normal(cout))
            bias = self.weight(self.fresh("bn_bias"), 0.1 * self.rng.standard_normal(cout))
            mean = self.weight(self.fresh("bn_mean"), 0.1 * self.rng.standard_normal(cout))
            var = self.weight(self.fresh("bn_var"), 1 + 0.1 * self.rng.random(cout))
            y = self.node("BatchNormalization", [y, scale, bias, mean, var], "bn")
        return self.node("Relu", [y], "relu") if act else y

    def model(self, name: str, inputs: list[onnx.ValueInfoProto],
              outputs: list[onnx.ValueInfoProto], doc: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="edgeflow-examples", doc_string=doc)
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model


def rename_output(b: Builder, tensor: str, name: str) -> None:
    for node in b.nodes:
        node.output[:] = [name if o == tensor else o for o in node.output]
        node.input[:] = [name if i == tensor else i for i in node.input]


def detector() -> onnx.ModelProto:
    b = Builder(seed=1)
    x = b.conv("images", 3, 16, 3, stride=2)          # /2
    x = b.conv(x, 16, 32, 3, stride=2)                # /4
    x = _residual(b, b.conv(x, 32, 48, 3, stride=2), 48)  # /8
    x = b.conv(x, 48, 64, 3, stride=2)                # /16
    x = b.conv(x, 64, 96, 3, stride=2)                # /32
    head = b.conv(x, 96, 21, 1, bn=False, act=False)  # 3 anchors x (4 + 1 + 2)
    return _detection_model(b, head, "detector", "single-shot CNN detector, stride 32")


def _residual(b: Builder, x: str, channels: int) -> str:
    """Two 3x3 convolutions and the skip around them."""
    y = b.conv(x, channels, channels, 3)
    y = b.conv(y, channels, channels, 3, act=False)
    return b.node("Relu", [b.node("Add", [x, y], "add")], "relu")


def _detection_model(b: Builder, head: str, name: str, doc: str) -> onnx.ModelProto:
    """The model of a detector whose last node writes `head`: input `images`
    float32[batch, 3, height, width], output `detections`."""
    rename_output(b, head, "detections")
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                           ["batch", 3, "height", "width"])
    out = helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["batch", 21, None, None])
    return b.model(name, [images], [out], doc)


def bottleneck_detector() -> onnx.ModelProto:
    b = Builder(seed=5)
    x = b.conv("images", 3, 12, 3, stride=2)          # /2   the encoder: run where the frame is
    x = b.conv(x, 12, 24, 3, stride=2)                # /4
    x = b.conv(x, 24, 4, 1, act=False)                # the bottleneck: 4 channels at /4
    x = b.conv(x, 4, 48, 3)                           # the decoder: run where compute is
    x = _residual(b, b.conv(x, 48, 64, 3, stride=2), 64)  # /8
    x = b.conv(x, 64, 128, 3, stride=2)               # /16
    x = b.conv(x, 128, 128, 3)
    x = b.conv(x, 128, 192, 3, stride=2)              # /32
    head = b.conv(x, 192, 21, 1, bn=False, act=False)  # 3 anchors x (4 + 1 + 2)
    return _detection_model(b, head, "bottleneck_detector",
                            "CNN detector with a bottleneck for split computing, stride 32")


def vitals() -> onnx.ModelProto:
    b = Builder(seed=2)
    fan = 6 * 7
    w1 = b.weight("conv1_w", b.rng.normal(0, (2 / fan) ** 0.5, (32, 6, 7)))
    x = b.node("Conv", ["window", w1], "conv", kernel_shape=[7], strides=[2], pads=[3, 3])
    x = b.node("Relu", [x], "relu")
    w2 = b.weight("conv2_w", b.rng.normal(0, (2 / (32 * 5)) ** 0.5, (64, 32, 5)))
    x = b.node("Relu", [b.node("Conv", [x, w2], "conv", kernel_shape=[5], strides=[2],
                               pads=[2, 2])], "relu")
    x = b.node("GlobalAveragePool", [x], "gap")
    x = b.node("Flatten", [x], "flatten", axis=1)
    g1w = b.weight("fc1_w", b.rng.normal(0, 0.125, (64, 32)))
    g1b = b.weight("fc1_b", np.zeros(32))
    x = b.node("Relu", [b.node("Gemm", [x, g1w, g1b], "gemm")], "relu")
    g2w = b.weight("fc2_w", b.rng.normal(0, 0.17, (32, 4)))
    g2b = b.weight("fc2_b", np.zeros(4))
    x = b.node("Softmax", [b.node("Gemm", [x, g2w, g2b], "gemm")], "softmax", axis=1)
    rename_output(b, x, "risk")
    window = helper.make_tensor_value_info("window", TensorProto.FLOAT, [1, 6, 250])
    risk = helper.make_tensor_value_info("risk", TensorProto.FLOAT, [1, 4])
    return b.model("vitals", [window], [risk], "vital-sign risk classifier")


def pose() -> onnx.ModelProto:
    b = Builder(seed=3)
    x = b.conv("frame", 3, 16, 3, stride=2)                 # /2
    x = b.conv(x, 16, 32, 3, stride=2)                      # /4
    x = b.conv(x, 32, 32, 3, group=32)                      # depthwise
    x = b.conv(x, 32, 64, 1)                                # pointwise
    x = b.conv(x, 64, 64, 3, group=64)
    x = b.conv(x, 64, 64, 1)
    heat = b.conv(x, 64, 17, 1, bn=False, act=False)
    heat = b.node("Sigmoid", [heat], "sigmoid")
    rename_output(b, heat, "heatmaps")
    frame = helper.make_tensor_value_info("frame", TensorProto.FLOAT, [1, 3, 192, 192])
    out = helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, [1, 17, 48, 48])
    return b.model("pose", [frame], [out], "17-keypoint heatmap network, stride 4")


def lidar_encoder() -> onnx.ModelProto:
    b = Builder(seed=4, constant_weights=True)
    x = "points"
    for i, (cin, cout) in enumerate([(4, 32), (32, 64), (64, 128)]):
        w = b.weight(f"mlp{i}_w", b.rng.normal(0, (2 / cin) ** 0.5, (cin, cout)))
        bias = b.weight(f"mlp{i}_b", np.zeros(cout))
        x = b.node("Relu", [b.node("Add", [b.node("MatMul", [x, w], "matmul"), bias], "add")],
                   "relu")
    x = b.node("ReduceMax", [x], "reducemax", axes=[1], keepdims=0)
    rename_output(b, x, "features")
    points = helper.make_tensor_value_info("points", TensorProto.FLOAT, [1, "num_points", 4])
    out = helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 128])
    return b.model("lidar_encoder", [points], [out], "PointNet-style point-cloud encoder")


MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "detector": detector, "bottleneck_detector": bottleneck_detector, "vitals": vitals,
    "pose": pose, "lidar_encoder": lidar_encoder}


def model_bytes(name: str) -> bytes:
    """The serialized model `name` (a key of MODELS), byte for byte the same on every call."""
    return bytes(MODELS[name]().SerializeToString(deterministic=True))



# ---- frames: what the examples calibrate and validate their quantized variants on -------------

def _vital_windows(n: int, seed: int) -> list[np.ndarray]:
    """`n` windows of 6 vital-sign channels x 250 samples (a second at 250 Hz, float32): ECG-,
    pulse- and respiration-like waves at rates that differ between windows, with noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(250) / 250.0
    windows = []
    for _ in range(n):
        heart, breath = rng.uniform(0.8, 2.5), rng.uniform(0.15, 0.5)   # Hz
        channels = [np.sin(2 * np.pi * heart * k * t + rng.uniform(0, 2 * np.pi)) / k
                    for k in (1, 2, 3)]
        channels += [np.sin(2 * np.pi * breath * t + rng.uniform(0, 2 * np.pi)),
                     np.full(250, rng.uniform(0.9, 1.0)),               # oxygen saturation
                     np.full(250, rng.uniform(-0.5, 0.5))]              # temperature offset
        window = np.stack(channels) + rng.normal(0, 0.05, (6, 250))
        windows.append(window[np.newaxis].astype(np.float32))
    return windows


# folder (relative to the example's .ef file) -> (how many windows, seed)
FRAMES: dict[str, tuple[int, int]] = {"data/vitals/calib": (16, 101), "data/vitals/val": (8, 202)}


def frame_files(folder: str) -> dict[str, bytes]:
    """The .npy files of a frames folder of `FRAMES`, by file name, the same bytes every call."""
    import io

    n, seed = FRAMES[folder]
    out = {}
    for k, window in enumerate(_vital_windows(n, seed)):
        buffer = io.BytesIO()
        np.save(buffer, window, allow_pickle=False)
        out[f"window{k:03d}.npy"] = buffer.getvalue()
    return out
