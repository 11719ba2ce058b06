"""`edgeflow train`: a declared federated training run on this machine with real Flower
processes (docs/training.md): one SuperLink per aggregator instance, one SuperNode per client
instance, the aggregation hierarchy as declared, over TLS with authenticated SuperNodes.

The output folder holds everything the run made and nothing else is touched: `versions/` (every
model version trained, content-addressed, and `manifest.json`; kept from run to run, so a second
run continues from the newest version), `federation/` (the run's PKI, Flower's state and each
process's log; replaced by every run) and `train.json` (this run's figures).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeflow import ir
from edgeflow.semantics.training import sites

if TYPE_CHECKING:
    from edgeflow.federation import FederationSpec, RoundResult

MARKER = ".edgeflow-train"
ACCOUNTANT = "prv-accountant (privacy random variables; the upper bound of its estimate)"


class TrainError(Exception):
    """Why the training could not run (E1401), with a hint where one helps; every process
    already started is stopped."""

    def __init__(self, message: str, help: str | None = None) -> None:
        super().__init__(message)
        self.help = help


@dataclass(frozen=True)
class Options:
    out: Path
    rounds: int | None = None  # `--rounds`: else the training's `rounds`
    fresh: bool = False        # `--fresh`: start from the declared model, not the newest version


def pick(program: ir.Program, name: str | None) -> ir.Training:
    """The training named, or the app's only one."""
    if name is not None:
        if name not in program.trainings:
            known = ", ".join(program.trainings) or "none"
            raise TrainError(f"the app declares no training `{name}` (its trainings: {known})")
        return program.trainings[name]
    if len(program.trainings) != 1:
        raise TrainError("the app declares no training" if not program.trainings else
                         "the app declares several trainings: name one with --training",
                         help="declare one with a `training` block (docs/training.md)"
                         if not program.trainings else None)
    return next(iter(program.trainings.values()))


def prepare_output(out: Path) -> None:
    """`out` is new, empty, or an earlier `edgeflow train` output (its marker says so); only
    `federation/` is replaced, `versions/` is kept."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise TrainError(f"{out} is not a folder")
    if out.exists() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise TrainError(f"{out} holds files that `edgeflow train` did not write",
                         help="name an empty or new folder with -o")
    out.mkdir(parents=True, exist_ok=True)
    work = out / "federation"
    if work.is_symlink() or work.is_file():
        work.unlink()
    elif work.is_dir():
        shutil.rmtree(work)
    (out / MARKER).write_text("edgeflow train output\n")


def newest_version(out: Path, model: str) -> Path | None:
    """The newest version of `model` in the output's manifest, if its file is there."""
    manifest = out / "versions" / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        entries = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    mine = [e for e in entries if isinstance(e, dict) and e.get("model") == model]
    if not mine:
        return None
    file = str(mine[-1].get("file", ""))
    if not file or Path(file).name != file:  # a name in the folder, never a path out of it
        return None
    path = manifest.parent / file
    return path if path.is_file() else None


def federation_spec(program: ir.Program, t: ir.Training, *, model: Path, code_root: Path,
                    work_dir: Path, rounds: int | None = None,
                    resume: bool = False) -> FederationSpec:
    """The federation of training `t`, starting from the model file `model`, the user's code
    under `code_root`, writing under `work_dir`: for `edgeflow train`, or (with the paths
    inside the containers) for a deployment (edgeflow.emit.training)."""
    from edgeflow.federation import ClientSpec, DPSpec, FederationSpec, SiteSpec

    clients = program.devices[t.clients]
    first = program.devices[t.aggregate[0]]
    found = sites(clients, first)
    assert found is not None  # E1307 otherwise
    index = {name: i for i, name in enumerate(clients.instances())}
    graph_outputs = _ends_in_softmax(Path(program.models[t.model].source))
    return FederationSpec(
        model=model, trainable=t.trainable, samples=t.samples, trainer=t.trainer,
        code_root=code_root,
        config={**t.config, "epochs": t.epochs, "batch": t.batch},
        sites=tuple(SiteSpec(s.aggregator, tuple(ClientSpec(c, index[c]) for c in s.clients))
                    for s in found),
        top=t.aggregate[1] if len(t.aggregate) == 2 else None,
        rounds=rounds or t.rounds,
        min_clients=t.min_clients or len(found[0].clients),
        strategy=t.strategy.name, strategy_params=dict(t.strategy.params),
        dp=None if t.dp is None else DPSpec(t.dp.clip, t.dp.noise, t.dp.delta),
        output_is_probabilities=graph_outputs, work_dir=work_dir,
        model_name=t.model, resume=resume)


