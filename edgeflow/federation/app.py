"""edgeflow's Flower app: `server_app` and `client_app` (Flower's Message API), the same on this
machine (`edgeflow train`) and in a deployment.

Everything comes from the spec file (`edgeflow.federation.specfile`) whose path is the run
config's `spec`, and from each SuperNode's node config:

- `instance=<i>`: a client, index i among all clients (`ClientSpec.instance`). It trains with
  the user's `trainer` on `samples(i, count)` (count: all clients), its config the spec's
  `config` with `seed` = the round (and `proximal_mu` with fedprox: the trainer adds the
  proximal term), and evaluates on its held-out records; records never leave it, only the
  trainable weights and a few metrics.
- `site=<k>`: the SuperNode of site k's aggregator in the top federation (with a `top` only).
  Asked to train or evaluate, it runs one round of its site's federation from the weights it
  received: a run on the site's SuperLink (`superlinks` in the spec file) with the run config
  `site=k`, `task`, `round`, and `weights`/`result`, file paths under
  `work_dir/federation/relays/` (the site's ServerApp and this ClientApp share the site
  aggregator's file system), and answers with the site's aggregate.

The spec file, the model and the code it names must be at the same paths on every node (the
run config is the run's, not a node's); only the ServerApps write, under `work_dir`, and a site
aggregator's ClientApp under `work_dir/federation/relays/`.

The ServerApp run with only `spec` is the federation: the initial evaluation and `rounds`
rounds of training and evaluation on every client (or every site), a version of the model
after each round in `work_dir/versions/` with `manifest.json`, and progress as JSON lines in
`work_dir/federation/progress.jsonl`. Run with `site=k`, it is one round of site k for its
aggregator's ClientApp. The strategy runs at the sites with central differential privacy
(`DifferentialPrivacyServerSideFixedClipping`, uniform weights); the top tier averages the
sites' aggregates by their examples. The clients a round samples are the same from run to run
(`sampling_seed`, nodes ordered by the spec file's `nodes`), except with differential privacy.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import math
import os
import random
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from logging import INFO
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    Strategy,
)
from flwr.supercore import log

from edgeflow.federation import MEAN_STRATEGIES, ClientSpec, FederationSpec, specfile
from edgeflow.federation import model as mdl
from edgeflow.federation.privacy import Accountant
from edgeflow.train import newest_version

CLIENT_TIMEOUT_S = 900.0   # a client's training or evaluation
SITE_TIMEOUT_S = 1800.0    # a site's round, for the top tier
NODES_TIMEOUT_S = 300.0    # until every node of a federation is connected
ACCOUNTING_WAIT_S = 60.0   # for a round's epsilon, after the round

server_app = ServerApp()
client_app = ClientApp()


# ================================================================ shared

def federation_dir(spec: FederationSpec) -> Path:
    return spec.work_dir / "federation"


@functools.lru_cache(maxsize=4)
def _spec(path: str) -> specfile.SpecFile:
    return specfile.read(Path(path))


@functools.lru_cache(maxsize=2)
def _model(path: Path) -> tuple[Any, dict[str, np.ndarray]]:
    m = mdl.load(path)
    return m, mdl.initializers(m)


def _arrays(record: ArrayRecord, trainable: tuple[str, ...],
            like: Mapping[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    """The trainable arrays of a record, checked against `like` (names, shapes, dtypes)."""
    got = set(record.keys())
    if got != set(trainable):
        raise RuntimeError(f"{what} carries {sorted(got)}, not the trainable {list(trainable)}")
    out = {}
    for name in trainable:
        array = record[name].numpy()
        if array.shape != like[name].shape or array.dtype != like[name].dtype:
            raise RuntimeError(f"{what}: `{name}` is {array.dtype}{list(array.shape)}, the model's "
                               f"is {like[name].dtype}{list(like[name].shape)}")
        out[name] = array
    return out


def _record(arrays: Mapping[str, np.ndarray], trainable: tuple[str, ...]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(arrays[name])) for name in trainable})


def _round_of(msg: Message) -> int:
    config = msg.content.config_records.get("config")
    value = config.get("server-round", 0) if config is not None else 0
    return int(value) if isinstance(value, (int, float)) else 0


def _savez(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    save: Any = np.savez
    save(path, **arrays)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


# ================================================================ strategies

def site_strategy(spec: FederationSpec, clients: int) -> Strategy:
    """The declared strategy over one site's `clients`: `min_clients` of them sampled for each
    round's training, all of them evaluated; with differential privacy, the updates are clipped
    and noised (uniform weights, as the noise assumes)."""
    m = min(spec.min_clients, clients)
    params = spec.strategy_params
    common: dict[str, Any] = {
        "fraction_train": m / clients, "fraction_evaluate": 1.0, "min_train_nodes": m,
        "min_evaluate_nodes": clients, "min_available_nodes": clients,
        "weighted_by_key": "unit" if spec.dp is not None else "num-examples"}
    strategy: Strategy
    if spec.strategy == "fedavg":
        strategy = FedAvg(**common)
    elif spec.strategy == "fedprox":
        strategy = FedProx(**common, proximal_mu=float(params.get("mu", 0.01)))
    elif spec.strategy == "fedmedian":
        strategy = FedMedian(**common)
    elif spec.strategy == "trimmed_mean":
        strategy = FedTrimmedAvg(**common, beta=float(params.get("beta", 0.2)))
    elif spec.strategy == "krum":
        strategy = Krum(**common, num_malicious_nodes=int(params.get("byzantine", 1)))
    else:
        raise RuntimeError(f"unknown strategy `{spec.strategy}`")
    if spec.dp is None:
        return strategy
    if spec.strategy not in MEAN_STRATEGIES:
        raise RuntimeError(f"differential privacy needs a mean aggregation, not {spec.strategy}")
    return DifferentialPrivacyServerSideFixedClipping(
        strategy, noise_multiplier=spec.dp.noise, clipping_norm=spec.dp.clip,
        num_sampled_clients=m)


def top_strategy(sites: int) -> Strategy:
    """The top tier: every site's aggregate, averaged by the examples behind it."""
    return FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=sites,
                  min_evaluate_nodes=sites, min_available_nodes=sites)


