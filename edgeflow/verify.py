"""The independent verifier of a Plan.

`verify` recomputes every latency, utilisation, memory figure, link load, privacy condition and
objective term that plan.json states (the Plan's published view) from it and the IR, sharing no
code with the placement package: its own replica bookkeeping, its own routes (networkx shortest
paths over the allowed instances), its own arithmetic. Every plan the solver returns passes it,
in every test. It also recomputes each unit's compute share and memory (what the bundle requests
for it). Objective terms beyond the built-in latency, cost and energy are not recomputed.
"""

from __future__ import annotations

import itertools
from collections import defaultdict

import networkx as nx
import onnx

from edgeflow import ir
from edgeflow.dataflow import build, instance_graph
from edgeflow.models.analysis import analyse, weight_bytes_of
from edgeflow.models.cuts import CutProblem
from edgeflow.plan import Plan

REL = 1e-6  # relative tolerance on recomputed figures
HEADER = ir.MESSAGE_HEADER_BYTES  # what the cost model adds to every message (a declared constant)


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= REL * max(abs(a), abs(b)) + 1e-9


class _Models:
    """Work and weights of whole models (and their variants) and of cuts, from the ONNX
    files; whether a variant runs at int8 speed, and whether it may run at all."""

    def __init__(self, program: ir.Program) -> None:
        self.sources: dict[tuple[str, str | None], tuple[str, dict[str, tuple[int, ...]]]] = {}
        self.int8: dict[tuple[str, str | None], bool] = {}
        self.allowed: dict[tuple[str, str | None], bool] = {}
        self._problems: dict[tuple[str, str | None], CutProblem] = {}
        for name, model in program.models.items():
            shapes = {n: t.shape for n, t in model.inputs.items()}
            files = [(None, model.source, False, 1.0)] + [
                (v.name, v.source, v.int8, v.fidelity) for v in model.variants]
            for variant, source, int8, fidelity in files:
                key = (name, variant)
                self.sources[key] = (source, shapes)
                self.int8[key] = int8
                floor = model.min_fidelity
                self.allowed[key] = floor is None or (fidelity is not None and fidelity >= floor)

    def problem(self, key: tuple[str, str | None]) -> CutProblem:
        """The cut problem of a model or variant file, analysed when first needed (a variant
        no plan runs need not be made)."""
        if key not in self._problems:
            source, shapes = self.sources[key]
            if not source:
                raise ValueError(f"variant {key[1]} of {key[0]} was never made: verify against "
                                 "the program the plan was made from")
            self._problems[key] = CutProblem(analyse(onnx.load(source), shapes))
        return self._problems[key]

    def whole(self, name: str, variant: str | None = None) -> tuple[int, int]:
        p = self.problem((name, variant))
        return p.total_work, weight_bytes_of(p.analysis, p.nodes.values())

    def cut(self, name: str, tensors: list[str], variant: str | None = None,
            ) -> tuple[int, int, int, int, int]:
        p = self.problem((name, variant))
        c = p.from_tensors(tensors)
        head = [p.nodes[v] for v in c.head]
        tail = [n for v, n in p.nodes.items() if v not in c.head]
        return (c.head_work, c.tail_work, c.transfer_bytes, weight_bytes_of(p.analysis, head),
                weight_bytes_of(p.analysis, tail))


