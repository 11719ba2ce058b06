"""The fastest route of a message between two device instances, through instances a predicate
allows (privacy): one function, so the placement (which prices routes) and the bundle (whose
bridges follow them hop by hop) always agree on the route."""

from __future__ import annotations

import heapq
from collections.abc import Callable

import networkx as nx

from edgeflow.cost import hop_s


def fastest_route(network: nx.Graph, a: str, b: str, nbytes: int,
                  allowed: Callable[[str], bool]) -> tuple[float, tuple[str, ...]] | None:
    """(seconds over the links, instances from `a` to `b`) of the fastest route for a message
    of `nbytes` tensor bytes through instances `allowed` accepts, or None when there is none
    (also when `a` or `b` is not allowed). Ties go to the route found first (instances in name
    order), so the answer is deterministic. `a == b` is the route (a,) of zero seconds."""
    if not (allowed(a) and allowed(b)):
        return None
    if a == b:
        return 0.0, (a,)
    best = {a: 0.0}
    prev: dict[str, str] = {}
    heap = [(0.0, a)]
    while heap:
        dist, node = heapq.heappop(heap)
        if node == b:
            hops = [b]
            while hops[-1] != a:
                hops.append(prev[hops[-1]])
            return dist, tuple(reversed(hops))
        if dist > best[node]:
            continue
        for nxt, data in network[node].items():
            if not allowed(nxt):
                continue
            cand = dist + hop_s(nbytes, data["link"])
            if cand < best.get(nxt, float("inf")) - 1e-15:
                best[nxt], prev[nxt] = cand, node
                heapq.heappush(heap, (cand, nxt))
    return None
