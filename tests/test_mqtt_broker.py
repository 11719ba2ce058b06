"""Every generated broker configuration, started in a real mosquitto on loopback with test
certificates: each client may publish and subscribe on its own topics and on no other, a client
without a certificate is refused, a broker with bridges to several peers starts, and no
certificate can take over another identity's session (a unit's or a bridge's) by connecting
with its client id."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from hypothesis import assume, given, settings
from paho.mqtt.enums import CallbackAPIVersion

from edgeflow import api, load
from edgeflow.emit.bundle import Broker, Bundle, _topic_labels, build_bundle
from edgeflow.emit.mqtt import render_acl, render_conf
from edgeflow.execution import build_execution
from tests.conftest import ROOT
from tests.mqtt_certs import make_ca, make_cert
from tests.test_placement import random_app

# CI installs mosquitto (.ci/run); only a developer machine without it may skip
pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None and not os.environ.get("CI"),
                                reason="mosquitto is not installed (.ci/run installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Running:
    """mosquitto with `broker`'s configuration. Its bridges point at `peers` (device -> port of
    a running broker whose CA is `ca`), else at a port where nothing listens."""

    def __init__(self, bundle: Bundle, broker: Broker, folder: Path, ca: Path | None = None,
                 peers: dict[str, int] | None = None) -> None:
        self.folder, self.port = folder, _free_port()
        folder.mkdir()
        tls = folder / "tls"
        if ca is None:
            make_ca(tls)
        else:
            tls.mkdir()
            for f in ("ca.crt", "ca.key"):
                shutil.copy(ca / f, tls / f)
        make_cert(tls, "broker", "localhost", ip=True)
        make_cert(tls, "bridge", broker.bridges[0].identity if broker.bridges else "none")
        for user in broker.acl:
            make_cert(tls, user.replace("/", "_"), user)
        make_cert(tls, "stranger", f"{bundle.app}.stranger")
        data = folder / "data"
        data.mkdir()
        data.chmod(0o777)
        folder.chmod(0o755)
        tls.chmod(0o755)
        (folder / "acl").write_text(render_acl(broker))
        (folder / "acl").chmod(0o644)
        # bridges to a peer that is not running: the broker must still serve its clients
        # one certificate per secret folder, as the bundle mounts them: ca.crt, tls.crt, tls.key
        for secret, stem in (("server", "broker"), ("bridge-secret", "bridge")):
            (folder / secret).mkdir()
            (folder / secret).chmod(0o755)
            for src, dst in (("ca.crt", "ca.crt"), (f"{stem}.crt", "tls.crt"),
                             (f"{stem}.key", "tls.key")):
                shutil.copy(tls / src, folder / secret / dst)
                (folder / secret / dst).chmod(0o644)
        conf = render_conf(bundle, broker, tls_dir=str(folder / "server"),
                           bridge_tls_dir=str(folder / "bridge-secret"), port=self.port,
                           acl_path=str(folder / "acl"), persistence_dir=str(data),
                           addresses={d: f"127.0.0.1:{(peers or {}).get(d) or _free_port()}"
                                      for d in bundle.brokers},
                           bind="127.0.0.1")
        (folder / "mosquitto.conf").write_text(conf)
        (folder / "mosquitto.conf").chmod(0o644)
        self.proc = subprocess.Popen(["mosquitto", "-c", str(folder / "mosquitto.conf")],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"mosquitto exited: {self.proc.stdout.read()}")  # type: ignore[union-attr]
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError("mosquitto did not start listening")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def client(self, user: str | None, client_id: str = "") -> mqtt.Client:
        tls = self.folder / "tls"
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if user is None:
            c.tls_set(ca_certs=str(tls / "ca.crt"))
        else:
            name = user.replace("/", "_")
            c.tls_set(ca_certs=str(tls / "ca.crt"), certfile=str(tls / f"{name}.crt"),
                      keyfile=str(tls / f"{name}.key"))
        return c


# MQTT 3.1.1 CONNECT, clean session, keep-alive 60 s, client id "anon"
_CONNECT = bytes([0x10, 16, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 4]) + b"anon"


def _refuses_anonymous(running: Running) -> bool:
    """A TLS client without a certificate sends CONNECT: the broker must not answer CONNACK."""
    ctx = ssl.create_default_context(cafile=str(running.folder / "tls" / "ca.crt"))
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(_CONNECT)
                return tls.recv(4) == b""
        except (ssl.SSLError, ConnectionError):
            return True


def _connect(c: mqtt.Client, port: int) -> bool:
    done = threading.Event()
    result: list[bool] = []

    def on_connect(client, userdata, flags, reason, props):  # type: ignore[no-untyped-def]
        result.append(not reason.is_failure)
        done.set()

    c.on_connect = on_connect
    try:
        c.connect("127.0.0.1", port)
    except (OSError, ValueError):
        return False
    c.loop_start()
    ok = done.wait(5) and result[0]
    return ok


def _subscribe(c: mqtt.Client, topic: str) -> bool:
    done = threading.Event()
    codes: list[bool] = []

    def on_subscribe(client, userdata, mid, reasons, props):  # type: ignore[no-untyped-def]
        codes.append(not reasons[0].is_failure)
        done.set()

    c.on_subscribe = on_subscribe
    c.subscribe(topic, qos=1)
    assert done.wait(5)
    return codes[0]


def _received(sub: mqtt.Client) -> list[str]:
    """Topics of the messages `sub` receives, in order (the payload names the publisher)."""
    got: list[str] = []
    sub.on_message = lambda client, userdata, msg: got.append(msg.topic)  # type: ignore[assignment]
    return got


BUNDLES = ["ar_assist", "smart_city_traffic", "healthcare_vitals"]  # the last: two bridges


@pytest.fixture(scope="module", params=BUNDLES)
def bundle(request: pytest.FixtureRequest) -> Bundle:
    program = load(ROOT / "examples" / f"{request.param}.ef")
    result = api.plan(program)
    assert result.plan is not None and result.execution is not None
    return build_bundle(result.execution, result.plan)


def _chosen(bundle: Bundle) -> list[Broker]:
    """Every distinct shape of broker: the first site, the fog/cloud ones."""
    brokers = list(bundle.brokers.values())
    return [b for b in brokers if b.tier != "edge"] + [b for b in brokers if b.tier == "edge"][:1]


@pytest.fixture()
def root() -> Iterator[Path]:
    # mosquitto drops root privileges: pytest's private tmp folders are out of its reach
    folder = Path(tempfile.mkdtemp(prefix="edgeflow-mqtt-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def test_each_broker_enforces_its_acl(bundle: Bundle, root: Path) -> None:
    for broker in _chosen(bundle):
        running = Running(bundle, broker, root / broker.name)
        try:
            _check_broker(bundle, broker, running)
        finally:
            running.stop()


WEARABLE = """
app ward { objective = minimize(latency) }
device patch   { tier = edge, compute = 10 GFLOPS, memory = 1 GiB }
device gateway { tier = fog, compute = 1 TFLOPS, memory = 8 GiB }
device server  { tier = cloud, compute = 10 TFLOPS, memory = 64 GiB }
link patch <-> gateway { bandwidth = 10 Mbps, latency = 2 ms }
link patch <-> server  { bandwidth = 10 Mbps, latency = 5 ms }
link gateway <-> server { bandwidth = 100 Mbps, latency = 20 ms }
sensor ecg { on = patch, rate = 10 Hz, emits = float32[1, 250] }
actuator pager { on = gateway }
store records { on = server }
pipeline alert { flow = ecg -> pager }
pipeline archive { flow = ecg -> records }
"""


def _bundle_of(text: str, name: str = "app.ef") -> Bundle:
    checked = api.check_text(text, str(ROOT / "examples" / name))
    assert checked.program is not None, checked.diagnostics
    result = api.plan(checked.program)
    assert result.plan is not None and result.execution is not None
    return build_bundle(result.execution, result.plan)


def test_a_broker_bridging_to_several_peers_starts(root: Path) -> None:
    """A device linked to two others bridges to both (its links are the routes): mosquitto
    exits on two bridges of one `connection` name ("Duplicate bridge name")."""
    bundle = _bundle_of(WEARABLE)
    broker = bundle.brokers["patch"]
    assert sorted(br.peer for br in broker.bridges) == ["gateway", "server"]
    assert len({br.name for br in broker.bridges}) == len(broker.bridges)
    assert len({br.local_clientid for br in broker.bridges}) == len(broker.bridges)
    Running(bundle, broker, root / broker.name).stop()  # raises if mosquitto exits


def test_bridges_join_linked_devices_and_carry_only_what_their_tiers_may_hold(
        bundle: Bundle) -> None:
    program = bundle.program
    execution = build_execution(program)
    linked = {frozenset(edge) for edge in execution.network.edges}
    labels = _topic_labels(execution, bundle.clients)
    for broker in bundle.brokers.values():
        tier = broker.tier
        held = {t for rules in broker.acl.values() for ts in rules.values() for t in ts}
        for t in held:
            assert all(tier in {x.value for x in program.privacy[lb].allow}
                       for lb in labels.get(t, ())), (broker.device, t)
        for bridge in broker.bridges:
            assert frozenset((bridge.initiator, bridge.peer)) in linked, bridge


def test_a_message_crosses_a_two_hop_route(root: Path) -> None:
    """ar_assist's session recording goes headset -> edge_gpu -> render_farm: the headset has
    no link to the render farm, so its message crosses two bridges, through edge_gpu's broker."""
    bundle = _bundle_of((ROOT / "examples" / "ar_assist.ef").read_text(), "ar_assist.ef")
    headset, middle, farm = (bundle.brokers[d] for d in ("headset[0]", "edge_gpu", "render_farm"))
    assert [b.peer for b in headset.bridges] == ["edge_gpu"]
    assert [b.peer for b in middle.bridges] == ["render_farm"]
    t = headset.bridges[0].out_topics[0]
    assert t in middle.bridges[0].out_topics  # forwarded, hop by hop
    writer = next(u for u, r in headset.acl.items() if t in r["write"])
    reader = next(u for u, r in farm.acl.items() if t in r["read"])
    last = Running(bundle, farm, root / "farm")
    try:
        hop = Running(bundle, middle, root / "middle", ca=last.folder / "tls",
                      peers={"render_farm": last.port})
        try:
            first = Running(bundle, headset, root / "headset", ca=last.folder / "tls",
                            peers={"edge_gpu": hop.port})
            try:
                sub = last.client(reader, client_id=reader)
                inbox = _received(sub)
                assert _connect(sub, last.port) and _subscribe(sub, t)
                pub = first.client(writer, client_id=writer)
                assert _connect(pub, first.port)
                deadline = time.monotonic() + 20  # both bridges (re)connect within seconds
                while not inbox and time.monotonic() < deadline:
                    pub.publish(t, b"frame", qos=1).wait_for_publish(5)
                    time.sleep(0.3)
                assert inbox and inbox[0] == t, f"{t} did not cross headset -> edge_gpu -> farm"
                for c in (pub, sub):
                    c.disconnect()
                    c.loop_stop()
            finally:
                first.stop()
        finally:
            hop.stop()
    finally:
        last.stop()


