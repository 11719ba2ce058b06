"""Federated training (`training` blocks) and model rollout (`rollout`), read and checked.

The readers turn a block's values into IR (they are the schema's readers in `lower`); `check`
proves what a training needs before anything runs, from the declarations alone, never importing
the user's `samples` or `trainer`:

- the clients train on data that is on them (E1301) and on weights the model has (E1302);
- the aggregators form a hierarchy every client reaches (E1307);
- model updates reach only tiers every label of the data lets them reach (E1303), with the
  differential privacy a label requires (E1304);
- one round's updates fit every link in the round time (E1305), and the clients have the memory
  and compute to train (E1306).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import onnx

from edgeflow import ir
from edgeflow.dataflow import instance_graph
from edgeflow.diagnostics import DiagnosticSink, Label
from edgeflow.semantics.lowered import Lowered
from edgeflow.semantics.values import BAD, Reader, did_you_mean
from edgeflow.span import Span
from edgeflow.syntax import ast
from edgeflow.syntax.units import BANDWIDTH, TIME, express

FLOWER_NODE_MEMORY_BYTES = 505 * 2**20
"""What one Flower SuperNode with its ClientApp processes holds at its peak, besides the model's
training state: 420-505 MiB resident measured with flwr 1.42 on a 2-core machine (265 MB when
idle). Counted against a client's memory."""

TRAIN_WORK_FACTOR = 3.0
"""A training step's work per example, in forward passes: the forward pass and a backward pass
of about twice its work (the gradients of the activations and of the weights)."""

OPTIMIZER_COPIES = 3
"""Copies of the trainable weights a client holds besides the weights: gradients and two
moment estimates (Adam); plain SGD needs fewer, so this is an upper bound."""

STRATEGIES: dict[str, dict[str, tuple[float, float, bool]]] = {
    # parameter -> (lowest, highest, whole number)
    "fedavg": {}, "fedmedian": {},
    "fedprox": {"mu": (0.0, math.inf, False)},
    "trimmed_mean": {"beta": (0.0, 0.5, False)},
    "krum": {"byzantine": (0.0, 10_000.0, True)},
}
_STRATEGY_DEFAULTS = {"fedprox": {"mu": 0.01}, "trimmed_mean": {"beta": 0.2},
                      "krum": {"byzantine": 1.0}}
HEALTH_METRICS = ("latency_p50", "latency_p95", "latency_p99", "drops")


# ================================================================ readers

def _named(r: Reader, what: str, entries: tuple[ast.Entry | ast.Value, ...],
           keys: dict[str, Callable[[str, ast.Value], Any]], example: str) -> Any:
    """The named arguments of a call or the entries of a map, each read by its reader: a dict,
    or BAD after a diagnostic (an unknown key is E0201, a repeated one E0203)."""
    named = [e for e in entries if isinstance(e, ast.Entry)]
    for item in entries:
        if not isinstance(item, ast.Entry):
            return r.shape_error(item, f"a named argument of {what}", example)
    got: dict[str, Any] = {}
    for entry in r.unique_entries(tuple(named)):
        name = entry.key.value
        if name not in keys:
            r.sink.error("E0201", f"{what} has no key `{name}`", entry.key.span, "unknown key",
                         help=did_you_mean(name, list(keys))
                         or "its keys are " + ", ".join(f"`{k}`" for k in keys))
            return BAD
        got[name] = keys[name](name, entry.value)
    return BAD if BAD in got.values() or len(got) != len(named) else got


