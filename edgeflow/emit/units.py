"""What every target says about a unit replica's worker: its image, and its unit.json (the
contract with the worker: docs/bundles.md)."""

from __future__ import annotations

from edgeflow import __version__
from edgeflow.emit.bundle import MQTT_PORT, Client
from edgeflow.emit.mqtt import BUNDLE_TLS_DIR
from edgeflow.emit.targets.base import Rendering, Target
from edgeflow.plan import Part
from edgeflow.unit_config import BrokerSpec, ModelSpec, OperatorSpec, TlsSpec, UnitConfig

WORKER_IMAGE = f"edgeflow-worker:{__version__}"
BROKER_IMAGE = "eclipse-mosquitto:2.0.18"


def unit_config(r: Rendering, target: Target, c: Client) -> str:
    """The unit.json of a unit client, as `target` deploys it."""
    bundle = r.bundle
    unit = bundle.placed(c)
    operator, model = None, None
    if unit.part is Part.OPERATOR:
        op = bundle.program.operators[unit.step]
        operator = OperatorSpec(work_flop=op.work_flop, emits=str(op.emits))
    else:
        art = r.artefacts[(unit.step, unit.part, unit.replica)]
        model = ModelSpec(file=art.mount_path, sha256=art.sha256, part=unit.part.value,
                          cut=list(art.cut))
    return UnitConfig(
        app=bundle.app, unit=c.step, replica=unit.replica, kind=unit.part.unit_kind,
        device=c.device,
        broker=BrokerSpec(host=target.broker_host(bundle, c), port=MQTT_PORT,
                          client_id=c.identity,
                          tls=TlsSpec(ca=f"{BUNDLE_TLS_DIR}/ca.crt",
                                      cert=f"{BUNDLE_TLS_DIR}/tls.crt",
                                      key=f"{BUNDLE_TLS_DIR}/tls.key")),
        subscribe=c.reads, publish=c.writes, operator=operator, model=model).to_json()
