"""`edgeflow run`: a compiled app executed on this machine, every device's broker and every unit on
127.0.0.1, with the plan's links and device speeds emulated so the measured latency can stand
beside the predicted one (docs/runtime.md).

The output folder holds everything the run made and nothing else is touched: `models/` (the
bundle's model files), `tls/` (a throw-away CA and every identity's certificate, keys 0600),
`brokers/`, `config/` (unit.json and driver configs), `sinks/` (one SQLite database per sink),
`logs/` (each process's output) and `run.json`.

`--rollout MODEL=FILE.onnx[@T]` (`Options.rollouts`) hands a whole model's running workers a new
version wave by wave (edgeflow/rollout.py has the rules, docs/training.md "Rollout"). The version
is checked before anything starts (`check_rollouts`) and copied to `models/versions/`. Each
worker of the model is started with `--control config/NAME.control.json`: the run asks it for a
version by replacing that file (JSON `request`, `version`, `file`, `sha256`; written whole and
renamed into place), the worker loads the version beside the running one, swaps it in between two
frames and answers in `config/NAME.control.status.json` (`version`, `swapped_at`, `request`,
`error`), which the run reads. A file and a rename need no broker, no ACL and no signal (a signal
sent to a worker restarting before its handler is set would kill it); the file also outlives a
restart: a restarted worker loads the version it was last asked for. The worker looks at the file
every 0.1 s, which is well inside a wave's hold.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import pwd
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from edgeflow import ir, pki
from edgeflow import rollout as ro
from edgeflow.cost import compute_s, model_cost
from edgeflow.emit.artefacts import adapt_artefacts, build_artefacts, read_models
from edgeflow.emit.bundle import TIER_ORDER, Broker, Bundle, Client, build_bundle, client_name
from edgeflow.emit.identities import (
    bridge_secret,
    broker_secret,
    client_secret,
    identities,
    write_identities,
)
from edgeflow.emit.mqtt import render_acl, render_conf
from edgeflow.emit.targets.base import Rendering
from edgeflow.emit.units import driver_spec, unit_spec
from edgeflow.execution import ExecutionGraph
from edgeflow.link_schedule import LinkSchedule
from edgeflow.plan import Part, Plan

MARKER = ".edgeflow-run"
BUSY_PERCENT = 85.0  # above this mean CPU use, the summary says the measurement is the machine's
STOP_GRACE_S = 5.0
ENGINES = ("embedded", "mosquitto")


class RunError(Exception):
    """Why the run could not start or went wrong (E1101, exit status 1), with a hint where
    one helps; every process already started is stopped."""

    def __init__(self, message: str, help: str | None = None) -> None:
        super().__init__(message)
        self.help = help


_TAKEN: set[int] = set()
_RNG = random.Random(os.getpid())


def _ephemeral() -> range:
    """The ports the kernel hands out to outgoing connections (Linux; a common default)."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        low, high = map(int, text.split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_port() -> int:
    """A loopback port nothing listens on, outside the ephemeral range: a port the kernel picked
    (bind to 0) could be handed to some client's connection before our process binds it."""
    ephemeral = _ephemeral()
    candidates = [p for p in range(20000, 32768) if p not in ephemeral and p not in _TAKEN]
    for port in _RNG.sample(candidates, min(len(candidates), 2000)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _TAKEN.add(port)
        return port
    with socket.socket() as s:  # no free port outside the ephemeral range: take the kernel's
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """The child gets SIGTERM when `edgeflow run` dies, however it dies: no orphan, ever."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    role: str                          # broker, links, unit, sensor, sink
    metrics_port: int | None = None
    popen: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: list[dict[str, Any]] = field(default_factory=list)
    carried: dict[str, float] = field(default_factory=dict)   # counters of earlier lives
    last: dict[str, float] = field(default_factory=dict)      # last scrape of this life
    ready: Callable[[], bool] | None = None                  # serving again (after a restart)


class Processes:
    """Every process the run starts; all are stopped at the end and on any error."""

    def __init__(self, env: dict[str, str]) -> None:
        self.procs: list[Proc] = []
        self.env = env

    def start(self, p: Proc) -> Proc:
        p.log.parent.mkdir(parents=True, exist_ok=True)
        with open(p.log, "ab") as log:
            p.popen = subprocess.Popen(p.argv, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=self.env,
                                       preexec_fn=_die_with_parent)  # noqa: PLW1509
        p.started = time.time()
        if p not in self.procs:
            self.procs.append(p)
        return p

    def wait_ready(self, p: Proc, check: Callable[[], bool], timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert p.popen is not None
            if p.popen.poll() is not None:
                raise RunError(f"{p.name} exited at start (status {p.popen.returncode}): "
                               f"{last_line(p.log)}")
            if check():
                return
            time.sleep(0.05)
        raise RunError(f"{p.name} did not become ready in {timeout_s:.0f} s: {last_line(p.log)}")

    def stop(self, procs: list[Proc]) -> None:
        live = [p for p in procs if p.popen is not None and p.popen.poll() is None]
        for p in live:
            assert p.popen is not None
            p.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for p in live:
            assert p.popen is not None
            try:
                p.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()

    def stop_all(self) -> None:
        order = ("sensor", "unit", "sink", "links", "broker")
        for role in order:
            self.stop([p for p in self.procs if p.role == role])


def last_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no output)"
    return lines[-1].strip() if lines else "(no output)"


def listening(port: int) -> Callable[[], bool]:
    def check() -> bool:
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", port)) == 0
    return check


def printed_ready(log: Path) -> Callable[[], bool]:
    return lambda: log.exists() and "ready" in log.read_text(errors="replace").split()


# ---- what the run deploys ----------------------------------------------------------------------


def _link_id(a: str, b: str) -> tuple[str, str]:
    """(id, direction) of the link from instance a to instance b."""
    x, y = sorted((a, b))
    return f"{x}<->{y}", "ab" if (a, b) == (x, y) else "ba"


def _joins(sched: LinkSchedule, a: str, b: str) -> bool:
    """Whether `sched` names the link between instances `a` and `b` (by instance or by the
    declared device)."""
    def names(end: str, inst: str) -> bool:
        return end in (inst, inst.split("[")[0])
    return names(sched.a, a) and names(sched.b, b) or names(sched.a, b) and names(sched.b, a)


def emulated_seconds(program: ir.Program, plan: Plan, c: Client) -> float:
    """What one run of `c` takes on its declared device, as the plan's cost model says."""
    unit = c.placed
    assert unit is not None
    device = program.devices[unit.device.split("[")[0]]
    int8 = False
    if unit.part is Part.OPERATOR:
        work = program.operators[unit.step].work_flop
    elif unit.part is Part.WHOLE:
        # the variant the plan chose (made: its file exists)
        model, int8 = program.models[unit.step].as_variant(unit.variant)
        work = model_cost(model).work
    else:
        split = next(s for s in plan.splits if s.model == unit.step and s.replica == unit.replica)
        work = split.head_work_flop if unit.part is Part.HEAD else split.tail_work_flop
        int8 = program.models[unit.step].as_variant(unit.variant)[1]
    return compute_s(work, device, int8)


def prepare_output(out: Path) -> None:
    """`out` is made for the run, or was made by an earlier run (its marker says so): anything
    else is refused. Only the run's own folders are replaced."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise RunError(f"{out} is not a folder")
    if out.exists() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise RunError(f"{out} holds files that `edgeflow run` did not write; name an empty or "
                       "new folder with -o")
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("models", "tls", "brokers", "config", "sinks", "logs"):
        target = out / sub
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
    (out / MARKER).write_text("edgeflow run output\n")
    out.chmod(0o755)


class Deployment:
    """The processes of a run, from a plan."""

    def __init__(self, execution: ExecutionGraph, plan: Plan, out: Path, engine: str,
                 replay: dict[str, Path], app_dir: Path,
                 schedules: tuple[LinkSchedule, ...] = ()) -> None:
        self.execution, self.plan, self.out, self.engine = execution, plan, out, engine
        self.schedules = schedules
        self.program = execution.program
        self.bundle: Bundle = build_bundle(execution, plan)
        self.replay, self.app_dir = replay, app_dir
        self.ports = {d: free_port() for d in self.bundle.brokers}
        self.mosquitto_user = self._mosquitto_user()

    @staticmethod
    def _mosquitto_user() -> tuple[int, int] | None:
        """mosquitto started as root drops to this user, which must read its files."""
        if os.geteuid() != 0:
            return None
        for name in ("mosquitto", "nobody"):
            try:
                entry = pwd.getpwnam(name)
                return entry.pw_uid, entry.pw_gid
            except KeyError:
                continue
        return None

    # -- files ---------------------------------------------------------------------------------
    def write_pki(self) -> None:
        """A throw-away CA and every certificate of the bundle, as `edgeflow certs` makes them
        (one folder per secret: ca.crt, tls.crt, tls.key)."""
        tls = self.out / "tls"
        ca = pki.new_ca(f"edgeflow run {self.bundle.app}", days=2)
        pki.write_ca(tls, ca)
        write_identities(tls, ca, identities(self.bundle), days=2)
        if self.mosquitto_user is not None and self.engine == "mosquitto":
            for b in self.bundle.brokers.values():  # mosquitto drops root privileges
                for secret in (broker_secret(b.name), bridge_secret(b.name)):
                    folder = tls / secret
                    if folder.is_dir():
                        for f in folder.iterdir():
                            os.chown(f, *self.mosquitto_user)
                        folder.chmod(0o755)

    def secret_dir(self, secret: str) -> Path:
        return self.out / "tls" / secret

    def tls_of(self, c: Client) -> dict[str, str]:
        folder = self.secret_dir(client_secret(c.name))
        return {"ca": str(folder / "ca.crt"), "cert": str(folder / "tls.crt"),
                "key": str(folder / "tls.key")}

    def write_models(self) -> dict[tuple[str, Part, int], Path]:
        sources = read_models(self.program, self.plan)
        artefacts = build_artefacts(self.program, self.plan, sources)
        self.adapt_files = adapt_artefacts(self.program, self.plan, sources)
        paths: dict[tuple[str, Part, int], Path] = {}
        tables = [a for cuts in self.adapt_files.values() for pair in cuts.values() for a in pair]
        for art in [*artefacts.values(), *tables]:
            path = self.out / art.path
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                path.write_bytes(art.data)
        for key, art in artefacts.items():
            paths[key] = self.out / art.path
        self.local_path = {art.mount_path: str(self.out / art.path)
                           for art in [*artefacts.values(), *tables]}
        self.artefacts = artefacts
        return paths

    def unit_configs(self, model_paths: dict[tuple[str, Part, int], Path]) -> dict[str, Path]:
        rendering = Rendering(self.bundle, self.artefacts, adapt=self.adapt_files)
        out: dict[str, Path] = {}
        for c in self.bundle.units():
            spec = unit_spec(rendering, c, "127.0.0.1")
            unit = self.bundle.placed(c)
            tls = self.tls_of(c)
            update: dict[str, Any] = {
                "metrics_port": free_port(),
                "emulate_compute_s": emulated_seconds(self.program, self.plan, c),
                "broker": spec.broker.model_copy(update={
                    "port": self.ports[c.device], "tls": spec.broker.tls.model_copy(update=tls)}),
            }
            if spec.model is not None:
                path = model_paths[(unit.step, unit.part, unit.replica)]
                update["model"] = spec.model.model_copy(update={"file": str(path)})
            if spec.adapt is not None:
                update["adapt"] = spec.adapt.model_copy(update={"cuts": [
                    cut.model_copy(update={"file": self.local_path[cut.file]})
                    for cut in spec.adapt.cuts]})
            path = self.out / "config" / f"{c.name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(spec.model_copy(update=update).to_json())
            out[c.name] = path
        return out

    def driver_configs(self) -> dict[str, Path]:
        """Each sensor's and sink's config as the bundle deploys it (`units.driver_spec`), with
        this machine's ports and paths, the replay folders and the sensors' exit counts."""
        out: dict[str, Path] = {}
        for c in self.bundle.clients:
            if c.is_unit:
                continue
            spec = driver_spec(self.bundle, c, "127.0.0.1")
            update: dict[str, Any] = {
                "metrics_port": free_port(),
                "broker": spec.broker.model_copy(update={
                    "port": self.ports[c.device],
                    "tls": spec.broker.tls.model_copy(update=self.tls_of(c))}),
            }
            if c.kind == "sensor":
                update["stats"] = str(self.out / "logs" / f"{c.name}.sent.json")
                if c.step in self.replay:
                    update["replay"] = str(self.replay[c.step])
            else:
                update["database"] = str(self.out / "sinks" / f"{c.name}.sqlite")
            path = self.out / "config" / f"{c.name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(spec.model_copy(update=update).to_json())
            out[c.name] = path
        (self.out / "sinks").mkdir(exist_ok=True)
        return out

    def broker_procs(self) -> list[Proc]:
        folder = self.out / "brokers"
        folder.mkdir(parents=True, exist_ok=True)
        logs = self.out / "logs"
        if self.engine == "embedded":
            specs = []
            for b in self.bundle.brokers.values():
                tls = self.secret_dir(broker_secret(b.name))
                acl = {user: {k: list(v) for k, v in rules.items()}
                       for user, rules in b.acl.items()}
                for bridge in b.bridges:  # the relay plays the bridge's local end
                    rules = acl.setdefault(bridge.identity, {"read": [], "write": []})
                    rules["read"] += bridge.out_topics
                    rules["write"] += bridge.in_topics
                specs.append({"name": b.name, "host": "127.0.0.1", "port": self.ports[b.device],
                              "ca": str(tls / "ca.crt"), "cert": str(tls / "tls.crt"),
                              "key": str(tls / "tls.key"), "acl": acl})
            config = folder / "embedded.json"
            config.write_text(json.dumps(specs, indent=2, sort_keys=True) + "\n")
            return [Proc("embedded broker", [sys.executable, "-m", "edgeflow.runtime.embedded",
                                             "--config", str(config)],
                         logs / "brokers.log", "broker")]
        self.proxy_ports = {(b.device, bridge.peer): free_port()
                            for b in self.bundle.brokers.values() for bridge in b.bridges}
        procs = []
        # the peers a bridge dials (the higher tier) run before the brokers that dial them
        for b in sorted(self.bundle.brokers.values(), key=lambda b: -TIER_ORDER[b.tier]):
            conf, acl_file, data = (folder / b.name / "mosquitto.conf",
                                    folder / b.name / "edgeflow.acl", folder / b.name / "data")
            data.mkdir(parents=True, exist_ok=True)
            conf.write_text(self.mosquitto_conf(b))
            acl_file.write_text(render_acl(b))
            for path in (folder, folder / b.name, data):
                path.chmod(0o755)
            if self.mosquitto_user is not None:
                os.chown(data, *self.mosquitto_user)
            procs.append(Proc(b.name, ["mosquitto", "-c", str(conf)], logs / f"{b.name}.log",
                              "broker"))
        return procs

    def mosquitto_conf(self, b: Broker) -> str:
        """The bundle's template with only ports, bind address, file paths and addresses
        substituted (tests/test_runtime.py diffs the two)."""
        folder = self.out / "brokers" / b.name
        return render_conf(self.bundle, b, tls_dir=str(self.secret_dir(broker_secret(b.name))),
                           bridge_tls_dir=str(self.secret_dir(bridge_secret(b.name))),
                           port=self.ports[b.device], acl_path=str(folder / "edgeflow.acl"),
                           persistence_dir=str(folder / "data"), bind="127.0.0.1",
                           addresses={peer: f"127.0.0.1:{port}"  # this broker's own proxies
                                      for (initiator, peer), port in self.proxy_ports.items()
                                      if initiator == b.device})

    def links_config(self) -> dict[str, Any]:
        links: dict[str, dict[str, Any]] = {}

        def hops(a: str, b: str) -> list[list[str]]:
            """The link a bridge crosses: bridges join linked devices (emit/bundle.py)."""
            link_id, direction = _link_id(a, b)
            link = self.execution.network[a][b]["link"]
            links[link_id] = {"id": link_id, "latency_s": link.latency_s,
                              "bandwidth_bps": link.bandwidth_bps}
            for i, sched in enumerate(self.schedules):
                if _joins(sched, a, b):
                    links[link_id]["schedule"] = sched.entries(link.bandwidth_bps,
                                                               link.latency_s)
                    self.scheduled.add(i)
            return [[link_id, direction]]

        proxies, relays = [], []
        self.scheduled: set[int] = set()
        for b in self.bundle.brokers.values():
            for bridge in b.bridges:
                forward, backward = hops(b.device, bridge.peer), hops(bridge.peer, b.device)
                if self.engine == "mosquitto":
                    proxies.append({
                        "listen": ["127.0.0.1", self.proxy_ports[(b.device, bridge.peer)]],
                        "target": ["127.0.0.1", self.ports[bridge.peer]],
                        "forward": forward, "backward": backward})
                    continue
                own = self.secret_dir(bridge_secret(b.name))
                end = {"client_id": bridge.identity, "ca": str(own / "ca.crt"),
                       "cert": str(own / "tls.crt"), "key": str(own / "tls.key"),
                       "host": "127.0.0.1"}
                relays.append({"a": end | {"port": self.ports[b.device]},
                               "b": end | {"port": self.ports[bridge.peer]},
                               "out_topics": bridge.out_topics, "in_topics": bridge.in_topics,
                               "forward": forward, "backward": backward})
        for i, sched in enumerate(self.schedules):
            if i not in self.scheduled:
                raise RunError(f"--link {sched.a}<->{sched.b}: no emulated link joins them",
                               help="the run emulates the links messages cross: " + (", ".join(
                                   sorted(links)) or "none"))
        return {"links": sorted(links.values(), key=lambda x: x["id"]), "proxies": proxies,
                "relays": relays}


# ---- rollouts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutTarget:
    """A `--rollout` checked against the app and its plan, before anything starts."""

    spec: ro.RolloutSpec
    model: ir.Model
    data: bytes                   # the new version's file
    sha256: str
    replicas: tuple[int, ...]     # the model's replicas, in order
    pipelines: tuple[str, ...]    # the pipelines its health is measured on

    @property
    def version(self) -> str:
        return self.sha256[:ro.VERSION_CHARS]


def _onnx_dtype(elem_type: int) -> str:
    import onnx

    try:
        return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name)
    except (KeyError, TypeError, ValueError):
        return f"element type {elem_type}"


def check_version(model: ir.Model, data: bytes, file: Path) -> None:
    """RunError unless `data` is an ONNX model that can stand in for `model`: onnxruntime loads
    it, it takes the model's inputs (the same names and element types, fixed dimensions equal
    to the bound `inputs`) and, run once on zeros of them, gives the model's outputs (the same
    names, element types and shapes)."""
    import onnx
    import onnxruntime as ort

    where = f"--rollout {model.name}={file}"
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as e:  # noqa: BLE001 - protobuf and onnx raise several types
        raise RunError(f"{where}: not an ONNX model ({type(e).__name__}: {e})") from None
    if not proto.graph.node and not proto.graph.output:
        raise RunError(f"{where}: not an ONNX model (no graph)")
    initializers = {i.name for i in proto.graph.initializer}
    inputs = {i.name: i for i in proto.graph.input if i.name not in initializers}
    if set(inputs) != set(model.inputs):
        raise RunError(f"{where}: its inputs are {', '.join(sorted(inputs)) or 'none'}; the "
                       f"model's are {', '.join(sorted(model.inputs))}",
                       help="a new version takes the model's inputs and gives its outputs")
    for name, declared in model.inputs.items():
        tensor = inputs[name].type.tensor_type
        dtype = _onnx_dtype(tensor.elem_type)
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if dtype != declared.dtype or len(dims) != len(declared.shape) or any(
                d is not None and d != want for d, want in zip(dims, declared.shape,
                                                               strict=True)):
            shown = ", ".join("?" if d is None else str(d) for d in dims)
            raise RunError(f"{where}: input `{name}` is {dtype}[{shown}], the model's is "
                           f"{declared}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        results = session.run(names, {n: np.zeros(t.shape, np.dtype(t.dtype))
                                      for n, t in model.inputs.items()})
    except Exception as e:  # noqa: BLE001 - onnxruntime's own exception types
        raise RunError(f"{where}: onnxruntime cannot run it: {e}") from None
    got = {n: f"{np.asarray(a).dtype.name}[{', '.join(map(str, np.shape(a)))}]"
           for n, a in zip(names, results, strict=True)}
    want = {n: str(t) for n, t in model.outputs.items()}
    if got != want:
        show = "; ".join(f"{n}: {t}" for n, t in sorted(got.items()))
        raise RunError(f"{where}: its outputs are {show}; the model's are "
                       + "; ".join(f"{n}: {t}" for n, t in sorted(want.items())),
                       help="a new version takes the model's inputs and gives its outputs")


def measured_pipelines(program: ir.Program, model: str) -> tuple[str, ...]:
    """The pipelines through `model` with no other model after it: the version their sink rows
    carry is this model's (edgeflow/rollout.py)."""
    out = []
    for p in program.pipelines.values():
        if model in p.flow:
            after = p.flow[p.flow.index(model) + 1:]
            if not any(step in program.models for step in after):
                out.append(p.name)
    return tuple(out)


