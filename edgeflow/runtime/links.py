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

Time-varying links
------------------
A link may have a `schedule` (`Schedule`, shared by both its directions): from `at_s` seconds
after the schedule clock starts, the link has another bandwidth and, optionally, another
latency, or it is down. The rate is piecewise constant: a message's serialisation starts at
`max(t, busy_until)` and ends once its `8 n` bits have been sent at the rate in force at each
instant, rate 0 while the link is down (a message caught by an outage halfway resumes when the
link is back, where it stopped); it arrives after the latency in force when its last bit was
sent. A link that a schedule leaves down for good delivers nothing more (the arrival is
infinite). Before the clock starts, and with no schedule, the declared values hold.

Down means: nothing is delivered in either direction. Items wait in the sender's bounded buffer
(a proxy stops reading from its socket once it is full, a relay drops the oldest message), and
what was being serialised resumes when the link is back. TCP connections through a proxy are
not closed, and no new connection is refused (the bytes of its first packets wait like any
other); an endpoint's own keepalive may give up on an outage longer than its timeout, as it
would over a real network. A relay's MQTT connections to its brokers stay up too.

The schedule clock starts when the process receives SIGUSR1 (`edgeflow run` sends it when the
sensors start; later SIGUSR1s are ignored): schedule time 0 is that instant on the event loop's
clock (`time.monotonic()`). `Schedule.start(t0)` starts it without a signal. An arrival computed
before the clock starts keeps the declared values, even if it falls after the start.

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
conservatively: an item never arrives earlier than the model allows, sometimes later. (An
outage of a route's first link thus also holds up, until after the outage, other traffic over
its later links; the routes `edgeflow run` writes cross one link each.) When a schedule lowers
the latency, a message may be computed to arrive before the one ahead of it: a lane still
delivers in order, the later message waits for the earlier.

The emulated arrival is a lower bound in practice: the event loop's timers fire late by up to
about a millisecond, never early (a release is re-checked against the clock). The relay's
clients disable Nagle's algorithm; mosquitto needs `set_tcp_nodelay true` for the same reason,
else a PUBLISH it writes after a PUBACK not yet acknowledged waits for the delayed ACK (40 ms).
That option leaves a bridge's own (outgoing) connection with Nagle's algorithm, which over TLS
holds the tail of a large message until the peer acknowledges its first record: the proxy, the
bridge's TCP peer, therefore acknowledges whatever it reads at once (TCP_QUICKACK, Linux), so
the bytes reach the link model when the bridge writes them, not a delayed ACK (20-40 ms) later.

Two transports use the pacers:
  * `PacingProxy`, a TCP proxy put in front of a mosquitto bridge listener (bridged mode): it
    forwards opaque bytes (TLS passes through untouched), paced per direction;
  * `Relay`, an MQTT relay between two brokers that have no bridges (embedded broker mode): it
    subscribes to `out_topics` on broker A and republishes them on B, and `in_topics` on B to A.

The process entry point, `python -m edgeflow.runtime.links --config links.json [--stats FILE]`,
reads::

    {"links": [{"id": str, "latency_s": float, "bandwidth_bps": float,
                "schedule": [CHANGE, ...] (optional)}],
     "proxies": [{"listen": [host, port], "target": [host, port],
                  "forward": [[link_id, "ab" | "ba"], ...], "backward": [...],
                  "max_inflight_bytes": int (optional)}],
     "relays": [{"a": END, "b": END, "out_topics": [filter, ...], "in_topics": [...],
                 "forward": [...], "backward": [...], "qos": 0 | 1 | 2 (optional, default 1),
                 "max_inflight_bytes": int (optional)}]}
    END = {"host": str, "port": int, "client_id": str,
           "ca": path | null, "cert": path | null, "key": path | null}
    CHANGE = {"at_s": float >= 0, "bandwidth_bps": float > 0 | null (down),
              "latency_s": float >= 0 (optional: the latency in force is kept)}

A schedule's `at_s` strictly increase; `bandwidth_bps` is required (null: the link is down from
`at_s` until the next change). Before the first change the link's own values hold.
`forward` is the route from the listener / A towards the target / B, `backward` the reverse.
It prints `ready` once every proxy listens, starts the schedule clock on SIGUSR1 (send it after
`ready`: before the handler is installed, SIGUSR1 would end the process), exits 0 on SIGTERM or
SIGINT, and on exit writes counters to the `--stats` file: per link and direction the bytes and
messages admitted, and per link `down_s` (seconds spent down, by the schedule, until the exit)
and `changes` (schedule changes applied). A bad configuration is one line on stderr and exit status 2; a
proxy that cannot listen, one line and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
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
# a lane sleeping until a time (an arrival, a link becoming idle) looks again at least this often:
# the time may be far, or infinite while a schedule leaves the link down for good
MAX_SLEEP_S = 0.1


