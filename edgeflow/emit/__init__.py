"""Plan -> deployment bundle (`edgeflow compile`). Every file is rendered in memory from the
bundle model, then written atomically: into a temporary sibling folder renamed over the output
folder, so an error leaves nothing behind and a reader never sees half a bundle.

Layout (see docs/bundles.md): plan.json, report.md, models/ (+ manifest.json), mqtt/<broker>/,
and k8s/ (kustomization) or compose/<device>/compose.yaml, plus `.edgeflow-bundle`, the marker
that says which files edgeflow generated there.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgeflow import __version__, ir
from edgeflow.emit.artefacts import build_artefacts, manifest
from edgeflow.emit.bundle import Bundle, Client, build_bundle, k8s_name
from edgeflow.emit.mqtt import render_acl, render_conf
from edgeflow.emit.report import render_report
from edgeflow.emit.templating import render
from edgeflow.placement.problem import Problem

MARKER = ".edgeflow-bundle"
WORKER_IMAGE = f"edgeflow-worker:{__version__}"
BROKER_IMAGE = "eclipse-mosquitto:2.0.18"
TARGETS = ("k8s", "compose")


class BundleError(Exception):
    """A user-facing problem writing the bundle (message says what)."""


def _unit_load(problem: Problem, bundle: Bundle, c: Client) -> tuple[float, float]:
    """(share of its device's compute, memory bytes) of a unit client, from the plan's choices."""
    base = c.step.split(".")[0]
    info = problem.steps[(base, c.replica)]
    compute = problem.device(c.device).compute_flops
    if c.kind in ("head", "tail"):
        split = next(s for s in bundle.plan["splits"] if s["model"] == base and
                     s["replica"] == c.replica)
        option = next(o for o in info.cuts if list(o.tensors) == split["cut"])
        work = option.head_work if c.kind == "head" else option.tail_work
        memory = option.head_weights if c.kind == "head" else option.tail_weights
        return info.rate * work / compute, float(memory)
    return info.rate * info.work / compute, info.memory


def _unit_config(bundle: Bundle, c: Client, target: str, artefacts: dict[Any, Any]) -> str:
    program = bundle.program
    local = target == "compose" or c.tier != "cloud"
    config: dict[str, Any] = {
        "app": bundle.app, "unit": c.step, "replica": c.replica, "kind": c.kind,
        "device": c.device,
        "broker": {"host": "127.0.0.1" if local else bundle.brokers[c.device].name,
                   "port": 8883, "client_id": c.identity,
                   "tls": {"ca": "/etc/edgeflow/tls/ca.crt", "cert": "/etc/edgeflow/tls/tls.crt",
                           "key": "/etc/edgeflow/tls/tls.key"}},
        "subscribe": c.reads, "publish": c.writes,
    }
    base = c.step.split(".")[0]
    if base in program.operators:
        op = program.operators[base]
        config["operator"] = {"work_flop": op.work_flop, "emits": str(op.emits)}
    else:
        part = {"model": "whole", "head": "head", "tail": "tail"}[c.kind]
        art = artefacts[(base, part, c.replica)]
        config["model"] = {"file": art.mount_path, "sha256": art.sha256, "part": part,
                           "cut": list(art.cut)}
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def _placement(tier: str, device: str) -> dict[str, Any]:
    return {"edge": tier != "cloud", "device_label": k8s_name(device)}


def _k8s(bundle: Bundle, problem: Problem, artefacts: dict[Any, Any]) -> dict[str, bytes]:
    namespace = k8s_name("edgeflow", bundle.app)
    files: dict[str, bytes] = {}
    resources = ["common.yaml"]
    files["k8s/common.yaml"] = render("k8s/common.yaml.j2", app=bundle.app,
                                      namespace=namespace).encode()
    for b in bundle.brokers.values():
        view = {
            "name": b.name, "device": b.device, "tier": b.tier, "external": b.external,
            "labels": _labels(bundle, b.name, "broker", b.device),
            "conf": render_conf(bundle, b), "acl": render_acl(b),
            "placement": _placement(b.tier, b.device),
            "memory_limit": f"{max(256, math.ceil(4 * bundle.max_message_bytes / 2**20) + 128)}Mi",
            "data_host_path": f"/var/lib/edgeflow/{k8s_name(bundle.app)}/{b.name}",
        }
        files[f"k8s/{b.name}.yaml"] = render("k8s/broker.yaml.j2", b=view, namespace=namespace,
                                             broker_image=BROKER_IMAGE).encode()
        resources.append(f"{b.name}.yaml")
    for c in bundle.units():
        share, memory = _unit_load(problem, bundle, c)
        mem_mi = math.ceil(memory / 2**20) + 128  # the worker and onnxruntime themselves
        view = {
            "name": c.name, "step": c.step, "replica": c.replica, "device": c.device,
            "tier": c.tier, "labels": _labels(bundle, c.name, "unit", c.device),
            "config_json": _unit_config(bundle, c, "k8s", artefacts),
            "cpu": f"{max(10, math.ceil(share * 1000))}m", "memory": f"{mem_mi}Mi",
            "memory_limit": f"{2 * mem_mi}Mi", "secret": f"{c.name}-tls",
        }
        files[f"k8s/{c.name}.yaml"] = render(
            "k8s/unit.yaml.j2", u=view, p=_placement(c.tier, c.device), namespace=namespace,
            worker_image=WORKER_IMAGE,
            models_host_path=f"/var/lib/edgeflow/{k8s_name(bundle.app)}/models").encode()
        resources.append(f"{c.name}.yaml")
    files["k8s/kustomization.yaml"] = render("k8s/kustomization.yaml.j2", app=bundle.app,
                                             namespace=namespace, resources=resources).encode()
    return files


def _labels(bundle: Bundle, name: str, role: str, device: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": k8s_name(bundle.app),
            "app.kubernetes.io/managed-by": "edgeflow", "edgeflow.io/role": role,
            "edgeflow.io/device": k8s_name(device)}


def _compose(bundle: Bundle, artefacts: dict[Any, Any]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for b in bundle.brokers.values():
        folder = f"compose/{k8s_name(b.device)}"
        units = [c for c in bundle.units() if c.device == b.device]
        views = [{"name": c.name, "secret": c.name} for c in units]
        for c in units:
            files[f"{folder}/{c.name}.json"] = _unit_config(bundle, c, "compose",
                                                            artefacts).encode()
        files[f"{folder}/compose.yaml"] = render(
            "compose/compose.yaml.j2", app=bundle.app, device=b.device, tier=b.tier,
            project=k8s_name(bundle.app, b.device), units=views, mqtt_dir=f"../../mqtt/{b.name}",
            broker_secret=b.name, broker_image=BROKER_IMAGE,
            worker_image=WORKER_IMAGE).encode()
    return files


def bundle_files(program: ir.Program, plan: dict[str, Any], problem: Problem, target: str,
                 source: str) -> dict[str, bytes]:
    """Every file of the bundle, by relative path."""
    if target not in TARGETS:
        raise BundleError(f"unknown target `{target}` (one of {', '.join(TARGETS)})")
    bundle = build_bundle(program, plan)
    artefacts = build_artefacts(program, plan)
    files: dict[str, bytes] = {"plan.json": (json.dumps(plan, indent=2) + "\n").encode()}
    files["report.md"] = render_report(bundle, target, source).encode()
    for art in artefacts.values():
        files[art.path] = art.data
    if artefacts:
        files["models/manifest.json"] = manifest(program, artefacts)
    for b in bundle.brokers.values():
        files[f"mqtt/{b.name}/mosquitto.conf"] = render_conf(bundle, b).encode()
        files[f"mqtt/{b.name}/edgeflow.acl"] = render_acl(b).encode()
    files.update(_k8s(bundle, problem, artefacts) if target == "k8s" else
                 _compose(bundle, artefacts))
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
        raise BundleError(f"cannot write {exc.filename or out}: {exc.strerror or exc}") from None


def _write_bundle(out: Path, files: dict[str, bytes], force: bool) -> None:
    previous: list[str] = []
    if out.exists():
        if not out.is_dir():
            raise BundleError(f"{out} exists and is not a folder")
        marker = out / MARKER
        if marker.is_file():
            try:
                previous = json.loads(marker.read_text())["files"]
            except (ValueError, KeyError, TypeError):
                previous = []
        present = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
        foreign = sorted(present - set(previous) - {MARKER})
        if foreign and not force:
            raise BundleError(f"{out} holds files edgeflow did not generate ({foreign[0]}"
                              + (f" and {len(foreign) - 1} more" if len(foreign) > 1 else "")
                              + "); choose another folder with -o, or pass --force to write "
                                "beside them")
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
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.",
                                         delete=False) as f:
            f.write(data)
        os.chmod(f.name, 0o644)
        os.replace(f.name, path)
    for rel in set(previous) - set(files):  # edgeflow's own files from an older bundle
        (out / rel).unlink(missing_ok=True)
