"""Golden renderings of `edgeflow split` errors (codes raised by the command line, not by .ef
files), so every diagnostic code has an exact expected output."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from tests.conftest import FIXTURES, ROOT, assert_golden
from tests.test_cli import run

SPLIT = FIXTURES / "split"
BASE = ["--edge-compute", "1TFLOPS", "--cloud-compute", "10TFLOPS", "--bandwidth", "10Mbps"]


def _custom_op_model(path: Path) -> None:
    node = helper.make_node("Mystery", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "custom", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 4])], [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                          [1, "n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    onnx.save(model, path)


CASES = {
    "E0606_unknown_shape": (["split", "custom.onnx", "--input", "x=float32[1,4]", *BASE], None),
    "E0801_not_a_cut": (["split", "detector.onnx", "--input", "images=float32[1,3,64,64]",
                         "--cut", "conv_30", *BASE], None),
    "E0802_bad_profile": (["split", "detector.onnx", "--input", "images=float32[1,3,64,64]",
                           "--edge-profile", "profile.json", *BASE], "profile.json"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_split_error_golden(case: str, tmp_path: Path) -> None:
    args, junk = CASES[case]
    _custom_op_model(tmp_path / "custom.onnx")
    (tmp_path / "detector.onnx").write_bytes((ROOT / "examples" / "models" /
                                              "detector.onnx").read_bytes())
    if junk:
        (tmp_path / junk).write_text('{"nodes": []}')
    proc = run(*args, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error[{case.split('_')[0]}]")
    assert_golden(SPLIT / f"{case}.out", proc.stderr)
