"""What every target says about a unit replica's worker: its image, and its unit.json (the
contract with the worker: docs/bundles.md)."""

from __future__ import annotations

from collections.abc import Callable

from edgeflow import __version__
from edgeflow.emit.artefacts import Artefact
from edgeflow.emit.bundle import MQTT_PORT, Bundle, Client, feedback_topic
from edgeflow.emit.mqtt import BUNDLE_TLS_DIR
from edgeflow.emit.targets.base import Rendering, Target
from edgeflow.plan import Part, unit_name
from edgeflow.unit_config import (
    METRICS_PORT,
    AdaptBandSpec,
    AdaptCutSpec,
    AdaptSpec,
    BrokerSpec,
    DriverConfig,
    ModelSpec,
    OperatorSpec,
    TlsSpec,
    UnitConfig,
)

WORKER_IMAGE = f"edgeflow-worker:{__version__}"
BROKER_IMAGE = "eclipse-mosquitto:2.0.18"
BROKER_DATA_DIR = "/mosquitto/data"  # the broker image's data folder, owned by its user


QUEUE = 16
JOIN_TIMEOUT_S = 1.0


STORE_DATA = "/var/lib/edgeflow/data"


def metrics_port(bundle: Bundle, c: Client) -> int:
    """METRICS_PORT for the first client on a device (units, then sensors and sinks, in bundle
    order), the next port for the next: processes beside one broker never share a port."""
    on_device = [u for u in bundle.units() if u.device == c.device] + \
        [d for d in bundle.clients if not d.is_unit and d.device == c.device]
    return METRICS_PORT + on_device.index(c)


def driver_spec(bundle: Bundle, c: Client, broker_host: str) -> DriverConfig:
    """The config of a sensor's or sink's driver (`python -m edgeflow.runtime.drivers`), as a
    bundle deploys it beside its device's broker: a sensor sends synthetic frames of its
    declared type at its rate (a stand-in for the real driver), a sink records what it gets."""
    spec: dict[str, object] = {
        "app": bundle.app, "name": c.step, "replica": c.replica, "kind": c.kind,
        "device": c.device, "metrics_port": metrics_port(bundle, c),
        "broker": BrokerSpec(host=broker_host, port=MQTT_PORT, client_id=c.identity,
                             tls=TlsSpec(ca=f"{BUNDLE_TLS_DIR}/ca.crt",
                                         cert=f"{BUNDLE_TLS_DIR}/tls.crt",
                                         key=f"{BUNDLE_TLS_DIR}/tls.key")),
        "topics": c.writes if c.kind == "sensor" else c.reads,
    }
    if c.kind == "sensor":
        sensor = bundle.program.sensors[c.step]
        spec |= {"rate_hz": sensor.rate_hz, "emits": str(sensor.emits)}
    else:
        spec["database"] = f"{STORE_DATA}/{c.name}.sqlite"
    return DriverConfig.model_validate(spec)


def unit_config(r: Rendering, target: Target, c: Client) -> str:
    """The unit.json of a unit client, as `target` deploys it."""
    return unit_spec(r, c, target.broker_host(r.bundle, c)).to_json()


def unit_spec(r: Rendering, c: Client, broker_host: str) -> UnitConfig:
    bundle = r.bundle
    unit = bundle.placed(c)
    operator, model = None, None
    if unit.part is Part.OPERATOR:
        op = bundle.program.operators[unit.step]
        operator = OperatorSpec(work_flop=op.work_flop, emits=str(op.emits), impl=op.impl)
    else:
        art = r.artefacts[(unit.step, unit.part, unit.replica)]
        model = ModelSpec(file=art.mount_path, sha256=art.sha256, part=unit.part.value,
                          cut=list(art.cut))
    return UnitConfig(adapt=adapt_spec(r, c),
        app=bundle.app, unit=c.step, replica=unit.replica, kind=unit.part.unit_kind,
        device=c.device,
        device_compute_flops=bundle.program.devices[_base(c.device)].compute_flops,
        threads=1, queue=QUEUE, join_timeout_s=JOIN_TIMEOUT_S,
        metrics_port=metrics_port(bundle, c),
        broker=BrokerSpec(host=broker_host, port=MQTT_PORT,
                          client_id=c.identity,
                          tls=TlsSpec(ca=f"{BUNDLE_TLS_DIR}/ca.crt",
                                      cert=f"{BUNDLE_TLS_DIR}/tls.crt",
                                      key=f"{BUNDLE_TLS_DIR}/tls.key")),
        subscribe=c.reads, publish=c.writes, operator=operator, model=model)


FEEDBACK_INTERVAL_S = 0.2


def adapt_spec(r: Rendering, c: Client, path: Callable[[Artefact], str] | None = None,
               ) -> AdaptSpec | None:
    """The `adapt` section of a head's or tail's unit.json (None for any other unit, or a model
    that does not adapt); `path` gives a file's path in the worker (default: the bundle's
    mount)."""
    unit = r.bundle.placed(c)
    a = next((a for a in r.bundle.plan.adaptations
              if a.model == unit.step and a.replica == unit.replica), None)
    if a is None or unit.part not in (Part.HEAD, Part.TAIL):
        return None
    files = r.adapt[(a.model, a.replica)]
    where = path or (lambda art: art.mount_path)
    cuts = [AdaptCutSpec(id=cut.id, cut=list(cut.cut), file=where(art), sha256=art.sha256,
                         transfer_bytes=cut.transfer_bytes, head_s=cut.head_s, tail_s=cut.tail_s,
                         whole=cut.id == a.whole)
            for cut in a.cuts
            for art in [files[cut.id][0 if unit.part is Part.HEAD else 1]]]
    tail = next(x for x in r.bundle.clients if x.kind == "tail" and x.replica == a.replica
                and x.step == unit_name(a.model, Part.TAIL))
    return AdaptSpec(
        cuts=cuts, bands=[AdaptBandSpec(from_bps=b.from_bps, to_bps=b.to_bps, cut=b.cut)
                          for b in a.bands],
        start=a.start, latency_s=a.latency_s, margin=a.margin, hold_s=a.hold_s,
        feedback=feedback_topic(r.bundle.app, a.replica, a.model),
        feedback_interval_s=FEEDBACK_INTERVAL_S,
        outage_after_s=max(1.0, 5 * FEEDBACK_INTERVAL_S + 4 * a.latency_s),
        on_disconnect=a.on_disconnect, buffer_frames=a.buffer_frames, fallback=a.fallback,
        bypass=list(tail.writes) if unit.part is Part.HEAD and (a.bypass or a.fallback)
        else [])


def _base(instance: str) -> str:
    return instance.split("[")[0]
