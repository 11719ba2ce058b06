"""A test-only objective term: `traffic`, the bits per second that cross links (every hop
counted), in Mbps. Importing this module registers it."""

from __future__ import annotations

from edgeflow.objectives import Combine, Term, register
from edgeflow.placement.milp import Expr, Formulation, add_exprs


def _milp(f: Formulation) -> Expr:
    return add_exprs(*[e for exprs in f.link_load.values() for e in exprs])


TERM = register(Term(
    "traffic", "Mbps", "traffic_mbps", 1e-6, 3, 9, "bits per second crossing links",
    milp=_milp, evaluate=lambda ev: sum(ev.link_load_bps.values()), combine=Combine.NONE))
