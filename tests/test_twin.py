"""`--config-from-twin`: a worker on Azure IoT Edge reads its unit.json from its module twin over
IoT Hub's MQTT protocol for modules, with a SAS token the workload API signs (edgeflow/runtime/
twin.py). Here the workload API is a fake on a Unix socket that signs with a known key (so the
token can be checked against IoT Hub's formula), and edgeHub is a real mosquitto over TLS with
a responder answering the twin request as edgeHub does."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import paho.mqtt.client as mqtt
import pytest

from edgeflow.runtime.client import StartError
from edgeflow.runtime.twin import config_text, read_twin, sas_token
from tests.mqtt_certs import make_ca, make_cert

KEY = base64.b64encode(b"the module's primary key, 32 by.").decode()
ENV = {"IOTEDGE_APIVERSION": "2019-01-30", "IOTEDGE_MODULEID": "vehicle-detector-r0",
       "IOTEDGE_MODULEGENERATIONID": "638400000000000000", "IOTEDGE_DEVICEID": "cabinet-0",
       "IOTEDGE_IOTHUBHOSTNAME": "city.azure-devices.net", "IOTEDGE_GATEWAYHOSTNAME": "localhost"}


class _Workload(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    trust = ""
    calls: ClassVar[list[tuple[str, str, Any]]] = []


class _Handler(BaseHTTPRequestHandler):
    server: _Workload

    def address_string(self) -> str:
        return "unix"

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.server.calls.append(("GET", self.path, None))
        self._reply({"certificate": self.server.trust})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.calls.append(("POST", self.path, body))
        digest = hmac.new(base64.b64decode(KEY), base64.b64decode(body["data"]),
                          hashlib.sha256).digest()
        self._reply({"digest": base64.b64encode(digest).decode()})


@pytest.fixture
def workload() -> Iterator[tuple[_Workload, dict[str, str]]]:
    folder = Path(tempfile.mkdtemp(prefix="ef-workload-"))
    server = _Workload(str(folder / "workload.sock"), _Handler)
    server.calls = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, {**ENV, "IOTEDGE_WORKLOADURI": f"unix://{folder}/workload.sock"}
    server.shutdown()
    shutil.rmtree(folder, ignore_errors=True)


def test_the_sas_token_is_iot_hubs_formula_signed_by_the_workload_api(workload: Any) -> None:
    server, env = workload
    token = sas_token(env, now=1_000_000)
    resource = "city.azure-devices.net%2Fdevices%2Fcabinet-0%2Fmodules%2Fvehicle-detector-r0"
    expiry = 1_000_000 + 3600
    expected = base64.b64encode(hmac.new(base64.b64decode(KEY), f"{resource}\n{expiry}".encode(),
                                         hashlib.sha256).digest()).decode()
    assert token == (f"SharedAccessSignature sr={resource}&sig="
                     f"{urllib.parse.quote(expected, safe='')}&se={expiry}")
    method, path, body = server.calls[-1]
    assert method == "POST" and path == ("/modules/vehicle-detector-r0/genid/638400000000000000/"
                                         "sign?api-version=2019-01-30")
    assert body["keyId"] == "primary" and body["algo"] == "HMACSHA256"


def test_a_twin_without_the_edgeflow_property_is_a_start_error() -> None:
    assert json.loads(config_text({"desired": {"edgeflow": {"app": "a"}, "$version": 3}})) == \
        {"app": "a"}
    for twin in ({}, {"desired": {}}, {"desired": {"edgeflow": "text"}}):
        with pytest.raises(StartError, match="no desired property `edgeflow`"):
            config_text(twin)


def test_outside_iot_edge_the_worker_says_so_and_exits_2() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTEDGE_")}
    proc = subprocess.run([sys.executable, "-m", "edgeflow.runtime", "--config-from-twin"],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "not running as an IoT Edge module: IOTEDGE_WORKLOADURI" in proc.stderr


@pytest.mark.skipif(shutil.which("mosquitto") is None and not os.environ.get("CI"),
                    reason="mosquitto is not installed (.ci/run installs it)")
def test_the_config_comes_from_the_twin_edgehub_sends(workload: Any) -> None:
    server, env = workload
    folder = Path(tempfile.mkdtemp(prefix="ef-edgehub-"))
    os.chmod(folder, 0o755)  # mosquitto drops root privileges before reading its files
    make_ca(folder)
    make_cert(folder, "server", "localhost", ip=True)
    server.trust = (folder / "ca.crt").read_text()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # edgeHub checks the module's user name and SAS token: so does this broker, with the
    # token IoT Hub's formula gives for the module's key (test_the_sas_token_is_...)
    module_user = "city.azure-devices.net/cabinet-0/vehicle-detector-r0/?api-version=2018-06-30"
    for user, password in (("edgehub", "hub"), (module_user, sas_token(env, now=1_000_000))):
        subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if user == "edgehub" else []),
                        str(folder / "passwords"), user, password], check=True)
    (folder / "passwords").chmod(0o644)
    (folder / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\n"
        f"password_file {folder}/passwords\ncafile {folder}/ca.crt\n"
        f"certfile {folder}/server.crt\nkeyfile {folder}/server.key\n")
    (folder / "mosquitto.conf").chmod(0o644)
    broker = subprocess.Popen(["mosquitto", "-c", str(folder / "mosquitto.conf")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen: dict[str, Any] = {}
    hub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="edgehub")
    hub.tls_set(ca_certs=str(folder / "ca.crt"))
    hub.username_pw_set("edgehub", "hub")

    def answer(c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        seen["request"] = message.topic
        rid = message.topic.rsplit("$rid=", 1)[1]
        twin = {"desired": {"edgeflow": {"app": "city", "unit": "vehicle_detector"},
                            "$version": 4}, "reported": {}}
        c.publish(f"$iothub/twin/res/200/?$rid={rid}", json.dumps(twin))

    hub.on_message = answer
    try:
        for _ in range(100):
            try:
                hub.connect("localhost", port)
                break
            except OSError:
                time.sleep(0.1)
        hub.subscribe("$iothub/twin/GET/#")
        hub.loop_start()
        time.sleep(0.3)
        server.calls.clear()
        with pytest.raises(StartError, match="edgeHub refused the connection"):
            read_twin(env, port=port, now=2_000_000)  # another token: refused
        text = read_twin(env, port=port, now=1_000_000)
        assert json.loads(text) == {"app": "city", "unit": "vehicle_detector"}
        stale = {**env, "EDGEFLOW_CONFIG_SHA256": "0" * 64}  # the deployment's is another
        with pytest.raises(StartError, match="the new twin has not arrived yet"):
            read_twin(stale, port=port, now=1_000_000)
        assert seen["request"].startswith("$iothub/twin/GET/?$rid=")
        assert [c[0] for c in server.calls][:2] == ["GET", "POST"]  # trust bundle, then sign
    finally:
        hub.loop_stop()
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
