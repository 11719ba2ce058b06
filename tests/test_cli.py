"""The command line, run as a real process: exit codes, streams, formats, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, ROOT, assert_golden

EXAMPLES = sorted((ROOT / "examples").glob("*.ef"))


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeflow", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=120, check=False)


def test_examples_check_clean() -> None:
    proc = run("check", *map(str, EXAMPLES))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("no problems") == len(EXAMPLES)


def test_errors_exit_1_with_located_text() -> None:
    proc = run("check", "E0301_unknown_unit.ef", cwd=FIXTURES / "diagnostics")
    assert proc.returncode == 1
    assert "error[E0301]: unknown unit `msec`" in proc.stderr
    assert " --> E0301_unknown_unit.ef:5:62" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_json_format_goes_to_stdout() -> None:
    proc = run("check", "--format", "json", "E0303_invalid_value.ef", "W0510_unused.ef",
               cwd=FIXTURES / "diagnostics")
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert [d["code"] for d in data] == ["E0303", "E0303", "E0303", "W0510"]
    assert {d["span"]["file"] for d in data} == {"E0303_invalid_value.ef", "W0510_unused.ef"}


def test_warnings_alone_exit_0() -> None:
    proc = run("check", "W0702_unused_label.ef", cwd=FIXTURES / "diagnostics")
    assert proc.returncode == 0
    assert "warning[W0702]" in proc.stderr


@pytest.mark.parametrize("args", [["check"], ["check", "missing.ef"], ["explain", "E9999"],
                                  ["check", "--format", "xml", "x.ef"], ["nonsense"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    proc = run(*args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr


def test_version_and_explain() -> None:
    assert run("--version").stdout.startswith("edgeflow ")
    proc = run("explain", "e0505")
    assert proc.returncode == 0 and proc.stdout.startswith("E0505 (error): tensor type mismatch")


def test_graph_formats() -> None:
    dot = run("graph", "examples/reference.ef", "--format", "dot")
    assert dot.returncode == 0
    assert '"normalize" -> "detector" [label="inspect"];' in dot.stdout
    mermaid = run("graph", "examples/reference.ef", "--format", "mermaid")
    assert mermaid.stdout.startswith("flowchart LR\n")
    assert "camera -->|audit| blur_faces" in mermaid.stdout
    assert run("graph", "examples/reference.ef").stdout == dot.stdout  # deterministic


def test_graph_of_a_broken_file_reports_errors() -> None:
    proc = run("graph", str(FIXTURES / "diagnostics" / "E0504_cycle.ef"))
    assert proc.returncode == 1 and "error[E0504]" in proc.stderr and proc.stdout == ""


def test_non_utf8_and_directory_are_diagnostics_not_crashes() -> None:
    proc = run("check", "E0004_not_utf8.ef", "E0005_folder.ef", cwd=FIXTURES / "diagnostics")
    assert proc.returncode == 1
    assert "error[E0004]" in proc.stderr and "error[E0005]" in proc.stderr


def test_plan_json_and_exit_codes() -> None:
    proc = run("plan", "examples/ar_assist.ef", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)  # nothing but JSON on stdout (no solver banner)
    assert out["command"] == "plan" and out["ok"] is True and out["diagnostics"] == []
    plan = out["result"]
    assert plan["status"] == "optimal" and plan["app"] == "ar_assist"
    assert {"objective", "placements", "splits", "pipelines", "devices", "links",
            "explanation"} <= set(plan)
    again = run("plan", "examples/ar_assist.ef", "--json")
    assert again.stdout == proc.stdout  # deterministic
    as_format = run("plan", "examples/ar_assist.ef", "--format", "json")
    assert as_format.stdout == proc.stdout  # --json is --format json
    compared = json.loads(run("plan", "examples/ar_assist.ef", "--json", "--compare").stdout)
    assert [b["name"] for b in compared["result"]["comparison"]] == [
        "sensor", "cloud", "neurosurgeon", "edgeward"]
    assert all(b["objective"] is None or set(b["objective"]) == set(plan["objective"])
               for b in compared["result"]["comparison"])
    infeasible_json = json.loads(run("plan", "examples/factory_infeasible.ef", "--json").stdout)
    assert infeasible_json["ok"] is False and infeasible_json["result"]["status"] == "infeasible"
    assert {d["code"] for d in infeasible_json["diagnostics"]} == {"E0901"}
    infeasible = run("plan", "examples/factory_infeasible.ef")
    assert infeasible.returncode == 1
    assert "app factory_inspection: infeasible" in infeasible.stdout
    assert_golden(FIXTURES / "plans" / "E0901_factory_infeasible.out", infeasible.stderr)
    checked = run("check", "--plan", "examples/factory_infeasible.ef", "examples/ar_assist.ef")
    assert checked.returncode == 1 and checked.stderr == infeasible.stderr + \
        "examples/ar_assist.ef: no problems\n"


def test_plan_compare_and_explain() -> None:
    proc = run("plan", "examples/smart_city_traffic.ef", "--compare", "--explain")
    assert proc.returncode == 0, proc.stderr
    for name in ("edgeflow", "sensor", "cloud", "neurosurgeon", "edgeward"):
        assert f"  {name} " in proc.stdout
    # an infeasible baseline says why
    assert "INFEASIBLE\n                because `resize_normalize` runs on `city_cloud` (cloud), " \
        "which privacy labels pii do not allow" in proc.stdout
    assert "compute  vehicle_detector on street_cabinet[0]" in proc.stdout
    broken = run("plan", str(FIXTURES / "diagnostics" / "E0504_cycle.ef"))
    assert broken.returncode == 1 and "error[E0504]" in broken.stderr


def test_an_app_too_large_to_place_is_refused_before_it_is_built() -> None:
    proc = run("plan", "tests/fixtures/plans/too_large.ef")
    assert proc.returncode == 1 and "error[E0902]" in proc.stderr
    assert_golden(FIXTURES / "plans" / "E0902_too_large.out", proc.stderr)
    as_json = json.loads(run("plan", "tests/fixtures/plans/too_large.ef", "--json").stdout)
    assert as_json["result"] is None and [d["code"] for d in as_json["diagnostics"]] == ["E0902"]
    compiled = run("compile", "tests/fixtures/plans/too_large.ef", "--format", "json")
    assert compiled.returncode == 1 and "E0902" in compiled.stdout
