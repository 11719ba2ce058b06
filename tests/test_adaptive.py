"""The head's choice of cut and the tail's bandwidth estimate (edgeflow/runtime/adaptive.py),
driven by the time the test passes in: switching after the hold time, no flapping under jitter
that the margin covers (and flapping without hysteresis, so the test can fail), trial frames,
and outages."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeflow.runtime.adaptive import BandwidthEstimator, Controller
from edgeflow.unit_config import AdaptBandSpec, AdaptCutSpec, AdaptSpec

SHA = "0" * 64
# the reference app's detector on a 0.1 TFLOPS gateway and a 20 TFLOPS server, 0.5 ms apart
SPLIT = AdaptCutSpec(id="85fa5261e1", cut=["conv_21"], file="h1", sha256=SHA,
                     transfer_bytes=102400, head_s=0.000519, tail_s=0.0000285, whole=False)
WHOLE = AdaptCutSpec(id="af200873a2", cut=["detections"], file="h2", sha256=SHA,
                     transfer_bytes=8400, head_s=0.00622, tail_s=0.0, whole=True)
CROSS = 132.6e6
SPLIT_WINS = 8 * (102400 + 8400) / (0.00622 - 0.000519 - 0.0000285 - 2 * 0.0005)  # bit/s


def test_a_prediction_counts_the_way_back_and_measured_compute() -> None:
    c = Controller(spec(), started=0.0)
    assert c.predicted_s(SPLIT.id, SPLIT_WINS) == pytest.approx(c.predicted_s(WHOLE.id, 1e9))
    c.feedback(0.0, 500e6, 1, {SPLIT.id: 0.005})  # the tail takes 5 ms here, not 0.03
    assert c.predicted_s(SPLIT.id, 500e6) == pytest.approx(
        0.000519 + 0.005 + 2 * 0.0005 + 8 * (102400 + 8400) / 500e6)
    c.ran(WHOLE.id, 0.010)
    assert c.predicted_s(WHOLE.id, 1e9) == pytest.approx(0.010)


def spec(margin: float = 0.1, hold_s: float = 1.0, bypass: bool = True,
         on_disconnect: str | None = "local") -> AdaptSpec:
    return AdaptSpec(
        cuts=[SPLIT, WHOLE],
        bands=[AdaptBandSpec(from_bps=20e6, to_bps=CROSS, cut=WHOLE.id),
               AdaptBandSpec(from_bps=CROSS, to_bps=1e9, cut=SPLIT.id)],
        start=SPLIT.id, latency_s=0.0005, margin=margin, hold_s=hold_s,
        feedback="f", feedback_interval_s=0.2, outage_after_s=1.0,
        on_disconnect=on_disconnect,  # type: ignore[arg-type]
        fallback=WHOLE.id if on_disconnect == "local" else None,
        bypass=["out"] if bypass else [])


def drive(c: Controller, estimates: list[float], rate_hz: float = 30.0,
          start: float = 0.0) -> list[str]:
    """One frame per 1 / rate_hz, each preceded by feedback carrying the next estimate."""
    cuts = []
    for i, bw in enumerate(estimates):
        now = start + i / rate_hz
        c.feedback(now, bw, c.samples + 1)
        cuts.append(c.choose(now).cut)
    return cuts


def test_a_step_down_switches_after_the_hold_time_not_before() -> None:
    c = Controller(spec(hold_s=1.0), started=0.0)
    estimates = [200e6] * 90 + [20e6] * 90   # 3 s at 200 Mbps, then 3 s at 20 Mbps
    cuts = drive(c, estimates)
    assert cuts[:90] == [SPLIT.id] * 90
    (switch,) = c.switches
    assert switch.before == SPLIT.id and switch.after == WHOLE.id
    # the first frame at 20 Mbps is at 3.0 s: the switch waits out the hold, then happens
    assert 3.0 + 1.0 - 1e-9 <= switch.at < 3.0 + 1.0 + 1 / 30 + 1e-9
    first_local = cuts.index(WHOLE.id)
    assert all(cut == WHOLE.id for cut in cuts[first_local:]) or c.last_trial > 0


def test_the_table_is_what_split_sweep_gives_at_each_estimate() -> None:
    c = Controller(spec(), started=0.0)
    assert c.table_cut(5e6) == WHOLE.id and c.table_cut(100e6) == WHOLE.id
    assert c.table_cut(CROSS * 1.01) == SPLIT.id and c.table_cut(5e9) == SPLIT.id


@given(bw=st.floats(1e6, 1e10))
def test_with_the_plans_timings_the_head_picks_what_the_table_gives(bw: float) -> None:
    """No output coming back over the link and no measurement: the prediction is the sweep's
    own timing, so the fastest predicted cut is the table's (up to a tie at a band's edge)."""
    c = Controller(spec(bypass=False, on_disconnect=None), started=0.0)
    if abs(bw - CROSS) > 1e5:  # (CROSS is the table's edge to 4 digits)
        assert c.target(bw) == c.table_cut(bw)


def test_measured_compute_overrides_the_table() -> None:
    """Where the tail is slower than its declared device (here 5 ms, not 0.03), running whole
    at the edge wins at a bandwidth where the table says split."""
    c = Controller(spec(), started=0.0)
    assert c.table_cut(300e6) == SPLIT.id and c.target(300e6) == SPLIT.id
    c.feedback(0.0, 300e6, 1, {SPLIT.id: 0.005})
    assert c.target(300e6) == WHOLE.id


def _best(c: Controller, bw: float) -> float:
    return min(c.predicted_s(cut, bw) for cut in c.cuts)


@settings(max_examples=200, deadline=None)
@given(bw=st.floats(20e6, 1e9), jitter=st.floats(0.0, 0.6),
       seed=st.integers(0, 2**32 - 1), margin=st.sampled_from([0.1, 0.2, 0.3]))
def test_no_flapping_on_a_stable_link_when_the_margin_covers_the_jitter(
        bw: float, jitter: float, seed: int, margin: float) -> None:
    """Estimates jitter by up to a factor `1 ± jitter` around a stable bandwidth. Started on the
    cut that is best at it, the head never switches when no estimate in that range makes
    another cut better by more than the margin (checked by brute force over the range)."""
    import random

    rng = random.Random(seed)
    c0 = Controller(spec(margin=margin), started=0.0)
    best = min(c0.cuts, key=lambda cut: c0.predicted_s(cut, bw))
    grid = [bw * (1 - jitter + 2 * jitter * k / 200) for k in range(201)]
    grid = [g for g in grid if g > 0]
    covered = all(c0.predicted_s(best, g) - _best(c0, g) <= margin * c0.predicted_s(best, g)
                  for g in grid)
    if not covered:
        return
    c = Controller(spec(margin=margin), started=0.0, current=best)
    estimates = [bw * (1 - jitter + 2 * jitter * rng.random()) for _ in range(300)]
    drive(c, [max(e, 1.0) for e in estimates])
    assert c.switches == []


def test_without_hysteresis_the_same_jitter_flaps() -> None:
    """Around the crossover, estimates ±25 % switch the cut back and forth with no margin and
    no hold, and never with the reference app's margin and hold (so the test above can fail).
    Running whole, the head sends the output itself; split, the output comes back over the
    link: the split wins above 190 Mbps. The estimates straddle both that and the table's
    132.6 Mbps."""
    import random

    rng = random.Random(7)
    estimates = [160e6 * (0.75 + 0.5 * rng.random()) for _ in range(300)]
    loose = Controller(spec(margin=0.0, hold_s=0.0), started=0.0)
    drive(loose, estimates)
    assert len(loose.switches) > 10
    damped = Controller(spec(margin=0.1, hold_s=1.0), started=0.0)
    drive(damped, estimates)
    assert damped.switches == []


def test_running_whole_the_head_sends_trial_frames_ever_rarer() -> None:
    """A trial after a hold time, then each one that does not bring the split back twice as
    late, at most TRIAL_BACKOFF hold times apart."""
    from edgeflow.runtime.adaptive import TRIAL_BACKOFF

    c = Controller(spec(hold_s=1.0), started=0.0, current=WHOLE.id)
    choices = []
    for i in range(30 * 40):  # 40 s at 30 Hz, the estimate low: it stays whole
        now = i / 30
        c.feedback(now, 30e6, c.samples + 1)
        choices.append(c.choose(now))
    trials = [i / 30 for i, ch in enumerate(choices) if ch.trial]
    assert [ch.cut for ch in choices if ch.trial] == [SPLIT.id] * len(trials)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(trials)]
    assert gaps[:4] == [1.0, 2.0, 4.0, 8.0] and set(gaps[3:]) == {TRIAL_BACKOFF * 1.0}
    assert all(ch.local for ch in choices if not ch.trial)
    assert c.switches == []


def test_a_trial_that_shows_a_fast_link_brings_the_split_back() -> None:
    c = Controller(spec(hold_s=1.0), started=0.0, current=WHOLE.id)
    cuts = drive(c, [500e6] * 120)   # the link is fast again
    assert c.switches and c.switches[0].after == SPLIT.id
    assert c.switches[0].at >= 1.0 - 1e-9
    assert cuts[-1] == SPLIT.id


@pytest.mark.parametrize("policy", ["local", "buffer", "drop", None])
def test_an_outage_applies_the_policy_until_feedback_returns(policy: str | None) -> None:
    c = Controller(spec(on_disconnect=policy), started=0.0)
    c.feedback(0.0, 500e6, 1)
    assert c.choose(0.5).action is None
    down = c.choose(1.2)  # no feedback for more than outage_after_s
    assert down.action == policy
    if policy == "local":
        assert down.cut == WHOLE.id and down.local
    else:
        assert down.cut == SPLIT.id
    assert c.outages == [(1.2, None)]
    c.feedback(2.0, 500e6, 2)
    back = c.choose(2.01)
    assert back.action is None and back.cut == SPLIT.id
    assert c.outages == [(1.2, 2.0)]


def test_the_estimate_subtracts_the_latency_and_weighs_messages_by_their_time() -> None:
    e = BandwidthEstimator(latency_s=0.005)
    for i in range(10):  # 100 kB in 8 ms beyond 5 ms latency: 100 Mbps
        e.sample(100_000, 0.013, i * 0.03)
    assert e.bps == pytest.approx(100e6)
    e.sample(100_000, 0.805, 0.31)  # one message delayed by 0.8 s: its share of the time
    assert e.bps == pytest.approx(8 * 100_000 * 11 / (10 * 0.008 + 0.8))
    for i in range(200):  # 3 s later, only the last 2 s of messages count
        e.sample(100_000, 0.013, 4.0 + i * 0.03)
    assert e.bps == pytest.approx(100e6)
    e.sample(100_000, 0.0058, 30.0)  # a lone trial frame, long after: the link as it is now
    assert e.bps == pytest.approx(1e9)


def test_a_message_that_took_no_time_does_not_claim_infinite_bandwidth() -> None:
    e = BandwidthEstimator(latency_s=0.01)
    e.sample(1000, 0.001, 0.0)
    bps = e.bps
    assert bps is not None and math.isfinite(bps) and bps <= 100e9 + 1


def test_after_an_outage_the_head_keeps_its_cut_until_the_estimate_is_of_the_link() -> None:
    """What the outage held arrives late all at once: the tail's estimate is low for a window;
    the head does not act on it."""
    from edgeflow.runtime.adaptive import WINDOW_S

    c = Controller(spec(on_disconnect="buffer"), started=0.0)
    c.feedback(0.0, 500e6, 1)
    assert c.choose(1.5).action == "buffer"
    c.feedback(3.0, 1e6, 2)  # back, with an estimate the held messages dragged down
    for i in range(int(WINDOW_S * 30)):
        assert c.choose(3.0 + i / 30).cut == SPLIT.id
    assert c.switches == []
    c.feedback(3.0 + WINDOW_S, 500e6, 3)
    assert c.choose(3.0 + WINDOW_S + 0.01).cut == SPLIT.id and c.switches == []


def test_the_plans_cut_stays_a_candidate_when_the_range_does_not_hold_it() -> None:
    """Declared 1 Gbps, `adapt` range up to 100 Mbps: the table has only the whole model, yet
    the head must find its way back to the plan's split once the link is fast again."""
    narrow = spec().model_copy(update={"bands": [
        AdaptBandSpec(from_bps=20e6, to_bps=100e6, cut=WHOLE.id)]})
    c = Controller(narrow, started=0.0)
    drive(c, [30e6] * 90)                       # a dip: it runs whole
    assert c.current == WHOLE.id
    cuts = drive(c, [900e6] * 900, start=3.0)   # 30 s of a fast link again: trials, then back
    assert c.current == SPLIT.id and cuts[-1] == SPLIT.id


def test_running_whole_an_outage_changes_nothing() -> None:
    """The head already sends the output itself: `drop` or `buffer` must not discard it."""
    for policy in ("drop", "buffer"):
        c = Controller(spec(on_disconnect=policy), started=0.0, current=WHOLE.id)
        c.feedback(0.0, 30e6, 1)
        choice = c.choose(1.5)
        assert choice.action is None and choice.local and choice.cut == WHOLE.id


def test_no_outage_before_a_frame_sees_one() -> None:
    """A tail whose first feedback comes late is no outage unless a frame found it missing."""
    c = Controller(spec(), started=0.0)
    assert not c.link_up(5.0) and c.outages == []
    c.feedback(5.0, 500e6, 1)
    assert c.outages == [] and c.choose(5.01).action is None
