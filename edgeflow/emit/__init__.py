"""Plan -> deployment bundle (`edgeflow compile`). Every file is rendered in memory from the
bundle model, then written atomically: into a temporary sibling folder renamed over the output
folder, so an error leaves nothing behind and a reader never sees half a bundle.

Layout (see docs/bundles.md): plan.json, report.md, report.html, models/ (+ manifest.json), mqtt/<broker>/,
and k8s/ (kustomization) or compose/<device>/compose.yaml, training/<name>/ for a target that
deploys trainings, plus `.edgeflow-bundle`, the marker that says which files edgeflow generated
there.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from edgeflow import __version__
from edgeflow.diagnostics import Diagnostic
from edgeflow.emit.artefacts import (
    adapt_artefacts,
    build_artefacts,
    external_files,
    manifest,
    read_models,
)
from edgeflow.emit.bundle import build_bundle, bundle_names
from edgeflow.emit.identities import secrets_json
from edgeflow.emit.mqtt import render_acl, render_conf
from edgeflow.emit.report import render_report
from edgeflow.emit.report_html import render_html_report
from edgeflow.emit.targets import TARGETS, Rendering
from edgeflow.emit.training import check_federation_names, federations
from edgeflow.execution import ExecutionGraph
from edgeflow.files import reason, write_all
from edgeflow.plan import Plan
from edgeflow.span import file_span

if TYPE_CHECKING:
    from edgeflow.placement import Baseline

MARKER = ".edgeflow-bundle"


class BundleError(Exception):
    """Why the bundle was not written: a diagnostic on the output folder (E1001, E1002)."""

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


def _refuse(code: str, message: str, out: Path, help: str | None = None) -> BundleError:
    return BundleError(Diagnostic(code, message, file_span(str(out)), help=help))


def bundle_files(execution: ExecutionGraph, plan: Plan, target: str,
                 source: str, options: Mapping[str, str] | None = None,
                 baselines: Sequence[Baseline] = ()) -> dict[str, bytes]:
    """Every file of the bundle, by relative path: what every target shares (plan.json,
    report.md, report.html, models/, mqtt/) and the target's own files."""
    program = execution.program
    bundle = build_bundle(execution, plan)
    sources = read_models(program, plan)
    artefacts = build_artefacts(program, plan, sources)
    adapt = adapt_artefacts(program, plan, sources)
    files: dict[str, bytes] = {"plan.json": plan.to_json().encode()}
    files["report.md"] = render_report(bundle, target, source,
                                       {a.path for a in artefacts.values()}, adapt).encode()
    files["report.html"] = render_html_report(execution, plan, baselines, source).encode()
    for art in artefacts.values():
        files[art.path] = art.data
    for cuts in adapt.values():
        for pair in cuts.values():
            files.update((art.path, art.data) for art in pair)
    files.update(external_files(plan, sources))
    if artefacts:
        files["models/manifest.json"] = manifest(sources, artefacts, adapt)
    feds = federations(program) if TARGETS[target].deploys_training else ()
    if feds:
        check_federation_names(program, feds, bundle_names(bundle))
    for fed in feds:
        files.update(fed.files())
    files["secrets.json"] = secrets_json(bundle, feds)
    for b in bundle.brokers.values():
        files[f"mqtt/{b.name}/mosquitto.conf"] = render_conf(bundle, b).encode()
        files[f"mqtt/{b.name}/edgeflow.acl"] = render_acl(b).encode()
    files.update(TARGETS[target].render(Rendering(bundle, artefacts, dict(options or {}),
                                                  adapt, feds)))
    files[MARKER] = (json.dumps({"generator": f"edgeflow {__version__}", "app": bundle.app,
                                 "target": target, "files": sorted(files)}, indent=2)
                     + "\n").encode()
    return dict(sorted(files.items()))


PARTIAL = ".edgeflow-partial"  # in a folder being written: the writer's process id


def write_bundle(out: Path, files: dict[str, bytes], force: bool) -> str | None:
    """Write `files` under `out` atomically: into a temporary sibling folder renamed over `out`.
    A folder that holds anything edgeflow did not write is refused, unless `force`: then those
    files are kept and only edgeflow's are replaced, never through a symbolic link, and nothing
    outside `out` is touched. Returns a warning when the previous bundle could not be removed."""
    out = Path(os.path.abspath(out))
    if out.is_symlink():  # -o names a link: the bundle goes where it points, the link stays
        out = out.resolve()
    if out.parent == out:
        raise _refuse("E1001", f"cannot write a bundle into `{out}`, the root folder", out,
                      help="name a folder for the bundle with -o")
    try:
        return _write_bundle(out, files, force)
    except OSError as exc:
        where = Path(exc.filename) if exc.filename else out
        raise _refuse("E1001", f"cannot write `{where}`: {reason(where, exc)}", out) from None


