"""The unit table: every unit the language knows, its dimension and its factor to SI.

SI here means seconds, Hz, bit/s, bytes, FLOP/s, FLOP, W, USD/s and USD/byte: the IR holds only
these. This is the one place dimensions are defined.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from decimal import Decimal
from functools import lru_cache


@dataclass(frozen=True, slots=True)
class Dimension:
    name: str
    si: str  # how the SI unit is written in messages and docs


TIME = Dimension("time", "s")
RATE = Dimension("rate", "Hz")
BANDWIDTH = Dimension("bandwidth", "bit/s")
SIZE = Dimension("data size", "B")
COMPUTE = Dimension("compute", "FLOP/s")
OPS = Dimension("int8 compute", "OP/s")  # `compute_int8`: integer operations, not FLOP
WORK = Dimension("work", "FLOP")
POWER = Dimension("power", "W")
COST_RATE = Dimension("money per hour", "USD/s")
COST_DATA = Dimension("money per data", "USD/B")

UNITS: dict[str, tuple[Dimension, float]] = {
    "us": (TIME, 1e-6), "ms": (TIME, 1e-3), "s": (TIME, 1.0),
    "Hz": (RATE, 1.0), "kHz": (RATE, 1e3),
    "bps": (BANDWIDTH, 1.0), "Kbps": (BANDWIDTH, 1e3), "Mbps": (BANDWIDTH, 1e6),
    "Gbps": (BANDWIDTH, 1e9),
    "B": (SIZE, 1.0), "KB": (SIZE, 1e3), "MB": (SIZE, 1e6), "GB": (SIZE, 1e9),
    "KiB": (SIZE, 1024.0), "MiB": (SIZE, 1024.0**2), "GiB": (SIZE, 1024.0**3),
    "FLOPS": (COMPUTE, 1.0), "GFLOPS": (COMPUTE, 1e9), "TFLOPS": (COMPUTE, 1e12),
    "GOPS": (OPS, 1e9), "TOPS": (OPS, 1e12),
    "FLOP": (WORK, 1.0), "MFLOP": (WORK, 1e6), "GFLOP": (WORK, 1e9), "TFLOP": (WORK, 1e12),
    "mW": (POWER, 1e-3), "W": (POWER, 1.0),
    "USD/h": (COST_RATE, 1 / 3600), "USD/GB": (COST_DATA, 1e-9),
}


# The largest value (in SI units) each dimension takes: far beyond any real device or app, and
# small enough that sums and products over an app stay finite and exact enough in float64.
MAXIMUM: dict[Dimension, float] = {
    TIME: 1e6, RATE: 1e6, BANDWIDTH: 1e15, SIZE: 1e15, COMPUTE: 1e21, OPS: 1e21, WORK: 1e18,
    POWER: 1e9,
    COST_RATE: 1e6, COST_DATA: 1e3,
}
MAX_COUNT = 10_000        # instances of one device
MAX_DIMENSION = 2**31 - 1  # one tensor dimension
MAX_TENSOR_BYTES = 2**40   # one tensor (1 TiB)


def bound_error(si: float, dim: Dimension) -> str | None:
    """Why an SI value of `dim` is out of the language's bounds, or None."""
    if not math.isfinite(si):
        return "not a finite number"
    if abs(si) > MAXIMUM[dim]:
        return f"above the largest {dim.name} edgeflow takes, {MAXIMUM[dim]:g} {dim.si}"
    return None


def units_of(dim: Dimension) -> list[str]:
    return [u for u, (d, _) in UNITS.items() if d is dim]


def suggest_unit(unit: str, dim: Dimension | None) -> str | None:
    """A unit of the table that means exactly what `unit` means: the same dimension (`dim`, when
    given) and the same factor, so that the number can stay as written (`msec` -> `ms`,
    `hz` -> `Hz`, `Mbit/s` -> `Mbps`). None when there is no such unit or `unit` cannot be read
    unambiguously: a suggestion never changes a value's magnitude or dimension."""
    readings = read_unit(unit)
    if dim is None:
        dims = {r.dim for r in readings}
        if len(dims) != 1:
            return None
        dim = dims.pop()
    factor = _one_factor([r for r in readings if r.dim is dim])
    return None if factor is None else _table_unit(dim, factor)


