"""Kubernetes with KubeEdge conventions, under the restricted Pod Security Standard: a namespace
that enforces it, and per device instance one pod (a Deployment) holding that device's broker,
its units' workers and its sensors' and sinks' drivers as containers sharing localhost, so no
host network, host port or host path is needed; models reach the pod through an init container
of a per-bundle model image; a Service for a broker other devices' bridges dial; and a
NetworkPolicy admitting exactly the planned connections (docs/bundles.md)."""

from __future__ import annotations

import hashlib
from typing import Any

from edgeflow.cost import millicores, unit_cpu, unit_memory_bytes
from edgeflow.emit.bundle import Broker, Bundle, Client, device_label, k8s_name
from edgeflow.emit.identities import bridge_secret, broker_secret, client_secret, identities
from edgeflow.emit.mqtt import render_acl, render_conf
from edgeflow.emit.targets.base import Rendering, Target
from edgeflow.emit.templating import render
from edgeflow.emit.units import (
    BROKER_IMAGE,
    WORKER_IMAGE,
    driver_spec,
    metrics_port,
    unit_config,
)
from edgeflow.ir import BROKER_CPU, DRIVER_CPU
from edgeflow.plan import Part

WORKER_COMMAND = ["python", "-m", "edgeflow.runtime"]
DRIVER_COMMAND = ["python", "-m", "edgeflow.runtime.drivers"]
MODELS_BASE_IMAGE = "busybox:1.36.1"
UIDS = {"worker": 10001, "broker": 1883}


def quantity(nbytes: int) -> str:
    """Bytes as a Kubernetes quantity, exactly: `Mi` or `Ki` where they divide it."""
    for suffix, unit in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if nbytes % unit == 0 and nbytes:
            return f"{nbytes // unit}{suffix}"
    return str(nbytes)


def _security(uid: int) -> dict[str, Any]:
    """A container's securityContext under the restricted Pod Security Standard."""
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def _placement(bundle: Bundle, tier: str, device: str) -> dict[str, Any]:
    """Where a device's pod may run: its node (`edgeflow.io/device`), on the edge or not, and
    the device's declared labels as node selectors (`accelerator = "jetson-nano"` ->
    `edgeflow.io/accelerator: jetson-nano`)."""
    declared = bundle.program.devices[device.split("[")[0]].labels
    return {"edge": tier != "cloud", "device_label": device_label(device),
            "selectors": {f"edgeflow.io/{k}": v for k, v in sorted(declared.items())}}


def _labels(bundle: Bundle, name: str, device: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": k8s_name(bundle.app),
            "app.kubernetes.io/managed-by": "edgeflow", "edgeflow.io/role": "device",
            "edgeflow.io/device": device_label(device)}


def models_image(r: Rendering) -> str | None:
    """The per-bundle model image: its tag is the digest of the model files it holds."""
    if not r.artefacts:
        return None
    digest = hashlib.sha256("\n".join(sorted(f"{a.path} {a.sha256}" for a in
                                             r.artefacts.values())).encode()).hexdigest()
    return f"edgeflow-models-{k8s_name(r.bundle.app) or 'app'}:{digest[:12]}"


