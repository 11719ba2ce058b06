"""The unit table: every unit the language knows, its dimension and its factor to SI.

SI here means seconds, Hz, bit/s, bytes, FLOP/s, FLOP, W, USD/s and USD/byte: the IR holds only
these. This is the one place dimensions are defined.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Dimension:
    name: str
    si: str  # how the SI unit is written in messages and docs


TIME = Dimension("time", "s")
RATE = Dimension("rate", "Hz")
BANDWIDTH = Dimension("bandwidth", "bit/s")
SIZE = Dimension("data size", "B")
COMPUTE = Dimension("compute", "FLOP/s")
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
    "FLOP": (WORK, 1.0), "MFLOP": (WORK, 1e6), "GFLOP": (WORK, 1e9), "TFLOP": (WORK, 1e12),
    "mW": (POWER, 1e-3), "W": (POWER, 1.0),
    "USD/h": (COST_RATE, 1 / 3600), "USD/GB": (COST_DATA, 1e-9),
}


# The largest value (in SI units) each dimension takes: far beyond any real device or app, and
# small enough that sums and products over an app stay finite and exact enough in float64.
MAXIMUM: dict[Dimension, float] = {
    TIME: 1e6, RATE: 1e6, BANDWIDTH: 1e15, SIZE: 1e15, COMPUTE: 1e21, WORK: 1e18, POWER: 1e9,
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
    """The closest known unit, preferring units of `dim`; case-insensitive matches first."""
    pool = units_of(dim) if dim else list(UNITS)
    for candidates in (pool, list(UNITS)):
        for u in candidates:
            if u.lower() == unit.lower():
                return u
        close = difflib.get_close_matches(unit, candidates, n=1, cutoff=0.5)
        if close:
            return close[0]
    return None


_QUANTITY_TEXT = re.compile(r"\s*(-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]+(?:/[A-Za-z]+)?)?\s*")
_TENSOR_TEXT = re.compile(r"\s*([a-z0-9]+)\s*\[\s*([0-9,\s]*)\]\s*")


def parse_quantity(text: str, dim: Dimension) -> float:
    """`0.5TFLOPS`, `20 Mbps` -> SI value; ValueError with a message naming the units."""
    m = _QUANTITY_TEXT.fullmatch(text)
    allowed = ", ".join(units_of(dim))
    if not m or m.group(2) is None:
        raise ValueError(f"expected a {dim.name} such as `1{units_of(dim)[0]}` (units: {allowed})")
    number, unit = float(m.group(1)), m.group(2)
    if unit not in UNITS or UNITS[unit][0] is not dim:
        guess = suggest_unit(unit, dim)
        raise ValueError(f"`{unit}` is not a unit of {dim.name}"
                         + (f"; did you mean `{guess}`?" if guess else f" (units: {allowed})"))
    if not number > 0:
        raise ValueError(f"a {dim.name} must be greater than zero")
    si = number * UNITS[unit][1]
    if (problem := bound_error(si, dim)) is not None:
        raise ValueError(problem)
    return si


def parse_tensor_type(text: str, dtypes: Iterable[str]) -> tuple[str, tuple[int, ...]]:
    """`float32[1,3,320,320]` -> ("float32", (1, 3, 320, 320))."""
    m = _TENSOR_TEXT.fullmatch(text)
    if not m:
        raise ValueError(f"expected a tensor type such as `float32[1,3,224,224]`, got `{text}`")
    dtype = m.group(1)
    if dtype not in dtypes:
        raise ValueError(f"unknown element type `{dtype}` (one of {', '.join(dtypes)})")
    dims = tuple(int(d) for d in m.group(2).replace(" ", "").split(",") if d)
    if not dims or min(dims) < 1 or max(dims) > MAX_DIMENSION:
        raise ValueError(f"every dimension must be a whole number from 1 to {MAX_DIMENSION}")
    return dtype, dims
