"""The execution graph: the dataflow replicated, once per compile. One step per declared sensor,
operator, model and sink of every replica of its component (a sink on a single device is one
step shared by all replicas), the edges between them, each pipeline replica's path, with every
step's rate, message size and privacy labels; and the device instances with the links between
them. Placement builds its problem from it and the bundle its MQTT clients; neither replicates
the dataflow again. (`edgeflow.verify` keeps its own replica bookkeeping on purpose.)
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from edgeflow import ir
from edgeflow.dataflow import Dataflow, build, instance_graph

StepKey = tuple[str, int | None]  # (declared name, replica); None for a sink shared by all


@dataclass(frozen=True)
class Step:
    key: StepKey
    kind: str                     # sensor, operator, model, actuator, store
    rate_hz: float                # runs per second: the lowest of its inputs' rates
    out_bytes: int                # one output message (0 for sinks)
    labels: frozenset[str]        # privacy labels of what it receives (what it emits: sensors)
    out_labels: frozenset[str]    # privacy labels of what it sends downstream
    device: str | None            # the instance a sensor or sink sits on; None for units

    @property
    def name(self) -> str:
        return self.key[0]

    @property
    def replica(self) -> int | None:
        return self.key[1]

    @property
    def is_unit(self) -> bool:
        return self.kind in ("operator", "model")


@dataclass(frozen=True)
class ExecutionGraph:
    program: ir.Program
    dataflow: Dataflow
    steps: dict[StepKey, Step]                          # by component, replica, dataflow order
    edges: tuple[tuple[StepKey, StepKey], ...]          # producer -> consumer
    pipelines: tuple[tuple[str, int, tuple[StepKey, ...]], ...]  # pipeline, replica, its path
    instances: dict[str, tuple[ir.Device, int]]         # instance -> (device, index)
    network: nx.Graph                                   # instances and links (edge attr `link`)

    def replicas(self, name: str) -> int:
        """How many replicas the component holding step `name` has."""
        comp: int = self.dataflow.graph.nodes[name]["component"]
        return self.dataflow.components[comp].replicas

    def device(self, inst: str) -> ir.Device:
        return self.instances[inst][0]


def step_key(program: ir.Program, name: str, replica: int) -> StepKey:
    """The step that replica `replica` of `name` is: a sink on a single device is one step
    shared by all replicas, everything else one per replica."""
    if name in program.sinks and program.devices[program.sinks[name].device].count == 1:
        return (name, None)
    return (name, replica)


def _rates(df: Dataflow, program: ir.Program) -> dict[str, float]:
    rates: dict[str, float] = {}
    for name in nx.topological_sort(df.graph):
        if name in program.sensors:
            rates[name] = program.sensors[name].rate_hz
        else:
            rates[name] = min(rates[p] for p in df.graph.predecessors(name))
    return rates


def build_execution(program: ir.Program) -> ExecutionGraph:
    df = build(program)
    g = df.graph
    rates = _rates(df, program)
    steps: dict[StepKey, Step] = {}
    edges: list[tuple[StepKey, StepKey]] = []
    pipelines: list[tuple[str, int, tuple[StepKey, ...]]] = []
    received = {name: frozenset[str]().union(*(g.nodes[p]["labels"] for p in g.predecessors(name)))
                for name in g.nodes}
    for comp in df.components:
        comp_edges = list(g.subgraph(comp.nodes).edges)
        paths = [p for p in program.pipelines.values() if p.flow[0] in comp.nodes]
        for r in range(comp.replicas):
            for name in comp.nodes:
                key = step_key(program, name, r)
                if key in steps:
                    continue
                node = g.nodes[name]
                labels, device = received[name], None
                if name in program.sensors:
                    device = program.devices[program.sensors[name].device].instance(r)
                    labels = node["labels"]
                elif name in program.sinks:
                    device = program.devices[program.sinks[name].device].instance(r)
                steps[key] = Step(key, node["kind"], rates[name], program.output_bytes(name),
                                  labels, node["labels"], device)
            edges.extend((step_key(program, u, r), step_key(program, v, r)) for u, v in comp_edges)
            pipelines.extend((p.name, r, tuple(step_key(program, s, r) for s in p.flow))
                             for p in paths)
    instances = {name: (d, i) for d in program.devices.values()
                 for i, name in enumerate(d.instances())}
    return ExecutionGraph(program, df, steps, tuple(edges), tuple(pipelines), instances,
                          instance_graph(program.devices, program.links))
