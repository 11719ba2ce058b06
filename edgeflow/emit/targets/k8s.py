"""Kubernetes with KubeEdge conventions, under the restricted Pod Security Standard: a namespace
that enforces it, and per device instance one pod (a Deployment) holding that device's broker,
its units' workers and its sensors' and sinks' drivers as containers sharing localhost, so no
host network, host port or host path is needed; models reach the pod through an init container
of a per-bundle model image; a Service for a broker other devices' bridges dial; and a
NetworkPolicy admitting exactly the planned connections (docs/bundles.md)."""

from __future__ import annotations

import hashlib
import itertools
import re
from typing import Any

import yaml

from edgeflow.cost import millicores, unit_cpu, unit_memory_bytes
from edgeflow.emit.artefacts import MODELS_MOUNT
from edgeflow.emit.bundle import (
    DNS_LABEL,
    LABEL_MAX,
    Broker,
    Bundle,
    Client,
    broker_name,
    device_label,
    k8s_name,
)
from edgeflow.emit.identities import bridge_secret, broker_secret, client_secret, identities
from edgeflow.emit.mqtt import render_acl, render_conf
from edgeflow.emit.targets.base import Rendering, Target, TargetError
from edgeflow.emit.templating import render
from edgeflow.emit.training import (
    CODE_DIR,
    COORDINATOR_CERTS,
    ENVIRONMENT,
    SPEC_DIR,
    SUPERLINK_MEMORY_BYTES,
    SUPERLINK_TLS,
    SUPERNODE_TLS,
    TMP_BYTES,
    TRAIN_IMAGE,
    WORK_DIR,
    WORK_VOLUME_BYTES,
    Federation,
    cron_schedule,
)
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
    if not r.artefacts and not r.federations:
        return None
    files = [(a.path, a.sha256) for a in
             [*r.artefacts.values(),
              *(a for cuts in r.adapt.values() for pair in cuts.values() for a in pair)]]
    files += [(path, hashlib.sha256(data).hexdigest()) for f in r.federations
              for path, data in f.files().items() if path.startswith("models/")]
    digest = hashlib.sha256("\n".join(sorted(f"{path} {sha}" for path, sha in
                                             files)).encode()).hexdigest()
    return f"edgeflow-models-{k8s_name(r.bundle.app) or 'app'}:{digest[:12]}"


