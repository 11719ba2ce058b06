"""The pacing proxy adds the link's delay and nothing like a delayed ACK on top of it.

A mosquitto bridge's outgoing socket keeps Nagle's algorithm (`set_tcp_nodelay` covers accepted
sockets only) and, over TLS, writes a message as records of at most 16 KiB, each smaller than
the loopback MSS: Nagle holds every record after the first until the proxy acknowledges the
first. Once the proxy's socket has seen full-sized segments (a 300 KB message) and has sent
data back (replies), Linux delays that ACK by 20-40 ms, and a 100 KB message arrived that much
late. The client here behaves like that bridge, without mosquitto: Nagle on, 16 KiB writes."""

from __future__ import annotations

import asyncio
import socket
import statistics
import threading
import time
from collections.abc import Iterator

import pytest

from edgeflow.runtime.links import Pacer, PacingProxy

LATENCY = 0.0005
BANDWIDTH = 1e9  # 1 Gbps
RECORD = 16 * 1024  # a TLS record's plaintext
SIZES = (307_200, 102_400)  # per period: a 300 KB message, then a 100 KB one
GAP_S = 0.011  # between the two
REPLY = 8_400  # the far end answers each period: the proxy sends on the client's socket too
PERIOD_S = 1 / 30
ROUNDS = 50
# a stall caused by a delayed ACK is 20-40 ms; a loaded machine may add a few milliseconds
MARGIN_S = 0.010

pytestmark = pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"),
                                reason="Linux's delayed-ACK behaviour")


def _recv_exactly(sock: socket.socket, n: int) -> None:
    while n > 0:
        data = sock.recv(min(n, 1 << 16))
        if not data:
            raise EOFError("the connection closed")
        n -= len(data)


@pytest.fixture
def proxy_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in its own thread, as the proxy's process would."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_a_nagle_sender_is_not_held_by_the_proxys_delayed_acks(
        proxy_loop: asyncio.AbstractEventLoop) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    target = listener.getsockname()[:2]
    proxy = PacingProxy(("127.0.0.1", 0), target, [Pacer(LATENCY, BANDWIDTH)],
                        [Pacer(LATENCY, BANDWIDTH)])
    asyncio.run_coroutine_threadsafe(proxy.start(), proxy_loop).result(5)
    client = socket.create_connection(proxy.address, timeout=10)
    server, _ = listener.accept()
    server.settimeout(10)
    # the bridge's side: Nagle on; the broker's side (an accepted socket): Nagle off
    assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
    server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    received: list[float] = []
    errors: list[Exception] = []

    def far_end() -> None:
        try:
            for _ in range(ROUNDS):
                for size in SIZES:
                    _recv_exactly(server, size)
                    received.append(time.monotonic())
                server.sendall(b"r" * REPLY)
        except (OSError, EOFError) as error:  # reported by the test below
            errors.append(error)

    reader = threading.Thread(target=far_end, daemon=True)
    reader.start()
    sent: list[float] = []
    payloads = {size: bytes(size) for size in SIZES}
    try:
        next_round = time.monotonic()
        for _ in range(ROUNDS):
            for size in SIZES:
                sent.append(time.monotonic())
                payload = payloads[size]
                for offset in range(0, size, RECORD):  # one write per record, like TLS
                    client.sendall(payload[offset:offset + RECORD])
                time.sleep(GAP_S)
            _recv_exactly(client, REPLY)
            next_round += PERIOD_S
            time.sleep(max(0.0, next_round - time.monotonic()))
        reader.join(10)
    finally:
        client.close()
        server.close()
        listener.close()
        asyncio.run_coroutine_threadsafe(proxy.close(), proxy_loop).result(5)
    assert not errors, errors
    assert len(received) == len(sent) == ROUNDS * len(SIZES)

    for i, size in enumerate(SIZES):
        ideal = LATENCY + 8 * size / BANDWIDTH
        delays = [r - s for r, s in zip(received[i::len(SIZES)], sent[i::len(SIZES)],
                                        strict=True)]
        # a lower bound: never sooner than the link allows
        assert min(delays) >= ideal - 1e-6, (size, min(delays), ideal)
        # and not a delayed ACK later: most messages within a few milliseconds of the ideal
        p90 = statistics.quantiles(delays, n=10)[-1]
        assert p90 <= ideal + MARGIN_S, (
            f"{size} B: 90th percentile {p90 * 1e3:.2f} ms, ideal {ideal * 1e3:.2f} ms "
            f"(median {statistics.median(delays) * 1e3:.2f} ms)")