# ================================================================ server side

def _reason(text: str | None, names: set[str]) -> tuple[str, str]:
    """A Flower error reason `<class 'T'>:<'message'>` as (node, problem) when this ClientApp
    raised it (its messages start with the node's name), else ("", `T: message`)."""
    text = text or "no reason given"
    m = re.fullmatch(r"<class '([^']+)'>:<'(.*)'>", text, re.DOTALL)
    if not m:
        return "", text
    kind, message = m.group(1).rsplit(".", 1)[-1], m.group(2)
    who, sep, problem = message.partition(": ")
    if sep and who in names:
        return who, problem
    return "", message if kind == "RuntimeError" else f"{kind}: {message}"


def _exchange(grid: Grid, messages: list[Message], timeout: float, what: str,
              names: set[str]) -> list[Message]:
    """Send `messages`, wait for every reply; RuntimeError says what failed, on which of the
    nodes `names` (a ClientApp's error starts with its node's name)."""
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    by_problem: dict[str, list[str]] = {}
    for reply in replies:
        if reply.has_error():  # "client: problem" from this ClientApp, else Flower's reason
            who, problem = _reason(reply.error.reason, names)
            by_problem.setdefault(problem, []).append(who)
    if by_problem:
        raise RuntimeError(f"{what}: " + "; ".join(
            (", ".join(sorted(w for w in who if w)) + ": " if any(who) else "") + problem
            for problem, who in sorted(by_problem.items())))
    if len(replies) < len(messages):
        raise RuntimeError(f"{what}: {len(messages) - len(replies)} of {len(messages)} nodes "
                           f"did not answer within {timeout:.0f} s")
    return replies


def _names(spec: FederationSpec) -> set[str]:
    return {c.name for s in spec.sites for c in s.clients} | {s.aggregator for s in spec.sites}


def _metric(reply: Message, key: str) -> float:
    record = reply.content.metric_records.get("metrics")
    value = record.get(key) if record is not None else None
    if not isinstance(value, (int, float)):
        raise TypeError(f"a reply lacks the metric `{key}`")
    return float(value)


