"""Kubernetes with KubeEdge conventions: a namespace with the restricted Pod Security level, one
Deployment + ConfigMap (+ Service for brokers that accept bridges) per broker and per unit
replica, edge/fog pods pinned to their device's node, requests from the Plan, and a
kustomization listing them."""

from __future__ import annotations

import math
from typing import Any

from edgeflow.emit.bundle import Bundle, Client, device_label, k8s_name
from edgeflow.emit.mqtt import render_acl, render_conf
from edgeflow.emit.targets.base import Rendering, Target
from edgeflow.emit.templating import render
from edgeflow.emit.units import BROKER_IMAGE, WORKER_IMAGE, unit_config


def _placement(tier: str, device: str) -> dict[str, Any]:
    return {"edge": tier != "cloud", "device_label": device_label(device)}


def _labels(bundle: Bundle, name: str, role: str, device: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": k8s_name(bundle.app),
            "app.kubernetes.io/managed-by": "edgeflow", "edgeflow.io/role": role,
            "edgeflow.io/device": device_label(device)}


class Kubernetes(Target):
    name = "k8s"
    description = "Kubernetes/KubeEdge manifests with a kustomization"

    def broker_host(self, bundle: Bundle, client: Client) -> str:
        # edge and fog pods share their node's network; cloud pods reach the broker's Service
        return "127.0.0.1" if client.tier != "cloud" else bundle.brokers[client.device].name

    def render(self, r: Rendering) -> dict[str, bytes]:
        bundle = r.bundle
        namespace = k8s_name("edgeflow", bundle.app)
        files: dict[str, bytes] = {}
        resources = ["common.yaml"]
        files["k8s/common.yaml"] = render("k8s/common.yaml.j2", app=bundle.app,
                                          namespace=namespace).encode()
        for b in bundle.brokers.values():
            memory_mi = max(256, math.ceil(4 * bundle.max_message_bytes / 2**20) + 128)
            view = {
                "name": b.name, "device": b.device, "tier": b.tier, "external": b.external,
                "labels": _labels(bundle, b.name, "broker", b.device),
                "conf": render_conf(bundle, b), "acl": render_acl(b),
                "placement": _placement(b.tier, b.device),
                "memory_limit": f"{memory_mi}Mi",
                "data_host_path": f"/var/lib/edgeflow/{k8s_name(bundle.app)}/{b.name}",
            }
            files[f"k8s/{b.name}.yaml"] = render("k8s/broker.yaml.j2", b=view,
                                                 namespace=namespace,
                                                 broker_image=BROKER_IMAGE).encode()
            resources.append(f"{b.name}.yaml")
        for c in bundle.units():
            unit = bundle.placed(c)
            mem_mi = math.ceil(unit.memory_bytes / 2**20) + 128  # the worker and onnxruntime
            view = {
                "name": c.name, "step": c.step, "replica": c.replica, "device": c.device,
                "tier": c.tier, "labels": _labels(bundle, c.name, "unit", c.device),
                "config_json": unit_config(r, self, c),
                "cpu": f"{max(10, math.ceil(unit.compute_share * 1000))}m",
                "memory": f"{mem_mi}Mi", "memory_limit": f"{2 * mem_mi}Mi",
                "secret": f"{c.name}-tls",
            }
            files[f"k8s/{c.name}.yaml"] = render(
                "k8s/unit.yaml.j2", u=view, p=_placement(c.tier, c.device), namespace=namespace,
                worker_image=WORKER_IMAGE,
                models_host_path=f"/var/lib/edgeflow/{k8s_name(bundle.app)}/models").encode()
            resources.append(f"{c.name}.yaml")
        files["k8s/kustomization.yaml"] = render("k8s/kustomization.yaml.j2", app=bundle.app,
                                                 namespace=namespace,
                                                 resources=resources).encode()
        return files