# ---------------------------------------------------------------- reading units not in the table
#
# A unit that is not in UNITS is read as an SI prefix and a base (`KFLOP` = kilo + FLOP, `MB/s` =
# mega + bytes per second, `msec` = milli + seconds). Letter case is read as written where it
# decides a magnitude (`m` milli / `M` mega, `b` bit / `B` byte); a prefix that makes no sense with
# its base (`mbps`: millibits?) leaves the magnitude unknown. A reading is used only when every
# way of reading the unit gives the same dimension and factor; otherwise the help lists the units.

@dataclass(frozen=True, slots=True)
class UnitReading:
    dim: Dimension
    factor: float | None  # None: the magnitude cannot be told (`mbps`, `Gb` as a data size)
    prefix: str           # the prefix as a word ("kilo"), "" for none
    base: str             # the base as spelt in _BASES


_PREFIX_WORDS: dict[str, float] = {
    "": 1.0, "kilo": 1e3, "mega": 1e6, "giga": 1e9, "tera": 1e12, "peta": 1e15, "exa": 1e18,
    "milli": 1e-3, "micro": 1e-6, "nano": 1e-9, "pico": 1e-12,
    "kibi": 1024.0, "mebi": 1024.0**2, "gibi": 1024.0**3, "tebi": 1024.0**4,
    "hecto": 1e2, "deci": 1e-1, "centi": 1e-2, "femto": 1e-15, "atto": 1e-18,
}
# Spellings of prefixes. `m`/`M` and `p`/`P` are different prefixes, so case is never folded for
# them; `K` for kilo and lowercase `g`, `t` are common and mean only one thing.
_PREFIXES: dict[str, str] = {
    "": "", "k": "kilo", "K": "kilo", "M": "mega", "G": "giga", "g": "giga", "T": "tera",
    "t": "tera", "P": "peta", "E": "exa", "m": "milli", "u": "micro", "n": "nano", "p": "pico",
    "h": "hecto", "d": "deci", "c": "centi", "f": "femto", "a": "atto",
    "Ki": "kibi", "KI": "kibi", "ki": "kibi", "kI": "kibi", "Mi": "mebi", "MI": "mebi",
    "Gi": "gibi", "GI": "gibi", "gi": "gibi", "gI": "gibi",
    "Ti": "tebi", "TI": "tebi", "ti": "tebi", "tI": "tebi",
    **{w: w for w in ("kilo", "mega", "giga", "tera", "peta", "milli", "micro", "nano",
                      "kibi", "mebi", "gibi", "tebi")},
}
_DECIMAL_UP = frozenset({"kilo", "mega", "giga", "tera", "peta"})
_BINARY = frozenset({"kibi", "mebi", "gibi", "tebi"})
_SUBSECOND = frozenset({"milli", "micro", "nano"})

