"""Every name a bundle generates (Kubernetes objects, files and folders, brokers, MQTT identities,
bridge connections) is unique by construction and valid: the readable names read back as exactly
what they name, the others carry a digest of it (issue 14, items 9 and 10). Checked on the
naming functions over random declared names, device counts and units (hypothesis), and on whole
bundles of apps whose names collided before."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from edgeflow import api, check_text
from edgeflow.diagnostics import render_summary, render_text
from edgeflow.emit import bundle as names
from edgeflow.emit.bundle import (
    DNS_LABEL,
    IDENTITY,
    LABEL_MAX,
    Bundle,
    NameClash,
    bridge_identity,
    broker_name,
    build_bundle,
    client_identity,
    client_name,
    device_label,
    read_identity,
    read_label,
)
from edgeflow.syntax.parser import DECL_KEYWORDS
from tests.conftest import FIXTURES, ROOT, assert_golden

# Declared names ([a-z_][a-z0-9_]*), biased towards what collided: `_<digits>` (an instance
# index), `_r<digits>` (a replica), `_head`/`_tail` (a split half), `broker_`/`bridge_`,
# leading, trailing and doubled `_`, and names longer than a DNS label.
_BASES = ["cam", "site", "broker", "bridge", "head", "tail", "r", "local", "_", "a__b", "x1",
          "street_cabinet", "a" * 58]
_SUFFIXES = ["", "_1", "_0", "_12", "_r1", "_r0", "_head", "_tail", "_", "__", "_x", "_broker",
             "_bridge", "_" + "z" * 20]
NAME = st.one_of(
    st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True),
    st.builds(str.__add__, st.sampled_from(_BASES), st.sampled_from(_SUFFIXES)),
    st.builds(str.__add__, st.sampled_from(["broker_", "bridge_", "_", "a" * 61]),
              st.sampled_from(_BASES)),
    st.builds(lambda n, tail: "b" * n + tail, st.integers(50, 90), st.sampled_from(
        ["", "_x", "_y", "_1", "_r1"])),
).filter(lambda n: n not in DECL_KEYWORDS)

PROPS = settings(derandomize=True, max_examples=300, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _instances(devices: dict[str, int]) -> list[str]:
    return [d if n == 1 else f"{d}[{i}]" for d, n in devices.items() for i in range(n)]


def _assert_unique(kind: str, named: dict[Any, str]) -> None:
    owners: dict[str, Any] = {}
    for what, name in named.items():
        assert owners.setdefault(name, what) == what, \
            f"{kind} `{name}` names both {owners[name]} and {what}"


@st.composite
def universe(draw: st.DrawFn) -> tuple[str, dict[str, int], list[tuple[str, int | None]]]:
    """An app name, devices with counts and the clients of some steps (units of every replica,
    the halves of split models, sinks shared by all replicas), all names distinct."""
    pool = draw(st.lists(NAME, min_size=3, max_size=14, unique=True))
    app, rest = pool[0], pool[1:]
    cut = draw(st.integers(1, len(rest) - 1))
    devices = {d: draw(st.integers(1, 3)) for d in rest[:cut]}
    replicas = draw(st.integers(1, 3))
    clients: list[tuple[str, int | None]] = []
    for step in rest[cut:]:
        kind = draw(st.sampled_from(["unit", "split", "shared"]))
        if kind == "shared":
            clients.append((step, None))
        else:
            steps = [f"{step}.head", f"{step}.tail"] if kind == "split" else [step]
            clients += [(s, r) for s in steps for r in range(replicas)]
    return app, devices, clients


@given(universe())
@PROPS
@example(("clash", {"cam": 2, "cam_1": 1, "site": 2, "site_1": 1},
          [("a" * 64 + "_x", 0), ("a" * 64 + "_y", 0)]))
@example(("app", {"r0": 1, "x_r0": 1, "broker_x": 1, "x": 2},
          [("bridge", 0), ("m.head", 0), ("m_head", 0), ("x_0", None), ("broker", 0),
           ("broker_x", 0)]))
def test_generated_names_are_injective_and_valid(
        u: tuple[str, dict[str, int], list[tuple[str, int | None]]]) -> None:
    app, devices, clients = u
    instances = _instances(devices)
    # one namespace of DNS labels: device labels (compose folders, node labels, Mermaid
    # subgraphs), brokers and clients (k8s objects, mqtt/ folders, secrets, compose services)
    labels: dict[Any, str] = {("device", i): device_label(i) for i in instances}
    labels |= {("broker", i): broker_name(i) for i in instances}
    labels |= {("client", c): client_name(*c) for c in clients}
    _assert_unique("name", labels)
    for (kind, what), name in labels.items():
        assert DNS_LABEL.fullmatch(name) and len(name) <= LABEL_MAX, (what, name)
        if "--" not in name:  # readable: reads back as what it names
            expected: tuple[str, ...]
            if kind == "client":
                expected = ("client", what[0], str(what[1])) if what[1] is not None else \
                    ("declared", what[0])
            elif kind == "broker":
                expected = ("broker", what)
            else:
                expected = ("instance", what) if what.endswith("]") else ("declared", what)
            assert read_label(name) == expected, (what, name)
    # MQTT identities (certificate CN = user name = client id), at most 63 characters (a CN
    # may have 64)
    identities: dict[Any, str] = {("client", c): client_identity(app, *c) for c in clients}
    identities |= {("bridge", i): bridge_identity(app, i) for i in instances}
    _assert_unique("MQTT identity", identities)
    for what, ident in identities.items():
        assert IDENTITY.fullmatch(ident) and len(ident) <= LABEL_MAX, (what, ident)
        if "--" not in ident:
            assert read_identity(app, ident) is not None
    # the files of both targets, the bridges a broker may have (one per peer)
    units = [c for c in clients if c[1] is not None]
    k8s = {("k8s", x): f"k8s/{broker_name(x)}.yaml" for x in instances}
    k8s |= {("k8s", c): f"k8s/{client_name(*c)}.yaml" for c in units}
    k8s |= {"common": "k8s/common.yaml", "kustomization": "k8s/kustomization.yaml"}
    _assert_unique("file", k8s)
    mqtt = {(x, f): f"mqtt/{broker_name(x)}/{f}" for x in instances
            for f in ("mosquitto.conf", "edgeflow.acl")}
    _assert_unique("file", mqtt)
    compose = {x: f"compose/{device_label(x)}/" for x in instances}
    _assert_unique("compose folder", compose)
    for x in instances:  # any unit may be placed on any device
        files = {c: f"{compose[x]}{client_name(*c)}.json" for c in units}
        _assert_unique("file", files | {"compose": f"{compose[x]}compose.yaml"})
    _assert_unique("bridge name", {x: broker_name(x) for x in instances})
    # stable: the same input gives the same names
    assert [device_label(i) for i in instances] == [labels[("device", i)] for i in instances]


def test_common_names_are_unchanged() -> None:
    assert device_label("street_cabinet[3]") == "street-cabinet-3"
    assert device_label("city_cloud") == "city-cloud"
    assert broker_name("street_cabinet[3]") == "broker-street-cabinet-3"
    assert client_name("vehicle_detector", 11) == "vehicle-detector-r11"
    assert client_name("risk_classifier.head", 1) == "risk-classifier-head-r1"
    assert client_identity("ward_monitoring", "risk_classifier.tail", 2) == \
        "ward_monitoring.risk_classifier.tail.r2"
    assert client_identity("traffic_signals", "traffic_stats", None) == \
        "traffic_signals.traffic_stats"
    assert bridge_identity("traffic_signals", "street_cabinet[0]") == \
        "traffic_signals.bridge.street-cabinet-0"


def test_the_reported_collisions_get_distinct_names() -> None:
    # item 9: `cam` (count 2) and `cam_1`, `site` (count 2) and `site_1`
    assert device_label("cam[1]") == "cam-1" and broker_name("cam[1]") == "broker-cam-1"
    assert re.fullmatch(r"cam-1--[0-9a-f]{8}", device_label("cam_1"))
    assert broker_name("cam_1") == f"broker-{device_label('cam_1')}"
    assert broker_name("site_1") != broker_name("site[1]")
    assert bridge_identity("a", "cam_1") != bridge_identity("a", "cam[1]")
    # item 10: names that differ after 63 characters, both ends kept readable
    x, y = client_name("o" * 70 + "_x", 0), client_name("o" * 70 + "_y", 0)
    assert x != y and len(x) <= LABEL_MAX and "-x-r0--" in x and "-y-r0--" in y
    # a split half and an operator named like it; a device named like a replica marker
    assert client_name("m.head", 0) != client_name("m_head", 0)
    assert bridge_identity("a", "r0") != client_identity("a", "bridge", 0)
    assert client_name("broker", 0) != broker_name("r0")


CLASH = """
app clash { objective = minimize(latency) }
device cam { tier = edge, count = 2, compute = 1 TFLOPS, memory = 1 GiB }
device cam_1 { tier = edge, compute = 1 TFLOPS, memory = 1 GiB }
device site { tier = edge, count = 2, compute = 1 TFLOPS, memory = 1 GiB }
device site_1 { tier = cloud, compute = 100 TFLOPS, memory = 64 GiB }
link cam <-> site_1 { bandwidth = 100 Mbps, latency = 5 ms }
link cam_1 <-> site_1 { bandwidth = 100 Mbps, latency = 5 ms }
link site <-> site_1 { bandwidth = 100 Mbps, latency = 5 ms }
sensor cam_feed { on = cam, rate = 1 Hz, emits = float32[1, 8] }
sensor cam1_feed { on = cam_1, rate = 1 Hz, emits = float32[1, 8] }
sensor site_feed { on = site, rate = 1 Hz, emits = float32[1, 8] }
operator LONG_x { work = 1 MFLOP, emits = float32[1, 8] }
operator LONG_y { work = 1 MFLOP, emits = float32[1, 8] }
store out { on = site_1 }
pipeline a { flow = cam_feed -> LONG_x -> out }
pipeline b { flow = cam1_feed -> LONG_y -> out }
pipeline c { flow = site_feed -> out }
""".replace("LONG", "o" * 62)


def _compiled(text: str, name: str = "clash") -> tuple[Bundle, dict[str, dict[str, bytes]]]:
    result = check_text(text, str(ROOT / "examples" / f"{name}.ef"))
    assert result.program is not None, [d.message for d in result.diagnostics]
    planned = api.plan(result.program)
    assert planned.plan is not None and planned.execution is not None and planned.plan.feasible
    bundle = build_bundle(planned.execution, planned.plan)
    files = {t: api.bundle(result.program, planned.plan, t, f"{name}.ef", planned.execution)
             for t in ("k8s", "compose")}
    return bundle, files


def _check_bundle(bundle: Bundle, files: dict[str, dict[str, bytes]]) -> None:
    units = bundle.units()
    brokers = list(bundle.brokers.values())
    # one broker per device that hosts a client, each with its own config naming its clients
    assert {b.device for b in brokers} == {c.device for c in bundle.clients}
    for target_files in files.values():
        mqtt = {p.split("/")[1] for p in target_files if p.startswith("mqtt/")}
        assert mqtt == {b.name for b in brokers} and len(mqtt) == len(brokers)
        for c in bundle.clients:
            acl = target_files[f"mqtt/{bundle.brokers[c.device].name}/edgeflow.acl"].decode()
            assert f"\nuser {c.identity}\n" in acl
            assert f"mqtt/{bundle.brokers[c.device].name}/mosquitto.conf" in target_files
    # a bridge identity may write on a peer only the topics that reach its own broker: written
    # by its device's clients, or forwarded to it on their route
    for b in brokers:
        own = {t for rules in b.acl.values() for t in rules["write"]}
        for bridge in b.bridges:
            peer = bundle.brokers[bridge.peer]
            assert set(peer.acl[bridge.identity]["write"]) <= own
    # every device has its own manifest (its pod holds its broker and units), listed once
    k8s = files["k8s"]
    resources = yaml.safe_load(k8s["k8s/kustomization.yaml"])["resources"]
    assert len(resources) == len(set(resources)) == 1 + len(brokers)
    assert {f"k8s/{r}" for r in resources} == ({p for p in k8s if p.startswith("k8s/")
                                                and p.count("/") == 1} - {
        "k8s/kustomization.yaml", "k8s/models.Dockerfile"}) | {
        p.rsplit("/", 1)[0] for p in k8s if p.startswith("k8s/instances/")}
    # a certificate per identity, named after its secret: injective like the names it follows
    secrets = [i["secret"] for i in json.loads(files["k8s"]["secrets.json"])["secrets"]]
    assert len(secrets) == len(set(secrets))
    compose = files["compose"]
    folders = {p.split("/")[1] for p in compose if p.startswith("compose/")}
    assert folders == {b.label for b in brokers} and len(folders) == len(brokers)
    assert len([p for p in compose if p.startswith("compose/") and p.endswith(".json")]) == \
        len(units)
    for b in brokers:
        doc = yaml.safe_load(compose[f"compose/{b.label}/compose.yaml"])
        assert set(doc["services"]) == {"broker"} | {c.name for c in units
                                                     if c.device == b.device}
    # each broker's bridges have distinct connection names and local client ids
    for b in brokers:
        conf = k8s[f"mqtt/{b.name}/mosquitto.conf"].decode()
        connections = re.findall(r"^connection (\S+)$", conf, re.MULTILINE)
        assert len(connections) == len(set(connections)) == len(b.bridges)
        assert "use_username_as_clientid true" in conf


def test_the_reported_app_compiles_to_distinct_names() -> None:
    bundle, files = _compiled(CLASH)
    assert {b.name for b in bundle.brokers.values()} >= {"broker-cam-1", "broker-site-1"}
    assert len(bundle.brokers) == 6  # cam[0], cam[1], cam_1, site[0], site[1], site_1
    assert len({c.name for c in bundle.units()}) == len(bundle.units()) == 4
    _check_bundle(bundle, files)
    for path, data in files["k8s"].items():
        if path.startswith("k8s/") and path.endswith(".yaml") and path.count("/") == 1 and \
                path != "k8s/kustomization.yaml":  # cert-manager's: tests/test_certs.py
            for obj in yaml.safe_load_all(data):
                if obj:
                    with warnings.catch_warnings():
                        warnings.simplefilter("error")
                        kubernetes_validate.validate(obj, "1.30.0", strict=True)


@st.composite
def named_app(draw: st.DrawFn) -> str:
    """A small app whose every declared name is random: edge device kinds with counts, each
    with a sensor and an operator, and a cloud with a store."""
    kinds = draw(st.integers(1, 2))
    pool = draw(st.lists(NAME, min_size=3 + 4 * kinds, max_size=3 + 4 * kinds, unique=True))
    app, cloud, store = pool[:3]
    lines = [f"app {app} {{ objective = minimize(latency) }}",
             f"device {cloud} {{ tier = cloud, compute = 100 TFLOPS, memory = 64 GiB }}",
             f"store {store} {{ on = {cloud} }}"]
    for k in range(kinds):
        device, sensor, op, pipe = pool[3 + 4 * k: 7 + 4 * k]
        lines += [(f"device {device} {{ tier = edge, count = {draw(st.integers(1, 3))}, "
                   "compute = 1 TFLOPS, memory = 1 GiB }"),
                  f"link {device} <-> {cloud} {{ bandwidth = 100 Mbps, latency = 5 ms }}",
                  f"sensor {sensor} {{ on = {device}, rate = 1 Hz, emits = float32[1, 8] }}",
                  (f"operator {op} {{ work = {draw(st.sampled_from([1, 900]))} MFLOP, "
                   "emits = float32[1, 8] }"),
                  f"pipeline {pipe} {{ flow = {sensor} -> {op} -> {store} }}"]
    return "\n".join(lines) + "\n"


@given(named_app())
@settings(derandomize=True, max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_apps_with_random_names_compile_to_distinct_names(text: str) -> None:
    result = check_text(text, str(ROOT / "examples" / "named.ef"))
    assume(result.program is not None)
    _check_bundle(*_compiled(text, "named"))


def _forced_clash(monkeypatch: pytest.MonkeyPatch) -> str:
    """An app whose devices `cam_1` and `_cam_1` hash alike once every digest is 00000000."""
    monkeypatch.setattr(names, "_digest", lambda key: "0" * 8)
    return CLASH.replace("device cam_1 {", "device _cam_1 { tier = edge, compute = 1 TFLOPS, "
                         "memory = 1 GiB }\ndevice cam_1 {") + \
        "sensor other_feed { on = _cam_1, rate = 1 Hz, emits = float32[1, 8] }\n" \
        "pipeline d { flow = other_feed -> out }\n" + \
        "link _cam_1 <-> site_1 { bandwidth = 100 Mbps, latency = 5 ms }\n"


def test_a_hash_collision_is_refused_with_the_declarations(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Readable names cannot collide; hashed ones only if 8 hex digits of sha256 do. Forced
    here: `cam_1` and `_cam_1` both hash to `cam-1--00000000`."""
    text = _forced_clash(monkeypatch)
    with pytest.raises(NameClash, match=r"`_cam_1` \(.*clash\.ef:\d+:\d+\) and .*`cam_1` "
                                        r"\(.*clash\.ef:\d+:\d+\).*cam-1--00000000"):
        _compiled(text)


def test_a_hash_collision_is_error_e1003_from_compile(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    text = _forced_clash(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGEFLOW_MODEL_ROOTS", str(ROOT / "examples"))
    Path("clash.ef").write_text(text)
    result = api.compile("clash.ef", output="out")
    assert not result.ok and not Path("out").exists()
    (diag,) = result.diagnostics
    assert diag.code == "E1003" and diag.span.file == "clash.ef"
    rendered = render_text(diag, result.check.sources) + "\n" + \
        f"clash.ef: {render_summary(result.diagnostics)}\n"
    assert_golden(FIXTURES / "plans" / "E1003_name_clash.out", rendered)
