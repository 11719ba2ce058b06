"""The `edgeflow` command line: thin typer commands over `edgeflow.api`.

Data goes to stdout, diagnostics to stderr. Exit codes: 0 success (warnings allowed), 1 errors in
the input, 2 usage errors (bad option, missing file), 3 an internal error (a bug; `--debug` shows
the traceback).
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from edgeflow import __version__, api
from edgeflow.dataflow import build, to_dot, to_json, to_mermaid
from edgeflow.diagnostics import (
    CODES,
    Diagnostic,
    SourceCache,
    has_errors,
    render_json,
    render_summary,
    render_text,
)
from edgeflow.diagnostics import explain as explain_code
from edgeflow.emit.targets import TARGETS
from edgeflow.envelope import envelope
from edgeflow.files import write_atomic
from edgeflow.models.signature import ONNX_DTYPES
from edgeflow.models.split import MIN_GAIN, Setting
from edgeflow.plan import Status
from edgeflow.span import file_span
from edgeflow.syntax.units import (
    BANDWIDTH,
    COMPUTE,
    TIME,
    Dimension,
    parse_quantity,
    parse_tensor_type,
)

EXIT_OK, EXIT_ERRORS, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3

T = TypeVar("T")

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="edgeflow: a declarative language and compiler for edge-cloud AI apps.")
_state = {"debug": False}


class OutputFormat(str, Enum):
    text = "text"
    json = "json"


_FORMAT_HELP = "The result as text, or as the JSON envelope on stdout (docs/cli.md)."
FormatOption = Annotated[OutputFormat, typer.Option("--format", help=_FORMAT_HELP)]
JsonOption = Annotated[bool, typer.Option("--json", help="Same as --format json.")]


def _as_json(out_format: OutputFormat, json_out: bool) -> bool:
    return json_out or out_format is OutputFormat.json


class GraphFormat(str, Enum):
    dot = "dot"
    mermaid = "mermaid"
    json = "json"


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
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither read nor write edgeflow's "
                                           "cache folder (docs/cli.md).")] = False,
) -> None:
    _state["debug"] = debug
    if no_cache:
        os.environ["EDGEFLOW_NO_CACHE"] = "1"  # read by edgeflow.cache, here and in children


def _existing(paths: list[Path]) -> None:
    for path in paths:
        if not path.exists():
            typer.echo(f"error: no such file: {path}", err=True)
            raise typer.Exit(EXIT_USAGE)


def _checked(file: Path, as_json: bool = False, command: str = "") -> api.CheckResult:
    """The result of a file that checks (its `program` is set), or exit 1 after printing its
    diagnostics (as `command`'s JSON envelope with `as_json`)."""
    _existing([file])
    result = api.check_file(file)
    if result.program is None:
        if as_json:
            sys.stdout.write(envelope(command, None, result.diagnostics))
        else:
            _report([result], OutputFormat.text)
        raise typer.Exit(EXIT_ERRORS)
    return result


def _report_more(result: api.CheckResult, diagnostics: list[Diagnostic]) -> None:
    """Diagnostics found after the check (placement, output), shown with the file's source."""
    _report([api.CheckResult(result.file, result.text, diagnostics, sources=result.sources)],
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
    json_out: JsonOption = False,
) -> None:
    """Check .ef files and report located diagnostics. Exits 1 if any file has errors."""
    _existing(files)
    results = [api.check_file(f) for f in files]
    if with_plan:
        for result in results:
            if result.program is not None:
                result.diagnostics += api.plan(result.program).diagnostics
    _report(results, OutputFormat.json if json_out else fmt)
    raise typer.Exit(EXIT_OK if all(r.ok for r in results) else EXIT_ERRORS)


@app.command()
def explain(code: Annotated[str, typer.Argument(help="A diagnostic code, e.g. E0101.")],
            out_format: FormatOption = OutputFormat.text, json_out: JsonOption = False) -> None:
    """Print the long explanation of a diagnostic code."""
    text = explain_code(code)
    if text is None:
        typer.echo(f"error: unknown diagnostic code `{code}`", err=True)
        raise typer.Exit(EXIT_USAGE)
    if _as_json(out_format, json_out):
        entry = CODES[code.upper()]
        sys.stdout.write(envelope("explain", {
            "code": code.upper(), "severity": entry.severity.value, "title": entry.title,
            "explanation": entry.explanation}))
        return
    typer.echo(text, nl=False)


@app.command()
def graph(
    file: Annotated[Path, typer.Argument(help="The .ef file.")],
    fmt: Annotated[GraphFormat, typer.Option("--format", help="Graphviz dot, Mermaid, or the "
                                             "JSON envelope (docs/cli.md).")] = GraphFormat.dot,
    json_out: JsonOption = False,
) -> None:
    """Print the application's dataflow graph."""
    as_json = json_out or fmt is GraphFormat.json
    checked = _checked(file, as_json, "graph")
    assert checked.program is not None
    df = build(checked.program)
    if as_json:  # with the warnings, which text output leaves to `check`
        sys.stdout.write(envelope("graph", to_json(df), checked.diagnostics))
        return
    sys.stdout.write(to_dot(df) if fmt is GraphFormat.dot else to_mermaid(df))


@app.command()
def plan(
    file: Annotated[Path, typer.Argument(help="The .ef file.")],
    out_format: FormatOption = OutputFormat.text,
    json_out: JsonOption = False,
    time_limit: Annotated[float, typer.Option(min=0.1, help="Seconds the solver may take; "
                                              "then the best plan found is returned.")] = 30.0,
    explain: Annotated[bool, typer.Option("--explain", help="Show each pipeline's latency "
                                          "breakdown, step by step.")] = False,
    compare: Annotated[bool, typer.Option("--compare", help="Show the baselines' objectives "
                                          "beside the solver's.")] = False,
    sweep: Annotated[list[str] | None, typer.Option(
        "--sweep", help="PATH=LO..HI[:STEPS][:log]: plan again at each value of a property, "
        "e.g. link.a<->b.bandwidth=20Mbps..1Gbps:20:log (docs/whatif.md). Twice: every "
        "pair.")] = None,
    plot: Annotated[Path | None, typer.Option(
        help="With --sweep: draw the sweep to FILE.svg or FILE.png.")] = None,
    force: Annotated[bool, typer.Option(help="Replace a --plot file edgeflow did not "
                                       "write.")] = False,
) -> None:
    """Place every unit on a device (exact MILP) under SLO, capacity, bandwidth and privacy."""
    from edgeflow.placement.render import render, render_comparison

    as_json = _as_json(out_format, json_out)
    if plot is not None and not sweep:
        raise _usage("--plot draws a sweep: give --sweep too")
    if sweep and (explain or compare):
        raise _usage("--sweep reports every point's plan in one table: leave out "
                     "--explain and --compare")
    if sweep and len(sweep) > 2:
        raise _usage("--sweep at most twice (two parameters)")
    _plot_suffix(plot)
    checked = _checked(file, as_json, "plan")
    assert checked.program is not None
    if sweep:
        _sweep(checked, sweep, plot, force, time_limit, as_json)
    program = checked.program
    result = _busy(lambda: api.plan(program, time_limit, compare), _placing(program))
    if result.plan is None:  # too large to place: nothing was planned
        if as_json:
            sys.stdout.write(envelope("plan", None, result.diagnostics))
        else:
            _report_more(checked, result.diagnostics)
        raise typer.Exit(EXIT_ERRORS)
    if as_json:
        data = result.plan.to_dict()
        if compare:
            data["comparison"] = [b.to_dict() for b in result.baselines]
        sys.stdout.write(envelope("plan", data, result.diagnostics))
        raise typer.Exit(EXIT_OK if result.ok else EXIT_ERRORS)
    sys.stdout.write(render(result.plan, explain))
    if result.diagnostics:
        _report_more(checked, result.diagnostics)
    if compare:
        sys.stdout.write(render_comparison(result.plan, result.baselines,
                                           checked.program.app.objective))
    raise typer.Exit(EXIT_OK if result.ok else EXIT_ERRORS)


def _plot_suffix(plot: Path | None) -> None:
    if plot is not None and plot.suffix.lower() not in (".svg", ".png"):
        raise _usage(f"--plot writes .svg or .png, not `{plot.suffix or plot.name}`")


def _write_plot(plot: Path, data: bytes, force: bool, diagnostics: list[Diagnostic]) -> None:
    """Write a chart atomically (never over a file edgeflow did not write, unless `force`);
    a refusal joins `diagnostics`."""
    if (problem := write_atomic(plot, data, force)) is not None:
        diagnostics.append(problem)
    else:
        typer.echo(f"chart written to {plot}", err=True)


def _sweep(checked: api.CheckResult, specs: list[str], plot: Path | None, force: bool,
           time_limit: float, as_json: bool) -> NoReturn:
    """`plan --sweep`: the table (or JSON) of every point, and the chart with --plot."""
    from edgeflow import whatif

    program = checked.program
    assert program is not None
    try:
        sweeps = [whatif.parse_sweep(s, program) for s in specs]
        whatif.grid(sweeps)
    except whatif.SweepError as exc:
        raise _usage(str(exc)) from None
    if len({s.path for s in sweeps}) < len(sweeps):
        raise _usage("--sweep names the same property twice")
    source = checked.text
    points = _with_progress(lambda progress: list(whatif.run(program, source, sweeps,
                                                             time_limit, progress)),
                            "planning sweep points")
    pipelines, terms = list(program.pipelines), list(program.app.objective)
    diagnostics: list[Diagnostic] = []
    if plot is not None:
        from edgeflow.plots import sweep_chart

        data = sweep_chart(plot.suffix.lower().lstrip("."), program.app.name, sweeps, points,
                           {p: program.pipelines[p].slo.latency_s for p in pipelines}, terms)
        if (problem := write_atomic(plot, data, force)) is not None:
            diagnostics.append(problem)
    if as_json:
        result = {"sweeps": [{"path": s.path, "values": list(s.values), "log": s.log}
                             for s in sweeps],
                  "points": [p.to_dict(sweeps) for p in points],
                  "plot": str(plot) if plot is not None and not diagnostics else None}
        sys.stdout.write(envelope("plan", result, diagnostics))
    else:
        sys.stdout.write(whatif.table_text(sweeps, points, pipelines, terms))
        seconds = sum(p.seconds for p in points)
        typer.echo(f"{len(points)} points in {seconds:.1f} s"
                   + (f"; chart written to {plot}" if plot is not None and not diagnostics
                      else ""), err=True)
        if diagnostics:
            _report([api.CheckResult(str(plot), "", diagnostics)], OutputFormat.text)
    raise typer.Exit(EXIT_ERRORS if has_errors(diagnostics) else EXIT_OK)


def _placing(program: Any) -> str:
    units = sum(d.count for d in program.devices.values())
    return f"placing app {program.app.name} on {units} device instance" + \
        ("s" if units != 1 else "")


def _busy(work: Callable[[], T], what: str) -> T:
    """`work()`, with a spinner and the time it has taken on stderr when stderr is a terminal
    (rich): placement at scale and compiling a large app take seconds to a minute."""
    if not sys.stderr.isatty():
        return work()
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), f"[progress.description]{what}", TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        bar.add_task(what, total=None)
        return work()


