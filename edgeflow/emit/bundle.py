"""What a deployment bundle is made of, derived once from a plan: the MQTT clients (one per
placed unit, sensor and sink of every replica) with the topics each reads and writes, the brokers
(one per device instance that hosts a client) with their ACLs and bridges, and the model files.
Every target (k8s, compose) and the report render from this; none recomputes the plan.

Topic scheme: `edgeflow/<app>/r<replica>/<step>` carries the output of a step of one replica
(`<model>.head` for the tensors a split model's head sends its tail); a client's MQTT identity
(its certificate's CN, user name and client id) is `<app>.<step>.r<replica>`, or `<app>.<sink>`
for a sink shared by all replicas, and a broker's bridges connect as `<app>.bridge.<device>`.
Every generated name is unique by construction (see "names" below).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgeflow import ir
from edgeflow.execution import ExecutionGraph, StepKey
from edgeflow.plan import Part, PlacedUnit, Plan, unit_name
from edgeflow.routing import fastest_route
from edgeflow.span import Span

TIER_ORDER = {t.value: i for i, t in enumerate(ir.Tier)}  # edge < fog < cloud
MQTT_PORT = 8883
FEEDBACK_BYTES = 256  # a tail's feedback message to its head, at most


# ---- names ------------------------------------------------------------------------------------
#
# Every name the bundle generates is a function of what it names, and no two things get one name
# (docs/bundles.md, "Names"). A DNS label (a Kubernetes object, a file or folder, a compose
# service, a node label value, a Mermaid id) is written readably, the declared name with `_` as
# `-`:
#
#   device instance   NAME -> name,  NAME[i] -> name-i
#   broker            broker-<device instance, as above>
#   client            STEP[.head|.tail] of replica r -> step[-head|-tail]-rR;  a shared sink -> sink
#
# and used only if `read_label` reads it back as exactly what it names (so the readable names are
# injective: `read_label` is their inverse), it is a valid DNS-1123 label and fits in 63
# characters. Otherwise the name is a stem (both ends of it kept), `--` and 8 hex digits of the
# sha256 of what it names: `cam-1--4dbbb8c3` for a device `cam_1`, since `cam-1` reads as
# `cam[1]`. A broker is `broker-<device label>` (so it carries its device's digest), hashed again
# only when too long. A readable name never holds `--`, so it never equals a hashed one; two
# hashed names coincide only if their digests do, and `check_names` then refuses the bundle,
# naming both declarations. MQTT identities follow the same rule with their own reader,
# `read_identity`.

LABEL_MAX = 63
HASH_HEX = 8
DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?")
IDENTITY = re.compile(r"[a-z0-9_](?:[-a-z0-9_.]*[a-z0-9_])?")
_DASHED = r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*"  # a declared name, `_` written `-`, read back uniquely
_DECLARED = r"[a-z_][a-z0-9_]*"

Key = tuple[str, ...]


def k8s_name(*parts: str) -> str:
    """A DNS-1123 label for app-wide names (the namespace): lowercase alphanumerics and '-'.
    Lossy: never use it for something of which a bundle has several (`device_label` etc.)."""
    name = "-".join(re.sub(r"[^a-z0-9]+", "-", p.lower()).strip("-") for p in parts if p)
    return name[:LABEL_MAX].strip("-")


def _undash(dashed: str) -> str:
    return dashed.replace("-", "_")


def _read_instance(label: str) -> str | None:
    if m := re.fullmatch(rf"({_DASHED})-([0-9]+)", label):
        return f"{_undash(m[1])}[{int(m[2])}]"
    return _undash(label) if re.fullmatch(_DASHED, label) else None


def read_label(label: str) -> Key | None:
    """What a readable DNS label names: ("broker", instance), ("client", step, replica),
    ("instance", NAME[i]) or ("declared", NAME) (a single device, or a sink shared by all
    replicas: names are unique across a file); None for a hashed or foreign label."""
    if label.startswith("broker-"):
        instance = _read_instance(label.removeprefix("broker-"))
        return None if instance is None else ("broker", instance)
    if m := re.fullmatch(rf"({_DASHED})-r([0-9]+)", label):
        step = m[1]
        if half := re.fullmatch(rf"({_DASHED})-(head|tail)", step):
            return ("client", f"{_undash(half[1])}.{half[2]}", str(int(m[2])))
        return ("client", _undash(step), str(int(m[2])))
    if m := re.fullmatch(rf"({_DASHED})-([0-9]+)", label):
        return ("instance", f"{_undash(m[1])}[{int(m[2])}]")
    return ("declared", _undash(label)) if re.fullmatch(_DASHED, label) else None


def _digest(key: Key) -> str:
    return hashlib.sha256("\0".join(key).encode()).hexdigest()[:HASH_HEX]


def _shorten(text: str, room: int, strip: str) -> str:
    """`text` in at most `room` characters: both ends kept (names often differ only at the
    end), joined by `-`, without `strip` characters at the cuts."""
    if len(text) <= room:
        return text
    tail = room // 3
    return f"{text[:room - tail - 1].rstrip(strip)}-{text[-tail:].lstrip(strip)}"


def _hashed(key: Key, stem: str, suffix: str = "", limit: int = LABEL_MAX) -> str:
    """`stem`-`suffix` made DNS-safe, the stem cut in the middle to fit in `limit` characters,
    `--` and the digest of `key` (what the name names)."""
    stem, suffix = (re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-") for s in (stem, suffix))
    stem = _shorten(stem, limit - len(suffix) - HASH_HEX - 3, "-").strip("-")
    return f"{stem or 'x'}{'-' + suffix if suffix else ''}--{_digest(key)}"


def _label(key: Key, readable: str, hash_key: Key, stem: str, suffix: str = "") -> str:
    """`readable` if it is a DNS label that reads back as `key`, else the hashed form."""
    if len(readable) <= LABEL_MAX and DNS_LABEL.fullmatch(readable) and \
            read_label(readable) == key:
        return readable
    return _hashed(hash_key, stem, suffix)


def generated_label(readable: str, key: Key, stem: str, suffix: str = "",
                    limit: int = LABEL_MAX) -> str:
    """A name of something that has no `read_label` reading (a training's objects):
    `readable` when it is a DNS label of at most `limit` characters, else `stem`-`suffix` with
    the digest of `key`. `check_names` refuses the rare bundle in which two coincide."""
    if len(readable) <= limit and DNS_LABEL.fullmatch(readable):
        return readable
    return _hashed(key, stem, suffix, limit)


def _split_instance(instance: str) -> tuple[str, str]:
    """`NAME[i]` -> (NAME, i), `NAME` -> (NAME, "")."""
    m = re.fullmatch(r"(.*)\[([0-9]+)\]", instance)
    return (m[1], m[2]) if m else (instance, "")


def device_label(instance: str) -> str:
    """A device instance as a DNS label: compose folders, `edgeflow.io/device` node labels."""
    name, index = _split_instance(instance)
    dashed = name.replace("_", "-")
    if index:
        return _label(("instance", instance), f"{dashed}-{index}", ("device", instance), name,
                      index)
    return _label(("declared", instance), dashed, ("device", instance), name)


def broker_name(instance: str) -> str:
    """The broker on a device instance: k8s objects, `mqtt/<name>/`, the secret's name.
    `broker-<device label>`, hashed again only when that is too long."""
    name = f"broker-{device_label(instance)}"
    if len(name) <= LABEL_MAX:
        return name
    base, index = _split_instance(instance)
    return _hashed(("broker", instance), f"broker-{base}", index)


def client_name(step: str, replica: int | None) -> str:
    """A client (unit, sensor or sink driver) of one replica, or a sink shared by all: k8s
    objects, compose services, unit.json files, the secret's name."""
    dashed = step.replace("_", "-").replace(".", "-")
    if replica is None:
        return _label(("declared", step), dashed, ("client", step, ""), step)
    key = ("client", step, str(replica))
    return _label(key, f"{dashed}-r{replica}", key, step, f"r{replica}")


def read_identity(app: str, identity: str) -> Key | None:
    """What a readable MQTT identity names: ("client", step, replica or ""), or ("bridge",
    device label); None for a hashed or foreign one."""
    if not identity.startswith(f"{app}."):
        return None
    parts = identity.removeprefix(f"{app}.").split(".")
    replica = re.fullmatch(r"r([0-9]+)", parts[-1])
    if len(parts) == 2 and replica and re.fullmatch(_DECLARED, parts[0]):
        return ("client", parts[0], str(int(replica[1])))
    if len(parts) == 3 and replica and re.fullmatch(_DECLARED, parts[0]) and \
            parts[1] in ("head", "tail"):
        return ("client", f"{parts[0]}.{parts[1]}", str(int(replica[1])))
    if len(parts) == 1 and re.fullmatch(_DECLARED, parts[0]):
        return ("client", parts[0], "")
    if len(parts) == 2 and parts[0] == "bridge" and DNS_LABEL.fullmatch(parts[1]):
        return ("bridge", parts[1])
    return None


def _identity(app: str, key: Key, readable: str, hash_key: Key) -> str:
    if len(readable) <= LABEL_MAX and IDENTITY.fullmatch(readable) and \
            read_identity(app, readable) == key:
        return readable
    stem = _shorten(re.sub(r"[^a-z0-9_.-]+", "-", readable), LABEL_MAX - HASH_HEX - 2, "-.")
    return f"{stem.rstrip('-.') or 'x'}--{_digest(hash_key)}"


def client_identity(app: str, step: str, replica: int | None) -> str:
    """A client's certificate CN = MQTT user name = client id: `<app>.<step>.r<replica>`, or
    `<app>.<sink>` for a sink shared by all replicas."""
    r = "" if replica is None else str(replica)
    key = ("client", step, r)
    return _identity(app, key, f"{app}.{step}" + (f".r{r}" if r else ""), key)


def bridge_identity(app: str, instance: str) -> str:
    """The CN of the certificate with which the broker on `instance` bridges to others."""
    label = device_label(instance)
    return _identity(app, ("bridge", label), f"{app}.bridge.{label}", ("bridge", instance))


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
    # an adapting split model's: the tail's feedback to its head (the tail writes it, the head
    # reads it), and the tail's output topic for its head to write when it runs the whole model
    control_reads: list[str] = field(default_factory=list)
    control_writes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    placed: PlacedUnit | None = None  # a unit's entry in the Plan

    @property
    def is_unit(self) -> bool:
        return self.kind in ("operator", "model", "head", "tail")

    @property
    def name(self) -> str:
        return client_name(self.step, self.replica)


@dataclass
class Bridge:
    """A bridge connection configured on `initiator`'s broker to `peer`'s broker."""

    initiator: str
    peer: str
    identity: str             # the initiating broker's certificate CN
    out_topics: list[str] = field(default_factory=list)   # initiator -> peer
    in_topics: list[str] = field(default_factory=list)    # peer -> initiator

    @property
    def name(self) -> str:
        """The `connection` name: the peer's broker, so unique within the initiator's config
        (mosquitto refuses two bridges of one name)."""
        return broker_name(self.peer)

    @property
    def local_clientid(self) -> str:
        """The bridge's client id on the initiator's own broker: one per bridge (mosquitto's
        default, `local.<remote_clientid>`, is the same for all bridges of a broker)."""
        return f"local.{self.identity}.{self.name}"


@dataclass
class Broker:
    device: str
    tier: str
    external: bool = False    # listens beyond loopback (some bridge connects to it)
    acl: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # user -> read/write
    bridges: list[Bridge] = field(default_factory=list)

    @property
    def name(self) -> str:
        return broker_name(self.device)

    @property
    def label(self) -> str:
        return device_label(self.device)

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


def feedback_topic(app: str, replica: int, model: str) -> str:
    """Where an adapting split model's tail tells its head what it measures (docs/runtime.md,
    "Adaptation"): the bandwidth estimate, and by arriving at all, that the link is up."""
    return f"edgeflow/{app}/r{replica}/{model}.tail/feedback"


def build_bundle(execution: ExecutionGraph, plan: Plan) -> Bundle:
    program = execution.program
    app = program.app.name
    placed = {(u.name, u.replica): u for u in plan.units}
    splits = {(s.model, s.replica): s for s in plan.splits}
    adapting = {(a.model, a.replica): a for a in plan.adaptations}
    clients: dict[tuple[str, int | None], Client] = {}
    # per step: the client its input arrives at, and the topic, device and size of its output
    arrive: dict[StepKey, Client] = {}
    leave: dict[StepKey, tuple[str, str, int]] = {}
    max_bytes = 0

    def client(step: str, replica: int | None, kind: str, device: str) -> Client:
        key = (step, replica)
        if key not in clients:
            clients[key] = Client(step, replica, kind, device,
                                  execution.device(device).tier.value,
                                  client_identity(app, step, replica),
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
            if (adapt := adapting.get((name, r))) is not None:
                feedback = feedback_topic(app, r, name)
                tail.control_writes.append(feedback)
                head.control_reads.append(feedback)
                if adapt.bypass or adapt.fallback is not None:
                    head.control_writes.append(out)
                max_bytes = max(max_bytes, *(c.transfer_bytes for c in adapt.cuts))
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
    sizes = {t: nbytes for t, _, nbytes in leave.values()}
    for sp in plan.splits:  # a head's topic carries the cut
        sizes[topic(app, sp.replica, unit_name(sp.model, Part.HEAD))] = sp.transfer_bytes
    for a in plan.adaptations:
        sizes[feedback_topic(app, a.replica, a.model)] = FEEDBACK_BYTES
    brokers = _brokers(execution, ordered, sizes)
    bundle = Bundle(app, program, plan, ordered, brokers, max_bytes)
    check_names(bundle)
    return bundle


def _brokers(execution: ExecutionGraph, clients: list[Client],
             sizes: dict[str, int]) -> dict[str, Broker]:
    """A broker on every device instance that hosts a client or forwards a message, with its
    ACL; and the bridges, which follow each message's route link by link (the route placement
    priced, `routing.fastest_route`), so a bridge only ever joins two linked devices."""
    program = execution.program
    brokers: dict[str, Broker] = {}
    for c in clients:
        b = brokers.setdefault(c.device, Broker(c.device, c.tier))
        for t in c.reads + c.control_reads:
            b.allow(c.identity, "read", t)
        for t in c.writes + c.control_writes:
            b.allow(c.identity, "write", t)
    # a topic's writer: a head writing its tail's output (control) is not where it comes from
    writer_at = {t: c.device for c in clients for t in c.writes}
    writer_at.update({t: c.device for c in clients for t in c.control_writes
                      if t not in writer_at})
    labels = _topic_labels(execution, clients)
    bridges: dict[tuple[str, str], Bridge] = {}
    direction: dict[tuple[str, str, str], str] = {}  # (pair, topic) -> the way it flows

    def allowed(inst: str, topic: str) -> bool:
        tier = execution.device(inst).tier
        return all(tier in program.privacy[lb].allow for lb in labels.get(topic, ()))

    for c in clients:
        for t in c.reads + c.control_reads:
            src, dst = writer_at[t], c.device
            if src == dst:
                continue
            found = fastest_route(execution.network, src, dst, sizes[t],
                                  functools.partial(_allowed_for, allowed, t))
            if found is None:  # a bug in placement, not a user error: never emit it
                raise RuntimeError(f"no allowed route for topic {t} from {src} to {dst}, yet "
                                   "the plan placed it so")
            for x, y in itertools.pairwise(found[1]):
                for inst in (x, y):  # defence in depth: the route only visits allowed tiers
                    if not allowed(inst, t):
                        raise RuntimeError(f"refusing to bridge topic {t} to {inst}: a privacy "
                                           "rule forbids it")
                    brokers.setdefault(inst, Broker(inst, execution.device(inst).tier.value))
                pair = tuple(sorted((x, y)))
                if direction.setdefault((pair[0], pair[1], t), x) != x:
                    raise RuntimeError(f"topic {t} would be bridged both ways between {x} "
                                       f"and {y}")
                # the lower tier initiates (edge brokers then need not accept connections)
                initiator, peer = (x, y) if TIER_ORDER[brokers[x].tier] <= \
                    TIER_ORDER[brokers[y].tier] else (y, x)
                bridge = bridges.setdefault((initiator, peer), Bridge(
                    initiator, peer, bridge_identity(program.app.name, initiator)))
                topics = bridge.out_topics if initiator == x else bridge.in_topics
                if t not in topics:
                    topics.append(t)
                    # the peer's ACL lets the bridge write what it brings and read what it takes;
                    # a forwarding broker holds the topic only on its way through
                    brokers[peer].allow(bridge.identity, "write" if initiator == x else "read", t)
                brokers[peer].external = True
    for (initiator, _), bridge in sorted(bridges.items()):
        brokers[initiator].bridges.append(bridge)
    return dict(sorted(brokers.items()))


def _allowed_for(allowed: Callable[[str, str], bool], topic: str, inst: str) -> bool:
    return allowed(inst, topic)


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


class NameClash(Exception):
    """Two things of a bundle would get one name. The readable names are injective by
    construction and hashed ones differ unless 8 hex digits of sha256 coincide: renaming one of
    the two declarations (the message says where they are) resolves it. `span` is the second
    one's declaration (E1003)."""

    def __init__(self, message: str, span: Span) -> None:
        super().__init__(message)
        self.span = span


def span_of(program: ir.Program, name: str) -> Span | None:
    """Where `name` is declared: a device instance, a step or a split model's half."""
    base = _split_instance(name)[0].split(".")[0]
    for table in (program.devices, program.sensors, program.sinks, program.models,
                  program.operators):
        if base in table:
            return table[base].span
    return None


def _declared_at(program: ir.Program, name: str) -> str:
    span = span_of(program, name)
    return f"`{name}`" if span is None else f"`{name}` ({span.file}:{span.line}:{span.col})"


def bundle_names(bundle: Bundle) -> dict[str, str]:
    """The DNS names a bundle's inference objects take (clients, brokers, device pods and their
    ConfigMaps), each with what it names: what other objects of the bundle must not take."""
    out: dict[str, str] = {}
    for c in bundle.clients:
        out.setdefault(c.name, f"the client `{c.step}`")
    for b in bundle.brokers.values():
        out.setdefault(b.name, f"the broker on `{b.device}`")
        for name in (b.label, f"{b.label}-config", device_label(b.device.split("[")[0]),
                     f"{device_label(b.device.split('[')[0])}-config"):
            out.setdefault(name, f"the pod of device `{b.device}`")
    return out


def check_names(bundle: Bundle) -> None:
    """Refuse (NameClash) a bundle in which two things share a generated name: a DNS label
    (client, broker, device instance), an MQTT identity, or a bridge's connection name or
    client id on its broker."""
    program = bundle.program

    def claim(space: dict[str, tuple[str, str]], kind: str, name: str,
              owner: tuple[str, str]) -> None:
        first = space.setdefault(name, owner)
        if first != owner:
            raise NameClash(f"{first[0]} {_declared_at(program, first[1])} and {owner[0]} "
                            f"{_declared_at(program, owner[1])} would both get the {kind} "
                            f"`{name}`", span_of(program, owner[1]) or program.app.span)

    labels: dict[str, tuple[str, str]] = {}
    identities: dict[str, tuple[str, str]] = {}
    for c in bundle.clients:
        owner = (f"replica {c.replica} of" if c.replica is not None else "", c.step)
        claim(labels, "name", c.name, owner)
        claim(identities, "MQTT identity", c.identity, owner)
    for b in bundle.brokers.values():
        claim(labels, "name", b.name, ("the broker on", b.device))
        claim(labels, "name", b.label, ("device", b.device))
        for bridge in b.bridges:
            claim(identities, "MQTT identity", bridge.identity, ("the bridge of", b.device))
    for b in bundle.brokers.values():
        connections: dict[str, tuple[str, str]] = {}
        client_ids = {user: ("the client", user) for user in b.acl}
        for bridge in b.bridges:
            owner = ("the bridge to", bridge.peer)
            claim(connections, "bridge name", bridge.name, owner)
            claim(client_ids, "client id", bridge.local_clientid, owner)
