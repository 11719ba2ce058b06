"""Azure IoT Edge: a worker's or driver's configuration from its module twin (`--config-from-twin`).

The azure-iot-edge target puts each unit's unit.json (a driver's config) in its module twin's
desired property `edgeflow` (docs/targets.md). The process reads it once at start, as every IoT
Edge module can, from the environment edgeAgent gives it:

1. the workload API (`IOTEDGE_WORKLOADURI`, a Unix socket) gives the trust bundle that signs
   edgeHub's certificate, and signs a SAS token for the module with its key, which never leaves
   the security daemon;
2. with them the process connects to edgeHub (`IOTEDGE_GATEWAYHOSTNAME`, MQTT over TLS, port
   8883) as `DEVICE/MODULE` and asks for its twin (`$iothub/twin/GET/?$rid=1`), which edgeHub
   answers locally even while IoT Hub is unreachable.

This is IoT Hub's documented MQTT protocol for modules, spoken with paho-mqtt (which the worker
already uses); the `azure-iot-device` SDK is not used because it requires paho-mqtt < 2. A
changed twin takes effect when IoT Edge restarts the module (a new deployment does).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import threading
import time
import urllib.parse
import uuid
from collections.abc import Mapping
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgeflow.runtime.client import StartError
from edgeflow.unit_config import CONFIG_DIGEST_ENV, TWIN_KEY, config_digest

MQTT_API_VERSION = "2018-06-30"  # IoT Hub's MQTT API version in the user name
TOKEN_SECONDS = 3600
TIMEOUT_S = 30.0
ENVIRONMENT = ("IOTEDGE_WORKLOADURI", "IOTEDGE_APIVERSION", "IOTEDGE_MODULEID",
               "IOTEDGE_MODULEGENERATIONID", "IOTEDGE_DEVICEID", "IOTEDGE_IOTHUBHOSTNAME",
               "IOTEDGE_GATEWAYHOSTNAME")


def config_text(twin: Mapping[str, Any], digest: str | None = None) -> str:
    """The configuration a module twin (`{"desired": ..., "reported": ...}`) carries, as JSON;
    with `digest` (the deployment's, `EDGEFLOW_CONFIG_SHA256`), only that configuration."""
    desired = twin.get("desired")
    if not isinstance(desired, Mapping) or not isinstance(desired.get(TWIN_KEY), Mapping):
        raise StartError(f"the module twin has no desired property `{TWIN_KEY}`: deploy the "
                         "manifest `edgeflow compile --target azure-iot-edge` wrote")
    config = desired[TWIN_KEY]
    if digest is not None and config_digest(config) != digest:
        # IoT Edge starts the new module before edgeHub has the new twin: exit, to be
        # restarted (restartPolicy always) until it has
        raise StartError("the module twin holds another configuration than this deployment "
                         f"({CONFIG_DIGEST_ENV}); the new twin has not arrived yet")
    return json.dumps(config)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=TIMEOUT_S)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT_S)
        sock.connect(self._path)
        self.sock = sock


