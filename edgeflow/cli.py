"""The `edgeflow` command line: thin typer commands over `edgeflow.api`.

Data goes to stdout, diagnostics to stderr. Exit codes: 0 success (warnings allowed), 1 errors in
the input, 2 usage errors (bad option, missing file), 3 an internal error (a bug; `--debug` shows
the traceback).
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from edgeflow import __version__, api
from edgeflow.dataflow import build, to_dot, to_mermaid
from edgeflow.diagnostics import explain as explain_code
from edgeflow.diagnostics import render_json, render_summary, render_text

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
) -> None:
    """Check .ef files and report located diagnostics. Exits 1 if any file has errors."""
    _existing(files)
    results = [api.check_file(f) for f in files]
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
    _existing([file])
    result = api.check_file(file)
    if result.program is None:
        _report([result], OutputFormat.text)
        raise typer.Exit(EXIT_ERRORS)
    df = build(result.program)
    sys.stdout.write(to_dot(df) if fmt is GraphFormat.dot else to_mermaid(df))


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