def _ends_in_softmax(path: Path) -> bool:
    """Whether the model's first output is made by a Softmax: its values are probabilities."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    first = graph.output[0].name
    return any(n.op_type == "Softmax" and first in n.output for n in graph.node)


def round_row(r: RoundResult) -> dict[str, Any]:
    """A round as train.json holds it (an epsilon the accountant could not compute is null)."""
    import math

    epsilon = r.epsilon if r.epsilon is None or math.isfinite(r.epsilon) else None
    return {"round": r.round, "seconds": round(r.seconds, 3),
            "train_loss": r.train_loss, "test_loss": r.test_loss,
            "test_accuracy": r.test_accuracy, "epsilon": epsilon,
            "epsilon_computed": r.epsilon is None or math.isfinite(r.epsilon),
            "version": r.version, "model_file": str(r.model_file),
            "link_bytes": dict(sorted(r.link_bytes.items()))}


def execute(program: ir.Program, t: ir.Training, app_file: Path, options: Options,
            on_event: Callable[[str], None], on_round: Callable[[dict[str, Any]], None],
            ) -> dict[str, Any]:
    """Run the federation; returns the report `train.json` holds."""
    for key in ("samples", "trainer"):
        module = getattr(t, key).partition(":")[0]
        from edgeflow.semantics.impl import module_file, search_path

        if module_file(module, search_path(app_file.resolve().parent)) is None:
            raise TrainError(f"module `{module}` of `{key}` not found beside "
                             f"{app_file} or on this Python's path")
    prepare_output(options.out)
    try:
        from edgeflow.federation import FederationError, require, run_federation

        require()
    except ImportError as e:
        raise TrainError(f"Flower is not installed ({e.name})",
                         help="install edgeflow with its training extra: "
                              "pip install 'edgeflow[train]'") from None
    model = program.models[t.model]
    start = None if options.fresh else newest_version(options.out, t.model)
    spec = federation_spec(program, t, model=start or Path(model.source),
                           code_root=app_file.resolve().parent, work_dir=options.out.resolve(),
                           rounds=options.rounds)
    try:
        result = run_federation(spec, on_event=on_event,
                                on_round=lambda r: on_round(round_row(r)))
    except FederationError as e:
        raise TrainError(str(e)) from None
    report = {
        "training": t.name, "model": t.model, "started_from": str(spec.model),
        "clients": sum(len(s.clients) for s in spec.sites),
        "sites": {s.aggregator: [c.name for c in s.clients] for s in spec.sites},
        "top": spec.top, "strategy": t.strategy.name,
        "dp": None if t.dp is None else {"clip": t.dp.clip, "noise": t.dp.noise,
                                         "delta": t.dp.delta, "accountant": ACCOUNTANT},
        "initial": {"test_loss": result.initial_loss,
                    "test_accuracy": result.initial_accuracy},
        "rounds": [round_row(r) for r in result.rounds],
        "manifest": str(result.manifest),
    }
    tmp = options.out / "train.json.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, options.out / "train.json")
    return report


def _kib(n: float) -> str:
    return f"{n / 1024:.1f} KiB" if n < 2**20 else f"{n / 2**20:.2f} MiB"


def link_summary(row: dict[str, Any]) -> dict[str, tuple[int, int, int]]:
    """A round's bytes by declared link (`hub <-> server`): (links, total bytes, most on one)."""
    out: dict[str, tuple[int, int, int]] = {}
    for key, nbytes in row["link_bytes"].items():
        a, _, b = key.partition("<->")
        kind = f"{a.split('[')[0]} <-> {b.split('[')[0]}"
        n, total, most = out.get(kind, (0, 0, 0))
        out[kind] = (n + 1, total + nbytes, max(most, nbytes))
    return out


def render(report: dict[str, Any]) -> str:
    lines = [f"training `{report['training']}` of `{report['model']}`: {report['clients']} "
             f"clients, {len(report['sites'])} site(s)"
             + (f", then `{report['top']}`" if report["top"] else "")
             + f", {report['strategy']}"]
    if report["dp"]:
        dp = report["dp"]
        lines.append(f"differential privacy: clip {dp['clip']:g}, noise {dp['noise']:g}; "
                     f"budget at delta {dp['delta']:g} by {dp['accountant']}")
    init = report["initial"]
    lines.append(f"{'round':>5}  {'seconds':>7}  {'train loss':>10}  {'test loss':>9}  "
                 f"{'accuracy':>8}  {'epsilon':>8}  version")
    lines.append(f"{0:>5}  {'':>7}  {'':>10}  {init['test_loss']:>9.4f}  "
                 f"{init['test_accuracy']:>8.3f}  {'':>8}  (start)")
    for row in report["rounds"]:
        eps = "" if row["epsilon"] is None else f"{row['epsilon']:.3g}"
        lines.append(f"{row['round']:>5}  {row['seconds']:>7.1f}  {row['train_loss']:>10.4f}  "
                     f"{row['test_loss']:>9.4f}  {row['test_accuracy']:>8.3f}  {eps:>8}  "
                     f"{row['version']}")
    if report["rounds"]:
        lines.append("bytes per round, both directions (links of each declaration: total, most "
                     "on one):")
        per: dict[str, list[tuple[int, int, int]]] = {}
        for row in report["rounds"]:
            for kind, figures in link_summary(row).items():
                per.setdefault(kind, []).append(figures)
        for kind, rows in per.items():
            cells = ", ".join(f"{_kib(total)} ({_kib(most)})" for _, total, most in rows)
            lines.append(f"  {kind} x{rows[0][0]}: {cells}")
    lines.append(f"versions: {report['manifest']}")
    return "\n".join(lines) + "\n"
