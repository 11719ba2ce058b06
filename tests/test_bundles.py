"""`edgeflow compile`: bundles validate against Kubernetes schemas (strict, no warnings), follow
the KubeEdge and security conventions, ship checked ONNX files whose sha256 match the manifest,
are byte-identical across runs, match their goldens, and are written atomically without ever
touching what the user put there."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import kubernetes_validate
import onnx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from edgeflow import api, check_text, load
from edgeflow.emit import MARKER, PARTIAL, BundleError, write_bundle
from edgeflow.emit.bundle import build_bundle, device_label
from edgeflow.execution import build_execution
from tests import kustomize, pss
from tests.conftest import FIXTURES, ROOT, assert_golden
from tests.test_cli import run
from tests.test_placement import SPLIT_APP, random_app

FEASIBLE = ["ar_assist", "autonomous_vehicle", "healthcare_vitals", "reference",
            "smart_city_traffic"]
K8S_VERSIONS = ["1.30.0", "1.37.0"]


def compile_program(program: Any, target: str, source: str) -> dict[str, bytes]:
    return api.bundle(program, api.plan(program).plan, target, source)


@pytest.fixture(scope="module")
def bundles() -> dict[tuple[str, str], dict[str, bytes]]:
    out = {}
    for name in FEASIBLE:
        program = load(ROOT / "examples" / f"{name}.ef")
        for target in ("k8s", "compose", "azure-iot-edge", "greengrass"):
            out[(name, target)] = compile_program(program, target, f"examples/{name}.ef")
    split = check_text(SPLIT_APP, str(ROOT / "examples" / "split_demo.ef"))
    assert split.program is not None
    for target in ("k8s", "compose", "azure-iot-edge", "greengrass"):
        out[("split_demo", target)] = compile_program(split.program, target, "split_demo.ef")
    return out


def _objects(files: dict[str, bytes]) -> list[dict[str, Any]]:
    """What `kubectl apply -k k8s/` applies (the cert-manager resources are custom resources
    of their own kustomization: tests/test_certs.py validates them)."""
    return kustomize.build(files, "k8s")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_strictly(bundles, version: str) -> None:  # type: ignore[no-untyped-def]
    for (name, target), files in bundles.items():
        if target != "k8s":
            continue
        objects = _objects(files)
        assert objects
        for obj in objects:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # any warning fails the test
                kubernetes_validate.validate(obj, version, strict=True)


def test_kustomization_lists_every_manifest(bundles) -> None:  # type: ignore[no-untyped-def]
    """Every manifest and every instance folder is listed, once; each instance's
    configuration files are in its ConfigMap; every shared definition is used."""
    for (name, target), files in bundles.items():
        if target != "k8s":
            continue
        kustomization = yaml.safe_load(files["k8s/kustomization.yaml"])
        resources = kustomization["resources"]
        assert len(resources) == len(set(resources)), "a manifest is listed twice"
        listed = {f"k8s/{r}" for r in resources}
        top = {p for p in files if p.startswith("k8s/") and p.endswith(".yaml")
               and (p.count("/") == 1 or p.startswith("k8s/training/"))
               and p != "k8s/kustomization.yaml"}
        instances = {p.rsplit("/", 1)[0] for p in files
                     if p.startswith("k8s/instances/") and p.endswith("/kustomization.yaml")}
        assert listed == top | instances
        used = set()
        for folder in instances:
            k = yaml.safe_load(files[f"{folder}/kustomization.yaml"])
            (base,) = k["resources"]
            used.add(os.path.normpath(f"{folder}/{base}"))
            (generator,) = k["configMapGenerator"]
            assert {f"{folder}/{f}" for f in generator["files"]} == \
                {p for p in files if p.startswith(f"{folder}/")} - {f"{folder}/kustomization.yaml"}
        assert used == {p.rsplit("/", 1)[0] for p in files if p.startswith("k8s/bases/")}


def test_conventions_and_security(bundles) -> None:  # type: ignore[no-untyped-def]
    for (name, target), files in bundles.items():
        if target != "k8s":
            continue
        plan = json.loads(files["plan.json"])
        tiers = {d["device"]: d["tier"] for d in plan["devices"]}
        kinds = {o["kind"] for o in _objects(files)}
        assert "Secret" not in kinds  # referenced, never inlined
        assert {"Deployment", "ConfigMap", "NetworkPolicy", "Namespace"} <= kinds
        namespace = next(o for o in _objects(files) if o["kind"] == "Namespace")
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == \
            "restricted"
        # every pod is admitted under the standard the namespace enforces (tests/pss.py is
        # written from the published Pod Security Standards, sharing nothing with the emitter)
        assert {n: v for n, v in pss.check_objects(_objects(files), "restricted").items()
                if v} == {}, name
        assert_container_names_are_distinct(_objects(files))
        for obj in _objects(files):
            if obj["kind"] != "Deployment":
                continue
            spec = obj["spec"]["template"]["spec"]
            labels = obj["metadata"]["labels"]  # a device's pod, or a training's on a device
            device_label = labels.get("edgeflow.io/device") or labels["edgeflow.io/runs-on"]
            tier = next(t for d, t in tiers.items()
                        if d.replace("_", "-").replace("[", "-").replace("]", "") == device_label)
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert spec["automountServiceAccountToken"] is False
            for c in spec["containers"]:
                sc = c["securityContext"]
                assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
                assert sc["capabilities"]["drop"] == ["ALL"]
                assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
            secrets = [v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v]
            assert secrets, "TLS material comes from a referenced Secret"
            if tier == "cloud":
                terms = spec["affinity"]["nodeAffinity"][
                    "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
                exprs = {e["key"]: e for e in terms[0]["matchExpressions"]}
                assert exprs["node-role.kubernetes.io/edge"]["operator"] == "DoesNotExist"
            else:
                assert spec["nodeSelector"]["node-role.kubernetes.io/edge"] == ""
                assert spec["nodeSelector"]["edgeflow.io/device"] == device_label
                assert spec["tolerations"][0]["key"] == "node-role.kubernetes.io/edge"


def test_unit_configs_reference_their_topics_broker_and_models(bundles) -> None:  # type: ignore[no-untyped-def]
    files = bundles[("split_demo", "k8s")]
    manifest = json.loads(files["models/manifest.json"])["models"]
    by_path = {m["path"]: m for m in manifest}
    parts = {m["part"] for m in manifest}
    assert parts == {"head", "tail"}  # the detector is split in this app
    for obj in _objects(files):
        if obj["kind"] != "ConfigMap" or "unit.json" not in obj["data"]:
            continue
        unit = json.loads(obj["data"]["unit.json"])
        rel = "models/" + unit["model"]["file"].removeprefix("/var/lib/edgeflow/models/")
        assert by_path[rel]["sha256"] == unit["model"]["sha256"]
        assert unit["broker"]["port"] == 8883 and unit["subscribe"] and unit["publish"]


def test_onnx_files_check_and_match_their_sha256(bundles) -> None:  # type: ignore[no-untyped-def]
    for files in bundles.values():
        if "models/manifest.json" not in files:
            continue
        for entry in json.loads(files["models/manifest.json"])["models"]:
            data = files[entry["path"]]
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
            assert len(data) == entry["bytes"] and len(entry["version"]) == 12
            onnx.checker.check_model(onnx.load_from_string(data), full_check=True)


def test_bundles_are_deterministic(bundles) -> None:  # type: ignore[no-untyped-def]
    program = load(ROOT / "examples" / "smart_city_traffic.ef")
    again = compile_program(program, "k8s", "examples/smart_city_traffic.ef")
    assert again == bundles[("smart_city_traffic", "k8s")]


@pytest.mark.parametrize("target", ["k8s", "compose", "azure-iot-edge", "greengrass"])
# the reference app (every construct), a fleet, and an app whose plan splits a model
@pytest.mark.parametrize("app", ["reference", "smart_city_traffic", "split_demo"])
def test_golden_bundle(bundles, app: str, target: str) -> None:  # type: ignore[no-untyped-def]
    files = bundles[(app, target)]
    parts = []
    for path, data in files.items():
        if path.endswith(".onnx"):
            parts.append(f"==> {path} (sha256 {hashlib.sha256(data).hexdigest()})\n")
        elif path == "report.html":  # its charts are matplotlib's drawing, which its releases
            # change: tests/test_report_html.py checks what the page says instead
            parts.append(f"==> {path}\n")
        else:
            parts.append(f"==> {path}\n{data.decode()}")
    assert_golden(FIXTURES / "bundles" / f"{app}.{target}.txt", "".join(parts))


def test_compose_files_parse_and_reference_secrets_as_files(bundles) -> None:  # type: ignore[no-untyped-def]
    files = bundles[("ar_assist", "compose")]
    composes = [p for p in files if p.endswith("compose.yaml")]
    assert len(composes) == 6  # four headsets, edge_gpu (its broker forwards), the render farm
    for path in composes:
        doc = yaml.safe_load(files[path])
        for service in doc["services"].values():
            assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
            # certificates come from outside the bundle, from the folder the operator names
            assert any(v.startswith("${EDGEFLOW_SECRETS:?") for v in service["volumes"])
        # the broker keeps its data on a volume at the image's own data folder (its user owns
        # it, so a new volume takes that owner), where its configuration puts it
        broker = doc["services"]["broker"]
        assert "broker-data:/mosquitto/data" in broker["volumes"]
        conf = files[path.replace("compose.yaml", "mosquitto.conf")].decode()
        assert "persistence_location /mosquitto/data/" in conf
        assert "./mosquitto.conf:/etc/mosquitto/mosquitto.conf:ro" in broker["volumes"]


def test_compile_cli_writes_atomically_and_never_over_user_files(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    proc = run("compile", "examples/smart_city_traffic.ef", "--target", "k8s", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    marker = json.loads((out / MARKER).read_text())
    assert set(marker["files"]) | {MARKER} == {str(p.relative_to(out)) for p in out.rglob("*")
                                    if p.is_file()}
    same = run("compile", "examples/smart_city_traffic.ef", "--target", "k8s", "-o", str(out))
    assert same.returncode == 0 and "replaced" not in same.stderr  # its own bundle, again
    again = run("compile", "examples/smart_city_traffic.ef", "--target", "compose", "-o",
                str(out), "--force")  # another target's bundle is replaced only when asked
    assert again.returncode == 0 and "replaced the `k8s` bundle" in again.stderr
    assert not (out / "k8s").exists() and (out / "compose").is_dir()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    refused = run("compile", "examples/smart_city_traffic.ef", "-o", str(mine))
    assert refused.returncode == 1 and "did not generate" in refused.stderr
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    forced = run("compile", "examples/smart_city_traffic.ef", "-o", str(mine), "--force")
    assert forced.returncode == 0 and (mine / "notes.txt").read_text() == "mine"
    assert (mine / "plan.json").is_file()
    failed = run("compile", "examples/factory_infeasible.ef", "-o", str(tmp_path / "ref"))
    assert failed.returncode == 1 and "nothing was written" in failed.stderr
    assert not (tmp_path / "ref").exists()


def test_write_bundle_replaces_stale_files_of_its_own(tmp_path: Path) -> None:
    write_bundle(tmp_path / "b", {"a.txt": b"1", "k8s/x.yaml": b"2"}, force=False)
    (tmp_path / "b" / MARKER).write_text(json.dumps({"files": ["a.txt", "k8s/x.yaml"]}))
    (tmp_path / "b" / "user.txt").write_text("keep")
    write_bundle(tmp_path / "b", {"a.txt": b"3"}, force=True)
    assert (tmp_path / "b" / "a.txt").read_bytes() == b"3"
    assert not (tmp_path / "b" / "k8s" / "x.yaml").exists()
    assert (tmp_path / "b" / "user.txt").read_text() == "keep"


def test_compile_into_an_unwritable_place_is_an_error_not_a_traceback() -> None:
    proc = run("compile", "examples/smart_city_traffic.ef", "-o", "/proc/edgeflow/bundle")
    assert proc.returncode == 1 and "cannot write" in proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr


@given(random_app())
@settings(derandomize=True, max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
def test_every_feasible_random_app_compiles_to_valid_bundles(text: str) -> None:
    result = check_text(text, str(ROOT / "examples" / "random.ef"))
    assert result.program is not None
    plan = api.plan(result.program).plan
    if not plan.feasible:
        return
    for target in ("k8s", "compose"):
        files = api.bundle(result.program, plan, target, "random.ef")
        assert "plan.json" in files and MARKER in files
        if target == "k8s":
            for obj in _objects(files):
                kubernetes_validate.validate(obj, K8S_VERSIONS[0], strict=True)
            assert {n: v for n, v in pss.check_objects(_objects(files)).items() if v} == {}
            assert admitted(_objects(files)) == planned(result.program, plan)
            assert_requests_are_the_plan(result.program, plan, files)
            assert_container_names_are_distinct(_objects(files))
        else:
            for path, data in files.items():
                if path.endswith("compose.yaml"):
                    assert yaml.safe_load(data)["services"]["broker"]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _rule_admits(rule: dict[str, Any], peer_key: str, peer: dict[str, str], port: int) -> bool:
    """A NetworkPolicy ingress/egress rule: no peers listed means every peer; no ports, every
    port (the NetworkPolicy API's semantics, pod selectors only)."""
    peers = rule.get(peer_key)
    peer_ok = peers is None or any("podSelector" in p and _selects(p["podSelector"], peer)
                                   for p in peers)
    ports = rule.get("ports")
    port_ok = ports is None or any(p.get("protocol", "TCP") == "TCP" and p.get("port") == port
                                   for p in ports)
    return peer_ok and port_ok


def pod_template(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod template of a Deployment, Job or CronJob."""
    spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    return dict(spec["template"])


def admitted(objects: list[dict[str, Any]], port: int = 8883) -> set[tuple[str, str]]:
    """Which workload's pods may open a TCP connection to which on `port` (Deployments, Jobs,
    CronJobs), by the bundle's NetworkPolicies:
    the source's egress and the destination's ingress must both allow it (a pod no policy of a
    direction selects is open in that direction; the bundle's default-deny selects all)."""
    pods = {o["metadata"]["name"]: pod_template(o)["metadata"]["labels"]
            for o in objects if o["kind"] in ("Deployment", "Job", "CronJob")}
    policies = [o["spec"] for o in objects if o["kind"] == "NetworkPolicy"]

    def allows(direction: str, own: dict[str, str], peer: dict[str, str]) -> bool:
        mine = [p for p in policies if _selects(p["podSelector"], own)
                and direction in p.get("policyTypes", [])]
        key = "to" if direction == "Egress" else "from"
        return not mine or any(_rule_admits(rule, key, peer, port)
                               for p in mine for rule in p.get(direction.lower(), []))

    return {(a, b) for a, la in pods.items() for b, lb in pods.items()
            if a != b and allows("Egress", la, lb) and allows("Ingress", lb, la)}


def planned(program: Any, plan: Any) -> set[tuple[str, str]]:
    """The connections the plan needs between device pods: each bridge, initiator to peer."""
    bundle = build_bundle(build_execution(program), plan)
    return {(device_label(b.device), device_label(bridge.peer))
            for b in bundle.brokers.values() for bridge in b.bridges}


def test_network_policies_admit_exactly_the_planned_connections(bundles) -> None:  # type: ignore[no-untyped-def]
    for name in [*FEASIBLE, "split_demo"]:
        program = load(ROOT / "examples" / f"{name}.ef") if name != "split_demo" else \
            check_text(SPLIT_APP, str(ROOT / "examples" / "split_demo.ef")).program
        plan = api.plan(program).plan
        wanted = planned(program, plan)
        assert wanted, name  # every example has bridges
        assert admitted(_objects(bundles[(name, "k8s")])) == wanted, name


def test_compile_errors_are_coded_diagnostics_and_json_envelopes(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    refused = run("compile", "examples/ar_assist.ef", "-o", str(mine))
    assert refused.returncode == 1 and f"error[E1002]: `{mine}` holds files" in refused.stderr
    assert "--force" in refused.stderr
    as_json = run("compile", "examples/ar_assist.ef", "-o", str(mine), "--format", "json")
    out = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and out["command"] == "compile" and out["ok"] is False
    assert out["result"] is None and [d["code"] for d in out["diagnostics"]] == ["E1002"]
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    unwritable = run("compile", "examples/ar_assist.ef", "-o", str(a_file))
    assert unwritable.returncode == 1 and "error[E1001]" in unwritable.stderr
    assert a_file.read_text() == "x"
    written = run("compile", "examples/ar_assist.ef", "-o", str(tmp_path / "b"), "--format",
                  "json")
    assert written.returncode == 0, written.stderr
    result = json.loads(written.stdout)["result"]
    assert result["target"] == "k8s" and "plan.json" in result["files"]
    assert result["plan"] == json.loads((tmp_path / "b" / "plan.json").read_text())
    infeasible = run("compile", "examples/factory_infeasible.ef", "--format", "json", "-o",
                     str(tmp_path / "ref"))
    out = json.loads(infeasible.stdout)
    assert infeasible.returncode == 1 and out["result"] is None
    assert {d["code"] for d in out["diagnostics"]} == {"E0901"}
    assert not (tmp_path / "ref").exists()
    broken = run("compile", "tests/fixtures/diagnostics/E0504_cycle.ef", "--format", "json")
    out = json.loads(broken.stdout)
    assert broken.returncode == 1 and "E0504" in {d["code"] for d in out["diagnostics"]}


def test_api_compile_returns_diagnostics_and_writes_nothing_on_error(tmp_path: Path) -> None:
    result = api.compile(ROOT / "examples" / "factory_infeasible.ef", output=tmp_path / "ref")
    assert not result.ok and result.plan is not None and not result.plan.feasible
    assert {d.code for d in result.diagnostics} == {"E0901"} and not (tmp_path / "ref").exists()
    result = api.compile(ROOT / "examples" / "ar_assist.ef", "compose", tmp_path / "ok")
    assert result.ok and result.output == tmp_path / "ok"
    assert {p: (tmp_path / "ok" / p).read_bytes() for p in result.files} == result.files


def test_a_changed_model_file_is_analysed_again_even_with_its_old_size_and_mtime(
        tmp_path: Path) -> None:
    source = ROOT / "examples" / "models" / "detector.onnx"
    copy = tmp_path / "detector.onnx"
    copy.write_bytes(source.read_bytes())
    result = check_text(SPLIT_APP.replace(str(source), str(copy)), str(tmp_path / "app.ef"))
    assert result.program is not None
    plan = api.plan(result.program).plan
    assert plan.splits  # the head runs on the camera box, the tail in the cloud
    before = api.bundle(result.program, plan, "k8s")
    model = onnx.load(str(copy))
    weights = next(i for i in model.graph.initializer if i.name == "w_1")
    weights.raw_data = bytes(reversed(weights.raw_data))  # same size, other values
    stat = copy.stat()
    onnx.save(model, str(copy))
    assert copy.stat().st_size == stat.st_size
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = api.bundle(result.program, plan, "k8s")
    heads = sorted(p for p in after if p.endswith("/head.onnx"))
    assert heads and all(before[p] != after[p] for p in heads)
    head = onnx.load_from_string(after[heads[0]])
    assert next(i for i in head.graph.initializer if i.name == "w_1").raw_data == \
        weights.raw_data


def _bundle(files: dict[str, bytes]) -> dict[str, bytes]:
    """`files` with the marker listing them, as bundle_files makes it."""
    return {**files, MARKER: json.dumps({"files": sorted([*files, MARKER])}).encode()}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_force_never_touches_anything_outside_the_output(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    write_bundle(out, _bundle({"a.txt": b"1", "mqtt/x.conf": b"2"}), force=False)
    (out / "user.txt").write_text("mine")
    # a marker that lists files outside the folder must not make --force delete them
    (out / MARKER).write_text(json.dumps({"files": ["a.txt", "../victim.txt", str(victim),
                                                    "mqtt/../../victim.txt"]}))
    write_bundle(out, _bundle({"b.txt": b"3"}), force=True)
    assert victim.read_text() == "keep me" and (out / "user.txt").read_text() == "mine"
    assert not (out / "a.txt").exists() and (out / "b.txt").read_bytes() == b"3"
    # a symbolic link inside the folder is never written through
    shutil.rmtree(out / "mqtt")
    (out / "mqtt").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(BundleError) as refused:
        write_bundle(out, _bundle({"mqtt/x.conf": b"2"}), force=False)
    assert refused.value.diagnostic.code == "E1002" and "mqtt" in refused.value.diagnostic.message
    with pytest.raises(BundleError) as forced:
        write_bundle(out, _bundle({"b.txt": b"4", "mqtt/x.conf": b"2"}), force=True)
    assert forced.value.diagnostic.code == "E1001" and "symbolic link" in \
        forced.value.diagnostic.message
    assert list(elsewhere.iterdir()) == [] and (out / "b.txt").read_bytes() == b"3"


def test_leftovers_of_killed_runs_are_cleaned_and_none_are_made(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                ) -> None:
    out = tmp_path / "bundle"
    killed = tmp_path / ".bundle.tmp-killed"
    killed.mkdir()
    (killed / PARTIAL).write_text(str(_dead_pid()))
    (killed / "half.yaml").write_text("x")
    running = tmp_path / ".bundle.tmp-running"
    running.mkdir()
    (running / PARTIAL).write_text(str(os.getppid()))  # a live process: not ours to remove
    user = tmp_path / ".bundle.tmp-user"  # no marker: not edgeflow's
    user.mkdir()
    write_bundle(out, _bundle({"a.txt": b"1"}), force=False)
    assert not killed.exists() and running.exists() and user.exists()
    assert not (out / PARTIAL).exists()
    # a rename that fails leaves no empty `.old-` folder behind
    real_rename = os.rename

    def failing(src: Any, dst: Any) -> None:
        if str(dst).endswith("/bundle"):
            raise PermissionError(13, "Permission denied", str(src))
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing)
    with pytest.raises(BundleError) as failed:
        write_bundle(out, _bundle({"a.txt": b"2"}), force=False)
    assert failed.value.diagnostic.code == "E1001"
    monkeypatch.setattr(os, "rename", real_rename)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".bundle.tmp-running", ".bundle.tmp-user", "bundle"])
    # the new bundle in place but the old one not removable: a warning, not an error
    real_rmtree = shutil.rmtree
    monkeypatch.setattr(shutil, "rmtree", lambda path, **kw: None if ".old-" in str(path)
                        else real_rmtree(path, **kw))
    warning = write_bundle(out, _bundle({"a.txt": b"3"}), force=False)
    assert warning is not None and "kept at" in warning and (out / "a.txt").read_bytes() == b"3"


def test_the_root_folder_is_refused() -> None:
    with pytest.raises(BundleError) as refused:
        write_bundle(Path("/"), {"a.txt": b"1"}, force=True)
    assert refused.value.diagnostic.code == "E1001" and "root folder" in \
        refused.value.diagnostic.message


def test_a_bundle_of_another_target_is_not_silently_replaced(tmp_path: Path) -> None:
    out = tmp_path / "b"
    assert run("compile", "examples/ar_assist.ef", "-o", str(out)).returncode == 0
    k8s = sorted(p.relative_to(out) for p in out.rglob("*"))
    refused = run("compile", "examples/ar_assist.ef", "--target", "compose", "-o", str(out))
    assert refused.returncode == 1 and "error[E1002]" in refused.stderr
    assert "holds a `k8s` bundle" in refused.stderr and "--force" in refused.stderr
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == k8s  # untouched
    forced = run("compile", "examples/ar_assist.ef", "--target", "compose", "-o", str(out),
                 "--force")
    assert forced.returncode == 0 and "replaced the `k8s` bundle" in forced.stderr
    assert (out / "compose").is_dir() and not (out / "k8s").exists()
    again = run("compile", "examples/ar_assist.ef", "--target", "compose", "-o", str(out))
    assert again.returncode == 0 and "replaced" not in again.stderr


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_renders_every_example_bundle(tmp_path: Path) -> None:
    for name in FEASIBLE:
        out = tmp_path / name
        assert run("compile", f"examples/{name}.ef", "-o", str(out)).returncode == 0
        files = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        for folder in ("k8s", "k8s/cert-manager"):
            rendered = subprocess.run(["kubectl", "kustomize", str(out / folder)],
                                      capture_output=True, text=True, timeout=120, check=False)
            assert rendered.returncode == 0, rendered.stderr
            objects = [d for d in yaml.safe_load_all(rendered.stdout) if d]
            assert len({o["metadata"]["namespace"] for o in objects
                        if o["kind"] != "Namespace"}) == 1
            # the tests' own renderer (tests/kustomize.py) agrees with kustomize exactly
            assert sorted(objects, key=_kind_name) == sorted(kustomize.build(files, folder),
                                                             key=_kind_name)
        assert {n: v for n, v in pss.check_objects(_objects(files)).items() if v} == {}


def _kind_name(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def test_the_report_groups_replicas_and_keeps_its_diagram_within_mermaids_limits() -> None:
    """At count = 120 the report stays as long as at 12: identical replicas share a row, the
    diagram collapses them (Mermaid stops at 500 edges or 50,000 characters), instance names
    sort naturally."""
    text = (ROOT / "examples" / "smart_city_traffic.ef").read_text()
    reports = {}
    for count in (12, 120):
        result = check_text(text.replace("count   = 12", f"count   = {count}"),
                            str(ROOT / "examples" / "smart_city_traffic.ef"))
        assert result.program is not None
        files = compile_program(result.program, "k8s", "smart_city_traffic.ef")
        reports[count] = files["report.md"].decode()
    small, large = reports[12], reports[120]
    diagram = large.split("```mermaid\n")[1].split("```")[0]
    assert len(diagram) < 50_000 and diagram.count("-->") < 500
    assert diagram == small.split("```mermaid\n")[1].split("```")[0].replace("×12", "×120")
    assert len(large.splitlines()) == len(small.splitlines())
    assert "`street_cabinet[0–119]`" in large and "street_cabinet[r]" in large


def test_device_labels_select_nodes_and_a_gpu_device_gives_its_models_a_gpu() -> None:
    text = SPLIT_APP.replace(
        "device cloud   {{ tier = cloud,".replace("{{", "{"),
        'device cloud   { tier = cloud, gpu = "nvidia.com/gpu", labels = { pool = "a100" },')
    assert 'gpu = "nvidia.com/gpu"' in text
    result = check_text(text.replace(
        "device cam_box { tier = edge,", 'device cam_box { tier = edge, labels = '
        '{ accelerator = "jetson-nano" },'), str(ROOT / "examples" / "split_demo.ef"))
    assert result.program is not None, result.diagnostics
    files = compile_program(result.program, "k8s", "split_demo.ef")
    pods = {o["metadata"]["name"]: o["spec"]["template"]["spec"] for o in _objects(files)
            if o["kind"] == "Deployment"}
    edge = pods["cam-box-0"]
    assert edge["nodeSelector"]["edgeflow.io/accelerator"] == "jetson-nano"
    cloud = pods["cloud"]
    terms = cloud["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    exprs = {e["key"]: e["values"] for e in terms["nodeSelectorTerms"][0]["matchExpressions"]
             if "values" in e}
    assert exprs["edgeflow.io/pool"] == ["a100"]
    tails = [c for c in cloud["containers"] if c["name"].startswith("detector-tail")]
    assert tails and all(c["resources"]["requests"]["nvidia.com/gpu"] == 1 ==
                         c["resources"]["limits"]["nvidia.com/gpu"] for c in tails)
    assert all("nvidia.com/gpu" not in c["resources"]["requests"]
               for c in cloud["containers"] if not c["name"].startswith("detector-tail"))
    for obj in _objects(files):
        kubernetes_validate.validate(obj, K8S_VERSIONS[0], strict=True)
    bad = check_text(text.replace('gpu = "nvidia.com/gpu"', 'gpu = "a gpu"'), "x.ef")
    assert "E0303" in {d.code for d in bad.diagnostics}
    worse = check_text(text.replace('pool = "a100"', 'pool = "two words"'), "x.ef")
    assert "E0303" in {d.code for d in worse.diagnostics}


def test_every_driver_config_in_a_bundle_is_one_the_driver_reads(bundles) -> None:  # type: ignore[no-untyped-def]
    from edgeflow.unit_config import DriverConfig
    seen = 0
    for (name, target), files in bundles.items():
        if target != "k8s":
            continue
        for obj in _objects(files):
            if obj["kind"] != "ConfigMap" or obj["metadata"]["labels"].get("edgeflow.io/role") \
                    != "device":  # a training's holds its spec files (test_training_bundle)
                continue
            for key, text in obj["data"].items():
                if key.endswith(".json") and json.loads(text)["kind"] in ("sensor", "actuator",
                                                                          "store"):
                    config = DriverConfig.model_validate_json(text)  # as the driver loads it
                    assert config.to_json() == text
                    seen += 1
    assert seen


_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def _bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (the binary suffixes and plain bytes) in bytes."""
    for suffix, factor in _BINARY.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


def _millicores(quantity: str) -> int:
    return int(quantity[:-1]) if quantity.endswith("m") else int(float(quantity) * 1000)


def assert_requests_are_the_plan(program: Any, plan: Any, files: dict[str, bytes]) -> None:
    """Every device pod requests exactly the memory the plan reserved on its device and the CPU
    share of the device's CPUs, in whole millicores (rounded down, each container by less than
    1m); what it requests fits the device; and pods run exactly where the plan uses a device."""
    use = {device_label(d.device): d for d in plan.used_devices()}
    pods = {o["metadata"]["name"]: o["spec"]["template"]["spec"] for o in _objects(files)
            if o["kind"] == "Deployment" and o["metadata"]["labels"]["edgeflow.io/role"] == "device"}
    assert set(pods) == set(use)
    devices = {device_label(i): d for d in program.devices.values() for i in d.instances()}
    for name, spec in pods.items():
        requests = [c["resources"]["requests"] for c in spec["containers"]]
        memory = sum(_bytes(r["memory"]) for r in requests)
        cpu = sum(_millicores(r["cpu"]) for r in requests)
        assert memory == use[name].memory_bytes, name
        cpus = devices[name].cpus * 1000
        assert use[name].cpu * cpus - len(requests) < cpu <= use[name].cpu * cpus + 1e-6, name
        assert memory <= devices[name].memory_bytes and cpu <= cpus, name


def test_pods_request_exactly_what_the_plan_reserved(bundles) -> None:  # type: ignore[no-untyped-def]
    for name in [*FEASIBLE, "split_demo"]:
        program = load(ROOT / "examples" / f"{name}.ef") if name != "split_demo" else \
            check_text(SPLIT_APP, str(ROOT / "examples" / "split_demo.ef")).program
        assert_requests_are_the_plan(program, api.plan(program).plan, bundles[(name, "k8s")])


def test_a_device_too_small_for_its_runtime_is_refused_with_the_reason(tmp_path: Path) -> None:
    """A wearable whose memory cannot hold its broker and its sensor's driver: E0901 names the
    device and the processes, and declaring smaller processes (measured on the device) fits."""
    text = SPLIT_APP.replace("device cam_box { tier = edge, count = 2, compute = 5 GFLOPS, "
                             "memory = 1 GiB }", "device cam_box { tier = edge, count = 2, "
                             "compute = 5 GFLOPS, memory = 64 MiB }")
    assert "memory = 64 MiB" in text
    result = check_text(text, str(ROOT / "examples" / "split_demo.ef"))
    assert result.program is not None
    planned = api.plan(result.program)
    assert planned.plan is not None and planned.plan.status == "infeasible"
    assert [(d.code, d.message) for d in planned.diagnostics] == [(
        "E0901", ("`cam_box` has 64.0 MiB of memory, but its broker and the drivers of `camera` "
                 "alone need 128.0 MiB (`broker_memory`, `driver_memory`)"))]
    assert planned.diagnostics[0].span.line == 3
    lean = check_text(text.replace("memory = 64 MiB }", "memory = 64 MiB, broker_memory = 8 MiB, "
                                   "driver_memory = 40 MiB }"), str(ROOT / "examples" / "s.ef"))
    assert lean.program is not None
    plan = api.plan(lean.program).plan
    assert plan.feasible and all(u.device == "cloud" for u in plan.units)
    files = compile_program(lean.program, "k8s", "s.ef")
    assert_requests_are_the_plan(lean.program, plan, files)
    edge = next(d for d in plan.devices if d.device == "cam_box[0]")
    assert edge.memory_bytes == 48 * 2**20


def test_each_added_site_adds_at_most_120_lines_of_yaml() -> None:
    """Identical replicas share their definitions: a 13th street cabinet adds its instance's
    kustomization, its Certificates and a line or two in shared files, and no more."""
    text = (ROOT / "examples" / "smart_city_traffic.ef").read_text()
    assert "count   = 12" in text
    sizes = []
    for count in (12, 13):
        result = check_text(text.replace("count   = 12", f"count   = {count}"),
                            str(ROOT / "examples" / "smart_city_traffic.ef"))
        assert result.program is not None
        files = compile_program(result.program, "k8s", "smart_city_traffic.ef")
        sizes.append(sum(data.count(b"\n") for path, data in files.items()
                         if path.startswith("k8s/") and path.endswith(".yaml")))
        assert sum(p.startswith("k8s/bases/") for p in files) == 2  # one shared definition
    assert 0 < sizes[1] - sizes[0] <= 120, sizes


def assert_container_names_are_distinct(objects: list[dict[str, Any]]) -> None:
    """Kubernetes refuses a pod two of whose containers (init containers included) share a
    name; schema validation cannot see it."""
    for obj in objects:
        if obj["kind"] == "Deployment":
            spec = obj["spec"]["template"]["spec"]
            names = [c["name"] for c in spec.get("initContainers", []) + spec["containers"]]
            assert len(names) == len(set(names)), (obj["metadata"]["name"], names)


def test_steps_named_like_the_pods_own_containers_get_containers_of_their_own() -> None:
    """A sensor named `broker` and an operator named `models`, on a shared device and on
    device instances: every pod's container names stay distinct."""
    text = SPLIT_APP.replace("sensor camera", "sensor broker").replace(
        "camera ->", "broker ->").replace("store detections", "store models").replace(
        "-> detections", "-> models")
    assert "sensor broker" in text and "store models" in text
    result = check_text(text, str(ROOT / "examples" / "split_demo.ef"))
    assert result.program is not None, result.diagnostics
    files = compile_program(result.program, "k8s", "split_demo.ef")
    objects = _objects(files)
    assert_container_names_are_distinct(objects)
    cloud = next(o for o in objects if o["kind"] == "Deployment"
                 and o["metadata"]["name"] == "cloud")["spec"]["template"]["spec"]
    assert {c["name"] for c in cloud["initContainers"]} == {"models"}
    assert "models-2" in {c["name"] for c in cloud["containers"]}