def _with_progress(work: Callable[[Callable[[int, int], None]], T], what: str) -> T:
    """`work(progress)`, with a progress bar on stderr when stderr is a terminal (rich)."""
    if not sys.stderr.isatty():
        return work(lambda done, total: None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(f"[progress.description]{what}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(what, total=None)
        return work(lambda done, total: bar.update(task, completed=done, total=total))


@app.command("certs")
def certs_cmd(
    bundle_dir: Annotated[Path, typer.Argument(help="A folder `edgeflow compile` wrote.")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Where to write them "
                                                "(default: BUNDLE-secrets beside the bundle, "
                                                "never inside it).")] = None,
    ca_cert: Annotated[Path | None, typer.Option(help="Sign with this CA certificate (PEM) "
                                                 "instead of a new one.")] = None,
    ca_key: Annotated[Path | None, typer.Option(help="The CA's private key (PEM).")] = None,
    days: Annotated[int, typer.Option(min=1, max=3650, help="Validity of each certificate.")]
    = 365,
    force: Annotated[bool, typer.Option(help="Write into a folder that holds other files.")]
    = False,
    out_format: FormatOption = OutputFormat.text,
    json_out: JsonOption = False,
) -> None:
    """Make every certificate a bundle needs (one CA; keys 0600), with a kustomization that
    creates them as the k8s bundle's secrets."""
    from edgeflow import certs

    as_json = _as_json(out_format, json_out)
    _existing([bundle_dir])
    result = certs.make(bundle_dir, output, ca_cert=ca_cert, ca_key=ca_key, days=days,
                        force=force)
    if as_json:
        summary = None if not result.ok else {
            "output": str(result.output), "ca": result.ca, "secrets": result.secrets}
        sys.stdout.write(envelope("certs", summary, result.diagnostics))
        raise typer.Exit(EXIT_OK if result.ok else EXIT_ERRORS)
    if not result.ok:
        for diag in result.diagnostics:
            sys.stderr.write(render_text(diag, SourceCache()) + "\n")
        raise typer.Exit(EXIT_ERRORS)
    typer.echo(f"wrote {len(result.secrets)} certificates to {result.output} (CA: {result.ca}); "
               f"k8s: kubectl apply -k {result.output}; compose: EDGEFLOW_SECRETS="
               f"{result.output}", err=True)


@app.command("run")
def run_cmd(
    file: Annotated[Path, typer.Argument(help="The .ef file.")],
    duration: Annotated[str, typer.Option(help="How long the sensors send, e.g. 10s or "
                                          "500ms.")] = "10s",
    broker: Annotated[str, typer.Option(help="embedded (amqtt, nothing to install) or "
                                        "mosquitto (Debian's, the bundle's own configs).")]
    = "embedded",
    replay: Annotated[list[str] | None, typer.Option(
        help="SENSOR=DIR: send the .npy files of DIR (in name order, looped) instead of "
             "synthetic frames. Repeatable.")] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Output folder "
                                                "(default run/APP).")] = None,
    time_limit: Annotated[float, typer.Option(min=0.1, help="Seconds the placement solver "
                                              "may take.")] = 30.0,
    link: Annotated[list[str] | None, typer.Option(
        help="A<->B=bandwidth:200Mbps@0s,20Mbps@5s,down@10s[;latency:5ms@5s] or A<->B=@TRACE: "
             "change an emulated link during the run (times from the sensors' start). "
             "Repeatable.")] = None,
    rollout: Annotated[list[str] | None, typer.Option(
        help="MODEL=FILE.onnx[@T]: hand the running app a new version of MODEL T after the "
             "sensors start (default 2s), in the model's `rollout` waves. Repeatable.")] = None,
    out_format: FormatOption = OutputFormat.text,
    json_out: JsonOption = False,
) -> None:
    """Compile the app and run it on this machine: every broker and unit on 127.0.0.1, links
    and device speeds emulated; prints measured latency beside the plan's and writes
    run.json."""
    from edgeflow import local_run

    as_json = _as_json(out_format, json_out)
    if broker not in local_run.ENGINES:
        raise _usage(f"--broker is one of {', '.join(local_run.ENGINES)}, not `{broker}`")
    seconds = _quantity("--duration", duration, TIME)
    replays: dict[str, Path] = {}
    for spec in replay or []:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not Path(folder).is_dir():
            raise _usage(f"--replay takes SENSOR=DIR with an existing folder DIR; got `{spec}`")
        replays[name.strip()] = Path(folder)
    from edgeflow.link_schedule import ScheduleError, parse

    try:
        schedules = tuple(parse(spec) for spec in link or [])
    except ScheduleError as e:
        raise _usage(f"--link: {e}") from None
    from edgeflow.rollout import RolloutSpecError
    from edgeflow.rollout import parse as parse_rollout

    try:
        rollouts = tuple(parse_rollout(spec) for spec in rollout or [])
    except RolloutSpecError as e:
        raise _usage(f"--rollout: {e}") from None
    checked = _checked(file, as_json, "run")
    assert checked.program is not None
    if unknown := sorted(set(replays) - set(checked.program.sensors)):
        raise _usage(f"--replay names no sensor of the app: {', '.join(unknown)}")
    missing = [d for d in checked.diagnostics if d.code == "W0608"]
    if missing:
        _report_more(checked, missing)
        typer.echo("error: `edgeflow run` needs every operator's `impl` module", err=True)
        raise typer.Exit(EXIT_ERRORS)
    result = api.plan(checked.program, time_limit)
    if result.plan is None or not result.plan.feasible or result.execution is None:
        if as_json:
            sys.stdout.write(envelope("run", None, result.diagnostics))
        else:
            _report_more(checked, result.diagnostics)
            typer.echo("error: no placement meets the constraints; nothing was run", err=True)
        raise typer.Exit(EXIT_ERRORS)
    out = output or Path("run") / checked.program.app.name
    options = local_run.Options(seconds, broker, replays, out, schedules, rollouts=rollouts)
    from rich.console import Console

    console = Console(stderr=True)
    try:
        with console.status("starting", spinner="dots") as shown:
            report = local_run.execute(result.execution, result.plan, file, options,
                                       lambda text: shown.update(text))
    except local_run.RunError as e:
        failed = [Diagnostic("E1101", str(e), file_span(str(out)), help=e.help)]
        if as_json:
            sys.stdout.write(envelope("run", None, failed))
        else:
            _report_more(checked, failed)
        raise typer.Exit(EXIT_ERRORS) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: every process the run started was stopped", err=True)
        raise typer.Exit(130) from None
    if as_json:
        sys.stdout.write(envelope("run", report, result.diagnostics))
    else:
        sys.stdout.write(local_run.render(report))
        typer.echo(f"wrote {out / 'run.json'}", err=True)
    raise typer.Exit(EXIT_OK)  # a measurement: a missed SLO is reported, not a failed run


