"""The `edgeflow` command line: thin typer commands over `edgeflow.api`.

Data goes to stdout, diagnostics to stderr. Exit codes: 0 success (warnings allowed), 1 errors in
the input, 2 usage errors (bad option, missing file), 3 an internal error (a bug; `--debug` shows
the traceback).
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import onnx
import typer

from edgeflow import __version__, api
from edgeflow.dataflow import build, to_dot, to_mermaid
from edgeflow.diagnostics import explain as explain_code
from edgeflow.diagnostics import render_json, render_summary, render_text
from edgeflow.models import split as split_mod
from edgeflow.models.extract import split_model
from edgeflow.models.signature import ONNX_DTYPES
from edgeflow.syntax.units import (
    BANDWIDTH,
    COMPUTE,
    TIME,
    Dimension,
    parse_quantity,
    parse_tensor_type,
)

EXIT_OK, EXIT_ERRORS, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="edgeflow: a declarative language and compiler for edge-cloud AI apps.")
_state = {"debug": False}


class OutputFormat(str, Enum):
    text = "text"
    json = "json"


class GraphFormat(str, Enum):
    dot = "dot"
    mermaid = "mermaid"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgeflow {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool | None, typer.Option("--version", callback=_version,
                       is_eager=True, help="Print the version and exit.")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")]
    = False,
) -> None:
    _state["debug"] = debug


def _existing(paths: list[Path]) -> None:
    for path in paths:
        if not path.exists():
            typer.echo(f"error: no such file: {path}", err=True)
            raise typer.Exit(EXIT_USAGE)


def _checked(file: Path) -> api.CheckResult:
    """The result of a file that checks (its `program` is set), or exit 1 after printing its
    diagnostics."""
    _existing([file])
    result = api.check_file(file)
    if result.program is None:
        _report([result], OutputFormat.text)
        raise typer.Exit(EXIT_ERRORS)
    return result


def _report_infeasible(result: api.CheckResult, plan_data: dict[str, Any]) -> None:
    from edgeflow.placement import explanation_diagnostics

    assert result.program is not None
    diags = explanation_diagnostics(plan_data, result.program)
    _report([api.CheckResult(result.file, result.text, diags, sources=result.sources)],
            OutputFormat.text)


def _report(results: list[api.CheckResult], fmt: OutputFormat) -> None:
    if fmt is OutputFormat.json:
        sys.stdout.write(render_json([d for r in results for d in r.diagnostics]))
        return
    for result in results:
        for diag in result.diagnostics:
            sys.stderr.write(render_text(diag, result.sources) + "\n")
        sys.stderr.write(f"{result.file}: {render_summary(result.diagnostics)}\n")


@app.command()
def check(
    files: Annotated[list[Path], typer.Argument(help="The .ef files to check.")],
    fmt: Annotated[OutputFormat, typer.Option("--format", help="Diagnostics as text (stderr) "
                                              "or JSON (stdout).")] = OutputFormat.text,
    with_plan: Annotated[bool, typer.Option("--plan", help="Also solve the placement and report "
                                            "infeasibility (E0901).")] = False,
) -> None:
    """Check .ef files and report located diagnostics. Exits 1 if any file has errors."""
    _existing(files)
    results = [api.check_file(f) for f in files]
    if with_plan:
        from edgeflow.placement import explanation_diagnostics, make_plan

        for result in results:
            if result.program is not None:
                data, _ = make_plan(result.program)
                result.diagnostics += explanation_diagnostics(data, result.program)
    _report(results, fmt)
    raise typer.Exit(EXIT_OK if all(r.ok for r in results) else EXIT_ERRORS)


@app.command()
def explain(code: Annotated[str, typer.Argument(help="A diagnostic code, e.g. E0101.")]) -> None:
    """Print the long explanation of a diagnostic code."""
    text = explain_code(code)
    if text is None:
        typer.echo(f"error: unknown diagnostic code `{code}`", err=True)
        raise typer.Exit(EXIT_USAGE)
    typer.echo(text, nl=False)


@app.command()
def graph(
    file: Annotated[Path, typer.Argument(help="The .ef file.")],
    fmt: Annotated[GraphFormat, typer.Option("--format", help="Graphviz dot or Mermaid.")]
    = GraphFormat.dot,
) -> None:
    """Print the application's dataflow graph."""
    program = _checked(file).program
    assert program is not None
    df = build(program)
    sys.stdout.write(to_dot(df) if fmt is GraphFormat.dot else to_mermaid(df))