def _watch(c: mqtt.Client) -> threading.Event:
    dropped = threading.Event()
    c.on_disconnect = lambda *args: dropped.set()  # type: ignore[assignment]
    return dropped


def test_no_certificate_takes_over_another_identitys_client_id(bundle: Bundle,
                                                                root: Path) -> None:
    """A client with certificate A that connects with client id B gets client id A: B (a unit,
    a sensor, a bridge) stays connected and keeps receiving."""
    # the broker most identities connect to: the cloud's, where edge bridges arrive
    broker = max(bundle.brokers.values(), key=lambda b: len(b.acl))
    bridges = sorted(u for u in broker.acl if ".bridge." in u)
    units = sorted(u for u in broker.acl if ".bridge." not in u)
    victims = ([bridges[0]] if bridges else []) + units[:1]
    assert victims and len(broker.acl) > 1
    running = Running(bundle, broker, root / broker.name)
    try:
        for victim in victims:
            attacker = next(u for u in sorted(broker.acl) if u != victim)
            target = running.client(victim, client_id=victim)
            dropped = _watch(target)
            assert _connect(target, running.port), f"{victim} could not connect"
            rules = broker.acl[victim]
            readable = rules["read"][0] if rules["read"] else None
            if readable is not None:
                assert _subscribe(target, readable)
            inbox = _received(target)
            thief = running.client(attacker, client_id=victim)
            thief_dropped = _watch(thief)
            assert _connect(thief, running.port), "the broker refused the second client"
            time.sleep(0.5)
            assert not dropped.is_set(), f"{attacker}'s certificate took over {victim}'s session"
            assert not thief_dropped.is_set()
            if readable is not None:  # the victim still receives what its writer sends
                writer = next((u for u, r in broker.acl.items() if readable in r["write"]),
                              None)
                if writer is not None:
                    w = running.client(writer, client_id=writer)
                    assert _connect(w, running.port)
                    w.publish(readable, b"x", qos=1).wait_for_publish(5)
                    deadline = time.monotonic() + 5
                    while not inbox and time.monotonic() < deadline:
                        time.sleep(0.02)
                    assert inbox == [readable]
                    w.disconnect()
                    w.loop_stop()
            for c in (thief, target):
                c.disconnect()
                c.loop_stop()
    finally:
        running.stop()


