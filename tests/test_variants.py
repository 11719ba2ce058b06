"""Model variants in placement: per model replica, the variant is chosen together with its cut
and devices, under the model's fidelity floor. The solver's choice equals brute force over
(variant, cut, placement) and is never worse than the model alone; every plan passes the
independent verifier, which also rejects a variant below the floor."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from edgeflow import api, ir
from edgeflow.api import check_text
from edgeflow.execution import build_execution
from edgeflow.models import quantize as q
from edgeflow.models.samples import Builder
from edgeflow.placement.evaluate import Split, evaluate
from edgeflow.placement.milp import solve
from edgeflow.placement.problem import build_problem
from edgeflow.verify import verify
from tests.test_placement import random_app

ROOT = Path(__file__).resolve().parent.parent
VITALS = ROOT / "examples" / "models" / "vitals.onnx"
FOLDER = Path(tempfile.mkdtemp(prefix="edgeflow-variants-"))  # the variants' files, made once


def tiny_vitals() -> Path:
    """A smaller model with the vitals model's interface: window[1, 6, 250] -> risk[1, 4]."""
    path = FOLDER / "vitals_tiny.onnx"
    if path.exists():
        return path
    b = Builder(seed=21)
    w = b.weight("conv_w", b.rng.normal(0, 0.3, (8, 6, 7)))
    x = b.node("Relu", [b.node("Conv", ["window", w], "conv", kernel_shape=[7], strides=[4],
                               pads=[3, 3])], "relu")
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x], "gap")], "flatten", axis=1)
    fc = b.weight("fc_w", b.rng.normal(0, 0.3, (8, 4)))
    x = b.node("Gemm", [x, fc, b.weight("fc_b", np.zeros(4))], "gemm")
    out = b.node("Softmax", [x], "softmax", axis=1)
    for node in b.nodes:
        node.output[:] = ["risk" if o == out else o for o in node.output]
    model = b.model("vitals_tiny", [helper.make_tensor_value_info(
        "window", TensorProto.FLOAT, [1, 6, 250])], [helper.make_tensor_value_info(
            "risk", TensorProto.FLOAT, [1, 4])], "a smaller vitals model")
    FOLDER.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def int8_vitals() -> tuple[Path, float]:
    """The vitals model quantized to int8, and its fidelity on held-out frames."""
    path = FOLDER / "vitals_int8.onnx"
    inputs = {"window": ("float32", (1, 6, 250))}
    frames = q.synthetic_frames(inputs, 10, seed=4)
    model = onnx.load(str(VITALS))
    if not path.exists():
        FOLDER.mkdir(parents=True, exist_ok=True)
        path.write_bytes(q.quantize(model, frames[:8]))
    report = q.measure(model.SerializeToString(), path.read_bytes(), frames[8:], frames[0],
                       8, runs=1)
    assert report.fidelity is not None
    return path, report.fidelity


def with_variants(program: ir.Program, model: str, variants: list[ir.ModelVariant],
                  floor: float | None = None) -> ir.Program:
    models = dict(program.models)
    models[model] = models[model].model_copy(update={"variants": tuple(variants),
                                                     "min_fidelity": floor})
    return program.model_copy(update={"models": models})


def with_int8_rate(program: ir.Program, ops: float) -> ir.Program:
    devices = {n: d.model_copy(update={"compute_int8_ops": ops * d.compute_flops})
               for n, d in program.devices.items()}
    return program.model_copy(update={"devices": devices})


def brute_force(problem, only_the_model: bool = False):  # type: ignore[no-untyped-def]
    """The lexicographic optimum over every (variant, cut, head, tail) of every unit."""
    units = [s for s, i in problem.steps.items() if i.is_unit]
    pinned = {s: i.candidates[0] for s, i in problem.steps.items() if not i.is_unit}
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
    order = problem.program.app.objective
    feasible = []
    for combo in itertools.product(*options):
        ev = evaluate(problem, {**pinned, **dict(zip(units, combo, strict=True))})
        if ev.feasible:
            feasible.append(ev.terms(order))
    if not feasible:
        return None
    for stage in range(len(order)):
        best = min(t[stage] for t in feasible)
        feasible = [t for t in feasible if t[stage] <= best + max(abs(best) * 1e-6, 1e-9)]
    return feasible[0]


@st.composite
def app_with_variants(draw: st.DrawFn) -> tuple[str, list[ir.ModelVariant], float | None,
                                                float]:
    text = draw(random_app())
    if "model net" not in text:
        text = text.replace("pipeline p { flow = cam -> ", "pipeline p { flow = cam -> net -> ")
        text = text.replace("store out", f'model net {{ source = "{VITALS}", inputs = {{ '
                            'window = float32[1, 6, 250] }, split = auto }\nstore out')
    int8, fidelity = int8_vitals()
    chosen = draw(st.sets(st.sampled_from(["tiny", "int8"]), min_size=1))
    variants = [ir.ModelVariant(name="tiny", source=str(tiny_vitals()), fidelity=0.9)] * (
        "tiny" in chosen) + [ir.ModelVariant(name="int8", source=str(int8), int8=True,
                                             fidelity=fidelity)] * ("int8" in chosen)
    floor = draw(st.sampled_from([None, 0.85, 0.95, 0.999]))
    return text, variants, floor, draw(st.sampled_from([1.0, 4.0]))


