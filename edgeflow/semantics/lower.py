"""AST -> IR: collect names, read every block against its schema, check model files, then run the
dataflow checks. Reports every problem it can find in one run; the IR is built only when there is
no error.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from edgeflow import ir
from edgeflow.diagnostics import Diagnostic, DiagnosticSink, Label, has_errors
from edgeflow.objectives import TERMS
from edgeflow.semantics import flows
from edgeflow.semantics import training as learn
from edgeflow.semantics.impl import REFERENCE, module_file, search_path
from edgeflow.semantics.lowered import Lowered
from edgeflow.semantics.model_files import check_model, check_variant, locate
from edgeflow.semantics.values import (
    BAD,
    TIERS,
    Reader,
    Symbols,
    closest,
    did_you_mean,
)
from edgeflow.span import Span
from edgeflow.syntax import ast
from edgeflow.syntax.fmt import value_text
from edgeflow.syntax.units import (
    BANDWIDTH,
    COMPUTE,
    COST_DATA,
    COST_RATE,
    OPS,
    POWER,
    RATE,
    SIZE,
    TIME,
    WORK,
)

_NAME = re.compile(r"[a-z_][a-z0-9_]*")


@dataclass(frozen=True)
class Key:
    read: Callable[[str, ast.Value], Any]
    required: bool
    example: str


def _schemas(r: Reader) -> dict[str, dict[str, Key]]:
    device = r.reference(("device",), "device")
    labels = r.reference_list(("privacy",), "privacy label", code="E0701")
    sink = {"on": Key(device, True, "on = gateway")}
    return {
        "app": {
            "description": Key(r.string, False, 'description = "..."'),
            "objective": Key(_objective(r), False, "objective = minimize(latency)"),
        },
        "device": {
            "tier": Key(r.choice(TIERS), True, "tier = edge"),
            "compute": Key(r.quantity(COMPUTE, positive=True), True, "compute = 1 TFLOPS"),
            "memory": Key(r.quantity(SIZE, positive=True), True, "memory = 4 GiB"),
            "count": Key(r.count, False, "count = 2"),
            "power": Key(r.quantity(POWER, positive=False), False, "power = 10 W"),
            "cost": Key(r.quantity(COST_RATE, positive=False), False, "cost = 1.5 USD/h"),
            "labels": Key(_node_labels(r), False, 'labels = { zone = "a" }'),
            "gpu": Key(_matching(r, _RESOURCE, "a Kubernetes extended resource",
                                 "not `vendor/resource`", 'e.g. `gpu = "nvidia.com/gpu"`'),
                       False, 'gpu = "nvidia.com/gpu"'),
            "message_latency": Key(r.quantity(TIME, positive=False), False,
                                   "message_latency = 0.7 ms"),
            "message_bandwidth": Key(r.quantity(BANDWIDTH, positive=True), False,
                                     "message_bandwidth = 1.5 Gbps"),
            "cpus": Key(r.count, False, "cpus = 8"),
            "worker_memory": Key(r.quantity(SIZE, positive=False), False,
                                 "worker_memory = 128 MiB"),
            "broker_memory": Key(r.quantity(SIZE, positive=False), False,
                                 "broker_memory = 64 MiB"),
            "driver_memory": Key(r.quantity(SIZE, positive=False), False,
                                 "driver_memory = 64 MiB"),
            "compute_int8": Key(r.quantity(OPS, positive=True), False,
                                "compute_int8 = 2 TOPS"),
        },
        "link": {
            "bandwidth": Key(r.quantity(BANDWIDTH, positive=True), True, "bandwidth = 100 Mbps"),
            "latency": Key(r.quantity(TIME, positive=False), True, "latency = 5 ms"),
            "cost": Key(r.quantity(COST_DATA, positive=False), False, "cost = 0.05 USD/GB"),
        },
        "sensor": {
            "on": Key(device, True, "on = gateway"),
            "rate": Key(r.quantity(RATE, positive=True), True, "rate = 30 Hz"),
            "emits": Key(r.tensor, True, "emits = uint8[1, 3, 224, 224]"),
            "privacy": Key(labels, False, "privacy = [pii]"),
        },
        "actuator": sink,
        "store": sink,
        "model": {
            "source": Key(r.string, True, 'source = "models/net.onnx"'),
            "inputs": Key(_tensor_map(r), True, "inputs = { input = float32[1, 3, 224, 224] }"),
            "split": Key(r.choice(("auto", "none")), False, "split = auto"),
            "variants": Key(_variants(r), False,
                            'variants = { int8 = quantize(calibration = "data/calib") }'),
            "min_fidelity": Key(_fraction(r), False, "min_fidelity = 0.98"),
            "validation": Key(r.string, False, 'validation = "data/val"'),
            "adapt": Key(_adapt(r), False, "adapt = { bandwidth = [20 Mbps, 1 Gbps] }"),
            "on_disconnect": Key(_on_disconnect(r), False, "on_disconnect = local"),
            "rollout": Key(learn.rollout(r), False,
                           "rollout = { waves = [0.1, 0.5, 1], health = [latency_p95 < 50 ms] }"),
        },
        "operator": {
            "work": Key(r.quantity(WORK, positive=False), True, "work = 0.1 GFLOP"),
            "emits": Key(r.tensor, True, "emits = float32[1, 3, 224, 224]"),
            "memory": Key(r.quantity(SIZE, positive=False), False, "memory = 100 MiB"),
            "removes": Key(labels, False, "removes = [pii]"),
            "impl": Key(_callable(r, "impl", "my_ops", "resize"), False,
                        'impl = "my_ops:resize"'),
        },
        "pipeline": {
            "flow": Key(_flow(r), True, "flow = sensor -> step -> sink"),
            "slo": Key(_slo(r), False, "slo = latency < 50 ms"),
        },
        "privacy": {
            "allow": Key(r.tiers, True, "allow = [edge, fog]"),
            "updates": Key(learn.updates(r), False,
                           "updates = { allow = [edge, fog, cloud], require = dp }"),
        },
        "training": {
            "model": Key(r.reference(("model",), "model"), True, "model = classifier"),
            "clients": Key(device, True, "clients = gateway"),
            "data": Key(r.reference(("sensor", "store"), "sensor or store"), True,
                        "data = camera"),
            "samples": Key(_callable(r, "samples", "my_data", "samples"), True,
                           'samples = "my_data:samples"'),
            "trainer": Key(_callable(r, "trainer", "my_training", "train"), True,
                           'trainer = "my_training:train"'),
            "aggregate": Key(r.reference_list(("device",), "device"), True,
                             "aggregate = [server]"),
            "examples": Key(r.count, True, "examples = 512"),
            "round_time": Key(r.quantity(TIME, positive=True), True, "round_time = 60 s"),
            "trainable": Key(learn.trainable(r), False, "trainable = [fc_w, fc_b]"),
            "config": Key(learn.config(r), False, "config = { lr = 0.05 }"),
            "rounds": Key(r.count, False, "rounds = 3"),
            "min_clients": Key(r.count, False, "min_clients = 2"),
            "epochs": Key(r.count, False, "epochs = 1"),
            "batch": Key(r.count, False, "batch = 32"),
            "strategy": Key(learn.strategy(r), False, "strategy = fedavg"),
            "privacy": Key(learn.dp(r), False, "privacy = dp(clip = 1.0, noise = 0.8)"),
            "every": Key(r.quantity(TIME, positive=True), False, "every = 24 h"),
        },
    }


def _callable(r: Reader, key: str, module: str, function: str,
              ) -> Callable[[str, ast.Value], Any]:
    """A string naming a Python callable, `module:function` (never imported by `check`)."""
    return _matching(r, REFERENCE, "a Python callable as `module:function`",
                     "not `module:function`",
                     f'e.g. `{key} = "{module}:{function}"` for `def {function}(...)` in '
                     f"{module}.py beside the .ef file")


_LABEL_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
_RESOURCE = re.compile(r"[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?/[a-z0-9](?:[-a-z0-9_.]*[a-z0-9])?")


def _node_labels(r: Reader) -> Callable[[str, ast.Value], Any]:
    """A device's labels, which become the node selectors `edgeflow.io/KEY: VALUE` of its
    pods: keys and values must be Kubernetes label names and values."""
    def read(key: str, value: ast.Value) -> Any:
        labels = r.string_map(key, value)
        if labels is BAD or not isinstance(value, ast.MapValue):
            return labels
        for entry in value.entries:
            name, text = entry.key.value, labels.get(entry.key.value, "")
            if len(name) > 63 - len("edgeflow.io/") or not _LABEL_VALUE.fullmatch(text):
                r.sink.error("E0303", f"label `{name} = \"{text}\"` cannot be a node label",
                             entry.value.span, "not a Kubernetes label value",
                             help="labels become node selectors: at most 63 letters, digits, "
                                  "`-`, `_` and `.`, starting and ending with a letter or digit")
                return BAD
        return labels
    return read


def _matching(r: Reader, pattern: re.Pattern[str], what: str, label: str,
              help: str) -> Callable[[str, ast.Value], Any]:
    """A string key whose value must match `pattern` (E0303 saying it must name `what`)."""
    def read(key: str, value: ast.Value) -> Any:
        text = r.string(key, value)
        if text is BAD or pattern.fullmatch(text):
            return text
        r.sink.error("E0303", f"`{key}` must name {what}", value.span, label, help=help)
        return BAD
    return read


def _objective(r: Reader) -> Callable[[str, ast.Value], Any]:
    def read(key: str, value: ast.Value) -> Any:
        if not isinstance(value, ast.Call):
            return r.shape_error(value, "`minimize(...)`", "objective = minimize(latency, cost)")
        if value.func.value != "minimize":
            r.sink.error("E0305", f"unknown objective `{value.func.value}`", value.func.span,
                         "expected `minimize`", help="objectives are `minimize(TERM, ...)`")
            return BAD
        if not value.args:
            r.sink.error("E0305", "`minimize` needs at least one term", value.span, "no terms",
                         help="terms are " + ", ".join(TERMS))
            return BAD
        terms: list[str] = []
        for arg in value.args:
            if isinstance(arg, ast.Entry):
                return r.shape_error(arg.value, "an objective term, not a named argument",
                                     "latency")
            if not isinstance(arg, ast.Word):
                return r.shape_error(arg, "an objective term", "latency")
            term = r._choice_word("objective term", arg, tuple(TERMS))
            if term in terms:
                r.sink.error("E0305", f"objective term `{term}` is repeated", arg.span, "repeated")
                return BAD
            terms.append(term)
        return BAD if BAD in terms else tuple(terms)
    return read


def _fraction(r: Reader, *, share: bool = False) -> Callable[[str, ast.Value], Any]:
    """A plain number: above 0 and at most 1 (a fidelity), or with `share` at least 0 and below
    1 (a margin)."""
    example, bound = ("0.1", "at least 0 and below 1") if share else \
        ("0.98", "above 0 and at most 1")
    meaning = "switches only for a gain above 10 %" if share else "keeps 98 % fidelity"

    def read(key: str, value: ast.Value) -> Any:
        if not isinstance(value, ast.Quantity):
            return r.shape_error(value, f"a number {bound}", f"{key} = {example}")
        if value.unit is not None:
            r.sink.error("E0302", f"`{key}` is a plain number, found a unit", value.span,
                         "a number with a unit", help=f"write a fraction, e.g. `{key} = {example}`")
            return BAD
        if not (0 <= value.number < 1 if share else 0 < value.number <= 1):
            r.sink.error("E0303", f"`{key}` must be {bound}", value.span,
                         "not a fraction", help=f"e.g. `{key} = {example}` {meaning}")
            return BAD
        return float(value.number)
    return read


ADAPT_KEYS = {"bandwidth": "bandwidth = [20 Mbps, 1 Gbps]", "margin": "margin = 0.1",
              "hold": "hold = 1 s"}


def _adapt(r: Reader) -> Callable[[str, ast.Value], Any]:
    """`{ bandwidth = [LOW, HIGH], margin = FRACTION, hold = TIME }` (bandwidth required)."""
    example = "adapt = { bandwidth = [20 Mbps, 1 Gbps], margin = 0.1, hold = 1 s }"

    def read(key: str, value: ast.Value) -> Any:
        if not isinstance(value, ast.MapValue):
            return r.shape_error(value, "a map with `bandwidth = [LOW, HIGH]`", example)
        got: dict[str, Any] = {}
        for entry in r.unique_entries(value.entries):
            name = entry.key.value
            if name not in ADAPT_KEYS:
                r.sink.error("E0201", f"`adapt` has no key `{name}`", entry.key.span,
                             "unknown key", help=did_you_mean(name, list(ADAPT_KEYS))
                             or "its keys are " + ", ".join(f"`{k}`" for k in ADAPT_KEYS))
                return BAD
            if name == "bandwidth":
                got[name] = _bandwidth_range(r, entry.value)
            elif name == "margin":
                got[name] = _fraction(r, share=True)(name, entry.value)
            else:
                got[name] = r.quantity(TIME, positive=False)(name, entry.value)
        if BAD in got.values() or len(got) != len(value.entries):
            return BAD
        if "bandwidth" not in got:
            r.sink.error("E0202", "`adapt` lacks required key `bandwidth`", value.span,
                         "no bandwidth range", help=f"e.g. `{example}`")
            return BAD
        low, high = got["bandwidth"]
        return ir.Adapt(low_bps=low, high_bps=high, margin=got.get("margin", 0.1),
                        hold_s=got.get("hold", 1.0), span=value.span)
    return read


def _bandwidth_range(r: Reader, value: ast.Value) -> Any:
    if not isinstance(value, ast.ListValue) or len(value.items) != 2:
        return r.shape_error(value, "a range `[LOW, HIGH]` of two bandwidths",
                             "bandwidth = [20 Mbps, 1 Gbps]")
    low, high = (r.quantity(BANDWIDTH, positive=True)("bandwidth", v) for v in value.items)
    if BAD in (low, high):
        return BAD
    if low >= high:
        r.sink.error("E0614", "the bandwidth range of `adapt` is empty", value.span,
                     "the low end is not below the high end",
                     help="write the lowest bandwidth first, e.g. `[20 Mbps, 1 Gbps]`")
        return BAD
    return low, high


ON_DISCONNECT = ("local", "buffer", "drop")


def _on_disconnect(r: Reader) -> Callable[[str, ast.Value], Any]:
    """`local`, `drop`, `buffer` or `buffer(frames = N)`."""
    def read(key: str, value: ast.Value) -> Any:
        if isinstance(value, ast.Word):
            action = r._choice_word(key, value, ON_DISCONNECT)
            return BAD if action is BAD else ir.OnDisconnect(action=action, span=value.span)
        if not isinstance(value, ast.Call) or value.func.value != "buffer":
            return r.shape_error(value, "`local`, `drop`, `buffer` or `buffer(frames = N)`",
                                 "on_disconnect = local")
        frames = 64
        args = [a for a in value.args if isinstance(a, ast.Entry)]
        if len(r.unique_entries(tuple(args))) < len(args):  # E0203 for the repeated one
            return BAD
        for arg in value.args:
            if not isinstance(arg, ast.Entry) or arg.key.value != "frames":
                where = arg.key.span if isinstance(arg, ast.Entry) else arg.span
                r.sink.error("E0305", "`buffer` takes `frames = N`", where, "not `frames`",
                             help="e.g. `on_disconnect = buffer(frames = 64)`")
                return BAD
            frames = r.count("frames", arg.value)
            if frames is BAD:
                return BAD
        return ir.OnDisconnect(action="buffer", buffer_frames=frames, span=value.span)
    return read


@dataclass(frozen=True)
class VariantDecl:
    """A variant as written: a file (`source`) or `quantize(...)` (`quantize` holds its
    arguments: calibration and validation folders as written, or the synthetic count)."""

    name: str
    entry: ast.Entry
    source: str | None = None
    quantize: dict[str, Any] | None = None


QUANTIZE_ARGS = {"calibration": "a folder of frames", "synthetic": "a number of frames",
                 "validation": "a folder of frames"}


def _variants(r: Reader) -> Callable[[str, ast.Value], Any]:
    """`{ NAME = "file.onnx" | quantize(calibration = "DIR" | synthetic = N,
    [validation = "DIR"]), ... }`; what the names and files mean is checked in `lower`."""
    example = 'variants = { int8 = quantize(calibration = "data/calib"), tiny = "tiny.onnx" }'

    def read(key: str, value: ast.Value) -> Any:
        if not isinstance(value, ast.MapValue):
            return r.shape_error(value, "a map of variant names to model files or "
                                 "`quantize(...)`", example)
        out = []
        for entry in r.unique_entries(value.entries):
            name = entry.key.value
            if not _NAME.fullmatch(name):
                r.sink.error("E0105", f"`{name}` is not a valid variant name", entry.key.span,
                             "not a name", help="names are lowercase letters, digits and `_`, "
                                                "starting with a letter or `_`")
                return BAD
            v = entry.value
            if isinstance(v, ast.String):
                out.append(VariantDecl(name, entry, source=v.value))
                continue
            if not isinstance(v, ast.Call) or v.func.value != "quantize":
                return r.shape_error(v, "a model file or `quantize(...)`", example)
            args: dict[str, Any] = {}
            for arg in v.args:
                if not isinstance(arg, ast.Entry) or arg.key.value not in QUANTIZE_ARGS:
                    where = arg.key.span if isinstance(arg, ast.Entry) else arg.span
                    r.sink.error("E0305", "`quantize` takes `calibration = \"DIR\"` or "
                                 "`synthetic = N`, and `validation = \"DIR\"`", where,
                                 "not one of them", help='e.g. `quantize(calibration = '
                                                         '"data/calib")`')
                    return BAD
                read_arg = r.count if arg.key.value == "synthetic" else r.string
                args[arg.key.value] = read_arg(arg.key.value, arg.value)
                if args[arg.key.value] is BAD:
                    return BAD
            if ("calibration" in args) == ("synthetic" in args):
                r.sink.error("E0305", "`quantize` needs one of `calibration = \"DIR\"` and "
                             "`synthetic = N`", v.span,
                             "both given" if "calibration" in args else "calibrated on what?",
                             help="frames from a folder of .npy/.npz files, or N generated "
                                  "ones (a speed estimate only: no fidelity is claimed)")
                return BAD
            out.append(VariantDecl(name, entry, quantize=args))
        return BAD if len(out) != len(value.entries) else out
    return read


def _tensor_map(r: Reader) -> Callable[[str, ast.Value], Any]:
    def read(key: str, value: ast.Value) -> Any:
        if not isinstance(value, ast.MapValue):
            return r.shape_error(value, "a map of input names to tensor types",
                            "inputs = { input = float32[1, 3, 224, 224] }")
        out = {e.key.value: r.tensor(e.key.value, e.value, unbound_code="E0604")
               for e in r.unique_entries(value.entries)}
        if BAD in out.values() or len(out) != len(value.entries):
            return BAD
        return out, {e.key.value: e for e in value.entries}
    return read


def _flow(r: Reader) -> Callable[[str, ast.Value], Any]:
    def read(key: str, value: ast.Value) -> Any:
        if isinstance(value, ast.Word):
            r.sink.error("E0503", "a flow needs at least a sensor and a sink", value.span,
                         "a single step", help=f"e.g. `flow = {value.name} -> sink`")
            return BAD
        if not isinstance(value, ast.Flow):
            return r.shape_error(value, "a flow", "flow = sensor -> step -> sink")
        return value.steps
    return read


def _slo(r: Reader) -> Callable[[str, ast.Value], Any]:
    def one(c: ast.Value, seen: dict[str, ast.Constraint]) -> bool:
        if not isinstance(c, ast.Constraint):
            r.shape_error(c, "a constraint", "latency < 50 ms")
            return False
        subject = c.subject.value
        if subject not in ("latency", "throughput"):
            r.sink.error("E0509", f"unknown service-level objective `{subject}`", c.subject.span,
                         "expected `latency` or `throughput`",
                         help=did_you_mean(subject, ["latency", "throughput"]))
            return False
        ops = ("<", "<=") if subject == "latency" else (">=", ">")
        if c.op not in ops:
            r.sink.error("E0509", f"`{subject}` is bounded with {' or '.join(ops)}", c.op_span,
                         f"`{c.op}` makes no sense here", help=f"write `{subject} {ops[0]} ...`")
            return False
        if subject in seen:
            r.sink.error("E0509", f"`{subject}` is constrained twice", c.span, "repeated",
                         labels=(Label(seen[subject].span, "first constrained here"),))
            return False
        seen[subject] = c
        dim = TIME if subject == "latency" else RATE
        return r.quantity(dim, positive=True)(subject, c.bound) is not BAD

    def read(key: str, value: ast.Value) -> Any:
        items = value.items if isinstance(value, ast.ListValue) else (value,)
        seen: dict[str, ast.Constraint] = {}
        checked = [one(c, seen) for c in items]  # every constraint, to report all problems
        if not all(checked):
            return BAD
        values = {s: r.quantity(TIME if s == "latency" else RATE, positive=True)(s, c.bound)
                  for s, c in seen.items()}
        return ir.Slo(latency_s=values.get("latency"), throughput_hz=values.get("throughput")), seen
    return read


def _collect(module: ast.Module, sink: DiagnosticSink) -> Symbols:
    decls: dict[str, ast.Decl] = {}
    renamed: dict[str, str] = {}
    apps = []
    for decl in module.decls:
        if decl.kind == "app":
            apps.append(decl)
        if decl.kind == "link":
            continue
        name = decl.name
        if not _NAME.fullmatch(name.value):
            fixed = _fix_name(name.value)
            sink.error("E0105", f"`{name.value}` is not a valid name", name.span,
                       "names are lowercase", help=f"write `{fixed}`")
            renamed.setdefault(fixed, name.value)
        first = decls.get(name.value)
        if first is not None:
            sink.error("E0102", f"the name `{name.value}` is declared twice", name.span,
                       "declared again here",
                       labels=(Label(first.name.span, f"first declared here as "
                                     f"{first.kind} `{name.value}`"),),
                       help="every name is unique across the file; rename one of them")
            continue
        decls[name.value] = decl
    if not apps:
        at = module.decls[0].span if module.decls else Span(module.file, 0, 0, 1, 1, 1, 1)
        sink.error("E0104", "no `app` declaration", Span(at.file, at.start, at.start, at.line,
                   at.col, at.line, at.col), "expected an `app` block in this file",
                   help='start the file with `app my_app { description = "..." }`')
    for extra in apps[1:]:
        sink.error("E0104", "more than one `app` declaration", extra.kind_span, "another `app`",
                   labels=(Label(apps[0].kind_span, "the first `app` is here"),),
                   help="a file describes one application; merge the blocks")
    return Symbols(decls, {k: v for k, v in renamed.items() if k not in decls})


def _fix_name(name: str) -> str:
    fixed = re.sub(r"[^a-z0-9_]", "_", re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower())
    return fixed if _NAME.fullmatch(fixed) else "_" + fixed


def _read_block(decl: ast.Decl, schema: dict[str, Key], reader: Reader,
                ) -> dict[str, Any]:
    sink = reader.sink
    out: dict[str, Any] = {}
    entries = reader.unique_entries(decl.entries)
    given = {e.key.value for e in entries}
    renamed: set[str] = set()  # missing keys an unknown key is a misspelling of
    for entry in entries:
        key = schema.get(entry.key.value)
        if key is None:
            # only keys not given already: the rename must not make a duplicate
            best = closest(entry.key.value, [k for k in schema if k not in given | renamed])
            if best is not None:
                renamed.add(best)
            owners = [kind for kind, keys in block_keys().items() if entry.key.value in keys]
            kinds = ", ".join(owners[:-1]) + " and " + owners[-1] if len(owners) > 1 else \
                "".join(owners)
            elsewhere = f"`{entry.key.value}` is a key of {kinds} blocks; " if owners else ""
            sink.error("E0201", f"{decl.kind} `{decl.name.value}` has no key `{entry.key.value}`",
                       entry.key.span, "unknown key",
                       help=_rename_help(best, entry.value) if best else
                       f"{elsewhere}{decl.kind} keys are: {', '.join(schema)}")
            continue
        out[entry.key.value] = key.read(entry.key.value, entry.value)
    for name, key in schema.items():
        if key.required and name not in out:
            if name not in renamed:  # reported with the misspelt key
                where = decl.name.span if decl.kind != "link" else decl.kind_span
                sink.error("E0202", f"{decl.kind} `{_decl_title(decl)}` lacks required key "
                           f"`{name}`", where, f"`{name}` missing", help=f"add `{key.example}`")
            out[name] = BAD
    return out


def _rename_help(key: str, value: ast.Value) -> str:
    """Rename a misspelt key and keep the user's value."""
    text = value_text(value)
    if len(text) > 40 or "\n" in text:
        return f"did you mean `{key}`? keep the value as it is"
    return f"did you mean `{key}`? write `{key} = {text}`"