@app.command()
def plan(
    file: Annotated[Path, typer.Argument(help="The .ef file.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the plan JSON of "
                                           "LANGUAGE.md.")] = False,
    time_limit: Annotated[float, typer.Option(min=0.1, help="Seconds the solver may take; "
                                              "then the best plan found is returned.")] = 30.0,
    explain: Annotated[bool, typer.Option("--explain", help="Show each pipeline's latency "
                                          "breakdown, step by step.")] = False,
    compare: Annotated[bool, typer.Option("--compare", help="Show the baselines' objectives "
                                          "beside the solver's.")] = False,
) -> None:
    """Place every unit on a device (exact MILP) under SLO, capacity, bandwidth and privacy."""
    from edgeflow.placement import make_plan
    from edgeflow.placement.baselines import BASELINES
    from edgeflow.placement.evaluate import evaluate
    from edgeflow.placement.render import render, render_comparison

    result = _checked(file)
    program = result.program
    assert program is not None
    data, problem = make_plan(program, time_limit)
    sys.stdout.write(json.dumps(data, indent=2) + "\n" if json_out else render(data, explain))
    if data["status"] == "infeasible" and not json_out:
        _report_infeasible(result, data)
    if compare:
        rows: list[tuple[str, dict[str, float] | None, bool]] = []
        if data["objective"] is not None:
            o = data["objective"]
            rows.append(("edgeflow", {"latency": o["latency_ms"] / 1e3,
                                      "cost": o["cost_usd_per_h"], "energy": o["energy_w"]}, True))
        for name, baseline in BASELINES.items():
            assignment = baseline(problem)
            ev = evaluate(problem, assignment) if assignment is not None else None
            rows.append((name, ev.objective if ev else None, bool(ev and ev.feasible)))
        out = render_comparison(rows, program.app.objective)
        (sys.stderr if json_out else sys.stdout).write(out)
    raise typer.Exit(EXIT_ERRORS if data["status"] == "infeasible" else EXIT_OK)


@app.command()
def fmt(
    files: Annotated[list[Path], typer.Argument(help="The .ef files to format in place.")],
    check: Annotated[bool, typer.Option("--check", help="Change nothing; exit 1 if a file is "
                                        "not formatted.")] = False,
) -> None:
    """Format .ef files canonically (in place, atomically), keeping every comment."""
    _existing(files)
    unformatted, failed = [], False
    for path in files:
        formatted, problem = api.format_file(path)
        if formatted is None:
            assert problem is not None
            _report([problem], OutputFormat.text)
            failed = True
            continue
        if formatted == path.read_text(encoding="utf-8"):
            continue
        unformatted.append(path)
        if check:
            typer.echo(f"would reformat {path}", err=True)
        else:
            _write_atomic(path, formatted.encode(), force=True)
            typer.echo(f"reformatted {path}", err=True)
    if failed or (check and unformatted):
        raise typer.Exit(EXIT_ERRORS)


@app.command()
def lsp() -> None:
    """Run the edgeflow language server over stdio (for editors)."""
    from edgeflow.lsp.server import main as serve

    serve()


class Target(str, Enum):
    k8s = "k8s"
    compose = "compose"


@app.command("compile")
def compile_cmd(
    file: Annotated[Path, typer.Argument(help="The .ef file.")],
    target: Annotated[Target, typer.Option(help="Kubernetes/KubeEdge manifests or "
                                           "docker-compose files.")] = Target.k8s,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Output folder "
                                                "(default build/APP).")] = None,
    force: Annotated[bool, typer.Option(help="Write into a folder that holds files edgeflow "
                                       "did not generate (they are kept).")] = False,
    time_limit: Annotated[float, typer.Option(min=0.1, help="Seconds the placement solver "
                                              "may take.")] = 30.0,
) -> None:
    """Check, plan and emit a deployment bundle. On any error nothing is written."""
    from edgeflow.emit import BundleError, bundle_files, write_bundle
    from edgeflow.placement import make_plan

    result = _checked(file)
    program = result.program
    assert program is not None
    data, problem = make_plan(program, time_limit)
    if data["status"] == "infeasible":
        _report_infeasible(result, data)
        typer.echo("error: no placement meets the constraints; nothing was written", err=True)
        raise typer.Exit(EXIT_ERRORS)
    out = output or Path("build") / program.app.name
    try:
        files = bundle_files(program, data, problem, target.value, str(file))
        write_bundle(out, files, force)
    except BundleError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_ERRORS) from None
    typer.echo(f"wrote {len(files)} files to {out} ({data['status']} plan, target "
               f"{target.value})", err=True)


