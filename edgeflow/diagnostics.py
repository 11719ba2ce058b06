"""Diagnostics: the one model every user-facing failure is reported in, its error codes, and its
renderers (rustc-style text with the source line and a caret under the span, and JSON).

Messages follow the rustc guide: lowercase, no trailing period, names in backticks, the fix only in
`help`. `edgeflow explain CODE` prints a code's long form from `CODES`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum

from edgeflow.span import Span


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Label:
    span: Span
    message: str


@dataclass(frozen=True, slots=True)
class Diagnostic:
    code: str
    message: str
    span: Span
    label: str = ""
    labels: tuple[Label, ...] = ()
    notes: tuple[str, ...] = ()
    help: str | None = None

    @property
    def severity(self) -> Severity:
        return CODES[self.code].severity

    def sort_key(self) -> tuple[str, int, int, str]:
        return (self.span.file, self.span.start, self.span.end, self.code)

    def to_json(self) -> dict[str, object]:
        return {
            "code": self.code,
            "severity": self.severity.value,
            "message": self.message,
            "span": self.span.to_json(),
            "label": self.label,
            "labels": [{"span": lb.span.to_json(), "message": lb.message} for lb in self.labels],
            "notes": list(self.notes),
            "help": self.help,
        }


@dataclass(frozen=True, slots=True)
class Code:
    severity: Severity
    title: str
    explanation: str


def _e(title: str, explanation: str) -> Code:
    return Code(Severity.ERROR, title, explanation.strip())


def _w(title: str, explanation: str) -> Code:
    return Code(Severity.WARNING, title, explanation.strip())


CODES: dict[str, Code] = {
    # ---------------------------------------------------------------- syntax
    "E0001": _e("syntax error", """
The parser met a token that cannot appear where it stands, for example a missing `=` between a key
and its value or a declaration keyword misspelt. The message lists everything that was expected
(groups by name: a declaration keyword, a comparison). Syntax from other languages is named with
its edgeflow equivalent: a flow joins its steps with `->` (not `=>`), a link its devices with
`<->`. The parser resumes at the next declaration, so one run reports an error in each broken
declaration.

    device gw { tier edge }        # error: expected `=`
    device gw { tier = edge }      # fixed
    flow = camera => detector      # error: expected `->`, found `=>`
"""),
    "E0002": _e("invalid character", """
A character that no token of the language starts with, such as `@` or a non-ASCII letter outside a
string. Names are `[a-z_][a-z0-9_]*`; anything else belongs in a double-quoted string. Comments
start with `#` and run to the end of the line (`//` and `/* */` are not comments); entries are
`key = value` (not `key: value`), separated by commas or new lines (not `;`); strings are in double
quotes; arrows are ASCII (`->`, `<->`, not `→`).
"""),
    "E0003": _e("unexpected end of declaration", """
The file or a declaration ends before it is complete, most often because a `{` or `[` is not
closed. The label points at where the parser stopped; the secondary label at what is still open.
"""),
    "E0004": _e("file is not valid UTF-8", """
`.ef` files are read as UTF-8. The label points at the first byte that is not valid UTF-8; save the
file as UTF-8 (names are ASCII; strings may hold any Unicode).
"""),
    "E0005": _e("cannot read file", """
The file could not be read (it is a folder, or permission was denied).
"""),
    # ---------------------------------------------------------------- names
    "E0101": _e("unknown name", """
A name is used that no declaration defines. Every declared name (app, device, sensor, actuator,
store, model, operator, pipeline, privacy label) lives in one namespace; the help suggests the
closest declared name.

    sensor cam { on = line_gateway, ... }   # error: no device `line_gateway`
"""),
    "E0102": _e("duplicate name", """
Two declarations have the same name. All names share one namespace, so a device and a sensor cannot
both be called `cam`. Rename one of them.
"""),
    "E0103": _e("name refers to the wrong kind of declaration", """
A name is declared, but not as the kind the key needs: `on` takes a device, a flow starts at a
sensor, `privacy` and `removes` take privacy labels.

    sensor cam { on = archive, ... }   # error: `archive` is a store, not a device
"""),
    "E0104": _e("missing or repeated `app`", """