def check_rollouts(program: ir.Program, plan: Plan, specs: tuple[ro.RolloutSpec, ...],
                   duration_s: float) -> list[RolloutTarget]:
    """Each `--rollout` checked before anything starts: a model of the app, once, run whole on
    every replica as the model itself (not a split, not a variant), starting within the run, a
    file that can stand in for the model (`check_version`), and a pipeline to measure its
    health on when it has health rules."""
    targets: list[RolloutTarget] = []
    for spec in specs:
        where = f"--rollout {spec.model}={spec.file}"
        model = program.models.get(spec.model)
        if model is None:
            raise RunError(f"{where}: the app has no model `{spec.model}`",
                           help="its models: " + (", ".join(sorted(program.models)) or "none"))
        if any(t.spec.model == spec.model for t in targets):
            raise RunError(f"{where}: a second --rollout of `{spec.model}`; give one per model")
        if spec.start_s >= duration_s:
            raise RunError(f"{where}: it would start {spec.start_s:g} s after the sensors, but "
                           f"the run lasts {duration_s:g} s",
                           help="a longer --duration, or an earlier @TIME")
        units = sorted((u for u in plan.units if u.step == spec.model), key=lambda u: u.replica)
        if split := next((u for u in units if u.part is not Part.WHOLE), None):
            raise RunError(f"{where}: the plan splits `{spec.model}` (replica {split.replica} "
                           f"runs its {split.part.value} on {split.device}); a rollout switches "
                           "the version of a model run whole",
                           help="`split = none` on the model runs it whole")
        if variant := next((u for u in units if u.variant is not None), None):
            raise RunError(f"{where}: replica {variant.replica} runs the variant "
                           f"`{variant.variant}` the plan chose; a rollout replaces the model "
                           "itself, on replicas that run it",
                           help="a variant is another version already: roll the new version out "
                                "on a plan that runs the model (e.g. without the variant)")
        if not spec.file.is_file():
            raise RunError(f"{where}: no such file")
        try:
            data = spec.file.read_bytes()
        except OSError as e:
            raise RunError(f"{where}: cannot read it: {e.strerror or e}") from None
        check_version(model, data, spec.file)
        pipelines = measured_pipelines(program, spec.model)
        if model.rollout is not None and model.rollout.health and not pipelines:
            raise RunError(f"{where}: every pipeline through `{spec.model}` runs another model "
                           "after it, so no sink sees this model's version and its health "
                           "rules cannot be measured")
        targets.append(RolloutTarget(spec, model, data, hashlib.sha256(data).hexdigest(),
                                     tuple(u.replica for u in units), pipelines))
    return targets


