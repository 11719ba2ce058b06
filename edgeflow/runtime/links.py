"""Link emulation for `edgeflow run`: the whole app runs on one machine over 127.0.0.1, and the
network links between device instances (each with a declared latency and bandwidth) are
emulated so that a message crossing a link arrives no sooner than the link would deliver it.

The model
---------
A link has two directions, each a `Pacer`: a FIFO server of rate `bandwidth_bps` followed by a
fixed propagation delay `latency_s`. A message of `n` bytes that is ready at time `t` starts
serialisation at `max(t, busy_until)`, occupies the direction for `8 n / bandwidth_bps` seconds
(the direction is busy until then) and arrives `latency_s` after its last bit is serialised. A
route over several links is a chain of pacers, store-and-forward: the arrival at hop k is the
ready time at hop k + 1. Pacers are shared, one per (link, direction) in a process, so routes
over the same link direction contend for its bandwidth.

Emulated:
  * latency (propagation delay) per link direction;
  * serialisation delay (size / bandwidth) per hop, store-and-forward on multi-link routes;
  * contention: every route over one link direction shares its pacer;
  * in-order delivery: per connection direction (proxy) and per relay direction (relay), items
    are released in the order they were offered, each no sooner than its computed arrival;
  * a bounded sender buffer: a proxy stops reading when more than `max_inflight_bytes` are
    queued or in flight (back-pressure, like a full socket buffer), a relay drops the oldest
    message not yet on the link (and counts the drop).

Not emulated: packet loss, jitter, TCP window and congestion-control effects (slow start,
retransmission), MTU / header overhead (a proxy paces the TCP payload bytes only; a relay paces
the exact size of the MQTT PUBLISH packet), and the real loopback time (tens of microseconds),
which only adds to the emulated delay.

Sharing a link is approximated this way: a sender's item is admitted to its route's first
pacer only when that link direction is (about to be) idle, so concurrent senders interleave
item by item (roughly fair, never overlapping). Later hops of a chain are computed when the item
is admitted, in admission order (FIFO per pacer), so contention at a later hop is modelled
conservatively: an item never arrives earlier than the model allows, sometimes later.

The emulated arrival is a lower bound in practice: the event loop's timers fire late by up to
about a millisecond, never early (a release is re-checked against the clock). The relay's
clients disable Nagle's algorithm; mosquitto needs `set_tcp_nodelay true` for the same reason,
else a PUBLISH it writes after a PUBACK not yet acknowledged waits for the delayed ACK (40 ms).

Two transports use the pacers:
  * `PacingProxy`, a TCP proxy put in front of a mosquitto bridge listener (bridged mode): it
    forwards opaque bytes (TLS passes through untouched), paced per direction;
  * `Relay`, an MQTT relay between two brokers that have no bridges (embedded broker mode): it
    subscribes to `out_topics` on broker A and republishes them on B, and `in_topics` on B to A.

The process entry point, `python -m edgeflow.runtime.links --config links.json [--stats FILE]`,
reads::

    {"links": [{"id": str, "latency_s": float, "bandwidth_bps": float}],
     "proxies": [{"listen": [host, port], "target": [host, port],
                  "forward": [[link_id, "ab" | "ba"], ...], "backward": [...],
                  "max_inflight_bytes": int (optional)}],
     "relays": [{"a": END, "b": END, "out_topics": [filter, ...], "in_topics": [...],
                 "forward": [...], "backward": [...], "qos": 0 | 1 | 2 (optional, default 1),
                 "max_inflight_bytes": int (optional)}]}
    END = {"host": str, "port": int, "client_id": str,
           "ca": path | null, "cert": path | null, "key": path | null}

`forward` is the route from the listener / A towards the target / B, `backward` the reverse.
It prints `ready` once every proxy listens, exits 0 on SIGTERM or SIGINT, and on exit writes
counters to the `--stats` file. A bad configuration is one line on stderr and exit status 2; a
proxy that cannot listen, one line and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

Direction = Literal["ab", "ba"]
Hop = tuple[str, Direction]

DEFAULT_MAX_INFLIGHT_BYTES = 4 * 1024 * 1024
DEFAULT_CHUNK_BYTES = 16 * 1024
# an item is admitted to its first link this long before the link becomes idle (timers are late)
ADMIT_SLACK_S = 0.0005


# --------------------------------------------------------------------------------------------
# the model


class Pacer:
    """One direction of one link: a FIFO serialiser of `bandwidth_bps` followed by `latency_s`
    of propagation. Deterministic: the caller passes the time in; `arrival` advances
    `busy_until` and the counters, nothing else."""

    __slots__ = ("bandwidth_bps", "busy_until", "bytes", "latency_s", "messages")

    def __init__(self, latency_s: float, bandwidth_bps: float) -> None:
        if not (isinstance(latency_s, int | float) and math.isfinite(latency_s)
                and latency_s >= 0):
            raise ValueError(f"latency_s must be a finite number >= 0, not {latency_s!r}")
        if not (isinstance(bandwidth_bps, int | float) and bandwidth_bps > 0):
            raise ValueError(f"bandwidth_bps must be a number > 0, not {bandwidth_bps!r}")
        self.latency_s = float(latency_s)
        self.bandwidth_bps = float(bandwidth_bps)
        self.busy_until = -math.inf
        self.bytes = 0
        self.messages = 0

    def serialisation_s(self, nbytes: int) -> float:
        """The time `nbytes` occupy this direction."""
        return 8.0 * nbytes / self.bandwidth_bps

    def arrival(self, ready_at: float, nbytes: int) -> float:
        """When `nbytes`, ready to go at `ready_at`, have all arrived at the far end.
        Serialisation starts at max(ready_at, busy_until); the direction is busy until it ends;
        the bytes arrive `latency_s` later."""
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, not {nbytes}")
        start = max(ready_at, self.busy_until)
        end = start + self.serialisation_s(nbytes)
        self.busy_until = end
        self.bytes += nbytes
        self.messages += 1
        return end + self.latency_s

    def __repr__(self) -> str:
        return f"Pacer(latency_s={self.latency_s!r}, bandwidth_bps={self.bandwidth_bps!r})"


def route_arrival(route: Sequence[Pacer], ready_at: float, nbytes: int) -> float:
    """The arrival over a chain of pacers, store-and-forward (an empty route: `ready_at`)."""
    at = ready_at
    for pacer in route:
        at = pacer.arrival(at, nbytes)
    return at


def mqtt_publish_size(topic: str, payload: bytes, qos: int) -> int:
    """The size on the wire of an MQTT 3.1.1 PUBLISH packet."""
    remaining = 2 + len(topic.encode("utf-8")) + (2 if qos > 0 else 0) + len(payload)
    length_bytes = 1
    while remaining >= 128 ** length_bytes and length_bytes < 4:
        length_bytes += 1
    return 1 + length_bytes + remaining


# --------------------------------------------------------------------------------------------
# a lane: one direction of one connection or relay

T = TypeVar("T")


class _Lane(Generic[T]):
    """Items wait in `pending` (the sender's buffer) until the route's first link direction is
    about to be idle; they are then admitted (their arrival computed over the whole route) into
    `scheduled`, and delivered one at a time, in order, no sooner than their arrival.

    `put` (blocking, for byte streams) waits while more than `limit` bytes are held; `offer`
    (non-blocking, for messages) instead drops the oldest pending message, or failing that the
    oldest scheduled one, and counts it. `merge`, when given, joins consecutive pending items
    into one of at most `merge_bytes` at admission (a byte stream has no boundaries)."""

    def __init__(self, route: Sequence[Pacer], deliver: Callable[[T], Awaitable[None]],
                 limit: int, merge: Callable[[list[T]], T] | None = None,
                 merge_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        self.route = tuple(route)
        self._deliver = deliver
        self.limit = limit
        self._merge = merge
        self._merge_bytes = merge_bytes
        self._pending: deque[tuple[float, T, int]] = deque()
        self._scheduled: deque[tuple[float, T, int]] = deque()
        self.held = 0
        self.dropped = 0
        self.dropped_bytes = 0
        self.delivered = 0
        self.delivered_bytes = 0
        self._input_closed = False
        self._admitting_done = False
        self._wake_pump = asyncio.Event()
        self._wake_deliver = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._admit_loop()),
                       asyncio.create_task(self._deliver_loop())]
        for task in self._tasks:
            task.add_done_callback(_retrieve)

    @property
    def delivering(self) -> asyncio.Task[None]:
        """The task that delivers: it ends after the last item (after `close_input`), or with
        the error a delivery raised."""
        return self._tasks[1]

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()

    def _append(self, item: T, nbytes: int, ready_at: float | None) -> None:
        if self._input_closed:
            raise RuntimeError("the lane's input is closed")
        at = asyncio.get_running_loop().time() if ready_at is None else ready_at
        self._pending.append((at, item, nbytes))
        self.held += nbytes
        self._wake_pump.set()

    async def put(self, item: T, nbytes: int, ready_at: float | None = None) -> None:
        """Queue `item`; return once no more than `limit` bytes are held (back-pressure)."""
        self._append(item, nbytes, ready_at)
        while self.held > self.limit:
            if self.delivering.done():
                self.delivering.result()  # raises the delivery's error
                raise RuntimeError("the lane stopped delivering")
            self._space.clear()
            space = asyncio.ensure_future(self._space.wait())
            try:
                await asyncio.wait([space, self.delivering],
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                space.cancel()

    def offer(self, item: T, nbytes: int, ready_at: float | None = None) -> None:
        """Queue `item`; while more than `limit` bytes are held, drop the oldest other item."""
        self._append(item, nbytes, ready_at)
        while self.held > self.limit:
            if len(self._pending) > 1:
                _, _, n = self._pending.popleft()
            elif self._scheduled:
                _, _, n = self._scheduled.popleft()
            else:
                break
            self.held -= n
            self.dropped += 1
            self.dropped_bytes += n

    def close_input(self) -> None:
        """No more items: the lane finishes once everything queued is delivered."""
        self._input_closed = True
        self._wake_pump.set()

    async def finished(self) -> None:
        """Wait until every item is delivered (after `close_input`); raise a delivery error."""
        await self.delivering

    async def _admit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._input_closed:
                    break
                self._wake_pump.clear()
                await self._wake_pump.wait()
                continue
            if self.route:
                wait = self.route[0].busy_until - loop.time() - ADMIT_SLACK_S
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
            ready_at, item, nbytes = self._pending.popleft()
            if self._merge is not None and self._pending:
                items = [item]
                while self._pending and nbytes + self._pending[0][2] <= self._merge_bytes:
                    ready_at, more, n = self._pending.popleft()
                    items.append(more)
                    nbytes += n
                if len(items) > 1:
                    item = self._merge(items)
            arrival = route_arrival(self.route, ready_at, nbytes)
            self._scheduled.append((arrival, item, nbytes))
            self._wake_deliver.set()
        self._admitting_done = True
        self._wake_deliver.set()

    async def _deliver_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._scheduled:
                if self._admitting_done:
                    break
                self._wake_deliver.clear()
                await self._wake_deliver.wait()
                continue
            arrival, item, nbytes = self._scheduled[0]
            delay = arrival - loop.time()
            if delay > 0:
                # the head may be dropped meanwhile: look again after the sleep
                await asyncio.sleep(delay)
                continue
            self._scheduled.popleft()
            try:
                await self._deliver(item)
            finally:
                self.held -= nbytes
                if self.held <= self.limit:
                    self._space.set()
            self.delivered += 1
            self.delivered_bytes += nbytes


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a lane task's error as seen: its owner learns of it through `delivering`."""
    if not task.cancelled():
        task.exception()


# --------------------------------------------------------------------------------------------
# the TCP proxy


class PacingProxy:
    """A TCP proxy: each connection accepted on `listen` is connected to `target`, and bytes
    flow listener -> target through `forward`, target -> listener through `backward`. Port 0
    listens on a free port (see `address`)."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int],
                 forward: Sequence[Pacer], backward: Sequence[Pacer], *,
                 max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        self.listen = listen
        self.target = target
        self.forward = tuple(forward)
        self.backward = tuple(backward)
        self.max_inflight_bytes = max_inflight_bytes
        self.chunk_bytes = chunk_bytes
        self.connections = 0
        self.failed_connections = 0
        self.forward_bytes = 0
        self.backward_bytes = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.listen[0], self.listen[1])

    @property
    def address(self) -> tuple[str, int]:
        """The address actually listened on."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the proxy is not listening")
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        return {"listen": list(self.listen), "target": list(self.target),
                "connections": self.connections, "failed_connections": self.failed_connections,
                "forward_bytes": self.forward_bytes, "backward_bytes": self.backward_bytes}

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._connection(reader, writer)
        except asyncio.CancelledError:
            # closing: end the handler quietly (asyncio's stream callback would log a
            # cancelled handler's CancelledError as an unhandled exception)
            writer.close()
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _connection(self, creader: asyncio.StreamReader,
                          cwriter: asyncio.StreamWriter) -> None:
        try:
            treader, twriter = await asyncio.open_connection(*self.target)
        except OSError:
            self.failed_connections += 1
            cwriter.close()
            return
        self.connections += 1
        fwd = _Lane(self.forward, _writer_of(twriter), self.max_inflight_bytes,
                    merge=b"".join, merge_bytes=self.chunk_bytes)
        bwd = _Lane(self.backward, _writer_of(cwriter), self.max_inflight_bytes,
                    merge=b"".join, merge_bytes=self.chunk_bytes)
        fwd.start()
        bwd.start()
        pumps = [asyncio.create_task(self._pump(creader, twriter, fwd, True)),
                 asyncio.create_task(self._pump(treader, cwriter, bwd, False))]
        try:
            # until both directions are done, or one fails (reading, or writing to its peer)
            await asyncio.wait([*pumps, fwd.delivering, bwd.delivering],
                               return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            fwd.cancel()
            bwd.cancel()
            for w in (cwriter, twriter):
                w.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.gather(cwriter.wait_closed(), twriter.wait_closed())

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    lane: _Lane[bytes], forward: bool) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await reader.read(self.chunk_bytes)
            if not data:
                break
            if forward:
                self.forward_bytes += len(data)
            else:
                self.backward_bytes += len(data)
            await lane.put(data, len(data), loop.time())
        lane.close_input()
        await lane.finished()
        if writer.can_write_eof():
            with contextlib.suppress(OSError):
                writer.write_eof()


