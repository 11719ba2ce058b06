"""Placement by parts (placement/decompose.py) on small heterogeneous fleets, against brute
force: the bound never exceeds the optimum, the plan meets every constraint and passes the
independent verifier, `infeasible` only when brute force finds nothing; and the exact shortest
paths it prunes with (`through`) against enumeration."""

from __future__ import annotations

import itertools
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeflow import api, check_text, placement
from edgeflow.execution import build_execution
from edgeflow.placement.decompose import decompose, parts_of, restrict, through
from edgeflow.placement.evaluate import evaluate
from edgeflow.placement.problem import build_problem
from edgeflow.plan import Method
from edgeflow.verify import verify
from tests.conftest import ROOT
from tests.test_placement import PROPS, brute_force


@st.composite
def random_fleet(draw: st.DrawFn) -> str:
    """Two or three sites, each its own edge device kind with a camera, a chain of one or two
    operators and an actuator, sharing a fog box (and maybe a cloud) over links of their own;
    privacy stripped by the first operator or not; SLOs; memories around what the runtime's
    processes need, so that capacities decide where units fit."""
    sites = draw(st.integers(2, 3))
    order = draw(st.sampled_from(["latency", "latency, cost", "cost, latency",
                                  "energy, latency"]))
    lines = [f"app fleet {{ objective = minimize({order}) }}",
             (f"device fog {{ tier = fog, compute = {draw(st.sampled_from([5, 50]))} GFLOPS, "
             f"memory = {draw(st.sampled_from([400, 700, 2048]))} MiB, power = 30 W, "
             f"cost = {draw(st.sampled_from([0, 1]))} USD/h }}")]
    cloud = draw(st.booleans())
    if cloud:
        lines.append("device cloud { tier = cloud, compute = 500 GFLOPS, memory = 8 GiB, "
                     "cost = 2 USD/h }")
        lines.append(f"link fog <-> cloud {{ bandwidth = {draw(st.sampled_from([2, 50]))} "
                     "Mbps, latency = 10 ms }")
    private = draw(st.booleans())
    units = 0
    for k in range(sites):
        lines.append(f"device site{k} {{ tier = edge, compute = "
                     f"{draw(st.sampled_from([0.5, 2, 10]))} GFLOPS, memory = "
                     f"{draw(st.sampled_from([200, 320, 1024]))} MiB, power = 5 W, "
                     "worker_memory = 40 MiB }")
        lines.append(f"link site{k} <-> fog {{ bandwidth = {draw(st.sampled_from([1, 10, 100]))}"
                     f" Mbps, latency = {draw(st.sampled_from([1, 5]))} ms }}")
        lines.append(f"sensor cam{k} {{ on = site{k}, rate = {draw(st.sampled_from([2, 10]))} "
                     "Hz, emits = float32[1, 2000]" + (", privacy = [pii]" if private else "")
                     + " }")
        chain = []
        for j in range(draw(st.integers(1, 2)) if units < 4 else 1):
            removes = ", removes = [pii]" if private and j == 0 else ""
            lines.append(f"operator op{k}_{j} {{ work = {draw(st.sampled_from([1, 20, 100]))} "
                         f"MFLOP, emits = float32[1, {draw(st.sampled_from([10, 2000]))}], "
                         f"memory = {draw(st.sampled_from([0, 60]))} MiB{removes} }}")
            chain.append(f"op{k}_{j}")
            units += 1
        lines.append(f"actuator act{k} {{ on = site{k} }}")
        slo = draw(st.sampled_from(["", ", slo = latency < 40 ms", ", slo = latency < 300 ms"]))
        lines.append(f"pipeline p{k} {{ flow = cam{k} -> {' -> '.join(chain)} -> act{k}{slo} }}")
    if private:
        lines.append(f"privacy pii {{ allow = [edge{', fog' if draw(st.booleans()) else ''}] }}")
    return "\n".join(lines) + "\n"


def _problem(text: str):  # type: ignore[no-untyped-def]
    result = check_text(text, str(ROOT / "examples" / "fleet.ef"))
    assert result.program is not None, [d.message for d in result.diagnostics]
    return result.program, build_problem(build_execution(result.program))


@given(random_fleet())
@PROPS
def test_placement_by_parts_is_bounded_by_and_never_beats_brute_force(text: str) -> None:
    program, problem = _problem(text)
    expected = brute_force(problem)
    decomposed = decompose(problem, time_limit=60)
    solution = decomposed.solution
    if expected is None:
        assert solution.status in ("infeasible", "unknown")
        return
    assert solution.status != "infeasible"
    assert solution.bound <= expected[0] * (1 + 1e-6) + 1e-9  # a lower bound
    if solution.assignment is None:  # honest: no plan found, none claimed impossible
        assert solution.status == "unknown"
        return
    ev = evaluate(problem, solution.assignment)
    assert ev.feasible, ev.violations
    got = ev.terms(program.app.objective)
    assert got[0] >= expected[0] * (1 - 1e-6) - 1e-9
    if solution.gap == 0:  # a gap of 0 is a proof
        assert got[0] == pytest.approx(expected[0], rel=1e-6, abs=1e-9)