@app.command("train")
def train_cmd(
    file: Annotated[Path, typer.Argument(help="The .ef file.")],
    rounds: Annotated[int | None, typer.Option(min=1, help="Rounds to run (default: the "
                                               "training's `rounds`).")] = None,
    training: Annotated[str | None, typer.Option(help="The training to run, when the app "
                                                 "declares several.")] = None,
    fresh: Annotated[bool, typer.Option(help="Start from the declared model, not the newest "
                                        "version in the output folder.")] = False,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Output folder "
                                                "(default train/APP).")] = None,
    out_format: FormatOption = OutputFormat.text,
    json_out: JsonOption = False,
) -> None:
    """Run the app's federated training on this machine with real Flower processes (a
    SuperLink per aggregator, a SuperNode per client, TLS and authenticated nodes); prints
    each round's loss, held-out accuracy, bytes per link and privacy budget, and writes each
    new model version (docs/training.md)."""
    from edgeflow import train

    as_json = _as_json(out_format, json_out)
    checked = _checked(file, as_json, "train")
    assert checked.program is not None
    out = output or Path("train") / checked.program.app.name
    from rich.console import Console

    console = Console(stderr=True)

    def failed(message: str, help: str | None) -> typer.Exit:
        diagnostic = [Diagnostic("E1401", message, file_span(str(out)), help=help)]
        if as_json:
            sys.stdout.write(envelope("train", None, diagnostic))
        else:
            _report_more(checked, diagnostic)
        return typer.Exit(EXIT_ERRORS)

    def on_round(row: dict[str, Any]) -> None:
        if not as_json:
            eps = "" if row["epsilon"] is None else f", epsilon {row['epsilon']:.3g}"
            console.print(f"round {row['round']}: accuracy {row['test_accuracy']:.3f}, "
                          f"loss {row['test_loss']:.4f}, {row['seconds']:.1f} s{eps}",
                          highlight=False)

    try:
        chosen = train.pick(checked.program, training)
        options = train.Options(out=out, rounds=rounds, fresh=fresh)
        with console.status("starting", spinner="dots") as shown:
            report = train.execute(checked.program, chosen, file, options,
                                   lambda text: shown.update(text), on_round)
    except train.TrainError as e:
        raise failed(str(e), e.help) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: every process the training started was stopped", err=True)
        raise typer.Exit(130) from None
    if as_json:
        sys.stdout.write(envelope("train", report, checked.diagnostics))
    else:
        sys.stdout.write(train.render(report))
        typer.echo(f"wrote {out / 'train.json'}", err=True)
    raise typer.Exit(EXIT_OK)