@given(app_with_variants())
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_choice_equals_brute_force_and_never_loses_to_the_model_alone(case) -> None:  # type: ignore[no-untyped-def]
    text, variants, floor, int8_speed = case
    checked = check_text(text, str(ROOT / "examples" / "random.ef"))
    assert checked.program is not None, checked.diagnostics
    program = with_int8_rate(with_variants(checked.program, "net", variants, floor), int8_speed)
    problem = build_problem(build_execution(program))
    expected = brute_force(problem)
    alone = brute_force(problem, only_the_model=True)
    solution = solve(problem, time_limit=60)
    if expected is None:
        assert solution.status == "infeasible" and alone is None
        return
    assert solution.status == "optimal"
    ev = evaluate(problem, solution.assignment)
    assert ev.feasible, ev.violations
    got = ev.terms(program.app.objective)
    for a, b in zip(got, expected, strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-9)
    if alone is not None:  # lexicographically never worse than the model alone
        assert tuple(got) <= tuple(x + max(abs(x) * 1e-5, 1e-9) for x in alone)
    planned = api.plan(program).plan
    assert planned is not None and planned.feasible
    assert verify(planned, program) == []
    for unit in planned.units:  # a variant that runs meets the floor
        if unit.variant is not None:
            declared = {v.name: v for v in variants}[unit.variant]
            assert floor is None or (declared.fidelity or 0) >= floor


EDGE_ONLY = f"""
app ward {{ objective = minimize(latency) }}
device monitor {{ tier = edge, compute = 0.002 GFLOPS, memory = 1 GiB }}
device server  {{ tier = cloud, compute = 10 TFLOPS, memory = 64 GiB }}
link monitor <-> server {{ bandwidth = 10 Mbps, latency = 5 ms }}
sensor ecg {{ on = monitor, rate = 1 Hz, emits = float32[1, 6, 250], privacy = [health] }}
model net {{ source = "{VITALS}", inputs = {{ window = float32[1, 6, 250] }}, split = none }}
actuator alarm {{ on = monitor }}
pipeline p {{ flow = ecg -> net -> alarm, slo = latency < 400 ms }}
privacy health {{ allow = [edge] }}
"""


def test_int8_on_the_edge_when_float32_cannot_meet_the_slo() -> None:
    checked = check_text(EDGE_ONLY, str(ROOT / "examples" / "ward.ef"))
    assert checked.program is not None, checked.diagnostics
    base = checked.program
    alone = api.plan(base).plan
    assert alone is not None and alone.status.value == "infeasible"  # float32 is too slow
    int8, _ = int8_vitals()
    fidelity = 0.97  # as if measured: placement reads the figure, test_quantize measures it
    variant = ir.ModelVariant(name="int8", source=str(int8), int8=True, fidelity=fidelity)
    program = with_int8_rate(with_variants(base, "net", [variant], fidelity - 0.01), 4.0)
    planned = api.plan(program).plan
    assert planned is not None and planned.feasible
    (unit,) = [u for u in planned.units if u.step == "net"]
    assert unit.variant == "int8" and unit.device == "monitor"
    assert planned.to_dict()["placements"][0]["variant"] == "int8"
    assert verify(planned, program) == []
    # a floor above int8's fidelity leaves only float32, which cannot meet the SLO
    strict = with_variants(program, "net", [variant], fidelity + 0.01)
    refused = api.plan(strict)
    assert refused.plan is not None and refused.plan.status.value == "infeasible"
    # ... and the explanation names the floor, on the model's declaration
    first = refused.plan.explanation[0]
    assert first.message == ("the fidelity floor of `net` (min_fidelity = 0.98) excludes "
                             "`int8` (fidelity 0.97); without the floor a plan exists")
    assert first.spans == (program.models["net"].span,)
    assert [d.code for d in refused.diagnostics][0] == "E0901"
    # `plan --compare` shows what the plan gains over the model alone
    compared = api.plan(program, compare=True)
    (alone,) = [b for b in compared.baselines if b.name == "without variants"]
    assert not alone.feasible and alone.objective is None


def test_the_verifier_rejects_a_variant_below_the_floor() -> None:
    checked = check_text(EDGE_ONLY, str(ROOT / "examples" / "ward.ef"))
    assert checked.program is not None
    int8, _ = int8_vitals()
    variant = ir.ModelVariant(name="int8", source=str(int8), int8=True, fidelity=0.97)
    program = with_int8_rate(with_variants(checked.program, "net", [variant]), 4.0)
    planned = api.plan(program).plan
    assert planned is not None and planned.feasible and verify(planned, program) == []
    assert [u.variant for u in planned.units] == ["int8"]
    stricter = with_variants(program, "net", [variant], 0.98)
    assert any("fidelity floor" in p for p in verify(planned, stricter))
