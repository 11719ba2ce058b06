"""Time-varying links (edgeflow.runtime.links schedules): `Pacer.arrival` under a schedule
against an independent integration of the piecewise-constant rate, the `schedule` field of
links.json, lanes and the proxy across an outage, and SIGUSR1 / the stats of the process."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeflow.runtime.links import (
    Change,
    ConfigError,
    Pacer,
    PacingProxy,
    Schedule,
    _Lane,
    parse_config,
    route_arrival,
    start_schedules,
)
from tests.conftest import ROOT

INF = math.inf

# --------------------------------------------------------------------------------------------
# an independent reference: the rate as a list of (from, bits/s, latency), integrated by
# summing every overlap and inverted by bisection

Timeline = list[tuple[float, float, float]]


def timeline(latency: float, bandwidth: float, changes: list[Change],
             t0: float | None) -> Timeline:
    out = [(-INF, bandwidth, latency)]
    if t0 is None:
        return out
    for change in changes:
        if change.latency_s is not None:
            latency = change.latency_s
        out.append((t0 + change.at_s, change.bandwidth_bps or 0.0, latency))
    return out


def _bounds(tl: Timeline, i: int) -> tuple[float, float]:
    return tl[i][0], tl[i + 1][0] if i + 1 < len(tl) else INF


def rate_at(tl: Timeline, t: float) -> float:
    if t == INF:
        return tl[-1][1]
    return next(rate for i, (_, rate, _) in enumerate(tl)
                if _bounds(tl, i)[0] <= t < _bounds(tl, i)[1])


def sent(tl: Timeline, a: float, b: float) -> float:
    """The bits sent in [a, b)."""
    total = 0.0
    for i, (_, rate, _) in enumerate(tl):
        lo, hi = _bounds(tl, i)
        if rate > 0 and min(b, hi) > max(a, lo):
            total += rate * (min(b, hi) - max(a, lo))
    return total


def finish(tl: Timeline, start: float, bits: float) -> float:
    """The first instant by which `bits` are sent from `start` (no bits: the first instant the
    link is up); inf if never."""
    if bits <= 0:
        points = [start] + [at for at, _, _ in tl if at > start]
        return next((t for t in points if rate_at(tl, t) > 0), INF)
    last_at, last_rate, _ = tl[-1]
    edge = max(start, last_at)
    if last_rate == 0:
        if sent(tl, start, edge) < bits:
            return INF
        hi = edge
    else:
        hi = edge + bits / last_rate
    lo = start
    for _ in range(300):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if sent(tl, start, mid) >= bits:
            hi = mid
        else:
            lo = mid
    return hi


def latencies_over(tl: Timeline, a: float, b: float) -> set[float]:
    return {lat for i, (_, _, lat) in enumerate(tl)
            if _bounds(tl, i)[0] <= b and _bounds(tl, i)[1] >= a}


# --------------------------------------------------------------------------------------------
# the model under a schedule

latencies = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
rates = st.floats(min_value=1e3, max_value=1e9, allow_nan=False)


@st.composite
def schedules(draw: st.DrawFn) -> tuple[float, float, list[Change], float | None]:
    latency, bandwidth = draw(latencies), draw(rates)
    gaps = draw(st.lists(st.floats(min_value=1e-3, max_value=5.0), max_size=8))
    at = draw(st.floats(min_value=0.0, max_value=3.0))
    changes = []
    for gap in gaps:
        changes.append(Change(at, draw(st.none() | rates), draw(st.none() | latencies)))
        at += gap
    t0 = draw(st.none() | st.floats(min_value=0.0, max_value=1e4))
    return latency, bandwidth, changes, t0


messages = st.lists(st.tuples(st.floats(min_value=-2.0, max_value=40.0),
                              st.integers(min_value=0, max_value=1_000_000)),
                    min_size=1, max_size=12)


def _scheduled(latency: float, bandwidth: float, changes: list[Change],
               t0: float | None) -> Pacer:
    schedule = Schedule(latency, bandwidth, changes)
    if t0 is not None:
        assert schedule.start(t0)
    return Pacer(latency, bandwidth, schedule)


@settings(max_examples=300)
@given(schedules(), messages)
def test_an_arrival_integrates_the_rate_in_force_and_adds_the_latency_at_the_last_bit(
        link: tuple[float, float, list[Change], float | None],
        offered: list[tuple[float, int]]) -> None:
    t0 = link[3]
    pacer = _scheduled(*link)
    tl = timeline(*link)
    base = t0 or 0.0
    fastest = max(rate for _, rate, _ in tl)
    for offset, n in offered:  # in any order: busy_until keeps them back to back
        ready = base + offset
        start = max(ready, pacer.busy_until)
        arrival = pacer.arrival(ready, n)
        end = pacer.busy_until
        bits = 8.0 * n
        slack = 1e-9 * bits + 1e-13 * fastest * (abs(base) + 100.0)
        lo, hi = finish(tl, start, bits - slack), finish(tl, start, bits + slack)
        tol = 1e-9 * (abs(base) + 100.0)
        if hi == INF and lo == INF:
            assert end == INF and arrival == INF
            continue
        assert lo - tol <= end <= hi + tol, (start, bits, lo, end, hi)
        if end == INF:  # only when the finish is within rounding of never
            continue
        assert any(abs(arrival - end - lat) <= tol for lat in
                   latencies_over(tl, lo - tol, hi + tol)), (arrival - end, tl)
        # nothing is sent while down: the last bit goes while the link is up
        if bits - slack > 0:
            assert any(rate > 0 for rate in (rate_at(tl, lo - tol), rate_at(tl, hi + tol),
                                              rate_at(tl, (lo + hi) / 2)))


@given(schedules(), messages)
def test_arrivals_never_come_sooner_than_at_the_fastest_rate_and_lowest_latency(
        link: tuple[float, float, list[Change], float | None],
        offered: list[tuple[float, int]]) -> None:
    pacer = _scheduled(*link)
    tl = timeline(*link)
    fastest, lowest = max(r for _, r, _ in tl), min(lat for _, _, lat in tl)
    base = link[3] or 0.0
    previous_end = -INF
    for offset, n in sorted(offered):
        arrival = pacer.arrival(base + offset, n)
        assert pacer.busy_until >= previous_end
        previous_end = pacer.busy_until
        ideal = base + offset + 8 * n / fastest + lowest
        assert arrival >= ideal - 1e-9 * (abs(ideal) + 1)


@given(latencies, rates, messages,
       st.lists(st.floats(min_value=0.0, max_value=30.0), max_size=5, unique=True),
       st.floats(min_value=0.0, max_value=1e4))
def test_without_a_schedule_or_before_its_clock_starts_the_old_formula_holds(
        latency: float, bandwidth: float, offered: list[tuple[float, int]],
        times: list[float], t0: float) -> None:
    plain = Pacer(latency, bandwidth)
    # changes that all restate the declared values, and a clock that never starts
    same = [Change(at, bandwidth, latency) for at in sorted(times)]
    unstarted = Pacer(latency, bandwidth, Schedule(latency, bandwidth, same))
    restated = _scheduled(latency, bandwidth, same, t0)
    empty = _scheduled(latency, bandwidth, [], t0)
    busy = -INF
    for offset, n in offered:
        ready = t0 + offset
        busy = max(ready, busy) + 8.0 * n / bandwidth
        expected = busy + latency
        assert plain.arrival(ready, n) == expected
        assert unstarted.arrival(ready, n) == expected
        assert empty.arrival(ready, n) == expected
        assert restated.arrival(ready, n) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_an_outage_holds_the_rest_of_a_message_and_the_latency_is_the_one_at_its_last_bit() -> None:
    # 1000 bytes/s; down from 1 s to 3 s; 0.5 s of latency from 3.5 s on
    schedule = Schedule(0.1, 8000.0, [Change(1.0, None), Change(3.0, 8000.0),
                                      Change(3.5, 8000.0, 0.5)])
    schedule.start(100.0)
    pacer = Pacer(0.1, 8000.0, schedule)
    assert pacer.arrival(100.0, 500) == pytest.approx(100.6)  # before the outage
    assert pacer.arrival(100.0, 1000) == pytest.approx(103.5 + 0.1)  # 500 bytes, outage, 500
    assert pacer.arrival(103.6, 1000) == pytest.approx(104.6 + 0.5)  # the new latency
    assert pacer.arrival(101.5, 0) == pytest.approx(104.6 + 0.5)  # busy: queued behind
    idle = Pacer(0.1, 8000.0, schedule)  # the other direction: same schedule, own queue
    assert idle.arrival(101.5, 0) == pytest.approx(103.0 + 0.1)  # even nothing waits for up
    assert idle.arrival(102.0, 8) == pytest.approx(103.008 + 0.1)


def test_a_link_down_for_good_delivers_nothing_more_and_holds_up_no_later_link() -> None:
    schedule = Schedule(0.01, 8e6, [Change(2.0, None)])
    schedule.start(0.0)
    first, second = Pacer(0.01, 8e6, schedule), Pacer(0.01, 8e6)
    assert route_arrival([first, second], 0.0, 1000) == pytest.approx(0.001 + 0.01 + 0.001 + 0.01)
    assert route_arrival([first, second], 1.999, 10_000) == INF
    assert first.busy_until == INF and route_arrival([first, second], 5.0, 1) == INF
    assert second.messages == 1 and second.busy_until == pytest.approx(0.012)


def test_a_schedule_starts_once_and_reports_its_state_changes_and_time_down() -> None:
    schedule = Schedule(0.01, 1e6, [Change(1.0, None, 0.2), Change(3.0, 2e6),
                                    Change(4.0, None), Change(6.0, 5e6, 0.0)])
    assert schedule.state(1e9) == (1e6, 0.01)  # not started: the declared values
    assert schedule.changes_applied(1e9) == 0 and schedule.down_s(1e9) == 0.0
    assert schedule.start(10.0) and not schedule.start(20.0)
    assert schedule.started_at == 10.0
    assert schedule.state(10.5) == (1e6, 0.01)
    assert schedule.state(11.0) == (None, 0.2)
    assert schedule.state(13.5) == (2e6, 0.2)
    assert schedule.state(17.0) == (5e6, 0.0)
    assert [schedule.changes_applied(t) for t in (10.9, 11.0, 13.5, 14.0, 99.0)] == [0, 1, 2, 3, 4]
    assert schedule.down_s(12.0) == pytest.approx(1.0)
    assert schedule.down_s(15.0) == pytest.approx(3.0)
    assert schedule.down_s(99.0) == pytest.approx(4.0)


def test_a_schedule_refuses_nonsense() -> None:
    for changes in ([Change(1.0, 1e6), Change(1.0, 2e6)], [Change(-1.0, 1e6)],
                    [Change(0.0, 0.0)], [Change(0.0, 1e6, -0.1)], [Change(INF, 1e6)]):
        with pytest.raises(ValueError):
            Schedule(0.01, 1e6, changes)
    with pytest.raises(ValueError):
        Pacer(0.02, 1e6, Schedule(0.01, 1e6))  # not the pacer's own values
    with pytest.raises(ValueError):
        Schedule(0.01, 1e6).start(INF)


# --------------------------------------------------------------------------------------------
# links.json

GOOD = [{"at_s": 0, "bandwidth_bps": 2e8}, {"at_s": 5, "bandwidth_bps": 2e7, "latency_s": 0.05},
        {"at_s": 10, "bandwidth_bps": None}, {"at_s": 15.5, "bandwidth_bps": 1e9}]


def _links(schedule: object) -> dict[str, object]:
    return {"links": [{"id": "k", "latency_s": 0.001, "bandwidth_bps": 1e9},
                      {"id": "l", "latency_s": 0.01, "bandwidth_bps": 1e8,
                       "schedule": schedule}]}


def test_a_schedule_is_parsed_and_shared_by_both_directions() -> None:
    config = parse_config(_links(GOOD))
    assert config.links[0].schedule == ()
    assert config.links[1].schedule == (Change(0.0, 2e8), Change(5.0, 2e7, 0.05),
                                         Change(10.0, None), Change(15.5, 1e9))
    pacers = config.pacers()
    assert pacers[("k", "ab")].schedule is None
    shared = pacers[("l", "ab")].schedule
    assert shared is not None and pacers[("l", "ba")].schedule is shared
    start_schedules(pacers, 50.0)
    assert shared.started_at == 50.0 and shared.state(61.0) == (None, 0.05)
    assert parse_config(_links([])).links[1].schedule == ()


@pytest.mark.parametrize("schedule, message", [
    ({"at_s": 0}, "links[1].schedule: expected a list"),
    ([{"at_s": 1, "bandwidth_bps": 1e6}, {"at_s": 1, "bandwidth_bps": 2e6}],
     "links[1].schedule[1].at_s: must be greater than the previous at_s (1.0), not 1.0"),
    ([{"at_s": 2, "bandwidth_bps": 1e6}, {"at_s": 1, "bandwidth_bps": 2e6}],
     "links[1].schedule[1].at_s: must be greater"),
    ([{"at_s": -1, "bandwidth_bps": 1e6}], "links[1].schedule[0].at_s: must be >= 0"),
    ([{"at_s": 0, "bandwidth_bps": 1e6}, {"at_s": 1, "bandwidth_bps": 1e6, "latency": 0.1}],
     "links[1].schedule[1]: unknown field 'latency'"),
    ([{"at_s": 0, "bandwidth_bps": 0}], "links[1].schedule[0].bandwidth_bps: must be > 0"),
    ([{"at_s": 0, "bandwidth_bps": -5}], "links[1].schedule[0].bandwidth_bps: must be > 0"),
    ([{"at_s": 0}], "links[1].schedule[0]: missing field 'bandwidth_bps'"),
    ([{"bandwidth_bps": None}], "links[1].schedule[0]: missing field 'at_s'"),
    ([{"at_s": 0, "bandwidth_bps": "fast"}], "links[1].schedule[0].bandwidth_bps: expected a"),
    ([{"at_s": True, "bandwidth_bps": 1e6}], "links[1].schedule[0].at_s: expected a number"),
    ([{"at_s": 0, "bandwidth_bps": 1e6, "latency_s": -0.5}],
     "links[1].schedule[0].latency_s: must be >= 0"),
    ([{"at_s": 0, "bandwidth_bps": 1e6, "latency_s": None}],
     "links[1].schedule[0].latency_s: expected a number"),
    (["down"], "links[1].schedule[0]: expected an object"),
])
def test_a_bad_schedule_is_refused_naming_the_field(schedule: object, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(_links(schedule))
    assert message in str(error.value)


# --------------------------------------------------------------------------------------------
# lanes and the proxy across an outage

ITEM = 15_000  # bytes: 15 ms at 8 Mbps


async def test_a_lane_delivers_in_order_and_nothing_while_the_link_is_down() -> None:
    loop = asyncio.get_running_loop()
    delivered: list[tuple[float, int]] = []

    async def deliver(item: int) -> None:
        delivered.append((loop.time(), item))

    t0 = loop.time()
    schedule = Schedule(0.005, 8e6, [Change(0.1, None), Change(0.4, 8e6, 0.02)])
    schedule.start(t0)
    lane: _Lane[int] = _Lane([Pacer(0.005, 8e6, schedule)], deliver, limit=10**6)
    lane.start()
    for i in range(10):
        lane.offer(i, ITEM, t0)
    lane.close_input()
    await asyncio.wait_for(lane.finished(), 2)
    assert [item for _, item in delivered] == list(range(10))
    # six fit before the outage; the seventh is cut by it, resumes at 0.4 s and ends at 0.405
    ends = [0.015 * (k + 1) for k in range(6)] + [0.405 + 0.015 * k for k in range(4)]
    expected = [end + (0.005 if end < 0.1 else 0.02) for end in ends]
    for (at, _), ideal in zip(delivered, expected, strict=True):
        assert ideal - 1e-9 <= at - t0 < ideal + 0.05
    assert not any(0.1 + 0.005 < at - t0 < 0.4 for at, _ in delivered)


async def test_a_lane_over_a_link_down_for_good_holds_drops_the_oldest_and_stays_alive() -> None:
    loop = asyncio.get_running_loop()
    delivered: list[int] = []

    async def deliver(item: int) -> None:
        delivered.append(item)

    t0 = loop.time()
    schedule = Schedule(0.001, 8e6, [Change(0.05, None)])
    schedule.start(t0)
    pacer = Pacer(0.001, 8e6, schedule)
    lane: _Lane[int] = _Lane([pacer], deliver, limit=5 * ITEM)
    lane.start()
    lane.offer(0, ITEM)
    await asyncio.sleep(0.1)  # delivered before the link went down
    for i in range(1, 21):
        lane.offer(i, ITEM)
    await asyncio.sleep(0.3)  # sleeps far longer than any finite arrival, and wakes
    assert delivered == [0]
    assert pacer.busy_until == INF and not lane.delivering.done()
    assert lane.held <= lane.limit and lane.dropped == 20 - 5
    lane.cancel()


async def test_a_stream_lane_back_pressures_while_down_and_resumes_when_back() -> None:
    loop = asyncio.get_running_loop()
    delivered: list[float] = []

    async def deliver(item: bytes) -> None:
        delivered.append(loop.time())

    t0 = loop.time()
    schedule = Schedule(0.001, 8e6, [Change(0.0, None), Change(0.3, 8e6)])
    schedule.start(t0)
    lane: _Lane[bytes] = _Lane([Pacer(0.001, 8e6, schedule)], deliver, limit=2 * ITEM)
    lane.start()
    await lane.put(b"a" * ITEM, ITEM)
    await lane.put(b"b" * ITEM, ITEM)
    assert loop.time() - t0 < 0.1  # within the buffer: no wait
    await asyncio.wait_for(lane.put(b"c" * ITEM, ITEM), 2)  # over it: waits for the link
    assert loop.time() - t0 >= 0.3
    lane.close_input()
    await asyncio.wait_for(lane.finished(), 2)
    assert len(delivered) == 3 and all(at - t0 >= 0.3 for at in delivered)


async def test_the_proxy_keeps_a_connection_through_an_outage_and_delivers_after_it() -> None:
    loop = asyncio.get_running_loop()
    received: list[tuple[float, bytes]] = []
    got = asyncio.Event()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.append((loop.time(), data))
            got.set()
        writer.close()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    target = server.sockets[0].getsockname()[:2]
    schedule = Schedule(0.002, 8e6, [Change(0.05, None), Change(0.35, 8e6)])
    proxy = PacingProxy(("127.0.0.1", 0), target, [Pacer(0.002, 8e6, schedule)],
                        [Pacer(0.002, 8e6, schedule)])
    await proxy.start()
    try:
        _, writer = await asyncio.open_connection(*proxy.address)
        schedule.start(loop.time())
        t0 = loop.time()
        writer.write(b"early")
        await asyncio.wait_for(got.wait(), 1)
        assert received[0][0] - t0 < 0.05
        await asyncio.sleep(0.1 - (loop.time() - t0))  # the link is down now
        got.clear()
        payload = bytes(range(256)) * 40
        writer.write(payload)
        await asyncio.wait_for(got.wait(), 2)
        while sum(len(d) for _, d in received[1:]) < len(payload):
            got.clear()
            await asyncio.wait_for(got.wait(), 2)
        assert b"".join(d for _, d in received) == b"early" + payload
        assert all(at - t0 >= 0.35 + 0.002 for at, _ in received[1:])
        assert received[-1][0] - t0 < 0.35 + 0.2
        writer.close()
        await writer.wait_closed()
    finally:
        await proxy.close()
        server.close()
        await server.wait_closed()
    assert proxy.connections == 1


# --------------------------------------------------------------------------------------------
# the process: SIGUSR1 starts the clock; the stats count the time down and the changes

LINKS = [sys.executable, "-m", "edgeflow.runtime.links"]


def _run(folder: Path, signal_usr1: bool) -> dict[str, dict[str, object]]:
    config = {"links": [
        {"id": "k", "latency_s": 0.001, "bandwidth_bps": 1e9},
        {"id": "l", "latency_s": 0.001, "bandwidth_bps": 1e9,
         "schedule": [{"at_s": 0.0, "bandwidth_bps": None},
                      {"at_s": 0.2, "bandwidth_bps": 1e6, "latency_s": 0.01}]}]}
    (folder / "links.json").write_text(json.dumps(config))
    proc = subprocess.Popen([*LINKS, "--config", str(folder / "links.json"),
                             "--stats", str(folder / "stats.json")], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        if signal_usr1:
            proc.send_signal(signal.SIGUSR1)
            time.sleep(0.05)
            proc.send_signal(signal.SIGUSR1)  # a second one is ignored
        time.sleep(0.4)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    links: dict[str, dict[str, object]] = json.loads((folder / "stats.json").read_text())["links"]
    return links


def test_sigusr1_starts_the_schedule_and_the_stats_count_time_down_and_changes(
        folder: Path) -> None:
    links = _run(folder, signal_usr1=True)
    assert links["k"]["down_s"] == 0.0 and links["k"]["changes"] == 0
    assert links["l"]["changes"] == 2
    assert links["l"]["down_s"] == pytest.approx(0.2, abs=1e-6)
    assert links["l"]["ab"] == {"bytes": 0, "messages": 0}


def test_without_sigusr1_the_declared_values_hold(folder: Path) -> None:
    links = _run(folder, signal_usr1=False)
    assert links["l"]["changes"] == 0 and links["l"]["down_s"] == 0.0