def _unified_diff(path: Path, before: str, after: str) -> str:
    """What formatting changes in `path`, as `diff -u` (git's `a/`, `b/` names) prints it."""
    lines = difflib.unified_diff(before.splitlines(keepends=True),
                                 after.splitlines(keepends=True), f"a/{path}", f"b/{path}")
    return "".join(line if line.endswith("\n") else f"{line}\n\\ No newline at end of file\n"
                   for line in lines)


@app.command()
def fmt(
    files: Annotated[list[Path], typer.Argument(help="The .ef files to format in place.")],
    check: Annotated[bool, typer.Option("--check", help="Change nothing; exit 1 if a file is "
                                        "not formatted.")] = False,
    diff: Annotated[bool, typer.Option("--diff", help="Change nothing; print a unified diff of "
                                       "what formatting would change.")] = False,
    out_format: FormatOption = OutputFormat.text,
    json_out: JsonOption = False,
) -> None:
    """Format .ef files canonically (in place, atomically), keeping every comment."""
    _existing(files)
    as_json = _as_json(out_format, json_out)
    outcomes: list[dict[str, object]] = []
    diagnostics: list[Diagnostic] = []

    def say(message: str) -> None:
        if not as_json:
            typer.echo(message, err=True)

    def problem(result: api.CheckResult) -> None:
        diagnostics.extend(result.diagnostics)
        if not as_json:
            _report([result], OutputFormat.text)

    for path in files:
        outcome: dict[str, object] = {"file": str(path), "reformatted": None}
        outcomes.append(outcome)
        formatted, unparsed = api.format_file(path)
        if formatted is None:
            assert unparsed is not None
            problem(unparsed)
            continue
        before = path.read_text(encoding="utf-8")
        outcome["reformatted"] = formatted != before
        if formatted == before:
            continue
        if diff:
            outcome["diff"] = patch = _unified_diff(path, before, formatted)
            if not as_json:
                sys.stdout.write(patch)
        if check or diff:
            say(f"would reformat {path}")
        elif (unwritten := write_atomic(path, formatted.encode(), force=True)) is not None:
            outcome["reformatted"] = False
            problem(api.CheckResult(str(path), "", [unwritten]))
        else:
            say(f"reformatted {path}")
    if as_json:
        sys.stdout.write(envelope("fmt", {"files": outcomes}, diagnostics))
    if diagnostics or (check and any(o["reformatted"] for o in outcomes)):
        raise typer.Exit(EXIT_ERRORS)


