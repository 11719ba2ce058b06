"""Cuts of a model between two devices: evaluation, the exact optimum by minimum s-t cut (as DADS
does, on the real ONNX graph), the Pareto-optimal cuts found by parametric min-cut, and exhaustive
enumeration for cross-checking.

A cut splits the dynamic nodes (see `analysis.py`) into a head, run where the inputs are produced,
and a tail, run where the outputs are consumed, with no tensor flowing from tail to head. The
tensors that cross it are those produced in the head (or model inputs) and read by the tail (or
model outputs): each is sent once, whatever the number of its readers.

The flow network (one node per dynamic ONNX node, one per crossing-candidate tensor):
  s -> v   capacity = cost of v in the tail      (cut when v is in the tail)
  v -> t   capacity = cost of v in the head      (cut when v is in the head)
  p -> x   capacity = cost of sending x          (p produces x; s stands for model inputs)
  x -> c   infinite, for each reader c of x      (a tail reader drags x to the tail side)
  x -> t   infinite, when x is a model output
  c -> p   infinite, for each reader c of p's outputs (no edge from tail back to head)
A minimum cut's source side is the optimal head; its capacity is the optimal cost.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from math import lcm

import networkx as nx

from edgeflow.models.analysis import Analysis

SOURCE, SINK = "\x00s", "\x00t"
# preflow-push: robust when one weight dwarfs the other (the hull's lexicographic end points),
# where Boykov-Kolmogorov and Dinitz took 10-20x longer on the 1,000-node benchmark model.
_FLOW = nx.algorithms.flow.preflow_push


@dataclass(frozen=True)
class Cut:
    head: frozenset[int]          # indices of the dynamic nodes in the head
    tensors: tuple[str, ...]      # tensors sent from head to tail, in graph order
    transfer_bytes: int
    head_work: int
    tail_work: int

    @property
    def key(self) -> tuple[int, int]:
        return (self.head_work, self.transfer_bytes)


class CutProblem:
    """The dynamic part of an analysed model, as the cut algorithms see it."""

    def __init__(self, analysis: Analysis) -> None:
        self.analysis = analysis
        self.nodes = {n.index: n for n in analysis.dynamic_nodes()}
        self.work = {i: n.work for i, n in self.nodes.items()}
        self.total_work = sum(self.work.values())
        outputs = set(analysis.outputs)
        # Tensors that may cross: model inputs and outputs of dynamic nodes, when read by a
        # dynamic node or delivered as a model output.
        self.order: dict[str, int] = {}
        self.readers: dict[str, list[int]] = {}
        self.producer: dict[str, int | None] = {}
        self.is_output: dict[str, bool] = {}
        candidates = [(name, None) for name in analysis.inputs] + [
            (o, n.index) for n in analysis.dynamic_nodes() for o in n.outputs]
        for position, (name, producer) in enumerate(candidates):
            readers = [c for c in analysis.consumers.get(name, []) if c in self.nodes]
            if not readers and name not in outputs:
                continue
            self.order[name] = position
            self.readers[name] = readers
            self.producer[name] = producer
            self.is_output[name] = name in outputs
        self.nbytes = {name: analysis.tensors[name].nbytes for name in self.order}
        self.preds: dict[int, set[int]] = {i: set() for i in self.nodes}
        for name, readers in self.readers.items():
            p = self.producer[name]
            for r in readers:
                if p is not None and p != r:
                    self.preds[r].add(p)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, head: frozenset[int]) -> Cut:
        crossing = []
        for name in self.order:
            p = self.producer[name]
            if p is not None and p not in head:
                continue
            if self.is_output[name] or any(r not in head for r in self.readers[name]):
                crossing.append(name)
        head_work = sum(self.work[i] for i in head)
        return Cut(head, tuple(crossing), sum(self.nbytes[t] for t in crossing), head_work,
                   self.total_work - head_work)

    def is_valid(self, head: frozenset[int]) -> bool:
        return head <= set(self.nodes) and all(self.preds[v] <= head for v in head)

    def from_tensors(self, tensors: list[str]) -> Cut:
        """The cut whose head computes exactly what is needed to produce `tensors` (and is then
        closed under predecessors). Raises ValueError if those tensors do not form a valid cut."""
        unknown = [t for t in tensors if t not in self.order]
        if unknown:
            raise ValueError(f"{unknown[0]} is not a tensor that can be cut (a model input or an "
                             "output of a node that carries activations)")
        head: set[int] = set()
        stack = [self.producer[t] for t in tensors if self.producer[t] is not None]
        while stack:
            v = stack.pop()
            if v is not None and v not in head:
                head.add(v)
                stack.extend(self.preds[v])
        cut = self.evaluate(frozenset(head))
        if set(cut.tensors) != set(tensors):
            raise ValueError(f"these tensors are not a cut: the head that produces them also "
                             f"sends {', '.join(sorted(set(cut.tensors) - set(tensors)))}"
                             if set(cut.tensors) - set(tensors) else
                             "these tensors are not a cut")
        return cut

    # ------------------------------------------------------------------ min-cut
    def min_cut(self, head_cost: Callable[[int], Fraction | int],
                tail_cost: Callable[[int], Fraction | int],
                send_cost: Callable[[str], Fraction | int]) -> Cut:
        """The head minimising Σhead_cost + Σtail_cost + Σsend_cost of crossing tensors, exactly:
        costs (ints or Fractions, non-negative) are scaled to integers before the max-flow."""
        head = {v: Fraction(head_cost(v)) for v in self.nodes}
        tail = {v: Fraction(tail_cost(v)) for v in self.nodes}
        send = {t: Fraction(send_cost(t)) for t in self.order}
        scale = lcm(*(c.denominator for table in (head, tail, send) for c in table.values()))
        g = nx.DiGraph()
        g.add_node(SOURCE)
        g.add_node(SINK)
        for v in self.nodes:
            # min(head, tail) is paid wherever v runs: only the difference is a choice.
            diff = int((head[v] - tail[v]) * scale)
            if diff > 0:
                g.add_edge(v, SINK, capacity=diff)
            elif diff < 0:
                g.add_edge(SOURCE, v, capacity=-diff)
            else:
                g.add_node(v)
        for name in self.order:
            x = ("x", name)
            p = self.producer[name]
            g.add_edge(SOURCE if p is None else p, x, capacity=int(send[name] * scale))
            for r in self.readers[name]:
                g.add_edge(x, r)  # no capacity attribute: infinite
                if p is not None and p != r:
                    g.add_edge(r, p)
            if self.is_output[name]:
                g.add_edge(x, SINK)
        _, (source_side, _) = nx.minimum_cut(g, SOURCE, SINK,
                                             flow_func=_FLOW)
        return self.evaluate(frozenset(v for v in source_side if isinstance(v, int)))

    def optimal(self, edge_flops: float, cloud_flops: float, bandwidth_bps: float) -> Cut:
        """The exact optimum of head_work/edge + 8·bytes/bandwidth + tail_work/cloud (the link
        latency is paid by every cut alike)."""
        return self.min_cut(lambda v: Fraction(self.work[v]) / Fraction(edge_flops),
                            lambda v: Fraction(self.work[v]) / Fraction(cloud_flops),
                            lambda t: Fraction(8 * self.nbytes[t]) / Fraction(bandwidth_bps))

    def hull(self, head_cost: Callable[[int], Fraction | int],
             tail_cost: Callable[[int], Fraction | int]) -> list[Cut]:
        """The supported Pareto-optimal cuts of (Σhead_cost + Σtail_cost, transfer bytes):
        the vertices of the lower-left convex hull of all cuts, exactly, by dichotomic
        parametric min-cut. Every objective a·cost + b·bytes with a, b >= 0 is optimal at one of
        them. Sorted by cost, ascending."""
        # Scale every cost to an integer so that lexicographic weights are exact.
        costs = [(v, Fraction(head_cost(v)), Fraction(tail_cost(v))) for v in self.nodes]
        scale = lcm(*(c.denominator for _, h, t in costs for c in (h, t)))
        head = {v: int(h * scale) for v, h, _ in costs}
        tail = {v: int(t * scale) for v, _, t in costs}
        tail_total = sum(tail.values())

        def cost(c: Cut) -> int:
            return sum(head[v] for v in c.head) + tail_total - sum(tail[v] for v in c.head)

        def solve(a: int, b: int) -> Cut:
            return self.min_cut(lambda v: a * head[v], lambda v: a * tail[v],
                                lambda t: b * self.nbytes[t])

        big_bytes = sum(self.nbytes.values()) + 1
        big_cost = sum(max(head[v], tail[v]) for v in self.nodes) + 1
        ends = [solve(big_bytes, 1), solve(1, big_cost)]  # least cost / fewest bytes first
        points = {(cost(c), c.transfer_bytes): c for c in ends}
        stack = [(ends[0], ends[1])]
        while stack:
            p, q = stack.pop()
            (pc, pb), (qc, qb) = (cost(p), p.transfer_bytes), (cost(q), q.transfer_bytes)
            if pc >= qc or pb <= qb:
                continue
            a, b = pb - qb, qc - pc
            r = solve(a, b)
            rc = cost(r)
            if a * rc + b * r.transfer_bytes < a * pc + b * pb and \
                    (rc, r.transfer_bytes) not in points:
                points[(rc, r.transfer_bytes)] = r
                stack.extend([(p, r), (r, q)])
        return [points[k] for k in sorted(points)]

    def pareto(self, exhaustive_limit: int = 20_000) -> tuple[list[Cut], bool]:
        """The Pareto-optimal cuts in (head work, transfer bytes), both minimised, sorted by head
        work, and whether the list is complete. Models with at most `exhaustive_limit` cuts are
        enumerated, giving every Pareto-optimal cut; past that the list is the supported ones
        (the convex hull), which still holds the optimum for every device pair with a slower
        edge."""
        front: dict[tuple[int, int], frozenset[int] | None] = {}

        def visit(work: int, nbytes: int) -> bool:
            if (work, nbytes) in front or any(w <= work and b <= nbytes for w, b in front):
                return False
            for w, b in [k for k in front if work <= k[0] and nbytes <= k[1]]:
                del front[(w, b)]
            front[(work, nbytes)] = None
            return True

        def keep(work: int, nbytes: int, head: frozenset[int]) -> None:
            front[(work, nbytes)] = head

        try:
            self._walk(visit, keep, exhaustive_limit)
        except OverflowError:
            return self.hull(lambda v: self.work[v], lambda v: 0), False
        return [self.evaluate(head) for _, head in sorted(front.items()) if head is not None], \
            True

    def enumerate(self, limit: int = 200_000) -> list[Cut]:
        """Every valid cut (every predecessor-closed head), for cross-checking on small models.
        Raises OverflowError past `limit` cuts."""
        heads: list[frozenset[int]] = []
        self._walk(lambda w, b: True, lambda w, b, head: heads.append(head), limit)
        return [self.evaluate(h) for h in heads]

    def _walk(self, visit: Callable[[int, int], bool],
              keep: Callable[[int, int, frozenset[int]], None], limit: int) -> None:
        """Visit every valid head once, with its head work and crossing bytes kept up to date
        incrementally as nodes join and leave the head (backtracking in graph order, which is
        topological). `visit(work, bytes)` says whether to `keep` that head."""
        order = sorted(self.nodes)
        produced: dict[int, list[str]] = {v: [] for v in order}
        read: dict[int, list[str]] = {v: [] for v in order}
        for name in self.order:
            p = self.producer[name]
            if p is not None:
                produced[p].append(name)
            for r in set(self.readers[name]):
                read[r].append(name)
        tail_readers = {t: len(set(r)) for t, r in self.readers.items()}
        in_head: set[int] = set()
        state = {"work": 0, "bytes": 0, "count": 0}

        def crossing(t: str) -> bool:
            p = self.producer[t]
            return (p is None or p in in_head) and (tail_readers[t] > 0 or self.is_output[t])

        state["bytes"] = sum(self.nbytes[t] for t in self.order if crossing(t))

        def move(v: int, into_head: bool) -> None:
            affected = read[v] + produced[v]
            before = sum(self.nbytes[t] for t in affected if crossing(t))
            for t in read[v]:
                tail_readers[t] += -1 if into_head else 1
            (in_head.add if into_head else in_head.discard)(v)
            state["bytes"] += sum(self.nbytes[t] for t in affected if crossing(t)) - before
            state["work"] += self.work[v] if into_head else -self.work[v]

        def walk(i: int) -> None:
            while i < len(order) and not self.preds[order[i]] <= in_head:
                i += 1  # a predecessor is in the tail: this node is in the tail too
            if i == len(order):
                state["count"] += 1
                if state["count"] > limit:
                    raise OverflowError(f"more than {limit} cuts")
                if visit(state["work"], state["bytes"]):
                    keep(state["work"], state["bytes"], frozenset(in_head))
                return
            v = order[i]
            move(v, True)
            walk(i + 1)
            move(v, False)
            walk(i + 1)

        depth = sys.getrecursionlimit()
        sys.setrecursionlimit(max(depth, 4 * len(order) + 100))
        try:
            walk(0)
        finally:
            sys.setrecursionlimit(depth)
