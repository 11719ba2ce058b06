"""`edgeflow compile --target azure-iot-edge`: every manifest validates against the published
schemas (SchemaStore's, vendored under fixtures/schemas/azure-iot-edge with their source and
licence) and against the checks those schemas leave out — createOptions is JSON chunked as IoT
Edge reads it, module names and twins are what IoT Hub accepts, every module is non-root and
read-only, every unit's topics are exactly its ACL, nothing is routed to IoT Hub — and the cloud
part is a k8s bundle that passes the same checks as a k8s target's."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from hypothesis import HealthCheck, given, settings

from edgeflow import api, check_text, load
from edgeflow.diagnostics import render_summary, render_text
from edgeflow.emit.bundle import build_bundle, device_label
from edgeflow.emit.targets import azure_iot_edge
from edgeflow.execution import build_execution
from edgeflow.unit_config import DriverConfig, UnitConfig
from tests import kustomize, pss
from tests.conftest import FIXTURES, ROOT, assert_golden, unit_topics
from tests.test_bundles import FEASIBLE, K8S_VERSIONS
from tests.test_placement import SPLIT_APP, random_app

SCHEMAS = FIXTURES / "schemas" / "azure-iot-edge"
TARGET = "azure-iot-edge"


def _schema(name: str) -> jsonschema.Draft4Validator:
    schema = json.loads((SCHEMAS / f"{name}.json").read_text())
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


DEPLOYMENT, AGENT, HUB = (_schema("azure-iot-edge-deployment-2.0"),
                          _schema("azure-iot-edgeagent-deployment-1.1"),
                          _schema("azure-iot-edgehub-deployment-1.2"))


def example_bundles(target: str) -> dict[str, dict[str, bytes]]:
    """The bundle of every feasible example and of the split demo for `target`, by app."""
    out = {}
    for name in FEASIBLE:
        program = load(ROOT / "examples" / f"{name}.ef")
        out[name] = api.bundle(program, api.plan(program).plan, target, f"examples/{name}.ef")
    split = check_text(SPLIT_APP, str(ROOT / "examples" / "split_demo.ef"))
    assert split.program is not None
    out["split_demo"] = api.bundle(split.program, api.plan(split.program).plan, target,
                                   "split_demo.ef")
    return out


@pytest.fixture(scope="module")
def bundles() -> dict[str, dict[str, bytes]]:
    return example_bundles(TARGET)


def create_options(settings: dict[str, Any]) -> dict[str, Any]:
    """createOptions as IoT Edge reassembles them, checked: `createOptions`, then
    `createOptions01`, `02`, ... in order, every piece but the last exactly 512 characters, at
    most 4 KB in all, the whole a JSON object."""
    keys = [k for k in settings if k.lower().startswith("createoptions")]
    expected = ["createOptions"] + [f"createOptions{k:02d}" for k in range(1, len(keys))]
    assert keys == [k for k in expected if k in keys] and sorted(keys) == sorted(expected)
    pieces = [settings[k] for k in expected]
    assert all(len(p) == 512 for p in pieces[:-1]) and 0 < len(pieces[-1]) <= 512
    text = "".join(pieces)
    assert len(text) <= 4096
    options = json.loads(text)
    assert isinstance(options, dict)
    return options


def _acl(text: str) -> dict[str, dict[str, set[str]]]:
    out: dict[str, dict[str, set[str]]] = {}
    user = None
    for line in text.splitlines():
        if line.startswith("user "):
            user = line.split(" ", 1)[1]
            out[user] = {"read": set(), "write": set()}
        elif line.startswith("topic ") and user is not None:
            _, access, topic = line.split(" ", 2)
            out[user][access].add(topic)
    return out


def check_manifests(files: dict[str, bytes]) -> int:
    """Every check on every device manifest of a bundle; the number of manifests."""
    plan = json.loads(files["plan.json"])
    tiers = {device_label(d["device"]): d["tier"] for d in plan["devices"]}
    secrets = {s["secret"]: s for s in json.loads(files["secrets.json"])["secrets"]}
    manifests = sorted(p for p in files if p.startswith("azure-iot-edge/")
                       and p.endswith("/deployment.json"))
    for path in manifests:
        folder = path.rsplit("/", 1)[0]
        assert tiers[folder.split("/")[1]] != "cloud"  # the cloud is the k8s part
        manifest = json.loads(files[path])
        for validator, doc in ((DEPLOYMENT, manifest),
                               (AGENT, {"$edgeAgent": manifest["modulesContent"]["$edgeAgent"]}),
                               (HUB, {"$edgeHub": manifest["modulesContent"]["$edgeHub"]})):
            errors = sorted(validator.iter_errors(doc), key=str)
            assert not errors, f"{path}: {errors[0].message}"
        content = manifest["modulesContent"]
        agent = content["$edgeAgent"]["properties.desired"]
        hub = content["$edgeHub"]["properties.desired"]
        assert hub["routes"] == {}  # nothing goes to $upstream, nor between modules by edgeHub
        assert len(json.dumps(agent, separators=(",", ":"))) <= 32 * 1024
        for system in agent["systemModules"].values():
            assert create_options(system["settings"]) == {}  # edgeHub publishes no host port
        modules = agent["modules"]
        assert len(modules) <= 50
        brokers = [n for n, m in modules.items() if m["settings"]["image"].startswith(
            "eclipse-mosquitto")]
        assert len(brokers) == 1
        (broker,) = brokers
        acl = _acl(files[f"mqtt/{broker}/edgeflow.acl"].decode())
        assert f"/mqtt/{broker}/edgeflow.acl:/etc/mosquitto/edgeflow.acl:ro" in \
            "".join(create_options(modules[broker]["settings"])["HostConfig"]["Binds"])
        assert broker in secrets[f"{broker}-tls"]["dns"]  # its name is on its certificate
        twins = {k: v for k, v in content.items() if not k.startswith("$")}
        assert set(twins) == set(modules) - {broker}  # every client is configured by its twin
        for name, module in modules.items():
            assert re.fullmatch(r"[a-zA-Z0-9_-]+", name)
            options = create_options(module["settings"])
            host = options["HostConfig"]
            user = options["User"].split(":")[0]
            assert user not in ("", "0", "root")
            assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
            assert host["SecurityOpt"] == ["no-new-privileges"] and host["Privileged"] is False
            assert not {"NetworkMode", "PidMode", "IpcMode", "CapAdd", "Devices"} & set(host)
            for bind in host["Binds"]:
                source = bind.split(":")[0]
                if source.startswith("/"):  # from the device's copy of the bundle: read-only
                    assert bind.endswith(":ro"), bind
            if name == broker:  # (its port: test_a_broker_publishes_its_port_only_...)
                # what it runs is in its definition, so that a new plan restarts it
                conf = files[f"{folder}/mosquitto.conf"] + files[f"mqtt/{broker}/edgeflow.acl"]
                assert module["env"] == {"EDGEFLOW_BROKER_CONFIG_SHA256": {
                    "value": hashlib.sha256(conf).hexdigest()}}
                continue
            desired = twins[name]["properties.desired"]
            assert set(desired) == {"edgeflow"}
            assert len(json.dumps(desired, separators=(",", ":"))) <= 32 * 1024
            config = desired["edgeflow"]
            # the twin's config in the module's definition: a changed config restarts it
            assert module["env"] == {"EDGEFLOW_CONFIG_SHA256": {"value": hashlib.sha256(
                json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
            ).hexdigest()}}
            is_unit = "subscribe" in config
            spec: Any = (UnitConfig if is_unit else DriverConfig).model_validate(config)
            assert options["Cmd"] == ["--config-from-twin"]
            assert spec.broker.host == broker and spec.broker.port == 8883
            own = acl[spec.broker.client_id]  # least privilege: exactly its own topics
            if is_unit:
                assert own == unit_topics(spec)
            elif spec.kind == "sensor":
                assert own == {"read": set(), "write": set(spec.topics)}
            else:
                assert own == {"read": set(spec.topics), "write": set()}
            secret_binds = [b for b in host["Binds"] if ":/etc/edgeflow/tls:" in b]
            (secret_bind,) = secret_binds
            secret = secret_bind.split(":")[0].rsplit("/", 1)[1]
            assert secrets[secret]["common_name"] == spec.broker.client_id  # its own identity
    return len(manifests)


def check_cloud_part(files: dict[str, bytes]) -> None:
    assert not any(p.startswith("k8s/cert-manager/") for p in files)  # one CA: edgeflow certs
    if "k8s/kustomization.yaml" not in files:
        return
    objects = kustomize.build(files, "k8s")
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSIONS[-1], strict=True)
    assert {n: v for n, v in pss.check_objects(objects, "restricted").items() if v} == {}
    assert "Secret" not in {o["kind"] for o in objects}
    plan = json.loads(files["plan.json"])
    cloud = {device_label(d["device"]) for d in plan["devices"] if d["tier"] == "cloud"}
    pods = {o["metadata"]["labels"]["edgeflow.io/device"] for o in objects
            if o["kind"] == "Deployment"}
    assert pods <= cloud


def test_every_manifest_validates_and_is_least_privilege(bundles) -> None:  # type: ignore[no-untyped-def]
    for name, files in bundles.items():
        assert check_manifests(files) > 0, name  # every example has edge devices
        check_cloud_part(files)


def test_a_broker_publishes_its_port_only_when_another_device_dials_it(bundles) -> None:  # type: ignore[no-untyped-def]
    program = load(ROOT / "examples" / "smart_city_traffic.ef")
    bundle = build_bundle(build_execution(program), api.plan(program).plan)
    files = bundles["smart_city_traffic"]
    for b in bundle.brokers.values():
        path = f"azure-iot-edge/{device_label(b.device)}/deployment.json"
        if path not in files:
            assert b.tier == "cloud"
            continue
        modules = json.loads(files[path])["modulesContent"]["$edgeAgent"][
            "properties.desired"]["modules"]
        host = create_options(modules[b.name]["settings"])["HostConfig"]
        assert ("PortBindings" in host) == b.external, b.device
        # the broker listens for the device's modules on its container's network
        assert "listener 8883 0.0.0.0" in files[path.replace("deployment.json",
                                                             "mosquitto.conf")].decode()


def test_the_cloud_broker_admits_bridges_from_outside_the_cluster(bundles) -> None:  # type: ignore[no-untyped-def]
    objects = kustomize.build(bundles["smart_city_traffic"], "k8s")
    service = next(o for o in objects if o["kind"] == "Service")
    assert service["spec"]["type"] == "LoadBalancer"
    policy = next(o for o in objects if o["kind"] == "NetworkPolicy"
                  and o["metadata"]["name"] == service["spec"]["selector"]["edgeflow.io/device"])
    assert {"ports": [{"protocol": "TCP", "port": 8883}]} in policy["spec"]["ingress"]


def test_a_changed_config_changes_its_modules_definition(bundles) -> None:  # type: ignore[no-untyped-def]
    """edgeAgent restarts a module only when its definition changes: a new sensor rate must
    change the camera driver's module (not only its twin)."""
    source = (ROOT / "examples" / "smart_city_traffic.ef").read_text()
    faster = source.replace("rate    = 15 Hz", "rate    = 16 Hz", 1)
    assert faster != source
    result = check_text(faster, str(ROOT / "examples" / "smart_city_traffic.ef"))
    assert result.program is not None
    files = api.bundle(result.program, api.plan(result.program).plan, TARGET, "city.ef")
    path = "azure-iot-edge/street-cabinet-0/deployment.json"
    before = json.loads(bundles["smart_city_traffic"][path])["modulesContent"]
    after = json.loads(files[path])["modulesContent"]
    changed = {n for n, m in after["$edgeAgent"]["properties.desired"]["modules"].items()
               if m != before["$edgeAgent"]["properties.desired"]["modules"][n]}
    assert changed and changed == {n for n in after if not n.startswith("$")
                                   and after[n] != before[n]}


