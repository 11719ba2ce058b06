"""The worker: one process per placed unit replica, `python -m edgeflow.runtime --config
unit.json` (docs/runtime.md). It subscribes to its inputs, joins them by frame id, runs its part
(an ONNX model or half on onnxruntime, an operator's Python callable, or the built-in stand-in)
and publishes its output, with a bounded queue that drops the oldest frame under overload.

Startup failures (invalid unit.json, a model whose sha256 differs, a callable that cannot be
imported, a metrics port in use) print one line and exit with status 2; a message that cannot be
decoded, a run that raises or returns the wrong type are counted drops (reasons: `bad_payload`,
`error`, `overload`, `join_expired`, `join_overflow`, `shutdown`), logged once per kind of error.

**Versions** (`edgeflow run --rollout`, docs/training.md "Rollout"). A whole model's unit runs one
version of its model at a time, the first 12 hex digits of its file's sha256, and stamps it on
every message it sends (`version`); other units pass on the version of their first input that
carries one. With `--control FILE` the worker reads FILE (JSON: `request`, an increasing id,
`version`, `file`, `sha256`) whenever it changes (it looks every `CONTROL_POLL_S`; the writer
replaces the file whole, by rename) and, on a thread beside the one that runs frames, loads that
version: the file must have that sha256, onnxruntime must load it, its inputs and outputs must be
the running version's (names, element types, shapes) and one run on zeros must work. The frame
thread swaps it in between two frames, so no frame is lost or made by half of each. The version
the unit started with and the one it runs stay loaded: switching back is immediate and cannot
fail. A version that cannot be loaded changes nothing: the unit keeps running what it runs, logs
why and counts it (`edgeflow_version_load_failures_total`). At start and after every request the
worker replaces its status file (FILE with `.status` before its extension: `version` it runs,
`swapped_at` since when, `request` the id it answered, `error` when it could not) so whoever
asked knows when it took effect. A worker that starts while FILE exists loads what FILE asks before it connects (a restart
mid-rollout comes back on the version it was told; if that version no longer loads, on the one it
was started with).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import os
import re
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from pydantic import ValidationError

from edgeflow.runtime import wire
from edgeflow.runtime.adaptive import BandwidthEstimator, Choice, ComputeTimes, Controller
from edgeflow.runtime.client import Connection, Metrics, StartError, on_stop
from edgeflow.unit_config import CONFIG_ENV, AdaptCutSpec, ModelSpec, OperatorSpec, UnitConfig

VERSION_CHARS = 12  # a version: the first hex digits of its file's sha256 (edgeflow.rollout)
CONTROL_POLL_S = 0.1  # how often a worker with `--control` looks at its control file

Tensors = dict[str, np.ndarray[Any, Any]]
Inputs = list[tuple[str, np.ndarray[Any, Any]]]

_TYPE = re.compile(r"(\w+)\[([0-9, ]*)\]")
_ONNX_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16",
                "tensor(double)": "float64", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
                "tensor(int16)": "int16", "tensor(uint16)": "uint16", "tensor(int32)": "int32",
                "tensor(uint32)": "uint32", "tensor(int64)": "int64", "tensor(uint64)": "uint64",
                "tensor(bool)": "bool"}


OVERRUN_TOLERANCE_S = 0.001
"""A run counts as slower than the declared device only beyond this (a Python call's own cost)."""


class RunError(Exception):
    """A run of the unit failed (counted as a drop, reason `error`)."""


def tensor_type(text: str) -> tuple[np.dtype[Any], tuple[int, ...]]:
    """`float32[1, 8]` -> (dtype, shape)."""
    m = _TYPE.fullmatch(text.strip())
    if m is None or m[1] not in wire.DTYPES:
        raise StartError(f"`{text}` is not a tensor type such as float32[1, 8]")
    return np.dtype(m[1]), tuple(int(d) for d in m[2].split(",") if d.strip())


def fit(array: np.ndarray[Any, Any], dtype: np.dtype[Any], shape: tuple[int, ...],
        what: str) -> np.ndarray[Any, Any]:
    """`array` as `dtype[shape]`: the same elements in C order, cast (a camera's uint8 frame
    into a float32 input); RunError when the element counts differ."""
    if array.size != int(np.prod(shape, dtype=np.int64)):
        raise RunError(f"{what} expects {dtype.name}{list(shape)}, got "
                       f"{array.dtype.name}{list(array.shape)}")
    return np.ascontiguousarray(array.reshape(shape), dtype=dtype)


class OnnxPart:
    """A whole model or a split half on onnxruntime. Inputs are matched by name, then in order;
    every output of the file is sent."""

    def __init__(self, spec: ModelSpec | AdaptCutSpec, threads: int) -> None:
        try:
            with open(spec.file, "rb") as f:
                data = f.read()
        except OSError as e:
            raise StartError(f"cannot read model {spec.file}: {e.strerror or e}") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != spec.sha256:
            raise StartError(f"model {spec.file} has sha256 {digest[:16]}..., unit.json expects "
                             f"{spec.sha256[:16]}...: refusing to run a file that is not the "
                             "compiled one (recompile, or restore the file)")
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise StartError(f"onnxruntime cannot load {spec.file}: {e}") from None
        self.inputs = [(i.name, np.dtype(_ONNX_DTYPES.get(i.type, "float32")),
                        tuple(d if isinstance(d, int) else -1 for d in i.shape))
                       for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, inputs: Inputs) -> Tensors:
        by_name = dict(inputs)
        rest = [a for n, a in inputs if n not in {i[0] for i in self.inputs}]
        feed: Tensors = {}
        for name, dtype, shape in self.inputs:
            if name in by_name:
                array = by_name[name]
            elif rest:
                array = rest.pop(0)
            else:
                raise RunError(f"no tensor for model input `{name}`")
            if -1 in shape:
                feed[name] = np.ascontiguousarray(array, dtype=dtype)
            else:
                feed[name] = fit(array, dtype, shape, f"model input `{name}`")
        try:
            results = self.session.run(self.outputs, feed)
        except Exception as e:  # noqa: BLE001 - onnxruntime's own exception types
            raise RunError(f"onnxruntime: {e}") from None
        return dict(zip(self.outputs, results, strict=True))


class LoadError(Exception):
    """A version of the model that cannot replace the running one (the worker keeps running)."""


@dataclass(frozen=True)
class Request:
    """One request of the control file: run `version`, the model in `file` (sha256 `sha256`)."""

    id: int
    version: str
    file: str
    sha256: str

    @classmethod
    def parse(cls, text: bytes) -> Request:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")  # noqa: TRY004 - read as bad text, as JSON's
        req, version, file, sha = (data.get(k) for k in ("request", "version", "file", "sha256"))
        if not isinstance(req, int) or isinstance(req, bool) or not isinstance(file, str) or \
                not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha) or \
                version != sha[:VERSION_CHARS]:
            raise ValueError("needs request (an integer), file, sha256 (64 lowercase hex) and "
                             "version (its first 12 digits)")
        return cls(req, version, file, sha)