def _check_broker(bundle: Bundle, broker: Broker, running: Running) -> None:
    assert _refuses_anonymous(running), "a client without a certificate got in"
    topics = sorted({t for rules in broker.acl.values() for a in ("read", "write")
                     for t in rules[a]})
    clients = {user: running.client(user) for user in sorted(broker.acl)}
    inbox = {user: _received(c) for user, c in clients.items()}
    for user, c in clients.items():
        assert _connect(c, running.port), f"{user} could not connect"
    try:
        for user, rules in broker.acl.items():
            for t in rules["read"]:
                assert _subscribe(clients[user], t), f"{user} may not read its topic {t}"
            # other topics: mosquitto may acknowledge the subscription (when the user may write
            # the topic) but must deliver nothing on it
            for t in topics:
                if t not in rules["read"]:
                    _subscribe(clients[user], t)
        # every client publishes on every topic: only writers' messages may be delivered, and
        # only to readers
        for t in topics:
            for user, c in clients.items():
                c.publish(t, payload=user.encode(), qos=1).wait_for_publish(5)
        expected = {user: sorted(t for t in rules["read"]
                                 if any(t in r["write"] for r in broker.acl.values()))
                    for user, rules in broker.acl.items()}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(
                sorted(set(inbox[u])) != expected[u] for u in clients):
            time.sleep(0.02)
        time.sleep(0.2)  # let any message that should not come, come
        for user in clients:
            writers = sum(1 for r in broker.acl.values() for t in r["write"]
                          if t in broker.acl[user]["read"])
            assert sorted(set(inbox[user])) == expected[user], (user, inbox[user])
            assert len(inbox[user]) == writers, f"{user} got messages from non-writers"
    finally:
        for c in clients.values():
            c.disconnect()
            c.loop_stop()


