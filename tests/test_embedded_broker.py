"""The embedded broker (`python -m edgeflow.runtime.embedded`) against paho-mqtt clients: TLS with
a required client certificate, the certificate's CN as the only identity a client may use, the
per-user topic ACL for PUBLISH and SUBSCRIBE, a 1.3 MB payload at QoS 0 and 1, a clean exit on
SIGTERM, and one-line errors for a configuration it cannot serve."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from edgeflow import pki
from edgeflow.runtime.embedded import filter_covers
from tests.conftest import ROOT

HOST = "127.0.0.1"
BIG = bytes(range(256)) * 5079  # 1.3 MB, every byte value
ACL = {
    "camera": {"read": [], "write": ["cam/frames", "cam/status"]},
    "viewer": {"read": ["cam/frames", "cam/status", "cam/secret"], "write": []},
    "wild": {"read": ["site/+/temp", "logs/#"], "write": ["logs/wild"]},
}


@dataclass
class Certs:
    folder: Path

    def client(self, stem: str) -> tuple[str, str]:
        return str(self.folder / f"{stem}.crt"), str(self.folder / f"{stem}.key")

    @property
    def ca(self) -> str:
        return str(self.folder / "ca.crt")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("pki")
    ca = pki.new_ca("edgeflow-test-ca")
    pki.write_ca(folder, ca)
    pki.write_identity(folder, "broker", pki.issue(ca, "broker", dns=["localhost"], ips=[HOST],
                                                   server=True, client=False))
    for user in (*ACL, "stranger"):
        pki.write_identity(folder, user, pki.issue(ca, user))
    # a certificate from another CA, with a name the broker knows
    pki.write_identity(folder, "forged", pki.issue(pki.new_ca("other-ca"), "camera"))
    return Certs(folder)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _write_config(folder: Path, certs: Certs, port: int, name: str = "edge") -> Path:
    config = folder / f"brokers-{name}-{port}.json"
    config.write_text(json.dumps([{
        "name": name, "host": HOST, "port": port, "ca": certs.ca,
        "cert": str(certs.folder / "broker.crt"), "key": str(certs.folder / "broker.key"),
        "acl": ACL}]))
    return config


def _start(config: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "edgeflow.runtime.embedded", "--config",
                             str(config)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the broker prints `ready` or exits
    if line.strip() != "ready":
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the broker did not start: {line!r} {err}")
    return proc


@dataclass
class Broker:
    port: int
    proc: subprocess.Popen[str]


@pytest.fixture(scope="module")
def broker(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    port = _free_port()
    proc = _start(_write_config(tmp_path_factory.mktemp("broker"), certs, port))
    yield Broker(port, proc)
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=5)
        assert proc.returncode == 0 and "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()


@dataclass
class Client:
    """A paho client on a background loop that records what it sees."""

    mqtt: mqtt.Client
    connected: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)
    refused: list[ReasonCode] = field(default_factory=list)
    subacks: list[list[int]] = field(default_factory=list)
    suback: threading.Event = field(default_factory=threading.Event)
    messages: list[mqtt.MQTTMessage] = field(default_factory=list)
    got: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, topic: str, count: int = 1, timeout: float = 10) -> list[mqtt.MQTTMessage]:
        with self.got:
            self.got.wait_for(lambda: sum(m.topic == topic for m in self.messages) >= count,
                              timeout)
            return [m for m in self.messages if m.topic == topic]

    def subscribe(self, topic: str, qos: int = 1) -> list[int]:
        self.suback.clear()
        self.mqtt.subscribe(topic, qos)
        assert self.suback.wait(5), "no SUBACK"
        return self.subacks[-1]

    def stop(self) -> None:
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


def _client(port: int, certs: Certs, client_id: str, cert: str | None,
            clean_session: bool = True) -> Client:
    paho = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                       client_id=client_id, protocol=mqtt.MQTTv311, clean_session=clean_session)
    if cert is None:
        paho.tls_set(certs.ca)
    else:
        paho.tls_set(certs.ca, *certs.client(cert))
    paho.reconnect_delay_set(30, 30)  # no test wants paho to reconnect by itself
    c = Client(paho)

    def on_connect(_c: mqtt.Client, _u: object, _f: object, rc: ReasonCode,
                   _p: object) -> None:
        if rc.is_failure:
            c.refused.append(rc)
            c.closed.set()
        else:
            c.connected.set()

    def on_disconnect(*_args: object) -> None:
        c.closed.set()

    def on_subscribe(_c: mqtt.Client, _u: object, _mid: int, codes: list[ReasonCode],
                     _p: object) -> None:
        c.subacks.append([int(code.value) for code in codes])
        c.suback.set()

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        with c.got:
            c.messages.append(message)
            c.got.notify_all()

    paho.on_connect, paho.on_disconnect = on_connect, on_disconnect
    paho.on_subscribe, paho.on_message = on_subscribe, on_message
    return c


def _connect(port: int, certs: Certs, client_id: str, cert: str | None,
             clean_session: bool = True) -> Client:
    """A client that tried to connect: `connected` is set if the broker accepted it."""
    c = _client(port, certs, client_id, cert, clean_session)
    try:
        c.mqtt.connect(HOST, port, keepalive=30)
    except OSError:  # TLS 1.2 reports a refused certificate here, 1.3 on the first read
        c.closed.set()
        return c
    c.mqtt.loop_start()
    deadline = time.monotonic() + 5
    while not (c.connected.is_set() or c.closed.is_set()) and time.monotonic() < deadline:
        time.sleep(0.01)
    if not c.connected.is_set():
        c.mqtt.loop_stop()
    return c


def _sync(publisher: Client, receiver: Client, topic: str) -> None:
    """Publish a marker at QoS 1 after what was published before, and wait until `receiver`
    has it: whatever came before from `publisher` would have arrived by then."""
    seen = len(receiver.wait_for(topic, 0, 0))
    publisher.mqtt.publish(topic, b"marker", qos=1).wait_for_publish(5)
    assert len(receiver.wait_for(topic, seen + 1)) == seen + 1
    time.sleep(0.1)


def test_certified_clients_exchange_a_large_payload_at_qos_0_and_1(broker: Broker,
                                                                    certs: Certs) -> None:
    viewer = _connect(broker.port, certs, "viewer", "viewer")
    camera = _connect(broker.port, certs, "camera", "camera")
    try:
        assert viewer.connected.is_set() and camera.connected.is_set()
        assert viewer.subscribe("cam/frames", qos=1) == [1]
        assert viewer.subscribe("cam/status", qos=0) == [0]
        camera.mqtt.publish("cam/frames", BIG, qos=1).wait_for_publish(10)
        camera.mqtt.publish("cam/status", b"ok", qos=0)
        frames = viewer.wait_for("cam/frames")
        assert len(frames) == 1 and frames[0].payload == BIG and frames[0].qos == 1
        camera.mqtt.publish("cam/frames", BIG, qos=0)
        frames = viewer.wait_for("cam/frames", 2)
        assert len(frames) == 2 and frames[1].payload == BIG
        assert [m.payload for m in viewer.wait_for("cam/status")] == [b"ok"]
    finally:
        viewer.stop()
        camera.stop()


def test_a_connection_without_a_client_certificate_fails(broker: Broker, certs: Certs) -> None:
    anonymous = _connect(broker.port, certs, "camera", None)
    assert not anonymous.connected.is_set()


def test_a_certificate_from_another_ca_fails(broker: Broker, certs: Certs) -> None:
    forged = _connect(broker.port, certs, "camera", "forged")
    assert not forged.connected.is_set()


@pytest.mark.parametrize(("client_id", "cert"), [("viewer", "camera"), ("", "camera"),
                                                  ("stranger-2", "stranger")])
def test_a_client_id_other_than_the_certificate_cn_is_refused(broker: Broker, certs: Certs,
                                                               client_id: str, cert: str) -> None:
    impostor = _connect(broker.port, certs, client_id, cert)
    assert not impostor.connected.is_set()
    assert [int(rc.value) for rc in impostor.refused] in ([], [133], [135])  # identifier rejected, not authorized


def test_an_identity_cannot_reset_or_resume_another_session(broker: Broker,
                                                            certs: Certs) -> None:
    viewer = _connect(broker.port, certs, "viewer", "viewer", clean_session=False)
    camera = _connect(broker.port, certs, "camera", "camera")
    try:
        assert viewer.subscribe("cam/status") == [1]
        for clean in (True, False):  # a clean session would delete the viewer's subscriptions
            impostor = _connect(broker.port, certs, "viewer", "camera", clean_session=clean)
            assert not impostor.connected.is_set()
        assert viewer.connected.is_set() and not viewer.closed.is_set()
        camera.mqtt.publish("cam/status", b"still here", qos=1).wait_for_publish(5)
        assert [m.payload for m in viewer.wait_for("cam/status")] == [b"still here"]
    finally:
        viewer.stop()
        camera.stop()


def test_a_reconnection_under_the_same_identity_replaces_the_old_one(broker: Broker,
                                                                     certs: Certs) -> None:
    camera = _connect(broker.port, certs, "camera", "camera")
    first = _connect(broker.port, certs, "viewer", "viewer", clean_session=False)
    second: Client | None = None
    try:
        assert first.subscribe("cam/status") == [1]
        second = _connect(broker.port, certs, "viewer", "viewer", clean_session=False)
        assert second.connected.is_set()
        assert first.closed.wait(5)  # mosquitto's take-over: the old connection is closed
        first.mqtt.loop_stop()
        camera.mqtt.publish("cam/status", b"resumed", qos=1).wait_for_publish(5)
        assert [m.payload for m in second.wait_for("cam/status")] == [b"resumed"]
    finally:
        for c in (camera, first, second):
            if c is not None:
                c.stop()


def test_a_will_outside_the_write_acl_is_refused(broker: Broker, certs: Certs) -> None:
    paho = _client(broker.port, certs, "viewer", "viewer")
    paho.mqtt.will_set("cam/frames", b"injected", qos=1)
    paho.mqtt.connect(HOST, broker.port)
    paho.mqtt.loop_start()
    try:
        assert paho.closed.wait(5) and not paho.connected.is_set()
        assert [int(rc.value) for rc in paho.refused] == [135]
    finally:
        paho.mqtt.loop_stop()


def test_a_publish_outside_the_write_acl_is_not_delivered(broker: Broker, certs: Certs) -> None:
    viewer = _connect(broker.port, certs, "viewer", "viewer")
    camera = _connect(broker.port, certs, "camera", "camera")
    try:
        assert viewer.subscribe("cam/secret") == [1]  # the viewer may read it, nobody write it
        assert viewer.subscribe("cam/status") == [1]
        camera.mqtt.publish("cam/secret", b"leak", qos=1).wait_for_publish(5)
        camera.mqtt.publish("cam/secret", b"leak", qos=0)
        viewer.mqtt.publish("cam/status", b"forged", qos=1).wait_for_publish(5)  # read-only
        _sync(camera, viewer, "cam/status")
        assert viewer.wait_for("cam/secret", timeout=0) == []
        assert [m.payload for m in viewer.wait_for("cam/status")] == [b"marker"]
        assert camera.connected.is_set() and viewer.connected.is_set()
    finally:
        viewer.stop()
        camera.stop()


def test_a_subscription_outside_the_read_acl_receives_nothing(broker: Broker,
                                                              certs: Certs) -> None:
    camera = _connect(broker.port, certs, "camera", "camera")
    viewer = _connect(broker.port, certs, "viewer", "viewer")
    wild = _connect(broker.port, certs, "wild", "wild")
    try:
        assert camera.subscribe("cam/frames") == [128]  # write-only user
        assert camera.subscribe("#") == [128]
        assert viewer.subscribe("cam/+") == [128]  # wider than its exact topics
        assert wild.subscribe("site/north/temp") == [1]
        assert wild.subscribe("logs/+/x") == [1]
        assert wild.subscribe("site/#") == [128]
        assert viewer.subscribe("cam/frames") == [1]
        camera.mqtt.publish("cam/frames", b"frame", qos=1).wait_for_publish(5)
        assert [m.payload for m in viewer.wait_for("cam/frames")] == [b"frame"]
        time.sleep(0.2)
        assert camera.messages == [] and wild.messages == []
    finally:
        for c in (camera, viewer, wild):
            c.stop()


def test_a_client_silent_for_one_and_a_half_keep_alives_is_disconnected(broker: Broker,
                                                                         certs: Certs) -> None:
    context = ssl.create_default_context(cafile=certs.ca)
    context.load_cert_chain(*certs.client("wild"))
    with context.wrap_socket(socket.create_connection((HOST, broker.port)),
                             server_hostname=HOST) as tls:
        body = b"\x00\x04MQTT\x04\x02\x00\x01" + b"\x00\x04wild"  # keep-alive 1 s
        tls.sendall(bytes([0x10, len(body)]) + body)
        tls.settimeout(5)
        assert tls.recv(4) == b"\x20\x02\x00\x00"  # CONNACK, accepted
        started = time.monotonic()
        assert tls.recv(1) == b""  # closed by the broker
        assert 1 <= time.monotonic() - started < 4


def test_acl_entries_match_as_mqtt_filters() -> None:
    assert filter_covers("a/b", "a/b") and not filter_covers("a/b", "a/c")
    assert not filter_covers("a/b", "a/+") and not filter_covers("a/b", "a/#")
    assert filter_covers("a/+", "a/b") and filter_covers("a/+", "a/+")
    assert not filter_covers("a/+", "a/b/c") and not filter_covers("a/+", "a/#")
    assert filter_covers("a/#", "a") and filter_covers("a/#", "a/b/c")
    assert filter_covers("a/#", "a/+/c") and filter_covers("#", "#")
    assert not filter_covers("a/b/c", "a/b")


def test_sigterm_stops_the_broker_with_status_0(certs: Certs, tmp_path: Path) -> None:
    port = _free_port()
    proc = _start(_write_config(tmp_path, certs, port))
    client = _connect(port, certs, "viewer", "viewer")
    try:
        assert client.connected.is_set()
        assert client.subscribe("cam/frames") == [1]
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
        assert time.monotonic() - started < 5
        assert client.closed.wait(5)
        _, err = proc.communicate()
        assert "Traceback" not in err
    finally:
        client.mqtt.loop_stop()
        if proc.poll() is None:
            proc.kill()


def _fails(config: Path) -> str:
    """The one stderr line of a broker process that cannot start (exit status 2)."""
    result = subprocess.run([sys.executable, "-m", "edgeflow.runtime.embedded", "--config",
                             str(config)], cwd=ROOT, capture_output=True, text=True, timeout=20,
                            check=False)
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_a_configuration_it_cannot_serve_is_one_line_and_status_2(
        broker: Broker, certs: Certs, tmp_path: Path) -> None:
    assert "not JSON" in _fails(_write_json(tmp_path / "bad.json", "{"))
    assert "cannot read" in _fails(tmp_path / "missing.json")
    good = json.loads(_write_config(tmp_path, certs, _free_port()).read_text())
    assert "port" in _fails(_write_json(tmp_path / "port.json", [{**good[0], "port": "x"}]))
    unreadable = {**good[0], "key": str(tmp_path / "nope.key")}
    assert "nope.key" in _fails(_write_json(tmp_path / "key.json", [unreadable]))
    in_use = {**good[0], "port": broker.port}
    assert "cannot listen" in _fails(_write_json(tmp_path / "in-use.json", [in_use]))


def _write_json(path: Path, data: object) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path