Every file declares exactly one `app NAME { ... }` block: it names the application and holds its
objective.
"""),
    "E0105": _e("invalid name", """
Declared names are lowercase identifiers, `[a-z_][a-z0-9_]*`, so they can be used verbatim as
Kubernetes object names and MQTT topic levels.
"""),
    # ---------------------------------------------------------------- keys
    "E0201": _e("unknown key", """
A key that the block does not take. The help suggests the closest valid key that the block does
not already have, keeping the value as written (and the key it suggests is not also reported
missing); `edgeflow explain` and docs/language.md list every key of every block.

    device gw { tier = edge, compute = 1 TFLOPS, memroy = 4 GiB }
    # did you mean `memory`? write `memory = 4 GiB`
"""),
    "E0202": _e("missing required key", """
A block lacks a key it requires, e.g. a device without `compute`. The label is on the declaration's
name; the help shows the key with an example value.
"""),
    "E0203": _e("duplicate key", """
The same key is given twice in one block (or one map); the second would silently win, so it is an
error. Remove one of them.
"""),
    "E0204": _e("wrong kind of value", """
A key was given a value of the wrong shape, e.g. a list where a quantity is expected
(`memory = [4 GiB]`) or a string where a name is expected.
"""),
    # ---------------------------------------------------------------- values
    "E0301": _e("unknown unit", """
A number carries a unit the language does not know. Units are case-sensitive (`ms`, `Mbps`, `GiB`,
`TFLOPS`). A suggestion never changes the value: another spelling of the same unit is suggested as
it is; a unit the language lacks (a prefix it has no unit for, bytes per second, minutes) is
converted, number and all; a unit that can be read more than one way (`mbps`: megabits or
megabytes?) gets the list of units instead of a guess.

    latency = 5 msec          # did you mean `ms`?
    bandwidth = 0.25 MB/s     # bytes per second: write `2 Mbps`
    work = 50 KFLOP           # kilo is not a unit prefix of work here: write `0.05 MFLOP`
"""),
    "E0302": _e("wrong unit dimension", """
A quantity has a unit of the wrong dimension for its key, or lacks a unit where one is needed, e.g.
`latency = 5 GiB` or `rate = 30`. The message names the dimension the key expects and the help its
units; a bare number gets no guessed unit (`latency < 10` could be 10 ms or 10 s).
"""),
    "E0303": _e("invalid value", """
A value is out of range: a negative or zero rate, compute, memory or bandwidth; a `count` below 1
or not a whole number; a negative latency, power or cost.
"""),
    "E0304": _e("invalid tensor type", """
A tensor type is `DTYPE[d0, d1, ...]` with DTYPE one of `float32 float16 int8 uint8 int32 int64
bool` and every dimension a whole number >= 1. A symbolic dimension (`float32[n, 3]`) is only
meaningful for a model's ONNX file; in `.ef` files every dimension must be bound to a number.
"""),
    "E0305": _e("invalid choice", """
A key that takes one of a fixed set of words was given another: `tier` is `edge`, `fog` or `cloud`;
`split` is `auto` or `none`; objective terms are `latency`, `cost` and `energy`.
"""),
    # ---------------------------------------------------------------- links
    "E0401": _e("link to an unknown device", """
Both ends of `link A <-> B` must be declared devices.
"""),
    "E0402": _e("invalid link", """
A link joins two different devices, and at most one link is declared between any two devices.
"""),
    # ---------------------------------------------------------------- dataflow
    "E0501": _e("flow does not start at a sensor", """
Every pipeline's `flow` starts at a sensor: the data it processes comes from somewhere.

    flow = normalize -> detector -> reject_arm     # error: `normalize` is an operator
"""),
    "E0502": _e("flow does not end at a sink", """
Every pipeline's `flow` ends at an actuator or a store: the result goes somewhere.
"""),
    "E0503": _e("invalid step in a flow", """
The steps between a flow's sensor and its sink are operators or models; a sensor, sink, device or
pipeline in the middle of a flow is an error. A flow has at least a sensor and a sink.
"""),
    "E0504": _e("cycle in the dataflow", """
The union of all pipelines' flows must be acyclic: `a -> b` in one pipeline and `b -> a` in another
would make a message wait for itself. The labels show the edges of the cycle.
"""),
    "E0505": _e("tensor type mismatch", """