def test_manifests_are_deterministic(bundles) -> None:  # type: ignore[no-untyped-def]
    program = load(ROOT / "examples" / "reference.ef")
    again = api.bundle(program, api.plan(program).plan, TARGET, "examples/reference.ef")
    assert again == bundles["reference"]


def test_a_device_beyond_iot_edges_limits_is_error_e1004(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    """More modules than a deployment holds (the limit lowered here to 3): a located error on
    the device's declaration, and nothing written."""
    monkeypatch.setattr(azure_iot_edge, "MAX_MODULES", 3)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGEFLOW_MODEL_ROOTS", str(ROOT / "examples"))
    source = (ROOT / "examples" / "smart_city_traffic.ef").read_text()
    Path("city.ef").write_text(source.replace('"models/', f'"{ROOT}/examples/models/'))
    result = api.compile("city.ef", target=TARGET, output="out")
    assert not result.ok and not Path("out").exists()
    (diag,) = result.diagnostics
    assert diag.code == "E1004" and diag.span.file == "city.ef"
    assert "at most 3" in diag.message
    line = source.splitlines()[diag.span.line - 1]
    assert line.lstrip().startswith("device"), line
    rendered = render_text(diag, result.check.sources) + "\n" + \
        f"city.ef: {render_summary(result.diagnostics)}\n"
    assert_golden(FIXTURES / "plans" / "E1004_too_many_modules.out", rendered)


@given(random_app())
@settings(derandomize=True, max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
def test_every_feasible_random_app_compiles_to_valid_manifests(text: str) -> None:
    compiled = random_bundle(text, TARGET)
    if compiled is not None:
        files, edge_and_fog = compiled
        assert check_manifests(files) == edge_and_fog
        check_cloud_part(files)


def random_bundle(text: str, target: str) -> tuple[dict[str, bytes], int] | None:
    """A random app's bundle for `target` and its number of edge and fog device instances
    with a broker; None when the app has no feasible plan."""
    result = check_text(text, str(ROOT / "examples" / "random.ef"))
    assert result.program is not None
    plan = api.plan(result.program).plan
    if not plan.feasible:
        return None
    bundle = build_bundle(build_execution(result.program), plan)
    return api.bundle(result.program, plan, target, "random.ef"), \
        sum(b.tier != "cloud" for b in bundle.brokers.values())