class RolloutRun:
    """One rollout under way: its `ro.Controller`, the workers' control and status files, and
    the sinks its health is measured from."""

    def __init__(self, target: RolloutTarget, dep: Deployment,
                 unit_files: dict[str, Path]) -> None:
        self.target = target
        self.out = dep.out
        self.clients = {r: client_name(target.spec.model, r) for r in target.replicas}
        self.control = {r: dep.out / "config" / f"{c}.control.json"
                        for r, c in self.clients.items()}
        self.originals: dict[int, tuple[str, str]] = {}  # replica -> (file, sha256)
        for r, c in self.clients.items():
            spec = json.loads(unit_files[c].read_text())["model"]
            self.originals[r] = (spec["file"], spec["sha256"])
        olds = {sha for _, sha in self.originals.values()}
        where = f"--rollout {target.spec.model}={target.spec.file}"
        if len(olds) != 1:
            raise RunError(f"{where}: the replicas of `{target.spec.model}` run different files")
        self.old_sha = olds.pop()
        if self.old_sha == target.sha256:
            raise RunError(f"{where}: this is the version the app already runs "
                           f"({target.version})")
        folder = dep.out / "models" / "versions"
        folder.mkdir(parents=True, exist_ok=True)
        self.file = folder / f"{target.spec.model}-{target.version}.onnx"
        self.file.write_bytes(target.data)
        self.pipelines = {p: dep.program.sensors[dep.program.pipelines[p].flow[0]].rate_hz
                          for p in target.pipelines}
        self.flows = {p: dep.program.pipelines[p].flow for p in target.pipelines}
        latency = max((x.latency_s for x in dep.plan.pipelines if x.name in self.pipelines),
                      default=0.0)
        self.grace_s = min(5.0, 0.5 + 2 * latency)
        self.sink_of = {c.name: c.step for c in dep.bundle.clients if not c.is_unit}
        self.controller: ro.Controller | None = None
        self.t0 = 0.0

    @property
    def old(self) -> str:
        return self.old_sha[:ro.VERSION_CHARS]

    def begin(self, t0: float) -> None:
        """The sensors started at `t0`: the rollout is due `start_s` after."""
        model = self.target.model
        self.t0 = t0
        self.controller = ro.Controller(
            model.name, self.old, self.target.version,
            ro.plan_waves(model.rollout, self.target.replicas),
            model.rollout.health if model.rollout else (),
            model.rollout.hold_s if model.rollout else 0.0,
            t0 + self.target.spec.start_s, self.grace_s, gate=model.rollout is not None)

    def statuses(self) -> dict[int, ro.Status]:
        out = {}
        for r, path in self.control.items():
            try:
                data = json.loads(path.with_suffix(".status.json").read_text())
                out[r] = ro.Status(str(data["version"]), data.get("request"),
                                   data.get("swapped_at"), data.get("error"))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not written yet, or a worker restarting
        return out

    def ask(self, replica: int) -> None:
        """Tell the replica's worker the version it should run: replace its control file."""
        assert self.controller is not None
        version, request = self.controller.desired[replica]
        file, sha = (str(self.file), self.target.sha256) if version == self.target.version \
            else self.originals[replica]
        path = self.control[replica]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"request": request, "version": version, "file": file,
                                   "sha256": sha}, sort_keys=True) + "\n")
        os.replace(tmp, path)

    def measure(self, wave: ro.Wave, start: float, end: float) -> ro.Figures:
        arrivals = _arrivals(self.out, self.sink_of, self.flows, start - 2.0)
        return ro.measure(arrivals, self.pipelines, wave.replicas, self.target.version, start,
                          end, self.t0)

    def tick(self, now: float, ending: bool = False) -> str:
        """Advance the rollout (once the sensors stopped, `ending`, only a rollback in hand);
        a few words for the progress line."""
        ctl = self.controller
        assert ctl is not None
        if ctl.phase != "done" and (not ending or ctl.phase == "rolling_back"):
            needs = ctl.phase in ("switching", "rolling_back")
            for replica in ctl.step(now, self.statuses() if needs else {}, self.measure):
                self.ask(replica)
        if ctl.phase == "waiting":
            return ""
        if ctl.phase == "done":
            return f"{ctl.model} {(ctl.outcome or '').replace('_', ' ')}"
        if ctl.phase == "rolling_back":
            return f"{ctl.model} rolling back"
        return f"{ctl.model} wave {len(ctl.records)}/{len(ctl.waves)}"

    def report(self) -> dict[str, Any]:
        assert self.controller is not None
        return {**self.controller.report(self.t0), "source": str(self.target.spec.file),
                "file": str(self.file.relative_to(self.out)),
                "measured_on": list(self.target.pipelines)}