A step receives a tensor of a different type than it takes: a model's declared input type must equal
what its producer emits (dtype and every dimension).

    operator normalize { emits = float32[1, 3, 224, 224] ... }
    model detector { inputs = { images = float32[1, 3, 320, 320] } ... }
    flow = camera -> normalize -> detector -> arm    # error: 224 vs 320
"""),
    "E0506": _e("no route between sensor and sink", """
A pipeline's data must be able to travel from its sensor's device to its sink's device over the
declared links (for every replica). Add a link, or move the sink.
"""),
    "E0507": _e("throughput above the sensor rate", """
`throughput >= R` can only hold if the pipeline's sensor produces at least R messages per second.
"""),
    "E0508": _e("mixed replica counts", """
A connected part of the dataflow is replicated once per instance of its sensors' device. Sensors of
one connected part on devices with different counts (both > 1) give no consistent replica count.
"""),
    "E0509": _e("invalid service-level objective", """
`slo` is one constraint or a list of them: `latency < T` (or `<=`) and `throughput >= R` (or `>`).
"""),
    "W0510": _w("declared but not used in any pipeline", """
A sensor, sink, operator or model that no pipeline's flow uses is never placed or deployed.
"""),
    # ---------------------------------------------------------------- models
    "E0601": _e("model file not found", """
A model's `source` names an ONNX file relative to the `.ef` file, and that file does not exist.
"""),
    "E0602": _e("not an ONNX model", """
The model's `source` exists but is not a loadable ONNX model (protobuf), or fails `onnx.checker`.
"""),
    "E0603": _e("model inputs do not match", """
A model's `inputs` must bind every graph input of the ONNX file (initializers excluded), by name,
and nothing else. The help lists the model's actual input names.
"""),
    "E0604": _e("dynamic dimension left unbound", """
An ONNX input has a dynamic dimension (`batch`, `?`, `-1`) that the declared input type does not
bind to a number. Every dimension must be concrete for the compiler to compute work and sizes.
"""),
    "E0605": _e("input type does not match the model", """
A declared input type disagrees with the ONNX file: a different element type, a different rank, or
a different size for a dimension the model fixes.
"""),
    "E0606": _e("model shape cannot be determined", """
A tensor's shape could not be determined from the bound inputs, even after folding the model's
shape subgraphs into constants: typically an operator from a custom domain that ONNX shape inference
does not know, or a shape that depends on the input data. The compiler needs every activation's
size to cost transfers. Export the model with static shapes, or replace the operator.
"""),
    "E0607": _e("model file outside the app's folder", """
A model's `source` resolves (symbolic links followed) to a file outside the folder of the `.ef`
file. edgeflow copies model files into the bundles it writes, so an app opened from elsewhere
could otherwise ship any file the user can read. Keep models in the app's folder (e.g.
`models/`), or name the folders models may also come from in the environment variable
`EDGEFLOW_MODEL_ROOTS` (separated like `PATH`).

    model detector { source = "../../shared/detector.onnx", ... }   # error
"""),
    "W0608": _w("module of an operator or training not found", """
An operator's `impl = "package.module:function"`, or a training's `samples` or `trainer`, names a
module that is neither beside the `.ef` file nor on this Python's path. `check` only looks for the
module's file, it never imports it (an app opened in an editor may be hostile); `edgeflow run` and
`edgeflow train` refuse to start without it, and a deployed worker or client needs it installed in
its image (docs/runtime.md, docs/training.md).
"""),
    "W0609": _w("operator work without a formula", """
A model uses an operator whose work (FLOP) the cost model has no formula for: one outside the
default ONNX domain that edgeflow does not know (`com.microsoft.QAttention`, a custom op), or one
of the few default ops that do far more than one operation per output element (`Einsum`,
`Attention`, `DFT`, `STFT`, `LRN`). Its work is counted as one FLOP per output element, which
may make that part of the model look cheaper than it is, and the cut and placement decisions
built on it less exact. `split --format json` lists such operators in `no_formula_ops`;
`edgeflow profile` measures the real time of every node, and `split --edge-profile` /
`--cloud-profile` use it instead of the estimate.
"""),
    "E0610": _e("no frames to quantize with", """
