"""mosquitto configuration per broker: a TLS listener that requires client certificates (the CN
is the user), no anonymous access, an ACL giving each client exactly its topics, persistence and
queue limits for offline periods, and bridges carrying only the topics that flow between two
devices (so data a privacy rule keeps on a site never has a bridge off it)."""

from __future__ import annotations

from edgeflow.emit.bundle import MQTT_PORT, Broker, Bundle
from edgeflow.emit.identities import BRIDGE_TLS_DIR, TLS_DIR
from edgeflow.emit.templating import render

BUNDLE_TLS_DIR = TLS_DIR
BUNDLE_DATA_DIR = "/var/lib/mosquitto"
BUNDLE_ACL = "/etc/mosquitto/edgeflow.acl"


def broker_address(bundle: Bundle, device: str) -> str:
    """Where other brokers reach this one (a Kubernetes Service / compose host name)."""
    return f"{bundle.brokers[device].name}:{MQTT_PORT}"


def render_conf(bundle: Bundle, broker: Broker, *, tls_dir: str = BUNDLE_TLS_DIR,
                bridge_tls_dir: str = BRIDGE_TLS_DIR,
                port: int = MQTT_PORT, acl_path: str = BUNDLE_ACL,
                persistence_dir: str = BUNDLE_DATA_DIR,
                addresses: dict[str, str] | None = None, bind: str | None = None) -> str:
    if bind is None:
        bind = "0.0.0.0" if broker.external else "127.0.0.1"
    addresses = addresses or {d: broker_address(bundle, d) for d in bundle.brokers}
    return render("mqtt/mosquitto.conf.j2", app=bundle.app, broker=broker, port=port, bind=bind,
                  tls_dir=tls_dir, bridge_tls_dir=bridge_tls_dir, acl_path=acl_path,
                  persistence=True,
                  persistence_dir=persistence_dir, addresses=addresses,
                  max_queued_messages=1000,
                  max_queued_bytes=max(64 * 2**20, 200 * bundle.max_message_bytes),
                  max_packet_size=bundle.max_message_bytes + 65536)


def render_acl(broker: Broker) -> str:
    return render("mqtt/acl.j2", broker=broker, acl=sorted(broker.acl.items()))
