"""The typed IR of a checked program (pydantic). Every quantity is in SI units:
seconds, Hz, bit/s, bytes, FLOP, FLOP/s, W, USD/s (device cost) and USD/byte (link cost).

Only a program without errors is lowered to IR, so fields here are never missing or invalid.
Each entity keeps the `Span` of its declaration for diagnostics raised by later stages.
"""

from __future__ import annotations

from enum import Enum
from math import prod
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgeflow.span import Span

DTYPE_BYTES: dict[str, int] = {
    "float32": 4, "float16": 2, "int8": 1, "uint8": 1, "int32": 4, "int64": 8, "bool": 1,
}


MESSAGE_LATENCY_S = 0.7e-3
MESSAGE_BANDWIDTH_BPS = 1.5e9
"""What one message through a device's broker costs by default (publish, broker, receive,
encode and decode): 0.7 ms plus its bytes at 1.5 Gbit/s, measured with the worker and mosquitto
on a 2-core machine by benchmarks/runtime_overhead.py. A device may declare its own
(`message_latency`, `message_bandwidth`)."""

MESSAGE_HEADER_BYTES = 512
"""The bytes a message carries besides its tensors (its header, the MQTT and TLS framing), on
every link and in every broker."""

WORKER_MEMORY_BYTES = 128 * 2**20
BROKER_MEMORY_BYTES = 64 * 2**20
DRIVER_MEMORY_BYTES = 64 * 2**20
"""What the deployment's processes need on a device besides the models' weights, by default: a
unit's worker (Python, onnxruntime, the MQTT client: 57-97 MiB resident with a small model
measured on this machine), a broker (mosquitto with its queues), a sensor's or sink's driver
(55 MiB resident). A device may declare its own (`worker_memory`, `broker_memory`,
`driver_memory`). Placement counts them and the k8s bundle requests exactly them."""

WORKER_CPU = 0.01
BROKER_CPU = 0.05
DRIVER_CPU = 0.01
"""The CPUs each process reserves besides the compute its work takes (a unit's worker reserves
its compute share of the device plus this): 10m, 50m and 10m in the k8s bundle's requests. A
device's whole compute is its `cpus` CPUs (1 by default)."""


class Tier(str, Enum):
    EDGE = "edge"
    FOG = "fog"
    CLOUD = "cloud"


class _Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


class TensorType(_Node):
    dtype: Literal["float32", "float16", "int8", "uint8", "int32", "int64", "bool"]
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return DTYPE_BYTES[self.dtype] * prod(self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(map(str, self.shape))}]"


class Declared(_Node):
    name: str
    span: Span = Field(exclude=True, repr=False)


class App(Declared):
    description: str = ""
    objective: tuple[str, ...] = ("latency",)  # names in edgeflow.objectives.TERMS


class Device(Declared):
    tier: Tier
    compute_flops: float = Field(gt=0)
    memory_bytes: float = Field(gt=0)
    count: int = Field(ge=1, default=1)
    power_w: float = Field(ge=0, default=0.0)
    cost_usd_per_s: float = Field(ge=0, default=0.0)
    labels: dict[str, str] = {}
    gpu: str | None = None  # the extended resource its units request, e.g. nvidia.com/gpu
    message_latency_s: float = Field(ge=0, default=MESSAGE_LATENCY_S)
    message_bandwidth_bps: float = Field(gt=0, default=MESSAGE_BANDWIDTH_BPS)
    cpus: int = Field(ge=1, default=1)  # the CPUs its compute is spread over (k8s requests)
    worker_memory_bytes: int = Field(ge=0, default=WORKER_MEMORY_BYTES)
    broker_memory_bytes: int = Field(ge=0, default=BROKER_MEMORY_BYTES)
    driver_memory_bytes: int = Field(ge=0, default=DRIVER_MEMORY_BYTES)
    # int8 operations per second (`compute_int8`); None: an int8 model runs at `compute_flops`
    compute_int8_ops: float | None = Field(gt=0, default=None)

    def rate(self, int8: bool) -> float:
        """Operations per second of a model variant's work: int8 or float."""
        return (self.compute_int8_ops or self.compute_flops) if int8 else self.compute_flops

    def instance(self, index: int) -> str:
        """The name of instance `index`: `NAME` for a single device (whatever the index, so a
        single device serves every replica), `NAME[i]` for a device with count > 1."""
        return self.name if self.count == 1 else f"{self.name}[{index}]"

    def instances(self) -> list[str]:
        return [self.instance(i) for i in range(self.count)]


