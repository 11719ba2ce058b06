"""`edgeflow run`: a compiled app executed on this machine, every device's broker and every unit on
127.0.0.1, with the plan's links and device speeds emulated so the measured latency can stand
beside the predicted one (docs/runtime.md).

The output folder holds everything the run made and nothing else is touched: `models/` (the
bundle's model files), `tls/` (a throw-away CA and every identity's certificate, keys 0600),
`brokers/`, `config/` (unit.json and driver configs), `sinks/` (one SQLite database per sink),
`logs/` (each process's output) and `run.json`.
"""

from __future__ import annotations

import ctypes
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
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from edgeflow import ir, pki
from edgeflow.cost import compute_s, model_cost
from edgeflow.emit.artefacts import adapt_artefacts, build_artefacts, read_models
from edgeflow.emit.bundle import TIER_ORDER, Broker, Bundle, Client, build_bundle
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
            label = s.labels.get("reason") or s.labels.get("cut")
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
                             "checksum": checksum})
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
        out.append({
            "name": p.name, "flow": list(p.flow), "frames": len(mine), "sent_frames": sent_frames,
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
    }


# ---- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    duration_s: float = 10.0
    engine: str = "embedded"
    replay: dict[str, Path] = field(default_factory=dict)
    out: Path = Path("run")
    links: tuple[LinkSchedule, ...] = ()   # `--link`: how links change during the run


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
    out = options.out.resolve()
    prepare_output(out)
    dep = Deployment(execution, plan, out, options.engine, options.replay,
                     app_file.resolve().parent, options.links)
    status("making certificates and configurations")
    dep.write_pki()
    unit_files = dep.unit_configs(dep.write_models())
    driver_files = dep.driver_configs()
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
        [str(dep.app_dir), *filter(None, [os.environ.get("PYTHONPATH")])]))
    procs = Processes(env)
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
                       "--metrics-host", "127.0.0.1"], logs / f"{name}.log", "unit",
                _port(path))))
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
        cpu = _supervise(procs, started + infrastructure, t0, options, status)
        t1 = time.time()
        for p in started:
            if p.role == "sensor":
                _scrape_into(p)
        procs.stop([p for p in started if p.role == "sensor"])
        drain = min(5.0, 0.5 + 2 * max((x.latency_s for x in plan.pipelines), default=0.0))
        status(f"letting the last frames arrive ({drain:.1f} s)")
        time.sleep(drain)
        for p in started:
            _scrape_into(p)
    finally:
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
               status: Callable[[str], None]) -> list[float]:
    """Until the duration is over: restart what dies (and record the gap), scrape metrics,
    show progress. Returns this machine's CPU use (percent of all cores) once a second."""
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
                for k, v in p.last.items():  # counters of the life that ended
                    if k.endswith(("_total", "_sum", "_count")):
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
                   f"{cpu[-1] if cpu else 0:.0f} %")
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
