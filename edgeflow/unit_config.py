"""`unit.json`: the configuration of one placed unit replica, written by `edgeflow compile` and
read by the worker process that runs the unit (docs/bundles.md, generated from this schema).

Depends on pydantic and the standard library only: the worker imports this module without the
rest of the compiler.

`to_json` is the one serialisation: keys sorted, indent 2, floats as Python's `repr`, a trailing
newline, and the section a unit does not have (`operator` or `model`) absent, never null.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

UnitKind = Literal["operator", "model", "head", "tail"]
ModelPart = Literal["whole", "head", "tail"]

METRICS_PORT = 9400
CONFIG_ENV = "EDGEFLOW_CONFIG"  # greengrass: the environment variable holding the config
TWIN_KEY = "edgeflow"
CONFIG_DIGEST_ENV = "EDGEFLOW_CONFIG_SHA256"  # azure-iot-edge: the digest the twin must match  # azure-iot-edge: the module twin desired property holding the config
"""Port of the first unit's Prometheus metrics on a device; the others' follow it."""

PART_OF_KIND: dict[str, ModelPart] = {"model": "whole", "head": "head", "tail": "tail"}
"""The model part a unit of each model kind runs."""


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # absent, not null: the schema does not advertise a null


def _kind_rules() -> list[JsonValue]:
    """The kind rules of `UnitConfig._section_matches_kind` and `ModelSpec._cut_matches_part`, as
    JSON schema: the schema alone accepts exactly what the validators accept."""
    rules: list[JsonValue] = [{"properties": {"kind": {"const": "operator"}},
                               "required": ["operator"], "not": {"anyOf": [
                                   {"required": ["model"]}, {"required": ["adapt"]}]}}]
    for kind, part in PART_OF_KIND.items():
        cut: JsonValue = {"maxItems": 0} if part == "whole" else {"minItems": 1}
        absent: JsonValue = {"required": ["operator"]} if part != "whole" else {"anyOf": [
            {"required": ["operator"]}, {"required": ["adapt"]}]}
        rules.append({"properties": {"kind": {"const": kind}, "model": {
            "properties": {"part": {"const": part}, "cut": cut}}},
            "required": ["model"], "not": absent})
    return rules


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class TlsSpec(_Spec):
    """Files of the unit's TLS client identity, mounted into the worker."""

    ca: str = Field(description="CA certificate (PEM) the broker's certificate is checked with.")
    cert: str = Field(description="The unit's client certificate (PEM); its CN is `client_id`.")
    key: str = Field(description="The private key (PEM) of `cert`.")


class BrokerSpec(_Spec):
    """The MQTT broker the unit connects to: its own device's broker."""

    host: str = Field(description="Host name or address of the broker: `127.0.0.1` beside its "
                                  "device's broker (the machine with compose, the device's pod "
                                  "on Kubernetes).")
    port: int = Field(ge=1, le=65535, description="TLS port of the broker (8883).")
    client_id: str = Field(description="MQTT client id and identity, `<app>.<unit>.r<replica>`: "
                                       "the CN of the client certificate and the MQTT user name "
                                       "the broker's ACL knows.")
    tls: TlsSpec = Field(description="TLS client certificate files.")


class OperatorSpec(_Spec):
    """What an operator unit runs."""

    work_flop: float = Field(ge=0, allow_inf_nan=False,
                             description="Work per message, in FLOP (as declared).")
    emits: str = Field(description="Tensor type of each output message, e.g. `float32[1, 8]`.")
    impl: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")] | \
        SkipJsonSchema[None] = Field(
        default=None, json_schema_extra=_no_default,
        description="The Python callable that runs the operator, `package.module:function` "
                    "(numpy arrays in, one numpy array of type `emits` out). Absent: a built-in "
                    "stand-in spends `work_flop` on the device's declared compute and emits "
                    "zeros of type `emits`.")


class ModelSpec(_Spec):
    """The ONNX file a model unit runs: the whole model, or one half of a split."""

    file: str = Field(description="Absolute path of the ONNX file in the worker "
                                  "(under `/var/lib/edgeflow/models`).")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$",
                        description="sha256 (lowercase hex) of `file`; the worker refuses a file "
                                    "that does not match.")
    part: ModelPart = Field(description="`whole`, or the `head` or `tail` of a split model.")
    cut: list[str] = Field(description="Tensors the head sends the tail (a split's cut); empty "
                                       "for a whole model, non-empty for a head or tail.")

    @model_validator(mode="after")
    def _cut_matches_part(self) -> Self:
        if (self.part == "whole") != (not self.cut):
            raise ValueError("`cut` is empty exactly for part `whole`")
        return self