def verify(placed: Plan, program: ir.Program) -> list[str]:
    """Every way `placed` breaks the program's constraints or misreports a figure; [] if none."""
    plan = placed.to_dict()
    if plan.get("status") == "infeasible":
        return []
    problems: list[str] = []
    df = build(program)
    graph = instance_graph(program.devices, program.links)
    tiers = {n: d["tier"] for n, d in graph.nodes(data=True)}
    device_of = {inst: dev for dev in program.devices.values() for inst in dev.instances()}
    models = _Models(program)
    where: dict[tuple[str, int], str] = {}
    variant: dict[tuple[str, int], str | None] = {}  # of each model replica
    for p in plan["placements"]:
        where[(p["unit"], p["replica"])] = p["device"]
        model = p["unit"].split(".")[0]
        if model not in program.models:
            continue
        replica = (model, p["replica"])
        if replica in variant and variant[replica] != p.get("variant"):
            problems.append(f"{model} replica {p['replica']}: its head and tail run different "
                            f"variants ({variant[replica]}, {p.get('variant')})")
        variant[replica] = p.get("variant")
        if (model, p.get("variant")) not in models.sources:
            problems.append(f"{p['unit']}: unknown variant {p.get('variant')}")
        elif not models.allowed[(model, p.get("variant"))]:
            problems.append(f"{p['unit']} replica {p['replica']}: variant {p.get('variant')} "
                            "is below the model's fidelity floor")
    if problems:
        return problems
        if p["device"] not in device_of:
            problems.append(f"unknown device instance {p['device']}")
        elif tiers[p["device"]] != p["tier"]:
            problems.append(f"{p['unit']}: tier of {p['device']} misreported")
    splits = {(s["model"], s["replica"]): s for s in plan["splits"]}

    def speed(inst: str, int8: bool) -> float:
        """Operations per second of `inst` for float work, or an int8 variant's."""
        dev = device_of[inst]
        return (dev.compute_int8_ops or dev.compute_flops) if int8 else dev.compute_flops

    def allowed(inst: str, labels: frozenset[str]) -> bool:
        return all(tiers[inst] in {t.value for t in program.privacy[lb].allow} for lb in labels)

    def broker(at: str, nbytes: int) -> float:
        """One message through the broker of `at` (docs/placement.md, "Messages")."""
        dev = device_of[at]
        return dev.message_latency_s + (nbytes + HEADER) * 8 / dev.message_bandwidth_bps

    def route(a: str, b: str, nbytes: int, labels: frozenset[str]) -> tuple[float, list[str]]:
        if a == b:
            return broker(a, nbytes), [a]
        sub = graph.subgraph([n for n in graph if allowed(n, labels)])
        wire = nbytes + HEADER
        try:
            hops = nx.shortest_path(sub, a, b, weight=lambda u, v, d: 8 * wire /
                                    d["link"].bandwidth_bps + d["link"].latency_s)
        except (nx.NetworkXNoPath, nx.NodeNotFound):
            problems.append(f"no allowed route from {a} to {b} for labels {sorted(labels)}")
            return float("inf"), [a, b]
        seconds = sum(8 * wire / graph[u][v]["link"].bandwidth_bps + graph[u][v]["link"]
                      .latency_s for u, v in itertools.pairwise(hops))
        return seconds + broker(a, nbytes) + broker(b, nbytes), hops

    util: dict[str, float] = defaultdict(float)
    memory: dict[str, float] = defaultdict(float)
    workers: dict[str, int] = defaultdict(int)  # unit processes per instance
    drivers: set[tuple[str, str]] = set()       # (sensor or sink, instance)
    brokers: set[str] = set()                   # where a client sits or a route passes
    load: dict[tuple[str, str], float] = defaultdict(float)
    hosts: set[str] = set()
    rates: dict[str, float] = {}
    for name in nx.topological_sort(df.graph):
        rates[name] = program.sensors[name].rate_hz if name in program.sensors else min(
            rates[q] for q in df.graph.predecessors(name))

    def in_labels(name: str) -> frozenset[str]:
        if name in program.sensors:
            return frozenset(program.sensors[name].privacy)
        return frozenset().union(*(df.graph.nodes[q]["labels"]
                                   for q in df.graph.predecessors(name)))

    # locations (in, out) of every step of every replica, and the units' own costs
    loc: dict[tuple[str, int], tuple[str, str]] = {}
    comp_ms: dict[tuple[str, int], list[tuple[str, str, float, bool]]] = {}  # unit, at, work, int8
    inner: dict[tuple[str, int], tuple[float, list[str], int]] = {}
    needs: dict[tuple[str, int], tuple[float, float, tuple[str, ...]]] = {}  # work, memory, cut
    for comp in df.components:
        for r in range(comp.replicas):
            for name in comp.nodes:
                if name in program.sensors or name in program.sinks:
                    decl = program.sensors.get(name) or program.sinks[name]
                    pinned = program.devices[decl.device].instance(r)
                    loc[(name, r)] = (pinned, pinned)
                    drivers.add((name, pinned))
                    brokers.add(pinned)
                elif (name, r) in splits:
                    s = splits[(name, r)]
                    head = where.get((f"{name}.head", r))
                    tail = where.get((f"{name}.tail", r))
                    if head is None or tail is None:
                        problems.append(f"split model {name} replica {r} is not placed")
                        continue
                    var = variant.get((name, r))
                    if s.get("variant") != var:
                        problems.append(f"{name} replica {r}: split variant {s.get('variant')}"
                                        f" is not the placed {var}")
                    try:
                        hw, tw, nbytes, hm, tm = models.cut(name, s["cut"], var)
                    except ValueError as exc:  # not a cut of that variant's graph
                        problems.append(f"{name} replica {r}: {exc}")
                        continue
                    fast = models.int8[(name, var)]
                    for key, mine in (("head_work_flop", hw), ("tail_work_flop", tw),
                                      ("transfer_bytes", nbytes)):
                        if not _close(float(s[key]), float(mine)):
                            problems.append(f"{name} replica {r}: {key} {s[key]} != {mine}")
                    loc[(name, r)] = (head, tail)
                    comp_ms[(name, r)] = [(f"{name}.head", head, hw, fast),
                                          (f"{name}.tail", tail, tw, fast)]
                    memory[head] += -(-hm // 1024) * 1024
                    memory[tail] += -(-tm // 1024) * 1024
                    needs[(f"{name}.head", r)] = (hw, hm, tuple(s["cut"]))
                    needs[(f"{name}.tail", r)] = (tw, tm, tuple(s["cut"]))
                    seconds, hops = route(head, tail, nbytes, in_labels(name))
                    inner[(name, r)] = (seconds, hops, nbytes)
                    brokers.update(hops)
                    for u, v in itertools.pairwise(hops):
                        load[(u, v)] += rates[name] * 8 * (nbytes + HEADER)
                else:
                    at = where.get((name, r))
                    if at is None:
                        problems.append(f"{name} replica {r} is not placed")
                        continue
                    fast = False
                    if name in program.operators:
                        work, mem = program.operators[name].work_flop, \
                            program.operators[name].memory_bytes
                    else:
                        try:
                            work, mem = models.whole(name, variant.get((name, r)))
                        except ValueError as exc:  # a variant that was never made
                            problems.append(f"{name} replica {r}: {exc}")
                            continue
                        fast = models.int8[(name, variant.get((name, r)))]
                    loc[(name, r)] = (at, at)
                    comp_ms[(name, r)] = [(name, at, work, fast)]
                    memory[at] += -(-mem // 1024) * 1024  # whole KiB, as requested
                    needs[(name, r)] = (work, mem, ())
                for unit, at, work, fast in comp_ms.get((name, r), []):
                    util[at] += rates[name] * work / speed(at, fast)
                    hosts.add(at)
                    workers[at] += 1
                    brokers.add(at)
                if name not in program.sensors and (name, r) in loc:
                    for at in set(loc[(name, r)]):
                        if not allowed(at, in_labels(name)):
                            problems.append(f"{name} replica {r} on {at} breaks privacy")
    if problems:
        return problems
    # what each unit replica asks of its device (the bundle's resource requests come from it)
    for pu in placed.units:
        work, mem, cut = needs[(pu.name, pu.replica)]
        fast = pu.step in program.models and models.int8[(pu.step, pu.variant)]
        share = rates[pu.step] * work / speed(pu.device, fast)
        if not (_close(pu.compute_share, share) and _close(pu.memory_bytes, mem)) or pu.cut != cut:
            problems.append(f"{pu.name} replica {pu.replica}: compute share, memory or cut "
                            "misreported")
    # messages: once per distinct destination instance of each producer
    sent: set[tuple[str, int, str]] = set()
    for comp in df.components:
        for r in range(comp.replicas):
            for u, v in df.graph.subgraph(comp.nodes).edges:
                a, b = loc[(u, r)][1], loc[(v, r)][0]
                nbytes = program.output_bytes(u)
                if a == b or (u, r, b) in sent:
                    continue
                sent.add((u, r, b))
                _, hops = route(a, b, nbytes, df.graph.nodes[u]["labels"])
                brokers.update(hops)
                for x, y in itertools.pairwise(hops):
                    load[(x, y)] += rates[u] * 8 * (nbytes + HEADER)
    # pipelines
    reported = {(p["name"], p["replica"]): p for p in plan["pipelines"]}
    worst: dict[str, float] = defaultdict(float)
    for comp in df.components:
        for r in range(comp.replicas):
            for p in program.pipelines.values():
                if p.flow[0] not in comp.nodes:
                    continue
                total = 0.0
                for i, name in enumerate(p.flow):
                    if i > 0:
                        prev = p.flow[i - 1]
                        total += route(loc[(prev, r)][1], loc[(name, r)][0],
                                       program.output_bytes(prev),
                                       df.graph.nodes[prev]["labels"])[0]
                    for _, at, work, fast in comp_ms.get((name, r), []):
                        total += work / speed(at, fast)
                    if (name, r) in inner:
                        total += inner[(name, r)][0]
                worst[p.name] = max(worst[p.name], total)
                got = reported.get((p.name, r))
                if got is None:
                    problems.append(f"pipeline {p.name} replica {r} missing from the plan")
                    continue
                if not _close(got["latency_ms"], total * 1e3):
                    problems.append(f"pipeline {p.name} replica {r}: latency {got['latency_ms']}"
                                    f" ms reported, {total * 1e3} ms recomputed")
                if not _close(sum(b["ms"] for b in got["breakdown"]), got["latency_ms"]):
                    problems.append(f"pipeline {p.name} replica {r}: breakdown does not sum")
                slo = p.slo.latency_s
                if slo is not None and total > slo * (1 + REL):
                    problems.append(f"pipeline {p.name} replica {r} misses its SLO")
                if got["met"] != (slo is None or total <= slo * (1 + REL)):
                    problems.append(f"pipeline {p.name} replica {r}: `met` misreported")
    # the runtime's processes (docs/placement.md, "Runtime"): a worker per unit, a broker, a
    # driver per sensor and sink
    cpu: dict[str, float] = defaultdict(float)
    for inst in brokers:
        dev = device_of[inst]
        mine = sum(at == inst for _, at in drivers)
        memory[inst] += workers[inst] * dev.worker_memory_bytes + dev.broker_memory_bytes + \
            mine * dev.driver_memory_bytes
        cpu[inst] = util[inst] + (workers[inst] * ir.WORKER_CPU + ir.BROKER_CPU +
                                  mine * ir.DRIVER_CPU) / dev.cpus
    for inst, share in cpu.items():
        if share > 1 + REL:
            problems.append(f"{inst} over its CPU: {share:.3f}")
    for inst, m in memory.items():
        if m > device_of[inst].memory_bytes * (1 + REL):
            problems.append(f"{inst} over its memory: {m}")
    for (a, b), bps in load.items():
        if bps > graph[a][b]["link"].bandwidth_bps * (1 + REL):
            problems.append(f"link {a} -> {b} over its bandwidth: {bps}")
    for d in plan["devices"]:
        if not _close(d["utilization"], util.get(d["device"], 0.0)) or not _close(
                d["memory_bytes"], memory.get(d["device"], 0.0)) or not _close(
                d["cpu"], cpu.get(d["device"], 0.0)):
            problems.append(f"device {d['device']}: utilisation, CPU or memory misreported")
    for lk in plan["links"]:
        bw = graph[lk["from"]][lk["to"]]["link"].bandwidth_bps
        if not _close(lk["utilization"], load.get((lk["from"], lk["to"]), 0.0) / bw):
            problems.append(f"link {lk['from']} -> {lk['to']}: utilisation misreported")
    traffic = sum(bps / 8 * 3600 * graph[a][b]["link"].cost_usd_per_byte
                  for (a, b), bps in load.items())
    objective = {
        "latency_ms": sum(worst.values()) * 1e3,
        "cost_usd_per_h": sum(device_of[i].cost_usd_per_s * 3600 for i in hosts) + traffic,
        "energy_w": sum(device_of[i].power_w * u for i, u in util.items()),
    }
    for key, value in objective.items():
        if key not in plan["objective"] or not _close(plan["objective"][key], value):
            problems.append(f"objective {key}: {plan['objective'][key]} reported, {value} "
                            "recomputed")
    return problems
