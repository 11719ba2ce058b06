"""What `compile` deploys of a `training` (edgeflow.emit.training, docs/training.md "Deploying"):
the k8s objects (restricted Pod Security, strict schemas, NetworkPolicies admitting exactly the
federation's connections, secrets that never reach the wrong pod), the compose files, the
training image, and a rehearsal: the compose bundle's own commands, run as processes on this
machine with each container path mapped to the folder its volume names, with the certificates
`edgeflow certs` made from the bundle's secrets.json, train the model twice, the second run
continuing from the first's version."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import kubernetes_validate
import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from edgeflow import api, certs
from edgeflow.emit.training import CODE_DIR, TRAIN_IMAGE, cron_schedule
from edgeflow.federation import specfile
from edgeflow.federation.processes import Processes
from tests import kustomize, pss
from tests.test_bundles import K8S_VERSIONS, admitted, pod_template
from tests.test_dockerfile import Dockerfile, provided_by_image
from tests.test_federation import MODULE, _model

ROOT = Path(__file__).resolve().parents[1]


def _app(tmp: Path, *, hubs: int = 3, servers: int = 1, top: bool = False, every: str = "",
         rounds: int = 1, extra: str = "", dp: str = "") -> Path:
    """A ward of `hubs` hubs training the tiny softmax model of tests/test_federation.py; with
    `top`, `servers` site servers under a cloud aggregator (its data then carries no label)."""
    (tmp / "tiny_fl.py").write_text(MODULE)  # beside the file, as `edgeflow train` finds it
    _model(tmp / "tiny.onnx")
    aggregate = "[server, cloud]" if top else "[server]"
    text = textwrap.dedent(f"""\
        app ward {{ objective = minimize(latency) }}
        device hub {{ tier = edge, count = {hubs}, compute = 0.2 TFLOPS, memory = 2 GiB }}
        device server {{ tier = fog, count = {servers}, compute = 10 TFLOPS, memory = 64 GiB }}
        device cloud {{ tier = cloud, compute = 100 TFLOPS, memory = 256 GiB }}
        link hub <-> server {{ bandwidth = 200 Mbps, latency = 3 ms }}
        link server <-> cloud {{ bandwidth = 500 Mbps, latency = 20 ms }}
        sensor patch {{ on = hub, rate = 4 Hz, emits = float32[1, 8]{'' if top else ', privacy = [phi]'} }}
        actuator pager {{ on = hub }}
        model clf {{ source = "tiny.onnx", inputs = {{ x = float32[1, 8] }} }}
        pipeline alert {{ flow = patch -> clf -> pager }}
        {'' if top else 'privacy phi { allow = [edge, fog] }'}
        {extra}
        training learn {{
          model      = clf
          clients    = hub
          data       = patch
          samples    = "tiny_fl:samples"
          trainer    = "tiny_fl:train"
          config     = {{ lr = 0.5 }}
          epochs     = 5
          examples   = 40
          aggregate  = {aggregate}
          rounds     = {rounds}
          round_time = 60 s
          {every}
          {dp}
        }}
        """)
    path = tmp / "app.ef"
    path.write_text(text)
    return path


def _compile(path: Path, target: str, out: Path) -> api.CompileResult:
    result = api.compile(path, target, out)
    found = [f"{d.code} {d.message}" for d in [*result.check.diagnostics, *result.diagnostics]]
    assert found == [] and result.files, (target, found)
    return result


def _objects(files: dict[str, bytes]) -> list[dict[str, Any]]:
    return kustomize.build(files, "k8s")


def _training(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if "edgeflow.io/training" in o["metadata"].get("labels", {})]


def _pods(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: pod_template(o) for o in objects
            if o["kind"] in ("Deployment", "Job", "CronJob")}


# ---------------------------------------------------------------- k8s


def test_the_example_deploys_its_training_under_restricted_pod_security(tmp_path: Path) -> None:
    result = _compile(ROOT / "examples" / "healthcare_vitals.ef", "k8s", tmp_path / "b")
    files = result.files
    objects = _objects(files)
    mine = _training(objects)
    kinds = sorted(o["kind"] for o in mine)
    # a SuperLink (Deployment, Service, volume, policy), 16 SuperNodes, the coordinator's Job
    assert kinds.count("Deployment") == 17 and kinds.count("Job") == 1
    assert kinds.count("Service") == 1 and kinds.count("PersistentVolumeClaim") == 1
    assert kinds.count("NetworkPolicy") == 18 and kinds.count("ConfigMap") == 1
    assert {n: v for n, v in pss.check_objects(mine, "restricted").items() if v} == {}
    for obj in mine:
        for version in K8S_VERSIONS:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                kubernetes_validate.validate(obj, version, strict=True)
    pods = _pods(mine)
    for name, pod in pods.items():
        spec = pod["spec"]
        assert spec["automountServiceAccountToken"] is False, name
        for c in spec["containers"]:
            assert c["image"] == TRAIN_IMAGE
            env = {e["name"]: e["value"] for e in c["env"]}
            assert env["FLWR_TELEMETRY_ENABLED"] == "0" and env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
        # every hub's SuperNode runs on its hub, the SuperLink and coordinator on the server
        where = spec["nodeSelector"]["edgeflow.io/device"]
        assert where == pod["metadata"]["labels"]["edgeflow.io/runs-on"]
        assert where == (re.sub(r".*-node-", "", name) if "-node-" in name else "ward-server")
    superlink = pods["ward-risk-superlink-ward-server"]["spec"]["containers"][0]["command"]
    assert {"--enable-supernode-auth", "--disable-runtime-dependency-installation",
            "--ssl-certfile", "--ssl-keyfile"} <= set(superlink) and "--insecure" not in superlink


def test_each_secret_reaches_only_its_own_pod(tmp_path: Path) -> None:
    """A SuperNode mounts its own certificate and key only; the coordinator mounts
    certificates and the CA, never a key; and every secret is one `edgeflow certs` and
    cert-manager make."""
    files = _compile(ROOT / "examples" / "healthcare_vitals.ef", "k8s", tmp_path / "b").files
    mine = _training(_objects(files))
    listed = {s["secret"]: s for s in json.loads(files["secrets.json"])["secrets"]}
    issued = {d["spec"]["secretName"] for d in yaml.safe_load_all(
        files["k8s/cert-manager/identities/certificates.yaml"]) if d}
    for name, pod in _pods(mine).items():
        volumes = pod["spec"]["volumes"]
        secrets = [v["secret"]["secretName"] for v in volumes if "secret" in v]
        projected = [s["secret"] for v in volumes if "projected" in v
                     for s in v["projected"]["sources"]]
        for secret in secrets + [p["name"] for p in projected]:
            assert secret in listed and secret in issued, secret
        if "-node-" in name:
            assert secrets == [f"{name}-tls"] and not projected
        elif name.endswith("-coordinator"):
            assert not secrets
            assert {i["key"] for p in projected for i in p["items"]} == {"ca.crt", "tls.crt"}
            assert len(projected) == 17
    superlink = listed["ward-risk-superlink-ward-server-tls"]
    assert superlink["server"] and "ward-risk-superlink-ward-server" in superlink["dns"]


def test_policies_admit_exactly_the_federation(tmp_path: Path) -> None:
    """On the SuperLinks' port: each SuperNode to its own SuperLink, each site's node (in its
    SuperLink's pod) to the top one, the coordinator to all; nothing else, and no training pod
    reaches a broker."""
    path = _app(tmp_path, hubs=4, servers=2, top=True)
    files = _compile(path, "k8s", tmp_path / "b").files
    objects = _objects(files)
    assert {n: v for n, v in pss.check_objects(objects, "restricted").items() if v} == {}
    links = {f"learn-superlink-server-{k}" for k in (0, 1)} | {"learn-superlink-cloud"}
    wanted = {(f"learn-node-hub-{i}", f"learn-superlink-server-{i // 2}") for i in range(4)}
    wanted |= {(f"learn-superlink-server-{k}", "learn-superlink-cloud") for k in (0, 1)}
    wanted |= {("learn-coordinator", link) for link in links}
    assert admitted(objects, 9092) == wanted
    training = {o["metadata"]["name"] for o in _training(objects)}
    assert not {pair for pair in admitted(objects, 8883) if set(pair) & training}
    site = _pods(objects)["learn-superlink-server-1"]["spec"]["containers"]
    assert [c["name"] for c in site] == ["superlink", "node"]
    assert "site=1" in site[1]["command"]
    spec = json.loads(files["training/learn/spec.json"])
    assert spec["top"] == "cloud" and spec["superlinks"]["server[1]"]["address"] == \
        "127.0.0.1:9092"


def test_spec_files_are_what_the_pods_read(tmp_path: Path) -> None:
    files = _compile(ROOT / "examples" / "healthcare_vitals.ef", "k8s", tmp_path / "b").files
    config = next(o for o in _training(_objects(files)) if o["kind"] == "ConfigMap")
    assert config["data"]["spec.json"].encode() == files["training/ward_risk/spec.json"]
    spec, _, _ = specfile.from_json(json.loads(config["data"]["spec.json"]), Path("/"))
    assert spec.resume and spec.rounds == 3 and len(spec.clients()) == 16
    model = str(spec.model).removeprefix("/var/lib/edgeflow/models/")
    assert files[f"models/{model}"] == (ROOT / "examples" / "models" / "vitals.onnx").read_bytes()
    image = next(line for line in files["k8s/models.Dockerfile"].decode().splitlines()
                 if "docker build" in line)
    assert "edgeflow-models-" in image


def test_every_becomes_a_cron_job_or_is_refused(tmp_path: Path) -> None:
    files = _compile(_app(tmp_path, every="every = 21600 s"), "k8s", tmp_path / "b").files
    cron = next(o for o in _objects(files) if o["kind"] == "CronJob")
    assert cron["spec"]["schedule"] == "0 */6 * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(cron, version, strict=True)
    assert {n: v for n, v in pss.check_objects([cron], "restricted").items() if v} == {}
    refused = api.compile(_app(tmp_path, every="every = 420 s"), "k8s", tmp_path / "c")
    assert [d.code for d in refused.diagnostics] == ["E1004"]
    assert "cron" in refused.diagnostics[0].message and not (tmp_path / "c").exists()


def _fires(cron: str) -> list[int]:
    """The minutes of one week (Sunday 00:00 = 0) at which `cron` fires, read independently of
    cron_schedule: each field `*`, `*/n` or a number (day of month taken as every day: the
    schedules compared never name one)."""
    minute, hour, _, _, weekday = cron.split()

    def matches(field: str, value: int) -> bool:
        if field == "*":
            return True
        if field.startswith("*/"):
            return value % int(field[2:]) == 0
        return value == int(field)

    return [m for m in range(7 * 24 * 60)
            if matches(minute, m % 60) and matches(hour, m // 60 % 24)
            and matches(weekday, m // (24 * 60))]


@given(st.integers(min_value=1, max_value=7 * 24 * 60).map(lambda m: m * 60.0)
       | st.floats(min_value=1, max_value=1e6))
def test_a_cron_schedule_fires_exactly_every_period(seconds: float) -> None:
    cron = cron_schedule(seconds)
    if cron is None:
        return
    fires = _fires(cron)
    gaps = {(b - a) % (7 * 24 * 60) or 7 * 24 * 60
            for a, b in zip(fires, fires[1:] + fires[:1], strict=True)}
    assert gaps == {seconds / 60}, (seconds, cron)


def test_common_periods_have_schedules() -> None:
    assert [cron_schedule(s) for s in (60, 900, 3600, 6 * 3600, 86400, 7 * 86400)] == \
        ["* * * * *", "*/15 * * * *", "0 * * * *", "0 */6 * * *", "0 0 * * *", "0 0 * * 0"]
    assert [cron_schedule(s) for s in (90, 7 * 60, 5 * 3600, 2 * 86400)] == [None] * 4


def test_a_device_named_like_a_training_object_is_refused(tmp_path: Path) -> None:
    path = _app(tmp_path, extra="device learn_config { tier = fog, compute = 1 TFLOPS, "
                                "memory = 8 GiB }\nlink hub <-> learn_config { bandwidth = "
                                "100 Mbps, latency = 2 ms }\nactuator log { on = learn_config }"
                                "\npipeline keep { flow = patch -> log }")
    result = api.compile(path, "k8s", tmp_path / "b")
    assert [d.code for d in result.diagnostics] == ["E1003"], result.diagnostics
    assert "learn-config" in result.diagnostics[0].message


def test_targets_that_do_not_deploy_trainings_leave_them_out(tmp_path: Path) -> None:
    files = _compile(_app(tmp_path), "azure-iot-edge", tmp_path / "b").files
    assert not [p for p in files if "training" in p]
    assert "learn-" not in files["secrets.json"].decode()


# ---------------------------------------------------------------- compose and the image


def test_compose_files_run_the_federation_locked_down(tmp_path: Path) -> None:
    files = _compile(_app(tmp_path), "compose", tmp_path / "b").files
    found = {p: yaml.safe_load(d) for p, d in files.items() if "/training-" in p}
    assert sorted(found) == [f"compose/hub-{i}/training-learn.yaml" for i in range(3)] + \
        ["compose/server/training-learn.yaml"]
    server = found["compose/server/training-learn.yaml"]["services"]
    assert sorted(server) == ["coordinator", "superlink"]
    assert server["coordinator"]["profiles"] == ["run"]
    for doc in found.values():
        for name, svc in doc["services"].items():
            assert svc["user"] == "10001:10001" and svc["read_only"] is True
            assert svc["cap_drop"] == ["ALL"] and svc["image"] == TRAIN_IMAGE
            assert svc["environment"]["FLWR_TELEMETRY_ENABLED"] == "0"
            if name == "coordinator":
                assert not [v for v in svc["volumes"] if "tls.key" in v or v.endswith("-tls:"
                                                                                       "/etc/edgeflow/train-certs:ro")]


def test_the_training_image_provides_what_the_bundles_use(tmp_path: Path) -> None:
    docker = Dockerfile(ROOT / "docker" / "train.Dockerfile")
    assert docker.documented_tag() == TRAIN_IMAGE
    assert any(a.endswith("[train]") for a in docker.pip_installs()[0])
    assert docker.user() == (10001, 10001)
    files = _compile(_app(tmp_path, hubs=4, servers=2, top=True), "k8s", tmp_path / "b").files
    for pod in _pods(_training(_objects(files))).values():
        for c in pod["spec"]["containers"]:
            assert c["securityContext"]["runAsUser"] == 10001
            for mount in c["volumeMounts"]:
                assert provided_by_image(mount["mountPath"], docker), mount
    assert any(9092 in r for r in docker.exposed())


# ---------------------------------------------------------------- the rehearsal


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _target(volume: str) -> str:
    return re.sub(r"\$\{[^}]*\}", "/from-environment", volume).split(":")[1]


def needed_paths(role: str, command: list[str], folder: Path) -> set[str]:
    """Every container path a training container uses: its command's, and what it reads of
    the spec files: every Flower process the spec, the model and the code; an aggregator its
    work folder; a site's node the CA of the SuperLink beside it; the coordinator its
    certificates (the spec it only names to the ServerApp)."""
    paths = {a for a in command if a.startswith("/")}
    if role == "coordinator":
        co = json.loads((folder / "coordinator.json").read_text())
        return paths | {p for link in co["superlinks"].values()
                        for p in [link["root_certificates"], *link["nodes"].values()]}
    spec = json.loads((folder / "spec.json").read_text())
    paths |= {spec["model"], spec["code_root"], "/etc/edgeflow/train/spec.json"}
    if role in ("superlink", "site-node"):
        paths.add(spec["work_dir"])
    if role == "site-node":
        paths |= {s["root_certificates"] for s in spec["superlinks"].values()}
    return paths


def assert_paths_provided(role: str, command: list[str], targets: list[str],
                          folder: Path) -> None:
    """Each path is under a mount of the container, or is what the image provides: /tmp and
    the folder a derived image puts the user's code in."""
    provided = [*targets, "/tmp", CODE_DIR]
    for path in needed_paths(role, command, folder):
        assert any(path == t or path.startswith(t.rstrip("/") + "/") for t in provided), \
            (role, path, targets)


class Rehearsal:
    """The compose bundle's training services as processes: each volume's container path maps
    to the host folder it names (relative to its compose file; `${EDGEFLOW_SECRETS}` is the
    folder `edgeflow certs` wrote; the named volume `data` is one folder for all aggregators, as
    `edgeflow train` shares one, each SuperLink's database in it named apart), the user's code is
    where a derived image would put it, the SuperLinks' host names resolve to 127.0.0.1 and
    every port is a free one, since all run on one machine."""

    def __init__(self, bundle: Path, secrets: Path, code: Path, root: Path) -> None:
        self.bundle, self.secrets, self.root = bundle, secrets, root
        self.shared = {"/var/lib/edgeflow/train": root / "data", "/opt/edgeflow/code": code,
                       "/var/lib/edgeflow/models": bundle / "models",
                       "/etc/edgeflow/superlink-tls/ca.crt": secrets / "ca.crt",
                       "/etc/edgeflow/train": root / "spec"}
        self.ports: dict[str, int] = {}
        # started as `edgeflow train` starts its processes: all stopped, with every process
        # Flower started for them (tests/test_federation.py checks that it finds them all)
        self.processes = Processes({})
        (root / "data").mkdir(parents=True)
        (root / "spec").mkdir()

    def _mounts(self, compose: Path, volumes: list[str]) -> dict[str, Path]:
        out = dict(self.shared)
        for volume in volumes:
            volume = re.sub(r"\$\{EDGEFLOW_SECRETS[^}]*\}", str(self.secrets), volume)
            source, target = volume.split(":")[:2]
            if source == "data":
                continue
            host = (compose.parent / source).resolve()
            if target.startswith("/etc/edgeflow/train/"):  # the spec files: rewritten copies
                continue
            out[target] = host
        return out

    def _host_path(self, value: str, mounts: dict[str, Path]) -> str:
        best = max((p for p in mounts if value == p or value.startswith(p + "/")), key=len,
                   default=None)
        return value if best is None else str(mounts[best]) + value[len(best):]

    def _rewrite(self, value: Any, mounts: dict[str, Path]) -> Any:
        if isinstance(value, dict):
            return {k: self._rewrite(v, mounts) for k, v in value.items()}
        if isinstance(value, list):
            return [self._rewrite(v, mounts) for v in value]
        if isinstance(value, str):
            if m := re.fullmatch(r"([a-z0-9-]+):(9\d\d\d)", value):  # a SuperLink's address
                return f"127.0.0.1:{self.ports.setdefault(m[1], _free_port())}"
            if value.startswith("/"):
                return self._host_path(value, mounts)
        return value

    def prepare(self, training: str) -> None:
        folder = self.bundle / "training" / training
        spec = self._rewrite(json.loads((folder / "spec.json").read_text()), self.shared)
        # a site's node reaches the SuperLink in its own pod at 127.0.0.1:PORT: here, the port
        # that SuperLink was given
        links = json.loads((folder / "coordinator.json").read_text())["superlinks"]
        for aggregator, local in spec["superlinks"].items():
            name = links[aggregator]["address"].split(":")[0]
            local["address"] = f"127.0.0.1:{self.ports.setdefault(name, _free_port())}"
        (self.root / "spec" / "spec.json").write_text(json.dumps(spec))

    def service(self, compose: Path, name: str) -> tuple[list[str], dict[str, str]]:
        svc = yaml.safe_load(compose.read_text())["services"][name]
        assert_paths_provided(name, svc["command"], [_target(v) for v in svc["volumes"]],
                              self.bundle / "training" / "learn")
        mounts = self._mounts(compose, svc["volumes"])
        tmp = self.root / "tmp" / f"{compose.parent.name}-{name}"
        tmp.mkdir(parents=True, exist_ok=True)
        mounts["/tmp"] = tmp
        argv = list(svc["command"])
        if "coordinate" in argv:
            co = json.loads((self.bundle / "training" / "learn" / "coordinator.json").read_text())
            (self.root / "spec" / "coordinator.json").write_text(json.dumps(
                self._rewrite(co, mounts)))
        argv = [self._rewrite(arg, mounts) for arg in argv]
        if argv[0] == "flower-superlink":  # its port: the one its address was given
            # each aggregator's volume is its own; here the work folder is one (as in
            # `edgeflow train`), so each SuperLink's database is kept apart
            database = Path(argv[argv.index("--database") + 1])
            argv[argv.index("--database") + 1] = str(database.with_name(
                f"{compose.parent.name}-{database.name}"))
            port = argv.index("--port") + 1
            link = re.sub(r"-tls$", "", Path(self._host_path(
                "/etc/edgeflow/superlink-tls", mounts)).name)
            argv[port] = str(self.ports.setdefault(link, _free_port()))
            argv[argv.index("--host") + 1] = "127.0.0.1"
        elif "--port" in argv:  # a SuperNode's ClientApp API
            argv[argv.index("--port") + 1] = str(_free_port())
        bin_dir = Path(sys.executable).parent
        argv[0] = sys.executable if argv[0] == "python" else str(bin_dir / argv[0])
        env = {**os.environ, **{k: self._host_path(v, mounts) for k, v in
                                svc["environment"].items()},
               "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
               "PYTHONPATH": str(ROOT)}
        return argv, env

    def start(self, compose: Path, name: str) -> None:
        argv, env = self.service(compose, name)
        self.processes.start(f"{compose.parent.name} {name}", argv,
                             self.root / "logs" / f"{compose.parent.name}-{name}.log", env=env)

    def run(self, compose: Path, name: str, timeout: float) -> tuple[int, str]:
        """Run a one-shot service to its end (its exit code and output), while the long-running
        ones must stay up."""
        argv, env = self.service(compose, name)
        log = self.root / "logs" / f"{compose.parent.name}-{name}.log"
        log.unlink(missing_ok=True)
        proc = self.processes.start(name, argv, log, env=env)
        self.processes.started.remove(proc)
        deadline = time.monotonic() + timeout
        while (code := proc.popen.poll()) is None:
            self.processes.check()  # a SuperLink or SuperNode that exited: its log says why
            assert time.monotonic() < deadline, f"{name} did not finish in {timeout:.0f} s"
            time.sleep(0.5)
        return code, log.read_text()


def test_the_compose_bundle_trains_as_generated(tmp_path: Path) -> None:
    path = _app(tmp_path, dp="privacy = dp(clip = 10, noise = 1)")
    bundle = tmp_path / "bundle"
    _compile(path, "compose", bundle)
    made = certs.make(bundle, tmp_path / "secrets")
    assert not made.diagnostics
    play = Rehearsal(bundle, tmp_path / "secrets", tmp_path, tmp_path / "rehearsal")
    play.prepare("learn")
    server = bundle / "compose" / "server" / "training-learn.yaml"
    try:
        play.start(server, "superlink")
        for i in range(3):
            play.start(bundle / "compose" / f"hub-{i}" / "training-learn.yaml", "node")
        code, first = play.run(server, "coordinator", timeout=300)
        assert code == 0, first
        assert first.count("registered") == 3 and "completed" in first
        versions = json.loads((tmp_path / "rehearsal" / "data" / "versions" /
                               "manifest.json").read_text())
        assert [v["model"] for v in versions] == ["clf"]
        code, second = play.run(server, "coordinator", timeout=300)
        assert code == 0, second
        assert "registered" not in second  # the keys were registered the first time
    finally:
        play.processes.stop_all()
    versions = json.loads((tmp_path / "rehearsal" / "data" / "versions" /
                           "manifest.json").read_text())
    assert len(versions) == 2
    progress = [json.loads(line) for line in (tmp_path / "rehearsal" / "data" / "federation" /
                                              "progress.jsonl").read_text().splitlines()]
    notes = [e["text"] for e in progress if e["event"] == "note"]
    assert f"continuing from {versions[0]['file']}" in notes
    # the budget composes over both runs' rounds: the second version's is that of 2 rounds
    assert "the privacy budget counts the 1 earlier round(s) that made the starting version" \
        in notes
    assert versions[1]["epsilon"] > versions[0]["epsilon"] > 0
    initial = [e for e in progress if e["event"] == "initial"]
    # the second run starts from the first's version: its initial accuracy is that version's
    assert np.isclose(initial[-1]["test_accuracy"], versions[0]["test_accuracy"])
    assert versions[1]["test_accuracy"] >= versions[0]["test_accuracy"] - 0.05


def test_the_hierarchical_compose_bundle_trains_as_generated(tmp_path: Path) -> None:
    """Two sites of two hubs under the cloud: each site's node, beside its site's SuperLink,
    runs its site's round for the cloud's federation."""
    path = _app(tmp_path, hubs=4, servers=2, top=True)
    bundle = tmp_path / "bundle"
    _compile(path, "compose", bundle)
    assert not certs.make(bundle, tmp_path / "secrets").diagnostics
    play = Rehearsal(bundle, tmp_path / "secrets", tmp_path, tmp_path / "rehearsal")
    play.prepare("learn")
    compose = bundle / "compose"
    for k in (0, 1):
        site = yaml.safe_load((compose / f"server-{k}" / "training-learn.yaml").read_text())
        assert sorted(site["services"]) == ["site-node", "superlink"]
        assert "data:/var/lib/edgeflow/train" in site["services"]["site-node"]["volumes"]
    try:
        play.start(compose / "cloud" / "training-learn.yaml", "superlink")
        for k in (0, 1):
            play.start(compose / f"server-{k}" / "training-learn.yaml", "superlink")
            play.start(compose / f"server-{k}" / "training-learn.yaml", "site-node")
        for i in range(4):
            play.start(compose / f"hub-{i}" / "training-learn.yaml", "node")
        code, out = play.run(compose / "cloud" / "training-learn.yaml", "coordinator",
                             timeout=400)
        assert code == 0, out
        assert out.count("registered") == 6 and "completed" in out  # 4 hubs, 2 sites
    finally:
        play.processes.stop_all()
    versions = json.loads((tmp_path / "rehearsal" / "data" / "versions" /
                           "manifest.json").read_text())
    assert len(versions) == 1 and versions[0]["round"] == 1


def test_every_path_a_container_uses_is_mounted(tmp_path: Path) -> None:
    """In the k8s bundle (both tiers): every path a training container's command and spec
    files name is one of its mounts, or the image's."""
    files = _compile(_app(tmp_path, hubs=4, servers=2, top=True), "k8s", tmp_path / "b").files
    folder = tmp_path / "b" / "training" / "learn"
    seen = set()
    for pod in _pods(_training(_objects(files))).values():
        for c in pod["spec"]["containers"]:
            role = "coordinator" if "coordinate" in c["command"] else \
                "superlink" if c["name"] == "superlink" else \
                "site-node" if "site=" in " ".join(c["command"]) else "node"
            assert_paths_provided(role, c["command"],
                                  [m["mountPath"] for m in c["volumeMounts"]], folder)
            seen.add(role)
    assert seen == {"coordinator", "superlink", "site-node", "node"}


def test_a_pem_key_becomes_the_openssh_key_flower_reads() -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from edgeflow import pki
    from edgeflow.federation.deploy import DeployError, openssh_key

    issued = pki.issue(pki.new_ca("test", days=1), "node", days=1)
    key = serialization.load_ssh_private_key(openssh_key(issued.key_pem), None)
    public = x509.load_pem_x509_certificate(issued.cert_pem).public_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert key.public_key().public_numbers() == public.public_numbers()
    with pytest.raises(DeployError):
        openssh_key(b"not a key")


# a stand-in for flower-supernode: it records the key it was given, then fails at once (not
# admitted) until the file LOG.admit exists, and then runs until stopped
STAND_IN = """
import hashlib, pathlib, sys, time
log = pathlib.Path(sys.argv[1])
key = pathlib.Path(sys.argv[sys.argv.index("--auth-supernode-private-key") + 1])
with log.open("a") as f:
    f.write(hashlib.sha256(key.read_bytes()).hexdigest() + "\\n")
if pathlib.Path(str(log) + ".admit").exists():
    time.sleep(120)
sys.exit(1)
"""

WRAPPER = """
import sys
from edgeflow.federation import deploy
log, key, keys, stand_in = sys.argv[1:5]
deploy.RETRY_S, deploy.KEY_CHECK_S = 0.2, 0.2
deploy.supernode_argv = lambda converted, args: [
    sys.executable, "-c", stand_in, log, "--auth-supernode-private-key", str(converted)]
sys.exit(deploy.main(["supernode", "--key", key, "--key-dir", keys, "--"]))
"""


def test_a_supernode_waits_for_admission_and_follows_its_key(tmp_path: Path) -> None:
    """Not admitted: started again, in the same process (no container restart); admitted: it
    runs; its key renewed: started again with the new key; SIGTERM: exit 0, its child gone."""
    import signal
    import subprocess

    import psutil

    from edgeflow import pki

    ca = pki.new_ca("test", days=1)
    key = tmp_path / "tls.key"
    key.write_bytes(pki.issue(ca, "node", days=1).key_pem)
    log = tmp_path / "starts.log"

    def starts() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    def wait_for(condition: Any) -> None:
        deadline = time.monotonic() + 30
        while not condition():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)

    proc = subprocess.Popen([sys.executable, "-c", WRAPPER, str(log), str(key),
                             str(tmp_path / "keys"), STAND_IN], cwd=ROOT)
    try:
        wait_for(lambda: len(starts()) >= 3)  # refused three times, started again each time
        Path(f"{log}.admit").touch()
        wait_for(lambda: psutil.Process(proc.pid).children())
        time.sleep(1.0)
        admitted = len(starts())
        time.sleep(1.0)
        assert len(starts()) == admitted  # admitted: it keeps running
        key.write_bytes(pki.issue(ca, "node", days=1).key_pem)  # cert-manager renewed it
        wait_for(lambda: len(starts()) > admitted)
        assert starts()[-1] != starts()[admitted - 1]  # with the new key
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        _, alive = psutil.wait_procs(children, timeout=5)
        assert not alive
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (tmp_path / "keys" / "supernode.key").stat().st_mode & 0o777 == 0o600


