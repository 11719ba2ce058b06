"""`edgeflow compile --target greengrass`: every recipe validates against the Greengrass
Development Kit's recipe schema (vendored, with its source and licence), every deployment
against the `CreateDeployment` input shape of botocore's greengrassv2 service model, and both
against what those leave out: versions are semver, digests are Base64 SHA-256 of the files
they name, recipe variables are ones Greengrass knows (a component's only from its direct
dependencies), no component asks for privilege or IPC access, every unit's config is a valid
unit.json whose topics are exactly its ACL entries and whose certificate is its own, and a
broker's lifecycle script, run as Greengrass runs it, starts mosquitto."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import botocore.session
import jsonschema
import pytest
from botocore.validate import ParamValidator
from hypothesis import HealthCheck, given, settings

from edgeflow import api, load, pki
from edgeflow.emit.bundle import build_bundle, device_label, k8s_name
from edgeflow.emit.identities import read_secrets_json, write_identities
from edgeflow.execution import build_execution
from edgeflow.unit_config import CONFIG_ENV, DriverConfig, UnitConfig
from tests.conftest import FIXTURES, ROOT, unit_topics
from tests.test_azure_iot_edge import _acl, check_cloud_part, example_bundles, random_bundle
from tests.test_cli import run
from tests.test_placement import random_app

TARGET = "greengrass"
RECIPE = jsonschema.Draft7Validator(json.loads(
    (FIXTURES / "schemas" / "greengrass" / "recipe_schema.json").read_text()))
CREATE_DEPLOYMENT = botocore.session.get_session().get_service_model(
    "greengrassv2").operation_model("CreateDeployment").input_shape
SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)")
# recipe variables: {scope:key} and another component's {component:scope:key}
VARIABLE = re.compile(r"\{(?:([.\w-]+):)?([.\w-]+):([^:}]*)\}")


@pytest.fixture(scope="module")
def bundles() -> dict[str, dict[str, bytes]]:
    return example_bundles(TARGET)


def _lower(obj: Any) -> Any:
    """Keys lower-cased, as the GDK does before validating a recipe."""
    if isinstance(obj, dict):
        return {k.lower(): _lower(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_lower(v) for v in obj]
    return obj


def _strings(obj: Any) -> list[str]:
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return [obj] if isinstance(obj, str) else []


def _setup_owners(script: str) -> dict[str, str]:
    """secret -> the user a setup script gives it to (its `secret SECRET USER` lines)."""
    out: dict[str, str] = {}
    for line in script.splitlines():
        if line.startswith("secret "):
            _, secret, user = line.split()
            assert secret not in out, f"{secret} given twice"
            out[secret] = user
    return out


def recipes_of(files: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    out = {}
    for path, data in files.items():
        if path.startswith("greengrass/recipes/"):
            recipe = json.loads(data)
            name, version = recipe["ComponentName"], recipe["ComponentVersion"]
            assert path == f"greengrass/recipes/{name}-{version}.json"
            out[name] = recipe
    return out


def check_greengrass(files: dict[str, bytes], prefix: str | None = None,
                     wheel: bytes | None = None) -> int:
    """Every check on every recipe and deployment of a bundle whose artifacts are uploaded
    under `prefix` (the default: s3://YOUR-BUCKET/edgeflow/APP/); the number of deployments."""
    recipes = recipes_of(files)
    secrets = {s["secret"]: s for s in json.loads(files["secrets.json"])["secrets"]}
    app = json.loads(files[".edgeflow-bundle"])["app"]
    prefix = prefix or f"s3://YOUR-BUCKET/edgeflow/{app}/"
    for name, recipe in recipes.items():
        errors = sorted(RECIPE.iter_errors(_lower(recipe)), key=str)
        assert not errors, f"{name}: {errors[0].message}"
        assert SEMVER.fullmatch(recipe["ComponentVersion"]), recipe["ComponentVersion"]
        assert re.fullmatch(r"[a-zA-Z0-9-_.]{1,128}", name)
        assert "ComponentConfiguration" not in recipe  # no accessControl: no IPC at all
        deps = set(recipe.get("ComponentDependencies", {}))
        for dep, spec in recipe.get("ComponentDependencies", {}).items():
            assert spec["VersionRequirement"] == f"={recipes[dep]['ComponentVersion']}"
        (manifest,) = recipe["Manifests"]
        lifecycle = manifest["Lifecycle"]
        for step in lifecycle.values():
            if isinstance(step, dict) and "Script" in step:
                assert step["RequiresPrivilege"] is False
        for text in _strings(lifecycle):
            for component, scope, key in VARIABLE.findall(text):
                # its own artifacts and work folder (and no other component's: their folders
                # are their users' alone)
                assert (scope, key) in {("artifacts", "path"), ("work", "path")}, (name, text)
                assert not component, (name, text)
        assert deps <= set(recipes)
        for art in manifest.get("Artifacts", []):
            assert art["URI"].startswith(prefix)
            path = art["URI"].removeprefix(prefix.rstrip("/") + "/")
            if path.startswith("dist/"):  # the wheel the user builds: pinned when given
                assert ("Digest" in art) == (wheel is not None)
                if wheel is not None:
                    assert art["Digest"] == base64.b64encode(hashlib.sha256(wheel).digest()
                                                             ).decode()
                continue
            assert art["Algorithm"] == "SHA-256"
            assert art["Digest"] == base64.b64encode(hashlib.sha256(files[path]).digest()
                                                     ).decode()
            assert art["Permission"] == {"Read": "OWNER", "Execute": "NONE"}
    deployments = sorted(p for p in files if p.startswith("greengrass/deployments/"))
    plan = json.loads(files["plan.json"])
    tiers = {device_label(d["device"]): d["tier"] for d in plan["devices"]}
    for path in deployments:
        label = path.rsplit("/", 1)[1].removesuffix(".json")
        assert tiers[label] != "cloud"
        deployment = json.loads(files[path])
        request = {**deployment, "targetArn": f"arn:aws:iot:eu-west-1:123456789012:thing/{label}"}
        report = ParamValidator().validate(request, CREATE_DEPLOYMENT)
        assert not report.has_errors(), report.generate_report()
        brokers = [n for n in deployment["components"]
                   if "EDGEFLOW_MOSQUITTO_CONF" in recipes[n]["Manifests"][0]["Lifecycle"].get(
                       "Setenv", {})]
        assert len(brokers) == 1
        broker = recipes[brokers[0]]
        acl_uri = broker["Manifests"][0]["Artifacts"][0]["URI"]
        acl = _acl(files[acl_uri.removeprefix(prefix.rstrip("/") + "/")].decode())
        assert "acl_file {artifacts:path}/edgeflow.acl" in \
            broker["Manifests"][0]["Lifecycle"]["Setenv"]["EDGEFLOW_MOSQUITTO_CONF"]
        owners = _setup_owners(files[f"greengrass/setup/{label}.sh"].decode())
        for name, entry in deployment["components"].items():
            assert entry["componentVersion"] == recipes[name]["ComponentVersion"]
            user, group = entry["runWith"]["posixUser"].split(":")
            assert user not in ("root", "0") and group not in ("root", "0")
            if name.endswith(".runtime"):  # it installs edgeflow; it holds no certificate
                assert user not in owners.values()
                continue
            assert user == group and entry["runWith"]["systemResourceLimits"]["memory"] > 0
            # a user of its own, which owns certificates (which: below)
            assert user in owners.values()
            assert [e["runWith"]["posixUser"] for e in deployment["components"].values()
                    ].count(entry["runWith"]["posixUser"]) == 1
            if name == brokers[0]:
                assert {s for s, u in owners.items() if u == user} <= \
                    {s for s in secrets if s.startswith(brokers[0].rsplit(".", 1)[1])}
                continue
            lifecycle = recipes[name]["Manifests"][0]["Lifecycle"]
            assert lifecycle["Run"]["Script"].endswith(
                "--config-from-env --metrics-host 127.0.0.1")
            text = lifecycle["Setenv"]["EDGEFLOW_CONFIG"]
            config = json.loads(text.replace("{artifacts:path}", "/a").replace(
                "{work:path}", "/w"))
            is_unit = "subscribe" in config
            spec: Any = (UnitConfig if is_unit else DriverConfig).model_validate(config)
            assert spec.broker.host == "127.0.0.1"  # the device's own broker
            own = acl[spec.broker.client_id]
            if is_unit:
                assert own == unit_topics(spec)
                if spec.model is not None:
                    art = recipes[name]["Manifests"][0]["Artifacts"][0]
                    assert spec.model.file == "/a/" + art["URI"].rsplit("/", 1)[1]
                    data = files[art["URI"].removeprefix(prefix.rstrip("/") + "/")]
                    assert hashlib.sha256(data).hexdigest() == spec.model.sha256
            elif spec.kind == "sensor":
                assert own == {"read": set(), "write": set(spec.topics)}
            else:
                assert own == {"read": set(spec.topics), "write": set()}
            folder = Path(spec.broker.tls.cert).parent
            assert folder.parent == Path(f"/var/lib/edgeflow/{k8s_name(app)}/secrets")
            assert secrets[folder.name]["common_name"] == spec.broker.client_id
            assert owners[folder.name] == user  # readable by this component alone
    return len(deployments)


def test_every_recipe_and_deployment_validates_and_is_least_privilege(bundles) -> None:  # type: ignore[no-untyped-def]
    for name, files in bundles.items():
        assert check_greengrass(files) > 0, name
        check_cloud_part(files)


def test_one_deployment_per_edge_or_fog_device(bundles) -> None:  # type: ignore[no-untyped-def]
    program = load(ROOT / "examples" / "smart_city_traffic.ef")
    bundle = build_bundle(build_execution(program), api.plan(program).plan)
    files = bundles["smart_city_traffic"]
    expected = {f"greengrass/deployments/{device_label(b.device)}.json"
                for b in bundle.brokers.values() if b.tier != "cloud"}
    assert {p for p in files if p.startswith("greengrass/deployments/")} == expected
    for b in bundle.brokers.values():
        if b.tier == "cloud":
            continue
        components = json.loads(files[f"greengrass/deployments/{device_label(b.device)}.json"])[
            "components"]
        mine = {f"edgeflow.traffic_signals.{c.name}" for c in bundle.clients
                if c.device == b.device}
        runtime = {"edgeflow.traffic_signals.runtime"} if mine else set()
        assert set(components) == mine | runtime | {f"edgeflow.traffic_signals.{b.name}"}


def test_recipes_are_deterministic_and_versions_follow_content(bundles) -> None:  # type: ignore[no-untyped-def]
    program = load(ROOT / "examples" / "reference.ef")
    plan = api.plan(program).plan
    again = api.bundle(program, plan, TARGET, "examples/reference.ef")
    assert again == bundles["reference"]
    moved = api.bundle(program, plan, TARGET, "examples/reference.ef",
                       options={"artifacts": "s3://my-bucket/apps/ref/"})
    check_greengrass(moved, prefix="s3://my-bucket/apps/ref/")
    before, after = recipes_of(bundles["reference"]), recipes_of(moved)
    assert all(before[n]["ComponentVersion"] != after[n]["ComponentVersion"] for n in before
               if before[n]["Manifests"][0].get("Artifacts"))  # new URIs, new versions


def test_a_given_wheel_pins_the_runtime_by_its_digest(tmp_path: Path) -> None:
    program = load(ROOT / "examples" / "reference.ef")
    plan = api.plan(program).plan
    wheel = tmp_path / "edgeflow-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"a wheel's bytes")
    pinned = api.bundle(program, plan, TARGET, "reference.ef", options={"wheel": str(wheel)})
    check_greengrass(pinned, wheel=wheel.read_bytes())
    loose = recipes_of(api.bundle(program, plan, TARGET, "reference.ef"))
    runtime = "edgeflow.factory_inspection.runtime"
    assert recipes_of(pinned)[runtime]["ComponentVersion"] != loose[runtime]["ComponentVersion"]
    wheel.write_bytes(b"another build")  # a new wheel: a new version
    again = recipes_of(api.bundle(program, plan, TARGET, "reference.ef",
                                  options={"wheel": str(wheel)}))
    assert again[runtime]["ComponentVersion"] != recipes_of(pinned)[runtime]["ComponentVersion"]
    refused = run("compile", "examples/reference.ef", "--target", TARGET, "--target-option",
                  f"wheel={tmp_path / 'missing.whl'}", "-o", str(tmp_path / "out"))
    assert refused.returncode == 1 and "error[E1004]" in refused.stderr
    assert "is not an edgeflow wheel" in refused.stderr and not (tmp_path / "out").exists()
    missing = run("compile", "examples/reference.ef", "--target", TARGET, "--target-option",
                  f"wheel={tmp_path / 'edgeflow-9-py3-none-any.whl'}", "-o", str(tmp_path / "o"))
    assert missing.returncode == 1 and "cannot read the wheel" in missing.stderr


def test_target_options_are_checked(tmp_path: Path) -> None:
    unknown = run("compile", "examples/ar_assist.ef", "--target", "greengrass",
                  "--target-option", "bucket=x", "-o", str(tmp_path / "out"))
    assert unknown.returncode == 2 and "target greengrass has no option `bucket`" in \
        unknown.stderr and "artifacts (" in unknown.stderr
    other = run("compile", "examples/ar_assist.ef", "--target", "k8s",
                "--target-option", "artifacts=s3://x", "-o", str(tmp_path / "out"))
    assert other.returncode == 2 and "target k8s has no option `artifacts`" in other.stderr
    assert not (tmp_path / "out").exists()


def test_a_worker_reads_its_config_from_the_environment() -> None:
    env = {k: v for k, v in os.environ.items() if k != "EDGEFLOW_CONFIG"}
    missing = subprocess.run([sys.executable, "-m", "edgeflow.runtime", "--config-from-env"],
                             env=env, capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode == 2 and "EDGEFLOW_CONFIG holds no unit.json" in missing.stderr
    broken = subprocess.run([sys.executable, "-m", "edgeflow.runtime", "--config-from-env"],
                            env={**env, "EDGEFLOW_CONFIG": '{"app": "x"}'}, capture_output=True,
                            text=True, timeout=60, check=False)
    assert broken.returncode == 2 and "EDGEFLOW_CONFIG is not a valid unit.json" in broken.stderr


@pytest.mark.skipif(shutil.which("mosquitto") is None and not os.environ.get("CI"),
                    reason="mosquitto is not installed (.ci/run installs it)")
def test_a_broker_component_starts_mosquitto_as_greengrass_runs_it(bundles) -> None:  # type: ignore[no-untyped-def]
    """The broker recipe's Run script, its recipe variables substituted as the nucleus does
    and its Setenv in the environment, run by `sh -c`: mosquitto starts with the TLS listener
    the configuration declares (on a free port here) and its ACL from the artifact."""
    files = bundles["split_demo"]
    app = json.loads(files[".edgeflow-bundle"])["app"]
    recipes = recipes_of(files)
    broker = next(r for r in recipes.values()  # (with a bridge: it dials a peer it may
                  if "EDGEFLOW_MOSQUITTO_CONF" in r["Manifests"][0]["Lifecycle"].get("Setenv", {})
                  and "\nconnection " in r["Manifests"][0]["Lifecycle"]["Setenv"][
                      "EDGEFLOW_MOSQUITTO_CONF"])  # not reach here, and keeps retrying)
    root = Path(tempfile.mkdtemp(prefix="ef-gg-"))
    root.chmod(0o755)  # mosquitto drops root privileges before reading its files
    try:
        work, artifacts, secrets = root / "work", root / "artifacts", root / "secrets"
        for folder in (work, artifacts, secrets):
            folder.mkdir()
            folder.chmod(0o777)
        (artifacts / "edgeflow.acl").write_bytes(
            files[broker["Manifests"][0]["Artifacts"][0]["URI"].removeprefix(
                f"s3://YOUR-BUCKET/edgeflow/{app}/")])
        _, wanted = read_secrets_json(files["secrets.json"].decode())
        write_identities(secrets, pki.new_ca("test", days=2), wanted, days=2, key_mode=0o644)
        for p in secrets.rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        lifecycle = broker["Manifests"][0]["Lifecycle"]

        def interpolate(text: str) -> str:
            return text.replace("{work:path}", str(work)).replace(
                "{artifacts:path}", str(artifacts)).replace(
                f"/var/lib/edgeflow/{k8s_name(app)}/secrets", str(secrets))

        conf = interpolate(lifecycle["Setenv"]["EDGEFLOW_MOSQUITTO_CONF"]).replace(
            "listener 8883", f"listener {port}")
        proc = subprocess.Popen(["sh", "-c", interpolate(lifecycle["Run"]["Script"])],
                                env={**os.environ, "EDGEFLOW_MOSQUITTO_CONF": conf},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            for _ in range(100):
                if proc.poll() is not None:
                    raise AssertionError(f"mosquitto exited: {proc.stdout.read()}")  # type: ignore[union-attr]
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.1)
            else:
                raise AssertionError("mosquitto did not start listening")
            assert (work / "mosquitto.conf").read_text() == conf + "\n"
        finally:
            proc.terminate()
            proc.wait(10)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_setup_script_gives_each_certificate_to_its_component_alone(bundles,  # type: ignore[no-untyped-def]
                                                                       tmp_path: Path) -> None:
    """The device's setup script, run by `sh` with `id`, `useradd` and `install` replaced by
    shims that record their arguments (nothing on this machine is changed): it makes exactly
    the deployment's component users and installs each certificate file owned by the user of
    the component whose identity it is, mode 0400, in a folder of mode 0500."""
    files = bundles["smart_city_traffic"]
    label = "street-cabinet-0"
    shims = tmp_path / "bin"
    shims.mkdir()
    log = tmp_path / "log"
    for tool, status in (("id", 1), ("useradd", 0), ("install", 0)):
        (shims / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\nexit {status}\n')
        (shims / tool).chmod(0o755)
    script = tmp_path / "setup.sh"
    script.write_bytes(files[f"greengrass/setup/{label}.sh"])
    subprocess.run(["sh", str(script), "/secrets"], check=True, timeout=60,
                   env={"PATH": f"{shims}:/usr/bin:/bin"})
    lines = log.read_text().splitlines()
    deployment = json.loads(files[f"greengrass/deployments/{label}.json"])
    users = {e["runWith"]["posixUser"].split(":")[0] for n, e in
             deployment["components"].items() if not n.endswith(".runtime")}
    assert {line.split()[-1] for line in lines if line.startswith("useradd")} == users
    recipes = recipes_of(files)
    root = "/var/lib/edgeflow/traffic-signals"
    for name, entry in deployment["components"].items():
        if name.endswith(".runtime"):
            continue
        user = entry["runWith"]["posixUser"].split(":")[0]
        setenv = recipes[name]["Manifests"][0]["Lifecycle"]["Setenv"]
        if CONFIG_ENV in setenv:  # a worker or driver: its certificate folder
            config = json.loads(setenv[CONFIG_ENV].replace("{artifacts:path}", "/a")
                                .replace("{work:path}", "/w"))
            wanted = {Path(config["broker"]["tls"]["cert"]).parent.name}
        else:  # the broker: its server and bridge certificates
            wanted = set(re.findall(rf"{root}/secrets/([^/]+)/",
                                    setenv["EDGEFLOW_MOSQUITTO_CONF"]))
        for secret in wanted:
            assert f"install -d -m 0500 -o {user} -g {user} {root}/secrets/{secret}" in lines
            for f in ("ca.crt", "tls.crt", "tls.key"):
                assert (f"install -m 0400 -o {user} -g {user} /secrets/{secret}/{f} "
                        f"{root}/secrets/{secret}/{f}") in lines
    owned = [line for line in lines if line.startswith("install -m 0400")]
    assert len(owned) == 3 * len({line.split()[-1].rsplit("/", 2)[1] for line in owned})


@given(random_app())
@settings(derandomize=True, max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
def test_every_feasible_random_app_compiles_to_valid_recipes(text: str) -> None:
    compiled = random_bundle(text, TARGET)
    if compiled is not None:
        files, edge_and_fog = compiled
        assert check_greengrass(files) == edge_and_fog
        check_cloud_part(files)


@pytest.mark.parametrize("target", ["azure-iot-edge", "greengrass"])
def test_an_infeasible_app_is_e0901_and_writes_nothing(target: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run("compile", "examples/factory_infeasible.ef", "--target", target, "-o", str(out))
    assert proc.returncode == 1 and "error[E0901]" in proc.stderr
    assert not out.exists()