class Kubernetes(Target):
    name = "k8s"
    description = "Kubernetes/KubeEdge manifests with a kustomization"

    def broker_host(self, bundle: Bundle, client: Client) -> str:
        return "127.0.0.1"  # every client runs in its device's pod, beside the broker

    def render(self, r: Rendering) -> dict[str, bytes]:
        bundle = r.bundle
        namespace = k8s_name("edgeflow", bundle.app)
        image = models_image(r)
        files: dict[str, bytes] = {}
        resources = ["common.yaml"]
        files["k8s/common.yaml"] = render("k8s/common.yaml.j2", app=bundle.app,
                                          namespace=namespace).encode()
        dials: dict[str, list[str]] = {d: [] for d in bundle.brokers}
        dialled_by: dict[str, list[str]] = {d: [] for d in bundle.brokers}
        for b in bundle.brokers.values():
            for bridge in b.bridges:
                dials[b.device].append(device_label(bridge.peer))
                dialled_by[bridge.peer].append(device_label(b.device))
        for b in bundle.brokers.values():
            view = self._device(r, b, image)
            view["dials"], view["dialled_by"] = sorted(dials[b.device]), \
                sorted(dialled_by[b.device])
            files[f"k8s/{view['name']}.yaml"] = render(
                "k8s/device.yaml.j2", d=view, p=_placement(bundle, b.tier, b.device),
                namespace=namespace, broker_image=BROKER_IMAGE, worker_image=WORKER_IMAGE,
                security={uid: _security(uid) for uid in UIDS.values()}).encode()
            resources.append(f"{view['name']}.yaml")
        if image is not None:
            files["k8s/models.Dockerfile"] = render(
                "k8s/models.Dockerfile.j2", image=image, base=MODELS_BASE_IMAGE,
                uid=UIDS["worker"]).encode()
        files["k8s/kustomization.yaml"] = render("k8s/kustomization.yaml.j2", app=bundle.app,
                                                 namespace=namespace,
                                                 resources=resources).encode()
        files["k8s/cert-manager/certificates.yaml"] = render(
            "k8s/certificates.yaml.j2", app=bundle.app, namespace=namespace,
            identities=identities(bundle)).encode()
        files["k8s/cert-manager/kustomization.yaml"] = render(
            "k8s/kustomization.yaml.j2", app=bundle.app, namespace=namespace,
            resources=["certificates.yaml"]).encode()
        return files

    def _device(self, r: Rendering, b: Broker, image: str | None) -> dict[str, Any]:
        bundle = r.bundle
        name = device_label(b.device)
        config: dict[str, str] = {"mosquitto.conf": render_conf(bundle, b),
                                  "edgeflow.acl": render_acl(b)}
        clients: list[dict[str, Any]] = []
        device = bundle.program.devices[b.device.split("[")[0]]
        # requests are what the plan reserved (cost.unit_memory_bytes and friends), so the pod
        # fits its node exactly when the plan fits its device
        for c in [u for u in bundle.units() if u.device == b.device]:
            unit = bundle.placed(c)
            memory = unit_memory_bytes(unit.memory_bytes, device)
            config[f"{c.name}.json"] = unit_config(r, self, c)
            clients.append({"name": c.name, "command": WORKER_COMMAND,
                            "metrics_port": metrics_port(bundle, c),
                            "cpu": f"{millicores(unit_cpu(unit.compute_share, device), device)}m",
                            "memory": quantity(memory), "memory_limit": quantity(2 * memory),
                            "secret": client_secret(c.name),
                            "models": unit.part is not Part.OPERATOR,
                            # a model on a device that declares a GPU gets one
                            "gpu": device.gpu if unit.part is not Part.OPERATOR else None,
                            "store": False})
        for c in [d for d in bundle.clients if not d.is_unit and d.device == b.device]:
            config[f"{c.name}.json"] = driver_spec(bundle, c, "127.0.0.1").to_json()
            clients.append({"name": c.name, "command": DRIVER_COMMAND,
                            "metrics_port": metrics_port(bundle, c),
                            "cpu": f"{millicores(DRIVER_CPU / device.cpus, device)}m",
                            "memory": quantity(device.driver_memory_bytes),
                            "memory_limit": quantity(2 * device.driver_memory_bytes),
                            "secret": client_secret(c.name), "models": False,
                            "gpu": None, "store": c.kind != "sensor"})
        # the broker's limit leaves room for a few of the largest messages in flight
        broker_limit = max(2 * device.broker_memory_bytes, 256 * 2**20,
                           4 * bundle.max_message_bytes + 128 * 2**20)
        needs_models = any(c["models"] for c in clients)
        return {
            "name": name, "device": b.device, "tier": b.tier, "external": b.external,
            "labels": _labels(bundle, name, b.device), "config": config, "clients": clients,
            "models_image": image if needs_models else None,
            "has_store": any(c["store"] for c in clients),
            "broker": {"name": b.name, "secret": broker_secret(b.name),
                       "bridge_secret": bridge_secret(b.name) if b.bridges else None,
                       "cpu": f"{millicores(BROKER_CPU / device.cpus, device)}m",
                       "memory": quantity(device.broker_memory_bytes),
                       "memory_limit": quantity(broker_limit)},
        }