class AdaptCutSpec(_Spec):
    """One cut an adapting split model may run: the half this unit runs, and the cut's timing
    on the plan's devices (the head predicts with it)."""

    id: str = Field(pattern=r"^[0-9a-f]{10}$",
                    description="The cut's id (it travels in every message the head sends).")
    cut: list[str] = Field(description="The tensors the head sends the tail.")
    file: str = Field(description="This unit's half of the cut (absolute path).")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of `file`.")
    transfer_bytes: int = Field(ge=0, description="Bytes the head sends per frame.")
    head_s: float = Field(ge=0, allow_inf_nan=False,
                          description="The head's compute on the head's device, seconds.")
    tail_s: float = Field(ge=0, allow_inf_nan=False,
                          description="The tail's compute on the tail's device, seconds.")
    whole: bool = Field(description="The head is the whole model (the tail only passes the "
                                    "output on).")


class AdaptBandSpec(_Spec):
    """Bandwidths in which one cut is the fastest."""

    from_bps: float = Field(ge=0, allow_inf_nan=False)
    to_bps: float = Field(gt=0, allow_inf_nan=False)
    cut: str = Field(description="The id of the fastest cut in [`from_bps`, `to_bps`].")


class AdaptSpec(_Spec):
    """A split model's run-time adaptation (docs/runtime.md, "Adaptation"), in its head's and
    its tail's unit.json."""

    cuts: list[AdaptCutSpec] = Field(min_length=1, description="Every cut the head may send.")
    bands: list[AdaptBandSpec] = Field(description="The decision table, ascending bandwidth; "
                                                   "empty: no `adapt`, the plan's cut only.")
    start: str = Field(description="The plan's cut: the head starts with it.")
    latency_s: float = Field(ge=0, allow_inf_nan=False,
                             description="Declared latency of the link between the halves.")
    margin: float = Field(ge=0, lt=1, allow_inf_nan=False,
                          description="The head switches cut only when the predicted gain is "
                                      "above this fraction of the current cut's latency for "
                                      "`hold_s` seconds.")
    hold_s: float = Field(ge=0, allow_inf_nan=False,
                          description="How long the gain must hold before the head switches.")
    feedback: str = Field(description="Topic on which the tail tells the head the bandwidth it "
                                      "measures, every `feedback_interval_s`.")
    feedback_interval_s: float = Field(gt=0, allow_inf_nan=False)
    outage_after_s: float = Field(gt=0, allow_inf_nan=False,
                                  description="No feedback for this long: the link is down.")
    on_disconnect: Literal["local", "buffer", "drop"] | SkipJsonSchema[None] = Field(
        default=None, json_schema_extra=_no_default,
        description="What the head does while the link is down; absent: nothing (its "
                    "messages wait in the brokers).")
    buffer_frames: int = Field(default=0, ge=0,
                               description="`buffer`: frames held before the oldest is dropped.")
    fallback: str | SkipJsonSchema[None] = Field(
        default=None, json_schema_extra=_no_default,
        description="`local`: the cut whose head is the whole model, run during an outage.")
    bypass: list[str] = Field(description="Head: the tail's output topics, which the head "
                                          "writes itself when it runs the whole model (empty: "
                                          "it may not).")

    @model_validator(mode="after")
    def _ids_known(self) -> Self:
        ids = {c.id for c in self.cuts}
        named = [self.start, *(b.cut for b in self.bands),
                 *([self.fallback] if self.fallback else [])]
        if unknown := [i for i in named if i not in ids]:
            raise ValueError(f"cut {unknown[0]} is not among `cuts`")
        return self


