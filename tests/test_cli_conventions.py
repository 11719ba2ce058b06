"""CLI conventions every command follows: `--format json`/`--json` and the one envelope, shell
completion, `fmt --diff`, `init` and `models inspect`, run as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper

from edgeflow import api
from edgeflow.cost import model_cost
from edgeflow.diagnostics import CODES
from edgeflow.models.samples import FRAMES, MODELS, frame_files, model_bytes
from tests.conftest import FIXTURES, ROOT
from tests.test_cli import run

EXAMPLE_NAMES = sorted(p.stem for p in (ROOT / "examples").glob("*.ef"))
DETECTOR = str(ROOT / "examples" / "models" / "detector.onnx")
VITALS = str(ROOT / "examples" / "models" / "vitals.onnx")
REFERENCE = str(ROOT / "examples" / "reference.ef")


def envelope(proc: subprocess.CompletedProcess[str], command: str) -> dict[str, Any]:
    """The one JSON object a command printed on stdout, checked against the contract."""
    assert "Traceback" not in proc.stderr
    data = json.loads(proc.stdout)
    assert set(data) == {"command", "ok", "result", "diagnostics"}
    assert data["command"] == command
    assert data["ok"] == (not any(d["severity"] == "error" for d in data["diagnostics"]))
    if not data["ok"]:
        assert proc.returncode == 1
    return data


def result(proc: subprocess.CompletedProcess[str], command: str) -> Any:
    assert proc.returncode == 0, proc.stderr
    data = envelope(proc, command)
    assert data["ok"]
    return data["result"]


def unformatted(tmp_path: Path, name: str = "app.ef") -> Path:
    path = tmp_path / name
    path.write_text("app a {objective=minimize(latency)}\n"
                    "device d { tier = edge, compute = 1 TFLOPS, memory = 1 GiB }")
    return path


# ---------------------------------------------------------------- the envelope everywhere


def test_every_json_envelope_is_valid(tmp_path: Path) -> None:
    """One run of each command that reports something, with the flag and with its alias."""
    messy = unformatted(tmp_path)
    cases = [
        (["graph", REFERENCE, "--format", "json"], "graph"),
        (["explain", "E0505", "--format", "json"], "explain"),
        (["fmt", "--check", str(messy), "--format", "json"], "fmt"),
        (["init", str(tmp_path / "app"), "--format", "json"], "init"),
        (["models", "inspect", VITALS, "--format", "json"], "models inspect"),
    ]
    for args, command in cases:
        proc = run(*args)
        assert proc.returncode in (0, 1), proc.stderr
        data = envelope(proc, command)
        assert data["result"] is not None
        if command not in ("init", "fmt"):  # these change the world: run once
            assert run(*args[:-2], "--json").stdout == proc.stdout


def test_text_output_is_unchanged_without_json() -> None:
    text = run("explain", "E0505")
    assert text.stdout == (f"E0505 (error): {CODES['E0505'].title}\n\n"
                           f"{CODES['E0505'].explanation}\n")
    assert run("graph", REFERENCE).stdout.startswith('digraph "factory_inspection" {\n')


def test_check_takes_json_as_an_alias() -> None:
    broken = str(FIXTURES / "diagnostics" / "E0504_cycle.ef")
    proc = run("check", broken, "--json")
    assert proc.returncode == 1
    assert proc.stdout == run("check", broken, "--format", "json").stdout
    assert [d["code"] for d in json.loads(proc.stdout)] == ["E0504"]


def test_graph_json_is_the_dataflow() -> None:
    data = result(run("graph", REFERENCE, "--json"), "graph")
    assert data["app"] == "factory_inspection"
    nodes = {n["name"]: n for n in data["nodes"]}
    assert set(data) == {"app", "nodes", "edges", "components"}
    assert nodes["camera"]["kind"] == "sensor" and nodes["detector"]["kind"] == "model"
    assert "pii" in nodes["camera"]["labels"]
    assert {"from": "normalize", "to": "detector", "pipelines": ["inspect"]} in data["edges"]
    for edge in data["edges"]:
        assert edge["from"] in nodes and edge["to"] in nodes
    covered = [name for c in data["components"] for name in c["nodes"]]
    assert sorted(covered) == sorted(nodes)
    for comp in data["components"]:
        assert all(nodes[n]["component"] == comp["index"] for n in comp["nodes"])
        assert comp["replicas"] >= 1 and set(comp["sensors"]) <= set(comp["nodes"])


def test_graph_json_of_a_broken_file_has_no_result() -> None:
    proc = run("graph", str(FIXTURES / "diagnostics" / "E0504_cycle.ef"), "--format", "json")
    data = envelope(proc, "graph")
    assert data["result"] is None and [d["code"] for d in data["diagnostics"]] == ["E0504"]
    assert proc.stderr == ""


def test_explain_json() -> None:
    data = result(run("explain", "e1002", "--json"), "explain")
    entry = CODES["E1002"]
    assert data == {"code": "E1002", "severity": "error", "title": entry.title,
                    "explanation": entry.explanation}
    unknown = run("explain", "E9999", "--json")
    assert unknown.returncode == 2 and unknown.stdout == "" and "E9999" in unknown.stderr


# ---------------------------------------------------------------- fmt


def test_fmt_check_diff_prints_a_unified_diff_and_changes_nothing(tmp_path: Path) -> None:
    path = unformatted(tmp_path)
    before = path.read_text()
    proc = run("fmt", "--check", "--diff", "app.ef", cwd=tmp_path)
    assert proc.returncode == 1 and path.read_text() == before
    assert proc.stderr == "would reformat app.ef\n"
    lines = proc.stdout.splitlines(keepends=True)
    assert lines[:3] == ["--- a/app.ef\n", "+++ b/app.ef\n", "@@ -1,2 +1,2 @@\n"]
    assert "\\ No newline at end of file\n" in lines  # the original lacks the final newline
    new = "".join(line[1:] for line in lines[3:] if line[0] in "+ ")
    assert run("fmt", "app.ef", cwd=tmp_path).returncode == 0
    assert path.read_text() == new  # the diff's new side is what fmt writes
    clean = run("fmt", "--check", "--diff", "app.ef", cwd=tmp_path)
    assert (clean.returncode, clean.stdout, clean.stderr) == (0, "", "")


def test_fmt_diff_alone_writes_nothing_and_exits_0(tmp_path: Path) -> None:
    path = unformatted(tmp_path)
    before = path.read_text()
    proc = run("fmt", "--diff", str(path))
    assert proc.returncode == 0 and proc.stdout.startswith(f"--- a/{path}\n")
    assert path.read_text() == before


def test_fmt_json_reports_each_file(tmp_path: Path) -> None:
    messy, clean = unformatted(tmp_path), tmp_path / "clean.ef"
    clean.write_text("app a { objective = minimize(latency) }\n")
    broken = tmp_path / "broken.ef"
    broken.write_text("app a {")
    checked = run("fmt", "--check", "--diff", str(messy), str(clean), str(broken), "--json")
    data = envelope(checked, "fmt")
    files = {f["file"]: f for f in data["result"]["files"]}
    assert files[str(messy)]["reformatted"] is True
    assert files[str(messy)]["diff"].startswith(f"--- a/{messy}\n")
    assert files[str(clean)] == {"file": str(clean), "reformatted": False}
    assert files[str(broken)] == {"file": str(broken), "reformatted": None}
    assert [d["span"]["file"] for d in data["diagnostics"]] == [str(broken)]
    assert checked.stderr == ""  # nothing but the envelope
    written = envelope(run("fmt", str(messy), str(clean), "--json"), "fmt")
    assert written["ok"] and [f["reformatted"] for f in written["result"]["files"]] == [True,
                                                                                        False]
    assert run("fmt", "--check", str(messy)).returncode == 0


# ---------------------------------------------------------------- completion


def test_help_still_works_and_offers_completion() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    for name in ("--install-completion", "--show-completion", "init", "models"):
        assert name in proc.stdout


def test_completion_script_and_completions() -> None:
    script = run("--show-completion", "bash")
    assert script.returncode == 0
    assert "_EDGEFLOW_COMPLETE=complete_bash" in script.stdout  # named edgeflow under python -m
    assert script.stdout.rstrip().endswith("edgeflow")

    def complete(words: str) -> list[str]:
        env = {**os.environ, "_EDGEFLOW_COMPLETE": "complete_bash", "COMP_WORDS": words,
               "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}
        proc = subprocess.run([sys.executable, "-m", "edgeflow"], env=env, text=True,
                              capture_output=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    assert "models" in complete("edgeflow mo")
    assert complete("edgeflow init x --example ") == EXAMPLE_NAMES


# ---------------------------------------------------------------- init


@pytest.mark.parametrize("example", [None, *EXAMPLE_NAMES])
def test_init_makes_an_app_that_checks_and_plans(tmp_path: Path, example: str | None) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    made = run("init", "my_app", *(["--example", example] if example else []), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    app = tmp_path / "my_app" / "app.ef"
    assert "edgeflow check app.ef" in (app.parent / "README.md").read_text()
    for model in (app.parent / "models").iterdir():
        assert model.read_bytes() == (ROOT / "examples" / "models" / model.name).read_bytes()
    checked = run("check", str(app), cwd=elsewhere)
    assert checked.returncode == 0 and "no problems" in checked.stderr, checked.stderr
    planned = run("plan", str(app), cwd=elsewhere)
    if example == "factory_infeasible":  # infeasible on purpose (README, docs/placement.md)
        assert planned.returncode == 1 and "E0901" in planned.stderr
    else:
        assert planned.returncode == 0, planned.stderr
    assert "Traceback" not in planned.stderr
    if example is not None:
        original = (ROOT / "examples" / f"{example}.ef").read_text()
        assert app.read_text() == original  # its models already live in models/


def test_init_starter_is_formatted_and_uses_its_own_models(tmp_path: Path) -> None:
    assert run("init", str(tmp_path / "a")).returncode == 0
    assert run("fmt", "--check", str(tmp_path / "a" / "app.ef")).returncode == 0
    assert sorted(p.name for p in (tmp_path / "a" / "models").iterdir()) == ["vitals.onnx"]


def test_init_rewrites_model_sources_into_the_app(tmp_path: Path) -> None:
    from edgeflow.scaffold import with_local_models

    text, models = with_local_models(
        'model m { source = "../../zoo/detector.onnx", inputs = { images = uint8[1] } }\n'
        'model n { source = "/abs/detector.onnx" }\n')
    assert models == ["detector"]
    assert text.count('source = "models/detector.onnx"') == 2


def test_init_never_overwrites_without_force(tmp_path: Path) -> None:
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "README.md").write_text("mine\n")
    refused = run("init", str(folder), "--json")
    data = envelope(refused, "init")
    assert data["result"] is None
    assert [(d["code"], d["span"]["file"]) for d in data["diagnostics"]] == \
        [("E1002", str(folder / "README.md"))]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md"]  # all or nothing
    assert (folder / "README.md").read_text() == "mine\n"
    forced = result(run("init", str(folder), "--force", "--json"), "init")
    assert forced == {"folder": str(folder), "example": None,
                      "files": [str(folder / "app.ef"), str(folder / "models" / "vitals.onnx"),
                                str(folder / "README.md")]}
    again = run("init", str(folder))
    assert again.returncode == 1 and again.stderr.count("error[E1002]") == 3


def test_init_into_a_file_is_e1001(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("")
    proc = run("init", str(tmp_path / "taken"))
    assert proc.returncode == 1 and "error[E1001]" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_init_unknown_example_is_a_usage_error(tmp_path: Path) -> None:
    proc = run("init", str(tmp_path / "x"), "--example", "nope")
    assert proc.returncode == 2 and not (tmp_path / "x").exists()
    assert f"the examples are: {', '.join(EXAMPLE_NAMES)}" in proc.stderr


def test_examples_are_packaged_and_their_models_are_the_samples() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packaged = config["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    for name in EXAMPLE_NAMES:
        assert packaged[f"examples/{name}.ef"] == f"edgeflow/_data/examples/{name}.ef"
    for name in MODELS:  # examples/models/make_models.py writes exactly these
        assert model_bytes(name) == (ROOT / "examples" / "models" / f"{name}.onnx").read_bytes()
    for folder in FRAMES:  # examples/data/make_frames.py writes exactly these
        files = frame_files(folder)
        assert sorted(p.name for p in (ROOT / "examples" / folder).iterdir()) == sorted(files)
        for name, data in files.items():
            assert (ROOT / "examples" / folder / name).read_bytes() == data


def test_init_of_an_example_writes_the_frames_its_variants_need(tmp_path: Path) -> None:
    proc = run("init", str(tmp_path / "ward"), "--example", "healthcare_vitals")
    assert proc.returncode == 0, proc.stderr
    assert "24 frames in" in proc.stderr
    for folder in FRAMES:
        assert sorted(p.name for p in (tmp_path / "ward" / folder).iterdir()) == \
            sorted(frame_files(folder))
    assert run("check", str(tmp_path / "ward" / "app.ef")).returncode == 0


# ---------------------------------------------------------------- models inspect


def test_inspect_a_dynamic_model_names_its_dims_and_hints() -> None:
    proc = run("models", "inspect", DETECTOR)
    assert proc.returncode == 0, proc.stderr
    assert "--input images=float32[batch,3,height,width]" in proc.stdout
    data = result(run("models", "inspect", DETECTOR, "--json"), "models inspect")
    assert data["opset"] == {"ai.onnx": 17} and data["nodes"] == 23
    assert data["inputs"] == [{"name": "images", "dtype": "float32",
                               "dims": ["batch", 3, "height", "width"], "bound": None,
                               "hint": "--input images=float32[batch,3,height,width]"}]
    assert data["outputs"] == [{"name": "detections", "dtype": "float32",
                                "dims": ["batch", 21, None, None]}]
    assert data["analysis"] is None


def test_inspect_bound_agrees_with_split_and_the_cost_model() -> None:
    bound = ["--input", "images=float32[1,3,320,320]"]
    data = result(run("models", "inspect", DETECTOR, *bound, "--json"), "models inspect")
    split = result(run("split", DETECTOR, *bound, "--edge-compute", "1TFLOPS", "--cloud-compute",
                       "10TFLOPS", "--bandwidth", "10Mbps", "--json"), "split")
    assert data["inputs"][0]["bound"] == "float32[1,3,320,320]"
    assert data["analysis"]["work_flop"] == split["total_work_flop"]
    assert data["analysis"]["outputs"] == [{"name": "detections", "dtype": "float32",
                                            "dims": [1, 21, 10, 10]}]
    text = run("models", "inspect", DETECTOR, *bound).stdout
    assert "GFLOP per run" in text and "detections: float32[1,21,10,10]" in text


def test_inspect_a_static_model_is_analysed_without_inputs() -> None:
    data = result(run("models", "inspect", VITALS, "--json"), "models inspect")
    program = api.load(ROOT / "examples" / "healthcare_vitals.ef")
    cost = model_cost(program.models["risk_classifier"])
    assert data["analysis"]["work_flop"] == cost.work
    assert data["analysis"]["weight_bytes"] == cost.weights
    assert data["inputs"][0]["hint"] is None


def _two_inputs(path: Path) -> str:
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"])], "two",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, [None, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return str(path)


def test_inspect_binds_static_inputs_and_names_anonymous_dims(tmp_path: Path) -> None:
    model = _two_inputs(tmp_path / "two.onnx")
    data = result(run("models", "inspect", model, "--json"), "models inspect")
    assert [(i["bound"], i["hint"]) for i in data["inputs"]] == \
        [("float32[1,4]", None), (None, "--input b=float32[d0,4]")]
    assert data["analysis"] is None
    bound = result(run("models", "inspect", model, "--input", "b=float32[3,4]", "--json"),
                   "models inspect")
    assert bound["analysis"]["outputs"] == [{"name": "sum", "dtype": "float32", "dims": [3, 4]}]
    wrong = envelope(run("models", "inspect", model, "--input", "b=int64[3,4]", "--json"),
                     "models inspect")
    assert [d["code"] for d in wrong["diagnostics"]] == ["E0605"]
    assert wrong["result"]["analysis"] is None  # the signature is still shown


@pytest.mark.parametrize(("args", "code"), [
    (["missing.onnx"], "E0601"),
    ([str(ROOT / "README.md")], "E0602"),
    ([DETECTOR, "--input", "imagez=float32[1,3,320,320]"], "E0603"),
    ([DETECTOR, "--input", "images=float32[1,3,320]"], "E0605"),
])
def test_inspect_errors_are_split_s_diagnostics(args: list[str], code: str) -> None:
    proc = run("models", "inspect", *args)
    assert proc.returncode == 1 and f"error[{code}]" in proc.stderr
    assert "Traceback" not in proc.stderr
    data = envelope(run("models", "inspect", *args, "--json"), "models inspect")
    assert [d["code"] for d in data["diagnostics"]] == [code]


def test_inspect_usage_errors() -> None:
    for args in (["models", "inspect", DETECTOR, "--input", "images"], ["models", "inspect"],
                 ["models", "nope"]):
        proc = run(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_docs_give_every_command_s_json_result() -> None:
    table = (ROOT / "docs" / "cli.md").read_text()
    for command in ("plan", "compile", "split", "profile", "graph", "explain", "fmt", "init",
                    "models inspect"):
        assert f"| `{command}` |" in table, command
    readme = (ROOT / "README.md").read_text()
    for usage in ("edgeflow init", "edgeflow models inspect", "--diff", "--install-completion"):
        assert usage in readme, usage
