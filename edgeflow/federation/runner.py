"""`run_federation`: the Flower processes of a FederationSpec on 127.0.0.1, watched until the
ServerApp reports its last round, then stopped.

What it starts, and the flags (flwr 1.42):

- a throw-away CA and, per SuperLink, a server certificate for 127.0.0.1 (`edgeflow.pki`); per
  SuperNode an EC P-384 key pair (OpenSSH format, as Flower reads them);
- per aggregator instance (every site's, then the top one), `flower-superlink --ssl-certfile
  --ssl-keyfile --ssl-ca-certfile --enable-supernode-auth --disable-runtime-dependency-installation
  --isolation subprocess --database DB --host 127.0.0.1 --port P` (one HTTPS port for the Fleet,
  Control and ServerAppIo APIs), ready when its Control API answers;
- every SuperNode's public key registered on its own SuperLink only (the Control API's
  RegisterNode, what `flwr supernode register` sends);
- per client, `flower-supernode --root-certificates CA --superlink 127.0.0.1:RELAY
  --auth-supernode-private-key KEY --node-config instance=I --isolation subprocess --host
  127.0.0.1 --port P`, reaching its site's SuperLink through a counting relay; with a top
  aggregator, per site one more, `--node-config site=K`, relayed to the top SuperLink;
- once every SuperNode is online, the run (the Control API's StartRun, what `flwr run` sends)
  with the run config `spec=work_dir/federation/spec.json` on the top SuperLink (the site's when
  there is one site).

Every process gets FLWR_TELEMETRY_ENABLED=0, FLWR_DISABLE_UPDATE_CHECK=1 and its own FLWR_HOME
under work_dir/federation/flwr-home/, and logs to work_dir/federation/logs/.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import edgeflow
from edgeflow import pki
from edgeflow.federation import (
    MEAN_STRATEGIES,
    STRATEGIES,
    FederationError,
    FederationResult,
    FederationSpec,
    RoundResult,
    control,
    relay,
    specfile,
)
from edgeflow.federation import model as mdl
from edgeflow.federation.processes import Processes, traceback_tail, wait_until

SUPERLINK_READY_S = 60.0
STALL_S = 3600.0  # no progress at all for this long: the run is given up


def _validate(spec: FederationSpec) -> None:
    problems: list[str] = []
    if spec.strategy not in STRATEGIES:
        problems.append(f"unknown strategy `{spec.strategy}` (known: {', '.join(STRATEGIES)})")
    if not spec.sites or any(not s.clients for s in spec.sites):
        problems.append("every site needs clients")
    if spec.top is None and len(spec.sites) != 1:
        problems.append(f"{len(spec.sites)} sites but no top aggregator")
    clients = [c for s in spec.sites for c in s.clients]
    if len({c.instance for c in clients}) != len(clients) or \
            len({c.name for c in clients}) != len(clients):
        problems.append("client names and instances must be unique")
    aggregators = [s.aggregator for s in spec.sites] + ([spec.top] if spec.top else [])
    if len(set(aggregators)) != len(aggregators):
        problems.append("aggregator names must be unique")
    if spec.rounds < 1:
        problems.append("rounds must be at least 1")
    smallest = min((len(s.clients) for s in spec.sites), default=0)
    if not 1 <= spec.min_clients <= max(smallest, 1):
        problems.append(f"min_clients {spec.min_clients} must be between 1 and the smallest "
                        f"site's {smallest} clients")
    if spec.dp is not None:
        if spec.dp.clip <= 0 or spec.dp.noise < 0 or not 0 < spec.dp.delta < 1:
            problems.append("differential privacy needs clip > 0, noise >= 0, 0 < delta < 1")
        if spec.strategy not in MEAN_STRATEGIES:
            problems.append(f"differential privacy's noise is calibrated for a mean "
                            f"({' or '.join(MEAN_STRATEGIES)}), not {spec.strategy}")
    for key in ("samples", "trainer"):
        module, _, function = getattr(spec, key).partition(":")
        if not module or not function:
            problems.append(f"`{key}` must be \"module:function\", not {getattr(spec, key)!r}")
    if problems:
        raise FederationError("; ".join(problems))
    try:
        mdl.check_trainable(mdl.load(spec.model), spec.trainable)
    except ValueError as e:
        raise FederationError(f"{spec.model}: {e}") from None


def _notes(spec: FederationSpec) -> list[str]:
    """What runs but does not give what the strategy promises."""
    if spec.strategy == "krum":
        f = int(spec.strategy_params.get("byzantine", 1))
        if spec.min_clients < 2 * f + 3:
            return [(f"note: krum tolerates {f} byzantine client(s) with at least "
                     f"{2 * f + 3} clients sampled per round, not {spec.min_clients}")]
    return []


def _free_port(taken: set[int]) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            taken.add(port)
            return port


def _node_keys(folder: Path, stem: str) -> tuple[Path, Path]:
    """An EC P-384 key pair for a SuperNode, OpenSSH format: (private, public)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / stem, folder / f"{stem}.pub"
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.OpenSSH,
                                  serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH))
    return private, public


