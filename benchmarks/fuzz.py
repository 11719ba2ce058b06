"""Fuzz the whole toolchain for a while: how many inputs per second, and what breaks.

    python benchmarks/fuzz.py [--seconds S] [--seed N] [--minimize-seconds M] [--slow T]

The inputs and checks of tests/test_fuzz.py (`exercise`), unbounded by count but bounded by
time and random (the same seed replays the same inputs, time allowing): programs generated from
the grammar, token-level mutations of the examples, and mutations that keep more of them valid
(numbers, including huge ones, names, entries). Each goes through check (no crash, well-formed
diagnostics), fmt (idempotent, every comment kept, same IR), plan (verified when feasible) and
the k8s and compose bundles. Prints the inputs and inputs/s of each stage, then the failures
grouped by stage, exception type and where it was raised, each with the first failing input cut
down (declarations, lines, tokens, then characters) to a minimal one that still fails the same
way, and how that input differs from the example it was made from. An input that takes longer
than T seconds (default 10) is a failure too, of its slowest stage (not cut down: too slow).
Exits 1 when anything failed.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark
from lark import Lark

from edgeflow.syntax.parser import grammar_text
from tests.test_fuzz import (
    EXAMPLES,
    NUMBERS,
    Stages,
    exercise,
    mutated_example,
    mutated_program,
)

# wider than the bounded test's: the known defects with huge numbers are found here (issue 14)
WIDE_NUMBERS = [*NUMBERS, "100000", "1e9", "1e30", "1e309", "100000000000000000000"]
Key = tuple[str, str, str]  # stage, exception type, where it was raised


class _TimeUp(BaseException):
    """Ends the hypothesis run when the time is up (not an Exception: never a failing input)."""


@dataclass
class Failure:
    count: int
    text: str
    message: str


def _key(stage: str, exc: Exception) -> Key:
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/edgeflow/" in f.filename] or frames
    where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
    kind = type(exc).__name__
    if isinstance(exc, AssertionError):  # a broken property: what it says, up to the details
        kind += f" ({str(exc).split(':')[0].splitlines()[0][:60]})" if str(exc) else ""
    return stage, kind, where


def failure_of(text: str) -> tuple[Key, str] | None:
    stages = Stages()
    try:
        exercise(text, stages=stages)
    except Exception as exc:  # noqa: BLE001 - every failure is a finding
        return _key(stages.current, exc), f"{type(exc).__name__}: {exc}"[:300]
    return None


def _split(text: str, level: str) -> list[str]:
    if level == "decls":  # top-level declarations and comments
        return [p for p in re.split(r"(?m)^(?=[^\s}])", text) if p]
    if level == "lines":
        return text.splitlines(keepends=True)
    if level == "tokens":
        return re.findall(r'\s+|"(?:\\.|[^"\\\n])*"|#[^\n]*|\w+|.', text, re.DOTALL)
    return list(text)


def minimize(text: str, key: Key, budget: float) -> str:
    """Delta debugging: drop chunks of declarations, lines, tokens, then characters, while the
    input still fails with the same key, until no chunk can go or `budget` seconds are spent."""
    deadline = time.monotonic() + budget
    for level in ("decls", "lines", "tokens", "chars"):
        parts = _split(text, level)
        size = max(len(parts) // 2, 1)
        while size >= 1 and time.monotonic() < deadline:
            i, changed = 0, False
            while i < len(parts) and time.monotonic() < deadline:
                candidate = parts[:i] + parts[i + size:]
                found = failure_of("".join(candidate))
                if found is not None and found[0] == key:
                    parts, changed = candidate, True
                else:
                    i += size
            if not changed:
                size //= 2
        text = "".join(parts)
    return text


def edits(text: str) -> list[str]:
    """How a text differs from the example closest to it (nothing if it is not close to one)."""
    best: list[str] = []
    for path in EXAMPLES:
        diff = [line.rstrip("\n") for line in difflib.unified_diff(
            path.read_text().splitlines(keepends=True), text.splitlines(keepends=True),
            f"examples/{path.name}", "input", n=0)]
        if not best or len(diff) < len(best):
            best = diff
    return best if len(best) <= 20 else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="fuzzing time (default 60)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minimize-seconds", type=float, default=20.0,
                    help="time to cut down each kind of failure (default 20)")
    ap.add_argument("--slow", type=float, default=10.0,
                    help="seconds after which an input is a failure (default 10)")
    args = ap.parse_args()

    sources = {
        "grammar": from_lark(Lark(grammar_text(), parser="lalr"), start="start"),
        "mutated": mutated_example(),
        "edited": mutated_program(WIDE_NUMBERS),
    }
    stages = Stages()
    by_source: Counter[str] = Counter()
    failures: dict[Key, Failure] = {}
    start = time.perf_counter()

    @given(st.sampled_from(sorted(sources)), st.data())
    @settings(max_examples=10**9, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @seed(args.seed)
    def run(source: str, data: st.DataObject) -> None:
        if time.perf_counter() - start > args.seconds:
            raise _TimeUp
        text = data.draw(sources[source])
        by_source[source] += 1
        before = dict(stages.seconds)
        found: tuple[Key, str] | None = None
        try:
            exercise(text, stages=stages)
        except Exception as exc:  # noqa: BLE001 - every failure is a finding
            found = _key(stages.current, exc), f"{type(exc).__name__}: {exc}"[:300]
        took = {k: v - before.get(k, 0.0) for k, v in stages.seconds.items()}
        if found is None and sum(took.values()) > args.slow:
            stage = max(took, key=lambda k: took[k])
            found = ((stage, f"Slow (> {args.slow:g} s)", ""),
                     ", ".join(f"{k} {v:.1f} s" for k, v in took.items() if v >= 0.05))
        if found is not None:
            if found[0] in failures:
                failures[found[0]].count += 1
            else:
                failures[found[0]] = Failure(1, text, found[1])

    try:
        run()
    except BaseException:  # hypothesis wraps the _TimeUp that ends the run
        if time.perf_counter() - start <= args.seconds:
            raise
    elapsed = time.perf_counter() - start
    total = stages.inputs["check"]
    print(f"fuzzed {elapsed:.0f} s, seed {args.seed}: {total} inputs, {total / elapsed:.1f}/s "
          f"({', '.join(f'{n} {s}' for s, n in sorted(by_source.items()))})")
    print(f"{'stage':<8} {'inputs':>7} {'seconds':>8} {'inputs/s':>9}")
    for name in ("check", "fmt", "plan", "k8s", "compose"):
        n, secs = stages.inputs[name], stages.seconds.get(name, 0.0)
        print(f"{name:<8} {n:>7} {secs:>8.1f} {n / secs if secs else 0:>9.1f}")
    if not failures:
        print("no failures")
        return
    print(f"\n{sum(f.count for f in failures.values())} failing inputs, {len(failures)} kinds "
          "(stage, exception, where raised), each with a minimal input:")
    for (stage, kind, where), failure in sorted(failures.items()):
        text, message = failure.text, failure.message
        if where:  # an exception, not a slow input: cut it down
            text = minimize(text, (stage, kind, where), args.minimize_seconds)
            found = failure_of(text)
            message = found[1] if found else message
        print(f"\n[{stage}] {kind}{f' at {where}' if where else ''}: {failure.count} inputs")
        print(f"  {message}")
        print(f"  input: {text[:600]!r}{' ...' if len(text) > 600 else ''}")
        for line in edits(text):
            print(f"    {line}")
    sys.exit(1)


if __name__ == "__main__":
    main()