def _writer_of(writer: asyncio.StreamWriter) -> Callable[[bytes], Awaitable[None]]:
    async def deliver(data: bytes) -> None:
        writer.write(data)
        await writer.drain()
    return deliver


# --------------------------------------------------------------------------------------------
# the MQTT relay


@dataclass(frozen=True)
class Endpoint:
    """One broker a relay connects to. TLS when `ca` is set (`cert` and `key` together: a
    client certificate whose CN equals `client_id`)."""

    host: str
    port: int
    client_id: str
    ca: str | None = None
    cert: str | None = None
    key: str | None = None


@dataclass(frozen=True)
class _Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class _Side:
    """A paho client to one broker: subscribes to `topics` on every (re)connection, and skips
    the echo of a message the relay itself published here that matches those topics."""

    def __init__(self, end: Endpoint, topics: Sequence[str], qos: int, max_queued: int) -> None:
        self.end = end
        self.topics = tuple(topics)
        self.qos = qos
        self.connected = threading.Event()
        self._echoes: dict[tuple[str, bytes], int] = {}
        self._lock = threading.Lock()
        self.on_message: Callable[[_Message, float], None] = lambda message, at: None
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                             client_id=end.client_id, protocol=mqtt.MQTTv311,
                             clean_session=True)
        if end.ca is not None:
            client.tls_set(ca_certs=end.ca, certfile=end.cert, keyfile=end.key)
        client.reconnect_delay_set(min_delay=1, max_delay=16)
        client.max_queued_messages_set(max_queued)
        client.on_connect = self._connected
        client.on_disconnect = self._disconnected
        client.on_message = self._message
        client.on_socket_open = _no_delay
        self.client = client

    def start(self) -> None:
        self.client.connect_async(self.end.host, self.end.port, keepalive=30)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, message: _Message) -> bool:
        key = (message.topic, message.payload)
        echo = any(mqtt.topic_matches_sub(t, message.topic) for t in self.topics)
        if echo:
            with self._lock:
                self._echoes[key] = self._echoes.get(key, 0) + 1
        info = self.client.publish(message.topic, message.payload, message.qos, message.retain)
        ok = info.rc == mqtt.MQTT_ERR_SUCCESS
        if not ok and echo:
            self._forget(key)
        return ok

    def _forget(self, key: tuple[str, bytes]) -> bool:
        with self._lock:
            count = self._echoes.get(key, 0)
            if count == 0:
                return False
            if count == 1:
                del self._echoes[key]
            else:
                self._echoes[key] = count - 1
            return True

    def _connected(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                   properties: Any) -> None:
        if getattr(reason, "is_failure", False):
            return
        with self._lock:
            self._echoes.clear()
        if self.topics:
            client.subscribe([(t, self.qos) for t in self.topics])
        self.connected.set()

    def _disconnected(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                      properties: Any) -> None:
        self.connected.clear()

    def _message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        at = time.monotonic()  # the event loop's clock
        payload = bytes(msg.payload)
        if self._forget((msg.topic, payload)):
            return
        self.on_message(_Message(msg.topic, payload, msg.qos, bool(msg.retain)), at)