class _OrderedGrid:
    """A Grid whose `get_node_ids` lists the nodes in a fixed order (by `order`, then by id),
    so the strategy's sampling (`random.sample` of that list) picks the same clients for the
    same seed whatever ids the SuperLink drew."""

    def __init__(self, grid: Grid, order: Mapping[int, int]) -> None:
        self._grid = grid
        self._order = dict(order)

    def get_node_ids(self) -> list[int]:
        return sorted(self._grid.get_node_ids(),
                      key=lambda n: (0, self._order[n], n) if n in self._order else (1, 0, n))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def ordered(grid: Grid, order: Mapping[int, int]) -> Grid:
    """`grid` with its node ids listed in `order` (node id -> position)."""
    return grid if not order else cast(Grid, _OrderedGrid(grid, order))


def sampling_seed(spec: FederationSpec, aggregator: str, rnd: int) -> None:
    """Seed the clients' sampling of a round (`random`, which Flower's strategies draw from):
    deterministic per aggregator and round, except with differential privacy, whose
    subsampling amplification (q = sampled / clients in the accounting) assumes a draw
    nobody can predict, so it stays seeded by the OS."""
    if spec.dp is None:
        random.seed(f"edgeflow sampling {aggregator} round {rnd}")
    else:
        random.seed()


def train_round(grid: Grid, strategy: Strategy, spec: FederationSpec,
                arrays: dict[str, np.ndarray], rnd: int, timeout: float,
                aggregator: str) -> tuple[dict[str, np.ndarray], float, int]:
    """One round of training by `aggregator`'s nodes: the new trainable arrays, the mean
    training loss (by examples) and the examples trained on."""
    sampling_seed(spec, aggregator, rnd)
    messages = list(strategy.configure_train(rnd, _record(arrays, spec.trainable),
                                             ConfigRecord(), grid))
    replies = _exchange(grid, messages, timeout, f"training round {rnd}", _names(spec))
    for reply in replies:  # the trainable order, which the clipping relies on
        got = _arrays(reply.content.array_records["arrays"], spec.trainable, arrays,
                      "an update")
        reply.content["arrays"] = _record(got, spec.trainable)
    aggregated, _ = strategy.aggregate_train(rnd, replies)
    if aggregated is None:
        raise RuntimeError(f"training round {rnd}: the strategy aggregated nothing")
    new = {name: np.asarray(aggregated[name].numpy(), dtype=arrays[name].dtype)
           .reshape(arrays[name].shape) for name in spec.trainable}
    counts = [_metric(r, "num-examples") for r in replies]
    losses = [_metric(r, "train-loss") for r in replies]
    total = sum(counts)
    loss = sum(c * v for c, v in zip(counts, losses, strict=True)) / total if total else 0.0
    return new, loss, int(total)


def evaluate_round(grid: Grid, strategy: Strategy, spec: FederationSpec,
                   arrays: dict[str, np.ndarray], rnd: int,
                   timeout: float) -> mdl.Evaluation:
    """The held-out evaluation of `arrays` on every node, summed."""
    messages = list(strategy.configure_evaluate(rnd, _record(arrays, spec.trainable),
                                                ConfigRecord(), grid))
    replies = _exchange(grid, messages, timeout, f"evaluation of round {rnd}", _names(spec))
    return mdl.Evaluation(sum(_metric(r, "loss-sum") for r in replies),
                          int(sum(_metric(r, "correct") for r in replies)),
                          int(sum(_metric(r, "num-examples") for r in replies)))