def load_version(request: Request, running: OnnxPart, threads: int) -> OnnxPart:
    """The version `request` names, loaded and checked against the running one: the file has
    the sha256 asked for, onnxruntime loads it, its inputs and outputs are the running ones'
    (names, element types, shapes) and it runs once on zeros. LoadError says what is wrong."""
    spec = ModelSpec(file=request.file, sha256=request.sha256, part="whole", cut=[])
    try:
        part = OnnxPart(spec, threads)
    except StartError as e:
        raise LoadError(str(e)) from None
    if part.inputs != running.inputs:
        raise LoadError(f"its inputs {_signature(part.inputs)} are not the running version's "
                        f"{_signature(running.inputs)}")
    mine, theirs = _outputs(part), _outputs(running)
    if mine != theirs:
        raise LoadError(f"its outputs {mine} are not the running version's {theirs}")
    zeros = [(name, np.zeros(tuple(1 if d < 0 else d for d in shape), dtype))
             for name, dtype, shape in part.inputs]
    try:
        part(zeros)
    except RunError as e:
        raise LoadError(f"it does not run: {e}") from None
    return part


def _signature(inputs: list[tuple[str, np.dtype[Any], tuple[int, ...]]]) -> str:
    return ", ".join(f"{n}: {d.name}{list(s)}" for n, d, s in inputs)