def _decl_title(decl: ast.Decl) -> str:
    return f"{decl.name.value} <-> {decl.peer.value}" if decl.peer else decl.name.value


def entry_span(decl: ast.Decl, key: str) -> Span | None:
    for entry in decl.entries:
        if entry.key.value == key:
            return entry.value.span
    return None


def lower(module: ast.Module) -> tuple[ir.Program | None, Lowered, list[Diagnostic]]:
    sink = DiagnosticSink()
    symbols = _collect(module, sink)
    reader = Reader(sink, symbols)
    schemas = _schemas(reader)
    out = Lowered(symbols)
    base_dir = Path(module.file).resolve().parent
    link_ends = reader.reference(("device",), "device", code="E0401")
    seen_links: dict[frozenset[str], ast.Decl] = {}
    network = flows.Network()
    for decl in module.decls:
        errors_before = len(sink.items)
        fields = _read_block(decl, schemas[decl.kind], reader)
        joins: tuple[str, str] | None = None  # the devices a link joins, if it is a valid pair
        if decl.kind == "link":
            assert decl.peer is not None
            a, b = link_ends("link", decl.name), link_ends("link", decl.peer)
            if BAD not in (a, b):
                pair = frozenset((a, b))
                if a == b:
                    sink.error("E0402", f"link from `{a}` to itself", decl.peer.span,
                               "same device at both ends")
                    network.complete = False  # which devices it was meant to join is unknown
                elif pair in seen_links:
                    network.complete = False
                    sink.error("E0402", f"`{a}` and `{b}` are linked twice", decl.kind_span,
                               "second link", labels=(Label(seen_links[pair].kind_span,
                                                            "first link"),),
                               help="merge the two links")
                else:
                    seen_links[pair] = decl
                    joins = (a, b)
            else:
                network.complete = False
            fields["a"], fields["b"] = a, b
        if decl.kind == "model" and BAD not in (fields["source"], fields["inputs"]):
            inputs, input_entries = fields["inputs"]
            span = entry_span(decl, "source") or decl.name.span
            path = locate(fields["source"], base_dir, span, sink)
            outputs = None if path is None else check_model(decl, path, inputs, input_entries,
                                                           span, sink)
            fields["inputs"], fields["source"] = inputs, str(path)
            fields["outputs"] = outputs if outputs is not None else BAD
            if outputs is not None:
                _resolve_variants(decl, fields, base_dir, sink)
            if fields.get("split") == "none":
                for key in ("adapt", "on_disconnect"):
                    if fields.get(key) not in (None, BAD):
                        sink.error("E0615", f"model `{decl.name.value}` is never split: "
                                   f"`{key}` has nothing to act on",
                                   entry_span(decl, key) or decl.name.span, f"`{key}` here",
                                   help="remove `split = none` to let placement split it, or "
                                        f"remove `{key}`")
                        fields[key] = BAD
        clean = len(sink.items) == errors_before and BAD not in fields.values()
        for key in ("impl", "samples", "trainer"):
            if decl.kind not in ("operator", "training") or fields.get(key, BAD) is BAD:
                continue
            impl_module = fields[key].partition(":")[0]
            if module_file(impl_module, search_path(base_dir)) is None:
                sink.warn("W0608", f"module `{impl_module}` of {decl.kind} `{decl.name.value}` "
                             "not found", entry_span(decl, key) or decl.name.span,
                             "no such module here",
                             help=f"`edgeflow {'run' if key == 'impl' else 'train'}` looks "
                                  "beside the .ef file, then on this Python's path; a deployed "
                                  f"{'worker' if key == 'impl' else 'client'} needs it installed "
                                  "in its image")
        # a broken device or link still takes part in routes, as declared
        if not clean and joins is not None:
            network.links.append((*joins, decl.span))
        elif not clean and decl.kind == "device" and symbols.decls.get(decl.name.value) is decl:
            count = fields.get("count", 1)
            network.counts[decl.name.value] = None if count is BAD else count
        if decl.kind != "link" and (not clean or symbols.decls.get(decl.name.value) is not decl):
            out.broken.add(decl.name.value)
            continue
        if clean:
            _add_entity(out, decl, fields)
    flows.check(out, sink, network)
    learn.check(out, sink)
    diagnostics = sorted(sink.items, key=Diagnostic.sort_key)
    if has_errors(diagnostics) or out.app is None:
        return None, out, diagnostics
    program = ir.Program(
        file=module.file, app=out.app, devices=out.devices, links=tuple(out.links),
        sensors=out.sensors, sinks=out.sinks, models=out.models, operators=out.operators,
        pipelines=out.pipelines, privacy=out.privacy, trainings=out.trainings)
    return program, out, diagnostics