def _no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """Send each packet at once: with Nagle's algorithm, a PUBLISH written after a PUBACK
    the broker has not yet acknowledged waits for the broker's delayed ACK (40 ms on Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Relay:
    """An MQTT relay between broker A and broker B: `out_topics` on A are republished on B
    through `forward`, `in_topics` on B on A through `backward`, in order, each message no
    sooner than its route delivers it. Over `max_inflight_bytes` held per direction, the oldest
    message is dropped (counted in `stats`). Runs in the current event loop; paho's network
    threads hand messages over to it."""

    def __init__(self, a: Endpoint, b: Endpoint, out_topics: Sequence[str],
                 in_topics: Sequence[str], forward: Sequence[Pacer], backward: Sequence[Pacer],
                 *, qos: int = 1, max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
                 max_queued_messages: int = 1000) -> None:
        self.a = _Side(a, out_topics, qos, max_queued_messages)
        self.b = _Side(b, in_topics, qos, max_queued_messages)
        self.forward = tuple(forward)
        self.backward = tuple(backward)
        self.max_inflight_bytes = max_inflight_bytes
        self.unsent = {"forward": 0, "backward": 0}
        self._lanes: dict[str, _Lane[_Message]] = {}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for name, src, dst, route in (("forward", self.a, self.b, self.forward),
                                      ("backward", self.b, self.a, self.backward)):
            lane = _Lane(route, self._publisher(name, dst), self.max_inflight_bytes)
            lane.start()
            self._lanes[name] = lane
            src.on_message = self._handoff(loop, lane)
        self.a.start()
        self.b.start()

    def _publisher(self, name: str, dst: _Side) -> Callable[[_Message], Awaitable[None]]:
        async def deliver(message: _Message) -> None:
            if not dst.publish(message):
                self.unsent[name] += 1
        return deliver

    @staticmethod
    def _handoff(loop: asyncio.AbstractEventLoop,
                 lane: _Lane[_Message]) -> Callable[[_Message, float], None]:
        def handoff(message: _Message, at: float) -> None:
            size = mqtt_publish_size(message.topic, message.payload, message.qos)
            with contextlib.suppress(RuntimeError):  # the loop is closed: stopping
                loop.call_soon_threadsafe(lane.offer, message, size, at)
        return handoff

    async def wait_connected(self, timeout: float) -> bool:
        """Whether both ends are connected (and subscribed) within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        for side in (self.a, self.b):
            left = max(0.0, deadline - time.monotonic())
            if not await asyncio.to_thread(side.connected.wait, left):
                return False
        return True

    async def stop(self, timeout: float = 1.5) -> None:
        for side in (self.a, self.b):
            side.on_message = lambda message, at: None
        for lane in self._lanes.values():
            lane.cancel()
        stops = [asyncio.to_thread(side.stop) for side in (self.a, self.b)]
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*stops, return_exceptions=True), timeout)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"a": self.a.end.client_id, "b": self.b.end.client_id}
        for name, lane in self._lanes.items():
            out[name] = {"messages": lane.delivered, "bytes": lane.delivered_bytes,
                         "dropped": lane.dropped, "dropped_bytes": lane.dropped_bytes,
                         "unsent": self.unsent[name]}
        return out

    @property
    def dropped(self) -> int:
        return sum(lane.dropped for lane in self._lanes.values())


