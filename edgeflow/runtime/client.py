"""What every runtime process shares: its MQTT connection (paho-mqtt, MQTT 3.1.1, TLS client
certificate, reconnect with backoff, re-subscribe on every connect), its Prometheus metrics, and
a clean stop on SIGTERM/SIGINT.

Metrics (docs/runtime.md, "Metrics"), labelled app/unit/replica/device (drops also by reason):
frames in/out, drops, inference / queue-wait / end-to-end latency histograms in seconds with
millisecond buckets, message sizes, connection state, emulation overruns.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from edgeflow.unit_config import BrokerSpec

SECONDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5,
           1.0, 2.5, 5.0, 10.0)
BYTES = tuple(float(4**i) for i in range(4, 14))  # 256 B .. 64 MiB
LABELS = ("app", "unit", "replica", "device")


class StartError(Exception):
    """A process cannot start (bad config, tampered model, missing callable): one line for the
    user, exit status 2, never a traceback."""


@dataclass
class Metrics:
    registry: CollectorRegistry
    frames_in: Counter
    frames_out: Counter
    drops: Counter
    inference: Histogram
    queue_wait: Histogram
    end_to_end: Histogram
    bytes_in: Histogram
    bytes_out: Histogram
    connected: Gauge
    overruns: Counter
    bandwidth: Gauge
    switches: Counter
    link_up: Gauge
    outages: Counter
    by_cut: Counter
    version: Gauge
    by_version: Counter
    version_switches: Counter
    version_failures: Counter

    @classmethod
    def create(cls, app: str, unit: str, replica: int | None, device: str) -> Metrics:
        reg = CollectorRegistry()
        values = {"app": app, "unit": unit, "replica": "" if replica is None else str(replica),
                  "device": device}

        def make(kind: Any, name: str, doc: str, **kw: Any) -> Any:
            extra = {"edgeflow_drops": ("reason",), "edgeflow_frames_by_cut": ("cut",),
                     "edgeflow_model_version": ("version",),
                     "edgeflow_frames_by_version": ("version",)}
            metric = kind(name, doc, (*LABELS, *extra.get(name, ())), registry=reg, **kw)
            return metric if name in extra else metric.labels(**values)

        drops = make(Counter, "edgeflow_drops", "Messages dropped, by reason")
        m = cls(
            reg,
            make(Counter, "edgeflow_frames_in", "Messages received"),
            make(Counter, "edgeflow_frames_out", "Messages published"),
            drops,
            make(Histogram, "edgeflow_inference_seconds", "Time to run the unit once",
                 buckets=SECONDS),
            make(Histogram, "edgeflow_queue_wait_seconds",
                 "From a frame's arrival (all its inputs) to the start of its run", buckets=SECONDS),
            make(Histogram, "edgeflow_end_to_end_seconds",
                 "From the frame's capture at its sensor to this unit's publish", buckets=SECONDS),
            make(Histogram, "edgeflow_message_in_bytes", "Size of messages received",
                 buckets=BYTES),
            make(Histogram, "edgeflow_message_out_bytes", "Size of messages published",
                 buckets=BYTES),
            make(Gauge, "edgeflow_connected", "1 while connected to the broker"),
            make(Counter, "edgeflow_emulation_overruns",
                 "Runs that took longer on this machine than on the declared device"),
            make(Gauge, "edgeflow_bandwidth_estimate_bps",
                 "An adapting split model's bandwidth estimate (bit/s): the tail's, and the "
                 "one its head last received"),
            make(Counter, "edgeflow_cut_switches", "Times an adapting head switched its cut"),
            make(Gauge, "edgeflow_link_up",
                 "An adapting head: 1 while its tail's feedback arrives, 0 during an outage"),
            make(Counter, "edgeflow_outages", "Outages an adapting head saw begin"),
            make(Counter, "edgeflow_frames_by_cut", "Frames an adapting head or tail ran, by cut"),
            make(Gauge, "edgeflow_model_version",
                 "A whole model's unit: 1 for the version it runs, 0 for those it ran before"),
            make(Counter, "edgeflow_frames_by_version",
                 "Frames a whole model's unit ran, by version"),
            make(Counter, "edgeflow_version_switches",
                 "Times a whole model's unit switched to another version"),
            make(Counter, "edgeflow_version_load_failures",
                 "Versions a whole model's unit was asked to run and could not load"),
        )
        m._values = values  # type: ignore[attr-defined]
        return m

    def drop(self, reason: str, n: int = 1) -> None:
        self.drops.labels(**self._values, reason=reason).inc(n)  # type: ignore[attr-defined]

    def ran_cut(self, cut: str) -> None:
        self.by_cut.labels(**self._values, cut=cut).inc()  # type: ignore[attr-defined]

    def ran_version(self, version: str) -> None:
        self.by_version.labels(**self._values, version=version).inc()  # type: ignore[attr-defined]

    def running_version(self, version: str, before: str | None = None) -> None:
        """`edgeflow_model_version`: 1 for `version`, 0 for `before`."""
        values = self._values  # type: ignore[attr-defined]
        if before is not None and before != version:
            self.version.labels(**values, version=before).set(0)
        self.version.labels(**values, version=version).set(1)

    def serve(self, port: int, host: str) -> None:
        try:
            start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise StartError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from None


class Connection:
    """A paho-mqtt client that keeps itself connected and subscribed."""

    def __init__(self, broker: BrokerSpec, subscribe: list[str], metrics: Metrics,
                 on_message: Callable[[str, bytes, float], None],
                 control: tuple[str, ...] = ()) -> None:
        self.topics = [*subscribe, *control]
        self.control = frozenset(control)  # not frames: not counted in frames_in
        self.metrics = metrics
        self._on_message = on_message
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=broker.client_id, protocol=mqtt.MQTTv311,
                                  clean_session=True)
        try:
            self.client.tls_set(ca_certs=broker.tls.ca, certfile=broker.tls.cert,
                                keyfile=broker.tls.key)
        except (OSError, ValueError) as e:
            raise StartError(f"cannot read the TLS files {broker.tls.cert}, {broker.tls.key} "
                             f"or {broker.tls.ca}: {e}") from None
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)
        self.client.max_queued_messages_set(1000)
        self.client.on_connect = self._connected
        self.client.on_disconnect = self._disconnected
        self.client.on_message = self._message
        self.client.on_socket_open = _no_delay
        self.ready = threading.Event()
        self.host, self.port = broker.host, broker.port

    def start(self) -> None:
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()

    def _connected(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                   props: Any) -> None:
        if reason.is_failure:
            print(f"broker {self.host}:{self.port} refused the connection: {reason}",
                  file=sys.stderr, flush=True)
            return
        self.metrics.connected.set(1)
        for t in self.topics:
            client.subscribe(t, qos=1)
        self.ready.set()

    def _disconnected(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                      props: Any) -> None:
        self.metrics.connected.set(0)
        self.ready.clear()

    def _message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        received = time.time()
        if msg.topic not in self.control:
            self.metrics.frames_in.inc()
            self.metrics.bytes_in.observe(len(msg.payload))
        self._on_message(msg.topic, bytes(msg.payload), received)

    def publish(self, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        self.metrics.bytes_out.observe(len(payload))
        return self.client.publish(topic, payload, qos=1)

    def close(self, pending: list[mqtt.MQTTMessageInfo], timeout_s: float = 2.0) -> None:
        deadline = time.monotonic() + timeout_s
        for info in pending:
            if not info.is_published() and self.ready.is_set():
                try:
                    info.wait_for_publish(max(0.0, deadline - time.monotonic()))
                except (RuntimeError, ValueError):
                    pass
        self.client.disconnect()
        self.client.loop_stop()


def _no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """Send every packet at once: with Nagle's algorithm the tail of a message waits for the
    broker's delayed ACK (40 ms on Linux) whenever a previous packet is unacknowledged."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


def on_stop(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set `stop`: the process finishes what it holds, then exits."""
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