class Kubernetes(Target):
    name = "k8s"
    description = "Kubernetes/KubeEdge manifests with a kustomization"

    def broker_host(self, bundle: Bundle, client: Client) -> str:
        return "127.0.0.1"  # every client runs in its device's pod, beside the broker

    deploys_training = True

    def render(self, r: Rendering) -> dict[str, bytes]:
        return self.render_devices(r, set(r.bundle.brokers), trainings=True)

    def render_devices(self, r: Rendering, devices: set[str], trainings: bool = False,
                       ) -> dict[str, bytes]:
        """The manifests of the device instances in `devices` (all of a k8s bundle; the cloud
        part of a bundle whose other devices another target deploys). A bridge to or from a
        device outside the cluster is admitted on the broker's port from anywhere — mutual TLS
        and the broker's ACL decide who it serves — and its Service is a LoadBalancer."""
        bundle = r.bundle
        namespace = k8s_name("edgeflow", bundle.app)
        image = models_image(r)
        files: dict[str, bytes] = {}
        resources = ["common.yaml"]
        files["k8s/common.yaml"] = render("k8s/common.yaml.j2", app=bundle.app,
                                          namespace=namespace).encode()
        dials: dict[str, list[str]] = {d: [] for d in bundle.brokers}
        dialled_by: dict[str, list[str]] = {d: [] for d in bundle.brokers}
        outside: dict[str, dict[str, list[str]]] = {d: {"dials": [], "dialled_by": []}
                                                    for d in bundle.brokers}
        for b in bundle.brokers.values():
            for bridge in b.bridges:
                if bridge.peer in devices:
                    dials[b.device].append(device_label(bridge.peer))
                else:
                    outside[b.device]["dials"].append(bridge.peer)
                if b.device in devices:
                    dialled_by[bridge.peer].append(device_label(b.device))
                else:
                    outside[bridge.peer]["dialled_by"].append(b.device)
        bases: dict[str, str] = {}  # a shared definition's text -> its folder
        users: dict[str, list[str]] = {}  # its folder -> the instances that share it
        for b in bundle.brokers.values():
            if b.device not in devices:
                continue
            args: dict[str, Any] = {
                "p": _placement(bundle, b.tier, b.device), "namespace": namespace,
                "broker_image": BROKER_IMAGE, "worker_image": WORKER_IMAGE,
                "security": {uid: _security(uid) for uid in UIDS.values()}}
            shared = _shared_name(bundle, b.device)
            view = self._device(r, b, image, neutral=shared is not None)
            view["dials"], view["dialled_by"] = sorted(dials[b.device]), \
                sorted(dialled_by[b.device])
            view["outside"] = {k: sorted(v) for k, v in outside[b.device].items()}
            if shared is None:  # a single device (or one whose names cannot share): whole
                files[f"k8s/{view['name']}.yaml"] = render("k8s/device.yaml.j2", d=view,
                                                           **args).encode()
                resources.append(f"{view['name']}.yaml")
                continue
            kind, suffix = shared
            base_view = _base_view(bundle, view, kind, suffix)
            text = render("k8s/device.yaml.j2", d=base_view, **{
                **args, "p": {**args["p"], "device_label": kind}})
            if text not in bases:
                taken = set(bases.values())
                folder = next(f for n in itertools.count(1)
                              if (f := f"bases/{kind}" + (f"-{n}" if n > 1 else ""))
                              not in taken)
                bases[text], users[folder] = folder, []
                files[f"k8s/{folder}/device.yaml"] = text.encode()
                files[f"k8s/{folder}/kustomization.yaml"] = render(
                    "k8s/kustomization.yaml.j2", app=bundle.app, namespace=None,
                    resources=["device.yaml"],
                    comment="What instances of a device share (instances/ uses it)").encode()
            users[bases[text]].append(b.device)
            folder = f"instances/{view['name']}"
            for key, content in view["config"].items():
                files[f"k8s/{folder}/{key}"] = content.encode()
            files[f"k8s/{folder}/kustomization.yaml"] = render(
                "k8s/instance.yaml.j2", device=b.device, tier=b.tier, base=bases[text],
                suffix=suffix, labels=view["labels"],
                config=f"{kind}-config", files=list(view["config"]),
                patches=_instance_patches(text, view, base_view)).encode()
            resources.append(folder)
        for text, folder in bases.items():  # each shared definition names who shares it
            files[f"k8s/{folder}/device.yaml"] = text.replace(
                "@SHARED_BY@", _instances_text(users[folder]), 1).encode()
        if trainings:
            for fed in r.federations:
                path = f"training/{fed.label}.yaml"
                files[f"k8s/{path}"] = render_training(r, fed, namespace, image).encode()
                resources.append(path)
        if image is not None:
            files["k8s/models.Dockerfile"] = render(
                "k8s/models.Dockerfile.j2", image=image, base=MODELS_BASE_IMAGE,
                uid=UIDS["worker"]).encode()
        files["k8s/kustomization.yaml"] = render("k8s/kustomization.yaml.j2", app=bundle.app,
                                                 namespace=namespace,
                                                 resources=resources).encode()
        files["k8s/cert-manager/ca.yaml"] = render(
            "k8s/ca.yaml.j2", app=bundle.app, namespace=namespace).encode()
        files["k8s/cert-manager/identities/certificates.yaml"] = render(
            "k8s/certificates.yaml.j2", app=bundle.app,
            identities=identities(bundle, r.federations if trainings else ())).encode()
        files["k8s/cert-manager/identities/kustomization.yaml"] = render(
            "k8s/identities.kustomization.yaml.j2").encode()
        files["k8s/cert-manager/kustomization.yaml"] = render(
            "k8s/kustomization.yaml.j2", app=bundle.app, namespace=namespace,
            resources=["ca.yaml", "identities"]).encode()
        return files

    def _device(self, r: Rendering, b: Broker, image: str | None, neutral: bool = False,
                ) -> dict[str, Any]:
        """The view device.yaml.j2 renders for the pod of device instance `b.device`. With
        `neutral`, containers (and their config files) are named by step alone, as in every
        instance of the device's kind (`_shared_name`)."""
        bundle = r.bundle
        name = device_label(b.device)
        config: dict[str, str] = {"mosquitto.conf": render_conf(bundle, b),
                                  "edgeflow.acl": render_acl(b)}
        clients: list[dict[str, Any]] = []
        device = bundle.program.devices[b.device.split("[")[0]]
        mine = [u for u in bundle.units() if u.device == b.device] + \
            [d for d in bundle.clients if not d.is_unit and d.device == b.device]
        containers = dict(zip((c.name for c in mine),
                              _distinct([_container(c, neutral) for c in mine]), strict=True))
        # requests are what the plan reserved (cost.unit_memory_bytes and friends), so the pod
        # fits its node exactly when the plan fits its device
        for c in [u for u in bundle.units() if u.device == b.device]:
            unit = bundle.placed(c)
            memory = unit_memory_bytes(unit.memory_bytes, device)
            container = containers[c.name]
            config[f"{container}.json"] = unit_config(r, self, c)
            clients.append({"name": c.name, "container": container, "command": WORKER_COMMAND,
                            "metrics_port": metrics_port(bundle, c),
                            "cpu": f"{millicores(unit_cpu(unit.compute_share, device), device)}m",
                            "memory": quantity(memory), "memory_limit": quantity(2 * memory),
                            "secret": client_secret(c.name),
                            "models": unit.part is not Part.OPERATOR,
                            # a model on a device that declares a GPU gets one
                            "gpu": device.gpu if unit.part is not Part.OPERATOR else None,
                            "store": False})
        for c in [d for d in bundle.clients if not d.is_unit and d.device == b.device]:
            container = containers[c.name]
            config[f"{container}.json"] = driver_spec(bundle, c, "127.0.0.1").to_json()
            clients.append({"name": c.name, "container": container, "command": DRIVER_COMMAND,
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
        digest = hashlib.sha256()
        for key, text in sorted(config.items()):
            digest.update(f"{key}\0{len(text.encode())}\0{text}".encode())
        return {
            "name": name, "device": b.device, "tier": b.tier, "external": b.external,
            "base": False, "config_digest": digest.hexdigest(),
            "labels": _labels(bundle, name, b.device), "config": config, "clients": clients,
            "models_image": image if needs_models else None,
            "has_store": any(c["store"] for c in clients),
            "broker": {"name": b.name, "secret": broker_secret(b.name),
                       "bridge_secret": bridge_secret(b.name) if b.bridges else None,
                       "cpu": f"{millicores(BROKER_CPU / device.cpus, device)}m",
                       "memory": quantity(device.broker_memory_bytes),
                       "memory_limit": quantity(broker_limit)},
        }


def cloud_part(r: Rendering) -> tuple[set[str], dict[str, bytes]]:
    """The cloud device instances of `r`'s bundle and their manifests, for a target that
    deploys the edge and fog devices its own way: without cert-manager resources, since every
    certificate then comes from `edgeflow certs` (one CA for edge and cloud), and with only the
    model files the cloud's units run in the model image."""
    bundle = r.bundle
    cloud = {d for d, b in bundle.brokers.items() if b.tier == "cloud"}
    if not cloud:
        return cloud, {}
    used = {(u.step, u.part, u.replica) for c in bundle.units() if c.device in cloud
            for u in [bundle.placed(c)]}
    part = Rendering(bundle, {k: a for k, a in r.artefacts.items() if k in used}, r.options,
                     {k: cuts for k, cuts in r.adapt.items()
                      if any((k[0], p, k[1]) in used for p in (Part.HEAD, Part.TAIL))})
    return cloud, {path: data for path, data in
                   Kubernetes().render_devices(part, cloud).items()
                   if not path.startswith("k8s/cert-manager/")}


def _container(c: Client, neutral: bool) -> str:
    """A client's container: named by its step alone in a pod its kind's instances share."""
    return k8s_name(c.step) if neutral else c.name


RESERVED = ("broker", "models")  # the broker's container and the models' init container


def _distinct(names: list[str]) -> list[str]:
    """Container names as given, but never a reserved one or one taken before it (a sensor
    named `broker` runs as `broker-2`)."""
    out: list[str] = []
    taken = set(RESERVED)
    for name in names:
        candidate, k = name, 1
        while candidate in taken:
            k += 1
            candidate = f"{name[:LABEL_MAX - len(str(k)) - 1].rstrip('-')}-{k}"
        taken.add(candidate)
        out.append(candidate)
    return out


def _shared_name(bundle: Bundle, instance: str) -> tuple[str, str] | None:
    """(the kind's label, the instance's name suffix) when instance `NAME[i]` of a device
    with count > 1 may share its definition: its labels and broker are the kind's plus the
    suffix, and its containers' step names are distinct DNS labels. None otherwise."""
    kind = instance.split("[")[0]
    if bundle.program.devices[kind].count == 1:
        return None
    label, own = device_label(kind), device_label(instance)
    suffix = own.removeprefix(label)
    steps = [k8s_name(c.step) for c in bundle.clients if c.device == instance]
    if not own.startswith(label) or not re.fullmatch(r"-[0-9]+", suffix) or \
            broker_name(instance) != f"broker-{own}" or len(set(steps)) != len(steps) or \
            not all(DNS_LABEL.fullmatch(s) for s in steps):
        return None
    return label, suffix


def _base_view(bundle: Bundle, view: dict[str, Any], kind: str, suffix: str) -> dict[str, Any]:
    """The view of what the instances of a kind share: the kind's names, placeholder secrets
    (each instance names its own), and network peers of the same site by their kind."""
    def peer(label: str) -> str:
        return label.removesuffix(suffix) if label.endswith(suffix) and \
            _is_site_peer(bundle, label.removesuffix(suffix)) else label

    return {**view, "name": kind, "base": True, "shared_by": "@SHARED_BY@",
            "labels": {**view["labels"], "app.kubernetes.io/name": kind,
                       "edgeflow.io/device": kind},
            "clients": [{**c, "secret": f"{kind}-{c['container']}-tls"}
                        for c in view["clients"]],
            "broker": {**view["broker"], "name": f"broker-{kind}",
                       "secret": f"broker-{kind}-tls",
                       "bridge_secret": view["broker"]["bridge_secret"] and
                       f"broker-{kind}-bridge-tls"},
            "dials": [peer(x) for x in view["dials"]],
            "dialled_by": [peer(x) for x in view["dialled_by"]]}


def _is_site_peer(bundle: Bundle, label: str) -> bool:
    """Whether `label` is the label of a device kind with count > 1."""
    return any(d.count > 1 and device_label(d.name) == label
               for d in bundle.program.devices.values())


def _instance_patches(base: str, view: dict[str, Any], base_view: dict[str, Any],
                      ) -> list[tuple[str, list[dict[str, Any]]]]:
    """JSON patches (RFC 6902) turning the shared definition into the instance's pod: its
    selector, node, secrets and network peers (its names and labels come from the
    kustomization's nameSuffix and labels)."""
    me = view["name"]
    docs = {d["kind"]: d for d in yaml.safe_load_all(base) if d}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    device_key = "edgeflow.io~1device"
    ops: list[dict[str, Any]] = [
        {"op": "replace", "path": "/spec/selector/matchLabels/app.kubernetes.io~1name",
         "value": me},
        {"op": "add", "path": "/spec/template/metadata/annotations",
         "value": {"edgeflow.io/config-sha256": view["config_digest"]}}]
    if "nodeSelector" in pod:
        ops.append({"op": "replace", "path": f"/spec/template/spec/nodeSelector/{device_key}",
                    "value": me})
    else:
        terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        index = next(k for k, e in enumerate(terms["nodeSelectorTerms"][0]["matchExpressions"])
                     if e["key"] == "edgeflow.io/device")
        ops.append({"op": "replace", "path": "/spec/template/spec/affinity/nodeAffinity/"
                    "requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/"
                    f"matchExpressions/{index}/values", "value": [me]})
    secrets = {f"broker-{base_view['name']}-tls": view["broker"]["secret"],
               f"broker-{base_view['name']}-bridge-tls": view["broker"]["bridge_secret"],
               **{b["secret"]: c["secret"] for b, c in zip(base_view["clients"],
                                                           view["clients"], strict=True)}}
    for k, volume in enumerate(pod["volumes"]):
        if "secret" in volume:
            ops.append({"op": "replace", "path": f"/spec/template/spec/volumes/{k}/secret/"
                        "secretName", "value": secrets[volume["secret"]["secretName"]]})
    policy: list[dict[str, Any]] = [
        {"op": "replace", "path": f"/spec/podSelector/matchLabels/{device_key}", "value": me}]
    for direction, key, peers, shared in (("ingress", "from", view["dialled_by"],
                                           base_view["dialled_by"]),
                                          ("egress", "to", view["dials"], base_view["dials"])):
        if peers != shared:
            policy.append({"op": "replace", "path": f"/spec/{direction}/0/{key}", "value": [
                {"podSelector": {"matchLabels": {"edgeflow.io/device": x}}} for x in peers]})
    out = [("Deployment", ops), ("NetworkPolicy", policy)]
    if "Service" in docs:
        out.append(("Service", [{"op": "replace", "path": f"/spec/selector/{device_key}",
                                 "value": me}]))
    return out


def _instances_text(instances: list[str]) -> str:
    """`gw[0]`..`gw[11]` for consecutive instances, listed otherwise."""
    instances = sorted(instances, key=lambda i: int(i.split("[")[1].rstrip("]")))
    indices = [int(i.split("[")[1].rstrip("]")) for i in instances]
    name = instances[0].split("[")[0]
    if indices == list(range(indices[0], indices[0] + len(indices))) and len(indices) > 2:
        return f"{name}[{indices[0]}]..{name}[{indices[-1]}]"
    return ", ".join(instances)


TRAINING_CPU = "100m"
COORDINATOR_MEMORY_BYTES = 256 * 2**20


def render_training(r: Rendering, f: Federation, namespace: str, models: str | None) -> str:
    """k8s/training/NAME.yaml: the objects of one training (templates/k8s/training.yaml.j2)."""
    bundle = r.bundle
    t = f.training
    schedule = None
    if f.schedule_s is not None:
        schedule = cron_schedule(f.schedule_s)
        if schedule is None:
            raise TargetError(f"training `{t.name}`: `every` = {f.schedule_s:g} s is no cron "
                              "schedule", t.name,
                              "give minutes that divide an hour, hours that divide a day, "
                              "1 d or 7 d")

    def labels(name: str, role: str, device: str | None = None) -> dict[str, str]:
        """Its labels; never `edgeflow.io/device`, which the device pods' NetworkPolicies select
        on: `edgeflow.io/runs-on` names the device instance instead."""
        return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": k8s_name(bundle.app),
                "app.kubernetes.io/managed-by": "edgeflow", "edgeflow.io/role": role,
                "edgeflow.io/training": f.label,
                **({"edgeflow.io/runs-on": device_label(device)} if device else {})}

    links = []
    for link in f.superlinks:
        node = f.site_node(link)
        links.append({
            "name": link.name, "aggregator": link.aggregator, "port": link.port,
            "secret": link.secret, "command": f.superlink_argv(link),
            "placement": _placement(bundle, link.tier, link.aggregator),
            "labels": labels(link.name, "superlink", link.aggregator),
            "pod_labels": {**labels(link.name, "superlink", link.aggregator),
                           **({"edgeflow.io/dials": node.superlink.name} if node else {})},
            "node": None if node is None else {
                "command": node.argv(), "secret": node.secret,
                "memory": quantity(node.memory_bytes),
                "memory_limit": quantity(2 * node.memory_bytes),
                "superlink_name": node.superlink.name, "port": node.superlink.port,
                "superlink_aggregator": node.superlink.aggregator}})
    nodes = [{"name": n.name, "who": n.who, "secret": n.secret, "command": n.argv(),
              "memory": quantity(n.memory_bytes), "memory_limit": quantity(2 * n.memory_bytes),
              "superlink_name": n.superlink.name, "port": n.superlink.port,
              "placement": _placement(bundle, n.tier, n.device),
              "labels": labels(n.name, "supernode", n.device),
              "pod_labels": {**labels(n.name, "supernode", n.device),
                             "edgeflow.io/dials": n.superlink.name}}
             for n in f.client_nodes()]
    coordinator_labels = {**labels(f.coordinator, "coordinator", f.home.aggregator),
                          "edgeflow.io/coordinates": f.label}
    view = {
        "name": t.name, "label": f.label, "config": f.config, "coordinator": f.coordinator,
        "labels": labels(f.config, "training"), "spec_json": f.spec_json,
        "coordinator_json": f.coordinator_json, "superlinks": links, "nodes": nodes,
        "samples": t.samples, "trainer": t.trainer, "schedule": schedule,
        "every": f"every {f.schedule_s:g} s" if f.schedule_s else "",
        "coordinator_labels": coordinator_labels, "port": f.home.port,
        "coordinator_placement": _placement(bundle, f.home.tier, f.home.aggregator),
        "coordinator_command": f.coordinator_argv(), "home_secret": f.home.secret,
        "all_nodes": [{"name": n.name, "secret": n.secret} for n in f.nodes]}
    args: dict[str, Any] = {
        "app": bundle.app, "namespace": namespace, "image": TRAIN_IMAGE, "models_image": models,
        "env": [{"name": k, "value": v} for k, v in ENVIRONMENT.items()],
        "security": _security(UIDS["worker"]), "cpu": TRAINING_CPU,
        "superlink_memory": quantity(SUPERLINK_MEMORY_BYTES),
        "superlink_limit": quantity(2 * SUPERLINK_MEMORY_BYTES),
        "coordinator_memory": quantity(COORDINATOR_MEMORY_BYTES),
        "coordinator_limit": quantity(2 * COORDINATOR_MEMORY_BYTES),
        "volume": quantity(WORK_VOLUME_BYTES), "spec_dir": SPEC_DIR, "work_dir": WORK_DIR,
        "models_dir": MODELS_MOUNT, "tmp_size": quantity(TMP_BYTES),
        "superlink_tls": SUPERLINK_TLS, "supernode_tls": SUPERNODE_TLS,
        "certs_dir": COORDINATOR_CERTS, "code_dir": CODE_DIR}
    pod = render("k8s/training_coordinator.yaml.j2", f=view, **args).rstrip("\n")
    return render("k8s/training.yaml.j2", f=view, coordinator_pod=pod, **args)