def test_a_model_with_external_data_is_shipped_whole(tmp_path: Path) -> None:
    """The starting model's external data travels beside it, so it loads in the containers."""
    import onnx

    path = _app(tmp_path)
    model = onnx.load(str(tmp_path / "tiny.onnx"))
    onnx.save_model(model, str(tmp_path / "tiny.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="tiny.weights", size_threshold=0)
    files = _compile(path, "compose", tmp_path / "b").files
    assert "models/training/learn/tiny.weights" in files
    loaded = onnx.load(str(tmp_path / "b" / "models" / "training" / "learn" / "clf.onnx"))
    assert {i.name for i in loaded.graph.initializer} == {"W", "b"}
    assert all(i.raw_data or i.float_data for i in loaded.graph.initializer)


def test_long_names_fit_what_kubernetes_takes(tmp_path: Path) -> None:
    """A training name of 104 characters: every object name and label value a DNS label of
    at most 63 characters, a CronJob's at most 52 (Kubernetes adds 11 for its Jobs)."""
    path = _app(tmp_path, every="every = 86400 s")
    path.write_text(path.read_text().replace("training learn", "training "
                                             + "a_very_long_training_name_" * 4))
    files = _compile(path, "k8s", tmp_path / "b").files
    mine = _training(_objects(files))
    for obj in mine:
        name = obj["metadata"]["name"]
        limit = {"CronJob": 52, "PersistentVolumeClaim": 253}.get(obj["kind"], 63)
        assert len(name) <= limit and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
        for value in obj["metadata"]["labels"].values():
            assert len(value) <= 63, value
    assert {o["kind"] for o in mine} >= {"CronJob", "Service", "Deployment"}
