"""docker-compose: one project per device instance that hosts a broker (its broker and the unit
workers placed there, on the host network), with each unit's config beside it."""

from __future__ import annotations

from typing import Any

from edgeflow.emit.artefacts import MODELS_MOUNT
from edgeflow.emit.bundle import Bundle, Client, device_label, k8s_name
from edgeflow.emit.identities import bridge_secret, broker_secret, client_secret
from edgeflow.emit.mqtt import render_conf
from edgeflow.emit.targets.base import Rendering, Target

SECRETS = "${EDGEFLOW_SECRETS:?set EDGEFLOW_SECRETS to the folder edgeflow certs wrote}"
"""Where compose finds the certificates: outside the bundle, named when starting it."""
from edgeflow.emit.templating import render
from edgeflow.emit.training import (
    CODE_DIR,
    COORDINATOR_CERTS,
    ENVIRONMENT,
    SPEC_DIR,
    SUPERLINK_TLS,
    SUPERNODE_TLS,
    TMP_BYTES,
    TRAIN_IMAGE,
    WORK_DIR,
    Federation,
)
from edgeflow.emit.units import BROKER_DATA_DIR, BROKER_IMAGE, WORKER_IMAGE, unit_config


class Compose(Target):
    name = "compose"
    description = "docker-compose files, one project per device"
    deploys_training = True

    def broker_host(self, bundle: Bundle, client: Client) -> str:
        return "127.0.0.1"  # every worker runs beside its device's broker

    def render(self, r: Rendering) -> dict[str, bytes]:
        bundle = r.bundle
        files: dict[str, bytes] = {}
        for b in bundle.brokers.values():
            folder = f"compose/{b.label}"
            units = [c for c in bundle.units() if c.device == b.device]
            for c in units:
                files[f"{folder}/{c.name}.json"] = unit_config(r, self, c).encode()
            # the broker's data on the image's own folder, which its user owns (a new volume
            # takes that owner; on a path the image lacks, root would own it)
            files[f"{folder}/mosquitto.conf"] = render_conf(
                bundle, b, persistence_dir=BROKER_DATA_DIR).encode()
            files[f"{folder}/compose.yaml"] = render(
                "compose/compose.yaml.j2", app=bundle.app, device=b.device, tier=b.tier,
                project=f"{k8s_name(bundle.app) or 'edgeflow'}-{b.label}",
                units=[{"name": c.name, "secret": client_secret(c.name)} for c in units],
                mqtt_dir=f"../../mqtt/{b.name}", broker_secret=broker_secret(b.name),
                broker_data=BROKER_DATA_DIR,
                bridge_secret=bridge_secret(b.name) if b.bridges else None,
                secrets=SECRETS,
                broker_image=BROKER_IMAGE, worker_image=WORKER_IMAGE).encode()
        for f in r.federations:
            files.update(_training(r, f))
        return files


def _training(r: Rendering, f: Federation) -> dict[str, bytes]:
    """compose/DEVICE/training-NAME.yaml for every device instance the training runs on."""
    bundle = r.bundle
    spec = f"../../{f.folder}/spec.json:{SPEC_DIR}/spec.json:ro"
    models = f"../../models:{MODELS_MOUNT}:ro"
    data = f"data:{WORK_DIR}"
    services: dict[str, list[dict[str, Any]]] = {}
    for link in f.superlinks:
        services.setdefault(link.aggregator, []).append({
            "name": "superlink", "command": f.superlink_argv(link),
            "volumes": [spec, models, f"{SECRETS}/{link.secret}:{SUPERLINK_TLS}:ro", data]})
    for node in f.nodes:
        volumes = [spec, models, f"{SECRETS}/{node.secret}:{SUPERNODE_TLS}:ro"]
        if node.is_site:  # beside its site's SuperLink: its CA, and the files they share
            site = next(x for x in f.superlinks if x.aggregator == node.device)
            volumes += [f"{SECRETS}/{site.secret}/ca.crt:{SUPERLINK_TLS}/ca.crt:ro", data]
        services.setdefault(node.device, []).append({
            "name": "site-node" if node.is_site else "node", "command": node.argv(),
            "volumes": volumes})
    services[f.home.aggregator].append({
        "name": "coordinator", "command": f.coordinator_argv(),
        "volumes": [f"../../{f.folder}/coordinator.json:{SPEC_DIR}/coordinator.json:ro",
                    f"{SECRETS}/{f.home.secret}/ca.crt:{COORDINATOR_CERTS}/ca.crt:ro",
                    *(f"{SECRETS}/{n.secret}/tls.crt:{COORDINATOR_CERTS}/{n.name}.crt:ro"
                      for n in f.nodes)]})
    files: dict[str, bytes] = {}
    for device, listed in services.items():
        label = device_label(device)
        files[f"compose/{label}/training-{f.label}.yaml"] = render(
            "compose/training.yaml.j2", app=bundle.app, training=f.training.name, device=device,
            project=f"{k8s_name(bundle.app) or 'edgeflow'}-{label}-{f.label}",
            image=TRAIN_IMAGE, samples=f.training.samples, trainer=f.training.trainer,
            code_dir=CODE_DIR, superlink_hosts=sorted({x.name for x in f.superlinks}),
            coordinator=device == f.home.aggregator,
            every=f"every {f.schedule_s:g} s" if f.schedule_s else "",
            services=listed, env=dict(ENVIRONMENT), tmp_size=f"{TMP_BYTES // 2**20}m",
            data=any(data in svc["volumes"] for svc in listed)).encode()
    return files
