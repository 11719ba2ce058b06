"""A newcomer adds a deployment target or an objective term by one module each
(tests/extensions/): registered, they appear in `--target` choices, in plan JSON, in the
terminal's comparison and in report.md, and the solver optimises the new term exactly."""

from __future__ import annotations

import csv
import importlib
import io
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from edgeflow import api, check_text
from edgeflow.emit.targets import TARGETS, unregister
from edgeflow.execution import build_execution
from edgeflow.objectives import TERMS
from edgeflow.objectives import unregister as unregister_term
from edgeflow.placement.problem import build_problem
from edgeflow.unit_config import UnitConfig
from edgeflow.verify import verify
from tests.conftest import ROOT
from tests.test_placement import brute_force

APP = """
app fleet { objective = minimize(latency, traffic) }
device cam  { tier = edge, count = 2, compute = 2 GFLOPS, memory = 1 GiB }
device fog  { tier = fog, compute = 40 GFLOPS, memory = 8 GiB }
device dc   { tier = cloud, compute = 400 GFLOPS, memory = 64 GiB, cost = 2 USD/h }
link cam <-> fog { bandwidth = 50 Mbps, latency = 2 ms }
link fog <-> dc  { bandwidth = 500 Mbps, latency = 10 ms }
sensor camera { on = cam, rate = 10 Hz, emits = float32[1, 6, 250] }
operator filter { work = 20 MFLOP, emits = float32[1, 6, 250] }
operator score  { work = 5 MFLOP, emits = float32[1, 6, 250] }
store results { on = dc }
pipeline p { flow = camera -> filter -> score -> results, slo = latency < 300 ms }
"""

RUN_WITH_EXTENSIONS = ("import sys, tests.extensions.inventory_target, "
                       "tests.extensions.traffic_term; from edgeflow.cli import main; "
                       "sys.argv[0] = 'edgeflow'; main()")


@pytest.fixture
def extensions() -> Iterator[None]:
    import tests.extensions.inventory_target as target
    import tests.extensions.traffic_term as term

    for module in (target, term):  # registered on import; again after an earlier test's cleanup
        if module is target and "inventory" not in TARGETS or \
                module is term and "traffic" not in TERMS:
            importlib.reload(module)
    yield
    unregister("inventory")
    unregister_term("traffic")


def _edgeflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", RUN_WITH_EXTENSIONS, *args], cwd=ROOT,
                          text=True, capture_output=True, timeout=120, check=False)


def test_the_new_term_is_checked_planned_and_optimised_exactly(extensions: None) -> None:
    result = check_text(APP, str(ROOT / "examples" / "fleet.ef"))
    assert result.ok, result.diagnostics
    assert result.program is not None
    assert result.program.app.objective == ("latency", "traffic")
    planned = api.plan(result.program, compare=True)
    plan = planned.plan
    assert plan.status == "optimal" and verify(plan, result.program) == []
    data = plan.to_dict()
    assert list(data["objective"]) == ["latency_ms", "cost_usd_per_h", "energy_w", "traffic_mbps"]
    # lexicographic optimum of (latency, traffic) equals exhaustive enumeration's
    best = brute_force(build_problem(build_execution(result.program)))
    assert best is not None
    assert plan.objective["latency"] == pytest.approx(best[0], rel=1e-9)
    assert plan.objective["traffic"] == pytest.approx(best[1], rel=1e-6, abs=1e-6)
    assert data["objective"]["traffic_mbps"] == pytest.approx(plan.objective["traffic"] * 1e-6)
    assert all(b.objective is None or "traffic" in b.objective for b in planned.baselines)


def test_an_unregistered_term_is_a_located_error() -> None:
    result = check_text(APP, "fleet.ef")
    (diag,) = [d for d in result.diagnostics if d.code == "E0305"]
    assert "traffic" in diag.message and diag.span.line == 2


def test_the_new_target_is_a_choice_and_renders(extensions: None, tmp_path) -> None:  # type: ignore[no-untyped-def]
    source = tmp_path / "fleet.ef"
    source.write_text(APP)
    helped = _edgeflow("compile", "--help")
    assert helped.returncode == 0 and "inventory" in helped.stdout, helped.stderr
    wrong = _edgeflow("compile", str(source), "--target", "inventori")
    assert wrong.returncode == 2 and "inventory" in wrong.stderr and "k8s" in wrong.stderr
    out = tmp_path / "bundle"
    done = _edgeflow("compile", str(source), "--target", "inventory", "-o", str(out))
    assert done.returncode == 0, done.stderr
    marker = json.loads((out / ".edgeflow-bundle").read_text())
    assert marker["target"] == "inventory"
    rows = list(csv.DictReader(io.StringIO((out / "inventory" / "units.csv").read_text())))
    assert {(r["unit"], r["replica"]) for r in rows} == {
        (u, str(r)) for u in ("filter", "score") for r in (0, 1)}
    for row in rows:
        config = UnitConfig.load(out / "inventory" / f"{row['unit']}-r{row['replica']}.json")
        assert config.broker.host == f"broker.{row['device']}.example"
    plan = json.loads((out / "plan.json").read_text())
    assert "traffic_mbps" in plan["objective"]
    report = (out / "report.md").read_text()
    assert "for target `inventory`" in report and " Mbps." in report and "traffic " in report
    compared = _edgeflow("plan", str(source), "--compare")
    assert compared.returncode == 0 and "traffic" in compared.stdout


def test_registries_hold_only_the_built_ins_without_extensions() -> None:
    assert list(TARGETS) == ["k8s", "compose", "azure-iot-edge", "greengrass"]
    assert list(TERMS) == ["latency", "cost", "energy"]