def _add_entity(out: Lowered, decl: ast.Decl, f: dict[str, Any]) -> None:
    name, span = decl.name.value, decl.span
    if decl.kind == "app":
        out.app = ir.App(name=name, span=span, description=f.get("description", ""),
                         objective=f.get("objective", ("latency",)))
    elif decl.kind == "device":
        out.devices[name] = ir.Device(
            name=name, span=span, tier=f["tier"], compute_flops=f["compute"],
            memory_bytes=f["memory"], count=f.get("count", 1), power_w=f.get("power", 0.0),
            cost_usd_per_s=f.get("cost", 0.0), labels=f.get("labels", {}), gpu=f.get("gpu"),
            message_latency_s=f.get("message_latency", ir.MESSAGE_LATENCY_S),
            message_bandwidth_bps=f.get("message_bandwidth", ir.MESSAGE_BANDWIDTH_BPS),
            cpus=f.get("cpus", 1),
            worker_memory_bytes=math.ceil(f.get("worker_memory", ir.WORKER_MEMORY_BYTES)),
            broker_memory_bytes=math.ceil(f.get("broker_memory", ir.BROKER_MEMORY_BYTES)),
            driver_memory_bytes=math.ceil(f.get("driver_memory", ir.DRIVER_MEMORY_BYTES)),
            compute_int8_ops=f.get("compute_int8"))
    elif decl.kind == "link":
        out.links.append(ir.Link(a=f["a"], b=f["b"], bandwidth_bps=f["bandwidth"],
                                 latency_s=f["latency"], cost_usd_per_byte=f.get("cost", 0.0),
                                 span=span))
    elif decl.kind == "sensor":
        out.sensors[name] = ir.Sensor(name=name, span=span, device=f["on"], rate_hz=f["rate"],
                                      emits=f["emits"], privacy=f.get("privacy", ()))
    elif decl.kind in ("actuator", "store"):
        out.sinks[name] = ir.Sink(name=name, span=span, device=f["on"],
                                  kind="actuator" if decl.kind == "actuator" else "store")
    elif decl.kind == "model":
        out.models[name] = ir.Model(name=name, span=span, source=f["source"],
                                    inputs=f["inputs"], outputs=f["outputs"],
                                    split=f.get("split", "auto"),
                                    variants=f.get("variants", ()),
                                    min_fidelity=f.get("min_fidelity"),
                                    validation=f.get("validation"), adapt=f.get("adapt"),
                                    on_disconnect=f.get("on_disconnect"),
                                    rollout=f.get("rollout"))
    elif decl.kind == "operator":
        out.operators[name] = ir.Operator(
            name=name, span=span, work_flop=f["work"], emits=f["emits"],
            memory_bytes=f.get("memory", 0.0), removes=f.get("removes", ()),
            impl=f.get("impl"))
    elif decl.kind == "pipeline":
        slo, constraints = f.get("slo", (ir.Slo(), {}))
        out.pipelines[name] = ir.Pipeline(
            name=name, span=span, flow=tuple(s.value for s in f["flow"]), slo=slo,
            step_spans=tuple(s.span for s in f["flow"]),
            slo_spans={k: c.span for k, c in constraints.items()})
    elif decl.kind == "privacy":
        out.privacy[name] = ir.PrivacyRule(name=name, span=span, allow=f["allow"],
                                           updates=f.get("updates"))
    elif decl.kind == "training":
        out.trainings[name] = ir.Training(
            name=name, span=span, model=f["model"], trainable=f.get("trainable", ()),
            clients=f["clients"], data=f["data"], samples=f["samples"], trainer=f["trainer"],
            config=f.get("config", {}), aggregate=f["aggregate"], rounds=f.get("rounds", 3),
            min_clients=f.get("min_clients"), epochs=f.get("epochs", 1),
            examples=f["examples"], batch=f.get("batch", 32),
            strategy=f.get("strategy", ir.Strategy(name="fedavg")), dp=f.get("privacy"),
            round_time_s=f["round_time"], every_s=f.get("every"))