def test_a_bridge_carries_its_topics_and_keeps_its_session(bundle: Bundle, root: Path) -> None:
    """Two real brokers, one CA: the edge broker's bridge (certificate CN = its identity, client
    id bound to it) carries its topics to the peer, and another certificate connecting to the
    peer with the bridge's client id does not cut the bridge off."""
    edge = next((b for b in bundle.brokers.values() if b.bridges and b.bridges[0].out_topics),
                None)
    assert edge is not None
    bridge = edge.bridges[0]
    t = bridge.out_topics[0]
    peer_broker = bundle.brokers[bridge.peer]
    writer = next(u for u, r in edge.acl.items() if t in r["write"])
    reader = next(u for u, r in peer_broker.acl.items() if t in r["read"])
    peer = Running(bundle, peer_broker, root / "peer")
    try:
        running = Running(bundle, edge, root / "edge", ca=peer.folder / "tls",
                          peers={bridge.peer: peer.port})
        try:
            sub = peer.client(reader, client_id=reader)
            inbox = _received(sub)
            assert _connect(sub, peer.port) and _subscribe(sub, t)
            pub = running.client(writer, client_id=writer)
            assert _connect(pub, running.port)

            def delivered(payload: bytes) -> bool:
                deadline = time.monotonic() + 15  # the bridge (re)connects within seconds
                while time.monotonic() < deadline:
                    pub.publish(t, payload, qos=1).wait_for_publish(5)
                    time.sleep(0.3)
                    if inbox:
                        inbox.clear()
                        return True
                return False

            assert delivered(b"before"), f"the bridge of {edge.device} did not carry {t}"
            thief = peer.client("stranger", client_id=bridge.identity)  # CN <app>.stranger
            assert _connect(thief, peer.port)
            time.sleep(0.5)
            pub.publish(t, b"after", qos=1).wait_for_publish(5)
            deadline = time.monotonic() + 2
            while not inbox and time.monotonic() < deadline:
                time.sleep(0.02)
            assert inbox == [t], "another certificate took over the bridge's session"
            for c in (thief, pub, sub):
                c.disconnect()
                c.loop_stop()
        finally:
            running.stop()
    finally:
        peer.stop()


@settings(max_examples=8, deadline=None)
@given(random_app())
def test_every_broker_config_of_random_apps_starts_and_bridges_follow_links(text: str) -> None:
    checked = api.check_text(text, str(ROOT / "examples" / "rnd.ef"))
    assume(checked.program is not None)
    assert checked.program is not None
    result = api.plan(checked.program)
    assume(result.plan is not None and result.plan.feasible)
    assert result.plan is not None and result.execution is not None
    bundle = build_bundle(result.execution, result.plan)
    test_bridges_join_linked_devices_and_carry_only_what_their_tiers_may_hold(bundle)
    folder = Path(tempfile.mkdtemp(prefix="edgeflow-mqtt-"))
    folder.chmod(0o755)
    try:
        for broker in bundle.brokers.values():
            Running(bundle, broker, folder / broker.name).stop()  # raises if mosquitto exits
    finally:
        shutil.rmtree(folder)
