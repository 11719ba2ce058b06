"""Placement: the MILP's optimum equals brute-force enumeration on random small apps, every plan
passes the independent verifier, infeasibility is reported exactly when brute force finds
nothing, and the examples' plans and infeasibility explanations match their goldens."""

from __future__ import annotations

import itertools
import json
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeflow import api, check_text, ir, load
from edgeflow.execution import build_execution
from edgeflow.placement.baselines import BASELINES
from edgeflow.placement.evaluate import Split, evaluate
from edgeflow.placement.heuristic import greedy
from edgeflow.placement.milp import solve
from edgeflow.placement.problem import build_problem
from edgeflow.verify import verify
from tests.conftest import FIXTURES, ROOT, assert_golden
from tests.test_cli import run

VITALS = ROOT / "examples" / "models" / "vitals.onnx"
EXAMPLES = sorted((ROOT / "examples").glob("*.ef"))
PROPS = settings(derandomize=True, max_examples=40, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])


@st.composite
def random_app(draw: st.DrawFn) -> str:
    """A small but complete app: 2-3 device kinds over the tiers, links, a sensor, a chain of
    operators and maybe a splittable model, privacy, SLOs and an objective."""
    count = draw(st.sampled_from([1, 1, 2]))
    tiers = draw(st.lists(st.sampled_from(["edge", "fog", "cloud"]), min_size=1, max_size=2))
    lines = []
    term_order = draw(st.permutations(["latency", "cost", "energy"]))
    terms = term_order[: draw(st.integers(1, 3))]
    lines.append(f"app rnd {{ objective = minimize({', '.join(terms)}) }}")
    # memories around what the runtime needs (a broker and the camera's driver take 128 MiB,
    # a worker 128 MiB or the declared `worker_memory`), so that it decides where units fit
    worker = draw(st.sampled_from(["", ", worker_memory = 40 MiB"]))
    lines.append(f"device gw {{ tier = edge, count = {count}, "
                 f"compute = {draw(st.sampled_from([0.5, 2, 10]))} GFLOPS, "
                 f"memory = {draw(st.sampled_from([200, 300, 1024]))} MiB, power = 5 W{worker} }}")
    names = ["gw"]
    for k, tier in enumerate(tiers):
        name = f"d{k}"
        lines.append(f"device {name} {{ tier = {tier}, compute = "
                     f"{draw(st.sampled_from([1, 20, 200]))} GFLOPS, memory = "
                     f"{draw(st.sampled_from([150, 300, 600]))} MiB, power = "
                     f"{draw(st.sampled_from([0, 50]))} W, cost = "
                     f"{draw(st.sampled_from([0, 1.5]))} USD/h"
                     f"{draw(st.sampled_from(['', ', cpus = 4']))} }}")
        peer = draw(st.sampled_from(names))
        lines.append(f"link {peer} <-> {name} {{ bandwidth = "
                     f"{draw(st.sampled_from([1, 10, 100]))} Mbps, latency = "
                     f"{draw(st.sampled_from([1, 5, 20]))} ms, cost = "
                     f"{draw(st.sampled_from([0, 0.1]))} USD/GB }}")
        names.append(name)
    private = draw(st.booleans())
    lines.append(f"sensor cam {{ on = gw, rate = {draw(st.sampled_from([1, 10, 30]))} Hz, "
                 f"emits = float32[1, 6, 250]" + (", privacy = [pii]" if private else "") + " }")
    steps = []
    for k in range(draw(st.integers(0, 2))):
        removes = ", removes = [pii]" if private and draw(st.booleans()) else ""
        lines.append(f"operator op{k} {{ work = {draw(st.sampled_from([1, 50, 400]))} MFLOP, "
                     f"emits = float32[1, 6, 250], memory = "
                     f"{draw(st.sampled_from([0, 8, 100]))} MiB{removes} }}")
        steps.append(f"op{k}")
    if draw(st.booleans()):
        split = draw(st.sampled_from(["auto", "none"]))
        lines.append(f'model net {{ source = "{VITALS}", inputs = {{ window = float32[1, 6, 250] '
                     f"}}, split = {split} }}")
        steps.insert(draw(st.integers(0, len(steps))), "net")
    sink_on = draw(st.sampled_from(names))
    lines.append(f"store out {{ on = {sink_on} }}")
    slo = draw(st.sampled_from(["", ", slo = latency < 30 ms", ", slo = latency < 200 ms"]))
    lines.append(f"pipeline p {{ flow = {' -> '.join(['cam', *steps, 'out'])}{slo} }}")
    if private:
        # the camera (edge) and, unless an operator removes pii, the sink sit where they are
        # declared: a rule forbidding them is a check error (E0703), not a placement problem
        allow = ["edge", *draw(st.lists(st.sampled_from(["fog", "cloud"]), max_size=2,
                                        unique=True))]
        sink_tier = "edge" if sink_on == "gw" else tiers[int(sink_on[1:])]
        if sink_tier not in allow and "removes" not in "".join(lines):
            allow.append(sink_tier)
        lines.append(f"privacy pii {{ allow = [{', '.join(allow)}] }}")
    return "\n".join(lines) + "\n"