`edgeflow quantize --calibration DIR` (or `--validation DIR`) names a folder that does not exist
or holds no frames. A frame is a `.npy` file (a model with one input: that input) or a `.npz`
file (an array per input name, as `numpy.savez(f, images=...)` writes), read in file-name order.
Quantization needs real frames to fit the int8 scales to the data; `--synthetic N` calibrates on
generated ones, for a speed estimate only.
"""),
    "E0611": _e("frame does not match the model", """
A calibration or validation frame cannot be used: it is not numpy data (pickled objects are never
loaded), it lacks an array for one of the model's inputs, or an array's element type or shape is
not exactly the input's bound type (`--input NAME=TYPE`). The message names the file and the
array.
"""),
    "W0612": _w("no fidelity claimed", """
The int8 model was written, but how closely it follows the float model was not measured: it was
calibrated on synthetic frames (`--synthetic N`) with no `--validation` frames, or on fewer than
five calibration frames (so none could be held out). Its speed and size are real; its accuracy is
unknown. Give `--validation DIR` with frames kept apart from the calibration frames.
"""),
    "E0613": _e("variant does not match its model", """
A model's variant (`variants = { tiny = "models/tiny.onnx" }`) must be interchangeable with the
model: the same input names with the same element types, and the same outputs — names, element
types and shapes under the model's bound `inputs`. Placement may run either in the model's place,
so the steps before and after it must not see a difference. The message says what differs.
"""),
    "E0614": _e("empty bandwidth range", """
`adapt = { bandwidth = [LOW, HIGH] }` names the bandwidths the compiled decision table covers: the
head of a split model picks, at run time, the cut that is fastest for the bandwidth it measures in
that range. The low end must be below the high end.
"""),
    "E0615": _e("adaptation on a model that is never split", """
`adapt` and `on_disconnect` act on the two halves of a split model: the head picks the cut, and
what the head does while the link to its tail is down. A model with `split = none` always runs
whole, so they have nothing to act on. Remove `split = none` to let placement split the model, or
remove the key.
"""),
    "W0616": _w("nothing to adapt in this plan", """
The model declares `adapt` or `on_disconnect`, but the plan gives them nothing to act on: it runs
the model whole (no replica is split), or it puts the two halves more than one link apart (the
decision table covers the one link between them). The plan still runs; the message names the model
and why. Weaker edge devices or a faster link make a split worthwhile; `edgeflow plan --explain`
shows why the plan chose as it did.
"""),
    "E0617": _e("outage fallback does not fit", """
`on_disconnect = local` runs the whole model on the head's device while the link to its tail is
down, so the device must run it at the pipeline's rate beside what the plan and the other models
falling back there already put on it, and every consumer of the model's output must be on that
device (the head sends the output on its own broker, which bridges none of it). `on_disconnect = buffer(frames = N)` must hold N of the head's largest
messages in the device's free memory. The message gives the numbers. Use `buffer` or `drop`, a
smaller `frames`, or a larger device.
"""),
    # ---------------------------------------------------------------- privacy
    "E0701": _e("undeclared privacy label", """
A sensor's `privacy` or an operator's `removes` names a label with no `privacy LABEL { allow = ... }`
declaration, so the compiler cannot know where such data may go.
"""),
    "W0702": _w("privacy label declared but never used", """
A `privacy` declaration that no sensor carries and no operator removes has no effect.
"""),
    "E0703": _e("data pinned where its privacy rule forbids it", """
A sensor, or a sink a pipeline delivers to, sits on a device whose tier a privacy label of the data
it handles does not allow: no placement can change that, so `check` reports it. The labels a sink
receives are its sensor's minus those an operator on the way `removes`. Move the sensor or sink to
a device on an allowed tier, add the tier to the rule's `allow`, or insert an operator that removes
the label before the data reaches the sink.
"""),
    # ---------------------------------------------------------------- placement
    "E0901": _e("no feasible placement", """
