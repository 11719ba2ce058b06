"""Golden renderings of `edgeflow split` errors (codes raised by the command line, not by .ef
files), so every diagnostic code has an exact expected output."""

from __future__ import annotations

import json
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


DETECTOR = ["split", "detector.onnx", "--input", "images=float32[1,3,64,64]", *BASE]
# case: (arguments, files written in the folder beforehand)
CASES: dict[str, tuple[list[str], dict[str, str]]] = {
    "E0606_unknown_shape": (["split", "custom.onnx", "--input", "x=float32[1,4]", *BASE], {}),
    "E0801_not_a_cut": ([*DETECTOR, "--cut", "conv_30"], {}),
    "E0802_bad_profile": ([*DETECTOR, "--edge-profile", "profile.json"],
                          {"profile.json": '{"nodes": []}'}),
    "E1001_emit_into_a_file": ([*DETECTOR, "--emit", "notes.txt"], {"notes.txt": "mine"}),
    "E1002_foreign_head": ([*DETECTOR, "--emit", "out"], {"out/head.onnx": "mine"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_split_error_golden(case: str, tmp_path: Path) -> None:
    args, existing = CASES[case]
    _custom_op_model(tmp_path / "custom.onnx")
    (tmp_path / "detector.onnx").write_bytes((ROOT / "examples" / "models" /
                                              "detector.onnx").read_bytes())
    for name, text in existing.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    proc = run(*args, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error[{case.split('_')[0]}]")
    assert_golden(SPLIT / f"{case}.out", proc.stderr)
    assert all((tmp_path / name).read_text() == text for name, text in existing.items())
    assert not list(tmp_path.glob("**/tail.onnx"))  # on any error nothing is written


def test_an_operator_without_a_work_formula_is_a_warning_naming_it(tmp_path: Path) -> None:
    """W0609: the split still succeeds (exit 0); the op and its node count are named once,
    on stderr and in the JSON's `no_formula_ops`."""
    nodes = [helper.make_node("Einsum", ["x", "w"], ["a"], equation="ij,jk->ik"),
             helper.make_node("Einsum", ["a", "w"], ["y"], equation="ij,jk->ik")]
    graph = helper.make_graph(nodes, "einsum", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [4, 8])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [4, 8])], initializer=[helper.make_tensor(
                "w", TensorProto.FLOAT, [8, 8], [0.5] * 64)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "einsum.onnx")
    args = ["split", "einsum.onnx", "--input", "x=float32[4,8]", *BASE]
    proc = run(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("warning[W0609]")
    assert_golden(SPLIT / "W0609_no_formula.out", proc.stderr)
    data = json.loads(run(*args, "--format", "json", cwd=tmp_path).stdout)
    assert data["result"]["no_formula_ops"] == {"Einsum": 2}
    assert [d["code"] for d in data["diagnostics"]] == ["W0609"]