# --------------------------------------------------------------------------------------------
# the model


def _check_link(latency_s: float, bandwidth_bps: float) -> None:
    if not (isinstance(latency_s, int | float) and math.isfinite(latency_s)
            and latency_s >= 0):
        raise ValueError(f"latency_s must be a finite number >= 0, not {latency_s!r}")
    if not (isinstance(bandwidth_bps, int | float) and bandwidth_bps > 0):
        raise ValueError(f"bandwidth_bps must be a number > 0, not {bandwidth_bps!r}")


@dataclass(frozen=True)
class Change:
    """One entry of a link's schedule: from `at_s` seconds after the schedule clock starts, the
    link has `bandwidth_bps` (None: it is down) and `latency_s` (None: the latency in force)."""

    at_s: float
    bandwidth_bps: float | None
    latency_s: float | None = None


class Schedule:
    """The bandwidth and latency of one link over time, shared by both its directions: the
    declared values, then each `Change` from its `at_s` on, once the clock has started
    (`start`). Deterministic: the caller passes the time in."""

    __slots__ = ("_segments", "bandwidth_bps", "changes", "latency_s", "started_at")

    def __init__(self, latency_s: float, bandwidth_bps: float,
                 changes: Sequence[Change] = ()) -> None:
        _check_link(latency_s, bandwidth_bps)
        previous = -math.inf
        for i, change in enumerate(changes):
            at_s, bandwidth, latency = change.at_s, change.bandwidth_bps, change.latency_s
            if not (isinstance(at_s, int | float) and math.isfinite(at_s) and at_s >= 0):
                raise ValueError(f"changes[{i}].at_s must be a finite number >= 0, not {at_s!r}")
            if at_s <= previous:
                raise ValueError(f"changes[{i}].at_s must be greater than {previous!r}")
            previous = at_s
            if bandwidth is not None:
                _check_link(0.0, bandwidth)
            if latency is not None:
                _check_link(latency, 1.0)
        self.latency_s = float(latency_s)
        self.bandwidth_bps = float(bandwidth_bps)
        self.changes = tuple(changes)
        self.started_at: float | None = None
        # (segment starts, rates (0: down), latencies): segment i holds from starts[i] on; one
        # tuple, replaced whole by `start` (which a signal handler may call at any bytecode)
        self._segments: tuple[list[float], list[float], list[float]] = (
            [-math.inf], [self.bandwidth_bps], [self.latency_s])

    def start(self, t0: float) -> bool:
        """Start the clock: change `i` applies from `t0 + changes[i].at_s` on. Only the first
        call counts; whether this one did."""
        if self.started_at is not None:
            return False
        if not math.isfinite(t0):
            raise ValueError(f"t0 must be finite, not {t0!r}")
        starts, rates, latencies = [-math.inf], [self.bandwidth_bps], [self.latency_s]
        latency = self.latency_s
        for change in self.changes:
            if change.latency_s is not None:
                latency = float(change.latency_s)
            starts.append(t0 + change.at_s)
            rates.append(0.0 if change.bandwidth_bps is None else float(change.bandwidth_bps))
            latencies.append(latency)
        self._segments = (starts, rates, latencies)
        self.started_at = t0
        return True

    def state(self, at: float) -> tuple[float | None, float]:
        """The bandwidth (None: down) and latency in force at `at`."""
        starts, rates, latencies = self._segments
        i = bisect.bisect_right(starts, at) - 1
        return (rates[i] or None), latencies[i]

    def send(self, start: float, bits: float) -> tuple[float, float]:
        """When `bits`, whose serialisation starts at `start`, have all been sent (at the rate
        in force at each instant, nothing while down; even no bits wait for the link to be up),
        and the latency in force then: `(inf, latency)` if never. O(log changes + changes
        crossed)."""
        starts, rates, latencies = self._segments
        last = len(starts) - 1
        i = max(0, bisect.bisect_right(starts, start) - 1)
        t = start
        while True:
            rate = rates[i]
            until = starts[i + 1] if i < last else math.inf
            if rate > 0:
                need = bits / rate
                if t + need <= until:
                    return t + need, latencies[i]
                bits = max(0.0, bits - rate * (until - t))
            elif i == last:
                return math.inf, latencies[i]
            t = until
            i += 1

    def changes_applied(self, now: float) -> int:
        """How many changes are in force or past at `now` (0 before the clock starts)."""
        return bisect.bisect_right(self._segments[0], now) - 1

    def down_s(self, now: float) -> float:
        """How long the link has been down, up to `now`."""
        starts, rates, _ = self._segments
        total = 0.0
        for i in range(1, len(starts)):
            if starts[i] >= now:
                break
            if rates[i] == 0:
                until = starts[i + 1] if i + 1 < len(starts) else math.inf
                total += min(until, now) - starts[i]
        return total

    def __repr__(self) -> str:
        return (f"Schedule(latency_s={self.latency_s!r}, bandwidth_bps={self.bandwidth_bps!r}, "
                f"changes={list(self.changes)!r})")