No assignment of units to devices meets every constraint at once: an SLO, a device's compute or
memory, a link's bandwidth, or a privacy rule. `edgeflow plan` (and `edgeflow check --plan`) says
which, with numbers, and points at the declarations involved: a link that would have to carry more
than its bandwidth, a device that would have to run above 100%, a pipeline whose SLO no placement
meets (naming its largest term), or a step that a privacy rule leaves nowhere to run. Relax the
limit named, or move the work: a faster device, a wider link, a lower rate, a `removes` earlier.
"""),
    "E0902": _e("app too large to place", """
Placement holds every (unit replica, candidate device) choice and every instance-level link in
memory. An app whose counts multiply past the limits (a million instance links, twenty million
unit options: above a city of 10,000 units on 1,100 devices) is refused before any
of it is built, naming the link or the app that is too large. A link between devices of different
counts joins every instance of one to every instance of the other; give both ends the same count
(one link per site) where that is what is meant, or plan the fleet in parts.
"""),
    "E0903": _e("no plan found in the time given", """
The solver's time limit (`--time-limit`, 30 s by default) ran out before it found any plan, and
none of the quick plans it starts from (the baselines, the symmetric plan) meets every
constraint. That is not a proof that no plan exists: give it more time, or make the app smaller.
`plan` reports status `unknown`; `compile` and `check --plan` write nothing.
"""),
    # ---------------------------------------------------------------- split
    "E0801": _e("invalid cut", """
`edgeflow split --cut T1,T2` names tensors that do not form a valid cut: a tensor that is not an
activation (a weight, a shape computation), or a set that leaves another tensor crossing (one side
of a residual block alone). The message says which tensors the head would also have to send. The
candidates `edgeflow split` lists are all valid cuts.
"""),
    "E0802": _e("unreadable profile", """
A file given to `--edge-profile` or `--cloud-profile` is not a profile written by
`edgeflow profile` (JSON with a `node_seconds` object of node names to seconds).
"""),
    # ---------------------------------------------------------------- output
    "E1001": _e("cannot write the output", """
edgeflow could not write a file or folder it was asked to produce (`compile -o`, `split --emit`,
`profile -o`, `init`): the path is a file where a folder is needed, a folder cannot be created, or
permission was denied. Nothing was written; the message names the path and the system's reason.
"""),
    "E1002": _e("output would replace files edgeflow did not write", """
The output path holds files that edgeflow did not generate: a folder given to `compile -o` with
other files in it, an existing `head.onnx`, `tail.onnx` or profile that another tool wrote, or
any existing file `edgeflow init` would create. edgeflow never replaces or deletes them: choose
another output path, or pass `--force` to write beside them (`compile` keeps foreign files;
`split --emit`, `profile` and `init` replace the named files).
"""),
    "E1003": _e("two things would get one generated name", """
Every name edgeflow generates (Kubernetes object, file, broker, MQTT identity, bridge) is the
declared name made readable (`_` becomes `-`, instance `cam[1]` becomes `cam-1`) when that reads
back to exactly one thing, and otherwise the name's start and end with 8 hex digits of a sha256 of
what it names (`cam_1` becomes `cam-1--4dbbb8c3`). Two hashed names can only be equal if those
digits coincide; edgeflow then refuses the bundle and names both declarations. Rename one.
"""),
    "E1004": _e("the target cannot carry this deployment", """
A deployment target has limits of its own that the plan exceeds on one device. Azure IoT Edge
(`--target azure-iot-edge`): a module twin's desired properties hold at most 32 KB (a unit's
configuration travels in its module's twin, the module list in the `$edgeAgent` twin), and a
deployment runs at most 50 modules. AWS IoT Greengrass (`--target greengrass`): a component's
name, `edgeflow.APP.UNIT-rR`, has at most 128 characters. The message names the device instance
or unit and the figure. Compile for another target, place fewer units on that device, or use
shorter names (docs/targets.md).
"""),
    # ---------------------------------------------------------------- training
    "E1301": _e("training data not on the clients", """
A `training` block's `data` names a sensor or store on another device than its `clients`. Clients
train on the data they hold, so that raw data never moves for training: only model updates leave a
client. Name a sensor or store on the clients, or make its device the clients.
"""),
    "E1302": _e("not a trainable weight", """
A name in a training's `trainable` is not a float initializer of the model's ONNX file: a typo, an
activation, or an integer tensor (a shape, an index) that has no gradient. The help lists the
model's float initializers. Without `trainable` every float initializer is trained.
"""),
    "E1303": _e("model updates would leave the tiers a privacy rule allows", """