def number(r: Reader, low: float, high: float, *, low_open: bool = False,
           high_open: bool = False, whole: bool = False) -> Callable[[str, ast.Value], Any]:
    """A plain number within bounds (E0302 for a unit, E0303 out of bounds)."""
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    bounds = f"in {left}{low:g}, {high:g}{right}" if high < math.inf else \
        f"{'above' if low_open else 'at least'} {low:g}"

    def read(key: str, value: ast.Value) -> Any:
        if not isinstance(value, ast.Quantity):
            return r.shape_error(value, f"a number {bounds}", f"{key} = 1")
        if value.unit is not None:
            r.sink.error("E0302", f"`{key}` is a plain number, found a unit", value.span,
                         "a number with a unit", help=f"write `{value.number_text}`")
            return BAD
        x = value.number
        if (x < low or (low_open and x == low) or x > high or (high_open and x == high)
                or (whole and not value.is_integer)):
            r.sink.error("E0303", f"`{key}` must be {'a whole number ' if whole else ''}"
                         f"{bounds}", value.span, "out of range")
            return BAD
        return float(x)
    return read


def trainable(r: Reader) -> Callable[[str, ast.Value], Any]:
    """`[w1, "w.2"]`: initializer names (checked against the model file in `check`)."""
    def read(key: str, value: ast.Value) -> Any:
        if not isinstance(value, ast.ListValue) or not value.items:
            return r.shape_error(value, "a list of the model's initializer names",
                                 f"{key} = [fc_w, fc_b]")
        names: list[str] = []
        for item in value.items:
            if isinstance(item, ast.Word):
                names.append(item.name)
            elif isinstance(item, ast.String):
                names.append(item.value)
            else:
                return r.shape_error(item, "an initializer name", "fc_w")
        return tuple(dict.fromkeys(names))
    return read


def config(r: Reader) -> Callable[[str, ast.Value], Any]:
    """`{ lr = 0.05, optimizer = "sgd" }`: plain numbers and strings, passed to the trainer."""
    def read(key: str, value: ast.Value) -> Any:
        if not isinstance(value, ast.MapValue):
            return r.shape_error(value, "a map of numbers and strings",
                                 f"{key} = {{ lr = 0.05 }}")
        out: dict[str, float | int | str] = {}
        for entry in r.unique_entries(value.entries):
            v = entry.value
            if isinstance(v, ast.String):
                out[entry.key.value] = v.value
            elif isinstance(v, ast.Quantity) and v.unit is None:
                out[entry.key.value] = int(v.number) if v.is_integer else float(v.number)
            else:
                return r.shape_error(v, "a plain number or a string", "lr = 0.05")
        return out if len(out) == len(value.entries) else BAD
    return read


def strategy(r: Reader) -> Callable[[str, ast.Value], Any]:
    """`fedavg`, `fedmedian`, `fedprox(mu = 0.01)`, `trimmed_mean(beta = 0.2)`,
    `krum(byzantine = 1)` (parameters optional, defaults as shown)."""
    def read(key: str, value: ast.Value) -> Any:
        if isinstance(value, ast.Word):
            name = r._choice_word(key, value, tuple(STRATEGIES))
            args: tuple[ast.Entry | ast.Value, ...] = ()
        elif isinstance(value, ast.Call):
            name = r._choice_word(key, ast.Word(value.func.value, value.func.span),
                                  tuple(STRATEGIES))
            args = value.args
        else:
            return r.shape_error(value, "a strategy", f"{key} = fedavg")
        if name is BAD:
            return BAD
        keys = {p: number(r, lo, hi, whole=whole, high_open=(p == "beta"))
                for p, (lo, hi, whole) in STRATEGIES[name].items()}
        got = _named(r, f"`{name}`", args, keys, f"{key} = fedprox(mu = 0.01)")
        if got is BAD:
            return BAD
        return ir.Strategy(name=name, params={**_STRATEGY_DEFAULTS.get(name, {}), **got})
    return read