@app.command()
def lsp() -> None:
    """Run the edgeflow language server over stdio (for editors)."""
    from edgeflow.lsp.server import main as serve

    serve()


def _target_options(target: str, specs: list[str]) -> dict[str, str]:
    known = TARGETS[target].options
    out: dict[str, str] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key or not value:
            raise _usage(f"--target-option takes KEY=VALUE; got `{spec}`")
        if key not in known:
            raise _usage(f"target {target} has no option `{key}`; its options are: "
                         + ("; ".join(f"{k} ({h})" for k, (_, h) in known.items()) or "none"))
        out[key] = value
    return out


def _target_help() -> str:
    return "; ".join(f"{t.name}: {t.description}" for t in TARGETS.values())


@app.command()
def report(
    file: Annotated[Path, typer.Argument(help="The .ef file.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the page, "
                                         "e.g. report.html.")],
    time_limit: Annotated[float, typer.Option(min=0.1, help="Seconds the solver may take; "
                                              "then the best plan found is shown.")] = 30.0,
    force: Annotated[bool, typer.Option(help="Replace an output file edgeflow did not "
                                       "write.")] = False,
    out_format: FormatOption = OutputFormat.text,
    json_out: JsonOption = False,
) -> None:
    """Draw the plan as one self-contained HTML page: devices in tiers, units on devices, data
    across links, latency against the SLOs, utilisation, splits, baselines (docs/report.md)."""
    as_json = _as_json(out_format, json_out)
    checked = _checked(file, as_json, "report")
    assert checked.program is not None
    program = checked.program
    result = _busy(lambda: api.report(program, time_limit, str(file)), _placing(program))
    diagnostics = list(result.diagnostics)
    written = False
    if result.page is not None:
        if (problem := write_atomic(output, result.page.encode(), force)) is not None:
            diagnostics.append(problem)
        else:
            written = True
    if as_json:
        data = None if result.plan is None else {
            "output": str(output) if written else None, "status": result.plan.status.value}
        sys.stdout.write(envelope("report", data, checked.diagnostics + diagnostics))
        raise typer.Exit(EXIT_OK if written and result.ok else EXIT_ERRORS)
    if diagnostics:
        _report_more(checked, diagnostics)
    if written and result.plan is not None:
        typer.echo(f"wrote {output} ({result.plan.status.value} plan)", err=True)
    raise typer.Exit(EXIT_OK if written and result.ok else EXIT_ERRORS)