_safe = specfile.safe_name


@dataclass
class _SuperLink:
    name: str
    port: int
    cert: Path
    key: Path
    log: Path
    nodes: list[_SuperNode] = dataclasses.field(default_factory=list)


@dataclass
class _SuperNode:
    name: str          # the client instance, or the site aggregator in the top federation
    node_config: str   # instance=I or site=K
    superlink: _SuperLink
    link: str          # the relayed link's name: "client<->aggregator"
    private_key: Path
    public_key: Path
    node_id: int = 0


class _Run:
    """One federation on this machine: its files, processes and relays."""

    def __init__(self, spec: FederationSpec, on_event: Callable[[str], None]) -> None:
        self.spec = spec
        self.on_event = on_event
        self.dir = spec.work_dir / "federation"
        self.logs = self.dir / "logs"
        self.pki = self.dir / "pki"
        self.ca_cert = self.pki / "ca.crt"
        self.taken: set[int] = set()
        bin_dir = Path(sys.executable).parent
        self.bin = bin_dir
        package_root = str(Path(edgeflow.__file__).resolve().parents[1])
        env = dict(os.environ)
        env.update(FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
                   PYTHONUNBUFFERED="1", PATH=os.pathsep.join([str(bin_dir), env.get("PATH", "")]),
                   PYTHONPATH=os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH"))
                                              if p))
        self.processes = Processes(env)
        self.relays = relay.Relays()
        self.superlinks: dict[str, _SuperLink] = {}
        self.supernodes: list[_SuperNode] = []

    # -------------------------------------------------------------- setup

    def plan(self) -> None:
        """The PKI, the ports and every SuperLink and SuperNode, not started yet."""
        spec = self.spec
        ca = pki.new_ca("edgeflow federation CA", days=2)
        pki.write_ca(self.pki, ca)
        for agg in [s.aggregator for s in spec.sites] + ([spec.top] if spec.top else []):
            identity = pki.issue(ca, f"superlink {agg}", dns=["localhost"], ips=["127.0.0.1"],
                                 server=True, client=False, days=2)
            cert, key = pki.write_identity(self.pki, f"superlink-{_safe(agg)}", identity)
            self.superlinks[agg] = _SuperLink(agg, _free_port(self.taken), cert, key,
                                              self.logs / f"superlink-{_safe(agg)}.log")
        for site in spec.sites:
            for c in site.clients:
                self._node(c.name, f"instance={c.instance}", self.superlinks[site.aggregator],
                           f"{c.name}<->{site.aggregator}")
        if spec.top:
            for k, site in enumerate(spec.sites):
                self._node(site.aggregator, f"site={k}", self.superlinks[spec.top],
                           f"{site.aggregator}<->{spec.top}")
        self.on_event(f"PKI: a CA, {len(self.superlinks)} SuperLink certificate(s), "
                      f"{len(self.supernodes)} SuperNode key pairs in {self.pki}")

    def _node(self, name: str, node_config: str, superlink: _SuperLink, link: str) -> None:
        stem = _safe(name) + ("-top" if node_config.startswith("site=") else "")
        private, public = _node_keys(self.pki / "supernodes", stem)
        node = _SuperNode(name, node_config, superlink, link, private, public)
        superlink.nodes.append(node)
        self.supernodes.append(node)

    def write_spec(self) -> Path:
        path = self.dir / "spec.json"
        links = {name: specfile.SuperLinkAddress(f"127.0.0.1:{s.port}", self.ca_cert)
                 for name, s in self.superlinks.items()}
        nodes = {name: {n.node_id: n.name for n in s.nodes}
                 for name, s in self.superlinks.items()}
        specfile.write(path, self.spec, links, nodes)
        app = self.dir / "app"
        app.mkdir(parents=True, exist_ok=True)
        (app / "pyproject.toml").write_text(control.pyproject())
        return path

    def _home(self, stem: str) -> dict[str, str]:
        home = self.dir / "flwr-home" / stem
        home.mkdir(parents=True, exist_ok=True)
        return {"FLWR_HOME": str(home)}

    def _command(self, name: str) -> str:
        path = self.bin / name
        if not path.is_file():
            raise FederationError(f"{name} not found beside {sys.executable}: is flwr installed?")
        return str(path)

    def start_superlinks(self) -> None:
        command = self._command("flower-superlink")
        for s in self.superlinks.values():
            stem = f"superlink-{_safe(s.name)}"
            (self.dir / "db").mkdir(parents=True, exist_ok=True)
            self.processes.start(f"the SuperLink of {s.name}", [
                command, "--ssl-certfile", str(s.cert), "--ssl-keyfile", str(s.key),
                "--ssl-ca-certfile", str(self.ca_cert), "--enable-supernode-auth",
                "--disable-runtime-dependency-installation", "--isolation", "subprocess",
                "--database", str(self.dir / "db" / f"{_safe(s.name)}.db"),
                "--host", "127.0.0.1", "--port", str(s.port)], s.log, env=self._home(stem),
                cwd=self.dir)
        for s in self.superlinks.values():
            def ready(s: _SuperLink = s) -> bool:
                with socket.create_connection(("127.0.0.1", s.port), timeout=1):
                    pass
                c = control.client(f"127.0.0.1:{s.port}", self.ca_cert)
                try:
                    control.online_nodes(c)
                finally:
                    c.close()
                return True

            wait_until(f"the SuperLink of {s.name} did not answer on 127.0.0.1:{s.port}",
                       ready, SUPERLINK_READY_S, self.processes)
            self.on_event(f"SuperLink of {s.name} on 127.0.0.1:{s.port}: TLS, SuperNode "
                          f"authentication, {len(s.nodes)} SuperNode key(s) registered")
            c = control.client(f"127.0.0.1:{s.port}", self.ca_cert)
            try:
                for node in s.nodes:
                    node.node_id = control.register_node(c, node.public_key, node.name)
            finally:
                c.close()

    def start_supernodes(self) -> None:
        command = self._command("flower-supernode")
        for node in self.supernodes:
            link = self.relays.add(node.link, ("127.0.0.1", node.superlink.port))
            stem = f"supernode-{node.private_key.name}"
            self.processes.start(f"the SuperNode of {node.name} ({node.node_config})", [
                command, "--root-certificates", str(self.ca_cert),
                "--superlink", f"127.0.0.1:{link.port}",
                "--auth-supernode-private-key", str(node.private_key),
                "--node-config", node.node_config, "--isolation", "subprocess",
                "--host", "127.0.0.1", "--port", str(_free_port(self.taken))],
                self.logs / f"{stem}.log", env=self._home(stem), cwd=self.dir)
        timeout = 60.0 + 5.0 * len(self.supernodes)
        for s in self.superlinks.values():
            want = {n.node_id for n in s.nodes}

            def online(s: _SuperLink = s, want: set[int] = want) -> bool:
                c = control.client(f"127.0.0.1:{s.port}", self.ca_cert)
                try:
                    return want <= control.online_nodes(c)
                finally:
                    c.close()

            wait_until(f"the SuperNodes of {s.name} did not all connect", online, timeout,
                       self.processes, interval=0.5)
        self.on_event(f"{len(self.supernodes)} SuperNodes connected, each through a counting "
                      "relay")

    # -------------------------------------------------------------- the run

    def federate(self, spec_file: Path, on_round: Callable[[RoundResult], None],
                 ) -> FederationResult:
        spec = self.spec
        home = self.superlinks[spec.top or spec.sites[0].aggregator]
        c = control.client(f"127.0.0.1:{home.port}", self.ca_cert)
        progress = self.dir / "progress.jsonl"
        try:
            run_id = control.start_run(c, {"spec": str(spec_file)})
            self.on_event(f"run {run_id} started on the SuperLink of {home.name}: "
                          f"{spec.rounds} round(s), {spec.strategy}"
                          + (f", dp(clip={spec.dp.clip:g}, noise={spec.dp.noise:g})"
                             if spec.dp else ""))
            return self._watch(c, run_id, progress, on_round)
        finally:
            c.close()

    def _watch(self, c: Any, run_id: int, progress: Path,
               on_round: Callable[[RoundResult], None]) -> FederationResult:
        position, last_seen, last_status = 0, time.monotonic(), 0.0
        initial: tuple[float, float] | None = None
        previous_end = 0.0
        rounds: list[RoundResult] = []
        per_direction: list[dict[str, Any]] = []
        while True:
            self.processes.check()
            events, position = _read_events(progress, position)
            if events:
                last_seen = time.monotonic()
            for ev in events:
                kind = ev.get("event")
                if kind == "note":
                    self.on_event(str(ev.get("text", "")))
                elif kind == "initial":
                    initial = (float(ev["test_loss"]), float(ev["test_accuracy"]))
                    previous_end = float(ev["t_end"])
                    self.on_event(f"round 0 (the starting model): test loss {initial[0]:.4f}, "
                                  f"accuracy {initial[1]:.3f}")
                elif kind == "round":
                    end = float(ev["t_end"])
                    links, directions = self._bytes(previous_end, end)
                    previous_end = end
                    epsilon = None if ev.get("epsilon") is None and not \
                        ev.get("epsilon_infinite") else \
                        (float("inf") if ev.get("epsilon_infinite") else float(ev["epsilon"]))
                    result = RoundResult(
                        round=int(ev["round"]), seconds=end - float(ev["t_start"]),
                        train_loss=float(ev["train_loss"]), test_loss=float(ev["test_loss"]),
                        test_accuracy=float(ev["test_accuracy"]), link_bytes=links,
                        epsilon=epsilon, version=str(ev["version"]),
                        model_file=Path(str(ev["model_file"])))
                    rounds.append(result)
                    per_direction.append({"round": result.round, "links": directions})
                    self.on_event(
                        f"round {result.round}/{self.spec.rounds}: {result.seconds:.1f} s, "
                        f"train loss {result.train_loss:.4f}, test loss {result.test_loss:.4f}, "
                        f"accuracy {result.test_accuracy:.3f}"
                        + ("" if epsilon is None else f", epsilon {epsilon:.3g}")
                        + f", version {result.version}")
                    on_round(result)
                elif kind == "error":
                    raise FederationError(self._explain(str(ev.get("message", "failed"))))
                elif kind == "done":
                    (self.dir / "links.json").write_text(json.dumps(
                        {"rounds": per_direction}, indent=2) + "\n")
                    if initial is None:
                        raise FederationError("the ServerApp finished without evaluating")
                    return FederationResult(initial[0], initial[1], tuple(rounds),
                                            self.spec.work_dir / "versions" / "manifest.json")
            now = time.monotonic()
            if now - last_status > 2.0:
                last_status = now
                with contextlib.suppress(Exception):
                    status, sub, details = control.run_status(c, run_id)
                    if status == "finished":
                        events, _ = _read_events(progress, position)
                        if not events:
                            log = self.logs / "serverapp.log"
                            raise FederationError(self._explain(
                                f"the run ended ({sub or 'failed'}) before the ServerApp "
                                f"reported its rounds {details}".rstrip())
                                + ("" if log.is_file() else "\n(the ServerApp left no log: "
                                   "see " + str(self.superlinks[
                                       self.spec.top or self.spec.sites[0].aggregator].log)
                                   + ")"))
            if now - last_seen > STALL_S:
                raise FederationError(f"no progress for {STALL_S:.0f} s")
            time.sleep(0.2)

    def _bytes(self, start: float, end: float) -> tuple[dict[str, int], dict[str, Any]]:
        totals: dict[str, int] = {}
        directions: dict[str, Any] = {}
        for link in self.relays.links:
            up0, down0 = link.at(start)
            up1, down1 = link.at(end)
            totals[link.name] = (up1 - up0) + (down1 - down0)
            directions[link.name] = {"up": up1 - up0, "down": down1 - down0}
        return totals, directions

    def _explain(self, message: str) -> str:
        """The ServerApp's error with the traceback that shows it: from the log of a SuperNode
        whose ClientApp raised, else from the ServerApps' logs."""
        for proc in self.processes.started:
            if "supernode" in proc.log.name and proc.log.is_file() and \
                    "raised an exception" in proc.log.read_text(errors="replace"):
                shown = traceback_tail(proc.log)
                if shown:
                    return f"{message}\nthe traceback in {proc.log}:\n{shown}"
        for log in sorted(self.logs.glob("serverapp*.log"), key=lambda p: p.stat().st_mtime):
            shown = traceback_tail(log)
            if shown:
                return f"{message}\nthe traceback in {log}:\n{shown}"
        return message

    def close(self) -> None:
        try:
            self.processes.stop_all()
        finally:
            self.relays.close()


