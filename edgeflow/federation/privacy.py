"""The privacy budget of central DP with fixed clipping at a site (Flower's
`DifferentialPrivacyServerSideFixedClipping`): each round the site releases the mean of its m
sampled clients' updates, each clipped to L2 norm C, plus Gaussian noise of std z * C / m, a
Gaussian mechanism of noise multiplier z on the mean (sensitivity C / m when one client is
added or removed). The m clients are drawn from the site's n, accounted as Poisson sampling
with q = m / n, composed over the rounds with prv-accountant; the figure is the upper bound of
its estimate. Sites hold disjoint clients, so a hierarchy spends the largest of its sites'.

The accountant can take long or fail for small noise multipliers: it runs in a child process
(`python -m edgeflow.federation.privacy Z Q ROUNDS DELTA`, one JSON line per round) and a round
whose figure is not there in time, or after a failure, reports infinity with a note.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence

EPS_ERROR = 0.01


def epsilon_upper(noise: float, q: float, rounds: int, delta: float, r: int) -> float:
    """Epsilon after `r` of `rounds` rounds, as `Accountant` computes it (in this process)."""
    from prv_accountant import PRVAccountant
    from prv_accountant.privacy_random_variables import PoissonSubsampledGaussianMechanism

    accountant = PRVAccountant(
        prvs=PoissonSubsampledGaussianMechanism(noise_multiplier=noise, sampling_probability=q),
        max_self_compositions=rounds, eps_error=EPS_ERROR, delta_error=delta / 1000)
    return float(accountant.compute_epsilon(delta=delta, num_self_compositions=[r])[2])


def _main(argv: Sequence[str]) -> int:
    import warnings

    warnings.simplefilter("ignore")
    noise, q, rounds, delta = float(argv[0]), float(argv[1]), int(argv[2]), float(argv[3])
    try:
        from prv_accountant import PRVAccountant
        from prv_accountant.privacy_random_variables import PoissonSubsampledGaussianMechanism

        accountant = PRVAccountant(
            prvs=PoissonSubsampledGaussianMechanism(noise_multiplier=noise,
                                                    sampling_probability=q),
            max_self_compositions=rounds, eps_error=EPS_ERROR, delta_error=delta / 1000)
        for r in range(1, rounds + 1):
            upper = float(accountant.compute_epsilon(delta=delta, num_self_compositions=[r])[2])
            print(json.dumps({"round": r, "epsilon": upper if math.isfinite(upper) else None}),
                  flush=True)
    except Exception as e:  # noqa: BLE001  (the accountant's numerical failures)
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
        return 1
    return 0


class _Child:
    """One accounting child process and the figures it printed so far."""

    def __init__(self, noise: float, q: float, rounds: int, delta: float) -> None:
        self.values: dict[int, float] = {}
        self.error: str | None = None
        self.done = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgeflow.federation.privacy", repr(noise), repr(q),
             str(rounds), repr(delta)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            text=True, start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            with self.done:
                if "error" in item:
                    self.error = str(item["error"])
                else:
                    eps = item.get("epsilon")
                    self.values[int(item["round"])] = math.inf if eps is None else float(eps)
                self.done.notify_all()
        with self.done:
            if self.error is None:
                self.error = "the accountant stopped early"
            self.done.notify_all()

    def get(self, r: int, wait_s: float) -> float | None:
        with self.done:
            self.done.wait_for(lambda: r in self.values or self.error is not None, wait_s)
            return self.values.get(r)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.reader.join(timeout=5)


class Accountant:
    """Each round's epsilon for sites of (noise multiplier, sampling probability), computed in
    child processes started at once; `epsilon(r, wait_s)` waits at most `wait_s` seconds."""

    def __init__(self, sites: Sequence[tuple[float, float]], rounds: int, delta: float) -> None:
        self.rounds, self.delta = rounds, delta
        self.note: str | None = None
        self.failed = False
        self.children: list[_Child] = []
        for noise, q in sorted(set(sites)):
            if noise <= 0:
                self.failed = True
                self.note = "noise multiplier 0: no privacy, epsilon is infinite"
                continue
            self.children.append(_Child(noise, q, rounds, delta))

    def epsilon(self, r: int, wait_s: float) -> float:
        if self.failed:
            return math.inf
        worst = 0.0
        for child in self.children:
            value = child.get(r, wait_s)
            if value is None:
                self.failed = True
                self.note = (f"the privacy accountant failed ({child.error}); epsilon reported as "
                             "infinite" if child.error else
                             f"the privacy accountant took over {wait_s:.0f} s for round {r}; "
                             "epsilon reported as infinite")
                self.close()
                return math.inf
            worst = max(worst, value)
        return worst

    def close(self) -> None:
        for child in self.children:
            child.stop()
        self.children = []


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