@app.command("compile")
def compile_cmd(
    file: Annotated[Path, typer.Argument(help="The .ef file.")],
    target: Annotated[str, typer.Option(help=f"The deployment target: {_target_help()}.")]
    = "k8s",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Output folder "
                                                "(default build/APP).")] = None,
    force: Annotated[bool, typer.Option(help="Write into a folder that holds files edgeflow "
                                       "did not generate (they are kept), or replace a bundle "
                                       "of another target there.")] = False,
    time_limit: Annotated[float, typer.Option(min=0.1, help="Seconds the placement solver "
                                              "may take.")] = 30.0,
    target_options: Annotated[list[str] | None, typer.Option(
        "--target-option", help="KEY=VALUE: an option of the target (docs/targets.md), e.g. "
        "artifacts=s3://my-bucket/edgeflow for greengrass. Repeatable.")] = None,
    out_format: FormatOption = OutputFormat.text,
    json_out: JsonOption = False,
) -> None:
    """Check, plan and emit a deployment bundle. On any error nothing is written."""
    if target not in TARGETS:
        raise _usage(f"unknown target `{target}`; the targets are: {_target_help()}")
    options = _target_options(target, target_options or [])
    as_json = _as_json(out_format, json_out)
    _existing([file])
    result = _busy(lambda: api.compile(file, target, output, force, time_limit, options),
                   f"compiling {file}")
    written = result.ok and result.output is not None
    if as_json:
        summary = None if not written else {
            "output": str(result.output), "target": target, "files": sorted(result.files),
            "warnings": result.warnings,
            "plan": result.plan.to_dict() if result.plan else None}
        sys.stdout.write(envelope("compile", summary,
                                  result.check.diagnostics + result.diagnostics))
        raise typer.Exit(EXIT_OK if result.ok else EXIT_ERRORS)
    if not result.check.ok:
        _report([result.check], OutputFormat.text)
        raise typer.Exit(EXIT_ERRORS)
    if result.diagnostics:
        _report_more(result.check, result.diagnostics)
    if not written:
        if result.plan is not None and result.plan.status is Status.UNKNOWN:
            typer.echo("error: no plan was found in the time given; nothing was written",
                       err=True)
        elif result.plan is not None and not result.plan.feasible:
            typer.echo("error: no placement meets the constraints; nothing was written", err=True)
        raise typer.Exit(EXIT_ERRORS)
    assert result.plan is not None
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"wrote {len(result.files)} files to {result.output} ({result.plan.status.value} "
               f"plan, target {target})", err=True)


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


def _finish(command: str, subject: Path, as_json: bool, result: Any,
            diagnostics: list[Diagnostic], text: str = "") -> NoReturn:
    """Print a producing command's outcome, the envelope (json) or `text` on stdout and the
    diagnostics on stderr, and exit 1 if there are errors."""
    if as_json:
        sys.stdout.write(envelope(command, result, diagnostics))
    else:
        sys.stdout.write(text)
        if diagnostics:
            _report([api.CheckResult(str(subject), "", diagnostics)], OutputFormat.text)
    raise typer.Exit(EXIT_ERRORS if has_errors(diagnostics) else EXIT_OK)


def _compute(side: str, text: str | None, profile: Path | None) -> float | None:
    """A device's compute, or None when its profile gives every time."""
    if text is not None:
        return _quantity(f"--{side}-compute", text, COMPUTE)
    if profile is None:
        raise _usage(f"give --{side}-compute (e.g. 1TFLOPS) or --{side}-profile")
    return None