# Bases: spelling -> (dimension, factor or None when unknown, the prefixes that make sense).
_BASES: dict[str, tuple[Dimension, float | None, frozenset[str]]] = {
    **{b: (TIME, 1.0, _SUBSECOND) for b in ("s", "sec", "secs", "second", "seconds")},
    **{b: (TIME, 60.0, frozenset()) for b in ("min", "mins", "minute", "minutes")},
    **{b: (TIME, 3600.0, frozenset()) for b in ("h", "hr", "hrs", "hour", "hours")},
    **{b: (TIME, 86400.0, frozenset()) for b in ("day", "days")},
    **{b: (RATE, 1.0, frozenset({"kilo", "mega", "giga"})) for b in ("Hz", "hertz")},
    "fps": (RATE, 1.0, frozenset()),
    **{b: (BANDWIDTH, 1.0, _DECIMAL_UP - {"peta"})
       for b in ("bps", "b/s", "bit/s", "bits/s", "bit/sec")},
    **{b: (BANDWIDTH, 8.0, (_DECIMAL_UP - {"peta"}) | _BINARY)
       for b in ("Bps", "B/s", "byte/s", "bytes/s", "B/sec")},
    **{b: (SIZE, 1.0, _DECIMAL_UP | _BINARY) for b in ("B", "byte", "bytes")},
    **{b: (SIZE, 0.125, _DECIMAL_UP) for b in ("bit", "bits")},
    "b": (SIZE, None, _DECIMAL_UP | _BINARY),  # bits, or bytes written carelessly
    # `FLOPs` is a count of FLOP, or FLOPS written carelessly: it reads as both
    **{b: (COMPUTE, 1.0, _DECIMAL_UP | {"exa"}) for b in ("FLOPS", "FLOP/s", "FLOPs")},
    **{b: (OPS, 1.0, _DECIMAL_UP | {"exa"}) for b in ("OPS", "OP/s")},
    **{b: (WORK, 1.0, _DECIMAL_UP) for b in ("FLOP", "FLOPs")},
    **{b: (POWER, 1.0, frozenset({"milli", "kilo"})) for b in ("W", "watt", "watts")},
    **{b: (COST_RATE, 1 / 3600, frozenset()) for b in ("USD/h", "USD/hr", "USD/hour")},
    **{b: (COST_RATE, 1.0, frozenset()) for b in ("USD/s", "USD/sec")},
    "USD/min": (COST_RATE, 1 / 60, frozenset()),
    "USD/day": (COST_RATE, 1 / 86400, frozenset()),
    "USD/B": (COST_DATA, 1.0, frozenset()),
    **{f"USD/{p}B": (COST_DATA, 1 / f, frozenset()) for p, f in (
        ("K", 1e3), ("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12), ("Ki", 1024.0),
        ("Mi", 1024.0**2), ("Gi", 1024.0**3), ("Ti", 1024.0**4))},
}

_FUZZY_CUTOFF = 0.65
_CASE_DECIDES = frozenset("mMbB")  # milli/mega, bit/byte


def _reading(prefix: str, base: str) -> UnitReading:
    dim, factor, allowed = _BASES[base]
    word = _PREFIXES[prefix]
    if factor is not None and word and word not in allowed:
        factor = None
    elif factor is not None:
        factor *= _PREFIX_WORDS[word]
    return UnitReading(dim, factor, word, base)


@lru_cache(maxsize=1)
def _spellings() -> dict[str, tuple[UnitReading, ...]]:
    """Every prefix + base spelling and what it reads as."""
    out: dict[str, list[UnitReading]] = {}
    for base in _BASES:
        for prefix in _PREFIXES:
            if prefix and base.startswith("USD/"):
                continue
            reading = _reading(prefix, base)
            bucket = out.setdefault(prefix + base, [])
            if reading not in bucket:
                bucket.append(reading)
    return {k: tuple(v) for k, v in out.items()}


@lru_cache(maxsize=1)
def _folded() -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for spelling in _spellings():
        out.setdefault(spelling.lower(), []).append(spelling)
    return {k: tuple(v) for k, v in out.items()}


def read_unit(unit: str) -> list[UnitReading]:
    """The ways `unit` can be read: as spelt; else with letter case ignored; else as a
    misspelling of a base after a prefix kept as written (`Mbsp`, `GFLOPSS`), where the closest
    bases are all of one dimension. Several readings that disagree mean the unit is ambiguous."""
    spellings = _spellings()
    if unit in spellings:
        return list(spellings[unit])
    candidates = _folded().get(unit.lower(), ())
    if not (unit.isupper() and len(unit) > 1):  # in all capitals, case tells nothing
        candidates = tuple(s for s in candidates if all(
            a == b or a not in _CASE_DECIDES for a, b in zip(s, unit))
            and not (s.endswith("FLOPs") and unit.endswith("S")))  # `FlOPS` is FLOP/s
    folded = [r for s in candidates for r in spellings[s]]
    if folded:
        return list(dict.fromkeys(folded))
    scored: list[tuple[float, UnitReading]] = []
    for prefix in _PREFIXES:
        if not unit.startswith(prefix) or len(unit) == len(prefix):
            continue
        rest = unit[len(prefix):]
        for base in _BASES:
            if prefix and base.startswith("USD/"):
                continue
            same_start = rest[0] == base[0] if base[0] in "bB" else \
                rest[0].lower() == base[0].lower()
            if not same_start:
                continue
            ratio = difflib.SequenceMatcher(None, rest.lower(), base.lower()).ratio()
            if ratio >= _FUZZY_CUTOFF:
                scored.append((ratio, _reading(prefix, base)))
    if not scored:
        return []
    best = max(s for s, _ in scored)
    near = list(dict.fromkeys(r for s, r in scored if s >= best - 0.05))
    if len({r.dim for r in near}) > 1:  # as close to a unit of another dimension: no reading
        return [replace(r, factor=None) for r in near]
    return near


def _one_factor(readings: list[UnitReading]) -> float | None:
    """The factor all readings agree on, if they all know it."""
    factors = {r.factor for r in readings}
    if len(factors) != 1:
        return None
    (factor,) = factors
    return factor


def _table_unit(dim: Dimension, factor: float) -> str | None:
    for u in units_of(dim):
        if math.isclose(UNITS[u][1], factor, rel_tol=1e-12):
            return u
    return None


def number_text(x: float) -> str:
    """A float as a plain decimal (no exponent), to 12 significant digits."""
    if x == 0:
        return "0"
    text = f"{x:.12g}"
    if "e" in text:
        text = format(Decimal(text), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def express(si: float, dim: Dimension) -> str | None:
    """`si` (in SI units of `dim`) written with a unit of the table, the shortest way:
    2e6 bit/s -> `2 Mbps`, 5e4 FLOP -> `0.05 MFLOP`."""
    if not math.isfinite(si):
        return None
    best: tuple[tuple[int, int, int], str] | None = None
    for i, u in enumerate(units_of(dim)):
        value = si / UNITS[u][1]
        text = number_text(value)
        if not math.isfinite(value) or not math.isclose(float(text) * UNITS[u][1], si,
                                                           rel_tol=1e-9):
            continue
        key = (len(text.lstrip("-")), 0 if abs(value) >= 1 or value == 0 else 1, i)
        if best is None or key < best[0]:
            best = (key, f"{text} {u}")
    return best[1] if best else None


def unit_list(dim: Dimension) -> str:
    """The units of a dimension as a message lists them: `` `us`, `ms` or `s` ``, with what
    they count where that is easily mistaken (bits, bytes)."""
    units = [f"`{u}`" for u in units_of(dim)]
    text = units[0] if len(units) == 1 else ", ".join(units[:-1]) + " or " + units[-1]
    note = {BANDWIDTH: " (bits per second)", SIZE: " (bytes)", COMPUTE: " (FLOP per second)",
            OPS: " (int8 operations per second)", WORK: " (FLOP per message)"}.get(dim, "")
    return text + note


@dataclass(frozen=True, slots=True)
class UnitAdvice:
    """What to say about a unit that is not in the table, for a value of `dim`."""

    help: str
    unit: str | None = None     # the same number with this unit means the same (`msec` -> `ms`)
    rewrite: str | None = None  # the whole quantity rewritten, same value (`0.25 MB/s` -> `2 Mbps`)
    other: Dimension | None = None  # the unit is one of this other dimension


def unit_advice(number: str, unit: str, dim: Dimension, key: str) -> UnitAdvice:
    """A safe help for `number unit` given to `key`, which takes `dim`: the same value in a unit
    of the table, or the units of `dim` when the value cannot be told."""
    readings = read_unit(unit)
    mine = [r for r in readings if r.dim is dim]
    takes = f"`{key}` takes {dim.name} in {unit_list(dim)}"
    if not mine:
        others = {r.dim for r in readings}
        if len(others) == 1:
            other = others.pop()
            hint = (" (a bandwidth is per second)" if dim is BANDWIDTH and other is SIZE else
                    " (compute is FLOP per second)" if dim is COMPUTE and other is WORK else
                    " (an int8 rate, for `compute_int8`: float compute is in FLOPS)"
                    if dim is COMPUTE and other is OPS else
                    " (work is FLOP per message, without `/s`)" if dim is WORK and other is COMPUTE
                    else "")
            return UnitAdvice(f"`{unit}` would be a unit of {other.name}{hint}; {takes}",
                              other=other)
        cased = " (units are case-sensitive)" if unit.lower() in _folded() or any(
            u.lower() == unit.lower() for u in UNITS) else ""
        return UnitAdvice(takes + cased)
    factor = _one_factor(mine)
    if factor is None:
        return UnitAdvice(f"`{unit}` can be read more than one way; {takes}"
                          " (units are case-sensitive)")
    same = _table_unit(dim, factor)
    if same is not None:
        return UnitAdvice(f"did you mean `{same}`?", unit=same)
    try:
        si = float(number) * factor
    except ValueError:
        si = math.nan
    rewrite = express(si, dim)
    if rewrite is None:
        return UnitAdvice(takes)
    reading = mine[0]
    base_factor = _BASES[reading.base][1]
    if dim is BANDWIDTH and base_factor == 8.0:
        return UnitAdvice(f"`{unit}` is bytes per second and a bandwidth is in bits per second: "
                          f"write `{rewrite}` ({number} {unit} × 8)", rewrite=rewrite)
    if reading.prefix and _table_unit(dim, base_factor or 1.0) is not None:
        return UnitAdvice(f"{reading.prefix} is not a unit prefix of {dim.name} here: write "
                          f"`{rewrite}` (the same as {number} {unit})", rewrite=rewrite)
    return UnitAdvice(f"`{unit}` is not a unit of {dim.name} here: write `{rewrite}` (the same "
                      f"as {number} {unit})", rewrite=rewrite)


_QUANTITY_TEXT = re.compile(r"\s*(-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]+(?:/[A-Za-z]+)?)?\s*")
_TENSOR_TEXT = re.compile(r"\s*([a-z0-9]+)\s*\[\s*([0-9,\s]*)\]\s*")


def parse_quantity(text: str, dim: Dimension, positive: bool = True) -> float:
    """`0.5TFLOPS`, `20 Mbps` -> SI value; ValueError with a message naming the units. Zero
    is refused too unless not `positive` (a latency may be 0 s)."""
    m = _QUANTITY_TEXT.fullmatch(text)
    allowed = ", ".join(units_of(dim))
    if not m or m.group(2) is None:
        raise ValueError(f"expected a {dim.name} such as `1{units_of(dim)[0]}` (units: {allowed})")
    number, unit = float(m.group(1)), m.group(2)
    if unit not in UNITS or UNITS[unit][0] is not dim:
        guess = suggest_unit(unit, dim)
        raise ValueError(f"`{unit}` is not a unit of {dim.name}"
                         + (f"; did you mean `{guess}`?" if guess else f" (units: {allowed})"))
    if not (number > 0 or (not positive and number == 0)):
        raise ValueError(f"a {dim.name} must be greater than zero" if positive else
                         f"a {dim.name} cannot be negative")
    si = number * UNITS[unit][1]
    if (problem := bound_error(si, dim)) is not None:
        raise ValueError(problem)
    return si


def parse_tensor_type(text: str, dtypes: Iterable[str]) -> tuple[str, tuple[int, ...]]:
    """`float32[1,3,320,320]` -> ("float32", (1, 3, 320, 320)); `int64[]` -> ("int64", ())."""
    m = _TENSOR_TEXT.fullmatch(text)
    if not m:
        raise ValueError(f"expected a tensor type such as `float32[1,3,224,224]`, got `{text}`")
    dtype = m.group(1)
    if dtype not in dtypes:
        raise ValueError(f"unknown element type `{dtype}` (one of {', '.join(dtypes)})")
    dims = tuple(int(d) for d in m.group(2).replace(" ", "").split(",") if d)  # () a scalar
    if dims and (min(dims) < 1 or max(dims) > MAX_DIMENSION):
        raise ValueError(f"every dimension must be a whole number from 1 to {MAX_DIMENSION}")
    return dtype, dims