def _workload(env: Mapping[str, str], method: str, path: str,
              body: Mapping[str, Any] | None = None) -> dict[str, Any]:
    uri = urllib.parse.urlparse(env["IOTEDGE_WORKLOADURI"])
    if uri.scheme == "unix":
        conn: http.client.HTTPConnection = _UnixConnection(uri.path)
    else:
        conn = http.client.HTTPConnection(uri.hostname or "localhost", uri.port,
                                          timeout=TIMEOUT_S)
    query = urllib.parse.urlencode({"api-version": env["IOTEDGE_APIVERSION"]})
    try:
        conn.request(method, f"{path}?{query}", body=None if body is None else json.dumps(body),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
    except OSError as exc:
        raise StartError(f"the IoT Edge workload API ({env['IOTEDGE_WORKLOADURI']}) did not "
                         f"answer: {exc}") from None
    finally:
        conn.close()
    if response.status != 200:
        raise StartError(f"the IoT Edge workload API refused {method} {path}: "
                         f"{response.status} {data[:200].decode(errors='replace')}")
    result: dict[str, Any] = json.loads(data)
    return result


def sas_token(env: Mapping[str, str], now: float) -> str:
    """A SAS token for this module, signed by the workload API with the module's key."""
    resource = f"{env['IOTEDGE_IOTHUBHOSTNAME']}/devices/{env['IOTEDGE_DEVICEID']}/modules/" \
               f"{env['IOTEDGE_MODULEID']}"
    quoted = urllib.parse.quote(resource, safe="")
    expiry = int(now) + TOKEN_SECONDS
    signed = _workload(env, "POST", f"/modules/{urllib.parse.quote(env['IOTEDGE_MODULEID'])}/"
                       f"genid/{env['IOTEDGE_MODULEGENERATIONID']}/sign",
                       {"keyId": "primary", "algo": "HMACSHA256",
                        "data": base64.b64encode(f"{quoted}\n{expiry}".encode()).decode()})
    signature = urllib.parse.quote(signed["digest"], safe="")
    return f"SharedAccessSignature sr={quoted}&sig={signature}&se={expiry}"


def read_twin(env: Mapping[str, str] | None = None, port: int = 8883,
              now: float | None = None) -> str:
    """This module's configuration, from its twin (the steps in the module docstring);
    `now` is the time its SAS token counts from (the clock's when None)."""
    env = dict(os.environ if env is None else env)
    missing = [name for name in ENVIRONMENT if not env.get(name)]
    if missing:
        raise StartError(f"not running as an IoT Edge module: {', '.join(missing)} not set")
    trust = _workload(env, "GET", "/trust-bundle")["certificate"]
    password = sas_token(env, time.time() if now is None else now)
    device, module = env["IOTEDGE_DEVICEID"], env["IOTEDGE_MODULEID"]
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{device}/{module}",
                         protocol=mqtt.MQTTv311)
    client.username_pw_set(f"{env['IOTEDGE_IOTHUBHOSTNAME']}/{device}/{module}/"
                           f"?api-version={MQTT_API_VERSION}", password)
    context = ssl.create_default_context(cadata=trust)
    client.tls_set_context(context)
    request = uuid.uuid4().hex
    answer: dict[str, Any] = {}
    done = threading.Event()

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            answer["error"] = f"edgeHub refused the connection: {reason}"
            done.set()
            return
        c.subscribe("$iothub/twin/res/#", qos=0)

    def on_subscribe(c: mqtt.Client, *_: Any) -> None:
        c.publish(f"$iothub/twin/GET/?$rid={request}", b"", qos=0)

    def on_message(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        parts = message.topic.split("/")  # $iothub/twin/res/STATUS/?$rid=ID
        query = urllib.parse.parse_qs(parts[-1].lstrip("?"))
        if len(parts) < 5 or query.get("$rid") != [request]:
            return
        if parts[3] != "200":
            answer["error"] = f"edgeHub answered the twin request with status {parts[3]}"
        else:
            answer["twin"] = message.payload
        done.set()

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, \
        on_message
    try:
        client.connect(env["IOTEDGE_GATEWAYHOSTNAME"], port)
    except (OSError, ssl.SSLError) as exc:
        raise StartError(f"cannot reach edgeHub at {env['IOTEDGE_GATEWAYHOSTNAME']}:{port}: "
                         f"{exc}") from None
    client.loop_start()
    try:
        if not done.wait(TIMEOUT_S):
            raise StartError(f"edgeHub did not send the module twin within {TIMEOUT_S:.0f} s")
    finally:
        client.disconnect()
        client.loop_stop()
    if "error" in answer:
        raise StartError(answer["error"])
    try:
        twin = json.loads(answer["twin"])
    except ValueError:
        raise StartError("edgeHub sent a module twin that is not JSON") from None
    return config_text(twin, env.get(CONFIG_DIGEST_ENV))
