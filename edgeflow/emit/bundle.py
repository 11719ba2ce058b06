"""What a deployment bundle is made of, derived once from a plan: the MQTT clients (one per
placed unit, sensor and sink of every replica) with the topics each reads and writes, the brokers
(one per device instance that hosts a client) with their ACLs and bridges, and the model files.
Every target (k8s, compose) and the report render from this; none recomputes the plan.

Topic scheme: `edgeflow/<app>/r<replica>/<step>` carries the output of a step of one replica
(`<model>.head` for the tensors a split model's head sends its tail); a client's MQTT identity
(its certificate's CN) is `<app>.<step>.r<replica>`, or `<app>.<sink>` for a sink shared by all
replicas.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from edgeflow import ir
from edgeflow.execution import ExecutionGraph, StepKey
from edgeflow.plan import Part, PlacedUnit, Plan, unit_name

TIER_ORDER = {t.value: i for i, t in enumerate(ir.Tier)}  # edge < fog < cloud
MQTT_PORT = 8883


def k8s_name(*parts: str) -> str:
    """A DNS-1123 label: lowercase alphanumerics and '-'."""
    name = "-".join(re.sub(r"[^a-z0-9]+", "-", p.lower()).strip("-") for p in parts if p)
    return name[:63].strip("-")


@dataclass
class Client:
    """One MQTT client: a unit's worker, or a sensor's or sink's driver."""

    step: str                 # declared name, `MODEL.head` / `MODEL.tail` for split halves
    replica: int | None
    kind: str                 # sensor, operator, model, head, tail, actuator, store
    device: str               # instance
    tier: str
    identity: str             # certificate CN = MQTT user name
    reads: list[str] = field(default_factory=list)
    writes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    placed: PlacedUnit | None = None  # a unit's entry in the Plan

    @property
    def is_unit(self) -> bool:
        return self.kind in ("operator", "model", "head", "tail")

    @property
    def name(self) -> str:
        return k8s_name(self.step.replace(".", "-"), f"r{self.replica}"
                        if self.replica is not None else "")


@dataclass
class Bridge:
    """A bridge connection configured on `initiator`'s broker to `peer`'s broker."""

    initiator: str
    peer: str
    identity: str             # the initiating broker's certificate CN
    out_topics: list[str] = field(default_factory=list)   # initiator -> peer
    in_topics: list[str] = field(default_factory=list)    # peer -> initiator


@dataclass
class Broker:
    device: str
    tier: str
    external: bool = False    # listens beyond loopback (some bridge connects to it)
    acl: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # user -> read/write
    bridges: list[Bridge] = field(default_factory=list)

    @property
    def name(self) -> str:
        return k8s_name("broker", self.device)

    def allow(self, user: str, access: str, topic: str) -> None:
        rules = self.acl.setdefault(user, {"read": [], "write": []})
        if topic not in rules[access]:
            rules[access].append(topic)


@dataclass
class Bundle:
    app: str
    program: ir.Program
    plan: Plan
    clients: list[Client]
    brokers: dict[str, Broker]
    max_message_bytes: int

    def units(self) -> list[Client]:
        return [c for c in self.clients if c.is_unit]

    def placed(self, c: Client) -> PlacedUnit:
        assert c.placed is not None, f"{c.step} is not a unit"
        return c.placed


def topic(app: str, replica: int, step: str) -> str:
    return f"edgeflow/{app}/r{replica}/{step}"