class RolloutDriver:
    """Advances every rollout every `TICK_S` on a thread of its own, so that scraping many
    workers on a busy machine never delays a wave's switch, judgement or rollback."""

    TICK_S = 0.1

    def __init__(self, rollouts: list[RolloutRun]) -> None:
        self.rollouts = rollouts
        self.note = ""
        self.error: BaseException | None = None
        self.ending = threading.Event()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="rollouts", daemon=True)

    def start(self) -> None:
        if self.rollouts:
            self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stopped.is_set():
                ending = self.ending.is_set()
                self.note = ", ".join(filter(None, (r.tick(time.time(), ending)
                                                    for r in self.rollouts)))
                self.stopped.wait(self.TICK_S)
        except Exception as e:  # noqa: BLE001 - reported by `stop`, in the caller's thread
            self.error = e

    def end(self) -> None:
        """The sensors stop: a rollout under way stays where it is, a rollback goes on."""
        self.ending.set()

    def stop(self) -> None:
        """Stop ticking; what is not done is unfinished. Raises what a tick raised."""
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join()
        for r in self.rollouts:
            if r.controller is not None:
                r.controller.finish()
        if self.error is not None:
            raise self.error

    def stop_quietly(self) -> None:
        """On the way out of a failed run: stop ticking, nothing more."""
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join()