def dp(r: Reader) -> Callable[[str, ast.Value], Any]:
    """`dp(clip = 1.0, noise = 0.8, delta = 1e-5)` (delta defaults to 1e-5) or `none`."""
    example = "privacy = dp(clip = 1.0, noise = 0.8, delta = 1e-5)"

    def read(key: str, value: ast.Value) -> Any:
        if isinstance(value, ast.Word) and value.name == "none":
            return None
        if not isinstance(value, ast.Call) or value.func.value != "dp":
            return r.shape_error(value, "`dp(clip = C, noise = Z)` or `none`", example)
        got = _named(r, "`dp`", value.args, {
            "clip": number(r, 0, math.inf, low_open=True),
            "noise": number(r, 0, math.inf),
            "delta": number(r, 0, 1, low_open=True, high_open=True)}, example)
        if got is BAD:
            return BAD
        for needed in ("clip", "noise"):
            if needed not in got:
                r.sink.error("E0202", f"`dp` lacks required key `{needed}`", value.span,
                             f"no `{needed}`", help=f"e.g. `{example}`")
                return BAD
        return ir.DifferentialPrivacy(clip=got["clip"], noise=got["noise"],
                                      delta=got.get("delta", 1e-5))
    return read


def updates(r: Reader) -> Callable[[str, ast.Value], Any]:
    """A privacy rule's `updates = { allow = [TIERS], require = dp }` (allow required)."""
    example = "updates = { allow = [edge, fog, cloud], require = dp }"

    def read(key: str, value: ast.Value) -> Any:
        if not isinstance(value, ast.MapValue):
            return r.shape_error(value, "a map with `allow = [TIERS]`", example)
        got = _named(r, "`updates`", value.entries,
                     {"allow": r.tiers, "require": r.choice(("dp",))}, example)
        if got is BAD:
            return BAD
        if "allow" not in got:
            r.sink.error("E0202", "`updates` lacks required key `allow`", value.span,
                         "no `allow`", help=f"e.g. `{example}`")
            return BAD
        return ir.UpdateRule(allow=got["allow"], require=got.get("require"), span=value.span)
    return read


def rollout(r: Reader) -> Callable[[str, ast.Value], Any]:
    """A model's `rollout = { waves = [0.1, 0.5, 1], health = [latency_p95 < 50 ms],
    hold = 5 s }` (waves required, increasing, the last 1)."""
    example = "rollout = { waves = [0.1, 0.5, 1], health = [latency_p95 < 50 ms], hold = 5 s }"
    share = number(r, 0, 1, low_open=True)

    def waves(key: str, value: ast.Value) -> Any:
        if not isinstance(value, ast.ListValue) or not value.items:
            return r.shape_error(value, "a list of shares of the replicas", "waves = [0.1, 1]")
        got = [share(key, v) for v in value.items]
        if BAD in got:
            return BAD
        if any(b <= a for a, b in pairwise(got)) or got[-1] != 1:
            r.sink.error("E0303", "rollout waves must grow and end at 1 (every replica)",
                         value.span, "not increasing to 1",
                         help="e.g. `waves = [0.1, 0.5, 1]`: 10 %, then half, then all")
            return BAD
        return tuple(got)

    def health(key: str, value: ast.Value) -> Any:
        items = value.items if isinstance(value, ast.ListValue) else (value,)
        out = []
        for item in items:
            if not isinstance(item, ast.Constraint):
                return r.shape_error(item, "a health rule", "latency_p95 < 50 ms")
            metric = r._choice_word("health metric", ast.Word(item.subject.value,
                                                              item.subject.span), HEALTH_METRICS)
            if metric is BAD:
                return BAD
            bound = number(r, 0, 1)(metric, item.bound) if metric == "drops" else \
                r.quantity(TIME, positive=True)(metric, item.bound)
            if bound is BAD:
                return BAD
            out.append(ir.Health.model_validate({"metric": metric, "op": item.op, "bound": bound}))
        return tuple(out)

    def read(key: str, value: ast.Value) -> Any:
        if not isinstance(value, ast.MapValue):
            return r.shape_error(value, "a map with `waves = [...]`", example)
        got = _named(r, "`rollout`", value.entries, {
            "waves": waves, "health": health,
            "hold": r.quantity(TIME, positive=True)}, example)
        if got is BAD:
            return BAD
        if "waves" not in got:
            r.sink.error("E0202", "`rollout` lacks required key `waves`", value.span,
                         "no `waves`", help=f"e.g. `{example}`")
            return BAD
        return ir.Rollout(waves=got["waves"], health=got.get("health", ()),
                          hold_s=got.get("hold", 5.0), span=value.span)
    return read