Model updates trained on data carrying a privacy label are derived from that data. Where they may
go is the rule's `updates = { allow = [TIERS] }`, and without it the rule's `allow`: an
aggregator on another tier would receive them. Aggregate on an allowed tier (a site's server
before the cloud), or declare where updates may go, with what they need there:
`updates = { allow = [edge, fog, cloud], require = dp }`. The connections to the aggregators are
TLS end to end, so devices routing them on the way see no update.
"""),
    "E1304": _e("model updates need differential privacy", """
A privacy rule of the training's data says `updates = { ..., require = dp }`, but the training
declares no `privacy = dp(clip = C, noise = Z)`. With it every client's update is clipped and the
first aggregation adds Gaussian noise before anything leaves the site; `edgeflow train` reports
the privacy budget spent (docs/training.md).
"""),
    "E1305": _e("a round of updates does not fit the links", """
In one round every client receives the model and sends its update (the `trainable` weights, each
way), and with two aggregation tiers every site does the same with the top. A link carries the
bytes of every client routed over it at its bandwidth; with the training time, the slowest client
needs longer than `round_time`. The message names that client and the busiest link with its bytes
per round. Train fewer weights, widen the link, aggregate nearer the clients, or give the round
more time.
"""),
    "E1306": _e("the clients cannot train", """
A client trains on `examples` examples for `epochs` epochs per round at about three times the
model's forward work per example, on its device's `compute`; and it holds the model's weights,
three copies of the trainable ones (gradients, optimizer moments), the activations of a `batch`
and a Flower SuperNode at its peak (505 MiB). The message says which does not fit, with the figures: the
training is longer than `round_time`, or it needs more memory than the device has.
"""),
    "E1307": _e("the aggregators do not form a hierarchy", """
`aggregate` lists one or two devices other than the clients, nearest first: every client instance
sends its update to a first-tier instance (all to one, instance i to instance i for equal counts,
or consecutive blocks when the first tier's count divides the clients'), and with two tiers every
site to the one top aggregator (count 1). The message says what is wrong: too many tiers, counts
that do not divide, a top tier of several instances, `min_clients` above the clients of a site,
or no route from a client to its aggregator.
"""),
    # ---------------------------------------------------------------- edgeflow train
    "E1401": _e("the training could not run", """
`edgeflow train` stopped without a new model version: the app has no training (or several, and
`--training` names none of them), the output folder holds files it did not write, Flower is not
installed (`pip install 'edgeflow[train]'`), the `samples` or `trainer` module is missing, a
client's `samples` or `trainer` raised or returned arrays of the wrong names, shapes or types, or
a Flower process could not start (the message quotes the end of its log under
`federation/logs/` in the output folder). Every process the training had started is stopped.
"""),
    # ---------------------------------------------------------------- edgeflow certs
    "E1201": _e("not a bundle, or a CA that cannot sign", """
`edgeflow certs` reads the `secrets.json` of a folder `edgeflow compile` wrote; the folder named has
none, or it is not one edgeflow wrote. With `--ca-cert` and `--ca-key` (given together) the CA must
be a CA certificate with its EC private key.
"""),
    # ---------------------------------------------------------------- edgeflow run
    "E1101": _e("the run could not start", """
`edgeflow run` stopped before measuring anything: the output folder holds files it did not write,
a broker, the link emulation or a worker could not start (the message quotes the last line of its
log under `logs/` in the output folder), or `--broker mosquitto` was asked for where the
`mosquitto` command is not installed. Every process the run had started is stopped.
"""),
}


def has_errors(diagnostics: list[Diagnostic]) -> bool:
    return any(d.severity is Severity.ERROR for d in diagnostics)


# ============================================================================ rendering

_MAX_SNIPPET = 100  # characters of a source line shown around a span


def _display_line(line: str, col0: int, end0: int) -> tuple[str, int, int]:
    """Cut an over-long line to a window around [col0, end0) and expand tabs; returns the text
    and the span's columns within it (0-based)."""
    prefix = ""
    if len(line) > _MAX_SNIPPET:
        lo = max(0, col0 - 30)
        hi = min(len(line), max(end0, col0 + 1) + 30, lo + _MAX_SNIPPET)
        if lo > 0:
            prefix = "..."
        line = prefix + line[lo:hi] + ("..." if hi < len(line) else "")
        col0, end0 = col0 - lo + len(prefix), min(end0, hi) - lo + len(prefix)
    before = line[:col0].expandtabs(4)
    marked = line[col0:end0].expandtabs(4)
    return line.expandtabs(4), len(before), len(before) + len(marked)


