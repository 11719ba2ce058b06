"""The placement problem: the execution graph's steps with the device instances each may run
on, their work, memory and privacy labels, the split options of every `split = auto` model, and
the fastest allowed routes between instances, all priced by `edgeflow.cost`. The MILP,
the evaluator, the explanations, the baselines and the brute force of the tests read it.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from edgeflow import ir
from edgeflow.cost import (
    CutOption,
    compute_s,
    hop_s,
    message_s,
    model_cost,
    runtime_cpu,
    runtime_memory_bytes,
)
from edgeflow.dataflow import Dataflow
from edgeflow.execution import ExecutionGraph, StepKey
from edgeflow.execution import Step as ExecStep
from edgeflow.routing import fastest_route, fastest_times

Step = StepKey  # (declared name, replica); None for a sink shared by all replicas


@dataclass(frozen=True)
class Variant:
    """A version of a model placement may run: the model itself (`name` None) or a declared
    variant whose fidelity meets the model's floor."""

    name: str | None
    work: float                   # FLOP (or int8 operations) per run
    memory: float                 # weight bytes
    cuts: tuple[CutOption, ...]   # its Pareto cuts (`split = auto`)
    int8: bool = False            # runs at its device's int8 rate
    fidelity: float | None = 1.0  # None: a variant not measured (allowed without a floor)


@dataclass(frozen=True)
class StepInfo:
    """A step of the execution graph with what placing it needs."""

    node: ExecStep
    work: float                   # FLOP per run (whole model for models)
    memory: float                 # bytes
    candidates: list[str]         # device instances it may run on
    cuts: tuple[CutOption, ...] = ()  # a `split = auto` model's Pareto cuts
    # a model with variants to choose from: the model itself first, then the variants that
    # meet its fidelity floor; empty when there is no choice (then work, memory, cuts are it)
    variants: tuple[Variant, ...] = ()

    def variant(self, index: int) -> Variant:
        """Variant `index` (0: the model itself)."""
        return self.variants[index] if self.variants else \
            Variant(None, self.work, self.memory, self.cuts)

    @property
    def options(self) -> tuple[Variant, ...]:
        return self.variants or (self.variant(0),)

    @property
    def chooses(self) -> bool:
        """Whether placement chooses among variants of this model."""
        return len(self.variants) > 1

    @property
    def step(self) -> Step:
        return self.node.key

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def kind(self) -> str:
        return self.node.kind

    @property
    def rate(self) -> float:
        return self.node.rate_hz

    @property
    def out_bytes(self) -> int:
        return self.node.out_bytes

    @property
    def labels(self) -> frozenset[str]:
        return self.node.labels

    @property
    def is_unit(self) -> bool:
        return self.node.is_unit

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