@given(random_fleet())
@PROPS
def test_the_plan_of_a_fleet_placed_by_parts_passes_the_verifier(text: str) -> None:
    program, _ = _problem(text)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(placement, "MILP_CHOICES", 0)  # every fleet by parts
        plan = api.plan(program, time_limit=60).plan
    assert plan is not None and plan.method is Method.DECOMPOSITION
    if plan.feasible:
        assert verify(plan, program) == []
        first = program.app.objective[0]
        assert plan.bound[first] <= plan.objective[first] * (1 + 1e-9) + 1e-12
        assert plan.to_dict()["method"] == "decomposition"


@given(random_fleet())
@PROPS
def test_through_is_the_fastest_pipeline_with_a_unit_on_each_candidate(text: str) -> None:
    """`through` against enumeration of every placement of a pipeline's units (capacities
    ignored: latency only)."""
    _, problem = _problem(text)
    for part in parts_of(problem):
        sub = restrict(problem, part)
        pinned = {s: i.candidates[0] for s, i in sub.steps.items() if not i.is_unit}
        units = [s for s, i in sub.steps.items() if i.is_unit]
        best: dict[tuple[object, str], float] = {}
        for combo in itertools.product(*(sub.steps[s].candidates for s in units)):
            assignment = {**pinned, **dict(zip(units, combo, strict=True))}
            ev = evaluate(sub, assignment)
            if any("no route" in v or "privacy" in v for v in ev.violations):
                continue
            (latency,) = ev.latency_s.values()
            for s, inst in zip(units, combo, strict=True):
                best[(s, inst)] = min(best.get((s, inst), float("inf")), latency)
        (_, _, path), = part.pipelines
        got = through(sub, path)
        for s in units:
            for inst in sub.steps[s].candidates:
                if (s, inst) in best:
                    assert got[s][inst] == pytest.approx(best[(s, inst)], rel=1e-9)
                else:
                    assert inst not in got[s]


@pytest.mark.parametrize("limit", [0.05, 0.5])
def test_a_tiny_time_limit_on_a_large_fleet_gives_a_plan_or_unknown(limit: float) -> None:
    """500 units on 57 devices of their own kinds, with next to no time: a plan (feasible) or
    an honest `unknown`, never `infeasible` and never an internal error."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from placement_scale import generate_hetero  # type: ignore[import-not-found]

    text, _ = generate_hetero(500, 57)
    result = check_text(text, str(ROOT / "examples" / "fleet.ef"))
    assert result.program is not None
    plan = api.plan(result.program, time_limit=limit).plan
    assert plan is not None and plan.method is Method.DECOMPOSITION
    assert plan.status.value in ("feasible", "unknown")
    if plan.feasible:
        assert 0 <= plan.gap <= 1


def test_a_fleet_with_one_impossible_pipeline_is_explained_from_that_part(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A part proven infeasible alone proves the fleet infeasible; the explanation is that
    part's, and names the pipeline and its SLO."""
    sites = "".join(
        f"device site{k} {{ tier = edge, compute = 1 GFLOPS, memory = 1 GiB }}\n"
        f"link site{k} <-> fog {{ bandwidth = 100 Mbps, latency = 2 ms }}\n"
        f"sensor cam{k} {{ on = site{k}, rate = 5 Hz, emits = float32[1, 100] }}\n"
        f"operator op{k} {{ work = 50 MFLOP, emits = float32[1, 10] }}\n"
        f"actuator act{k} {{ on = site{k} }}\n"
        f"pipeline p{k} {{ flow = cam{k} -> op{k} -> act{k}, slo = latency < "
        f"{'1 ms' if k == 2 else '500 ms'} }}\n" for k in range(4))
    text = ("app fleet {}\ndevice fog { tier = fog, compute = 100 GFLOPS, memory = 8 GiB }\n"
            + sites)
    result = check_text(text, str(ROOT / "examples" / "fleet.ef"))
    assert result.program is not None
    monkeypatch.setattr(placement, "MILP_CHOICES", 0)
    planned = api.plan(result.program, time_limit=30)
    assert planned.plan is not None and planned.plan.status.value == "infeasible"
    assert planned.plan.method is Method.DECOMPOSITION
    (diag,) = planned.diagnostics
    assert diag.code == "E0901" and "pipeline `p2`" in diag.message, diag.message