# ================================================================ checks

@dataclass(frozen=True)
class Site:
    """One first-tier aggregator instance and the client instances it aggregates."""

    aggregator: str
    clients: tuple[str, ...]


def sites(clients: ir.Device, first: ir.Device) -> tuple[Site, ...] | None:
    """The clients of each first-tier aggregator instance: all of them for a single aggregator,
    instance i's for the same count (one site each, as links pair them), consecutive blocks of
    equal size when the aggregators' count divides the clients'; None otherwise."""
    n, m = clients.count, first.count
    if m == 1:
        return (Site(first.name, tuple(clients.instances())),)
    if n % m:
        return None
    size = n // m
    return tuple(Site(first.instance(k), tuple(clients.instance(i)
                                               for i in range(k * size, (k + 1) * size)))
                 for k in range(m))


def data_labels(t: ir.Training, out: Lowered) -> tuple[str, ...]:
    """The privacy labels of the data a training reads: a sensor's, or every label the
    pipelines deliver to a store (its sensors' minus what operators on the way remove)."""
    if t.data in out.sensors:
        return tuple(lb for lb in out.sensors[t.data].privacy if lb in out.privacy)
    labels: dict[str, None] = {}
    for p in out.pipelines.values():
        if p.flow[-1] != t.data or p.flow[0] not in out.sensors:
            continue
        carried = list(out.sensors[p.flow[0]].privacy)
        for step in p.flow[1:-1]:
            if step in out.operators:
                carried = [lb for lb in carried if lb not in out.operators[step].removes]
        labels.update(dict.fromkeys(lb for lb in carried if lb in out.privacy))
    return tuple(labels)


def _entry(out: Lowered, name: str, key: str) -> Span:
    decl = out.symbols.decls[name]
    for e in decl.entries:
        if e.key.value == key:
            return e.value.span
    return decl.name.span


@dataclass(frozen=True)
class Weights:
    """What a training moves and holds, from the model file."""

    trainable_bytes: int
    all_bytes: int
    forward_flop: float
    activation_bytes: int


Initializers = tuple[onnx.TensorProto, ...]


def initializers(model: ir.Model) -> Initializers:
    """The model file's initializers (their data not loaded): read once per training."""
    return tuple(onnx.load(model.source, load_external_data=False).graph.initializer)


def weights(t: ir.Training, model: ir.Model, inits: Initializers) -> Weights:
    from edgeflow.cost import analysed

    analysis, problem = analysed(model)
    sizes = {i.name: ir.DTYPE_BYTES.get(_DTYPE.get(i.data_type, ""), 4) * math.prod(i.dims)
             for i in inits}
    activations = sum(tensor.nbytes for name, tensor in analysis.tensors.items()
                      if name not in sizes)
    return Weights(sum(sizes[n] for n in t.trainable), sum(sizes.values()),
                   float(problem.total_work), activations)


def client_memory_bytes(t: ir.Training, w: Weights) -> int:
    """What a client needs to train (E1306; a deployed SuperNode's memory request): the
    weights, the optimizer's copies of the trainable ones, a batch's activations, Flower."""
    return (w.all_bytes + OPTIMIZER_COPIES * w.trainable_bytes + t.batch * w.activation_bytes
            + FLOWER_NODE_MEMORY_BYTES)


_DTYPE: dict[int, str] = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
          onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8",
          onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT64: "int64",
          onnx.TensorProto.BOOL: "bool"}
