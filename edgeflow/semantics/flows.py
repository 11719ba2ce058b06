"""Dataflow checks over the valid parts of a program: flow shapes, cycles, tensor types between
producer and consumer, routes between sensors and sinks, throughput SLOs, replica counts, and
unused declarations and privacy labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from edgeflow import ir
from edgeflow.dataflow import flow_graph, instance_components
from edgeflow.diagnostics import DiagnosticSink, Label
from edgeflow.semantics.lowered import Lowered
from edgeflow.semantics.values import DECL_KIND_TEXT, closest, did_you_mean
from edgeflow.span import Span
from edgeflow.syntax import ast

_STEP_KINDS = ("operator", "model")
_SINK_KINDS = ("actuator", "store")


def _entry_value_span(decl: ast.Decl, key: str) -> Span:
    for entry in decl.entries:
        if entry.key.value == key:
            return entry.value.span
    return decl.name.span


def _check_steps(p: ir.Pipeline, out: Lowered, sink: DiagnosticSink) -> bool:
    decls = out.symbols.decls
    ok = True
    last = len(p.flow) - 1
    for i, (name, span) in enumerate(zip(p.flow, p.step_spans)):
        decl = decls.get(name)
        if decl is None and name in out.symbols.renamed:  # E0105 asks to rename to this name
            ok = False
            continue
        if decl is None:
            sink.error("E0101", f"no sensor, operator, model or sink named `{name}`", span,
                       "unknown name", help=did_you_mean(name, out.symbols.of_kind(
                           "sensor", "operator", "model", "actuator", "store")))
            ok = False
            continue
        here = Label(decl.name.span, f"`{name}` is declared here as {DECL_KIND_TEXT[decl.kind]}")
        if i == 0 and decl.kind != "sensor":
            sink.error("E0501", f"flow of pipeline `{p.name}` does not start at a sensor", span,
                       f"{DECL_KIND_TEXT[decl.kind]}, not a sensor", labels=(here,),
                       help=did_you_mean(name, out.symbols.of_kind("sensor"))
                       or "start the flow with a sensor")
            ok = False
        elif i == last and decl.kind not in _SINK_KINDS:
            sink.error("E0502", f"flow of pipeline `{p.name}` does not end at a sink", span,
                       f"{DECL_KIND_TEXT[decl.kind]}, not an actuator or store", labels=(here,),
                       help="end the flow with an actuator or a store")
            ok = False
        elif 0 < i < last and decl.kind not in _STEP_KINDS:
            sink.error("E0503", f"`{name}` cannot be a step in the middle of a flow", span,
                       f"{DECL_KIND_TEXT[decl.kind]}", labels=(here,),
                       help="steps between the sensor and the sink are operators or models")
            ok = False
        if name in out.broken:
            ok = False
    return ok


def _producer_types(name: str, out: Lowered) -> list[ir.TensorType] | None:
    if name in out.sensors:
        return [out.sensors[name].emits]
    if name in out.operators:
        return [out.operators[name].emits]
    if name in out.models:
        return list(out.models[name].outputs.values())
    return None


def _check_types(graph: nx.DiGraph, spans: dict[tuple[str, str], Span], out: Lowered,
                 sink: DiagnosticSink) -> None:
    decls = out.symbols.decls
    for u, v in graph.edges:
        model = out.models.get(v)
        produced = _producer_types(u, out)
        if model is None or produced is None:
            continue
        accepted = set(model.inputs.values())
        for tensor in produced:
            if tensor in accepted:
                continue
            takes = ", ".join(f"`{n}` {t}" for n, t in model.inputs.items())
            emitted_at = _entry_value_span(decls[u], "emits") if u not in out.models \
                else decls[u].name.span
            sink.error("E0505", f"`{u}` emits {tensor}, but model `{v}` takes {takes}",
                       spans[(u, v)], "tensor type mismatch",
                       labels=(Label(emitted_at, f"`{u}` emits {tensor}"),
                               Label(_entry_value_span(decls[v], "inputs"), f"`{v}` takes "
                                     f"{takes}")),
                       help="insert an operator that converts the tensor, or fix the declared "
                            "types")
            break


def _check_cycles(graph: nx.DiGraph, spans: dict[tuple[str, str], Span],
                  sink: DiagnosticSink) -> bool:
    acyclic = True
    for scc in nx.strongly_connected_components(graph):
        if len(scc) == 1 and not graph.has_edge(next(iter(scc)), next(iter(scc))):
            continue
        acyclic = False
        cycle = nx.find_cycle(graph.subgraph(scc))
        edges = sorted(((u, v) for u, v in cycle), key=lambda e: spans[e].start)
        names = " -> ".join([cycle[0][0]] + [v for _, v in cycle])
        first = edges[0]
        sink.error("E0504", f"the dataflow has a cycle: {names}", spans[first],
                   f"`{first[0]} -> {first[1]}`",
                   labels=tuple(Label(spans[e], f"`{e[0]} -> {e[1]}`") for e in edges[1:]),
                   help="break the cycle: a step cannot consume its own output")
    return acyclic


@dataclass
class Network:
    """The devices and links declared with a broken value (the valid ones are in `Lowered`):
    routes are checked over the network the user wrote, so a bad bandwidth is not also reported
    as a missing link. `complete` is False when a link does not join two different devices
    (E0401, E0402) or repeats one: the route it was meant to make is unknown, so no route is
    reported missing."""

    counts: dict[str, int | None] = field(default_factory=dict)  # device -> count, None: unknown
    links: list[tuple[str, str, Span]] = field(default_factory=list)
    complete: bool = True


def _route_graph(out: Lowered, network: Network | None,
                 ) -> tuple[dict[str, ir.Device], list[ir.Link], set[str]]:
    """Devices and links to find routes over, and the devices whose count is unknown. A device
    of unknown count is taken as one instance linked to every instance of its peers: that joins
    at least what the real count would, so no route is reported missing because of it."""
    if network is None or not (network.counts or network.links):
        return out.devices, [lk for lk in out.links
                             if lk.a in out.devices and lk.b in out.devices], set()
    devices = dict(out.devices)
    for name, count in network.counts.items():
        devices.setdefault(name, ir.Device.model_construct(
            name=name, span=out.symbols.decls[name].span, tier=ir.Tier.EDGE, compute_flops=1.0,
            memory_bytes=1.0, count=count or 1))
    links = [lk for lk in out.links if lk.a in devices and lk.b in devices]
    links += [ir.Link.model_construct(a=a, b=b, bandwidth_bps=1.0, latency_s=0.0, span=span)
              for a, b, span in network.links if a in devices and b in devices]
    unknown = {name for name, count in network.counts.items() if count is None}
    return devices, links, unknown


def _check_routes(valid: list[ir.Pipeline], out: Lowered, sink: DiagnosticSink,
                  network: Network | None = None) -> None:
    devices, links, unknown = _route_graph(out, network)
    reach = instance_components(devices, links)
    routes_known = network is None or network.complete
    for p in valid:
        sensor, target = out.sensors[p.flow[0]], out.sinks[p.flow[-1]]
        src_dev, dst_dev = devices.get(sensor.device), devices.get(target.device)
        if src_dev is None or dst_dev is None or {src_dev.name, dst_dev.name} & unknown:
            continue
        if dst_dev.count not in (1, src_dev.count):
            sink.error("E0508", f"`{target.name}` is on `{dst_dev.name}` (count "
                       f"{dst_dev.count}) but receives {src_dev.count} replicas",
                       p.step_spans[-1], "no instance for every replica",
                       labels=(Label(p.step_spans[0], f"`{sensor.name}` is on `{src_dev.name}` "
                                     f"(count {src_dev.count})"),),
                       help=f"put `{target.name}` on a device of count 1 or {src_dev.count}")
            continue
        for r in range(src_dev.count if routes_known else 0):
            a, b = src_dev.instance(r), dst_dev.instance(r)
            if reach[a] != reach[b]:
                sink.error("E0506", f"no route from `{a}` to `{b}` for pipeline `{p.name}`",
                           p.step_spans[-1], f"`{target.name}` is on `{b}`",
                           labels=(Label(p.step_spans[0], f"`{sensor.name}` is on `{a}`"),),
                           help=f"declare a link path between `{src_dev.name}` and "
                                f"`{dst_dev.name}`")
                break
        need = p.slo.throughput_hz
        if need is not None and need > sensor.rate_hz * (1 + 1e-12):
            sink.error("E0507", f"pipeline `{p.name}` asks for {need:g} Hz but `{sensor.name}` "
                       f"produces {sensor.rate_hz:g} Hz", p.slo_spans["throughput"],
                       "above the sensor rate",
                       labels=(Label(_entry_value_span(out.symbols.decls[sensor.name], "rate"),
                                     "the sensor's rate"),),
                       help="lower the throughput objective or raise the sensor's rate")


def _check_privacy(valid: list[ir.Pipeline], out: Lowered, sink: DiagnosticSink) -> None:
    """Data on a device its labels forbid, whatever the placement: a sensor carrying a label its
    device's tier may not hold, or a sink receiving (after the flow's `removes`) such a label.
    A flow's own labels are a lower bound of what reaches its sink, so this never reports a
    flow the placement could still satisfy."""
    reported: set[tuple[str, str]] = set()
    for p in valid:
        sensor, target = out.sensors[p.flow[0]], out.sinks[p.flow[-1]]
        labels = [lb for lb in sensor.privacy if lb in out.privacy]
        ends = [(sensor.name, sensor.device, p.step_spans[0], tuple(labels))]
        for step in p.flow[1:-1]:
            if step in out.operators:
                labels = [lb for lb in labels if lb not in out.operators[step].removes]
        ends.append((target.name, target.device, p.step_spans[-1], tuple(labels)))
        for name, device, span, carried in ends:
            dev = out.devices.get(device)
            if dev is None:
                continue
            for lb in carried:
                rule = out.privacy[lb]
                if dev.tier in rule.allow or (name, lb) in reported:
                    continue
                reported.add((name, lb))
                allowed = ", ".join(t.value for t in rule.allow)
                sink.error("E0703", f"`{name}` on `{device}` ({dev.tier.value}) handles data "
                           f"labelled `{lb}`, which may only be on {allowed}", span,
                           f"`{name}` is on a {dev.tier.value} device",
                           labels=(Label(_entry_value_span(out.symbols.decls[lb], "allow"),
                                         f"`{lb}` allows {allowed}"),),
                           help=f"move `{name}` to a device on {allowed}, or insert an operator "
                                f"that `removes = [{lb}]` before it" if name == target.name
                           else f"move `{name}` to a device on {allowed}, or allow "
                                f"{dev.tier.value} in `{lb}`")


def _check_replicas(graph: nx.DiGraph, out: Lowered, sink: DiagnosticSink) -> None:
    for part in nx.weakly_connected_components(graph):
        many: dict[int, str] = {}
        for name in sorted(part, key=lambda n: out.symbols.decls[n].span.start):
            sensor = out.sensors.get(name)
            device = out.devices.get(sensor.device) if sensor else None
            if device is None or device.count == 1:
                continue
            if many and device.count not in many:
                first_count, first = next(iter(many.items()))
                decls = out.symbols.decls
                sink.error("E0508", f"sensors of one dataflow component sit on devices of count "
                           f"{first_count} and {device.count}",
                           _entry_value_span(decls[name], "on"), f"count {device.count}",
                           labels=(Label(_entry_value_span(decls[first], "on"),
                                         f"count {first_count}"),),
                           help="connected pipelines are replicated together; give their sensors"
                                " devices of the same count, or separate the pipelines")
                break
            many.setdefault(device.count, name)


def _check_unused(out: Lowered, used: set[str], sink: DiagnosticSink) -> None:
    decls = out.symbols.decls.values()
    labels_used = {item.name for decl in decls for entry in decl.entries
                   if entry.key.value in ("privacy", "removes")
                   and isinstance(entry.value, ast.ListValue)
                   for item in entry.value.items if isinstance(item, ast.Word)}
    # a misspelt label (E0701 suggests the declaration) is a use of what it was meant to be
    labels = out.symbols.of_kind("privacy")
    labels_used |= {meant for name in labels_used - out.symbols.decls.keys()
                    if (meant := closest(name, labels)) is not None}
    for decl in decls:
        if decl.kind in ("sensor", "actuator", "store", "operator", "model") and \
                decl.name.value not in used:
            sink.warn("W0510", f"{decl.kind} `{decl.name.value}` is not used in any pipeline",
                      decl.name.span, "never used",
                      help="use it in a pipeline's flow, or remove it")
        if decl.kind == "privacy" and decl.name.value not in labels_used:
            sink.warn("W0702", f"privacy label `{decl.name.value}` is never used", decl.name.span,
                      "no sensor carries it and no operator removes it",
                      help="add it to a sensor's `privacy`, or remove the declaration")


def _flow_names(value: ast.Value) -> list[str]:
    """The names a pipeline's flow uses, also when it is malformed (`flow = camera`,
    `flow = [camera, archive]`)."""
    if isinstance(value, ast.Flow):
        return [step.value for step in value.steps]
    if isinstance(value, ast.ListValue):
        return [item.name for item in value.items if isinstance(item, ast.Word)]
    return [value.name] if isinstance(value, ast.Word) else []


def check(out: Lowered, sink: DiagnosticSink, network: Network | None = None) -> None:
    used = {name for decl in out.symbols.decls.values() if decl.kind == "pipeline"
            for entry in decl.entries if entry.key.value == "flow"
            for name in _flow_names(entry.value)}
    # a misspelt step (E0101 suggests the declaration) is a use of what it was meant to be
    decls = out.symbols.decls
    steps = out.symbols.of_kind("sensor", "operator", "model", "actuator", "store")
    used |= {meant for name in used - decls.keys()
             if (meant := out.symbols.renamed.get(name) or closest(name, steps)) is not None}
    valid = [p for p in out.pipelines.values() if _check_steps(p, out, sink)]
    graph = flow_graph((p.name, p.flow) for p in valid)
    spans: dict[tuple[str, str], Span] = {}
    for p in valid:
        for (u, v), span in zip(zip(p.flow, p.flow[1:]), p.step_spans[1:]):
            spans.setdefault((u, v), span)
    _check_cycles(graph, spans, sink)
    _check_types(graph, spans, out, sink)
    _check_routes(valid, out, sink, network)
    _check_replicas(graph, out, sink)
    _check_privacy(valid, out, sink)
    _check_unused(out, used, sink)