def _wait_for_nodes(grid: Grid, count: int, what: str) -> None:
    deadline = time.monotonic() + NODES_TIMEOUT_S
    while len(list(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            have = len(list(grid.get_node_ids()))
            raise RuntimeError(f"{what}: {have} of {count} nodes connected after "
                               f"{NODES_TIMEOUT_S:.0f} s")
        time.sleep(0.2)


class Progress:
    """The federation's progress, one JSON object a line, for whoever started it."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def write(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "time": time.time(), **fields})
        with self.path.open("a") as f:
            f.write(line + "\n")
            f.flush()
        log(INFO, "edgeflow: %s", line)


@contextlib.contextmanager
def _logged(path: Path) -> Iterator[None]:
    """Flower's log of this ServerApp (which Flower keeps from its SuperLink's output) also
    in `path`, with the traceback of what it raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("flwr")
    logger.addHandler(handler)
    try:
        yield
    except BaseException:
        logger.error("the ServerApp raised:\n%s", traceback.format_exc())
        raise
    finally:
        logger.removeHandler(handler)
        handler.close()


def _arrays_of(inits: Mapping[str, np.ndarray], trainable: tuple[str, ...],
               where: Path) -> dict[str, np.ndarray]:
    """The trainable weights of a model version, which must hold every one of them."""
    missing = [name for name in trainable if name not in inits]
    if missing:
        raise RuntimeError(f"{where} has no initializer `{missing[0]}`: it is not a version of "
                           "this model")
    return {name: np.array(inits[name]) for name in trainable}


def _per_round(ev: mdl.Evaluation) -> tuple[float, float]:
    if ev.count == 0:
        raise RuntimeError("no held-out examples on any client")
    return ev.loss_sum / ev.count, ev.correct / ev.count


def run_federation(grid: Grid, sf: specfile.SpecFile) -> None:
    """The whole federation: the initial evaluation and every round."""
    spec = sf.spec
    progress = Progress(federation_dir(spec) / "progress.jsonl")
    accountant: Accountant | None = None
    try:
        base, inits = _model(spec.model)
        mdl.check_trainable(base, spec.trainable)
        arrays = {name: np.array(inits[name]) for name in spec.trainable}
        start_file = spec.model
        if spec.resume and (newest := newest_version(spec.work_dir, spec.name())) is not None:
            _, resumed = _model(newest)
            arrays = _arrays_of(resumed, spec.trainable, newest)
            progress.write("note", text=f"continuing from {newest.name}")
            start_file = newest
        # the rounds that made the starting version trained on the same clients' data: the
        # privacy budget composes over them and this run's
        before = mdl.rounds_before(spec.work_dir / "versions", spec.name(), start_file)
        aggregator = spec.top or spec.sites[0].aggregator
        grid = ordered(grid, sf.order(aggregator))
        if spec.top is None:
            site = spec.sites[0]
            nodes, strategy, timeout = len(site.clients), site_strategy(spec, len(site.clients)), \
                CLIENT_TIMEOUT_S
            what = f"{site.aggregator}'s federation"
        else:
            nodes, strategy, timeout = len(spec.sites), top_strategy(len(spec.sites)), \
                SITE_TIMEOUT_S + 300.0  # beyond a site aggregator's own wait for its round
            what = f"{spec.top}'s federation of sites"
        if spec.dp is not None:
            accountant = Accountant(
                [(spec.dp.noise, min(spec.min_clients, len(s.clients)) / len(s.clients))
                 for s in spec.sites], before + spec.rounds, spec.dp.delta)
            if before:
                progress.write("note", text=f"the privacy budget counts the {before} earlier "
                                            "round(s) that made the starting version")
        _wait_for_nodes(grid, nodes, what)
        progress.write("note", text=f"{what}: {nodes} nodes connected")
        start = time.time()
        loss, accuracy = _per_round(evaluate_round(grid, strategy, spec, arrays, 0, timeout))
        progress.write("initial", test_loss=loss, test_accuracy=accuracy, t_start=start,
                       t_end=time.time())
        stem, noted = spec.name(), False
        for rnd in range(1, spec.rounds + 1):
            start = time.time()
            arrays, train_loss, _ = train_round(grid, strategy, spec, arrays, rnd, timeout,
                                                aggregator)
            loss, accuracy = _per_round(evaluate_round(grid, strategy, spec, arrays, rnd,
                                                       timeout))
            end = time.time()
            epsilon = None
            if accountant is not None:
                epsilon = accountant.epsilon(before + rnd, ACCOUNTING_WAIT_S)
                if accountant.note and not noted:
                    noted = True
                    progress.write("note", text=accountant.note)
            version = mdl.write_version(spec.work_dir / "versions", stem, base, arrays,
                                        round=rnd, test_loss=loss, test_accuracy=accuracy,
                                        epsilon=epsilon)
            progress.write("round", round=rnd, t_start=start, t_end=end,
                           train_loss=train_loss, test_loss=loss, test_accuracy=accuracy,
                           epsilon=None if epsilon is None or math.isinf(epsilon) else epsilon,
                           epsilon_infinite=epsilon is not None and math.isinf(epsilon),
                           version=version.version, model_file=str(version.file))
        progress.write("done")
    except Exception as e:
        progress.write("error", message=str(e) or type(e).__name__)
        raise
    finally:
        if accountant is not None:
            accountant.close()


def run_site_round(grid: Grid, sf: specfile.SpecFile, k: int, task: str, rnd: int,
                   weights: Path, result: Path) -> None:
    """One round of site `k` for its aggregator's ClientApp: training from the arrays in
    `weights` (the aggregate to `result`.npz) or evaluation; figures or the error in `result`."""
    spec = sf.spec
    try:
        if not 0 <= k < len(spec.sites):
            raise RuntimeError(f"the spec has no site {k}")
        site = spec.sites[k]
        _, inits = _model(spec.model)
        like = {name: inits[name] for name in spec.trainable}
        with np.load(weights) as data:
            arrays = {name: np.asarray(data[name]) for name in spec.trainable}
        for name, array in arrays.items():
            if array.shape != like[name].shape or array.dtype != like[name].dtype:
                raise RuntimeError(f"the weights for site {site.aggregator} do not fit `{name}`")
        strategy = site_strategy(spec, len(site.clients))
        grid = ordered(grid, sf.order(site.aggregator))
        _wait_for_nodes(grid, len(site.clients), f"{site.aggregator}'s federation")
        if task == "train":
            new, loss, count = train_round(grid, strategy, spec, arrays, rnd, CLIENT_TIMEOUT_S,
                                           site.aggregator)
            out = result.with_suffix(".npz")
            tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.npz")
            _savez(tmp, new)
            os.replace(tmp, out)
            _write_json(result, {"train-loss": loss, "num-examples": count,
                                 "arrays": out.name})
        elif task == "evaluate":
            ev = evaluate_round(grid, strategy, spec, arrays, rnd, CLIENT_TIMEOUT_S)
            _write_json(result, {"loss-sum": ev.loss_sum, "correct": ev.correct,
                                 "num-examples": ev.count})
        else:
            raise RuntimeError(f"unknown site task `{task}`")
    except Exception as e:
        _write_json(result, {"error": str(e) or type(e).__name__})
        raise


@server_app.main()
def _server_main(grid: Grid, context: Context) -> None:
    config = context.run_config
    sf = _spec(str(config["spec"]))
    site = int(str(config.get("site", -1)))
    logs = federation_dir(sf.spec) / "logs"
    if site < 0:
        with _logged(logs / "serverapp.log"):
            run_federation(grid, sf)
    else:
        task, rnd = str(config["task"]), int(str(config["round"]))
        name = specfile.safe_name(sf.spec.sites[site].aggregator) \
            if 0 <= site < len(sf.spec.sites) else f"site{site}"
        with _logged(logs / f"serverapp-{name}-round{rnd}-{task}.log"):
            run_site_round(grid, sf, site, task, rnd, Path(str(config["weights"])),
                           Path(str(config["result"])))


# ================================================================ client side

def _function(ref: str, code_root: Path, what: str) -> Callable[..., Any]:
    module, _, name = ref.partition(":")
    root = str(code_root)
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        fn = getattr(importlib.import_module(module), name)
    except Exception as e:  # noqa: BLE001  (the user's module failing to import)
        raise RuntimeError(f"cannot load {what} `{ref}`: {type(e).__name__}: {e}") from None
    if not callable(fn):
        raise TypeError(f"{what} `{ref}` is not a function")
    return fn  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=2)