# --------------------------------------------------------------------------------------------
# configuration


class ConfigError(ValueError):
    """A links configuration that cannot be used; the message names the offending field."""


@dataclass(frozen=True)
class LinkSpec:
    id: str
    latency_s: float
    bandwidth_bps: float


@dataclass(frozen=True)
class ProxySpec:
    listen: tuple[str, int]
    target: tuple[str, int]
    forward: tuple[Hop, ...]
    backward: tuple[Hop, ...]
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES


@dataclass(frozen=True)
class RelaySpec:
    a: Endpoint
    b: Endpoint
    out_topics: tuple[str, ...]
    in_topics: tuple[str, ...]
    forward: tuple[Hop, ...]
    backward: tuple[Hop, ...]
    qos: int = 1
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES


@dataclass(frozen=True)
class Config:
    links: tuple[LinkSpec, ...]
    proxies: tuple[ProxySpec, ...]
    relays: tuple[RelaySpec, ...]

    def pacers(self) -> dict[Hop, Pacer]:
        """One pacer per (link id, direction), to be shared by every route over it."""
        return {(link.id, d): Pacer(link.latency_s, link.bandwidth_bps)
                for link in self.links for d in ("ab", "ba")}


def _fields(value: object, where: str, required: Sequence[str],
            optional: Sequence[str] = ()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected an object")
    unknown = sorted(set(value) - set(required) - set(optional))
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}")
    missing = [k for k in required if k not in value]
    if missing:
        raise ConfigError(f"{where}: missing field {missing[0]!r}")
    return cast(dict[str, Any], value)


