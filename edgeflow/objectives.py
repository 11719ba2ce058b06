"""The objective-term registry: one definition per term that `objective = minimize(...)` may
name. A term says how it is written, its unit, its linear expression in the placement MILP, its
value for an evaluated assignment, how it combines over the replicas of a symmetric
app (for the MILP's lower bound), and how it prints. The checker (valid names, completion), the
formulation, the evaluator, plan.json, the terminal rendering and report.md all read this table.

Values are in the unit the MILP and the evaluator compute them in: seconds for latency, USD per
hour for cost (what users read; the IR's USD/s prices are converted once, where priced), watts
for energy. Adding a term is one `register(Term(...))`: see docs/architecture.md. This module imports nothing
of the placement package at run time (the checker and the language server import it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from edgeflow.registry import Registry

if TYPE_CHECKING:
    from edgeflow.placement.evaluate import Evaluation
    from edgeflow.placement.milp import Expr, Formulation


class Combine(str, Enum):
    """How a term of the whole app relates to the same term of one replica of a symmetric app:
    the worst replica (`MAX`: the one-replica optimum bounds it from below), the sum over the
    replicas (`SUM`: R times the one-replica optimum bounds it), or neither (`NONE`: shared
    resources are paid once, so the one-replica problem gives no bound)."""

    MAX = "max"
    SUM = "sum"
    NONE = "none"


@dataclass(frozen=True)
class Term:
    name: str                                   # as written in `minimize(...)`
    unit: str                                   # printed unit, e.g. "ms"
    json_key: str                               # key in plan.json's `objective`
    scale: float                                # value x scale = printed value (s -> ms)
    digits: int                                 # decimals when printed
    width: int                                  # column width in `plan --compare`
    description: str                            # for hover and docs
    milp: Callable[[Formulation], Expr]         # linear expression over the MILP's variables
    evaluate: Callable[[Evaluation], float]     # value of an evaluated assignment
    combine: Combine

    def shown(self, value: float) -> float:
        return value * self.scale

    def text(self, value: float, width: int = 0) -> str:
        """`latency 12.345 ms`: the term, its value in its unit."""
        return f"{self.name} {self.shown(value):{width}.{self.digits}f} {self.unit}"


TERMS = Registry[Term]("objective term")
register, unregister = TERMS.register, TERMS.unregister


def plan_objective(values: dict[str, float]) -> dict[str, Any]:
    """plan.json's `objective`: each term under its JSON key, in its printed unit."""
    return {TERMS[n].json_key: TERMS[n].shown(v) for n, v in values.items()}


def objective_text(values: dict[str, float]) -> str:
    """`latency 1.234 ms, cost 0.0000 USD/h, energy 0.500 W`: each term in its unit."""
    return ", ".join(TERMS[name].text(value) for name, value in values.items())


# ---------------------------------------------------------------- the built-in terms
register(Term(
    "latency", "ms", "latency_ms", 1e3, 3, 9,
    "sum over pipelines of the worst replica's end-to-end latency",
    milp=lambda f: f.worst_latency_sum(),
    evaluate=lambda ev: ev.worst_latency_sum(),
    combine=Combine.MAX))
register(Term(
    "cost", "USD/h", "cost_usd_per_h", 1.0, 4, 9,
    "price of every device instance that hosts a unit, plus the traffic priced on links",
    milp=lambda f: f.cost(),
    evaluate=lambda ev: ev.cost_usd_per_h(),
    combine=Combine.NONE))
register(Term(
    "energy", "W", "energy_w", 1.0, 3, 8,
    "power drawn by the compute each device instance spends on units",
    milp=lambda f: f.energy(),
    evaluate=lambda ev: ev.energy_w(),
    combine=Combine.SUM))