_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def _check_trainable(t: ir.Training, model: ir.Model, inits: Initializers, out: Lowered,
                     sink: DiagnosticSink) -> bool:
    floats = {i.name for i in inits if i.data_type in _FLOATS}
    others = {i.name for i in inits} - floats
    for name in t.trainable:
        if name in floats:
            continue
        why = "an integer initializer cannot be trained" if name in others else \
            f"model `{model.name}` has no initializer `{name}`"
        sink.error("E1302", f"`{name}` is not a trainable weight of `{model.name}`",
                   _entry(out, t.name, "trainable"), why,
                   help=did_you_mean(name, sorted(floats))
                   or f"its float initializers are {', '.join(sorted(floats)[:8])}")
        return False
    return True


def check(out: Lowered, sink: DiagnosticSink) -> None:
    """Every training's checks; a training without `trainable` trains every float weight."""
    for name, t in list(out.trainings.items()):
        model = out.models.get(t.model)
        inits = () if model is None else initializers(model)
        if not t.trainable:
            t = out.trainings[name] = t.model_copy(update={"trainable": tuple(
                i.name for i in inits if i.data_type in _FLOATS)})
        _check_one(t, out, sink, inits)


def _check_one(t: ir.Training, out: Lowered, sink: DiagnosticSink,
               inits: Initializers) -> None:
    clients, model = out.devices.get(t.clients), out.models.get(t.model)
    aggs = [out.devices.get(a) for a in t.aggregate]
    data_device = (out.sensors[t.data].device if t.data in out.sensors
                   else out.sinks[t.data].device if t.data in out.sinks else None)
    if clients is None or model is None or data_device is None or None in aggs:
        return  # reported where they are declared
    if data_device != clients.name:
        sink.error("E1301", f"training `{t.name}` reads `{t.data}`, which is on `{data_device}`, "
                   f"not on its clients `{clients.name}`", _entry(out, t.name, "data"),
                   f"on `{data_device}`", labels=(Label(_entry(out, t.name, "clients"),
                                                        "the clients"),),
                   help="clients train on data that is on them: name a sensor or store on "
                        f"`{clients.name}`, or make `{data_device}` the clients")
        return
    tiers = [a for a in aggs if a is not None]
    if not 1 <= len(tiers) <= 2 or clients.name in t.aggregate or \
            len(set(t.aggregate)) < len(tiers):
        sink.error("E1307", "`aggregate` names one or two devices besides the clients, nearest "
                   "first", _entry(out, t.name, "aggregate"), "not an aggregation hierarchy",
                   help="e.g. `aggregate = [ward_server]`, or `[site_server, cloud]` for sites "
                        "then the cloud")
        return
    site_list = sites(clients, tiers[0])
    if site_list is None:
        sink.error("E1307", f"{clients.count} clients cannot be split evenly over "
                   f"{tiers[0].count} `{tiers[0].name}` sites", _entry(out, t.name, "aggregate"),
                   f"count {tiers[0].count}",
                   help=f"give `{tiers[0].name}` a count that divides {clients.count}, or 1")
        return
    if tiers[-1].count != 1:
        sink.error("E1307", f"the top aggregator `{tiers[-1].name}` has count {tiers[-1].count}",
                   _entry(out, t.name, "aggregate"), "more than one top aggregator",
                   help="the last tier combines every site's update on one device: count 1"
                        + ("" if len(tiers) == 2 else f"; or aggregate the `{tiers[0].name}` "
                           "sites on a device of count 1: `aggregate = "
                           f"[{tiers[0].name}, TOP]`"))
        return
    per_site = len(site_list[0].clients)
    if t.min_clients is not None and t.min_clients > per_site:
        sink.error("E1307", f"`min_clients = {t.min_clients}` but each site has {per_site} "
                   "clients", _entry(out, t.name, "min_clients"), "more than a site has",
                   help=f"at most {per_site}")
        return
    if not _check_trainable(t, model, inits, out, sink):
        return
    if t.dp is not None and t.strategy.name not in ("fedavg", "fedprox"):
        sink.error("E0305", f"differential privacy needs a mean of the updates, not "
                   f"`{t.strategy.name}`", _entry(out, t.name, "strategy"),
                   "not a mean", labels=(Label(_entry(out, t.name, "privacy"), "noise "
                                               "calibrated for a mean"),),
                   help="use `strategy = fedavg` or `fedprox(...)` with `privacy = dp(...)`")
        return
    sampled = t.min_clients or per_site
    if t.strategy.name == "krum" and sampled < 2 * t.strategy.params["byzantine"] + 3:
        f = int(t.strategy.params["byzantine"])
        sink.error("E0303", f"`krum(byzantine = {f})` needs at least {2 * f + 3} clients per "
                   f"round; a site trains {sampled}", _entry(out, t.name, "strategy"),
                   "too few clients for krum",
                   help=f"lower `byzantine` to at most {max((sampled - 3) // 2, 0)}, or train "
                        "more clients per site")
        return
    _check_updates(t, out, sink, tiers)
    if out.symbols.decls.keys() - out.broken != out.symbols.decls.keys():
        return  # a broken device or link: the figures below would be wrong
    _check_round(t, out, sink, clients, tiers, site_list, weights(t, model, inits))


