"""The placement problem and LANGUAGE.md's cost model, in one place: the replicated steps with
their candidate device instances, rates, work, memory and privacy labels; the split options of
every `split = auto` model; routes between instances; and the evaluation of an assignment
(latencies, utilisation, memory, link loads, objective). The MILP, the baselines and the brute
force all read this module; `edgeflow.plan.verify` recomputes everything on its own.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from functools import lru_cache

import networkx as nx
import onnx

from edgeflow import ir
from edgeflow.dataflow import Dataflow, build, instance, instance_graph
from edgeflow.models.analysis import analyse, weight_bytes_of
from edgeflow.models.cuts import CutProblem

Step = tuple[str, int | None]  # (declared name, replica); None for a sink shared by all replicas


@dataclass(frozen=True)
class CutOption:
    tensors: tuple[str, ...]
    head_work: int
    tail_work: int
    transfer_bytes: int
    head_weights: int
    tail_weights: int


@dataclass(frozen=True)
class ModelCost:
    work: float
    weights: int
    output_bytes: int
    cuts: tuple[CutOption, ...]  # empty for split = none


@dataclass
class StepInfo:
    step: Step
    kind: str                     # sensor, operator, model, actuator, store
    rate: float                   # runs per second (the lowest of its inputs' rates)
    work: float                   # FLOP per run (whole model for models)
    memory: float                 # bytes
    out_bytes: int                # bytes of one output message
    labels: frozenset[str]        # labels of what it receives (sinks, units) or emits (sensors)
    candidates: list[str]         # device instances it may run on
    cuts: tuple[CutOption, ...] = ()

    @property
    def name(self) -> str:
        return self.step[0]

    @property
    def is_unit(self) -> bool:
        return self.kind in ("operator", "model")

    @property
    def splittable(self) -> bool:
        return bool(self.cuts)


@dataclass(frozen=True)
class Route:
    seconds: float
    hops: tuple[str, ...]         # instances from source to destination

    @property
    def links(self) -> list[tuple[str, str]]:
        return list(zip(self.hops, self.hops[1:]))


@lru_cache(maxsize=64)
def _model_cost(source: str, inputs: tuple[tuple[str, tuple[int, ...]], ...], split: bool,
                ) -> ModelCost:
    analysis = analyse(onnx.load(source), dict(inputs))
    problem = CutProblem(analysis)
    out_bytes = sum(analysis.tensors[o].nbytes for o in analysis.outputs)
    weights = weight_bytes_of(analysis, analysis.dynamic_nodes())
    cuts: list[CutOption] = []
    if split:
        front, _ = problem.pareto()
        for cut in front:
            head = [problem.nodes[v] for v in cut.head]
            tail = [n for v, n in problem.nodes.items() if v not in cut.head]
            cuts.append(CutOption(cut.tensors, cut.head_work, cut.tail_work, cut.transfer_bytes,
                                  weight_bytes_of(analysis, head), weight_bytes_of(analysis, tail)))
    return ModelCost(problem.total_work, weights, out_bytes, tuple(cuts))


def model_cost(model: ir.Model) -> ModelCost:
    return _model_cost(model.source, tuple((n, t.shape) for n, t in model.inputs.items()),
                       model.split == "auto")


@dataclass
class Problem:
    program: ir.Program
    dataflow: Dataflow
    steps: dict[Step, StepInfo]
    edges: list[tuple[Step, Step]]                 # producer -> consumer, replicated
    pipelines: list[tuple[str, int, list[Step]]]   # (pipeline, replica, steps along its flow)
    instances: dict[str, tuple[ir.Device, int]]    # instance -> (device, index)
    graph: nx.Graph                                # instances and links
    # fraction of an instance's or a directed link's capacity this problem may use (1 unless
    # it stands for one replica of a symmetric app, see milp.symmetric_start)
    share: dict[object, float] = field(default_factory=dict)
    _routes: dict[tuple[str, str, int, frozenset[str]], Route | None] = field(
        default_factory=dict)

    # ------------------------------------------------------------------ cost model
    def device(self, inst: str) -> ir.Device:
        return self.instances[inst][0]

    def tier_allows(self, inst: str, labels: frozenset[str]) -> bool:
        tier = self.device(inst).tier
        return all(tier in self.program.privacy[lb].allow for lb in labels)

    def compute_s(self, work: float, inst: str) -> float:
        return work / self.device(inst).compute_flops

    def route(self, a: str, b: str, nbytes: int, labels: frozenset[str]) -> Route | None:
        """The fastest route for a message of `nbytes` from `a` to `b` through instances whose
        tier every label allows; None if there is none. Zero-time for a == b."""
        if a == b:
            return Route(0.0, (a,))
        key = (a, b, nbytes, labels)
        if key not in self._routes:
            self._routes[key] = self._dijkstra(a, b, nbytes, labels)
        return self._routes[key]

    def _dijkstra(self, a: str, b: str, nbytes: int, labels: frozenset[str]) -> Route | None:
        if not (self.tier_allows(a, labels) and self.tier_allows(b, labels)):
            return None
        best = {a: 0.0}
        prev: dict[str, str] = {}
        heap = [(0.0, a)]
        while heap:
            dist, node = heapq.heappop(heap)
            if node == b:
                hops = [b]
                while hops[-1] != a:
                    hops.append(prev[hops[-1]])
                return Route(dist, tuple(reversed(hops)))
            if dist > best[node]:
                continue
            for nxt, data in self.graph[node].items():
                if not self.tier_allows(nxt, labels):
                    continue
                link: ir.Link = data["link"]
                cand = dist + 8 * nbytes / link.bandwidth_bps + link.latency_s
                if cand < best.get(nxt, float("inf")) - 1e-15:
                    best[nxt], prev[nxt] = cand, node
                    heapq.heappush(heap, (cand, nxt))
        return None

    def capacity(self, key: object) -> float:
        return self.share.get(key, 1.0)

    def link_of(self, a: str, b: str) -> ir.Link:
        return self.graph[a][b]["link"]  # type: ignore[no-any-return]


def _rates(df: Dataflow, program: ir.Program) -> dict[str, float]:
    rates: dict[str, float] = {}
    for name in nx.topological_sort(df.graph):
        if name in program.sensors:
            rates[name] = program.sensors[name].rate_hz
        else:
            rates[name] = min(rates[p] for p in df.graph.predecessors(name))
    return rates


def build_problem(program: ir.Program) -> Problem:
    df = build(program)
    graph = instance_graph(program.devices, program.links)
    instances = {name: (d, i) for d in program.devices.values()
                 for i, name in enumerate(d.instances())}
    rates = _rates(df, program)
    steps: dict[Step, StepInfo] = {}
    edges: list[tuple[Step, Step]] = []
    pipelines: list[tuple[str, int, list[Step]]] = []
    for comp in df.components:
        n = comp.replicas
        for r in range(n):
            shared = [d for d in program.devices.values() if d.count == 1]
            own = [d for d in program.devices.values() if d.count == n and n > 1]
            pool = [instance(d, r) for d in [*own, *shared]]

            def step_of(name: str, r: int = r) -> Step:
                if name in program.sinks:
                    dev = program.devices[program.sinks[name].device]
                    return (name, None if dev.count == 1 else r)
                return (name, r)

            for name in comp.nodes:
                step = step_of(name)
                if step in steps:
                    continue
                node = df.graph.nodes[name]
                kind, labels = node["kind"], node["labels"]
                if name in program.sensors:
                    dev = program.devices[program.sensors[name].device]
                    cands, work, memory = [instance(dev, r)], 0.0, 0.0
                elif name in program.sinks:
                    dev = program.devices[program.sinks[name].device]
                    cands, work, memory = [instance(dev, r if dev.count > 1 else 0)], 0.0, 0.0
                    labels = frozenset().union(*(df.graph.nodes[p]["labels"]
                                                 for p in df.graph.predecessors(name)))
                else:
                    cands = list(pool)
                    if name in program.operators:
                        op = program.operators[name]
                        work, memory = op.work_flop, op.memory_bytes
                    else:
                        cost = model_cost(program.models[name])
                        work, memory = cost.work, float(cost.weights)
                    labels = frozenset().union(*(df.graph.nodes[p]["labels"]
                                                 for p in df.graph.predecessors(name)))
                info = StepInfo(step, kind, rates[name], work, memory,
                                program.output_bytes(name), labels, cands)
                if name in program.models and program.models[name].split == "auto":
                    info.cuts = model_cost(program.models[name]).cuts
                steps[step] = info
            for u, v in df.graph.subgraph(comp.nodes).edges:
                edges.append((step_of(u), step_of(v)))
            for p in program.pipelines.values():
                if p.flow[0] in comp.nodes:
                    pipelines.append((p.name, r, [step_of(s) for s in p.flow]))
    # the labels a unit's *output* carries decide the privacy of what it sends
    return Problem(program, df, steps, edges, pipelines, instances, graph)


def out_labels(problem: Problem, step: Step) -> frozenset[str]:
    """Labels of what `step` sends downstream."""
    labels = problem.dataflow.graph.nodes[step[0]]["labels"]
    return labels  # type: ignore[no-any-return]
