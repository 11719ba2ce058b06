"""Run-time adaptation of a split model (docs/runtime.md, "Adaptation"): the tail's passive
bandwidth estimate and the head's choice of cut. Both are plain objects driven by the time the
caller passes in, so they are tested without a clock, a broker or a model.

The tail learns the bandwidth from the messages the head already sends, never from probes: a
message of n bytes published by the head at `published` (its trace) and received at `received`
took T = received - published, so it got through at b = 8 n / (T - latency) (the link's declared
latency; at least the time n bytes take at `CAP_BPS`). Everything between the two publishes is
in T: the brokers, and waiting behind other traffic on the link, so b is the rate this stream
actually gets. The estimate is the bits of the messages of the `WINDOW_S` seconds up to the last one
over the time they took: it predicts their mean transfer time.

The head switches to the table's cut predicted fastest for the estimate (the table's own choice
while the halves run as the plan's devices would) only when the predicted gain exceeds `margin` of
the current cut's predicted latency for `hold_s` seconds (hysteresis: an estimate jittering
around a band's edge never flaps the cut). A prediction counts the halves' compute as measured
where they ran (the tail reports its own), else as the plan's devices give it, and, where the
head may send the model's output itself, the output's way back over the link. While the head runs
the whole model and sends its output itself, no message crosses the link to measure it: it sends
one real frame with the crossing cut predicted fastest at the top of the table's range after
`trial_every_s` (at least 1 s, or `hold_s`), and each further trial that does not bring the split
back twice as late, up to `TRIAL_BACKOFF` times that.

The tail's feedback (the estimate, every `feedback_interval_s`) is also the head's heartbeat: none
for `outage_after_s` and the link is down; the head then applies its `on_disconnect` policy until
feedback arrives again. What an outage held arrives late, all at once: for `WINDOW_S` after it the
estimate counts those messages, so the head keeps its cut until the estimate is of the link again.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from edgeflow.unit_config import AdaptCutSpec, AdaptSpec

WINDOW_S = 2.0
MAX_SAMPLES = 256
CAP_BPS = 100e9  # a sample never claims more than this (a message that took no time)
SMOOTHING = 0.2  # weight of a new measurement of a half's compute time
TRIAL_BACKOFF = 8  # trials that keep confirming the whole model come at most this much rarer


class ComputeTimes:
    """The time each cut's half takes where it runs, smoothed (the tail reports its own)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def ran(self, cut: str, seconds: float) -> None:
        old = self.seconds.get(cut)
        self.seconds[cut] = seconds if old is None else old + SMOOTHING * (seconds - old)


class BandwidthEstimator:
    """The tail's estimate of the bandwidth its head's messages get: their bits over the time
    they took beyond the link's latency, summed over the messages of the `WINDOW_S` seconds up
    to the last one, so that the estimate predicts the mean transfer time of a message, one
    delayed message moves it by its share only, and a lone trial frame seconds after the last
    message speaks for the link as it is now."""

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.window: deque[tuple[float, float, float]] = deque()  # (arrival, bits, seconds)
        self.samples = 0

    def sample(self, nbytes: int, transfer_s: float, now: float) -> None:
        """A message of `nbytes` took `transfer_s` from the head's publish to its arrival."""
        if nbytes <= 0 or not math.isfinite(transfer_s):
            return
        seconds = max(transfer_s - self.latency_s, 8 * nbytes / CAP_BPS)
        self.window.append((now, 8.0 * nbytes, seconds))
        while now - self.window[0][0] > WINDOW_S or len(self.window) > MAX_SAMPLES:
            self.window.popleft()
        self.samples += 1

    @property
    def bps(self) -> float | None:
        if not self.window:
            return None
        return sum(b for _, b, _ in self.window) / sum(s for _, _, s in self.window)


@dataclass(frozen=True)
class Choice:
    """The cut for the next frame: `local` when the head sends the model's output itself;
    `trial` for a frame sent to measure the link; `action` while the link is down (`drop`:
    no frame, `buffer`: hold the message)."""

    cut: str
    local: bool = False
    trial: bool = False
    action: str | None = None


@dataclass
class Switch:
    at: float
    before: str
    after: str
    estimate_bps: float