class SourceCache:
    """Lines of the files diagnostics point into, read once."""

    def __init__(self, texts: dict[str, str] | None = None) -> None:
        self._lines: dict[str, list[str]] = {}
        for name, text in (texts or {}).items():
            self.add(name, text)

    def add(self, name: str, text: str) -> None:
        self._lines[name] = text.split("\n")

    def line(self, file: str, number: int) -> str | None:
        lines = self._lines.get(file)
        if lines is None or not 1 <= number <= len(lines):
            return None
        return lines[number - 1].rstrip("\r")


def _underline(span: Span, line_text: str, mark: str) -> tuple[str, int, int]:
    end_col = span.end_col if span.end_line == span.line else len(line_text) + 1
    text, a, b = _display_line(line_text, span.col - 1, max(end_col - 1, span.col))
    return text, a, max(b, a + 1)


def render_text(diag: Diagnostic, sources: SourceCache) -> str:
    sev = diag.severity.value
    out = [f"{sev}[{diag.code}]: {diag.message}"]
    marks = [(diag.span, diag.label, "^")] + [(lb.span, lb.message, "-") for lb in diag.labels]
    shown = [m for m in marks if m[0].file == diag.span.file]
    width = len(str(max(m[0].line for m in shown)))
    pad = " " * width
    out.append(f"{pad}--> {diag.span.file}:{diag.span.line}:{diag.span.col}")
    out.append(f"{pad} |")
    previous = None
    for span, message, mark in sorted(shown, key=lambda m: (m[0].line, m[0].col, m[2] != "^")):
        text = sources.line(span.file, span.line)
        if text is None:
            continue
        if previous is not None and span.line > previous + 1:
            out.append(f"{pad} ...")
        shown_text, a, b = _underline(span, text, mark)
        if span.line != previous:
            out.append(f"{span.line:>{width}} | {shown_text}".rstrip())
        out.append(f"{pad} | {' ' * a}{mark * (b - a)} {message}".rstrip())
        previous = span.line
    for lb in diag.labels:
        if lb.span.file != diag.span.file:
            out.append(f"{pad} = note: {lb.message} ({lb.span.file}:{lb.span.line}:{lb.span.col})")
    for note in diag.notes:
        out.append(f"{pad} = note: {note}")
    if diag.help:
        out.append(f"{pad} = help: {diag.help}")
    return "\n".join(out) + "\n"


def render_summary(diagnostics: list[Diagnostic]) -> str:
    errors = sum(d.severity is Severity.ERROR for d in diagnostics)
    warnings = len(diagnostics) - errors
    parts = []
    if errors:
        parts.append(f"{errors} error{'s' if errors != 1 else ''}")
    if warnings:
        parts.append(f"{warnings} warning{'s' if warnings != 1 else ''}")
    return ", ".join(parts) if parts else "no problems"


def render_json(diagnostics: list[Diagnostic]) -> str:
    return json.dumps([d.to_json() for d in diagnostics], indent=2) + "\n"


def explain(code: str) -> str | None:
    entry = CODES.get(code.upper())
    if entry is None:
        return None
    return f"{code.upper()} ({entry.severity.value}): {entry.title}\n\n{entry.explanation}\n"


@dataclass
class DiagnosticSink:
    """Collects diagnostics during a pass."""

    items: list[Diagnostic] = field(default_factory=list)

    def error(self, code: str, message: str, span: Span, label: str = "", *,
              labels: tuple[Label, ...] = (), notes: tuple[str, ...] = (),
              help: str | None = None) -> None:
        self.items.append(Diagnostic(code, message, span, label, labels, notes, help))

    warn = error  # severity comes from the code; the alias reads better at call sites