def _read_events(path: Path, position: int) -> tuple[list[dict[str, Any]], int]:
    """The complete JSON lines of `path` after byte `position`, and the new position."""
    try:
        with path.open("rb") as f:
            f.seek(position)
            data = f.read()
    except FileNotFoundError:
        return [], position
    end = data.rfind(b"\n") + 1
    events = []
    for line in data[:end].splitlines():
        with contextlib.suppress(ValueError):
            item = json.loads(line)
            if isinstance(item, dict):
                events.append(item)
    return events, position + end


def run(spec: FederationSpec, on_event: Callable[[str], None],
        on_round: Callable[[RoundResult], None]) -> FederationResult:
    spec = dataclasses.replace(spec, model=spec.model.resolve(),
                               code_root=spec.code_root.resolve(),
                               work_dir=spec.work_dir.resolve())
    _validate(spec)
    for note in _notes(spec):
        on_event(note)
    federation = spec.work_dir / "federation"
    if federation.is_symlink() or federation.is_file():
        federation.unlink()
    elif federation.exists():
        shutil.rmtree(federation)
    federation.mkdir(parents=True)
    started = time.monotonic()
    session = _Run(spec, on_event)
    try:
        session.plan()
        session.start_superlinks()
        spec_file = session.write_spec()  # with the SuperNode ids the SuperLinks registered
        session.start_supernodes()
        result = session.federate(spec_file, on_round)
        on_event(f"federation finished in {time.monotonic() - started:.0f} s")
        return result
    except FederationError:
        raise
    except OSError as e:
        raise FederationError(f"{type(e).__name__}: {e}") from e
    finally:
        session.close()