def _samples(spec_path: str, instance: int) -> dict[str, np.ndarray]:
    spec = _spec(spec_path).spec
    fn = _function(spec.samples, spec.code_root, "samples")
    try:
        data = fn(instance, len(spec.clients()))
    except Exception as e:
        raise RuntimeError(f"`{spec.samples}`({instance}, ...) raised {type(e).__name__}: {e}")\
            from e
    if not isinstance(data, Mapping):
        raise TypeError(f"`{spec.samples}` returned {type(data).__name__}, not a dict")
    out: dict[str, np.ndarray] = {}
    for key in ("x_train", "y_train", "x_test", "y_test"):
        if key not in data:
            raise RuntimeError(f"`{spec.samples}` returned no `{key}`")
        out[key] = np.asarray(data[key])
    for part in ("train", "test"):
        x, y = out[f"x_{part}"], out[f"y_{part}"]
        if x.ndim == 0 or y.ndim != 1 or len(x) != len(y):
            raise RuntimeError(f"`{spec.samples}`: x_{part} {list(x.shape)} and y_{part} "
                               f"{list(y.shape)} are not records and their class ids")
        if not np.issubdtype(y.dtype, np.integer):
            raise RuntimeError(f"`{spec.samples}`: y_{part} is {y.dtype}, not class ids")
    for array in out.values():
        array.flags.writeable = False
    return out