def brute_force(problem, only_the_model: bool = False):  # type: ignore[no-untyped-def]
    """The lexicographic optimum over every placement of every unit: each variant of a model
    (the model itself first; `only_the_model` leaves the others out) whole on a candidate, or
    cut at each of its cuts with head and tail on two candidates."""
    units = [s for s, i in problem.steps.items() if i.is_unit]
    pinned = {s: i.candidates[0] for s, i in problem.steps.items() if not i.is_unit}
    order = problem.program.app.objective
    feasible = []
    for combo in itertools.product(*all_options(problem, units, only_the_model)):
        ev = evaluate(problem, {**pinned, **dict(zip(units, combo, strict=True))})
        if ev.feasible:
            feasible.append(ev.terms(order))
    if not feasible:
        return None
    for stage in range(len(order)):  # lexicographic, with the solver's tolerance per stage
        best = min(t[stage] for t in feasible)
        feasible = [t for t in feasible if t[stage] <= best + max(abs(best) * 1e-6, 1e-9)]
    return feasible[0]


def all_options(problem, units, only_the_model: bool = False) -> list[list[object]]:  # type: ignore[no-untyped-def]
    options = []
    for s in units:
        info = problem.steps[s]
        opts: list[object] = list(info.candidates)
        for n, var in enumerate(info.options):
            if n and only_the_model:
                continue
            if n:
                opts += [Split(max(len(var.cuts) - 1, 0), a, a, n) for a in info.candidates]
            for k in range(len(var.cuts)):
                opts += [Split(k, a, b, n) for a in info.candidates for b in info.candidates
                         if a != b]
        options.append(opts)
    return options