class Pacer:
    """One direction of one link: a FIFO serialiser of `bandwidth_bps` followed by `latency_s`
    of propagation, or, with a `schedule` (whose declared values must be the same), of the
    bandwidth and latency the schedule gives over time. Deterministic: the caller passes the
    time in; `arrival` advances `busy_until` and the counters, nothing else."""

    __slots__ = ("bandwidth_bps", "busy_until", "bytes", "latency_s", "messages", "schedule")

    def __init__(self, latency_s: float, bandwidth_bps: float,
                 schedule: Schedule | None = None) -> None:
        _check_link(latency_s, bandwidth_bps)
        self.latency_s = float(latency_s)
        self.bandwidth_bps = float(bandwidth_bps)
        if schedule is not None and (schedule.latency_s, schedule.bandwidth_bps) != (
                self.latency_s, self.bandwidth_bps):
            raise ValueError(f"{schedule!r} does not start from the pacer's own values")
        self.schedule = schedule
        self.busy_until = -math.inf
        self.bytes = 0
        self.messages = 0

    def serialisation_s(self, nbytes: int) -> float:
        """The time `nbytes` occupy this direction at the declared bandwidth."""
        return 8.0 * nbytes / self.bandwidth_bps

    def arrival(self, ready_at: float, nbytes: int) -> float:
        """When `nbytes`, ready to go at `ready_at`, have all arrived at the far end.
        Serialisation starts at max(ready_at, busy_until); the direction is busy until it ends;
        the bytes arrive `latency_s` later (with a schedule: the latency in force when it ends;
        `math.inf` if the schedule leaves the link down before it ends)."""
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, not {nbytes}")
        start = max(ready_at, self.busy_until)
        if self.schedule is None:
            end = start + self.serialisation_s(nbytes)
            latency = self.latency_s
        else:
            end, latency = self.schedule.send(start, 8.0 * nbytes)
        self.busy_until = end
        self.bytes += nbytes
        self.messages += 1
        return end + latency

    def __repr__(self) -> str:
        extra = "" if self.schedule is None else f", schedule={self.schedule!r}"
        return (f"Pacer(latency_s={self.latency_s!r}, bandwidth_bps={self.bandwidth_bps!r}"
                f"{extra})")


def route_arrival(route: Sequence[Pacer], ready_at: float, nbytes: int) -> float:
    """The arrival over a chain of pacers, store-and-forward (an empty route: `ready_at`).
    An item that never leaves a link (down for good) is not offered to the next."""
    at = ready_at
    for pacer in route:
        if at == math.inf:  # never gets this far: later links are not held up
            break
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
    `scheduled`, and delivered one at a time, in order, no sooner than their arrival (never, if
    it is infinite: a link down for good).

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
                    await asyncio.sleep(min(wait, MAX_SLEEP_S))
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
                await asyncio.sleep(min(delay, MAX_SLEEP_S))
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
        def protocol() -> _QuickAckProtocol:
            return _QuickAckProtocol(asyncio.StreamReader(), self._accept)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(protocol, self.listen[0], self.listen[1])

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
            treader, twriter = await _open_connection(*self.target)
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


# Linux's TCP_QUICKACK (elsewhere: None, and ACKs are left to the system)
_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


def _quickack(sock: Any) -> None:
    """Have `sock` acknowledge what it has received at once (an ACK the kernel was delaying
    goes out now) and leave delayed-ACK mode. Not permanent: the kernel may delay ACKs again
    after the socket sends, so this is set again after every read."""
    if _TCP_QUICKACK is None or sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)


class _QuickAckProtocol(asyncio.StreamReaderProtocol):
    """A stream protocol whose socket acknowledges every read at once.

    The proxy is the TCP peer of a mosquitto bridge, and mosquitto never disables Nagle's
    algorithm on a bridge's outgoing socket (`set_tcp_nodelay` covers accepted sockets only).
    Over TLS the bridge writes a message as records of at most 16 KiB, each a segment smaller
    than the loopback MSS, so Nagle holds every record after the first until the first is
    acknowledged. Once that socket has received full-sized segments and sent data back
    (PUBACKs, replies), Linux delays the ACK of a lone record, and the tail of the message
    reaches the proxy 20-40 ms late, before the link model even sees it. The emulated link, not the loopback's ACK timing, is
    to set when bytes arrive, so the proxy acknowledges everything as soon as it reads it.
    (asyncio already sets TCP_NODELAY on the proxy's own sockets.)"""

    _sock: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._sock = transport.get_extra_info("socket")
        _quickack(self._sock)
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        _quickack(self._sock)
        super().data_received(data)


