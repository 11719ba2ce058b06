"""The federated-learning engine of `edgeflow train` (docs/training.md): a real Flower federation
on this machine, every process on 127.0.0.1.

`run_federation(spec)` starts one SuperLink per aggregator instance (TLS with a throw-away CA,
SuperNode authentication with a key pair per SuperNode), one SuperNode per client, each reaching
its SuperLink through a byte-counting relay (`relay`), and runs edgeflow's Flower app
(`app.server_app`, `app.client_app`) on them; with a top aggregator every site is its own
federation and takes part in the top one as one node (`app`). It returns every round's held-out
loss and accuracy, the bytes each link carried and the privacy budget spent, and leaves each
round's model in `work_dir/versions/` with `manifest.json`. Every process it started is stopped
when it returns or raises.

The spec types here and `specfile` need neither Flower nor prv-accountant (`edgeflow compile`
writes a deployment's spec file with them); `require()` says whether the engine can run.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path


def require() -> None:
    """ImportError naming the first of Flower and prv-accountant that is not installed, without
    loading them."""
    for needed in ("flwr", "prv_accountant"):
        if importlib.util.find_spec(needed) is None:
            raise ImportError(f"No module named '{needed}'", name=needed)


STRATEGIES = ("fedavg", "fedprox", "fedmedian", "trimmed_mean", "krum")
MEAN_STRATEGIES = ("fedavg", "fedprox")  # the ones differential privacy's noise is calibrated for


class FederationError(Exception):
    """Why the federation could not run or finish, in one message (with the end of the failing
    process's log where there is one); every process it started is already stopped."""


@dataclass(frozen=True)
class ClientSpec:
    name: str      # the client instance, e.g. "bedside_hub[3]"
    instance: int  # its index among all clients: `samples(instance, count)`


@dataclass(frozen=True)
class SiteSpec:
    aggregator: str                  # the first-tier aggregator instance, e.g. "ward_server"
    clients: tuple[ClientSpec, ...]  # the clients it aggregates


@dataclass(frozen=True)
class DPSpec:
    clip: float   # every client's update is scaled to L2 norm at most `clip`
    noise: float  # noise multiplier z: Gaussian noise of std z * clip / (clients sampled)
    delta: float  # the budget is reported as epsilon at this delta


@dataclass(frozen=True)
class FederationSpec:
    model: Path                   # the ONNX model training starts from
    trainable: tuple[str, ...]    # its initializers trained and exchanged
    samples: str                  # "module:function": samples(instance, count) -> records
    trainer: str                  # "module:function": train(weights, x, y, config)
    code_root: Path               # first on sys.path to import `samples` and `trainer`
    config: Mapping[str, float | int | str]  # to the trainer, with "seed" = the round
    sites: tuple[SiteSpec, ...]   # first-tier aggregation: one federation each
    top: str | None               # the top aggregator if hierarchical, else exactly one site
    rounds: int
    min_clients: int              # clients sampled per round, per site
    strategy: str                 # one of STRATEGIES
    strategy_params: Mapping[str, float]  # fedprox: mu; trimmed_mean: beta; krum: byzantine
    dp: DPSpec | None
    output_is_probabilities: bool  # the first output is probabilities, else logits
    work_dir: Path                # everything is written under it: federation/, versions/
    # the model's name in versions/ (NAME-VERSION.onnx, the manifest's "model"); None: the
    # model file's stem, without a version suffix
    model_name: str | None = None
    # start from the newest version of the model in work_dir/versions/, if there is one (a
    # deployment's runs continue one another; `edgeflow train` picks its start itself)
    resume: bool = False

    def name(self) -> str:
        """The model's name in versions/ and the manifest."""
        if self.model_name:
            return self.model_name
        stem = self.model.stem
        head, _, tail = stem.rpartition("-")
        return head if head and len(tail) == 12 and all(c in "0123456789abcdef" for c in tail) \
            else stem

    def clients(self) -> tuple[ClientSpec, ...]:
        """Every client, in instance order."""
        return tuple(sorted((c for s in self.sites for c in s.clients),
                            key=lambda c: c.instance))


@dataclass(frozen=True)
class RoundResult:
    round: int
    seconds: float                # the round's wall time: training and evaluation
    train_loss: float             # the clients' mean training loss, by training examples
    test_loss: float              # held-out cross-entropy of the new model, by test examples
    test_accuracy: float
    link_bytes: Mapping[str, int]  # bytes carried both ways, "client<->aggregator"
    epsilon: float | None         # privacy spent so far at delta (inf: not computable)
    version: str                  # the first 12 hex digits of the model file's sha256
    model_file: Path


@dataclass(frozen=True)
class FederationResult:
    initial_loss: float
    initial_accuracy: float
    rounds: tuple[RoundResult, ...]
    manifest: Path


def _ignore(_: object) -> None:
    return None


def run_federation(spec: FederationSpec, on_event: Callable[[str], None] = _ignore,
                   on_round: Callable[[RoundResult], None] = _ignore) -> FederationResult:
    """Run the federation `spec` describes; `on_event` gets one-line progress notes,
    `on_round` every round's result as soon as it is known. Raises FederationError."""
    require()
    from edgeflow.federation.runner import run

    return run(spec, on_event, on_round)
