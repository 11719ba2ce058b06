"""The two commands a deployed federation runs besides Flower's own (docs/training.md,
"Deploying"): `python -m edgeflow.federation.deploy supernode ...` and `... coordinate FILE`.

- `supernode --key PEM -- ARGS`: a SuperNode authenticated with the key of its certificate from
  the bundle's PKI (cert-manager or `edgeflow certs`). Those keys are PEM; flwr 1.42's
  `flower-supernode` reads OpenSSH keys only, so the key is converted into a private file under
  `--key-dir` (a memory-backed folder in the manifests) and `flower-supernode ARGS
  --auth-supernode-private-key FILE` runs, started again while its SuperLink does not admit it
  yet (the coordinator registers its key), until a signal stops it.
- `coordinate FILE`: what `flwr supernode register` and `flwr run` do, for every SuperLink of a
  federation, from `coordinator.json` (below): wait until each SuperLink answers, register the
  public key of every SuperNode certificate (a key registered before is left as it is), wait
  until every SuperNode is online, start the run on the top SuperLink with the run config `spec`,
  and follow it to its end. Exit 0 when the run finished completed, 1 otherwise (the reason on
  stderr), 2 for a bad file.

`coordinator.json`:

    {"format": 1, "spec": "/etc/edgeflow/train/spec.json", "home": "ward_server",
     "superlinks": {"ward_server": {"address": "ft-ward-risk-ward-server:9092",
                                    "root_certificates": "/etc/edgeflow/train/ca.crt",
                                    "nodes": {"bedside_hub[0]": "certs/0.crt", ...}}},
     "ready_s": 600, "run_s": 86400}

Relative paths are relative to the file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = 1
CONVERTED_KEY = "supernode.key"
RETRY_S = 5.0  # before starting a SuperNode again that its SuperLink did not admit
KEY_CHECK_S = 10.0  # how often a running SuperNode's key file is compared with the one it uses


class DeployError(Exception):
    pass


# ---------------------------------------------------------------- supernode


def openssh_key(pem: bytes) -> bytes:
    """An EC private key in PEM (SEC1 or PKCS#8), as OpenSSH writes it (what flwr reads)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise DeployError(f"not a PEM private key: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DeployError(f"a SuperNode key must be an EC key, not {type(key).__name__}")
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption())


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def supernode_argv(key_file: Path, args: list[str]) -> list[str]:
    """The flower-supernode command with the converted key."""
    command = Path(sys.executable).parent / "flower-supernode"
    found = str(command) if command.is_file() else shutil.which("flower-supernode")
    if found is None:
        raise DeployError("flower-supernode not found: is edgeflow[train] installed?")
    return [found, *args, "--auth-supernode-private-key", str(key_file)]


def _read_key(key: Path) -> bytes:
    try:
        return key.read_bytes()
    except OSError as e:
        raise DeployError(f"cannot read the SuperNode key {key}: {e.strerror}") from None


def _reap() -> None:
    """Collect every exited child: as a container's first process this one inherits what
    flower-supernode leaves behind (its SuperExec), which nothing else would reap."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _supernode(key: Path, key_dir: Path, args: list[str]) -> int:
    """Run flower-supernode until a signal stops it. It exits when its SuperLink is not up or
    does not know its key yet (the coordinator registers it), and is started again after
    RETRY_S, so a SuperNode deployed before its registration joins once registered, without
    its container restarting (and backing off). When the key file changes (cert-manager renews
    the key with the certificate) it is started again with the new key, which the next
    coordinator run registers."""
    pem = _read_key(key)
    converted = key_dir / CONVERTED_KEY
    _write_private(converted, openssh_key(pem))
    argv = supernode_argv(converted, args)
    stopping = threading.Event()
    child: subprocess.Popen[bytes] | None = None

    def stop(signum: int, _: object) -> None:
        stopping.set()
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping.is_set():
        child = subprocess.Popen(argv)
        if stopping.is_set():  # a signal between the check and the start
            child.terminate()
        code: int | None = None
        renewed = False
        while code is None:
            try:
                code = child.wait(timeout=KEY_CHECK_S)
            except subprocess.TimeoutExpired:
                _reap()
                if stopping.is_set() or renewed:
                    continue
                if (now := _read_key(key)) != pem:
                    pem, renewed = now, True
                    _write_private(converted, openssh_key(pem))
                    print("edgeflow: the SuperNode's key changed; starting it again with the "
                          "new key", flush=True)
                    child.terminate()
        _reap()
        if stopping.is_set():
            break
        if not renewed:
            print(f"edgeflow: flower-supernode exited ({code}): its SuperLink is not "
                  f"reachable or has not registered its key yet; starting it again in "
                  f"{RETRY_S:g} s", flush=True)
            if stopping.wait(RETRY_S):
                break
    return 0


# ---------------------------------------------------------------- coordinate


@dataclass(frozen=True)
class Link:
    address: str
    root_certificates: Path
    nodes: Mapping[str, Path]  # who (a client, or a site's aggregator) -> its certificate


@dataclass(frozen=True)
class Coordination:
    spec: Path
    home: str
    superlinks: Mapping[str, Link]
    ready_s: float
    run_s: float


def read_coordination(path: Path) -> Coordination:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DeployError(f"cannot read {path}: {e}") from None
    base = path.resolve().parent
    try:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a coordinator file (format {FORMAT})")
        links = {str(name): Link(str(s["address"]), base / str(s["root_certificates"]),
                                 {str(who): base / str(cert)
                                  for who, cert in s["nodes"].items()})
                 for name, s in data["superlinks"].items()}
        home = str(data["home"])
        if home not in links:
            raise ValueError(f"`home` {home!r} is not one of the superlinks")
        return Coordination(base / str(data["spec"]), home, links,
                            float(data.get("ready_s", 600)), float(data.get("run_s", 86400)))
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise DeployError(f"{path}: the file lacks or mistypes {e}") from None


def certificate_public_key(path: Path) -> Any:
    """The EC public key of a PEM certificate (the SuperNode's, from the bundle's PKI)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as e:
        raise DeployError(f"cannot read the certificate {path}: {e}") from None
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise DeployError(f"{path}: a SuperNode certificate must hold an EC key")
    return key