async def _open_connection(host: str, port: int) -> tuple[asyncio.StreamReader,
                                                          asyncio.StreamWriter]:
    """`asyncio.open_connection` with a `_QuickAckProtocol`."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    protocol = _QuickAckProtocol(reader)
    transport, _ = await loop.create_connection(lambda: protocol, host, port)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


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
    schedule: tuple[Change, ...] = ()


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
        """One pacer per (link id, direction), to be shared by every route over it; both
        directions of a link with a schedule share one `Schedule` (not yet started)."""
        out: dict[Hop, Pacer] = {}
        for link in self.links:
            schedule = Schedule(link.latency_s, link.bandwidth_bps, link.schedule) \
                if link.schedule else None
            for d in ("ab", "ba"):
                out[(link.id, d)] = Pacer(link.latency_s, link.bandwidth_bps, schedule)
        return out


def schedules(pacers: dict[Hop, Pacer]) -> list[Schedule]:
    """The distinct schedules of `pacers` (one per link that has one)."""
    out: dict[int, Schedule] = {}
    for pacer in pacers.values():
        if pacer.schedule is not None:
            out.setdefault(id(pacer.schedule), pacer.schedule)
    return list(out.values())


def start_schedules(pacers: dict[Hop, Pacer], t0: float) -> None:
    """Start the clock of every schedule of `pacers` at `t0` (the event loop's clock) unless
    started already: what SIGUSR1 does."""
    for schedule in schedules(pacers):
        schedule.start(t0)


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


def _schedule(value: object, where: str) -> tuple[Change, ...]:
    changes: list[Change] = []
    for j, item in enumerate(_list(value, where)):
        at = f"{where}[{j}]"
        raw = _fields(item, at, ("at_s", "bandwidth_bps"), ("latency_s",))
        at_s = _number(raw["at_s"], f"{at}.at_s", positive=False)
        if changes and at_s <= changes[-1].at_s:
            raise ConfigError(f"{at}.at_s: must be greater than the previous at_s "
                              f"({changes[-1].at_s}), not {at_s}")
        bandwidth = raw["bandwidth_bps"]
        changes.append(Change(
            at_s,
            None if bandwidth is None else _number(bandwidth, f"{at}.bandwidth_bps",
                                                   positive=True),
            _number(raw["latency_s"], f"{at}.latency_s", positive=False)
            if "latency_s" in raw else None))
    return tuple(changes)


def parse_config(data: object) -> Config:
    """The configuration in `data` (parsed JSON), checked; `ConfigError` names what is wrong."""
    raw = _fields(data, "config", (), ("links", "proxies", "relays"))
    links: list[LinkSpec] = []
    for i, item in enumerate(_list(raw.get("links", []), "links")):
        where = f"links[{i}]"
        link = _fields(item, where, ("id", "latency_s", "bandwidth_bps"), ("schedule",))
        spec = LinkSpec(_text(link["id"], f"{where}.id"),
                        _number(link["latency_s"], f"{where}.latency_s", positive=False),
                        _number(link["bandwidth_bps"], f"{where}.bandwidth_bps", positive=True),
                        _schedule(link.get("schedule", []), f"{where}.schedule"))
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


def _start_on_sigusr1(pacers: dict[Hop, Pacer]) -> None:
    """Start the schedules' clock when SIGUSR1 comes. A plain handler, not the loop's: it is in
    place before the loop runs and stays after it ends (SIGUSR1's default ends the process).
    `Schedule.start` only swaps in one tuple, so it is safe at any point of the main thread."""
    def handler(signum: int, frame: object) -> None:
        start_schedules(pacers, time.monotonic())  # the event loop's clock
    signal.signal(signal.SIGUSR1, handler)


async def _serve(config: Config, stats_path: Path | None,
                 pacers: dict[Hop, Pacer] | None = None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if pacers is None:
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
            _write_stats(stats_path, pacers, proxies, relays, loop.time())
    return 0


def _write_stats(path: Path, pacers: dict[Hop, Pacer], proxies: Sequence[PacingProxy],
                 relays: Sequence[Relay], now: float) -> None:
    links: dict[str, dict[str, Any]] = {}
    for (link, direction), pacer in pacers.items():
        entry = links.setdefault(link, {})
        entry[direction] = {"bytes": pacer.bytes, "messages": pacer.messages}
        schedule = pacer.schedule
        entry["down_s"] = 0.0 if schedule is None else round(schedule.down_s(now), 6)
        entry["changes"] = 0 if schedule is None else schedule.changes_applied(now)
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
    pacers = config.pacers()
    _start_on_sigusr1(pacers)
    try:
        return asyncio.run(_serve(config, args.stats, pacers))
    except _ListenError as error:
        print(f"edgeflow links: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
