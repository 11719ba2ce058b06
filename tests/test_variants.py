"""Model variants in placement: per model replica, the variant is chosen together with its cut
and devices, under the model's fidelity floor. The solver's choice equals brute force over
(variant, cut, placement) and is never worse than the model alone; every plan passes the
independent verifier, which also rejects a variant below the floor."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from edgeflow import api, ir
from edgeflow.api import check_text
from edgeflow.execution import build_execution
from edgeflow.models import quantize as q
from edgeflow.models.samples import Builder
from edgeflow.placement.evaluate import evaluate
from edgeflow.placement.milp import solve
from edgeflow.placement.problem import build_problem
from edgeflow.verify import verify
from tests.test_placement import all_options, brute_force, random_app

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


MAX_ASSIGNMENTS = 3_000  # of a brute force: more is skipped (a second each on 2 cores)


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
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.filter_too_much])
def test_the_choice_equals_brute_force_and_never_loses_to_the_model_alone(case) -> None:  # type: ignore[no-untyped-def]
    text, variants, floor, int8_speed = case
    checked = check_text(text, str(ROOT / "examples" / "random.ef"))
    assert checked.program is not None, checked.diagnostics
    program = with_int8_rate(with_variants(checked.program, "net", variants, floor), int8_speed)
    problem = build_problem(build_execution(program))
    units = [s for s, i in problem.steps.items() if i.is_unit]
    assume(math.prod(len(o) for o in all_options(problem, units)) <= MAX_ASSIGNMENTS)
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
    assert next(d.code for d in refused.diagnostics) == "E0901"
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


WARD_APP = """
app ward { objective = minimize(latency) }
device monitor { tier = edge, compute = 0.002 GFLOPS, compute_int8 = 0.008 GOPS, memory = 1 GiB }
sensor ecg { on = monitor, rate = 1 Hz, emits = float32[1, 6, 250], privacy = [health] }
model net {
  source       = "models/vitals.onnx"
  inputs       = { window = float32[1, 6, 250] }
  split        = none
  variants     = { int8 = quantize(calibration = "data/calib") }
  min_fidelity = FLOOR
}
actuator alarm { on = monitor }
pipeline p { flow = ecg -> net -> alarm, slo = latency < 400 ms }
privacy health { allow = [edge] }
"""


def ward(folder: Path, floor: str = "0.5") -> Path:
    """The ward app with its model and ten calibration frames in `folder`."""
    (folder / "models").mkdir(parents=True, exist_ok=True)
    (folder / "models" / "vitals.onnx").write_bytes(VITALS.read_bytes())
    calib = folder / "data" / "calib"
    calib.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    for k in range(10):
        np.save(calib / f"f{k:02d}.npy", rng.random((1, 6, 250)).astype(np.float32))
    app = folder / "app.ef"
    app.write_text(WARD_APP.replace("FLOOR", floor))
    return app


def test_a_quantize_variant_is_made_measured_placed_and_shipped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLOW_CACHE_DIR", str(tmp_path / "cache"))
    app = ward(tmp_path / "app")
    checked = api.check_file(app)
    assert checked.program is not None, checked.diagnostics
    (variant,) = checked.program.models["net"].variants
    assert variant.quantize is not None and variant.source == "" and variant.int8
    planned = api.plan(checked.program)
    assert planned.plan is not None and planned.plan.feasible, planned.diagnostics
    (unit,) = [u for u in planned.plan.units if u.step == "net"]
    assert unit.variant == "int8"  # float32 cannot meet the SLO on the monitor
    (use,) = planned.plan.variants
    assert use.fidelity is not None and 0.5 <= use.fidelity <= 1 and use.replicas == (0,)
    assert use.eligible and planned.plan.to_dict()["variants"][0]["variant"] == "int8"
    assert verify(planned.plan, planned.execution.program) == []  # type: ignore[union-attr]
    # made once, kept in the cache folder by content
    kept = sorted((tmp_path / "cache" / "variants").glob("*.onnx"))
    assert len(kept) == 1 and onnx.load(str(kept[0])).producer_name == "edgeflow"
    # the bundle ships the variant and the unit runs it; the same input, the same bundle
    first = api.compile(app, "compose", tmp_path / "b1")
    second = api.compile(app, "compose", tmp_path / "b2")
    assert first.ok and second.ok and first.files == second.files
    path = "models/net/variant-int8/model.onnx"
    assert first.files[path] == kept[0].read_bytes()
    manifest = json.loads(first.files["models/manifest.json"])
    (row,) = manifest["models"]
    assert row["variant"] == "int8" and row["path"] == path
    config = json.loads(first.files["compose/monitor/net-r0.json"])
    assert config["model"]["file"].endswith("/net/variant-int8/model.onnx")
    assert "| `net` | `int8` |" in first.files["report.md"].decode()


def test_without_the_cache_nothing_is_kept(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLOW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EDGEFLOW_NO_CACHE", "1")
    checked = api.check_file(ward(tmp_path / "app"))
    assert checked.program is not None
    planned = api.plan(checked.program)
    assert planned.plan is not None and planned.plan.feasible
    assert not (tmp_path / "cache").exists()


CAMERA_APP = """
app line { objective = minimize(latency) }
device cam { tier = edge, compute = 0.01 GFLOPS, compute_int8 = 0.1 GOPS, memory = 1 GiB }
sensor camera { on = cam, rate = 0.5 Hz, emits = float32[1, 3, 64, 64], privacy = [pii] }
model detector {
  source       = "models/detector.onnx"
  inputs       = { images = float32[1, 3, 64, 64] }
  split        = none
  variants     = { int8 = quantize(calibration = "data/calib") }
  min_fidelity = FLOOR
}
store hits { on = cam }
pipeline p { flow = camera -> detector -> hits, slo = latency < 500 ms }
privacy pii { allow = [edge] }
"""


def test_a_floor_above_the_measured_fidelity_is_named_when_it_binds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The detector's output is no class score: its fidelity is 1 - relative L2 error, below 1
    for an int8 model. float32 misses the SLO on the camera, int8 meets it."""
    monkeypatch.setenv("EDGEFLOW_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "app"
    (folder / "models").mkdir(parents=True)
    (folder / "models" / "detector.onnx").write_bytes(
        (ROOT / "examples" / "models" / "detector.onnx").read_bytes())
    frames = folder / "data" / "calib"
    frames.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for k in range(10):
        np.save(frames / f"f{k:02d}.npy", rng.random((1, 3, 64, 64)).astype(np.float32))
    app = folder / "app.ef"
    app.write_text(CAMERA_APP.replace("FLOOR", "0.5"))
    checked = api.check_file(app)
    assert checked.program is not None, checked.diagnostics
    planned = api.plan(checked.program)
    assert planned.plan is not None and planned.plan.feasible
    (use,) = planned.plan.variants
    assert use.replicas == (0,) and use.fidelity is not None and 0.5 < use.fidelity < 1
    app.write_text(CAMERA_APP.replace("FLOOR", f"{use.fidelity + 0.001:.4f}"))
    strict = api.check_file(app)
    assert strict.program is not None
    refused = api.plan(strict.program)
    assert refused.plan is not None and not refused.plan.feasible
    assert refused.plan.explanation[0].message == (
        f"the fidelity floor of `detector` (min_fidelity = {use.fidelity + 0.001:.4f}) "
        f"excludes `int8` (fidelity {use.fidelity:.4g}); without the floor a plan exists")


@pytest.mark.parametrize(("text", "code"), [
    ("min_fidelity = 1.5", "E0303"), ("min_fidelity = 0", "E0303"),
    ("min_fidelity = 98 ms", "E0302"),
    ('variants = { int8 = quantize("data/calib") }', "E0305"),
    ('variants = { int8 = quantize(frames = "data/calib") }', "E0305"),
    ("variants = { int8 = quantize(synthetic = 4, calibration = \"data/calib\") }", "E0305"),
    ('variants = { int8 = quantize(calibration = "nowhere") }', "E0610"),
    ('variants = { tiny = "models/missing.onnx" }', "E0601"),
    ("variants = [int8]", "E0204"),
])
def test_variant_keys_are_checked(tmp_path: Path, text: str, code: str) -> None:
    app = ward(tmp_path / "app")
    source = app.read_text().replace("  min_fidelity = FLOOR\n", "").replace(
        '  variants     = { int8 = quantize(calibration = "data/calib") }\n', f"  {text}\n")
    source = source.replace("  min_fidelity = 0.5\n", "")
    app.write_text(source)
    result = api.check_file(app)
    assert code in [d.code for d in result.diagnostics], (text, result.diagnostics)
    assert result.program is None


def test_the_formatter_keeps_named_arguments() -> None:
    text = ('app a { objective = minimize(latency) }\nmodel m { source = "x.onnx", variants = '
            '{ int8 = quantize(calibration="c", validation = "v"), tiny = "t.onnx" } }\n')
    formatted, _ = api.format_text(text)
    assert formatted is not None
    assert 'quantize(calibration = "c", validation = "v")' in formatted
    assert api.format_text(formatted)[0] == formatted


def test_review_cases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a review of the variants found, each now handled: a quantized file variant runs at
    the int8 rate; a variant whose inputs do not fit is E0613; NaN frames are E0611 on the
    variant; an opset-12 model quantizes (per tensor) to a model onnxruntime loads; int8
    weights count as int8; a tampered plan gets messages from the verifier, not exceptions;
    a sweep that changes the variant says so."""
    from edgeflow import whatif
    from edgeflow.models.analysis import weight_bytes_of
    from edgeflow.models.split import analyse_model, load_model

    monkeypatch.setenv("EDGEFLOW_CACHE_DIR", str(tmp_path / "cache"))
    app = ward(tmp_path / "app")
    folder = app.parent
    frames = q.read_frames(folder / "data" / "calib", {"window": ("float32", (1, 6, 250))},
                           "calibration")
    (folder / "models" / "int8.onnx").write_bytes(q.quantize(onnx.load(str(VITALS)), frames))
    app.write_text(app.read_text().replace(
        'quantize(calibration = "data/calib")', '"models/int8.onnx"').replace(
        "min_fidelity = 0.5", "min_fidelity = 0.5\n  validation = \"data/calib\""))
    checked = api.check_file(app)
    assert checked.program is not None, checked.diagnostics
    (variant,) = checked.program.models["net"].variants
    assert variant.int8  # a quantized file is timed at the int8 rate
    planned = api.plan(checked.program)
    assert planned.plan is not None and planned.plan.feasible
    assert [u.variant for u in planned.plan.units] == ["int8"]
    # int8 weights count as int8: a quarter of the float model's, about
    quantized = analyse_model(load_model(folder / "models" / "int8.onnx"),
                              {"window": ("float32", (1, 6, 250))})
    base = analyse_model(load_model(VITALS), {"window": ("float32", (1, 6, 250))})
    assert weight_bytes_of(quantized, quantized.dynamic_nodes()) < \
        0.4 * weight_bytes_of(base, base.dynamic_nodes())
    # a tampered plan: messages, never an exception
    data = planned.plan.model_copy(update={"units": tuple(
        u.model_copy(update={"variant": "nope"}) for u in planned.plan.units)})
    assert any("unknown variant nope" in p for p in verify(data, planned.execution.program))  # type: ignore[union-attr]
    # inputs that do not fit the model's binding
    narrow = folder / "models" / "narrow.onnx"
    model = onnx.load(str(VITALS))
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 125
    onnx.save(model, narrow)
    app.write_text(app.read_text().replace('"models/int8.onnx"', '"models/narrow.onnx"'))
    assert "E0613" in [d.code for d in api.check_file(app).diagnostics]
    # NaN frames: located on the variant
    bad = folder / "data" / "nan"
    bad.mkdir()
    np.save(bad / "f.npy", np.full((1, 6, 250), np.nan, np.float32))
    app.write_text(WARD_APP.replace("FLOOR", "0.5").replace("data/calib", "data/nan"))
    checked = api.check_file(app)
    assert checked.program is not None
    refused = api.plan(checked.program)
    assert refused.plan is None and [d.code for d in refused.diagnostics] == ["E0611"]
    assert refused.diagnostics[0].span == checked.program.models["net"].variants[0].span
    # an opset-12 model: per-tensor scales, a model onnxruntime loads
    old = onnx.load(str(VITALS))
    old.opset_import[0].version = 12
    assert not q.per_channel(old)
    session(q.quantize(old, frames))  # loads
    # a sweep over the int8 rate names the change of variant
    app.write_text(WARD_APP.replace("FLOOR", "0.5").replace("latency < 400 ms", "latency < 2 s"))
    checked = api.check_file(app)
    assert checked.program is not None
    sweeps = [whatif.parse_sweep("device.monitor.compute_int8=0.0001GOPS..0.01GOPS:3:log",
                                 checked.program)]
    points = list(whatif.run(checked.program, app.read_text(), sweeps, 30.0))
    assert any("int8" in " ".join(whatif.changes(p)) for p in points if p.moved)


def session(data: bytes):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])