@app.command()
def split(
    model: Annotated[Path, typer.Argument(help="The ONNX model.")],
    inputs: Annotated[list[str], typer.Option("--input", help="Bind an input: NAME=TYPE, e.g. "
                                              "images=float32[1,3,320,320]. Repeat per input.")],
    bandwidth: Annotated[str, typer.Option(help="Link bandwidth, e.g. 20Mbps.")],
    edge_compute: Annotated[str | None, typer.Option(
        help="Edge device compute, e.g. 0.5TFLOPS (not needed with --edge-profile).")] = None,
    cloud_compute: Annotated[str | None, typer.Option(
        help="Cloud device compute, e.g. 100TFLOPS (not needed with --cloud-profile).")]
    = None,
    latency: Annotated[str, typer.Option(help="Link one-way latency, e.g. 10ms.")] = "0ms",
    out_format: FormatOption = OutputFormat.text,
    json_out: JsonOption = False,
    emit: Annotated[Path | None, typer.Option(help="Write DIR/head.onnx and DIR/tail.onnx "
                                                 "(the optimum, or the --cut).")] = None,
    cut: Annotated[str | None, typer.Option(help="Force a cut: comma-separated tensor "
                                               "names.")] = None,
    sweep: Annotated[str | None, typer.Option(help="Optimal cut per bandwidth range, e.g. "
                                                 "bandwidth=1Mbps..1Gbps.")] = None,
    min_gain: Annotated[float, typer.Option(min=0.0, help="The relative latency gain over "
                                            "running whole a cut must bring to be recommended.")]
    = MIN_GAIN,
    edge_profile: Annotated[Path | None, typer.Option(help="Measured per-node times on the "
                                                         "edge device (edgeflow profile).")]
    = None,
    cloud_profile: Annotated[Path | None, typer.Option(help="Measured per-node times on the "
                                                          "cloud device.")] = None,
    plot: Annotated[Path | None, typer.Option(
        help="With --sweep: draw every Pareto cut's latency against the bandwidth, the optimal "
        "cut per range highlighted, to FILE.svg or FILE.png.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite files in --emit DIR that edgeflow did "
                                       "not write.")] = False,
) -> None:
    """Find where to cut a model between an edge and a cloud device (Neurosurgeon/DADS, exact)."""
    bound = _parse_inputs(inputs)
    setting = Setting(_compute("edge", edge_compute, edge_profile),
                      _compute("cloud", cloud_compute, cloud_profile),
                      _quantity("--bandwidth", bandwidth, BANDWIDTH),
                      0.0 if latency.strip() in ("0", "0ms") else
                      _quantity("--latency", latency, TIME), min_gain=min_gain)
    sweep_range = None
    if sweep is not None:
        key, _, span = sweep.partition("=")
        low, _, high = span.partition("..")
        if key != "bandwidth" or not low or not high:
            raise _usage("--sweep takes bandwidth=LOW..HIGH, e.g. bandwidth=1Mbps..1Gbps")
        sweep_range = (_quantity("--sweep", low, BANDWIDTH), _quantity("--sweep", high, BANDWIDTH))
        if sweep_range[0] >= sweep_range[1]:
            raise _usage("--sweep: the low bandwidth must be below the high one")
    if plot is not None and sweep_range is None:
        raise _usage("--plot draws the bandwidth sweep: give --sweep bandwidth=LO..HI too")
    _plot_suffix(plot)
    forced = [t.strip() for t in cut.split(",") if t.strip()] if cut is not None else None
    result = api.split(model, bound, setting, forced, sweep_range, emit, force,
                       edge_profile=edge_profile, cloud_profile=cloud_profile)
    if plot is not None and sweep_range is not None and result.data is not None:
        from edgeflow.plots import split_chart

        chart = split_chart(plot.suffix.lower().lstrip("."), model.name,
                            result.data["candidates"], result.data["sweep"],  # type: ignore[arg-type]
                            *sweep_range, result.setting.latency_s)
        _write_plot(plot, chart, force, result.diagnostics)
    if result.emitted and result.cut is not None:
        typer.echo(f"wrote {' and '.join(map(str, result.emitted))} (cut at "
                   f"{', '.join(result.cut)})", err=True)
    _finish("split", model, _as_json(out_format, json_out), result.data,
            result.diagnostics, result.render_text())


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
    plot: Annotated[Path | None, typer.Option(
        help="Also draw each node's time, slowest first, to FILE.svg or FILE.png.")] = None,
    out_format: FormatOption = OutputFormat.text,
    json_out: JsonOption = False,
) -> None:
    """Measure per-node latency of a model with onnxruntime on this machine."""
    bound = _parse_inputs(inputs)
    _plot_suffix(plot)
    try:
        result = api.profile(model, bound, output, runs, warmup, force)
    except api.RuntimeMissing as exc:
        raise _usage(str(exc)) from None
    if plot is not None and result.data is not None:
        from edgeflow.plots import profile_chart

        chart = profile_chart(plot.suffix.lower().lstrip("."), model.name,
                              result.data["node_seconds"])  # type: ignore[arg-type]
        _write_plot(plot, chart, force, result.diagnostics)
    if result.data is not None:
        typer.echo(f"wrote {output}: {len(result.data['node_seconds'])} nodes, "  # type: ignore[arg-type]
                   f"{float(result.data['total_seconds']) * 1000:.3f} ms per run",  # type: ignore[arg-type]
                   err=True)
    _finish("profile", model, _as_json(out_format, json_out), result.to_json(),
            result.diagnostics)