@given(random_app())
@PROPS
def test_solver_matches_brute_force_and_the_verifier(text: str) -> None:
    result = check_text(text, str(ROOT / "examples" / "random.ef"))
    assert result.program is not None, [d.message for d in result.diagnostics]
    problem = build_problem(build_execution(result.program))
    expected = brute_force(problem)
    solution = solve(problem, time_limit=60)
    if expected is None:
        assert solution.status == "infeasible"
        return
    assert solution.status == "optimal"
    ev = evaluate(problem, solution.assignment)
    assert ev.feasible, ev.violations
    got = ev.terms(result.program.app.objective)
    for a, b in zip(got, expected, strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-9)
    plan = api.plan(result.program, time_limit=60).plan
    assert verify(plan, result.program) == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_plans(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # spans in explanations name the file as given: keep it relative
    program = load(path.relative_to(ROOT))
    result = api.plan(program, time_limit=60, compare=True)
    plan = result.plan
    assert verify(plan, program) == []
    assert_golden(FIXTURES / "plans" / f"{path.stem}.json", plan.to_json())
    assert [b.name for b in result.baselines] == list(BASELINES)
    if plan.feasible:
        ours = plan.objective
        for baseline in result.baselines:
            if baseline.objective is None:
                continue
            if baseline.feasible:  # never worse than a feasible baseline, lexicographically
                theirs = baseline.objective
                for term in program.app.objective:
                    if ours[term] < theirs[term] * (1 - 1e-9):
                        break
                    assert ours[term] <= theirs[term] * (1 + 1e-6) + 1e-12


INFEASIBLE = {
    "control": [],
    "slo": [("slo  = latency < 50 ms", "slo  = latency < 0.1 ms")],
    # each gateway holds its broker and drivers (192 MiB) and no worker; the server too few
    "memory": [("memory  = 4 GiB", "memory  = 200 MiB"),
               ("memory  = 64 GiB", "memory  = 300 MiB")],
    "runtime": [("memory  = 4 GiB", "memory  = 1 MiB")],  # not even its broker and drivers
    "compute": [("work    = 2 GFLOP", "work    = 800 GFLOP")],
}


@pytest.mark.parametrize("case", list(INFEASIBLE))
def test_infeasibility_explanations(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    text = (ROOT / "examples" / "reference.ef").read_text()
    for old, new in INFEASIBLE[case]:
        assert old in text
        text = text.replace(old, new)
    # the reference app is feasible (the control); each case breaks one thing
    result = check_text(text, "examples/reference.ef")
    assert result.program is not None
    plan = api.plan(result.program, time_limit=30).plan
    assert_golden(FIXTURES / "plans" / f"infeasible_{case}.json",
                  json.dumps(plan.to_dict()["explanation"], indent=2) + "\n")
    if case == "control":
        assert plan.status == "optimal"  # the control: fixed reference app is feasible
        assert verify(plan, result.program) == []
    else:
        assert plan.status == "infeasible" and plan.explanation


def test_a_privacy_violation_no_placement_can_fix_is_a_check_error() -> None:
    """pii allowed only on the cloud while the cameras and the reject arms sit on edge gateways:
    `check` says so (E0703), once per sensor or sink, instead of `plan` finding no placement."""
    text = (ROOT / "examples" / "reference.ef").read_text().replace(
        "allow = [edge, fog]", "allow = [cloud]")
    result = check_text(text, "examples/reference.ef")
    assert result.program is None
    assert [(d.code, d.message.split(" handles")[0]) for d in result.diagnostics] == [
        ("E0703", "`camera` on `line_gw` (edge)"), ("E0703", "`reject_arm` on `line_gw` (edge)")]


SPLIT_APP = f"""
app split_demo {{ objective = minimize(latency) }}
device cam_box {{ tier = edge, count = 2, compute = 5 GFLOPS, memory = 1 GiB }}
device cloud   {{ tier = cloud, compute = 100 TFLOPS, memory = 64 GiB }}
link cam_box <-> cloud {{ bandwidth = 100 Mbps, latency = 10 ms }}
sensor camera {{ on = cam_box, rate = 1 Hz, emits = float32[1, 3, 320, 320] }}
model detector {{
  source = "{ROOT / 'examples' / 'models' / 'detector.onnx'}"
  inputs = {{ images = float32[1, 3, 320, 320] }}
}}
store detections {{ on = cloud }}
pipeline detect {{ flow = camera -> detector -> detections }}
"""


def test_split_placement_matches_the_split_optimum() -> None:
    result = check_text(SPLIT_APP, str(ROOT / "examples" / "split_demo.ef"))
    assert result.program is not None
    placed = api.plan(result.program).plan
    problem = build_problem(build_execution(result.program))
    plan = placed.to_dict()
    assert plan["status"] == "optimal" and verify(placed, result.program) == []
    assert [(s["model"], s["replica"], s["cut"]) for s in plan["splits"]] == [
        ("detector", 0, ["conv_21"]), ("detector", 1, ["conv_21"])]
    units = {(p["unit"], p["replica"]): p["device"] for p in plan["placements"]}
    assert units[("detector.head", 1)] == "cam_box[1]" and units[("detector.tail", 1)] == "cloud"
    # the figure `edgeflow split` gives for this device pair (docs/split.md), 59.891 ms, plus
    # what the plan adds to it: each message through its brokers (camera -> head and tail ->
    # store on one device, the cut between two) and the cut's header on the link
    # (docs/placement.md, "Messages")
    program = result.program
    cut = plan["splits"][0]["transfer_bytes"]

    def broker_ms(nbytes: int) -> float:
        return (ir.MESSAGE_LATENCY_S + 8 * (nbytes + ir.MESSAGE_HEADER_BYTES)
                / ir.MESSAGE_BANDWIDTH_BPS) * 1e3

    messaging = (broker_ms(program.output_bytes("camera")) + 2 * broker_ms(cut)
                 + 8 * ir.MESSAGE_HEADER_BYTES / 100e6 * 1e3
                 + broker_ms(program.output_bytes("detector")))
    worst = max(p["latency_ms"] for p in plan["pipelines"])
    assert worst == pytest.approx(59.891 + messaging, abs=1e-3)
    assert plan["objective"]["latency_ms"] == pytest.approx(worst)
    expected = brute_force(problem)
    assert expected is not None and expected[0] * 1e3 == pytest.approx(worst, rel=1e-9)


@pytest.mark.parametrize("text", [
    ('app empty { description = "no pipelines" }\n'
    "device d { tier = edge, compute = 1 TFLOPS, memory = 1 GiB }\n"),
    ("app direct { objective = minimize(cost) }\n"
    "device d { tier = edge, compute = 1 TFLOPS, memory = 1 GiB }\n"
    "sensor s { on = d, rate = 1 Hz, emits = uint8[4] }\nstore out { on = d }\n"
    "pipeline p { flow = s -> out }\n"),
], ids=["no-pipelines", "nothing-to-place"])
def test_apps_with_nothing_to_decide_are_optimal(text: str) -> None:
    result = check_text(text, str(ROOT / "examples" / "trivial.ef"))
    assert result.program is not None
    plan = api.plan(result.program).plan
    assert plan.status == "optimal" and plan.units == ()
    assert verify(plan, result.program) == []


def test_the_verifier_catches_misreported_unit_resources() -> None:
    program = load(ROOT / "examples" / "ar_assist.ef")
    plan = api.plan(program).plan
    first = plan.units[0]
    for change in ({"compute_share": first.compute_share * 2}, {"memory_bytes": 1.0},
                   {"cut": ("x",)}):
        bad = plan.model_copy(update={"units": (first.model_copy(update=change),
                                                *plan.units[1:])})
        assert any("misreported" in p for p in verify(bad, program)), change


def test_explanations_name_each_cause_once_and_what_rules_devices_out() -> None:
    text = (ROOT / "examples" / "ar_assist.ef").read_text()
    narrow = text.replace("bandwidth = 800 Mbps, latency = 2 ms", "bandwidth = 1 Mbps, latency = 2 ms")
    result = check_text(narrow, str(ROOT / "examples" / "narrow.ef"))
    (reason,) = api.plan(result.program).diagnostics
    assert reason.message.startswith("links `headset[0]` -> `edge_gpu`, `headset[1]` -> "
                                     "`edge_gpu`, `headset[2]` -> `edge_gpu`, `headset[3]` -> "
                                     "`edge_gpu` would each have to carry")
    private = text.replace("allow = [edge, fog]", "allow = [edge]").replace(
        "compute = 1.5 TFLOPS", "compute = 0.02 TFLOPS")
    result = check_text(private, str(ROOT / "examples" / "private.ef"))
    (reason,) = api.plan(result.program).diagnostics
    assert "`headset[0]`, `headset[1]`, `headset[2]`, `headset[3]` would each have to run at" \
        in reason.message
    assert reason.message.endswith("`edge_gpu`, `render_farm` are ruled out by privacy label "
                                   "`bystanders` (allowed on edge)")
    assert result.program is not None
    assert [lb.span for lb in reason.labels] == [result.program.privacy["bystanders"].span]


def test_a_time_out_without_a_plan_is_unknown_not_infeasible(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from edgeflow import placement
    from edgeflow.diagnostics import render_summary, render_text
    from edgeflow.placement.milp import Solution

    monkeypatch.setattr(placement, "solve",
                        lambda problem, limit, **_: Solution("unknown", None))
    monkeypatch.chdir(ROOT)
    result = api.check_file("examples/ar_assist.ef")
    assert result.program is not None
    planned = api.plan(result.program, time_limit=0.5)
    assert planned.plan is not None and planned.plan.status == "unknown"
    assert planned.plan.to_dict()["status"] == "unknown" and not planned.plan.feasible
    (diag,) = planned.diagnostics
    assert diag.code == "E0903" and "0.5 s" in diag.message
    rendered = render_text(diag, result.sources) + "\n" + \
        f"{result.file}: {render_summary(planned.diagnostics)}\n"
    assert_golden(FIXTURES / "plans" / "E0903_time_out.out", rendered)
    compiled = api.compile("examples/ar_assist.ef", output=tmp_path / "out", time_limit=0.5)
    assert not compiled.ok and not (tmp_path / "out").exists()
    assert [d.code for d in compiled.diagnostics] == ["E0903"]


def test_a_device_ruled_out_by_a_narrow_link_is_named_with_the_link(tmp_path: Path) -> None:
    text = ("app a {}\ndevice cam { tier = edge, compute = 1 GFLOPS, memory = 1 GiB }\n"
            "device fog { tier = fog, compute = 1 TFLOPS, memory = 8 GiB }\n"
            "link cam <-> fog { bandwidth = 1 Mbps, latency = 1 ms }\n"
            "sensor s { on = cam, rate = 10 Hz, emits = float32[1, 100000] }\n"
            "operator op { work = 200 MFLOP, emits = float32[1, 4] }\n"
            "store out { on = cam }\npipeline p { flow = s -> op -> out }\n")
    result = check_text(text, str(tmp_path / "a.ef"))
    (reason,) = api.plan(result.program).diagnostics
    assert reason.message.endswith("`fog` is reached over the `cam` -> `fog` link (1 Mbps), too "
                                   "narrow for the 32.0 Mbps `op` receives")
    assert result.program is not None
    assert [lb.span for lb in reason.labels] == [result.program.links[0].span]


@pytest.mark.parametrize("limit", ["0.1", "0.5"])
def test_a_tiny_time_limit_on_a_large_app_gives_a_plan_or_unknown_never_infeasible(
        tmp_path: Path, limit: str) -> None:
    """A thousand beds (3,072 units) with no time to speak of: the command ends with a plan
    (a warm start) or an honest `unknown`, never a false `infeasible` or an internal error."""
    text = (ROOT / "examples" / "healthcare_vitals.ef").read_text()
    count = re.search(r"count\s*=\s*\d+", text)
    assert count is not None
    app = tmp_path / "beds.ef"
    app.write_text(text.replace(count[0], "count = 1024"))
    shutil.copytree(ROOT / "examples" / "models", tmp_path / "models")
    shutil.copytree(ROOT / "examples" / "data", tmp_path / "data")  # its variant's frames
    proc = run("plan", str(app), "--time-limit", limit, "--format", "json")
    assert proc.returncode in (0, 1), proc.stderr
    out = json.loads(proc.stdout)
    assert out["result"] is not None, out["diagnostics"]
    status = out["result"]["status"]
    assert status in ("optimal", "feasible", "unknown")
    assert (proc.returncode == 0) == (status != "unknown")


@given(random_app())
@PROPS
def test_the_constructive_plan_meets_every_constraint_whenever_it_gives_one(text: str) -> None:
    """The MILP's warm start for heterogeneous fleets (placement/heuristic.py): None, or a plan
    the cost model and the independent verifier accept."""
    result = check_text(text, str(ROOT / "examples" / "random.ef"))
    assert result.program is not None
    problem = build_problem(build_execution(result.program))
    assignment = greedy(problem)
    if assignment is None:
        return
    assert evaluate(problem, assignment).feasible
    from edgeflow.placement import _plan
    from edgeflow.plan import Status
    assert verify(_plan(problem, Status.FEASIBLE, assignment), result.program) == []