class Link(_Node):
    a: str
    b: str
    bandwidth_bps: float = Field(gt=0)
    latency_s: float = Field(ge=0)
    cost_usd_per_byte: float = Field(ge=0, default=0.0)
    span: Span = Field(exclude=True, repr=False)


class Sensor(Declared):
    device: str
    rate_hz: float = Field(gt=0)
    emits: TensorType
    privacy: tuple[str, ...] = ()


class Sink(Declared):
    kind: Literal["actuator", "store"]
    device: str


class Quantize(_Node):
    """How edgeflow makes an int8 variant of a model (`quantize(...)`, edgeflow.models.quantize):
    calibrated on the frames in `calibration` (absolute folder) or on `synthetic` generated ones,
    its fidelity measured on `validation` (else the model's `validation`, else frames held out
    of the calibration frames)."""

    calibration: str | None = None
    synthetic: int | None = Field(ge=1, default=None)
    validation: str | None = None


class ModelVariant(_Node):
    """Another version of a model that placement may run instead of it: the same inputs and
    outputs, another ONNX file (a smaller model, or the model quantized to int8)."""

    name: str
    source: str                     # absolute path of its ONNX file ("" until `quantize` made it)
    int8: bool = False              # its work runs at the device's int8 rate (`compute_int8`)
    fidelity: float | None = Field(ge=0, le=1, default=None)  # measured; None: not measured
    quantize: Quantize | None = None  # made by edgeflow from the model (then int8)
    span: Span | None = Field(default=None, exclude=True, repr=False)


class Adapt(_Node):
    """`adapt = { bandwidth = [LOW, HIGH], margin = 0.1, hold = 1 s }`: at run time the head
    picks the cut the compiled decision table gives for the bandwidth it measures, within
    [low, high]; it switches only when the predicted gain exceeds `margin` (a fraction of the
    current cut's latency) for `hold_s` seconds."""

    low_bps: float = Field(gt=0)
    high_bps: float = Field(gt=0)
    margin: float = Field(ge=0, lt=1, default=0.1)
    hold_s: float = Field(ge=0, default=1.0)
    span: Span | None = Field(default=None, exclude=True, repr=False)


class OnDisconnect(_Node):
    """`on_disconnect = local | drop | buffer(frames = N)`: what the head side of a split model
    does while the link to its tail is down (docs/runtime.md, "Adaptation")."""

    action: Literal["local", "buffer", "drop"]
    buffer_frames: int = Field(ge=1, default=64)  # `buffer`: frames held before the oldest go
    span: Span | None = Field(default=None, exclude=True, repr=False)


class Health(_Node):
    """One health rule of a rollout wave: `latency_p95 < 50 ms` (seconds), `drops <= 0.01`
    (a fraction of frames)."""

    metric: Literal["latency_p50", "latency_p95", "latency_p99", "drops"]
    op: Literal["<", "<=", ">", ">="]
    bound: float


class Rollout(_Node):
    """`rollout = { waves = [0.1, 0.5, 1], health = [latency_p95 < 50 ms], hold = 5 s }` of a
    model: a new version reaches the share `waves[i]` of the model's replicas in turn; each wave
    runs `hold_s` and must keep every health rule, else every replica goes back to the running
    version (docs/training.md, "Rollout")."""

    waves: tuple[float, ...]
    health: tuple[Health, ...] = ()
    hold_s: float = Field(gt=0, default=5.0)
    span: Span | None = Field(default=None, exclude=True, repr=False)


class Model(Declared):
    source: str  # absolute path of the ONNX file
    inputs: dict[str, TensorType]
    outputs: dict[str, TensorType]  # from the ONNX file, shapes inferred from `inputs`
    split: Literal["auto", "none"] = "auto"
    variants: tuple[ModelVariant, ...] = ()  # besides the model itself (fidelity 1)
    min_fidelity: float | None = Field(gt=0, le=1, default=None)  # the floor variants must keep
    validation: str | None = None   # frames (absolute folder) its variants' fidelity is measured on
    adapt: Adapt | None = None      # run-time choice of the cut by measured bandwidth
    on_disconnect: OnDisconnect | None = None  # what the head does while its tail is unreachable
    rollout: Rollout | None = None  # how a new version reaches running replicas

    def as_variant(self, variant: str | None) -> tuple[Model, bool]:
        """The model a unit running `variant` runs (the variant's file in the model's place;
        the model itself for None), and whether its work runs at the int8 rate."""
        if variant is None:
            return self, False
        chosen = next(v for v in self.variants if v.name == variant)
        return self.model_copy(update={"source": chosen.source}), chosen.int8