def _outputs(part: OnnxPart) -> list[tuple[str, str, list[int | str | None]]]:
    return [(o.name, o.type, [d if isinstance(d, int) else "?" for d in o.shape])
            for o in part.session.get_outputs()]


class PythonOperator:
    """An operator's Python callable: arrays in (in subscription order), one array out, which
    must be of the declared type."""

    def __init__(self, name: str, spec: OperatorSpec) -> None:
        assert spec.impl is not None
        module, _, function = spec.impl.partition(":")
        try:
            self.function: Callable[..., Any] = getattr(importlib.import_module(module), function)
        except Exception as e:  # noqa: BLE001 - the user's module may raise anything
            raise StartError(f"cannot load operator `{name}`'s impl `{spec.impl}`: "
                             f"{type(e).__name__}: {e}") from None
        if not callable(self.function):
            raise StartError(f"`{spec.impl}` is not callable")
        self.name = name
        self.dtype, self.shape = tensor_type(spec.emits)
        self.emits = spec.emits

    def __call__(self, inputs: Inputs) -> Tensors:
        try:
            out = self.function(*(a for _, a in inputs))
        except Exception as e:  # noqa: BLE001 - the user's code may raise anything
            raise RunError(f"`{self.name}` raised {type(e).__name__}: {e}") from None
        if not isinstance(out, np.ndarray) or out.dtype != self.dtype or \
                tuple(out.shape) != self.shape:
            got = (f"{out.dtype.name}{list(out.shape)}" if isinstance(out, np.ndarray)
                   else type(out).__name__)
            raise RunError(f"`{self.name}` returned {got}, but its `emits` is {self.emits}")
        return {self.name: out}


class StandIn:
    """An operator without `impl`: spends its declared work on the device's declared compute
    (unless `edgeflow run` pads the run anyway) and emits zeros of its declared type."""

    def __init__(self, name: str, spec: OperatorSpec, compute_flops: float,
                 emulated: bool) -> None:
        dtype, shape = tensor_type(spec.emits)
        self.name, self.zeros = name, np.zeros(shape, dtype)
        self.seconds = 0.0 if emulated else spec.work_flop / compute_flops

    def __call__(self, inputs: Inputs) -> Tensors:
        if self.seconds:
            time.sleep(self.seconds)
        return {self.name: self.zeros}


def runner(config: UnitConfig) -> Callable[[Inputs], Tensors]:
    if config.model is not None:
        return OnnxPart(config.model, config.threads)
    assert config.operator is not None
    if config.operator.impl is not None:
        return PythonOperator(config.unit, config.operator)
    return StandIn(config.unit, config.operator, config.device_compute_flops,
                   config.emulate_compute_s is not None)


@dataclass
class Job:
    frame: int
    messages: list[wire.Message]
    received: float