def _poll(what: str, check: Callable[[], bool], timeout: float, interval: float) -> None:
    from edgeflow.federation import FederationError
    from edgeflow.federation.processes import wait_until

    try:
        wait_until(what, check, timeout, None, interval)
    except FederationError as e:
        raise DeployError(str(e)) from None


def _log(text: str) -> None:
    print(f"edgeflow-coordinator: {text}", flush=True)


def register(link_name: str, link: Link) -> dict[str, int]:
    """Register every node's key on `link` that is not registered yet; node ids by name."""
    from flwr.proto.control_pb2 import ListNodesRequest, RegisterNodeRequest
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    from edgeflow.federation import control

    c = control.client(link.address, link.root_certificates)
    try:
        known = {bytes(n.public_key): int(n.node_id)
                 for n in c.ListNodes(ListNodesRequest()).nodes_info if not n.unregistered_at}
        ids: dict[str, int] = {}
        for who, cert in sorted(link.nodes.items()):
            key = public_key_to_bytes(certificate_public_key(cert))
            if key in known:
                ids[who] = known[key]
                continue
            try:
                res = c.RegisterNode(RegisterNodeRequest(public_key=key,
                                                         name=control.node_name(who)))
            except Exception as e:  # noqa: BLE001  (Flower's errors: the key refused, in use)
                raise DeployError(f"the SuperLink of {link_name} refused {who}'s key ({cert}): "
                                  f"{e}") from None
            if not res.node_id:
                raise DeployError(f"the SuperLink of {link_name} did not register {who}")
            ids[who] = int(res.node_id)
            _log(f"registered {who} on the SuperLink of {link_name} (node {res.node_id})")
        return ids
    finally:
        c.close()


def coordinate(co: Coordination) -> int:
    from edgeflow.federation import control

    for name, link in co.superlinks.items():
        def answers(link: Link = link) -> bool:
            c = control.client(link.address, link.root_certificates)
            try:
                control.online_nodes(c)
                return True
            finally:
                c.close()

        _poll(f"the SuperLink of {name} did not answer at {link.address}", answers, co.ready_s,
              interval=2.0)
    ids = {name: register(name, link) for name, link in co.superlinks.items()}
    for name, link in co.superlinks.items():
        want = set(ids[name].values())

        def online(link: Link = link, want: set[int] = want) -> bool:
            c = control.client(link.address, link.root_certificates)
            try:
                return want <= control.online_nodes(c)
            finally:
                c.close()

        _poll(f"the SuperNodes of {name} did not all connect", online, co.ready_s, interval=2.0)
        _log(f"{len(want)} SuperNode(s) online at the SuperLink of {name}")
    home = co.superlinks[co.home]
    c = control.client(home.address, home.root_certificates)
    try:
        # a coordinator started again (a Job's retry) follows the run already going, never
        # starting a second one beside it
        if running := control.unfinished_runs(c):
            run_id = running[-1]
            _log(f"run {run_id} is already under way on the SuperLink of {co.home}: "
                 "following it")
        else:
            run_id = control.start_run(c, {"spec": str(co.spec)})
            _log(f"run {run_id} started on the SuperLink of {co.home}")
        status = control.wait_for_run(c, run_id, co.run_s, 2.0)
        if status is None:
            raise DeployError(f"run {run_id} did not finish within {co.run_s:.0f} s: stopped")
    finally:
        c.close()
    if status[1] != "completed":
        raise DeployError(f"run {run_id} ended {status[1] or status[0]}: {status[2]}".rstrip(": "))
    _log(f"run {run_id} completed")
    return 0


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeflow.federation.deploy",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    node = sub.add_parser("supernode", help="run flower-supernode with a PEM key")
    node.add_argument("--key", type=Path, required=True, help="the PEM private key")
    node.add_argument("--key-dir", type=Path, required=True,
                      help="a private folder for the converted key")
    node.add_argument("args", nargs=argparse.REMAINDER,
                      help="-- then flower-supernode's arguments")
    co = sub.add_parser("coordinate", help="register the SuperNodes and run the federation")
    co.add_argument("file", type=Path, help="coordinator.json")
    ns = parser.parse_args(argv)
    try:
        if ns.command == "supernode":
            args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
            return _supernode(ns.key, ns.key_dir, args)
        coordination = read_coordination(ns.file)
    except DeployError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        return coordinate(coordination)
    except DeployError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001  (a SuperLink's error: one line, not a traceback)
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