def _client(spec: FederationSpec, context: Context) -> ClientSpec:
    instance = int(str(context.node_config["instance"]))
    for c in spec.clients():
        if c.instance == instance:
            return c
    raise RuntimeError(f"the spec has no client instance {instance}")


def _client_train(msg: Message, context: Context, spec_path: str) -> Message:
    spec = _spec(spec_path).spec
    me = _client(spec, context)
    rnd = _round_of(msg)
    _, inits = _model(spec.model)
    current = _arrays(msg.content.array_records["arrays"], spec.trainable, inits,
                      f"{me.name}: the model received")
    weights = {**inits, **current}
    for array in weights.values():
        array.flags.writeable = False
    data = _samples(spec_path, me.instance)
    config: dict[str, Any] = {**spec.config, "seed": rnd}
    msg_config = msg.content.config_records.get("config")
    if msg_config is not None and "proximal-mu" in msg_config:
        config["proximal_mu"] = msg_config["proximal-mu"]
    trainer = _function(spec.trainer, spec.code_root, "trainer")
    try:
        out = trainer(weights, data["x_train"], data["y_train"], config)
    except Exception as e:
        raise RuntimeError(f"{me.name}: the trainer `{spec.trainer}` raised "
                           f"{type(e).__name__}: {e}") from e
    trained, loss = _check_trained(spec, me, out, inits)
    reply = RecordDict({"arrays": _record(trained, spec.trainable),
                        "metrics": MetricRecord({"num-examples": len(data["y_train"]),
                                                 "train-loss": loss, "unit": 1})})
    return Message(reply, reply_to=msg)


def _check_trained(spec: FederationSpec, me: ClientSpec, out: Any,
                   inits: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
    """The trainer's (arrays, loss), or RuntimeError saying what is wrong with them."""
    who = f"{me.name}: the trainer `{spec.trainer}`"
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], Mapping)):
        raise RuntimeError(f"{who} returned {type(out).__name__}, not (dict of arrays, loss)")
    arrays, loss = out
    names = set(arrays)
    if names != set(spec.trainable):
        missing = sorted(set(spec.trainable) - names)
        extra = sorted(str(n) for n in names - set(spec.trainable))
        raise RuntimeError(f"{who} returned the wrong arrays: "
                           + "; ".join(p for p in (f"missing {missing}" if missing else "",
                                                   f"not trainable {extra}" if extra else "")
                                       if p))
    trained: dict[str, np.ndarray] = {}
    for name in spec.trainable:
        array, want = arrays[name], inits[name]
        if not isinstance(array, np.ndarray):
            raise TypeError(f"{who} returned {type(array).__name__} for `{name}`, not a "
                               "numpy array")
        if array.shape != want.shape:
            raise RuntimeError(f"{who} returned `{name}` of shape {list(array.shape)}, the "
                               f"model's is {list(want.shape)}")
        if array.dtype != want.dtype:
            raise RuntimeError(f"{who} returned `{name}` as {array.dtype}, the model's is "
                               f"{want.dtype}")
        if not np.all(np.isfinite(array)):
            raise RuntimeError(f"{who} returned `{name}` with NaN or infinite values")
        trained[name] = array
    try:
        value = float(loss)
    except (TypeError, ValueError):
        raise RuntimeError(f"{who} returned a loss of {type(loss).__name__}, not a number") \
            from None
    if not math.isfinite(value):
        raise RuntimeError(f"{who} returned a loss of {value}")
    return trained, value


