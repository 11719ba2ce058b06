"""The fastest route of a message between two device instances, through instances a predicate
allows (privacy): one function, so the placement (which prices routes) and the bundle (whose
bridges follow them hop by hop) always agree on the route."""

from __future__ import annotations

import heapq
import weakref
from collections.abc import Callable

import networkx as nx

from edgeflow import ir
from edgeflow.cost import hop_s

Neighbours = list[tuple[str, ir.Link]]


class _Adjacency:
    """A network's links by instance, split into links to instances that lead on (linked to
    more than one instance) and links to leaves (linked to this one alone: a sensor box, a
    bed's hub). A leaf is a dead end unless it is the destination, so a search never walks
    the thousand leaves of a hub it passes."""

    def __init__(self, network: nx.Graph) -> None:
        self.onward: dict[str, Neighbours] = {}
        self.leaves: dict[str, dict[str, ir.Link]] = {}
        for node in network:
            self.onward[node] = [(v, d["link"]) for v, d in network[node].items()
                                 if len(network[v]) > 1]
            self.leaves[node] = {v: d["link"] for v, d in network[node].items()
                                 if len(network[v]) == 1}


_ADJACENCY: weakref.WeakKeyDictionary[nx.Graph, _Adjacency] = weakref.WeakKeyDictionary()


def fastest_route(network: nx.Graph, a: str, b: str, nbytes: int,
                  allowed: Callable[[str], bool]) -> tuple[float, tuple[str, ...]] | None:
    """(seconds over the links, instances from `a` to `b`) of the fastest route for a message
    of `nbytes` tensor bytes through instances `allowed` accepts, or None when there is none
    (also when `a` or `b` is not allowed). Ties go to the route found first (instances in name
    order), so the answer is deterministic. `a == b` is the route (a,) of zero seconds.
    The network is read once and must not change afterwards."""
    if not (allowed(a) and allowed(b)):
        return None
    if a == b:
        return 0.0, (a,)
    if network not in _ADJACENCY:
        _ADJACENCY[network] = _Adjacency(network)
    adjacency = _ADJACENCY[network]
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
        onward = adjacency.onward[node]
        if b in adjacency.leaves[node]:
            onward = [*onward, (b, adjacency.leaves[node][b])]
        for nxt, link in onward:
            if not allowed(nxt):
                continue
            cand = dist + hop_s(nbytes, link)
            if cand < best.get(nxt, float("inf")) - 1e-15:
                best[nxt], prev[nxt] = cand, node
                heapq.heappush(heap, (cand, nxt))
    return None


def fastest_times(network: nx.Graph, a: str, nbytes: int,
                  allowed: Callable[[str], bool]) -> dict[str, float]:
    """Seconds over the links of the fastest route for a message of `nbytes` tensor bytes from
    `a` to every instance it can reach through instances `allowed` accepts (`a` itself: 0):
    `fastest_route`'s seconds for each, in one search."""
    if not allowed(a):
        return {}
    if network not in _ADJACENCY:
        _ADJACENCY[network] = _Adjacency(network)
    adjacency = _ADJACENCY[network]
    best = {a: 0.0}
    heap = [(0.0, a)]
    while heap:
        dist, node = heapq.heappop(heap)
        if dist > best[node]:
            continue
        for nxt, link in adjacency.onward[node]:
            if allowed(nxt) and (cand := dist + hop_s(nbytes, link)) < \
                    best.get(nxt, float("inf")) - 1e-15:
                best[nxt] = cand
                heapq.heappush(heap, (cand, nxt))
        for leaf, link in adjacency.leaves[node].items():  # dead ends: reached, not expanded
            if allowed(leaf) and (cand := dist + hop_s(nbytes, link)) < \
                    best.get(leaf, float("inf")) - 1e-15:
                best[leaf] = cand
    return best
