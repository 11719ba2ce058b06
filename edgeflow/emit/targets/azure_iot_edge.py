"""Azure IoT Edge: one deployment manifest per edge or fog device instance, and the cloud part as
Kubernetes manifests beside them (docs/targets.md).

A device's manifest runs its broker (mosquitto), its units' workers and its sensors' and sinks'
drivers as modules, under the same guarantees as the other targets: the units talk through the
bundle's own brokers with mutual TLS and per-identity ACLs, not through edgeHub routes (edgeHub's
MQTT broker was removed in Edge Hub 1.3, its routes carry at most 256 KB per message and have no
per-topic ACL). edgeHub only delivers each module its twin: a worker reads its unit.json from its
module twin's desired property `edgeflow` (`python -m edgeflow.runtime --config-from-twin`), and
no route sends anything to `$upstream`, so nothing leaves a device by way of IoT Hub.

Every module runs as a non-root user with a read-only root filesystem, all capabilities dropped
and `no-new-privileges`; certificates, broker configuration and models are bind-mounted
read-only from the device's copy of the bundle (`HOST_ROOT`), never inlined.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from edgeflow.cost import unit_memory_bytes
from edgeflow.emit.bundle import MQTT_PORT, Broker, Bundle, Client, device_label, k8s_name
from edgeflow.emit.identities import (
    BRIDGE_TLS_DIR,
    TLS_DIR,
    bridge_secret,
    broker_secret,
    client_secret,
)
from edgeflow.emit.mqtt import BUNDLE_ACL, render_acl, render_conf
from edgeflow.emit.targets.base import Rendering, Target, TargetError
from edgeflow.emit.targets.k8s import cloud_part
from edgeflow.emit.units import (
    BROKER_DATA_DIR,
    BROKER_IMAGE,
    WORKER_IMAGE,
    driver_spec,
    unit_spec,
)
from edgeflow.plan import Part
from edgeflow.unit_config import CONFIG_DIGEST_ENV, TWIN_KEY, config_digest

EDGE_AGENT_IMAGE = "mcr.microsoft.com/azureiotedge-agent:1.5"
EDGE_HUB_IMAGE = "mcr.microsoft.com/azureiotedge-hub:1.5"
HOST_ROOT = "/var/lib/edgeflow"
"""Where a device keeps its copy of the bundle: HOST_ROOT/APP/{mqtt,models,secrets}."""
TWIN_MAX_BYTES = 32 * 1024  # IoT Hub's limit on a twin's desired properties
CREATE_OPTIONS_CHUNK = 512  # characters of createOptions, createOptions01, ...
CREATE_OPTIONS_MAX = 4096
MAX_MODULES = 50  # per deployment, besides $edgeAgent and $edgeHub
UIDS = {"worker": 10001, "broker": 1883}
_FEWER = "compile for another target (`--target k8s` has no such limit), or place fewer units " \
    "on this device"
STORE_DATA = "/var/lib/edgeflow/data"


def chunk_create_options(options: dict[str, Any]) -> dict[str, str]:
    """`createOptions` as IoT Edge takes it: compact JSON text in pieces of 512 characters,
    `createOptions`, `createOptions01`, `createOptions02`, ..."""
    text = json.dumps(options, sort_keys=True, separators=(",", ":"))
    pieces = [text[k:k + CREATE_OPTIONS_CHUNK] for k in range(0, len(text),
                                                               CREATE_OPTIONS_CHUNK)] or ["{}"]
    return {("createOptions" if k == 0 else f"createOptions{k:02d}"): piece
            for k, piece in enumerate(pieces)}


def _hardened() -> dict[str, Any]:
    """What the HostConfig of every module holds (non-root is its `User`)."""
    return {"ReadonlyRootfs": True, "CapDrop": ["ALL"], "SecurityOpt": ["no-new-privileges"],
            "Tmpfs": {"/tmp": "rw,noexec,nosuid,size=64m"}, "Privileged": False}


class AzureIotEdge(Target):
    name = "azure-iot-edge"
    description = "Azure IoT Edge deployment manifests per edge/fog device; cloud part as k8s"

    def broker_host(self, bundle: Bundle, client: Client) -> str:
        # modules share the device's `azure-iot-edge` network; the broker module is named as
        # its certificate is (the name is among its certificate's DNS names)
        return bundle.brokers[client.device].name

    def render(self, r: Rendering) -> dict[str, bytes]:
        bundle = r.bundle
        cloud, files = cloud_part(r)
        for b in bundle.brokers.values():
            if b.device in cloud:
                continue
            folder = f"azure-iot-edge/{device_label(b.device)}"
            # listening on the device's module network, its data on the image's own folder
            conf = render_conf(bundle, b, bind="0.0.0.0", persistence_dir=BROKER_DATA_DIR)
            files[f"{folder}/mosquitto.conf"] = conf.encode()
            manifest = self._manifest(r, b, folder, conf)
            files[f"{folder}/deployment.json"] = (json.dumps(manifest, indent=2, sort_keys=True)
                                                  + "\n").encode()
        return files

    def _manifest(self, r: Rendering, b: Broker, folder: str, conf: str) -> dict[str, Any]:
        bundle = r.bundle
        root = f"{HOST_ROOT}/{k8s_name(bundle.app) or 'app'}"
        device = bundle.program.devices[b.device.split("[")[0]]
        volume = f"edgeflow-{k8s_name(bundle.app) or 'app'}-{device_label(b.device)}"
        broker_binds = [f"{root}/{folder}/mosquitto.conf:/etc/mosquitto/mosquitto.conf:ro",
                        f"{root}/mqtt/{b.name}/edgeflow.acl:{BUNDLE_ACL}:ro",
                        f"{root}/secrets/{broker_secret(b.name)}:{TLS_DIR}:ro"]
        if b.bridges:
            broker_binds.append(f"{root}/secrets/{bridge_secret(b.name)}:{BRIDGE_TLS_DIR}:ro")
        # the image's own data folder: a new volume takes its owner (the broker's user)
        broker_binds.append(f"{volume}-broker:{BROKER_DATA_DIR}")
        broker_host: dict[str, Any] = {
            **_hardened(), "Binds": broker_binds,
            "Memory": max(2 * device.broker_memory_bytes, 256 * 2**20,
                          4 * bundle.max_message_bytes + 128 * 2**20)}
        broker_options: dict[str, Any] = {
            "User": f"{UIDS['broker']}:{UIDS['broker']}",
            "Cmd": ["mosquitto", "-c", "/etc/mosquitto/mosquitto.conf"],
            "HostConfig": broker_host}
        if b.external:  # other devices' bridges dial this broker: publish its port
            broker_options["ExposedPorts"] = {f"{MQTT_PORT}/tcp": {}}
            broker_host["PortBindings"] = {f"{MQTT_PORT}/tcp": [{"HostPort": str(MQTT_PORT)}]}
        # edgeAgent restarts a module when its definition changes, not when a file on the
        # device or its twin does: the digest of what it runs makes a new plan restart it
        conf_digest = hashlib.sha256((conf + render_acl(b)).encode()).hexdigest()
        modules: dict[str, Any] = {b.name: self._module(
            BROKER_IMAGE, broker_options, startup=0,
            env={"EDGEFLOW_BROKER_CONFIG_SHA256": conf_digest})}
        twins: dict[str, Any] = {}
        taken = {b.name}
        for c in [u for u in bundle.units() if u.device == b.device] + \
                [d for d in bundle.clients if not d.is_unit and d.device == b.device]:
            name = _module_name(c.name, taken)
            binds = [f"{root}/secrets/{client_secret(c.name)}:{TLS_DIR}:ro"]
            host: dict[str, Any] = {**_hardened(), "Binds": binds}
            options: dict[str, Any] = {"User": f"{UIDS['worker']}:{UIDS['worker']}",
                                       "HostConfig": host}
            if c.is_unit:
                unit = bundle.placed(c)
                config: Any = unit_spec(r, c, self.broker_host(bundle, c))
                memory = unit_memory_bytes(unit.memory_bytes, device)
                host["Memory"] = 2 * memory
                options["Cmd"] = ["--config-from-twin"]
                if unit.part is not Part.OPERATOR:
                    binds.append(f"{root}/models:/var/lib/edgeflow/models:ro")
                    if device.gpu is not None:  # a model on a device that declares a GPU
                        host["DeviceRequests"] = [{"Count": 1, "Capabilities": [["gpu"]]}]
            else:
                config = driver_spec(bundle, c, self.broker_host(bundle, c))
                host["Memory"] = 2 * device.driver_memory_bytes
                options["Entrypoint"] = ["python", "-m", "edgeflow.runtime.drivers"]
                options["Cmd"] = ["--config-from-twin"]
                if c.kind != "sensor":  # a sink records what it gets
                    binds.append(f"{volume}-{name}:{STORE_DATA}")
            desired = {TWIN_KEY: json.loads(config.to_json())}
            modules[name] = self._module(WORKER_IMAGE, options, startup=1, env={
                CONFIG_DIGEST_ENV: config_digest(desired[TWIN_KEY])})
            size = len(json.dumps(desired, separators=(",", ":")).encode())
            if size > TWIN_MAX_BYTES:
                raise TargetError(f"the configuration of {c.name} on {b.device} takes "
                                  f"{size:,} bytes, more than the {TWIN_MAX_BYTES:,} an IoT Hub "
                                  "module twin holds", b.device, _FEWER)
            twins[name] = {"properties.desired": desired}
        if len(modules) > MAX_MODULES:
            raise TargetError(f"{b.device} would run {len(modules)} modules; an IoT Edge "
                              f"deployment holds at most {MAX_MODULES}", b.device, _FEWER)
        agent = {"schemaVersion": "1.1",
                 "runtime": {"type": "docker", "settings": {"minDockerVersion": "v1.25"}},
                 "systemModules": {
                     "edgeAgent": {"type": "docker", "settings": {
                         "image": EDGE_AGENT_IMAGE, **chunk_create_options({})}},
                     # no host ports: no downstream device connects to this edgeHub
                     "edgeHub": {"type": "docker", "status": "running",
                                 "restartPolicy": "always", "startupOrder": 0, "settings": {
                                     "image": EDGE_HUB_IMAGE, **chunk_create_options({})}}},
                 "modules": modules}
        size = len(json.dumps(agent, separators=(",", ":")).encode())
        if size > TWIN_MAX_BYTES:
            raise TargetError(f"the module list of {b.device} takes {size:,} bytes, more than "
                              f"the {TWIN_MAX_BYTES:,} the $edgeAgent twin holds", b.device, _FEWER)
        # no routes: units talk over the bundle's broker, and nothing goes to $upstream
        hub = {"schemaVersion": "1.2", "routes": {},
               "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}}
        return {"modulesContent": {"$edgeAgent": {"properties.desired": agent},
                                   "$edgeHub": {"properties.desired": hub}, **twins}}

    @staticmethod
    def _module(image: str, options: dict[str, Any], startup: int,
                env: dict[str, str]) -> dict[str, Any]:
        chunks = chunk_create_options(options)
        total = sum(len(v) for v in chunks.values())
        if total > CREATE_OPTIONS_MAX:  # a bug, not a user error: edgeflow writes these
            raise RuntimeError(f"createOptions of {total} characters (at most "
                               f"{CREATE_OPTIONS_MAX})")
        return {"version": "1.0", "type": "docker", "status": "running",
                "restartPolicy": "always", "startupOrder": startup,
                "env": {k: {"value": v} for k, v in env.items()},
                "imagePullPolicy": "on-create", "settings": {"image": image, **chunks}}


def _module_name(name: str, taken: set[str]) -> str:
    """A client's module: its generated name (a DNS label, so IoT Edge's `[a-zA-Z0-9_-]+`),
    never one taken before it on the device."""
    candidate, k = name, 1
    while candidate in taken:
        k += 1
        candidate = f"{name}-{k}"
    taken.add(candidate)
    return candidate