def _list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list")
    return value


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a non-empty string")
    return value


def _number(value: object, where: str, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{where}: expected a number")
    if positive and value <= 0:
        raise ConfigError(f"{where}: must be > 0, not {value}")
    if value < 0:
        raise ConfigError(f"{where}: must be >= 0, not {value}")
    return float(value)


def _integer(value: object, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where}: expected an integer from {low} to {high}")
    return value


def _address(value: object, where: str) -> tuple[str, int]:
    items = _list(value, where)
    if len(items) != 2:
        raise ConfigError(f"{where}: expected [host, port]")
    return _text(items[0], f"{where}[0]"), _integer(items[1], f"{where}[1]", 1, 65535)


def _route(value: object, where: str, links: set[str]) -> tuple[Hop, ...]:
    hops: list[Hop] = []
    for i, hop in enumerate(_list(value, where)):
        at = f"{where}[{i}]"
        items = _list(hop, at)
        if len(items) != 2:
            raise ConfigError(f"{at}: expected [link_id, \"ab\" | \"ba\"]")
        link = _text(items[0], f"{at}[0]")
        if link not in links:
            raise ConfigError(f"{at}[0]: unknown link {link!r}")
        direction = items[1]
        if direction not in ("ab", "ba"):
            raise ConfigError(f"{at}[1]: expected \"ab\" or \"ba\", not {direction!r}")
        hops.append((link, cast(Direction, direction)))
    return tuple(hops)


def _optional_path(value: object, where: str) -> str | None:
    return None if value is None else _text(value, where)


def _endpoint(value: object, where: str) -> Endpoint:
    raw = _fields(value, where, ("host", "port", "client_id"), ("ca", "cert", "key"))
    ca = _optional_path(raw.get("ca"), f"{where}.ca")
    cert = _optional_path(raw.get("cert"), f"{where}.cert")
    key = _optional_path(raw.get("key"), f"{where}.key")
    if (cert is None) != (key is None):
        raise ConfigError(f"{where}: give both cert and key, or neither")
    if cert is not None and ca is None:
        raise ConfigError(f"{where}: a client certificate needs ca")
    return Endpoint(_text(raw["host"], f"{where}.host"),
                    _integer(raw["port"], f"{where}.port", 1, 65535),
                    _text(raw["client_id"], f"{where}.client_id"), ca, cert, key)


def _topics(value: object, where: str) -> tuple[str, ...]:
    out: list[str] = []
    for i, item in enumerate(_list(value, where)):
        topic = _text(item, f"{where}[{i}]")
        levels = topic.split("/")
        for j, level in enumerate(levels):
            if ("#" in level and (level != "#" or j != len(levels) - 1)) or \
                    ("+" in level and level != "+") or "\x00" in level:
                raise ConfigError(f"{where}[{i}]: not a valid MQTT topic filter: {topic!r}")
        out.append(topic)
    return tuple(out)


def parse_config(data: object) -> Config:
    """The configuration in `data` (parsed JSON), checked; `ConfigError` names what is wrong."""
    raw = _fields(data, "config", (), ("links", "proxies", "relays"))
    links: list[LinkSpec] = []
    for i, item in enumerate(_list(raw.get("links", []), "links")):
        where = f"links[{i}]"
        link = _fields(item, where, ("id", "latency_s", "bandwidth_bps"))
        spec = LinkSpec(_text(link["id"], f"{where}.id"),
                        _number(link["latency_s"], f"{where}.latency_s", positive=False),
                        _number(link["bandwidth_bps"], f"{where}.bandwidth_bps", positive=True))
        if any(spec.id == other.id for other in links):
            raise ConfigError(f"{where}.id: duplicate link id {spec.id!r}")
        links.append(spec)
    ids = {link.id for link in links}
    proxies: list[ProxySpec] = []
    for i, item in enumerate(_list(raw.get("proxies", []), "proxies")):
        where = f"proxies[{i}]"
        proxy = _fields(item, where, ("listen", "target", "forward", "backward"),
                        ("max_inflight_bytes",))
        proxies.append(ProxySpec(
            _address(proxy["listen"], f"{where}.listen"),
            _address(proxy["target"], f"{where}.target"),
            _route(proxy["forward"], f"{where}.forward", ids),
            _route(proxy["backward"], f"{where}.backward", ids),
            _integer(proxy.get("max_inflight_bytes", DEFAULT_MAX_INFLIGHT_BYTES),
                     f"{where}.max_inflight_bytes", 1, 2 ** 40)))
    listens = [p.listen for p in proxies]
    for i, listen in enumerate(listens):
        if listen in listens[:i]:
            raise ConfigError(f"proxies[{i}].listen: {listen[0]}:{listen[1]} is listened on twice")
    relays: list[RelaySpec] = []
    for i, item in enumerate(_list(raw.get("relays", []), "relays")):
        where = f"relays[{i}]"
        relay = _fields(item, where, ("a", "b", "out_topics", "in_topics", "forward", "backward"),
                        ("qos", "max_inflight_bytes"))
        relays.append(RelaySpec(
            _endpoint(relay["a"], f"{where}.a"), _endpoint(relay["b"], f"{where}.b"),
            _topics(relay["out_topics"], f"{where}.out_topics"),
            _topics(relay["in_topics"], f"{where}.in_topics"),
            _route(relay["forward"], f"{where}.forward", ids),
            _route(relay["backward"], f"{where}.backward", ids),
            _integer(relay.get("qos", 1), f"{where}.qos", 0, 2),
            _integer(relay.get("max_inflight_bytes", DEFAULT_MAX_INFLIGHT_BYTES),
                     f"{where}.max_inflight_bytes", 1, 2 ** 40)))
    return Config(tuple(links), tuple(proxies), tuple(relays))


def load_config(path: str | Path) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read: {error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"not JSON: {error}") from None
    return parse_config(data)


# --------------------------------------------------------------------------------------------
# the process


class _ListenError(Exception):
    pass


async def _serve(config: Config, stats_path: Path | None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pacers = config.pacers()
    proxies = [PacingProxy(p.listen, p.target, [pacers[h] for h in p.forward],
                           [pacers[h] for h in p.backward],
                           max_inflight_bytes=p.max_inflight_bytes) for p in config.proxies]
    relays = [Relay(r.a, r.b, r.out_topics, r.in_topics, [pacers[h] for h in r.forward],
                    [pacers[h] for h in r.backward], qos=r.qos,
                    max_inflight_bytes=r.max_inflight_bytes) for r in config.relays]
    try:
        for proxy in proxies:
            try:
                await proxy.start()
            except OSError as error:
                host, port = proxy.listen
                raise _ListenError(f"cannot listen on {host}:{port}: {error.strerror or error}")
        for relay in relays:
            await relay.start()
        print("ready", flush=True)
        await stop.wait()
    finally:
        await asyncio.gather(*(p.close() for p in proxies), *(r.stop() for r in relays),
                             return_exceptions=True)
        if stats_path is not None:
            _write_stats(stats_path, pacers, proxies, relays)
    return 0


def _write_stats(path: Path, pacers: dict[Hop, Pacer],
                 proxies: Sequence[PacingProxy], relays: Sequence[Relay]) -> None:
    links: dict[str, dict[str, dict[str, int]]] = {}
    for (link, direction), pacer in pacers.items():
        links.setdefault(link, {})[direction] = {"bytes": pacer.bytes,
                                                 "messages": pacer.messages}
    stats = {"links": links, "proxies": [p.stats() for p in proxies],
             "relays": [r.stats() for r in relays], "drops": sum(r.dropped for r in relays)}
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as error:
        print(f"edgeflow links: cannot write stats to {path}: {error}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgeflow.runtime.links",
        description="Emulate network links (latency, bandwidth) between local MQTT brokers.")
    parser.add_argument("--config", required=True, type=Path, help="links.json")
    parser.add_argument("--stats", type=Path, default=None,
                        help="write JSON counters here on exit")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"edgeflow links: {args.config}: {error}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(config, args.stats))
    except _ListenError as error:
        print(f"edgeflow links: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
