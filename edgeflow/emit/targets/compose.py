"""docker-compose: one project per device instance that hosts a broker (its broker and the unit
workers placed there, on the host network), with each unit's config beside it."""

from __future__ import annotations

from edgeflow.emit.bundle import Bundle, Client, k8s_name
from edgeflow.emit.identities import bridge_secret, broker_secret, client_secret
from edgeflow.emit.mqtt import render_conf
from edgeflow.emit.targets.base import Rendering, Target

SECRETS = "${EDGEFLOW_SECRETS:?set EDGEFLOW_SECRETS to the folder edgeflow certs wrote}"
"""Where compose finds the certificates: outside the bundle, named when starting it."""
from edgeflow.emit.templating import render
from edgeflow.emit.units import BROKER_DATA_DIR, BROKER_IMAGE, WORKER_IMAGE, unit_config


class Compose(Target):
    name = "compose"
    description = "docker-compose files, one project per device"

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
        return files
