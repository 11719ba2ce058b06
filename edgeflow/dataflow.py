"""The dataflow graph (networkx) of a program, as docs/language.md ("The dataflow") defines it: the union of all pipeline
flows, split into connected components, each replicated once per instance of its sensors' device;
privacy labels propagated along it; and the instance-level graph of devices and links.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

import networkx as nx

from edgeflow import ir


def flow_graph(flows: Iterable[tuple[str, Sequence[str]]]) -> nx.DiGraph:
    """Union of flows: one node per name, an edge per consecutive pair; each edge records the
    pipelines it comes from, in order."""
    graph = nx.DiGraph()
    for pipeline, steps in flows:
        for name in steps:
            graph.add_node(name)
        for u, v in pairwise(steps):
            if graph.has_edge(u, v):
                graph.edges[u, v]["pipelines"].append(pipeline)
            else:
                graph.add_edge(u, v, pipelines=[pipeline])
    return graph


def instance_pairs(a: ir.Device, b: ir.Device) -> int:
    """How many instance-level links one link between `a` and `b` stands for."""
    return a.count if a.count == b.count else a.count * b.count


def instance_components(devices: Mapping[str, ir.Device], links: Iterable[ir.Link],
                        ) -> dict[str, int]:
    """Which connected part of the instance graph each instance is in, without building it
    (an all-to-all link would make count x count edges): union-find over the instances."""
    parent = {name: name for d in devices.values() for name in d.instances()}

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def join(x: str, y: str) -> None:
        parent[root(x)] = root(y)

    for link in links:
        a, b = devices[link.a], devices[link.b]
        if a.count == b.count and a.count > 1:
            for x, y in zip(a.instances(), b.instances()):
                join(x, y)
        else:  # every instance of one end meets every one of the other
            for x in [*a.instances(), *b.instances()]:
                join(x, a.instance(0))
    roots: dict[str, int] = {}
    return {name: roots.setdefault(root(name), len(roots)) for name in parent}


def instance_graph(devices: Mapping[str, ir.Device], links: Iterable[ir.Link]) -> nx.Graph:
    """Device instances and the links between them. Devices of equal count n > 1 are linked
    instance-wise (one site each); otherwise every instance of one end meets every one of the
    other. Edge attribute `link` is the IR link."""
    graph = nx.Graph()
    for device in devices.values():
        for name in device.instances():
            graph.add_node(name, device=device.name, tier=device.tier.value)
    for link in links:
        a, b = devices[link.a], devices[link.b]
        if a.count == b.count and a.count > 1:
            pairs: Iterable[tuple[str, str]] = zip(a.instances(), b.instances())
        else:
            pairs = ((x, y) for x in a.instances() for y in b.instances())
        for x, y in pairs:
            graph.add_edge(x, y, link=link)
    return graph


@dataclass(frozen=True)
class Component:
    """A connected part of the dataflow, replicated `replicas` times."""

    index: int
    nodes: tuple[str, ...]
    sensors: tuple[str, ...]
    replicas: int


def components(graph: nx.DiGraph, sensors: Mapping[str, ir.Sensor],
               devices: Mapping[str, ir.Device]) -> list[Component]:
    order = {name: i for i, name in enumerate(graph.nodes)}
    parts = sorted((sorted(c, key=order.__getitem__) for c in nx.weakly_connected_components(graph)),
                   key=lambda c: order[c[0]])
    out = []
    for index, nodes in enumerate(parts):
        own = tuple(n for n in nodes if n in sensors)
        counts = [devices[sensors[s].device].count for s in own]
        out.append(Component(index, tuple(nodes), own, max(counts, default=1)))
    return out


@dataclass(frozen=True)
class Dataflow:
    program: ir.Program
    graph: nx.DiGraph  # node attrs: kind, labels (frozenset), component, order (topological)
    components: tuple[Component, ...]


def _kind(program: ir.Program, name: str) -> str:
    if name in program.sinks:
        return program.sinks[name].kind
    return program.kind_of(name) or "unknown"


def build(program: ir.Program) -> Dataflow:
    graph = flow_graph((p.name, p.flow) for p in program.pipelines.values())
    comps = components(graph, program.sensors, program.devices)
    for comp in comps:
        for name in comp.nodes:
            graph.nodes[name]["component"] = comp.index
    for k, name in enumerate(nx.topological_sort(graph)):
        node = graph.nodes[name]
        node["order"] = k
        node["kind"] = _kind(program, name)
        if name in program.sensors:
            labels = frozenset(program.sensors[name].privacy)
        else:
            labels = frozenset().union(*(graph.nodes[p]["labels"] for p in graph.predecessors(name)))
            if name in program.operators:
                labels -= frozenset(program.operators[name].removes)
        node["labels"] = labels
    return Dataflow(program, graph, tuple(comps))


def _dot_id(name: str) -> str:
    return f'"{name}"'


_SHAPES = {"sensor": "invhouse", "actuator": "house", "store": "cylinder", "model": "box3d",
           "operator": "box"}


def to_dot(df: Dataflow) -> str:
    lines = [f'digraph "{df.program.app.name}" {{', "  rankdir=LR;"]
    for comp in df.components:
        lines.append(f"  subgraph cluster_{comp.index} {{")
        lines.append(f'    label="component {comp.index} x{comp.replicas}";')
        for name in comp.nodes:
            node = df.graph.nodes[name]
            extra = f"\\n{{{', '.join(sorted(node['labels']))}}}" if node["labels"] else ""
            lines.append(f'    {_dot_id(name)} [shape={_SHAPES.get(node["kind"], "box")}, '
                         f'label="{name}{extra}"];')
        lines.append("  }")
    for u, v, data in df.graph.edges(data=True):
        lines.append(f'  {_dot_id(u)} -> {_dot_id(v)} [label="{", ".join(data["pipelines"])}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


_MERMAID = {"sensor": ("[/", "/]"), "actuator": ("[\\", "/]"), "store": ("[(", ")]"),
            "model": ("[[", "]]"), "operator": ("[", "]")}


def to_mermaid(df: Dataflow) -> str:
    lines = ["flowchart LR"]
    for comp in df.components:
        lines.append(f'  subgraph c{comp.index}["component {comp.index} x{comp.replicas}"]')
        for name in comp.nodes:
            open_, close = _MERMAID.get(df.graph.nodes[name]["kind"], ("[", "]"))
            lines.append(f"    {name}{open_}{name}{close}")
        lines.append("  end")
    for u, v, data in df.graph.edges(data=True):
        lines.append(f"  {u} -->|{', '.join(data['pipelines'])}| {v}")
    return "\n".join(lines) + "\n"


def to_json(df: Dataflow) -> dict[str, object]:
    """The dataflow as data (`edgeflow graph --format json`): nodes with their kind, privacy
    labels and component; edges with the pipelines they come from; the components."""
    return {
        "app": df.program.app.name,
        "nodes": [{"name": name, "kind": node["kind"], "labels": sorted(node["labels"]),
                   "component": node["component"]} for name, node in df.graph.nodes(data=True)],
        "edges": [{"from": u, "to": v, "pipelines": list(data["pipelines"])}
                  for u, v, data in df.graph.edges(data=True)],
        "components": [{"index": c.index, "nodes": list(c.nodes), "sensors": list(c.sensors),
                        "replicas": c.replicas} for c in df.components],
    }