def _arrivals(out: Path, sink_of: dict[str, str], flows: dict[str, tuple[str, ...]],
              since: float) -> list[ro.Arrival]:
    """The frames captured since `since` at the sinks of the pipelines `flows`, read while the
    sinks write (SQLite in WAL mode: a reader never blocks them)."""
    out_rows: list[ro.Arrival] = []
    for db_path in sorted((out / "sinks").glob("*.sqlite")):
        mine = [(p, flow) for p, flow in flows.items()
                if sink_of.get(db_path.stem) == flow[-1]]
        if not mine:
            continue
        try:
            db = sqlite3.connect(db_path, timeout=1.0)
            try:
                rows = db.execute("SELECT unit, replica, frame, captured, received, header "
                                  "FROM messages WHERE captured >= ?", (since,)).fetchall()
            finally:
                db.close()
        except sqlite3.Error:
            continue
        for unit, replica, frame, captured, received, header in rows:
            for p, flow in mine:
                if unit.split(".")[0] == flow[-2]:
                    try:
                        version = json.loads(header).get("version")
                    except ValueError:
                        version = None
                    out_rows.append(ro.Arrival(p, replica, frame, captured, received, version))
    return out_rows


# ---- measuring ---------------------------------------------------------------------------------


def scrape(port: int) -> dict[str, float]:
    """Counters and histogram sums/counts of a process's /metrics, by sample name (+ reason)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_bucket") or s.name.endswith("_created"):
                continue
            label = s.labels.get("reason") or s.labels.get("cut") or s.labels.get("version")
            key = s.name + (f"{{{label}}}" if label else "")
            out[key] = s.value
    return out


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    a = np.asarray(values) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 3),
            "p95_ms": round(float(np.percentile(a, 95)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3), "max_ms": round(float(a.max()), 3)}


def sink_rows(out: Path) -> list[dict[str, Any]]:
    rows = []
    for db_path in sorted((out / "sinks").glob("*.sqlite")):
        db = sqlite3.connect(db_path)
        try:
            for topic, unit, replica, frame, captured, received, nbytes, header, checksum in \
                    db.execute("SELECT topic, unit, replica, frame, captured, received, bytes, "
                               "header, checksum FROM messages ORDER BY rowid"):
                fields = json.loads(header)
                rows.append({"sink": db_path.stem, "topic": topic, "unit": unit,
                             "replica": replica, "frame": frame, "captured": captured,
                             "received": received, "bytes": nbytes,
                             "trace": fields["trace"], "cut": fields.get("cut"),
                             "version": fields.get("version"), "checksum": checksum})
        finally:
            db.close()
    return rows


def pipeline_report(program: ir.Program, plan: Plan, rows: list[dict[str, Any]],
                    sink_of: dict[str, str], sent: dict[str, float]) -> list[dict[str, Any]]:
    """Per pipeline: what arrived against what its sensor sent, end-to-end latency percentiles
    beside the plan's prediction, throughput, the per-hop breakdown (compute, queue, transfer)
    and whether each SLO held."""
    out = []
    for p in program.pipelines.values():
        sink, last = p.flow[-1], p.flow[-2]
        mine = [r for r in rows if sink_of[r["sink"]] == sink and r["unit"].split(".")[0] == last]
        latencies = [r["received"] - r["captured"] for r in mine]
        hops: dict[str, dict[str, list[float]]] = {}
        for r in mine:
            previous = None
            for unit, received, started, published in r["trace"]:
                h = hops.setdefault(unit, {"transfer": [], "queue": [], "compute": []})
                if previous is not None:
                    h["transfer"].append(received - previous)
                h["queue"].append(started - received)
                h["compute"].append(published - started)
                previous = published
            h = hops.setdefault(sink, {"transfer": [], "queue": [], "compute": []})
            if previous is not None:
                h["transfer"].append(r["received"] - previous)
        predicted = {x.replica: x.latency_s for x in plan.pipelines if x.name == p.name}
        replicas = []
        for replica in sorted(predicted):
            lat = [r["received"] - r["captured"] for r in mine if r["replica"] == replica]
            replicas.append({"replica": replica, "frames": len(lat), **percentiles(lat),
                             "predicted_ms": round(predicted[replica] * 1000, 3)})
        # the sensor sends at its rate (on a fixed schedule): what arrives of it is the fraction
        # of its frames that arrive; frames still queued when the run ends count as not arrived
        sent_frames = int(sent.get(p.flow[0], 0))
        arrived = min(1.0, len(mine) / sent_frames) if sent_frames else 0.0
        throughput = program.sensors[p.flow[0]].rate_hz * arrived
        stats = percentiles(latencies)
        slo: dict[str, Any] = {}
        if p.slo.latency_s is not None:
            slo["latency_ms"] = {"limit": p.slo.latency_s * 1000, "p95_ms": stats["p95_ms"],
                                 "held": stats["p95_ms"] is not None and
                                 stats["p95_ms"] <= p.slo.latency_s * 1000}
        if p.slo.throughput_hz is not None:
            slo["throughput_hz"] = {"limit": p.slo.throughput_hz,
                                    "measured": round(throughput, 3),
                                    "held": throughput >= 0.97 * p.slo.throughput_hz}
        by_version: dict[str, int] = {}
        for r in mine:
            if r["version"] is not None:
                by_version[r["version"]] = by_version.get(r["version"], 0) + 1
        out.append({
            "name": p.name, "flow": list(p.flow), "frames": len(mine), "sent_frames": sent_frames,
            "frames_by_version": dict(sorted(by_version.items())),
            "lost_frames": max(0, sent_frames - len(mine)),
            "throughput_hz_per_replica": round(throughput, 3), **stats,
            "predicted_ms": round(max(predicted.values()) * 1000, 3) if predicted else None,
            "replicas": replicas,
            "hops": [{"step": unit, **{f"{k}_ms": (round(float(np.median(v)) * 1000, 3)
                                                   if v else None) for k, v in h.items()}}
                     for unit, h in hops.items()],
            "slo": slo,
        })
    return out


def _counters(p: Proc) -> dict[str, float]:
    total = dict(p.carried)
    for k, v in p.last.items():
        total[k] = total.get(k, 0.0) + v
    return total


def unit_report(p: Proc) -> dict[str, Any]:
    c = _counters(p)

    def mean_ms(name: str) -> float | None:
        n = c.get(f"{name}_count", 0.0)
        return round(c.get(f"{name}_sum", 0.0) / n * 1000, 3) if n else None

    return {
        "frames_in": int(c.get("edgeflow_frames_in_total", 0)),
        "frames_out": int(c.get("edgeflow_frames_out_total", 0)),
        "drops": {k.split("{")[1].rstrip("}"): int(v) for k, v in sorted(c.items())
                  if k.startswith("edgeflow_drops_total{") and v},
        "inference_mean_ms": mean_ms("edgeflow_inference_seconds"),
        "queue_wait_mean_ms": mean_ms("edgeflow_queue_wait_seconds"),
        "end_to_end_mean_ms": mean_ms("edgeflow_end_to_end_seconds"),
        "emulation_overruns": int(c.get("edgeflow_emulation_overruns_total", 0)),
        "restarts": p.restarts,
        **({"adaptation": {
            "cut_switches": int(c.get("edgeflow_cut_switches_total", 0)),
            "outages": int(c.get("edgeflow_outages_total", 0)),
            "frames_by_cut": {k.split("{")[1].rstrip("}"): int(v) for k, v in sorted(c.items())
                              if k.startswith("edgeflow_frames_by_cut_total{")},
            "bandwidth_estimate_bps": p.last.get("edgeflow_bandwidth_estimate_bps")}}
           if any(k.startswith("edgeflow_frames_by_cut_total{") for k in c) else {}),
        **({"versions": {
            "frames_by_version": {k.split("{")[1].rstrip("}"): int(v)
                                  for k, v in sorted(c.items())
                                  if k.startswith("edgeflow_frames_by_version_total{")},
            "running": next((k.split("{")[1].rstrip("}") for k, v in p.last.items()
                             if k.startswith("edgeflow_model_version{") and v == 1), None),
            "switches": int(c.get("edgeflow_version_switches_total", 0)),
            "load_failures": int(c.get("edgeflow_version_load_failures_total", 0))}}
           if any(k.startswith("edgeflow_model_version{") for k in c) else {}),
    }


# ---- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    duration_s: float = 10.0
    engine: str = "embedded"
    replay: dict[str, Path] = field(default_factory=dict)
    out: Path = Path("run")
    links: tuple[LinkSchedule, ...] = ()   # `--link`: how links change during the run
    rollouts: tuple[ro.RolloutSpec, ...] = ()  # `--rollout`: new model versions handed over


def _alive(p: Proc) -> bool:
    return p.popen is not None and p.popen.poll() is None


def _scrape_into(p: Proc) -> bool:
    if p.metrics_port is None or not _alive(p):
        return False
    try:
        p.last = scrape(p.metrics_port)
    except OSError:
        return False
    return True


def execute(execution: ExecutionGraph, plan: Plan, app_file: Path, options: Options,
            status: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Run the planned app for `options.duration_s` seconds and return run.json's content
    (also written to the output folder). Every process started is stopped before it returns."""
    if options.engine == "mosquitto" and shutil.which("mosquitto") is None:
        raise RunError("--broker mosquitto needs the mosquitto command (Debian: "
                       "`apt-get install mosquitto`); the default embedded broker needs nothing")
    targets = check_rollouts(execution.program, plan, options.rollouts, options.duration_s)
    out = options.out.resolve()
    prepare_output(out)
    dep = Deployment(execution, plan, out, options.engine, options.replay,
                     app_file.resolve().parent, options.links)
    status("making certificates and configurations")
    dep.write_pki()
    unit_files = dep.unit_configs(dep.write_models())
    driver_files = dep.driver_configs()
    rollouts = [RolloutRun(t, dep, unit_files) for t in targets]
    control = {name: str(path) for r in rollouts for name, path in
               ((r.clients[i], r.control[i]) for i in r.clients)}
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
        [str(dep.app_dir), *filter(None, [os.environ.get("PYTHONPATH")])]))
    procs = Processes(env)
    driver = RolloutDriver(rollouts)
    logs = out / "logs"
    python = sys.executable
    clients = {c.name: c for c in dep.bundle.clients}
    try:
        brokers = dep.broker_procs()
        links = dep.links_config()

        def start_links() -> None:
            if not (links["proxies"] or links["relays"]):
                return
            (out / "brokers" / "links.json").write_text(json.dumps(links, indent=2) + "\n")
            p = procs.start(Proc("link emulation", [
                python, "-m", "edgeflow.runtime.links", "--config",
                str(out / "brokers" / "links.json"), "--stats", str(out / "logs" / "links.json")],
                logs / "links.log", "links"))
            procs.wait_ready(p, printed_ready(p.log))
            ports = [proxy["listen"][1] for proxy in links["proxies"]]
            p.ready = lambda: all(listening(port)() for port in ports)
            infrastructure.append(p)

        infrastructure: list[Proc] = []
        if options.engine == "mosquitto":  # the proxies listen before any bridge dials them
            start_links()
        status("starting brokers")
        for p in brokers:
            procs.start(p)
            ports = list(dep.ports.values()) if options.engine == "embedded" else \
                [dep.ports[next(b.device for b in dep.bundle.brokers.values()
                                if b.name == p.name)]]
            p.ready = lambda ports=ports: all(
                listening(port)() for port in ports)
            procs.wait_ready(p, p.ready)
            infrastructure.append(p)
        if options.engine == "embedded":  # the relays connect to running brokers
            start_links()
        status("starting sinks and units")
        started: list[Proc] = []
        for name, path in driver_files.items():
            c = clients[name]
            if c.kind != "sensor":
                started.append(procs.start(Proc(
                    name, [python, "-m", "edgeflow.runtime.drivers", "--config", str(path)],
                    logs / f"{name}.log", "sink", _port(path))))
        for name, path in unit_files.items():
            started.append(procs.start(Proc(
                name, [python, "-m", "edgeflow.runtime", "--config", str(path),
                       "--metrics-host", "127.0.0.1",
                       *(["--control", control[name]] if name in control else [])],
                logs / f"{name}.log", "unit", _port(path))))
        for p in started:
            procs.wait_ready(p, lambda p=p: _scrape_into(p) and  # type: ignore[misc]
                             p.last.get("edgeflow_connected", 0) == 1, timeout_s=60)
        status("running")
        for name, path in driver_files.items():
            if clients[name].kind == "sensor":
                started.append(procs.start(Proc(
                    name, [python, "-m", "edgeflow.runtime.drivers", "--config", str(path)],
                    logs / f"{name}.log", "sensor", _port(path))))
        t0 = time.time()
        for p in infrastructure:  # the links' schedules count from now
            if p.role == "links" and p.popen is not None and options.links:
                p.popen.send_signal(signal.SIGUSR1)
        for r in rollouts:
            r.begin(t0)
        driver.start()
        cpu = _supervise(procs, started + infrastructure, t0, options, status,
                         (lambda: driver.note) if rollouts else None)
        t1 = time.time()
        driver.end()
        for p in started:
            if p.role == "sensor":
                _scrape_into(p)
        procs.stop([p for p in started if p.role == "sensor"])
        drain = min(5.0, 0.5 + 2 * max((x.latency_s for x in plan.pipelines), default=0.0))
        status(f"letting the last frames arrive ({drain:.1f} s)")
        time.sleep(drain)
        driver.stop()
        for p in started:
            _scrape_into(p)
    finally:
        driver.stop_quietly()
        procs.stop_all()
    sent: dict[str, float] = {}
    for p in started:
        if p.role == "sensor":
            step = clients[p.name].step
            try:  # its own count at exit: exact, where a scrape can miss the last frames
                final = float(json.loads((logs / f"{p.name}.sent.json").read_text())
                              ["frames_out"])
                count = p.carried.get("edgeflow_frames_out_total", 0.0) + final
            except (OSError, ValueError, KeyError):
                count = _counters(p).get("edgeflow_frames_out_total", 0.0)
            sent[step] = sent.get(step, 0) + count
    sink_of = {c.name: c.step for c in dep.bundle.clients if not c.is_unit}
    link_stats: dict[str, Any] = {}
    if options.links:
        try:
            link_stats = json.loads((logs / "links.json").read_text())["links"]
        except (OSError, ValueError, KeyError):
            link_stats = {}
    report: dict[str, Any] = {
        "app": dep.bundle.app, "broker": options.engine, "duration_s": round(t1 - t0, 3),
        "plan_status": plan.status.value,
        "pipelines": pipeline_report(dep.program, plan, sink_rows(out), sink_of, sent),
        "units": {p.name: {"unit": clients[p.name].step, "replica": clients[p.name].replica,
                           "device": clients[p.name].device, **unit_report(p)}
                  for p in started if p.role == "unit"},
        "drivers": {p.name: {"kind": clients[p.name].kind, **unit_report(p)}
                    for p in started if p.role != "unit"},
        "brokers_and_links": {p.name: {"restarts": p.restarts} for p in infrastructure},
        "machine": {"cpus": psutil.cpu_count(), "processes": len(procs.procs),
                    "cpu_percent_mean": round(float(np.mean(cpu)), 1) if cpu else None,
                    "cpu_percent_max": round(max(cpu), 1) if cpu else None},
    }
    if rollouts:
        report["rollouts"] = [r.report() for r in rollouts]
    if options.links:
        report["link_schedules"] = [
            {"link": link["id"], "schedule": link["schedule"],
             "down_s": round(float(link_stats.get(link["id"], {}).get("down_s", 0.0)), 3),
             "changes": int(link_stats.get(link["id"], {}).get("changes", 0))}
            for link in links["links"] if "schedule" in link]
    slower = sorted(n for n, u in report["units"].items() if u["emulation_overruns"])
    report["emulation"] = {
        "compute": "each unit's run is padded to its compute time on its declared device",
        "links": "latency and bandwidth of every link on a bridge's route (docs/runtime.md)",
        "slower_than_declared_device": slower,
    }
    (out / "run.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report


def _port(config: Path) -> int:
    return int(json.loads(config.read_text())["metrics_port"])


def _supervise(procs: Processes, watched: list[Proc], t0: float, options: Options,
               status: Callable[[str], None],
               note: Callable[[], str] | None = None) -> list[float]:
    """Until the duration is over: restart what dies (and record the gap), scrape metrics,
    show progress (with the rollouts' `note`). Returns this machine's CPU use (percent of all
    cores) once a second."""
    down: dict[str, float] = {}
    next_scrape = 0.0
    cpu: list[float] = []
    psutil.cpu_percent(None)
    while (now := time.time()) - t0 < options.duration_s:
        for p in watched:
            assert p.popen is not None
            code = p.popen.poll()
            if code is not None:
                if now - p.started < 2.0 and code == 2:
                    raise RunError(f"{p.name} cannot start: {last_line(p.log)}")
                for k, v in p.last.items():  # counters of the life that ended (labelled too)
                    if k.split("{")[0].endswith(("_total", "_sum", "_count")):
                        p.carried[k] = p.carried.get(k, 0.0) + v
                p.last = {}
                p.restarts.append({"at_s": round(now - t0, 3), "exit_status": code})
                down[p.name] = now
                procs.start(p)
        if now >= next_scrape:
            for p in watched:
                back = p.ready() if p.ready is not None else \
                    _scrape_into(p) and p.last.get("edgeflow_connected", 1) == 1
                if back and p.name in down:
                    p.restarts[-1]["downtime_s"] = round(time.time() - down.pop(p.name), 3)
            delivered = sum(int(_counters(p).get("edgeflow_frames_in_total", 0))
                            for p in watched if p.role == "sink")
            drops = sum(int(v) for p in watched for k, v in _counters(p).items()
                        if k.startswith("edgeflow_drops_total"))
            restarts = sum(len(p.restarts) for p in watched)
            if next_scrape:
                cpu.append(psutil.cpu_percent(None))
            status(f"running {now - t0:4.1f}/{options.duration_s:g} s · {delivered} messages at "
                   f"sinks · {drops} dropped · {restarts} restarts · CPU "
                   f"{cpu[-1] if cpu else 0:.0f} %"
                   + (f" · rollout {text}" if note is not None and (text := note()) else ""))
            next_scrape = now + 1.0
        time.sleep(0.1)
    return cpu


def render(report: dict[str, Any]) -> str:
    """The run's summary for a terminal: per pipeline, measured beside predicted."""
    lines = [(f"app {report['app']}: ran {report['duration_s']:g} s on the {report['broker']} "
             "broker (links and device speeds emulated)"), ""]
    head = f"  {'pipeline':<16} {'frames':>7} {'lost':>5} {'p50 ms':>9} {'p95 ms':>9} " \
           f"{'p99 ms':>9} {'predicted':>10}  SLO"
    lines.append(head)
    for p in report["pipelines"]:
        slo = ", ".join(f"{k.split('_')[0]} {'held' if v['held'] else 'MISSED'}"
                        for k, v in p["slo"].items()) or "-"

        def ms(x: float | None) -> str:
            return "-" if x is None else f"{x:.2f}"
        lines.append(f"  {p['name']:<16} {p['frames']:>7} {p['lost_frames']:>5} "
                     f"{ms(p['p50_ms']):>9} {ms(p['p95_ms']):>9} {ms(p['p99_ms']):>9} "
                     f"{ms(p['predicted_ms']):>10}  {slo}")
    drops = {k: v for u in report["units"].values() for k, v in u["drops"].items()}
    restarts = [(n, r) for group in ("units", "drivers", "brokers_and_links")
                for n, u in report[group].items() for r in u["restarts"]]
    lines.append("")
    lines.append("  drops: " + (", ".join(f"{k} {v}" for k, v in sorted(drops.items()))
                                or "none"))
    for name, r in restarts:
        lines.append(f"  restarted {name} at {r['at_s']} s (exit {r['exit_status']}, down "
                     f"{r.get('downtime_s', '?')} s)")
    for name, u in sorted(report["units"].items()):
        if (a := u.get("adaptation")) and u["unit"].endswith(".head"):
            lines.append(f"  {name}: {a['cut_switches']} cut switch(es), {a['outages']} "
                         "outage(s), frames by cut: " + ", ".join(
                             f"{k} {v}" for k, v in a["frames_by_cut"].items()))
    lines += render_rollouts(report)
    for sched in report.get("link_schedules", []):
        lines.append(f"  link {sched['link']}: {sched['changes']} change(s) applied, down "
                     f"{sched['down_s']:g} s")
    machine = report["machine"]
    if (machine["cpu_percent_mean"] or 0) >= BUSY_PERCENT:
        lines.append(f"  this machine was busy (CPU {machine['cpu_percent_mean']:g} % of "
                     f"{machine['cpus']} cores on average, {machine['processes']} processes): "
                     "latencies include waiting for it")
    if slower := report["emulation"]["slower_than_declared_device"]:
        lines.append("  this machine is slower than the declared device for: "
                     + ", ".join(slower) + " (their measured latency is not the device's)")
    return "\n".join(lines) + "\n"


def render_rollouts(report: dict[str, Any]) -> list[str]:
    """The summary's lines on each rollout: its outcome, each wave, frames per version."""
    lines = []
    for r in report.get("rollouts", []):
        head = f"  rollout {r['model']} {r['old_version']} -> {r['new_version']}: "
        waves = r["waves"]
        if r["outcome"] == "completed":
            took = r["completed_s"] - r["start_s"]
            lines.append(head + f"completed {took:.1f} s after it began ({len(waves)} wave"
                         f"{'s' if len(waves) != 1 else ''}"
                         + ("" if r["gated"] else ", no health gate: every replica at once")
                         + ")")
        elif r["outcome"] == "rolled_back":
            failed = next((w for w in waves if w["passed"] is False), None)
            why = "" if failed is None else failed["failure"] or ", ".join(
                f"{x['rule']} measured {'-' if x['measured'] is None else x['measured']}"
                + ("" if x["rule"].startswith("drops") or x["measured"] is None else " ms")
                for x in failed["rules"] if not x["held"])
            back = f"every replica back on {r['old_version']} at {r['rolled_back_s']:g} s" \
                if r["rolled_back_s"] is not None else "the rollback was not confirmed " \
                "before the run ended"
            lines.append(head + f"rolled back in wave {failed['wave'] if failed else '?'} "
                         f"({why}); {back}")
        else:
            where = f"in wave {len(waves)} of {r['wave_count']}" if waves else \
                "before it began"
            lines.append(head + f"unfinished: the run ended {where} (a longer --duration "
                         "lets it finish)")
        for w in waves:
            def ms(x: float | None) -> str:
                return "-" if x is None else f"{x:.1f} ms"
            verdict = {True: "passed", False: "FAILED", None: "not judged"}[w["passed"]]
            lines.append(f"    wave {w['wave']} ({w['share']:.0%}, replicas "
                         f"{','.join(map(str, w['replicas']))}): {w['new_version_frames'] or 0} "
                         f"frames, p95 {ms(w['latency_p95_ms'])}, drops "
                         f"{'-' if w['drops'] is None else format(w['drops'], '.3f')}: {verdict}")
        for p in report["pipelines"]:
            if p["name"] in r["measured_on"]:
                lines.append(f"    {p['name']} frames by version: " + ", ".join(
                    f"{v} {n}" for v, n in p["frames_by_version"].items()))
    return lines