class UnitConfig(_Spec):
    """`unit.json` of one placed unit replica: exactly one of `operator` and `model` is present."""

    model_config = ConfigDict(json_schema_extra=lambda s: s.update(oneOf=_kind_rules()))

    app: str = Field(description="The application (`app` declaration) the unit belongs to.")
    unit: str = Field(description="The placed step: an operator or model name, or "
                                  "`<model>.head` / `<model>.tail` for a split model's halves.")
    replica: int = Field(ge=0, description="The pipeline replica this unit serves.")
    kind: UnitKind = Field(description="What the unit runs: an operator, a whole model, or the "
                                       "head or tail of a split model.")
    device: str = Field(description="The device instance the unit is placed on, e.g. "
                                    "`street_cabinet[0]`.")
    broker: BrokerSpec = Field(description="The MQTT broker to connect to.")
    subscribe: list[str] = Field(description="MQTT topics the unit reads, one message of each "
                                             "per run.")
    publish: list[str] = Field(description="MQTT topics the unit writes its outputs to.")
    device_compute_flops: float = Field(
        gt=0, allow_inf_nan=False,
        description="Declared compute of the unit's device, FLOP/s (a stand-in operator spends "
                    "`work_flop` / this).")
    threads: int = Field(ge=1, description="Threads the unit may use (onnxruntime intra-op).")
    queue: int = Field(ge=1, description="Messages (or joined frames) waiting at most; when "
                                         "full the oldest is dropped and counted (`overload`).")
    join_timeout_s: float = Field(
        gt=0, allow_inf_nan=False,
        description="A unit with several inputs runs once per frame id when all its inputs for "
                    "that frame are there; a frame still incomplete after this many seconds is "
                    "dropped and counted (`join_expired`).")
    metrics_port: int = Field(ge=1, le=65535,
                              description="Port of the Prometheus metrics endpoint (`/metrics`).")
    emulate_compute_s: float | SkipJsonSchema[None] = Field(
        default=None, ge=0, allow_inf_nan=False, json_schema_extra=_no_default,
        description="`edgeflow run` only: each run is padded to this many seconds, the time "
                    "the plan predicts on the declared device (absent in deployed bundles).")
    operator: OperatorSpec | SkipJsonSchema[None] = Field(
        default=None, json_schema_extra=_no_default,
        description="Present exactly for kind `operator`.")
    model: ModelSpec | SkipJsonSchema[None] = Field(
        default=None, json_schema_extra=_no_default,
        description="Present exactly for kinds `model`, `head` and `tail`, whose `part` is "
                    "`whole`, `head` and `tail` respectively.")
    adapt: AdaptSpec | SkipJsonSchema[None] = Field(
        default=None, json_schema_extra=_no_default,
        description="A head or tail of a model that adapts its cut or handles outages.")

    @field_validator("operator", "model", "emulate_compute_s", "adapt", mode="before")
    @classmethod
    def _absent_not_null(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and info.mode == "json":
            raise ValueError("leave the key out instead of null")
        return value

    @model_validator(mode="after")
    def _section_matches_kind(self) -> Self:
        if self.kind == "operator":
            if self.operator is None or self.model is not None:
                raise ValueError("kind `operator` needs `operator` and no `model`")
        else:
            if self.model is None or self.operator is not None:
                raise ValueError(f"kind `{self.kind}` needs `model` and no `operator`")
            if self.model.part != PART_OF_KIND[self.kind]:
                raise ValueError(f"kind `{self.kind}` runs model part "
                                 f"`{PART_OF_KIND[self.kind]}`, not `{self.model.part}`")
        if self.adapt is not None and self.kind not in ("head", "tail"):
            raise ValueError("only a head or a tail adapts")
        return self

    def to_json(self) -> str:
        """The `unit.json` text: sorted keys, indent 2, trailing newline, no null keys."""
        data = self.model_dump(mode="json", exclude_none=True)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Self:
        """Parse and validate a `unit.json` text (raises pydantic.ValidationError)."""
        return cls.model_validate_json(text)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Self:
        """Read and validate the `unit.json` at `path`."""
        with open(path, "rb") as f:
            return cls.from_json(f.read())


class DriverConfig(_Spec):
    """The config of a sensor driver or a sink (`python -m edgeflow.runtime.drivers --config
    FILE`): in a device's pod of a k8s bundle, and in `edgeflow run`."""

    model_config = ConfigDict(strict=False)

    app: str
    name: str = Field(description="The sensor or sink as declared.")
    replica: int | None = Field(default=None, description="The replica a sensor instance "
                                "feeds; absent for a sink shared by all replicas.")
    kind: Literal["sensor", "actuator", "store"]
    device: str
    broker: BrokerSpec
    topics: list[str] = Field(description="A sensor's output topic; a sink's input topics.")
    metrics_port: int = Field(ge=1, le=65535)
    rate_hz: float | None = Field(default=None, gt=0, description="Sensors: frames per second.")
    emits: str | None = Field(default=None, description="Sensors: the declared tensor type.")
    seed: int = Field(default=0, description="Sensors: seed of the synthetic frames.")
    replay: str | None = Field(default=None, description="Sensors: a folder of .npy frames.")
    database: str | None = Field(default=None, description="Sinks: the SQLite file.")
    stats: str | None = Field(default=None, description="Sensors: where the count of frames "
                                                       "sent is written on exit.")

    def to_json(self) -> str:
        """The config's text: sorted keys, indent 2, trailing newline, no null keys."""
        data = self.model_dump(mode="json", exclude_none=True)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


def schema_json() -> str:
    """The JSON schema of `unit.json`, deterministic (sorted keys, indent 2, trailing newline)."""
    return json.dumps(UnitConfig.model_json_schema(), indent=2, sort_keys=True) + "\n"


def config_digest(config: Any) -> str:
    """sha256 of a config object in one canonical form (sorted keys, no spaces), whatever the
    key order and float spelling it travelled in (an IoT Edge module twin reorders)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()
