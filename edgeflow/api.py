"""The public API that the CLI, the language server and the tests all call."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

from edgeflow import files, ir
from edgeflow.diagnostics import Diagnostic, SourceCache, has_errors
from edgeflow.execution import ExecutionGraph, build_execution
from edgeflow.models import split as split_mod
from edgeflow.models.extract import split_model
from edgeflow.models.signature import BoundInputs
from edgeflow.models.split import Setting, SplitError
from edgeflow.plan import Plan
from edgeflow.semantics.lower import lower
from edgeflow.span import Span, file_span
from edgeflow.syntax import ast
from edgeflow.syntax.fmt import format_module
from edgeflow.syntax.parser import parse

if TYPE_CHECKING:  # placement imports the MILP solver: only where a plan is made
    from edgeflow.models.quantize import Report as QuantReport
    from edgeflow.placement import Baseline


@dataclass
class CheckResult:
    file: str
    text: str
    diagnostics: list[Diagnostic]
    module: ast.Module | None = None
    program: ir.Program | None = None
    sources: SourceCache = field(default_factory=SourceCache)

    @property
    def ok(self) -> bool:
        return not has_errors(self.diagnostics)


class CheckFailed(Exception):
    """Raised by `load` when a file has errors; carries the result with its diagnostics."""

    def __init__(self, result: CheckResult) -> None:
        super().__init__(f"{result.file}: {len(result.diagnostics)} diagnostics")
        self.result = result


def check_text(text: str, file: str = "<input>") -> CheckResult:
    """Parse and check source text. `file` names it in spans and anchors relative model paths."""
    module, diagnostics = parse(text, file)
    if diagnostics:  # the other checks would only echo what the broken declarations hide
        result = CheckResult(file, text, diagnostics, module, None)
    else:
        program, _, semantic = lower(module)
        result = CheckResult(file, text, semantic, module, program)
    result.sources.add(file, text)
    return result


def _read_error(file: str, code: str, message: str, label: str, text: str = "",
                offset: int = 0) -> CheckResult:
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    span = Span(file, offset, offset + 1, line, col, line, col + 1)
    result = CheckResult(file, text, [Diagnostic(code, message, span, label)])
    if text:
        result.sources.add(file, text)
    return result


def read_source(path: str | Path) -> CheckResult | str:
    """The text of a .ef file, or a CheckResult holding why it cannot be read (E0004/E0005)."""
    file = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return _read_error(file, "E0005", f"cannot read `{file}`: {exc.strerror or exc}", "")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        shown = data[: exc.start].decode("utf-8", errors="replace")
        return _read_error(file, "E0004", f"`{file}` is not valid UTF-8",
                           f"byte 0x{data[exc.start]:02x} at offset {exc.start} is not UTF-8",
                           shown + data[exc.start:].decode("utf-8", errors="replace"),
                           len(shown))


def check_file(path: str | Path) -> CheckResult:
    text = read_source(path)
    return text if isinstance(text, CheckResult) else check_text(text, str(path))


def format_file(path: str | Path) -> tuple[str | None, CheckResult | None]:
    """(the canonical text, None), or (None, a result with the syntax diagnostics)."""
    text = read_source(path)
    if isinstance(text, CheckResult):
        return None, text
    return format_text(text, str(path))


def format_text(text: str, file: str = "<input>") -> tuple[str | None, CheckResult | None]:
    """(the canonical text, None), or (None, a result with the syntax diagnostics): a text that
    does not parse is never reformatted."""
    module, diagnostics = parse(text, file)
    if diagnostics:
        result = CheckResult(file, text, diagnostics, module)
        result.sources.add(file, text)
        return None, result
    return format_module(text, module), None


def load(path: str | Path) -> ir.Program:
    """The IR of a file that checks without errors; raises `CheckFailed` otherwise."""
    result = check_file(path)
    if result.program is None:
        raise CheckFailed(result)
    return result.program


# ---- plan and compile


@dataclass
class PlanResult:
    """A plan, the baselines when compared, the execution graph it places, and the
    diagnostics: E0901 for each reason an infeasible app has no plan; no plan at all (None)
    for an app too large to place (E0902)."""

    plan: Plan | None
    baselines: list[Baseline]
    diagnostics: list[Diagnostic]
    execution: ExecutionGraph | None

    @property
    def ok(self) -> bool:
        return not has_errors(self.diagnostics)


def plan(program: ir.Program, time_limit: float = 30.0, compare: bool = False) -> PlanResult:
    """Place a checked program (exact MILP, `time_limit` seconds at most for the solver),
    after making and measuring its model variants (the plan's execution graph holds the
    program with them made)."""
    from edgeflow.adapt import adaptations
    from edgeflow.models.variants import materialise
    from edgeflow.placement import explanation_diagnostics, make_plan, size_diagnostics

    if too_large := size_diagnostics(program):
        return PlanResult(None, [], too_large, None)
    program, problems = materialise(program)
    if problems:
        return PlanResult(None, [], problems, None)
    execution = build_execution(program)
    placed, baselines = make_plan(execution, time_limit, compare)
    adapted, adapt_problems = adaptations(execution, placed)
    if adapted:
        placed = placed.model_copy(update={"adaptations": adapted})
    return PlanResult(placed, baselines,
                      explanation_diagnostics(placed, program) + adapt_problems, execution)


@dataclass
class ReportResult:
    """`edgeflow report`: the page (None when the app was too large to place) and the plan."""

    page: str | None
    plan: Plan | None
    diagnostics: list[Diagnostic]

    @property
    def ok(self) -> bool:
        return not has_errors(self.diagnostics)


def report(program: ir.Program, time_limit: float = 30.0, source: str = "") -> ReportResult:
    """report.html of a checked program: planned, with the baselines, whatever the plan's
    status (an infeasible app's page says why). `source` names the .ef file on the page."""
    from edgeflow.emit.report_html import render_html_report

    planned = plan(program, time_limit, compare=True)
    if planned.plan is None or planned.execution is None:
        return ReportResult(None, None, planned.diagnostics)
    page = render_html_report(planned.execution, planned.plan, planned.baselines,
                              source or program.file)
    return ReportResult(page, planned.plan, planned.diagnostics)


def bundle(program: ir.Program, placed: Plan, target: str = "k8s", source: str = "",
           execution: ExecutionGraph | None = None,
           options: Mapping[str, str] | None = None,
           baselines: Sequence[Baseline] = ()) -> dict[str, bytes]:
    """Every file of the deployment bundle of a feasible plan, by relative path, in memory.
    `target` is a name in `edgeflow.emit.targets.TARGETS`, `options` its options (unknown keys
    raise ValueError); `source` names the .ef file in the reports; `execution` is the graph the
    plan placed (built again when not given); `baselines` are compared in report.html."""
    from edgeflow.emit import bundle_files
    from edgeflow.emit.targets import TARGETS

    _known_target(target)
    unknown = sorted(set(options or {}) - set(TARGETS[target].options))
    if unknown:
        raise ValueError(f"target {target} has no option {', '.join(unknown)}; its options "
                         f"are: {', '.join(TARGETS[target].options) or 'none'}")
    return bundle_files(execution or build_execution(program), placed, target,
                        source or program.file, options, baselines)


def _known_target(target: str) -> None:
    from edgeflow.emit.targets import TARGETS

    if target not in TARGETS:
        raise ValueError(f"unknown target `{target}`; the targets are {', '.join(TARGETS)}")


@dataclass
class CompileResult:
    check: CheckResult
    plan: Plan | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    output: Path | None = None
    diagnostics: list[Diagnostic] = field(default_factory=list)  # after the check's
    warnings: list[str] = field(default_factory=list)  # about what was written

    @property
    def ok(self) -> bool:
        return self.check.ok and not has_errors(self.diagnostics)


def compile(path: str | Path, target: str = "k8s", output: str | Path | None = None,
            force: bool = False, time_limit: float = 30.0,
            options: Mapping[str, str] | None = None) -> CompileResult:
    """Check, plan and write the bundle to `output` (default build/APP) atomically; on any
    error nothing is written. A folder holding files edgeflow did not write is refused unless
    `force` (then they are kept). An unknown `target` or option raises ValueError (the CLI
    checks both); `options` are the target's (`--target-option`)."""
    from edgeflow.emit import BundleError, write_bundle
    from edgeflow.emit.bundle import NameClash, span_of
    from edgeflow.emit.targets import TARGETS, TargetError

    _known_target(target)
    checked = check_file(path)
    result = CompileResult(checked)
    if checked.program is None:
        return result
    planned = plan(checked.program, time_limit, compare=True)  # report.html compares
    result.plan = planned.plan
    result.diagnostics += planned.diagnostics
    if planned.plan is None or not planned.ok:
        return result
    result.output = out = Path(output) if output is not None else \
        Path("build") / checked.program.app.name
    try:
        result.files = bundle(checked.program, planned.plan, target, str(path),
                              planned.execution, options, planned.baselines)
    except NameClash as clash:
        result.diagnostics.append(Diagnostic("E1003", str(clash), clash.span, "declared here",
                                             help="rename one of the two declarations"))
        return result
    except TargetError as refused:
        program = checked.program
        result.diagnostics.append(Diagnostic(
            "E1004", f"target {target} cannot carry this deployment: {refused}",
            span_of(program, refused.subject) or program.app.span, "this one",
            help=refused.help))
        return result
    result.warnings += TARGETS[target].warnings(options or {})
    try:
        if (warning := write_bundle(out, result.files, force)) is not None:
            result.warnings.append(warning)
    except BundleError as exc:
        result.diagnostics.append(exc.diagnostic)
    return result


# ---- split and profile


def _diagnostic(exc: SplitError, model: Path) -> Diagnostic:
    return Diagnostic(exc.code, exc.message, file_span(exc.file or str(model)), help=exc.help)


@dataclass
class SplitResult:
    """`data` is the split JSON of docs/split.md and `cut` the tensors of the cut chosen (the
    forced one, else the optimum), both None when there are errors; `emitted` are the files
    written; `setting` is the one timed (with the profiles read)."""

    setting: Setting
    diagnostics: list[Diagnostic]
    data: dict[str, object] | None = None
    cut: list[str] | None = None
    emitted: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not has_errors(self.diagnostics)

    def render_text(self) -> str:
        """The table of cut candidates (`edgeflow split` without `--format json`)."""
        return "" if self.data is None else split_mod.render_text(self.data, self.setting)


def split(model_path: str | Path, inputs: BoundInputs, setting: Setting,
          cut: Sequence[str] | None = None, sweep: tuple[float, float] | None = None,
          emit: Path | None = None, force: bool = False, *, edge_profile: Path | None = None,
          cloud_profile: Path | None = None) -> SplitResult:
    """Time a model's cut candidates between the devices of `setting`, choose the optimum (or
    the forced `cut`), optionally with the optimal cut per bandwidth in `sweep` (bits/s, low and
    high), and write `emit/head.onnx` and `emit/tail.onnx` for it. Profiles written by `profile`
    replace the FLOP estimates on their device. User errors come back as diagnostics."""
    model = Path(model_path)
    try:
        if edge_profile is not None:
            setting = replace(setting, edge_profile=split_mod.read_profile(edge_profile))
        if cloud_profile is not None:
            setting = replace(setting, cloud_profile=split_mod.read_profile(cloud_profile))
        analysis = split_mod.analyse_model(split_mod.load_model(model), inputs)
        data, chosen = split_mod.report(analysis, model.name, inputs, setting,
                                        None if cut is None else list(cut), sweep)
    except SplitError as exc:
        return SplitResult(setting, [_diagnostic(exc, model)])
    outputs = {}
    if emit is not None:
        head, tail = split_model(analysis, chosen)
        outputs = {emit / "head.onnx": head.SerializeToString(deterministic=True),
                   emit / "tail.onnx": tail.SerializeToString(deterministic=True)}
    problems = files.write_all(outputs, force)
    if problems:
        return SplitResult(setting, problems)
    warnings = [Diagnostic("W0609", f"no work formula for {op} ({count} node"
                           f"{'s' if count != 1 else ''}): counted as one FLOP per output element",
                           file_span(str(model)),
                           help="measure it: `edgeflow profile`, then `split --edge-profile`")
                for op, count in sorted(analysis.no_formula.items())]
    return SplitResult(setting, warnings, data, list(chosen.tensors), list(outputs))


@dataclass
class QuantizeResult:
    """`edgeflow quantize`: the report (None on errors) and where the model was written."""

    output: Path
    diagnostics: list[Diagnostic]
    report: QuantReport | None = None

    @property
    def ok(self) -> bool:
        return not has_errors(self.diagnostics)

    def to_json(self) -> dict[str, object] | None:
        return None if self.report is None else {**self.report.to_json(),
                                                 "output": str(self.output)}


def quantize(model_path: str | Path, inputs: BoundInputs, output: Path,
             calibration: Path | None = None, synthetic: int | None = None,
             validation: Path | None = None, runs: int = 20,
             force: bool = False) -> QuantizeResult:
    """Quantize a model to int8 (docs/split.md, "Quantized models") on the frames in
    `calibration`, or on `synthetic` generated ones, write it to `output`, and measure it
    against the model: fidelity on `validation` (else frames held out), size, speed-up."""
    from edgeflow.models import quantize as q

    model_file = Path(model_path)
    try:
        model = split_mod.load_model(model_file)
        split_mod.analyse_model(model, inputs)  # the bindings, checked as `split` checks them
        given = q.read_frames(validation, inputs, "validation") if validation else None
        frames = q.read_frames(calibration, inputs, "calibration") if calibration else \
            q.synthetic_frames(inputs, synthetic or 0)
    except SplitError as exc:
        return QuantizeResult(output, [_diagnostic(exc, model_file)])
    except q.QuantizeError as exc:
        return QuantizeResult(output, [Diagnostic(exc.code, exc.message, file_span(exc.file),
                                                  help=exc.help)])
    check: list[q.Frame]
    if calibration is None and given is None:
        calibrate, check = frames, []
    else:
        calibrate, check = q.split_frames(frames, given)
    data = q.quantize(model, calibrate)
    report = q.measure(model.SerializeToString(deterministic=True), data, check, frames[0],
                       len(calibrate), runs)
    problems = files.write_all({output: data}, force)
    if problems:
        return QuantizeResult(output, problems)
    warnings = []
    if report.fidelity is None:
        why = "it was calibrated on synthetic frames" if calibration is None else \
            f"fewer than {q.HOLD_OUT_EVERY} calibration frames leave none to hold out"
        warnings.append(Diagnostic(
            "W0612", f"no fidelity claimed for `{output.name}`: {why}, and no validation "
                     "frames were given; its speed and size are real, its accuracy unknown",
            file_span(str(output)), help="give --validation DIR with frames kept apart from "
                                         "the calibration frames"))
    return QuantizeResult(output, warnings, report)


class RuntimeMissing(Exception):
    """`profile` needs onnxruntime, an optional dependency that is not installed."""


@dataclass
class ProfileResult:
    """`data` is the profile written to `output` (None when there are errors)."""

    output: Path
    diagnostics: list[Diagnostic]
    data: dict[str, object] | None = None

    @property
    def ok(self) -> bool:
        return not has_errors(self.diagnostics)

    def to_json(self) -> dict[str, object] | None:
        """The profile and the path it was written to (the `result` of `--format json`)."""
        return None if self.data is None else {**self.data, "output": str(self.output)}


def profile(model_path: str | Path, inputs: BoundInputs, output: Path, runs: int = 20,
            warmup: int = 3, force: bool = False) -> ProfileResult:
    """Measure the model's per-node latency with onnxruntime on this machine (the median of
    `runs` runs after `warmup` runs) and write the profile to `output`. User errors come back as
    diagnostics; raises `RuntimeMissing` without onnxruntime."""
    if find_spec("onnxruntime") is None:
        raise RuntimeMissing("edgeflow profile needs onnxruntime: pip install 'edgeflow[runtime]'")
    from edgeflow.models.profile import profile as measure

    model_file = Path(model_path)
    try:
        model = split_mod.load_model(model_file)
        split_mod.analyse_model(model, inputs)  # the binding checks of split
    except SplitError as exc:
        return ProfileResult(output, [_diagnostic(exc, model_file)])
    data = {"model": model_file.name, **measure(model, inputs, runs=runs, warmup=warmup)}
    problems = files.write_all({output: (json.dumps(data, indent=2) + "\n").encode()}, force)
    return ProfileResult(output, problems, None if problems else data)


# ---- init and models inspect


class UnknownExample(ValueError):
    """`init` was asked for an example that does not exist; `names` are those that do."""

    def __init__(self, example: str, names: list[str]) -> None:
        super().__init__(f"unknown example `{example}`; the examples are: {', '.join(names)}")
        self.names = names


@dataclass
class InitResult:
    """The files written (none when there are errors) and the diagnostics (E1001, E1002)."""

    folder: Path
    example: str | None
    diagnostics: list[Diagnostic]
    files: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not has_errors(self.diagnostics)

    def to_json(self) -> dict[str, object] | None:
        """The `result` of `edgeflow init --format json`."""
        return None if not self.files else {"folder": str(self.folder), "example": self.example,
                                            "files": [str(f) for f in self.files]}


def example_names() -> list[str]:
    """The examples `init` can start from."""
    from edgeflow.scaffold import example_names as names

    return names()


def init(folder: str | Path, example: str | None = None, force: bool = False) -> InitResult:
    """Scaffold an app in `folder`: `app.ef` (a starter app, or the example named, reading its
    models from `folder/models/`), the ONNX models it uses and a README. An existing file is
    never replaced (E1002) unless `force`; all files are written or none. Raises
    `UnknownExample` for an example that does not exist."""
    from edgeflow import scaffold

    if example is not None and example not in (names := example_names()):
        raise UnknownExample(example, names)
    outputs = scaffold.app_files(Path(folder), example)
    problems = [] if force else [files.refusal(p, "init does not replace it") for p in outputs
                                 if p.exists()]
    problems = problems or files.write_all(outputs, force=True)
    return InitResult(Path(folder), example, problems, [] if problems else list(outputs))


@dataclass
class InspectResult:
    """`data` is the inspection of docs/cli.md (None when the model cannot be read); its
    `analysis` is None unless every input is bound."""

    diagnostics: list[Diagnostic]
    data: dict[str, object] | None = None

    @property
    def ok(self) -> bool:
        return not has_errors(self.diagnostics)

    def render_text(self) -> str:
        from edgeflow.models.inspect import render_text

        return "" if self.data is None else render_text(self.data)


def inspect_model(model_path: str | Path, inputs: BoundInputs | None = None) -> InspectResult:
    """A model's inputs (dynamic dimensions named), outputs, operator sets and node count, and
    its work, weights and output types when every input is static or bound by `inputs`. User
    errors (no file, not ONNX, a wrong binding) come back as the diagnostics `split` gives."""
    from edgeflow.models.inspect import report

    model = Path(model_path)
    try:
        data, problem = report(split_mod.load_model(model), str(model), inputs or {})
    except SplitError as exc:
        return InspectResult([_diagnostic(exc, model)])
    return InspectResult([] if problem is None else [_diagnostic(problem, model)], data)
