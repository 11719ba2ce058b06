"""Plan -> deployment bundle (`edgeflow compile`). Every file is rendered in memory from the
bundle model, then written atomically: into a temporary sibling folder renamed over the output
folder, so an error leaves nothing behind and a reader never sees half a bundle.

Layout (see docs/bundles.md): plan.json, report.md, models/ (+ manifest.json), mqtt/<broker>/,
and k8s/ (kustomization) or compose/<device>/compose.yaml, plus `.edgeflow-bundle`, the marker
that says which files edgeflow generated there.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from edgeflow import __version__
from edgeflow.diagnostics import Diagnostic
from edgeflow.emit.artefacts import build_artefacts, manifest
from edgeflow.emit.bundle import build_bundle
from edgeflow.emit.mqtt import render_acl, render_conf
from edgeflow.emit.report import render_report
from edgeflow.emit.targets import TARGETS, Rendering
from edgeflow.execution import ExecutionGraph
from edgeflow.files import reason, write_atomic
from edgeflow.plan import Plan
from edgeflow.span import file_span

MARKER = ".edgeflow-bundle"


class BundleError(Exception):
    """Why the bundle was not written: a diagnostic on the output folder (E1001, E1002)."""

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


def _refuse(code: str, message: str, out: Path, help: str | None = None) -> BundleError:
    return BundleError(Diagnostic(code, message, file_span(str(out)), help=help))


def bundle_files(execution: ExecutionGraph, plan: Plan, target: str,
                 source: str) -> dict[str, bytes]:
    """Every file of the bundle, by relative path: what every target shares (plan.json,
    report.md, models/, mqtt/) and the target's own files."""
    program = execution.program
    bundle = build_bundle(execution, plan)
    artefacts = build_artefacts(program, plan)
    files: dict[str, bytes] = {"plan.json": plan.to_json().encode()}
    files["report.md"] = render_report(bundle, target, source).encode()
    for art in artefacts.values():
        files[art.path] = art.data
    if artefacts:
        files["models/manifest.json"] = manifest(program, artefacts)
    for b in bundle.brokers.values():
        files[f"mqtt/{b.name}/mosquitto.conf"] = render_conf(bundle, b).encode()
        files[f"mqtt/{b.name}/edgeflow.acl"] = render_acl(b).encode()
    files.update(TARGETS[target].render(Rendering(bundle, artefacts)))
    files[MARKER] = (json.dumps({"generator": f"edgeflow {__version__}", "app": bundle.app,
                                 "target": target, "files": sorted(files)}, indent=2)
                     + "\n").encode()
    return dict(sorted(files.items()))


def write_bundle(out: Path, files: dict[str, bytes], force: bool) -> None:
    """Write `files` under `out` atomically. A folder that holds files edgeflow did not write is
    refused, unless `force`, and then those files are kept and only edgeflow's are replaced."""
    try:
        _write_bundle(out.resolve(), files, force)
    except OSError as exc:
        where = Path(exc.filename) if exc.filename else out
        raise _refuse("E1001", f"cannot write `{where}`: {reason(where, exc)}", out) from None


def _write_bundle(out: Path, files: dict[str, bytes], force: bool) -> None:
    previous: list[str] = []
    if out.exists():
        if not out.is_dir():
            raise _refuse("E1001", f"cannot write `{out}`: it exists and is not a folder", out,
                          help="choose another folder with -o")
        marker = out / MARKER
        if marker.is_file():
            try:
                previous = json.loads(marker.read_text())["files"]
            except (ValueError, KeyError, TypeError):
                previous = []
        present = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
        foreign = sorted(present - set(previous) - {MARKER})
        if foreign and not force:
            raise _refuse("E1002", f"`{out}` holds files edgeflow did not generate "
                          f"(`{foreign[0]}`"
                          + (f" and {len(foreign) - 1} more" if len(foreign) > 1 else "") + ")",
                          out, help="choose another folder with -o, or pass --force to write "
                                    "beside them (they are kept)")
        if foreign:
            _merge(out, files, previous)
            return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for rel, data in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        tmp.chmod(0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / "bundle")
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _merge(out: Path, files: dict[str, bytes], previous: list[str]) -> None:
    for rel, data in files.items():
        if (problem := write_atomic(out / rel, data, force=True)) is not None:
            raise BundleError(problem)
    for rel in set(previous) - set(files):  # edgeflow's own files from an older bundle
        (out / rel).unlink(missing_ok=True)