def _client_evaluate(msg: Message, context: Context, spec_path: str) -> Message:
    spec = _spec(spec_path).spec
    me = _client(spec, context)
    base, inits = _model(spec.model)
    current = _arrays(msg.content.array_records["arrays"], spec.trainable, inits,
                      f"{me.name}: the model received")
    data = _samples(spec_path, me.instance)
    try:
        ev = mdl.Evaluator(base, spec.output_is_probabilities)(current, data["x_test"],
                                                                data["y_test"])
    except Exception as e:
        raise RuntimeError(f"{me.name}: evaluating the model failed: {type(e).__name__}: {e}") \
            from e
    metrics = MetricRecord({"num-examples": ev.count, "loss-sum": ev.loss_sum,
                            "correct": ev.correct,
                            "test-loss": ev.loss_sum / ev.count if ev.count else 0.0,
                            "test-accuracy": ev.correct / ev.count if ev.count else 0.0})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def _site_relay(msg: Message, context: Context, spec_path: str, task: str) -> Message:
    """The site aggregator's node in the top federation: one round of its site."""
    from edgeflow.federation import control

    sf = _spec(spec_path)
    spec = sf.spec
    k = int(str(context.node_config["site"]))
    if not 0 <= k < len(spec.sites):
        raise RuntimeError(f"the spec has no site {k}")
    site = spec.sites[k]
    if site.aggregator not in sf.superlinks:
        raise RuntimeError(f"the spec names no SuperLink of {site.aggregator}")
    _, inits = _model(spec.model)
    arrays = _arrays(msg.content.array_records["arrays"], spec.trainable, inits,
                     f"{site.aggregator}: the model received")
    rnd = _round_of(msg)
    folder = federation_dir(spec) / "relays" / specfile.safe_name(site.aggregator)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"round{rnd}-{task}-in.npz"
    result = folder / f"round{rnd}-{task}-out.json"
    for stale in (result, result.with_suffix(".npz")):
        stale.unlink(missing_ok=True)
    _savez(weights, arrays)
    link = sf.superlinks[site.aggregator]
    c = control.client(link.address, link.root_certificates)
    try:
        run_id = control.start_run(c, {"spec": str(sf.path), "site": k, "task": task,
                                       "round": rnd, "weights": str(weights),
                                       "result": str(result)})
        status = control.wait_for_run(c, run_id, SITE_TIMEOUT_S, 0.3)
        if status is None:
            raise RuntimeError(f"{site.aggregator}: its round {rnd} ({task}) took over "
                               f"{SITE_TIMEOUT_S:.0f} s")
    finally:
        c.close()
    if not result.is_file():
        raise RuntimeError(f"{site.aggregator}: its round {rnd} ({task}) ended "
                           f"{status[1] or status[0]} without a result {status[2]}".rstrip())
    out = json.loads(result.read_text())
    if "error" in out:
        raise RuntimeError(f"{site.aggregator}: {out['error']}")
    if task == "evaluate":
        metrics = MetricRecord({"num-examples": int(out["num-examples"]),
                                "loss-sum": float(out["loss-sum"]),
                                "correct": int(out["correct"])})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)
    with np.load(folder / str(out["arrays"])) as data:
        trained = {name: np.asarray(data[name]) for name in spec.trainable}
    reply = RecordDict({"arrays": _record(trained, spec.trainable),
                        "metrics": MetricRecord({"num-examples": int(out["num-examples"]),
                                                 "train-loss": float(out["train-loss"]),
                                                 "unit": 1})})
    return Message(reply, reply_to=msg)


def _answer(msg: Message, context: Context, task: str) -> Message:
    """A client's or a site aggregator's answer; what goes wrong is raised as one line that
    starts with the node's name (the ServerApp groups the failures by it)."""
    spec_path = str(context.run_config["spec"])
    who = "this node"
    try:
        spec = _spec(spec_path).spec
        if "site" in context.node_config:
            k = int(str(context.node_config["site"]))
            who = spec.sites[k].aggregator if 0 <= k < len(spec.sites) else f"site {k}"
            return _site_relay(msg, context, spec_path, task)
        who = _client(spec, context).name
        if task == "train":
            return _client_train(msg, context, spec_path)
        return _client_evaluate(msg, context, spec_path)
    except Exception as e:
        text = str(e) or type(e).__name__
        if text.startswith(f"{who}: "):
            raise
        kind = "" if isinstance(e, RuntimeError) else f"{type(e).__name__}: "
        raise RuntimeError(f"{who}: {kind}{text}") from e


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    return _answer(msg, context, "train")


@client_app.evaluate()
def _evaluate(msg: Message, context: Context) -> Message:
    return _answer(msg, context, "evaluate")