def _split_error(exc: split_mod.SplitError) -> typer.Exit:
    typer.echo(f"error[{exc.code}]: {exc.message}", err=True)
    if exc.help:
        typer.echo(f" = help: {exc.help}", err=True)
    return typer.Exit(EXIT_ERRORS)


def _usage(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_USAGE)


def _parse_inputs(specs: list[str]) -> dict[str, tuple[str, tuple[int, ...]]]:
    out = {}
    for spec in specs:
        name, sep, type_text = spec.partition("=")
        if not sep or not name:
            raise _usage(f"--input takes NAME=TYPE, e.g. images=float32[1,3,224,224]; got `{spec}`")
        try:
            out[name.strip()] = parse_tensor_type(type_text, ONNX_DTYPES.values())
        except ValueError as exc:
            raise _usage(f"--input {name}: {exc}") from None
    return out


def _quantity(option: str, text: str, dim: Dimension) -> float:
    try:
        return parse_quantity(text, dim)
    except ValueError as exc:
        raise _usage(f"{option}: {exc}") from None


def _write_atomic(path: Path, data: bytes, force: bool) -> None:
    """Write `path` via a temporary file and a rename; never replace a file edgeflow did not
    write unless forced."""
    if path.exists() and not force:
        try:
            ours = onnx.load(str(path)).producer_name == "edgeflow" if path.suffix == ".onnx" \
                else "node_seconds" in json.loads(path.read_text())  # a profile we wrote
        except Exception:  # noqa: BLE001 - anything unreadable is not ours
            ours = False
        if not ours:
            raise _usage(f"{path} exists and was not written by edgeflow; use --force")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.",
                                         delete=False) as f:
            f.write(data)
        if path.exists():  # keep the mode of the file it replaces
            os.chmod(f.name, stat.S_IMODE(path.stat().st_mode))
        else:  # as an ordinary open() would create it
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(f.name, 0o666 & ~umask)
        os.replace(f.name, path)
    except OSError as exc:
        raise _usage(f"cannot write {path}: {exc.strerror or exc}") from None