@dataclass
class Controller:
    """The head's choice of cut, frame by frame."""

    spec: AdaptSpec
    started: float
    trial_every_s: float = 0.0
    current: str = ""
    estimate_bps: float | None = None
    samples: int = 0
    last_feedback: float | None = None
    candidate: str | None = None
    candidate_since: float = 0.0
    last_trial: float = -math.inf
    settle_until: float = -math.inf
    switches: list[Switch] = field(default_factory=list)
    outages: list[tuple[float, float | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cuts: dict[str, AdaptCutSpec] = {c.id: c for c in self.spec.cuts}
        self.head_measured: dict[str, float] = {}
        self.tail_measured: dict[str, float] = {}
        self.current = self.current or self.spec.start
        self.trial_every_s = self.trial_every_s or max(1.0, self.spec.hold_s)
        self.trial_interval = self.trial_every_s

    # -- what the tail says ---------------------------------------------------------------
    def feedback(self, now: float, estimate_bps: float | None, samples: int,
                 tail_s: dict[str, float] | None = None) -> None:
        """What the tail says: its estimate, its sample count, and the time its halves take
        (by cut) as it measures them."""
        self.last_feedback = now
        if estimate_bps is not None and samples != self.samples:
            self.estimate_bps, self.samples = estimate_bps, samples
        for cut, seconds in (tail_s or {}).items():
            if cut in self.cuts:
                self.tail_measured[cut] = seconds
        if self.outages and self.outages[-1][1] is None:
            self.outages[-1] = (self.outages[-1][0], now)
            # what the outage held arrives now, late: the tail's estimate counts it until its
            # window has passed, and says nothing of the link meanwhile
            self.settle_until = now + WINDOW_S

    def link_up(self, now: float) -> bool:
        """Feedback within `outage_after_s` (counted from the start before the first)."""
        return now - (self.last_feedback if self.last_feedback is not None else self.started) \
            < self.spec.outage_after_s

    @property
    def in_outage(self) -> bool:
        """An outage a frame saw begin has not ended yet."""
        return bool(self.outages) and self.outages[-1][1] is None

    # -- predictions ----------------------------------------------------------------------
    def local(self, cut: str) -> bool:
        """Whether the head sends `cut`'s output itself (its head is the whole model)."""
        return self.cuts[cut].whole and bool(self.spec.bypass)

    def ran(self, cut: str, seconds: float) -> None:
        """The head ran `cut`'s half in `seconds`: its time from now on (smoothed)."""
        old = self.head_measured.get(cut)
        self.head_measured[cut] = seconds if old is None else old + SMOOTHING * (seconds - old)

    def predicted_s(self, cut: str, bandwidth_bps: float) -> float:
        """Head, transfer, tail, and (where the head could send the output itself) the
        output's way back over the link: the halves' times as measured where they have run,
        else as the plan's devices give them."""
        c = self.cuts[cut]
        head = self.head_measured.get(cut, c.head_s)
        if self.local(cut):
            return head
        seconds = head + 8 * c.transfer_bytes / bandwidth_bps + self.spec.latency_s + \
            self.tail_measured.get(cut, c.tail_s)
        whole = next((w for w in self.spec.cuts if w.whole), None)
        if self.spec.bypass and whole is not None:  # the output comes back across the link
            seconds += 8 * whole.transfer_bytes / bandwidth_bps + self.spec.latency_s
        return seconds

    def table_cut(self, bandwidth_bps: float) -> str:
        """The decision table's cut for `bandwidth_bps` (clamped into the table's range)."""
        bands = self.spec.bands
        if bandwidth_bps <= bands[0].from_bps:
            return bands[0].cut
        return next((b.cut for b in bands if bandwidth_bps < b.to_bps), bands[-1].cut)

    def candidates(self) -> list[str]:
        """The table's cuts, in band order, and the plan's (which the range may not hold)."""
        return list(dict.fromkeys([*(b.cut for b in self.spec.bands), self.spec.start]))

    def target(self, bandwidth_bps: float) -> str:
        """The table's cut predicted fastest at `bandwidth_bps`: the table's own choice while
        the halves run as the plan's devices would, and no output comes back over the link
        (`table_cut`); else what measurement and the way back make fastest."""
        return min(self.candidates(), key=lambda c: (self.predicted_s(c, bandwidth_bps),
                                                     c != self.current))

    # -- the choice -----------------------------------------------------------------------
    def choose(self, now: float) -> Choice:
        if not self.link_up(now):
            if not self.in_outage:  # (an outage counts from the first frame that sees it)
                self.outages.append((now, None))
            if self.local(self.current):  # it sends the output itself: nothing to change
                return Choice(self.current, local=True)
            action = self.spec.on_disconnect
            if action == "local" and self.spec.fallback is not None:
                return Choice(self.spec.fallback, local=True, action="local")
            return Choice(self.current, local=self.local(self.current), action=action)
        if self.spec.bands and self.estimate_bps is not None and now >= self.settle_until:
            self._consider(now, self.estimate_bps)
        if self.local(self.current) and self.spec.bands and \
                now - self.last_trial >= self.trial_interval:
            trial = self._trial_cut()
            if trial is not None:
                if self.last_trial > -math.inf:  # the last trial did not bring the split back
                    self.trial_interval = min(2 * self.trial_interval,
                                              TRIAL_BACKOFF * self.trial_every_s)
                self.last_trial = now
                return Choice(trial, trial=True)
        return Choice(self.current, local=self.local(self.current))

    def _consider(self, now: float, bw: float) -> None:
        target = self.target(bw)
        now_s = self.predicted_s(self.current, bw)
        if target != self.current and now_s - self.predicted_s(target, bw) > \
                self.spec.margin * now_s:
            if self.candidate != target:
                self.candidate, self.candidate_since = target, now
            if now - self.candidate_since >= self.spec.hold_s:
                self.switches.append(Switch(now, self.current, target, bw))
                self.current, self.candidate = target, None
                self.trial_interval, self.last_trial = self.trial_every_s, -math.inf
        else:
            self.candidate = None

    def _trial_cut(self) -> str | None:
        """The cut that crosses the link predicted fastest at the top of the table's range:
        the one a faster link would bring back (None: every cut is run here whole)."""
        top = self.spec.bands[-1].to_bps
        crossing = [c for c in self.candidates() if not self.local(c)]
        return min(crossing, key=lambda c: self.predicted_s(c, top)) if crossing else None