class Worker:
    def __init__(self, config: UnitConfig, metrics_host: str = "0.0.0.0",
                 control: str | None = None) -> None:
        self.config = config
        self.adapt = config.adapt
        # an adapting head or tail holds a session for every cut it may run
        self.parts = {c.id: OnnxPart(c, config.threads) for c in self.adapt.cuts} \
            if self.adapt is not None else {}
        self.run = self.parts[self.adapt.start] if self.adapt is not None else runner(config)
        self.metrics = Metrics.create(config.app, config.unit, config.replica, config.device)
        self.metrics.serve(config.metrics_port, metrics_host)
        self.topics = list(config.subscribe)
        self.queue: deque[Job] = deque()
        self.joins: OrderedDict[int, tuple[float, dict[str, tuple[wire.Message, float]]]] = \
            OrderedDict()
        self.lock = threading.Condition()
        self.stop = threading.Event()
        self.seq = 0
        self.errors_seen: set[str] = set()
        self.controller: Controller | None = None
        self.estimator: BandwidthEstimator | None = None
        self.held: deque[tuple[list[str], bytes]] = deque()  # `buffer`: messages an outage holds
        control_topics: tuple[str, ...] = ()
        if self.adapt is not None and config.kind == "head":
            self.controller = Controller(self.adapt, time.time())
            self.metrics.link_up.set(1)
            control_topics = (self.adapt.feedback,)
        elif self.adapt is not None:
            self.estimator = BandwidthEstimator(self.adapt.latency_s)
        self.times = ComputeTimes()  # an adapting tail's, by cut (reported to its head)
        # a whole model: the version it runs, and the versions it keeps loaded (the one it
        # started with, the one it runs)
        self.version: str | None = None
        self.original: str | None = None
        self.sessions: dict[str, OnnxPart] = {}
        if config.model is not None and config.model.part == "whole" and self.adapt is None:
            assert isinstance(self.run, OnnxPart)
            self.version = self.original = config.model.sha256[:VERSION_CHARS]
            self.sessions[self.version] = self.run
            self.metrics.running_version(self.version)
        if control is not None and self.version is None:
            raise StartError("--control: only a whole model's unit switches versions "
                             f"(`{config.unit}` is a {config.kind})")
        self.control = control
        self.swapped_at = time.time()
        self.control_seen: tuple[int, int, int] | None = None
        self.wanted: Request | None = None       # the newest request read
        self.loaded: int | None = None           # the id of the last request the loader handled
        self.answered: int | None = None         # the id of the last request answered
        self.loader: threading.Thread | None = None
        self.pending: tuple[Request, OnnxPart | None, str | None] | None = None
        self.conn = Connection(config.broker, self.topics, self.metrics, self.on_message,
                               control_topics)

    # -- input side (paho's network thread) ---------------------------------------------------
    def on_message(self, topic: str, payload: bytes, received: float) -> None:
        if self.controller is not None and self.adapt is not None and \
                topic == self.adapt.feedback:
            self._feedback(payload, received)
            return
        try:
            message = wire.decode(payload)
        except wire.WireError as e:
            self.metrics.drop("bad_payload")
            self.log(f"dropped a message on {topic} that is not an edgeflow message: {e}")
            return
        if self.estimator is not None and message.trace:
            with self.lock:
                self.estimator.sample(len(payload), received - message.trace[-1][3], received)
        with self.lock:
            if self.stop.is_set():
                self.metrics.drop("shutdown")
                return
            if len(self.topics) == 1:
                self._enqueue(Job(message.frame, [message], received))
                return
            _started, parts = self.joins.setdefault(message.frame, (received, {}))
            parts[topic] = (message, received)
            if len(parts) == len(self.topics):
                del self.joins[message.frame]
                self._enqueue(Job(message.frame, [parts[t][0] for t in self.topics],
                                  max(r for _, r in parts.values())))
            while len(self.joins) > 4 * self.config.queue:
                self.joins.popitem(last=False)
                self.metrics.drop("join_overflow")

    def _enqueue(self, job: Job) -> None:
        if len(self.queue) >= self.config.queue:
            self.queue.popleft()
            self.metrics.drop("overload")
        self.queue.append(job)
        self.lock.notify()

    def _expire(self, now: float) -> None:
        while self.joins:
            frame, (first, _) = next(iter(self.joins.items()))
            if now - first < self.config.join_timeout_s:
                break
            del self.joins[frame]
            self.metrics.drop("join_expired")

    # -- processing (the main thread) -----------------------------------------------------------
    def _feedback(self, payload: bytes, received: float) -> None:
        """The tail's feedback: its estimate, and by arriving, that the link is up."""
        assert self.controller is not None
        try:
            data = json.loads(payload)
            estimate = data["bandwidth_bps"]
            samples = data["samples"]
            tail_s = data.get("tail_s", {})
            if not (estimate is None or isinstance(estimate, int | float) and estimate > 0
                    and math.isfinite(estimate)) or not isinstance(samples, int) or \
                    not isinstance(tail_s, dict) or not all(
                        isinstance(v, int | float) and math.isfinite(v) and v >= 0
                        for v in tail_s.values()):
                raise ValueError("bandwidth_bps, samples or tail_s")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
            self.metrics.drop("bad_payload")
            self.log("feedback: a message on the feedback topic is not feedback")
            return
        with self.lock:
            was_down = self.controller.in_outage
            self.controller.feedback(received, estimate, samples,
                                     {str(k): float(v) for k, v in tail_s.items()})
            begun = self.controller.outages[-1][0] if was_down else received
        if estimate is not None:
            self.metrics.bandwidth.set(estimate)
        if was_down:
            self._say(f"link to the tail back after {received - begun:.1f} s")
            self.metrics.link_up.set(1)

    def _send_feedback(self) -> None:
        assert self.estimator is not None and self.adapt is not None
        with self.lock:
            estimate, samples = self.estimator.bps, self.estimator.samples
            tail_s = dict(self.times.seconds)
        if estimate is not None:
            self.metrics.bandwidth.set(estimate)
        body = json.dumps({"bandwidth_bps": estimate, "samples": samples,
                           "tail_s": tail_s}, sort_keys=True).encode()
        self.conn.client.publish(self.adapt.feedback, body, qos=0)

    def _say(self, line: str) -> None:
        """A line for every event of adaptation (switches, outages): each is logged."""
        print(f"{self.config.unit} r{self.config.replica}: {line}", file=sys.stderr, flush=True)

    # -- versions: the control file (read by the frame thread), loading (its own thread) ------
    def _status_path(self) -> str:
        assert self.control is not None
        base, ext = os.path.splitext(self.control)
        return f"{base}.status{ext or '.json'}"

    def _write_status(self, error: str | None = None) -> None:
        """Replace the status file (by rename: a reader never sees half of it)."""
        if self.control is None:
            return
        path = self._status_path()
        body = json.dumps({"version": self.version, "swapped_at": self.swapped_at,
                           "request": self.answered, "error": error}, sort_keys=True)
        try:
            with open(path + ".tmp", "w") as f:
                f.write(body + "\n")
            os.replace(path + ".tmp", path)
        except OSError as e:
            self.log(f"status: cannot write {path}: {e.strerror or e}")

    def _poll_control(self) -> None:
        """A changed control file: its request goes to the loader (one thread at a time)."""
        assert self.control is not None
        try:
            st = os.stat(self.control)
        except OSError:
            return
        seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        if seen == self.control_seen:
            return
        self.control_seen = seen
        try:
            with open(self.control, "rb") as f:
                request = Request.parse(f.read())
        except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:
            self.log(f"control: {self.control} is not a version request: {e}")
            return
        with self.lock:
            if self.wanted is not None and request.id <= self.wanted.id:
                return
            self.wanted = request
            if self.loader is None:
                self.loader = threading.Thread(target=self._load_loop, name="version loader",
                                               daemon=True)
                self.loader.start()

    def _load_loop(self) -> None:
        """Load the newest request's version until none is left; the frame thread swaps."""
        while True:
            with self.lock:
                request = self.wanted
                if request is None or request.id == self.loaded:
                    self.loader = None
                    return
                part = self.sessions.get(request.version)
                running = self.sessions[self.original] if self.original else None
            error = None
            if part is None:
                assert running is not None
                try:
                    part = load_version(request, running, self.config.threads)
                except LoadError as e:
                    error = str(e)
            with self.lock:
                self.loaded = request.id
                if self.wanted is request:  # else a newer request came: that one counts
                    self.pending = (request, part if error is None else None, error)

    def _apply(self) -> None:
        """Between two frames: run the version the loader made ready (or say why not)."""
        with self.lock:
            pending, self.pending = self.pending, None
        if pending is None:
            return
        request, part, error = pending
        self.answered = request.id
        if part is None:
            self.metrics.version_failures.inc()
            self._say(f"cannot run version {request.version} ({request.file}): {error}; "
                      f"keeps running {self.version}")
            self._write_status(error)
            return
        if request.version != self.version:
            before = self.version
            with self.lock:
                self.run, self.version = part, request.version
                self.sessions = {v: s for v, s in self.sessions.items()
                                 if v in (self.original, request.version)}
                self.sessions[request.version] = part
            self.swapped_at = time.time()
            self.metrics.version_switches.inc()
            self.metrics.running_version(request.version, before)
            self._say(f"switched version {before} -> {request.version}")
        self._write_status()

    def serve(self) -> int:
        on_stop(self.stop)  # the loop below waits at most 50 ms before it looks again
        pending: deque[mqtt.MQTTMessageInfo] = deque(maxlen=64)
        next_feedback = next_control = 0.0
        if self.control is not None:  # a restart: back on the version it was last asked for
            self._poll_control()
            if (loader := self.loader) is not None:
                loader.join()
            self._apply()
            self._write_status()
        self.conn.start()
        while True:
            now = time.time()
            if self.control is not None and now >= next_control:
                self._poll_control()
                next_control = now + CONTROL_POLL_S
            if self.pending is not None:
                self._apply()
            if self.estimator is not None and self.adapt is not None and now >= next_feedback \
                    and self.conn.ready.is_set():
                self._send_feedback()
                next_feedback = now + self.adapt.feedback_interval_s
            if self.held and self.controller is not None:
                with self.lock:
                    up = self.controller.link_up(now)
                if up:
                    pending.extend(self._flush())
            with self.lock:
                self._expire(time.time())
                if self.stop.is_set():
                    self.metrics.drop("shutdown", len(self.queue) + len(self.held))
                    self.queue.clear()
                    self.held.clear()
                    break
                if not self.queue:
                    self.lock.wait(0.05)
                    continue
                job = self.queue.popleft()
            pending.extend(self.process(job))
        self.conn.close(list(pending))
        return 0

    def _choose(self, job: Job, now: float) -> tuple[Callable[[Inputs], Tensors] | None,
                                                     Choice | None, float | None]:
        """What runs this frame: the part, the head's choice or the tail's cut (None for a
        unit that does not adapt), and the emulated compute time. A None part: drop."""
        emulate = self.config.emulate_compute_s
        if self.adapt is None:
            return self.run, None, emulate
        if self.controller is not None:
            with self.lock:  # paho's thread changes the controller on feedback
                before, outages = len(self.controller.switches), len(self.controller.outages)
                choice = self.controller.choose(now)
                switched = self.controller.switches[before:]
                began = len(self.controller.outages) > outages
            for sw in switched:
                self.metrics.switches.inc()
                self._say(f"switched cut {sw.before} -> {sw.after} (estimate "
                          f"{sw.estimate_bps / 1e6:.1f} Mbps: predicted "
                          f"{1e3 * self.controller.predicted_s(sw.before, sw.estimate_bps):.2f}"
                          f" ms -> "
                          f"{1e3 * self.controller.predicted_s(sw.after, sw.estimate_bps):.2f}"
                          " ms)")
            if began:
                self.metrics.outages.inc()
                self.metrics.link_up.set(0)
                self._say(f"no feedback from the tail for {self.adapt.outage_after_s:g} s: "
                          f"link down, on_disconnect = {self.adapt.on_disconnect or 'none'}")
            if choice.action == "drop":
                self.metrics.drop("outage")
                return None, choice, None
            cut = self.controller.cuts[choice.cut]
            return self.parts[choice.cut], choice, None if emulate is None else cut.head_s
        cut_id = job.messages[0].cut or self.adapt.start
        part = self.parts.get(cut_id)
        if part is None:
            self.metrics.drop("unknown_cut")
            self.log(f"unknown_cut: a message made with cut {cut_id}, which is not in the "
                     "decision table")
            return None, None, None
        tail_s = next(c.tail_s for c in self.adapt.cuts if c.id == cut_id)
        return part, Choice(cut_id), None if emulate is None else tail_s

    def _flush(self) -> list[mqtt.MQTTMessageInfo]:
        """The messages an outage held, in order, now that the link is back."""
        infos = []
        while self.held:
            topics, payload = self.held.popleft()
            infos += [self.conn.publish(t, payload) for t in topics]
            self.metrics.frames_out.inc()
        return infos

    def process(self, job: Job) -> list[mqtt.MQTTMessageInfo]:
        started = time.time()
        self.metrics.queue_wait.observe(max(0.0, started - job.received))
        inputs: Inputs = [(n, a) for m in job.messages for n, a in m.tensors.items()]
        # a whole model's own version (it changes only between frames, on this thread), else
        # the one its input carries
        version = self.version if self.version is not None else \
            next((m.version for m in job.messages if m.version is not None), None)
        run, choice, emulate = self._choose(job, started)
        if run is None:
            return []
        try:
            outputs = run(inputs)
        except RunError as e:
            self.metrics.drop("error")
            self.log(str(e))
            return []
        ran = time.time() - started
        self.metrics.inference.observe(ran)
        if emulate is not None:
            if ran > emulate + OVERRUN_TOLERANCE_S:
                self.metrics.overruns.inc()
            if ran < emulate:
                time.sleep(emulate - ran)
        if choice is not None:  # the half's time as it runs here, padding included
            took = time.time() - started
            with self.lock:
                if self.controller is not None:
                    self.controller.ran(choice.cut, took)
                else:
                    self.times.ran(choice.cut, took)
        captured = min(m.captured for m in job.messages)
        trace = tuple(dict.fromkeys(h for m in job.messages for h in m.trace))
        published = time.time()
        self.seq += 1
        message = wire.Message(self.config.app, self.config.unit, self.config.replica, job.frame,
                               captured, self.seq, outputs,
                               (*trace, (self.config.unit, job.received, started, published)),
                               cut=choice.cut if choice is not None else None,
                               version=version)
        try:
            payload = wire.encode(message)
        except wire.WireError as e:
            self.metrics.drop("error")
            self.log(f"cannot send the output of `{self.config.unit}`: {e}")
            return []
        topics = self.config.publish
        if self.version is not None:
            self.metrics.ran_version(self.version)
        if choice is not None:
            self.metrics.ran_cut(choice.cut)
            if choice.local and self.adapt is not None:
                topics = self.adapt.bypass  # the whole model ran here: its consumers' topic
            if choice.action == "buffer":
                self.held.append((topics, payload))
                if len(self.held) > (self.adapt.buffer_frames if self.adapt else 0):
                    self.held.popleft()
                    self.metrics.drop("outage_overflow")
                return []
        infos = self._flush() if self.held else []
        infos += [self.conn.publish(t, payload) for t in topics]
        self.metrics.frames_out.inc()
        self.metrics.end_to_end.observe(max(0.0, published - captured))
        return infos

    def log(self, line: str) -> None:
        kind = line.split(":")[0]
        if kind not in self.errors_seen:  # once per kind of error: the counters say how often
            self.errors_seen.add(kind)
            print(f"{self.config.unit} r{self.config.replica}: {line}", file=sys.stderr,
                  flush=True)