def _check_updates(t: ir.Training, out: Lowered, sink: DiagnosticSink,
                   tiers: list[ir.Device]) -> None:
    for lb in data_labels(t, out):
        rule = out.privacy[lb]
        allowed = rule.update_tiers()
        where = _entry(out, lb, "updates" if rule.updates is not None else "allow")
        for agg in tiers:
            if agg.tier in allowed:
                continue
            names = ", ".join(x.value for x in allowed)
            sink.error("E1303", f"updates trained on `{lb}` data would reach `{agg.name}` "
                       f"({agg.tier.value}), but `{lb}` lets them reach only {names}",
                       _entry(out, t.name, "aggregate"), f"`{agg.name}` aggregates",
                       labels=(Label(where, f"`{lb}` allows updates on {names}"),),
                       help=f"aggregate on a device on {names}, or declare in `privacy {lb}` "
                            f"`updates = {{ allow = [..., {agg.tier.value}], require = dp }}`")
            return
        if rule.updates is not None and rule.updates.require == "dp" and t.dp is None:
            sink.error("E1304", f"updates trained on `{lb}` data need differential privacy",
                       out.symbols.decls[t.name].name.span, "no `privacy = dp(...)`",
                       labels=(Label(where, f"`{lb}` requires dp"),),
                       help="add `privacy = dp(clip = 1.0, noise = 1.0)` to the training")
            return