def _safe(rel: str) -> bool:
    """A marker entry edgeflow could have written: relative, normalised, inside the folder."""
    path = PurePosixPath(rel)
    return bool(rel) and not path.is_absolute() and ".." not in path.parts and \
        str(path) == rel and rel != "."


def _raise(error: OSError) -> None:
    raise error


def _walk(out: Path) -> tuple[set[str], set[str]]:
    """Files, and symbolic links and empty folders (never edgeflow's), under `out` as relative
    paths, without following links; a folder that cannot be read is an error, not empty."""
    files: set[str] = set()
    links: set[str] = set()
    for root, dirs, names in os.walk(out, onerror=_raise):
        if not dirs and not names and Path(root) != out:
            links.add(str(Path(root).relative_to(out)) + "/")
        for name in [*dirs, *names]:
            path = Path(root, name)
            if path.is_symlink():
                links.add(str(path.relative_to(out)))
                if name in dirs:
                    dirs.remove(name)
            elif name in names:
                files.add(str(path.relative_to(out)))
    return files, links


def _ours(folder: Path) -> bool:
    """A temporary folder of an edgeflow run that is no longer running."""
    try:
        pid = int((folder / PARTIAL).read_text())
    except (OSError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _clean_leftovers(out: Path) -> None:
    """Remove what killed runs left beside `out` (folders marked with a dead writer's pid)."""
    for sibling in out.parent.glob(f".{out.name}.*-*"):
        if sibling.is_dir() and not sibling.is_symlink() and _ours(sibling):
            shutil.rmtree(sibling, ignore_errors=True)


def _temporary(out: Path, kind: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.{kind}-", dir=out.parent))
    (folder / PARTIAL).write_text(str(os.getpid()))
    return folder


def _target_of(files: dict[str, bytes]) -> str | None:
    """The target named in the marker of a bundle about to be written."""
    try:
        target = json.loads(files[MARKER])["target"]
    except (KeyError, ValueError, TypeError):
        return None
    return target if isinstance(target, str) else None


def _write_bundle(out: Path, files: dict[str, bytes], force: bool) -> str | None:
    previous: set[str] = set()
    replaced: str | None = None
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise _refuse("E1001", f"cannot write `{out}`: it exists and is not a folder", out,
                          help="choose another folder with -o")
        marker = out / MARKER
        before: object = None
        if marker.is_file() and not marker.is_symlink():
            try:
                recorded = json.loads(marker.read_text())
                previous = {f for f in recorded["files"] if isinstance(f, str) and _safe(f)}
                before = recorded.get("target")
            except (ValueError, KeyError, TypeError, RecursionError, AttributeError):
                previous = set()
        target = _target_of(files)
        if isinstance(before, str) and target is not None and before != target:
            if not force:
                raise _refuse("E1002", f"`{out}` holds a `{before}` bundle; writing the "
                              f"`{target}` bundle there would delete it", out,
                              help="choose another folder with -o, or pass --force to replace "
                                   f"the `{before}` bundle")
            replaced = f"replaced the `{before}` bundle in `{out}`"
        present, links = _walk(out)
        foreign = sorted((present - previous - {MARKER}) | links)
        if foreign and not force:
            raise _refuse("E1002", f"`{out}` holds files edgeflow did not generate "
                          f"(`{foreign[0]}`"
                          + (f" and {len(foreign) - 1} more" if len(foreign) > 1 else "") + ")",
                          out, help="choose another folder with -o, or pass --force to write "
                                    "beside them (they are kept)")
        if foreign:
            _merge(out, files, previous, links)
            return replaced
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(out)
    tmp = _temporary(out, "tmp")
    old: Path | None = None
    try:
        for rel, data in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        tmp.chmod(0o755)
        (tmp / PARTIAL).unlink()
        if out.exists():
            old = _temporary(out, "old")
            os.rename(out, old / "bundle")
        os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not (old / "bundle").exists():
            shutil.rmtree(old, ignore_errors=True)  # the rename failed: nothing to keep
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        if old.exists():
            return (f"the new bundle is in place, but the previous one could not be removed: "
                    f"it is kept at `{old}`")
    return replaced


def _merge(out: Path, files: dict[str, bytes], previous: set[str], links: set[str]) -> None:
    """Write edgeflow's files into a folder that also holds the user's (`--force`)."""
    through = sorted(link for link in links for rel in files
                     if rel == link or rel.startswith(link + "/"))
    if through:
        raise _refuse("E1001", f"cannot write `{out / through[0]}`: it is a symbolic link, and "
                      "edgeflow writes only inside the output folder", out,
                      help="remove the link, or choose another folder with -o")
    if problems := write_all({out / rel: data for rel, data in files.items()}, force=True):
        raise BundleError(problems[0])
    for rel in sorted(previous - set(files)):  # edgeflow's own files from an older bundle
        path = out / rel
        if not any(rel == link or rel.startswith(link + "/") for link in links) and \
                path.is_file() and not path.is_symlink():
            path.unlink()