def load(path: str) -> UnitConfig:
    try:
        return UnitConfig.load(path)
    except OSError as e:
        raise StartError(f"cannot read {path}: {e.strerror or e}") from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise StartError(f"{path} is not a valid unit.json: {where}: {first['msg']} "
                         f"({e.error_count()} problem(s); docs/bundles.md has the schema)") \
            from None


def load_env(name: str) -> UnitConfig:
    text = os.environ.get(name)
    if not text:
        raise StartError(f"environment variable {name} holds no unit.json")
    try:
        return UnitConfig.model_validate_json(text)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise StartError(f"{name} is not a valid unit.json: {where}: {first['msg']}") from None


def load_twin() -> UnitConfig:
    from edgeflow.runtime.twin import read_twin

    try:
        return UnitConfig.model_validate_json(read_twin())
    except ValidationError as e:
        raise StartError(f"the module twin's unit.json is not valid: {e.errors()[0]['msg']}") \
            from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeflow.runtime",
                                     description="Run one compiled unit (docs/runtime.md).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="the unit's unit.json")
    source.add_argument("--config-from-twin", action="store_true",
                        help="read unit.json from the IoT Edge module twin (docs/targets.md)")
    source.add_argument("--config-from-env", metavar="NAME", nargs="?", const=CONFIG_ENV,
                        help=f"read unit.json from environment variable NAME (default "
                             f"{CONFIG_ENV}; Greengrass components: docs/targets.md)")
    parser.add_argument("--metrics-host", default="0.0.0.0",
                        help="address the metrics endpoint listens on (default 0.0.0.0)")
    parser.add_argument("--control", metavar="FILE",
                        help="a whole model's unit: run the version FILE asks for, switching "
                             "between frames; its status goes to FILE.status.json beside it")
    args = parser.parse_args(argv)
    try:
        config = load_twin() if args.config_from_twin else \
            load_env(args.config_from_env) if args.config_from_env else load(args.config)
        worker = Worker(config, args.metrics_host, args.control)
    except StartError as e:
        print(f"edgeflow worker: {e}", file=sys.stderr, flush=True)
        return 2
    return worker.serve()
