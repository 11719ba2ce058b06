"""Link emulation (edgeflow.runtime.links): the pacer model's properties, the pacing TCP proxy
and the MQTT relay between two real mosquitto brokers, each checked against the model: nothing
arrives sooner than latency + size / bandwidth after it was sent, and everything arrives in
order and intact. Run with `-s` to see the measured excess over the ideal arrival."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from edgeflow.runtime.links import (
    Pacer,
    PacingProxy,
    _Lane,
    mqtt_publish_size,
    parse_config,
    route_arrival,
)
from tests.conftest import ROOT

LATENCY = 0.020
BANDWIDTH = 10e6  # 10 Mbps
EPS = 1e-9

# --------------------------------------------------------------------------------------------
# the model

latencies = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
bandwidths = st.floats(min_value=1e3, max_value=1e10, allow_nan=False)
offers = st.lists(st.tuples(st.floats(min_value=0.0, max_value=10.0, allow_nan=False),
                            st.integers(min_value=0, max_value=10_000_000)),
                  min_size=1, max_size=40)


@given(latencies, bandwidths, offers)
def test_an_arrival_is_never_before_latency_plus_serialisation(
        latency: float, bandwidth: float, messages: list[tuple[float, int]]) -> None:
    pacer = Pacer(latency, bandwidth)
    for ready, n in messages:
        arrival = pacer.arrival(ready, n)
        assert arrival >= ready + latency + 8 * n / bandwidth - EPS * max(1.0, arrival)


@given(latencies, bandwidths, offers)
def test_arrivals_of_messages_offered_in_order_do_not_decrease(
        latency: float, bandwidth: float, messages: list[tuple[float, int]]) -> None:
    pacer = Pacer(latency, bandwidth)
    arrivals = [pacer.arrival(ready, n) for ready, n in sorted(messages)]
    assert arrivals == sorted(arrivals)


@given(st.lists(st.tuples(latencies, bandwidths), min_size=1, max_size=5), offers)
def test_a_chain_adds_every_latency_and_every_serialisation(
        hops: list[tuple[float, float]], messages: list[tuple[float, int]]) -> None:
    route = [Pacer(latency, bandwidth) for latency, bandwidth in hops]
    previous = -1.0
    for ready, n in sorted(messages):
        arrival = route_arrival(route, ready, n)
        ideal = ready + sum(lat + 8 * n / bw for lat, bw in hops)
        assert arrival >= ideal - EPS * max(1.0, arrival)
        assert arrival >= previous
        previous = arrival


@given(latencies, bandwidths, offers, offers, st.randoms(use_true_random=False))
def test_two_flows_sharing_a_pacer_never_overlap_serialisation(
        latency: float, bandwidth: float, flow_a: list[tuple[float, int]],
        flow_b: list[tuple[float, int]], rng: object) -> None:
    pacer = Pacer(latency, bandwidth)
    # the two flows' offers interleave in some order, each flow's own in order
    a, b = sorted(flow_a), sorted(flow_b)
    order = [0] * len(a) + [1] * len(b)
    rng.shuffle(order)  # type: ignore[attr-defined]
    windows: list[tuple[float, float]] = []
    for which in order:
        ready, n = (a if which == 0 else b).pop(0)
        end = pacer.arrival(ready, n) - latency
        if n:  # an empty message occupies no time
            windows.append((end - 8 * n / bandwidth, end))
    windows.sort()
    for (_, end), (start, _) in itertools.pairwise(windows):
        assert start >= end - EPS * max(1.0, end)


def test_a_pacer_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        Pacer(-1.0, 1e6)
    with pytest.raises(ValueError):
        Pacer(0.01, 0.0)
    with pytest.raises(ValueError):
        Pacer(0.01, 1e6).arrival(0.0, -1)


def test_the_mqtt_publish_size_counts_the_whole_packet() -> None:
    assert mqtt_publish_size("a/b", b"x" * 10, 0) == 1 + 1 + 2 + 3 + 10
    assert mqtt_publish_size("a/b", b"x" * 10, 1) == 1 + 1 + 2 + 3 + 2 + 10
    assert mqtt_publish_size("t", b"x" * 200, 0) == 1 + 2 + 2 + 1 + 200


async def test_a_relay_lane_over_its_bound_drops_the_oldest_and_keeps_order() -> None:
    delivered: list[int] = []

    async def deliver(item: int) -> None:
        delivered.append(item)

    lane: _Lane[int] = _Lane([Pacer(0.001, 8e5)], deliver, limit=10_000)  # 100 kB/s
    lane.start()
    for i in range(50):
        lane.offer(i, 1000)
    lane.close_input()
    await asyncio.wait_for(lane.finished(), 5)
    assert lane.dropped > 0 and lane.dropped + len(delivered) == 50
    assert delivered == sorted(delivered) and delivered[-1] == 49
    assert lane.held == 0


# --------------------------------------------------------------------------------------------
# the TCP proxy

HEADER = struct.Struct("!Id")  # frame length, the sender's time.monotonic()


def _frame(size: int, seq: int) -> bytes:
    body = bytes((seq + i) % 251 for i in range(size))
    return HEADER.pack(HEADER.size + size, time.monotonic()) + body


def _report(name: str, excess: list[float]) -> None:
    print(f"\n{name}: measured - ideal arrival over {len(excess)} messages: "
          f"mean {statistics.mean(excess) * 1e3:.2f} ms, max {max(excess) * 1e3:.2f} ms")


async def test_the_proxy_delivers_no_sooner_than_the_link_in_order_and_intact() -> None:
    received: list[tuple[float, float, bytes]] = []  # arrival, sent, frame
    got = asyncio.Event()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readexactly(HEADER.size)
            except asyncio.IncompleteReadError:
                break
            length, sent = HEADER.unpack(head)
            body = await reader.readexactly(length - HEADER.size)
            received.append((time.monotonic(), sent, head + body))
            got.set()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    target = server.sockets[0].getsockname()[:2]
    link = (Pacer(LATENCY, BANDWIDTH), Pacer(LATENCY, BANDWIDTH))
    proxy = PacingProxy(("127.0.0.1", 0), target, [link[0]], [link[1]])
    await proxy.start()
    _, writer = await asyncio.open_connection(*proxy.address)
    sent: list[bytes] = []
    try:
        # one at a time: each message finds the link idle, its ideal arrival is exact
        for seq, size in enumerate([10, 100, 1000, 10_000, 50_000, 200_000, 3000]):
            got.clear()
            frame = _frame(size, seq)
            sent.append(frame)
            writer.write(frame)
            await writer.drain()
            await asyncio.wait_for(got.wait(), 5)
        alone = len(sent)
        # a burst: queued behind each other, each still no sooner than its own ideal
        burst_start = time.monotonic()
        for seq, size in enumerate([500, 20_000, 10, 70_000, 1, 4096] * 3, start=alone):
            frame = _frame(size, seq)
            sent.append(frame)
            writer.write(frame)
        await writer.drain()
        while len(received) < len(sent):
            got.clear()
            await asyncio.wait_for(got.wait(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
        await proxy.close()
        server.close()
        await server.wait_closed()

    assert [frame for _, _, frame in received] == sent  # in order, intact
    excess = []
    for arrival, at, frame in received:
        ideal = at + LATENCY + 8 * len(frame) / BANDWIDTH
        assert arrival >= ideal, (len(frame), arrival - ideal)
        excess.append(arrival - ideal)
    # the burst cannot beat the link's rate either
    total = 0
    for arrival, _, frame in received[alone:]:
        total += len(frame)
        assert arrival >= burst_start + LATENCY + 8 * total / BANDWIDTH
    _report("proxy, one at a time", excess[:alone])
    assert statistics.mean(excess[:alone]) < 0.010  # the emulation is close, not just slow
    assert link[0].bytes == sum(map(len, sent)) and link[1].bytes == 0


async def test_the_proxy_paces_the_way_back_and_forwards_end_of_stream() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    target = server.sockets[0].getsockname()[:2]
    proxy = PacingProxy(("127.0.0.1", 0), target, [Pacer(LATENCY, BANDWIDTH)],
                        [Pacer(LATENCY, BANDWIDTH)])
    await proxy.start()
    try:
        reader, writer = await asyncio.open_connection(*proxy.address)
        payload = bytes(range(256)) * 200  # 51,200 bytes
        start = time.monotonic()
        writer.write(payload)
        writer.write_eof()
        echoed = await asyncio.wait_for(reader.read(), 5)  # to end of stream: EOF came back
        elapsed = time.monotonic() - start
        writer.close()
        await writer.wait_closed()
    finally:
        await proxy.close()
        server.close()
        await server.wait_closed()
    assert echoed == payload
    # the echo pipelines: its way back overlaps the way there, but each way's bytes are
    # serialised once and both latencies add up
    assert elapsed >= 2 * LATENCY + 8 * len(payload) / BANDWIDTH - 1e-6


# --------------------------------------------------------------------------------------------
# the process entry point

LINKS = [sys.executable, "-m", "edgeflow.runtime.links"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(config: dict[str, object], folder: Path) -> subprocess.Popen[str]:
    (folder / "links.json").write_text(json.dumps(config))
    proc = subprocess.Popen([*LINKS, "--config", str(folder / "links.json"),
                             "--stats", str(folder / "stats.json")], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == "ready\n", (line, proc.stderr.read() if proc.stderr else "")
    return proc


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    start = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=5)
    assert proc.returncode == 0, err
    assert time.monotonic() - start < 2.0


@pytest.mark.parametrize("config, message", [
    ("{", "not JSON"),
    ('{"links": [{"id": "l", "latency_s": -1, "bandwidth_bps": 1e6}]}', "latency_s"),
    (('{"links": [], "proxies": [{"listen": ["127.0.0.1", 1], "target": ["127.0.0.1", 2], '
      '"forward": [["nope", "ab"]], "backward": []}]}'), "unknown link 'nope'"),
    (('{"links": [{"id": "l", "latency_s": 0, "bandwidth_bps": 1e6}], "relays": [{"a": '
      '{"host": "h", "port": 1, "client_id": "c"}, "b": {"host": "h", "port": 1}, '
      '"out_topics": [], "in_topics": [], "forward": [], "backward": []}]}'), "client_id"),
    ('{"link": []}', "unknown field 'link'"),
])
def test_a_bad_configuration_is_one_line_and_status_2(folder: Path, config: str,
                                                       message: str) -> None:
    (folder / "links.json").write_text(config)
    done = subprocess.run([*LINKS, "--config", str(folder / "links.json")], cwd=ROOT,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    assert message in done.stderr


def test_the_process_listens_says_ready_and_stops_on_sigint(folder: Path) -> None:
    port = _free_port()
    config = {"links": [{"id": "l", "latency_s": 0.001, "bandwidth_bps": 1e9}],
              "proxies": [{"listen": ["127.0.0.1", port], "target": ["127.0.0.1", _free_port()],
                           "forward": [["l", "ab"]], "backward": [["l", "ba"]]}]}
    proc = _start(config, folder)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        assert s.recv(1) == b""  # nothing listens behind: the proxy closes the connection
    _stop(proc, signal.SIGINT)
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["proxies"][0]["failed_connections"] == 1


def test_a_configuration_is_parsed_into_shared_pacers() -> None:
    config = parse_config({"links": [{"id": "l", "latency_s": 0.01, "bandwidth_bps": 1e6}],
                           "relays": [{"a": {"host": "h", "port": 1, "client_id": "a"},
                                       "b": {"host": "h", "port": 2, "client_id": "b",
                                             "ca": None, "cert": None, "key": None},
                                       "out_topics": ["x/#"], "in_topics": ["y/+/z"],
                                       "forward": [["l", "ab"]], "backward": [["l", "ba"]]}]})
    assert set(config.pacers()) == {("l", "ab"), ("l", "ba")}
    assert config.relays[0].forward == (("l", "ab"),)


# --------------------------------------------------------------------------------------------
# the MQTT relay between two mosquitto brokers

needs_mosquitto = pytest.mark.skipif(
    shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists()
    and not os.environ.get("CI"), reason="mosquitto is not installed")


class Broker:
    def __init__(self, folder: Path) -> None:
        self.port = _free_port()
        folder.mkdir(mode=0o755)
        folder.chmod(0o755)
        conf = folder / "mosquitto.conf"
        # without it, a PUBLISH after a PUBACK the client has not yet ACKed waits 40 ms (Nagle)
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                        "set_tcp_nodelay true\n")
        conf.chmod(0o644)
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise AssertionError("mosquitto exited") from None
                time.sleep(0.02)
        raise AssertionError("mosquitto did not start listening")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=5)


def _no_delay(client: mqtt.Client, userdata: object, sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Client:
    """A paho client that records (arrival, topic, payload) of what it receives."""

    def __init__(self, port: int, name: str, topics: list[str]) -> None:
        self.received: list[tuple[float, str, bytes]] = []
        self.cond = threading.Condition()
        ready = threading.Event()
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=name,
                        protocol=mqtt.MQTTv311)

        def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
            with self.cond:
                self.received.append((time.monotonic(), msg.topic, bytes(msg.payload)))
                self.cond.notify_all()

        def on_subscribe(*args: object) -> None:
            ready.set()

        c.on_message = on_message
        c.on_subscribe = on_subscribe
        c.on_socket_open = _no_delay  # else a PUBLISH after a PUBACK can wait 40 ms (Nagle)
        c.connect("127.0.0.1", port)
        c.loop_start()
        c.subscribe([(t, 1) for t in topics] or [("nothing/at/all", 1)])
        assert ready.wait(5)
        self.client = c

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.received) >= count, timeout)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _payload(seq: int, size: int) -> bytes:
    head = struct.pack("!Id", seq, time.monotonic())
    return head + bytes(max(0, size - len(head)))


@needs_mosquitto
def test_the_relay_carries_topics_both_ways_no_sooner_than_the_link(folder: Path) -> None:
    a, b = Broker(folder / "a"), Broker(folder / "b")
    relay = None
    clients: list[Client] = []
    try:
        config = {
            "links": [{"id": "l", "latency_s": LATENCY, "bandwidth_bps": BANDWIDTH}],
            "relays": [{"a": {"host": "127.0.0.1", "port": a.port, "client_id": "relay-a",
                              "ca": None, "cert": None, "key": None},
                        "b": {"host": "127.0.0.1", "port": b.port, "client_id": "relay-b"},
                        "out_topics": ["app/out/#"], "in_topics": ["app/in/#"],
                        "forward": [["l", "ab"]], "backward": [["l", "ba"]]}]}
        relay = _start(config, folder)
        on_a, on_b = Client(a.port, "on-a", ["app/in/#"]), Client(b.port, "on-b", ["app/out/#"])
        clients += [on_a, on_b]
        # the relay connects in the background: probe until a message gets through
        deadline = time.monotonic() + 10
        while not on_b.received:
            assert time.monotonic() < deadline, "the relay never carried a message"
            on_a.publish("app/out/probe", b"probe")
            on_b.wait_for(1, 0.2)
        time.sleep(0.3)  # the probes have all arrived: the link is idle
        probes = len(on_b.received)

        def arrivals(src: Client, dst: Client, topic: str, sizes: list[int],
                     first: int, one_at_a_time: bool) -> list[float]:
            expected: list[bytes] = []
            for seq, size in enumerate(sizes):
                expected.append(_payload(seq, size))
                src.publish(topic, expected[-1])
                if one_at_a_time:
                    assert dst.wait_for(first + seq + 1)
            assert dst.wait_for(first + len(sizes), 10)
            got = dst.received[first:]
            assert [p for _, _, p in got] == expected  # in order, intact
            excess = []
            for arrival, t, payload in got:
                _, sent = struct.unpack_from("!Id", payload)
                ideal = sent + LATENCY + 8 * mqtt_publish_size(t, payload, 1) / BANDWIDTH
                assert arrival >= ideal, (len(payload), arrival - ideal)
                excess.append(arrival - ideal)
            return excess

        sizes = [16, 100, 1000, 10_000, 50_000, 200_000, 3000]
        alone = arrivals(on_a, on_b, "app/out/x", sizes, probes, True)
        _report("relay, one at a time", alone)
        assert statistics.mean(alone) < 0.010
        arrivals(on_a, on_b, "app/out/burst", [300, 20_000, 10] * 10, probes + len(sizes), False)
        back = arrivals(on_b, on_a, "app/in/y", sizes, 0, True)
        _report("relay, the way back", back)
        assert statistics.mean(back) < 0.010
        assert len(on_b.received) == probes + len(sizes) + 30  # nothing echoed, nothing lost
        _stop(relay)
        relay = None
        stats = json.loads((folder / "stats.json").read_text())
        assert stats["drops"] == 0
        assert stats["relays"][0]["forward"]["messages"] == probes + len(sizes) + 30
        assert stats["links"]["l"]["ba"]["messages"] == len(sizes)
    finally:
        for c in clients:
            c.close()
        if relay is not None:
            relay.kill()
            relay.communicate()
        a.stop()
        b.stop()


@needs_mosquitto
def test_mqtt_through_the_proxy_process_is_paced_on_the_way_back(folder: Path) -> None:
    """The bridged mode's shape: a client reaches a broker through the proxy; what the broker
    sends it crosses the link's `ba` direction."""
    broker = Broker(folder / "broker")
    port = _free_port()
    proc = None
    clients: list[Client] = []
    try:
        proc = _start({"links": [{"id": "l", "latency_s": LATENCY, "bandwidth_bps": BANDWIDTH}],
                       "proxies": [{"listen": ["127.0.0.1", port],
                                    "target": ["127.0.0.1", broker.port],
                                    "forward": [["l", "ab"]], "backward": [["l", "ba"]]}]},
                      folder)
        far = Client(port, "far", ["t/#"])  # through the proxy
        near = Client(broker.port, "near", [])
        clients += [far, near]
        time.sleep(0.1)  # the SUBACK's way back is over: the link is idle
        expected, excess = [], []
        for seq, size in enumerate([16, 1000, 30_000, 100_000]):
            expected.append(_payload(seq, size))
            near.publish("t/x", expected[-1])
            assert far.wait_for(seq + 1)
        assert [p for _, _, p in far.received] == expected
        for arrival, topic, payload in far.received:
            _, sent = struct.unpack_from("!Id", payload)
            ideal = sent + LATENCY + 8 * mqtt_publish_size(topic, payload, 1) / BANDWIDTH
            assert arrival >= ideal, (len(payload), arrival - ideal)
            excess.append(arrival - ideal)
        _report("MQTT through the proxy", excess)
        for c in clients:
            c.close()
        clients.clear()
        _stop(proc)
        proc = None
        stats = json.loads((folder / "stats.json").read_text())
        assert stats["proxies"][0]["connections"] == 1
        assert stats["links"]["l"]["ba"]["bytes"] >= sum(map(len, expected))
    finally:
        for c in clients:
            c.close()
        if proc is not None:
            proc.kill()
            proc.communicate()
        broker.stop()