def _frames_folder(text: str, base_dir: Path, span: Span, sink: DiagnosticSink,
                   role: str) -> str | None:
    """The absolute folder of frames `text` names (relative to the app's folder), or None with
    E0610 when it is no folder or holds no .npy/.npz file (the frames themselves are read when
    the variant is made, by `plan`)."""
    folder = (base_dir / text).resolve()
    if not folder.is_dir():
        sink.error("E0610", f"{role} folder `{text}` not found", span, "no such folder",
                   help="frames are .npy or .npz files in a folder, relative to the .ef file")
        return None
    if not any(p.suffix in (".npy", ".npz") for p in folder.iterdir()):
        sink.error("E0610", f"{role} folder `{text}` holds no .npy or .npz frames", span,
                   "no frames", help="save each frame with numpy.save (one input) or "
                                     "numpy.savez (an array per input name)")
        return None
    return str(folder)


def _string_span(entry: ast.Entry | None, default: Span) -> Span:
    return entry.value.span if entry is not None else default


def _resolve_variants(decl: ast.Decl, fields: dict[str, Any], base_dir: Path,
                      sink: DiagnosticSink) -> None:
    """`variants` and `validation` of a model whose own file checked: each variant file located
    and matching the model's inputs and outputs (E0613), each frames folder present (E0610);
    `fields["variants"]` becomes the IR's variants (or BAD)."""
    validation = fields.get("validation")
    if validation is not None and validation is not BAD:
        span = entry_span(decl, "validation") or decl.name.span
        fields["validation"] = _frames_folder(validation, base_dir, span, sink, "validation") \
            or BAD
    declared = fields.get("variants")
    if declared is None or declared is BAD:
        return
    inputs, outputs = fields["inputs"], fields["outputs"]
    out: list[ir.ModelVariant] = []
    for v in declared:
        span = v.entry.value.span
        if v.source is not None:
            path = locate(v.source, base_dir, span, sink)
            if path is not None and (int8 := check_variant(
                    decl.name.value, v.name, path, inputs, outputs, span, sink)) is not None:
                out.append(ir.ModelVariant(name=v.name, source=str(path), int8=int8,
                                           span=v.entry.span))
            continue
        args = dict(v.quantize or {})
        call = v.entry.value
        arg_spans = {a.key.value: a.value.span for a in call.args
                     if isinstance(a, ast.Entry)}
        for role in ("calibration", "validation"):
            if role in args:
                args[role] = _frames_folder(args[role], base_dir, arg_spans[role], sink, role)
        if None not in args.values():
            out.append(ir.ModelVariant(name=v.name, source="", int8=True, span=v.entry.span,
                                       quantize=ir.Quantize(**args)))
    fields["variants"] = tuple(out) if len(out) == len(declared) else BAD


@lru_cache(maxsize=1)
def block_keys() -> dict[str, dict[str, tuple[bool, str]]]:
    """Every block kind's keys: whether each is required, and an example entry (for editors)."""
    schemas = _schemas(Reader(DiagnosticSink(), Symbols({})))
    return {kind: {k: (key.required, key.example) for k, key in keys.items()}
            for kind, keys in schemas.items()}