@dataclass
class Problem:
    execution: ExecutionGraph
    steps: dict[Step, StepInfo]
    # fraction of an instance's or a directed link's capacity this problem may use (1 unless
    # it stands for one replica of a symmetric app, see milp.symmetric_start)
    share: dict[object, float] = field(default_factory=dict)
    # sensors' and sinks' drivers per instance (pinned: a process there whatever is decided),
    # and of them the sinks' that all replicas share
    drivers: dict[str, int] = field(default_factory=dict)
    shared_drivers: dict[str, int] = field(default_factory=dict)
    # a part of a larger problem (placement/decompose.py) sees what the rest of the plan
    # already takes: CPU share (`("cpu", inst)`) and bytes (`("memory", inst)`) of instances,
    # bit/s of directed links; the instances where a broker runs whatever this part decides;
    # and the priced instances whose hosting the rest already pays
    taken: Mapping[object, float] = field(default_factory=dict)
    brokered: Container[str] = frozenset()
    hosted: Container[str] = frozenset()
    _routes: dict[tuple[str, str, int, frozenset[str]], Route | None] = field(
        default_factory=dict)
    _allowed: dict[frozenset[str], frozenset[str]] = field(default_factory=dict)
    _times: dict[tuple[str, int, frozenset[str]], np.ndarray] = field(default_factory=dict)
    _messages: dict[int, np.ndarray] = field(default_factory=dict)
    _index: dict[str, int] = field(default_factory=dict)

    @property
    def program(self) -> ir.Program:
        return self.execution.program

    @property
    def dataflow(self) -> Dataflow:
        return self.execution.dataflow

    @property
    def edges(self) -> tuple[tuple[Step, Step], ...]:
        return self.execution.edges

    @property
    def pipelines(self) -> tuple[tuple[str, int, tuple[Step, ...]], ...]:
        return self.execution.pipelines

    @property
    def instances(self) -> dict[str, tuple[ir.Device, int]]:
        return self.execution.instances

    @property
    def graph(self) -> nx.Graph:
        return self.execution.network

    # ------------------------------------------------------------------ cost model
    def device(self, inst: str) -> ir.Device:
        return self.instances[inst][0]

    def tier_allows(self, inst: str, labels: frozenset[str]) -> bool:
        tier = self.device(inst).tier
        return all(tier in self.program.privacy[lb].allow for lb in labels)

    def compute_s(self, work: float, inst: str, int8: bool = False) -> float:
        return compute_s(work, self.device(inst), int8)

    def route(self, a: str, b: str, nbytes: int, labels: frozenset[str]) -> Route | None:
        """The fastest route for a message of `nbytes` from `a` to `b` through instances whose
        tier every label allows; None if there is none. Its seconds count the brokers too: one
        for a == b, the sender's and the receiver's otherwise (`cost.message_s`)."""
        if a == b:
            return Route(message_s(nbytes, self.device(a)), (a,))
        key = (a, b, nbytes, labels)
        if key not in self._routes:
            found = self._dijkstra(a, b, nbytes, labels)
            self._routes[key] = found if found is None else Route(
                found.seconds + message_s(nbytes, self.device(a))
                + message_s(nbytes, self.device(b)), found.hops)
        return self._routes[key]

    def _dijkstra(self, a: str, b: str, nbytes: int, labels: frozenset[str]) -> Route | None:
        found = fastest_route(self.graph, a, b, nbytes, self.allowed(labels).__contains__)
        return None if found is None else Route(*found)

    def times_from(self, a: str, nbytes: int, labels: frozenset[str]) -> np.ndarray:
        """`route(a, b, nbytes, labels).seconds` for every instance `b` at once, indexed as
        `index` numbers them (inf where no route reaches); one search, kept."""
        key = (a, nbytes, labels)
        if key not in self._times:
            if nbytes not in self._messages:  # every instance's broker's seconds for nbytes
                self._messages[nbytes] = np.array([message_s(nbytes, d)
                                                   for d, _ in self.instances.values()])
            out = np.full(len(self.instances), np.inf)
            for b, t in fastest_times(self.graph, a, nbytes,
                                      self.allowed(labels).__contains__).items():
                out[self.index[b]] = t
            here = message_s(nbytes, self.device(a))
            out += here
            out += self._messages[nbytes]
            out[self.index[a]] = here if np.isfinite(out[self.index[a]]) else np.inf
            self._times[key] = out
        return self._times[key]

    @property
    def index(self) -> dict[str, int]:
        """Instances numbered in declaration order (`times_from`'s arrays)."""
        if not self._index:
            self._index.update((inst, k) for k, inst in enumerate(self.instances))
        return self._index

    def allowed(self, labels: frozenset[str]) -> frozenset[str]:
        """The instances whose tier every label allows."""
        if labels not in self._allowed:
            self._allowed[labels] = frozenset(i for i in self.instances
                                              if self.tier_allows(i, labels))
        return self._allowed[labels]

    def capacity(self, key: object) -> float:
        return self.share.get(key, 1.0)

    def cpu_room(self, inst: str) -> float:
        """The share of `inst`'s CPU this problem may reserve."""
        return self.capacity(inst) - self.taken.get(("cpu", inst), 0.0)

    def memory_room(self, inst: str) -> float:
        """The bytes of `inst`'s memory this problem may reserve."""
        return self.device(inst).memory_bytes * self.capacity(inst) - \
            self.taken.get(("memory", inst), 0.0)

    def link_room(self, link: tuple[str, str]) -> float:
        """The bit/s of a directed link this problem may load."""
        return self.link_of(*link).bandwidth_bps * self.capacity(link) - \
            self.taken.get(link, 0.0)

    def drivers_need(self, inst: str) -> tuple[float, float]:
        """Memory and CPU share the drivers on `inst` take as this problem counts them: a
        driver all replicas share pays only this problem's share of the instance (a
        one-replica problem of `milp.symmetric_start`), a replica's own driver in full."""
        shared = self.shared_drivers.get(inst, 0)
        weight = self.drivers.get(inst, 0) - shared + shared * self.capacity(inst)
        dev = self.device(inst)
        return weight * runtime_memory_bytes(dev, False, 1), weight * runtime_cpu(dev, False, 1)

    def link_of(self, a: str, b: str) -> ir.Link:
        return self.graph[a][b]["link"]  # type: ignore[no-any-return]