@app.command()
def split(
    model: Annotated[Path, typer.Argument(help="The ONNX model.")],
    inputs: Annotated[list[str], typer.Option("--input", help="Bind an input: NAME=TYPE, e.g. "
                                              "images=float32[1,3,320,320]. Repeat per input.")],
    edge_compute: Annotated[str, typer.Option(help="Edge device compute, e.g. 0.5TFLOPS.")],
    cloud_compute: Annotated[str, typer.Option(help="Cloud device compute, e.g. 100TFLOPS.")],
    bandwidth: Annotated[str, typer.Option(help="Link bandwidth, e.g. 20Mbps.")],
    latency: Annotated[str, typer.Option(help="Link one-way latency, e.g. 10ms.")] = "0ms",
    json_out: Annotated[bool, typer.Option("--json", help="Print the JSON of LANGUAGE.md.")]
    = False,
    emit: Annotated[Path | None, typer.Option(help="Write DIR/head.onnx and DIR/tail.onnx "
                                                 "(the optimum, or the --cut).")] = None,
    cut: Annotated[str | None, typer.Option(help="Force a cut: comma-separated tensor "
                                               "names.")] = None,
    sweep: Annotated[str | None, typer.Option(help="Optimal cut per bandwidth range, e.g. "
                                                 "bandwidth=1Mbps..1Gbps.")] = None,
    edge_profile: Annotated[Path | None, typer.Option(help="Measured per-node times on the "
                                                         "edge device (edgeflow profile).")]
    = None,
    cloud_profile: Annotated[Path | None, typer.Option(help="Measured per-node times on the "
                                                          "cloud device.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite files in --emit DIR that edgeflow did "
                                       "not write.")] = False,
) -> None:
    """Find where to cut a model between an edge and a cloud device (Neurosurgeon/DADS, exact)."""
    bound = _parse_inputs(inputs)
    setting = split_mod.Setting(_quantity("--edge-compute", edge_compute, COMPUTE),
                                _quantity("--cloud-compute", cloud_compute, COMPUTE),
                                _quantity("--bandwidth", bandwidth, BANDWIDTH),
                                0.0 if latency.strip() in ("0", "0ms") else
                                _quantity("--latency", latency, TIME))
    sweep_range = None
    if sweep is not None:
        key, _, span = sweep.partition("=")
        low, _, high = span.partition("..")
        if key != "bandwidth" or not low or not high:
            raise _usage("--sweep takes bandwidth=LOW..HIGH, e.g. bandwidth=1Mbps..1Gbps")
        sweep_range = (_quantity("--sweep", low, BANDWIDTH), _quantity("--sweep", high, BANDWIDTH))
        if sweep_range[0] >= sweep_range[1]:
            raise _usage("--sweep: the low bandwidth must be below the high one")
    try:
        if edge_profile is not None:
            setting.edge_profile = split_mod.read_profile(edge_profile)
        if cloud_profile is not None:
            setting.cloud_profile = split_mod.read_profile(cloud_profile)
        analysis = split_mod.analyse_model(split_mod.load_model(model), bound)
        forced = [t.strip() for t in cut.split(",") if t.strip()] if cut is not None else None
        data, chosen = split_mod.report(
            analysis, model.name, {n: f"{d}[{','.join(map(str, s))}]" for n, (d, s) in
                                   bound.items()}, setting, forced, sweep_range)
    except split_mod.SplitError as exc:
        raise _split_error(exc) from None
    if emit is not None:
        head, tail = split_model(analysis, chosen)
        _write_atomic(emit / "head.onnx", head.SerializeToString(deterministic=True), force)
        _write_atomic(emit / "tail.onnx", tail.SerializeToString(deterministic=True), force)
    if json_out:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        sys.stdout.write(split_mod.render_text(data, setting))
    if emit is not None:
        typer.echo(f"wrote {emit / 'head.onnx'} and {emit / 'tail.onnx'} (cut at "
                   f"{', '.join(chosen.tensors)})", err=True)


@app.command("profile")
def profile_cmd(
    model: Annotated[Path, typer.Argument(help="The ONNX model.")],
    inputs: Annotated[list[str], typer.Option("--input", help="Bind an input: NAME=TYPE.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the profile "
                                         "JSON.")],
    runs: Annotated[int, typer.Option(min=1, help="Measured runs (median per node).")] = 20,
    warmup: Annotated[int, typer.Option(min=0, help="Unmeasured warm-up runs.")] = 3,
    force: Annotated[bool, typer.Option(help="Overwrite an output file edgeflow did not "
                                       "write.")] = False,
) -> None:
    """Measure per-node latency of a model with onnxruntime on this machine."""
    bound = _parse_inputs(inputs)
    try:
        loaded = split_mod.load_model(model)
        split_mod.analyse_model(loaded, bound)  # same binding checks as split
    except split_mod.SplitError as exc:
        raise _split_error(exc) from None
    try:
        from edgeflow.models.profile import profile
    except ImportError:  # pragma: no cover - onnxruntime is an optional dependency
        raise _usage("edgeflow profile needs onnxruntime: pip install 'edgeflow[runtime]'") \
            from None
    data = {"model": model.name, **profile(loaded, bound, runs=runs, warmup=warmup)}
    _write_atomic(output, (json.dumps(data, indent=2) + "\n").encode(), force)
    typer.echo(f"wrote {output}: {len(data['node_seconds'])} nodes, "  # type: ignore[arg-type]
               f"{float(data['total_seconds']) * 1000:.3f} ms per run", err=True)  # type: ignore[arg-type]


def main() -> None:
    try:
        app(standalone_mode=True)
    except SystemExit:
        raise
    except BaseException as exc:  # a bug: never show a traceback unless asked to
        if _state["debug"] or "--debug" in sys.argv:
            raise
        sys.stderr.write(f"internal error: {type(exc).__name__}: {exc}\n"
                         "this is a bug in edgeflow; rerun with --debug for the traceback\n")
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()