def build_bundle(execution: ExecutionGraph, plan: Plan) -> Bundle:
    program = execution.program
    app = program.app.name
    placed = {(u.name, u.replica): u for u in plan.units}
    splits = {(s.model, s.replica): s for s in plan.splits}
    clients: dict[tuple[str, int | None], Client] = {}
    # per step: the client its input arrives at, and the topic, device and size of its output
    arrive: dict[StepKey, Client] = {}
    leave: dict[StepKey, tuple[str, str, int]] = {}
    max_bytes = 0

    def client(step: str, replica: int | None, kind: str, device: str) -> Client:
        key = (step, replica)
        if key not in clients:
            ident = f"{app}.{step}" + (f".r{replica}" if replica is not None else "")
            clients[key] = Client(step, replica, kind, device,
                                  execution.device(device).tier.value, ident,
                                  placed=placed.get((step, replica)) if replica is not None
                                  else None)
        return clients[key]

    for key, step in execution.steps.items():
        name, r = key
        if step.kind == "sensor":
            assert step.device is not None and r is not None
            sensor = program.sensors[name]
            c = client(name, r, "sensor", step.device)
            t = topic(app, r, name)
            c.writes.append(t)
            c.config = {"rate_hz": sensor.rate_hz, "emits": str(sensor.emits)}
            leave[key] = (t, step.device, step.out_bytes)
        elif step.device is not None:  # a sink
            arrive[key] = client(name, r, step.kind, step.device)
        elif (split := splits.get((name, r))) is not None:  # type: ignore[arg-type]
            assert r is not None
            head_name, tail_name = unit_name(name, Part.HEAD), unit_name(name, Part.TAIL)
            head = client(head_name, r, "head", placed[(head_name, r)].device)
            tail = client(tail_name, r, "tail", placed[(tail_name, r)].device)
            cut = topic(app, r, head_name)
            head.writes.append(cut)
            tail.reads.append(cut)
            out = topic(app, r, tail_name)
            tail.writes.append(out)
            arrive[key] = head
            leave[key] = (out, tail.device, step.out_bytes)
            max_bytes = max(max_bytes, split.transfer_bytes)
        else:
            assert r is not None
            c = client(name, r, step.kind, placed[(name, r)].device)
            t = topic(app, r, name)
            c.writes.append(t)
            arrive[key] = c
            leave[key] = (t, c.device, step.out_bytes)
    for u, v in execution.edges:
        t, _, nbytes = leave[u]
        consumer = arrive[v]
        if t not in consumer.reads:
            consumer.reads.append(t)
        max_bytes = max(max_bytes, nbytes)
    ordered = sorted(clients.values(), key=lambda c: (c.replica if c.replica is not None else -1,
                                                      c.step))
    brokers = _brokers(execution, ordered)
    return Bundle(app, program, plan, ordered, brokers, max_bytes)


def _brokers(execution: ExecutionGraph, clients: list[Client]) -> dict[str, Broker]:
    program = execution.program
    brokers: dict[str, Broker] = {}
    for c in clients:
        b = brokers.setdefault(c.device, Broker(c.device, c.tier))
        for t in c.reads:
            b.allow(c.identity, "read", t)
        for t in c.writes:
            b.allow(c.identity, "write", t)
    writer_at = {t: c.device for c in clients for t in c.writes}
    labels = _topic_labels(execution, clients)
    bridges: dict[tuple[str, str], Bridge] = {}
    for c in clients:
        for t in c.reads:
            src, dst = writer_at[t], c.device
            if src == dst:
                continue
            for inst in (src, dst):  # defence in depth: the plan's routes already respect this
                allowed = all(brokers[inst].tier in {x.value for x in program.privacy[lb].allow}
                              for lb in labels.get(t, ()))
                if not allowed:  # a bug in placement, not a user error: never emit it
                    raise RuntimeError(f"refusing to bridge topic {t} to {inst}: a privacy "
                                       "rule forbids it, yet the plan placed it so")
            # the lower tier initiates (edge brokers then need not accept connections)
            initiator, peer = (src, dst) if TIER_ORDER[brokers[src].tier] <= \
                TIER_ORDER[brokers[dst].tier] else (dst, src)
            bridge = bridges.setdefault((initiator, peer), Bridge(
                initiator, peer, f"{program.app.name}.bridge.{k8s_name(initiator)}"))
            topics = bridge.out_topics if initiator == src else bridge.in_topics
            if t not in topics:
                topics.append(t)
                brokers[peer].allow(bridge.identity, "write" if initiator == src else "read", t)
            brokers[peer].external = True
    for (initiator, _), bridge in sorted(bridges.items()):
        brokers[initiator].bridges.append(bridge)
    return dict(sorted(brokers.items()))


def _topic_labels(execution: ExecutionGraph, clients: list[Client]) -> dict[str, frozenset[str]]:
    """The privacy labels of what each topic carries."""
    out: dict[str, frozenset[str]] = {}
    for c in clients:
        if not c.writes:
            continue
        step = execution.steps[(c.placed.step if c.placed else c.step, c.replica)]
        # a head's topic is the cut, which carries what the model receives
        labels = step.labels if c.kind == "head" else step.out_labels
        for t in c.writes:
            out[t] = labels
    return out