def build_problem(graph: ExecutionGraph) -> Problem:
    """The problem of placing the steps of an execution graph."""
    program = graph.program
    used = {name for name, _ in graph.steps}
    costs = {name: model_cost(m) for name, m in program.models.items() if name in used}
    shared = [d for d in program.devices.values() if d.count == 1]
    pools: dict[tuple[int, int], list[str]] = {}  # (replicas, replica) -> instances

    def pool(n: int, r: int) -> list[str]:
        """Where a unit of replica r of an n-replica component may run: its site's own
        devices (count n) and every single device."""
        if (n, r) not in pools:
            own = [d for d in program.devices.values() if d.count == n and n > 1]
            pools[(n, r)] = [d.instance(r) for d in [*own, *shared]]
        return pools[(n, r)]

    choices = {name: variants_of(program.models[name]) for name in costs}
    steps: dict[Step, StepInfo] = {}
    for key, step in graph.steps.items():
        name, r = key
        if step.device is not None:  # sensors and sinks sit where they are declared
            cands, work, memory = [step.device], 0.0, 0.0
        else:
            assert r is not None
            cands = list(pool(graph.replicas(name), r))
            if name in program.operators:
                work, memory = program.operators[name].work_flop, \
                    program.operators[name].memory_bytes
            else:
                work, memory = costs[name].work, float(costs[name].weights)
        steps[key] = StepInfo(step, work, memory, cands,
                              costs[name].cuts if name in costs else (), choices.get(name, ()))
    _prune_by_slo(graph, steps)
    drivers: dict[str, int] = {}
    all_replicas: dict[str, int] = {}
    for (_, replica), info in steps.items():
        if not info.is_unit:
            drivers[info.candidates[0]] = drivers.get(info.candidates[0], 0) + 1
            if replica is None:
                all_replicas[info.candidates[0]] = all_replicas.get(info.candidates[0], 0) + 1
    return Problem(graph, steps, drivers=drivers, shared_drivers=all_replicas)


def variants_of(model: ir.Model) -> tuple[Variant, ...]:
    """The versions of `model` placement may choose from: itself, then each declared variant
    whose measured fidelity meets the model's `min_fidelity` (without a floor, every variant;
    with one, a variant not measured never meets it). Empty when only the model remains."""
    found = [Variant(None, *_costs(model))]
    for v in model.variants:
        if model.min_fidelity is not None and (v.fidelity is None or
                                               v.fidelity < model.min_fidelity):
            continue
        found.append(Variant(v.name, *_costs(model.model_copy(update={"source": v.source})),
                             int8=v.int8, fidelity=v.fidelity))
    return tuple(found) if len(found) > 1 else ()


def _costs(model: ir.Model) -> tuple[float, float, tuple[CutOption, ...]]:
    cost = model_cost(model)
    return cost.work, float(cost.weights), cost.cuts


def _prune_by_slo(graph: ExecutionGraph, steps: dict[Step, StepInfo]) -> None:
    """Drop the candidates a unit could never meet an SLO on: those where even an empty
    message from its pipeline's sensor, the unit's own work, and an empty message on to the
    pipeline's sink (over the fastest links, privacy ignored, through one broker at each end)
    exceed the pipeline's latency SLO. Exact: every dropped option breaks the SLO in any
    plan. Split models keep theirs (their halves run apart), and a unit left with no candidate
    keeps them all, so that the explanation can say why. On a fleet of single devices, where
    every device is a candidate of every unit, this removes most of them."""
    program = graph.program
    network = graph.network
    times: dict[str, dict[str, float]] = {}

    def reach(source: str) -> dict[str, float]:
        """Seconds of an empty message from `source` to every instance."""
        if source not in times:
            links = nx.single_source_dijkstra_path_length(
                network, source, weight=lambda u, v, d: hop_s(0, d["link"]))
            mine = message_s(0, graph.device(source))
            times[source] = {i: t + mine + (message_s(0, graph.device(i)) if i != source
                                            else 0.0) for i, t in links.items()}
        return times[source]

    keep: dict[Step, set[str]] = {}
    for name, replica, path in graph.pipelines:
        slo = program.pipelines[name].slo.latency_s
        if slo is None:
            continue
        first, last = steps[path[0]].candidates[0], steps[path[-1]].candidates[0]
        into, out_of = reach(first), reach(last)  # links are symmetric
        for step in path:
            info = steps[step]
            if not info.is_unit or info.splittable or info.chooses:
                continue
            fine = {i for i in info.candidates if i in into and i in out_of and
                    into[i] + compute_s(info.work, graph.device(i)) + out_of[i]
                    <= slo * (1 + 1e-9)}
            keep[step] = keep.get(step, set(info.candidates)) & fine
    for step, fine in keep.items():
        info = steps[step]
        if fine and len(fine) < len(info.candidates):
            steps[step] = StepInfo(info.node, info.work, info.memory,
                                   [i for i in info.candidates if i in fine], info.cuts,
                                   info.variants)


def out_labels(problem: Problem, step: Step) -> frozenset[str]:
    """Labels of what `step` sends downstream."""
    return problem.execution.steps[step].out_labels