class Operator(Declared):
    work_flop: float = Field(ge=0)
    emits: TensorType
    memory_bytes: float = Field(ge=0, default=0.0)
    removes: tuple[str, ...] = ()
    impl: str | None = None  # `package.module:function`, run by the worker (never by `check`)


class Slo(_Node):
    latency_s: float | None = None
    throughput_hz: float | None = None


class Pipeline(Declared):
    flow: tuple[str, ...]
    slo: Slo = Slo()
    step_spans: tuple[Span, ...] = Field(default=(), exclude=True, repr=False)
    slo_spans: dict[str, Span] = Field(default={}, exclude=True, repr=False)  # by subject


class UpdateRule(_Node):
    """`updates = { allow = [TIERS], require = dp }` of a privacy rule: where model updates
    trained on data carrying the label may go (the aggregators' tiers), and what they need to go
    there (`dp`: the training adds differential privacy before its first aggregation)."""

    allow: tuple[Tier, ...]
    require: Literal["dp"] | None = None
    span: Span | None = Field(default=None, exclude=True, repr=False)


class PrivacyRule(Declared):
    allow: tuple[Tier, ...]
    updates: UpdateRule | None = None  # None: updates may go where the data may, unconditionally

    def update_tiers(self) -> tuple[Tier, ...]:
        return self.updates.allow if self.updates is not None else self.allow


class DifferentialPrivacy(_Node):
    """`privacy = dp(clip = C, noise = Z, delta = D)` of a training: every client's update is
    clipped to L2 norm `clip` and the first aggregation adds Gaussian noise of standard deviation
    `noise` x `clip` / (clients aggregated) to their mean (central DP, fixed clipping); the
    privacy budget spent is reported at `delta`."""

    clip: float = Field(gt=0)
    noise: float = Field(ge=0)
    delta: float = Field(gt=0, lt=1)


class Strategy(_Node):
    """How an aggregator combines updates: `fedavg`, `fedprox(mu = 0.01)`, `fedmedian`,
    `trimmed_mean(beta = 0.2)`, `krum(byzantine = 1)`."""

    name: Literal["fedavg", "fedprox", "fedmedian", "trimmed_mean", "krum"]
    params: dict[str, float] = {}


class Training(Declared):
    """A federated training of a model (docs/training.md): `clients` (every instance one
    client) train on `data` with the user's `trainer`; the devices of `aggregate` combine the
    updates, nearest tier first (two devices: per site, then on top)."""

    model: str
    trainable: tuple[str, ...]      # initializer names trained and exchanged
    clients: str                    # a device: one client per instance
    data: str                       # the sensor or store the clients train on (its labels)
    samples: str                    # `module:function` giving a client's labelled records
    trainer: str                    # `module:function`: one client's local training
    config: dict[str, float | int | str] = {}  # passed to the trainer
    aggregate: tuple[str, ...]      # devices, nearest tier first (1 or 2)
    rounds: int = Field(ge=1, default=3)
    min_clients: int | None = Field(ge=1, default=None)  # per site; None: all of them
    epochs: int = Field(ge=1, default=1)
    examples: int = Field(ge=1)     # training examples per client per round
    batch: int = Field(ge=1, default=32)
    strategy: Strategy = Strategy(name="fedavg")
    dp: DifferentialPrivacy | None = None
    round_time_s: float = Field(gt=0)
    every_s: float | None = Field(gt=0, default=None)  # the federation's schedule; None: on demand


class Program(_Node):
    """A checked application, declarations in source order."""

    file: str
    app: App
    devices: dict[str, Device]
    links: tuple[Link, ...]
    sensors: dict[str, Sensor]
    sinks: dict[str, Sink]
    models: dict[str, Model]
    operators: dict[str, Operator]
    pipelines: dict[str, Pipeline]
    privacy: dict[str, PrivacyRule]
    trainings: dict[str, Training] = {}

    def output_bytes(self, name: str) -> int:
        """Bytes of one message a sensor, operator or model sends downstream (a model sends all
        its outputs); 0 for sinks."""
        if name in self.sensors:
            return self.sensors[name].emits.nbytes
        if name in self.operators:
            return self.operators[name].emits.nbytes
        if name in self.models:
            return sum(t.nbytes for t in self.models[name].outputs.values())
        return 0

    def kind_of(self, name: str) -> str | None:
        for kind, table in (("device", self.devices), ("sensor", self.sensors),
                            ("sink", self.sinks), ("model", self.models),
                            ("operator", self.operators), ("pipeline", self.pipelines),
                            ("privacy", self.privacy), ("training", self.trainings)):
            if name in table:
                return kind
        return None