@app.command()
def quantize(
    model: Annotated[Path, typer.Argument(help="The ONNX model (float).")],
    inputs: Annotated[list[str], typer.Option("--input", help="Bind an input: NAME=TYPE.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the int8 "
                                         "model.")],
    calibration: Annotated[Path | None, typer.Option(
        help="A folder of frames to calibrate on: .npy (one input) or .npz (an array per "
        "input).")] = None,
    synthetic: Annotated[int | None, typer.Option(
        min=1, help="Calibrate on N generated frames instead: a speed estimate, no fidelity "
        "claimed without --validation.")] = None,
    validation: Annotated[Path | None, typer.Option(
        help="A folder of frames kept apart from the calibration frames, to measure fidelity "
        "on (default: every fifth calibration frame).")] = None,
    runs: Annotated[int, typer.Option(min=1, help="Timed runs of each model for the "
                                      "speed-up.")] = 20,
    force: Annotated[bool, typer.Option(help="Overwrite an output file edgeflow did not "
                                       "write.")] = False,
    out_format: FormatOption = OutputFormat.text,
    json_out: JsonOption = False,
) -> None:
    """Quantize a model to int8 (onnxruntime, QDQ, per-channel) and measure what it costs:
    fidelity against the float model, size and speed-up on this machine."""
    if (calibration is None) == (synthetic is None):
        raise _usage("give one of --calibration DIR and --synthetic N")
    bound = _parse_inputs(inputs)
    result = _busy(lambda: api.quantize(model, bound, output, calibration, synthetic,
                                        validation, runs, force), f"quantizing {model}")
    report = result.report
    text = ""
    if report is not None:
        typer.echo(f"wrote {output}", err=True)
        fidelity = "not measured" if report.fidelity is None else \
            f"{report.fidelity:.4f} (" + ", ".join(
                f"{name}: {o['metric']} {float(o['fidelity']):.4f}"  # type: ignore[arg-type]
                for name, o in report.outputs.items()) + \
            f"; {report.validation_frames} validation frames)"
        text = (f"fidelity   {fidelity}\n"
                f"size       {report.int8_bytes:,} B, {report.int8_bytes / report.base_bytes:.0%}"
                f" of {report.base_bytes:,} B\n"
                f"speed-up   {report.speedup:.2f}x ({report.base_seconds * 1e3:.3f} ms -> "
                f"{report.int8_seconds * 1e3:.3f} ms per run, one thread, this machine)\n")
    _finish("quantize", model, _as_json(out_format, json_out), result.to_json(),
            result.diagnostics, text)


@app.command()
def init(
    folder: Annotated[Path, typer.Argument(help="The folder of the new app.")],
    example: Annotated[str | None, typer.Option(
        help="Start from this example app (e.g. smart_city_traffic) instead of the starter.",
        autocompletion=api.example_names)] = None,
    force: Annotated[bool, typer.Option(help="Replace files that exist.")] = False,
    out_format: FormatOption = OutputFormat.text,
    json_out: JsonOption = False,
) -> None:
    """Create an app: FOLDER/app.ef, the ONNX models it uses in FOLDER/models/, a README."""
    try:
        result = api.init(folder, example, force)
    except api.UnknownExample as exc:
        raise _usage(str(exc)) from None
    if result.files:
        frames = [f for f in result.files if f.suffix == ".npy"]
        shown = [str(f) for f in result.files if f.suffix != ".npy"] + [
            f"{len(frames)} frames in {', '.join(sorted({str(f.parent) for f in frames}))}"
        ] * bool(frames)
        typer.echo(f"wrote {', '.join(shown)}\nnext: edgeflow check "
                   f"{folder / 'app.ef'} && edgeflow plan {folder / 'app.ef'}", err=True)
    _finish("init", folder, _as_json(out_format, json_out), result.to_json(),
            result.diagnostics)


models_app = typer.Typer(no_args_is_help=True, help="Look into ONNX models.")
app.add_typer(models_app, name="models")


@models_app.command("inspect")
def models_inspect(
    model: Annotated[Path, typer.Argument(help="The ONNX model.")],
    inputs: Annotated[list[str] | None, typer.Option(
        "--input", help="Bind an input: NAME=TYPE, e.g. images=float32[1,3,320,320]. Repeat "
        "per input; with every input bound, the work, weights and output types are shown.")]
    = None,
    out_format: FormatOption = OutputFormat.text,
    json_out: JsonOption = False,
) -> None:
    """Inputs, outputs, opset and node count of a model; work and weights once inputs are bound."""
    result = api.inspect_model(model, _parse_inputs(inputs or []))
    _finish("models inspect", model, _as_json(out_format, json_out), result.data,
            result.diagnostics, result.render_text())


SHELLS = ("bash", "zsh", "fish", "powershell", "pwsh")
try:  # what Typer raises when it cannot guess the shell for --show-completion
    from shellingham import ShellDetectionFailure
except ImportError:  # pragma: no cover - Typer then never guesses
    class ShellDetectionFailure(Exception):  # type: ignore[no-redef]
        pass


def main() -> None:
    # `--show-completion bash` names its shell: Typer would otherwise guess it from the parent
    # process and fail (exit 3) when that is not a shell, e.g. under a script or a service
    for flag in ("--show-completion", "--install-completion"):
        if flag in sys.argv[1:-1] and sys.argv[sys.argv.index(flag) + 1] in SHELLS:
            os.environ["_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION"] = "1"
    try:
        app(prog_name="edgeflow", standalone_mode=True)  # also under `python -m edgeflow`
    except SystemExit:
        raise
    except ShellDetectionFailure:
        sys.stderr.write("error: could not tell which shell this is; name it, e.g. "
                         "`edgeflow --show-completion bash`\n")
        sys.exit(EXIT_USAGE)
    except BaseException as exc:  # a bug: never show a traceback unless asked to
        if _state["debug"] or "--debug" in sys.argv:
            raise
        sys.stderr.write(f"internal error: {type(exc).__name__}: {exc}\n"
                         "this is a bug in edgeflow; rerun with --debug for the traceback\n")
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()