def _check_round(t: ir.Training, out: Lowered, sink: DiagnosticSink, clients: ir.Device,
                 tiers: list[ir.Device], site_list: tuple[Site, ...], w: Weights) -> None:
    """One synchronous round per client: the model down every link of its route, training,
    the update up; each link direction carries the bytes of every client routed over it
    (and of every site, to the top), at its bandwidth."""
    train_s = TRAIN_WORK_FACTOR * w.forward_flop * t.examples * t.epochs / clients.compute_flops
    need = client_memory_bytes(t, w)
    where = out.symbols.decls[t.name].name.span
    if need > clients.memory_bytes:
        sink.error("E1306", f"a client needs {_size(need)} to train `{t.model}`, but "
                   f"`{clients.name}` has {_size(clients.memory_bytes)}", where,
                   "clients short of memory",
                   labels=(Label(_entry(out, clients.name, "memory"), "the clients' memory"),),
                   help=f"weights {_size(w.all_bytes)}, optimizer state "
                        f"{_size(OPTIMIZER_COPIES * w.trainable_bytes)}, activations of a batch "
                        f"of {t.batch} {_size(t.batch * w.activation_bytes)}, Flower "
                        f"{_size(FLOWER_NODE_MEMORY_BYTES)}: lower `batch` or train fewer "
                        "weights")
        return
    if train_s > t.round_time_s:
        sink.error("E1306", f"a client needs {train_s:.3g} s to train `{t.model}` on "
                   f"{t.examples} examples x {t.epochs} epochs; the round time is "
                   f"{t.round_time_s:g} s", where, "clients too slow",
                   labels=(Label(_entry(out, t.name, "round_time"), "the round time"),),
                   help=f"{TRAIN_WORK_FACTOR:g} x {w.forward_flop:.3g} FLOP per example at "
                        f"{clients.compute_flops:.3g} FLOP/s: lower `examples` or `epochs`, or "
                        "raise `round_time`")
        return
    graph = instance_graph(out.devices, out.links)
    load: dict[tuple[str, str], int] = {}  # (from, to) instance pair -> bytes per round
    routes: dict[str, list[tuple[str, str]]] = {}
    from edgeflow.routing import fastest_route

    def route(a: str, b: str) -> list[tuple[str, str]] | None:
        found = fastest_route(graph, a, b, w.trainable_bytes, lambda _: True)
        return None if found is None else list(pairwise(found[1]))

    pairs = [(c, s.aggregator) for s in site_list for c in s.clients]
    if len(tiers) == 2:
        pairs += [(s.aggregator, tiers[1].name) for s in site_list]
    for a, b in pairs:
        hops = route(a, b)
        if hops is None:
            sink.error("E1307", f"no route from `{a}` to its aggregator `{b}`",
                       _entry(out, t.name, "aggregate"), f"`{b}` aggregates `{a}`",
                       help=f"declare a link path between `{a.split('[')[0]}` and "
                            f"`{b.split('[')[0]}`")
            return
        routes[a] = hops
        for u, v in hops:  # the update up, the model down
            load[(u, v)] = load.get((u, v), 0) + w.trainable_bytes
            load[(v, u)] = load.get((v, u), 0) + w.trainable_bytes

    def hop_time(u: str, v: str) -> float:
        link = graph[u][v]["link"]
        return float(load[(u, v)] * 8 / link.bandwidth_bps)

    def way(a: str) -> float:
        """Seconds for the bytes one way over the route from `a`: its busiest hop moves every
        update routed over it at its bandwidth (one TCP stream end to end), plus the latencies."""
        latency = sum(float(graph[u][v]["link"].latency_s) for u, v in routes[a])
        return max(hop_time(u, v) for u, v in routes[a]) + latency

    top = max(way(s.aggregator) for s in site_list) if len(tiers) == 2 else 0.0
    worst = max((2 * way(c) + train_s + 2 * top, c) for s in site_list for c in s.clients)
    if worst[0] <= t.round_time_s:
        return
    client = worst[1]
    hops = routes[client] + (routes[site_list[0].aggregator] if len(tiers) == 2 else [])
    u, v = max(hops, key=lambda h: hop_time(*h))
    link = graph[u][v]["link"]
    sink.error("E1305", f"one round of `{t.name}` takes {worst[0]:.3g} s for `{client}`, above "
               f"its round time {t.round_time_s:g} s", _entry(out, t.name, "round_time"),
               "round time too short", labels=(Label(link.span, f"`{u}` <-> `{v}` carries "
                                                     f"{_size(load[(u, v)])} each way per "
                                                     f"round at {_rate(link.bandwidth_bps)}"),),
               help=f"the model down and the update up ({_size(w.trainable_bytes)} each, for "
                    f"every client sharing the link) and {train_s:.3g} s of training: train "
                    "fewer weights, widen the link, or raise `round_time`")


def _rate(bps: float) -> str:
    return express(bps, BANDWIDTH) or f"{bps:.3g} bit/s"


def _size(nbytes: float) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= factor:
            return f"{nbytes / factor:.3g} {unit}"
    return f"{nbytes:.0f} B"
