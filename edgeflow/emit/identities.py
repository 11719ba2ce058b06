"""Every certificate a bundle needs, one per identity: each client (unit, sensor, sink), each
broker's server certificate and each bridging broker's bridge certificate. One certificate is
one secret of three files, `ca.crt`, `tls.crt` and `tls.key` (the layout of Kubernetes TLS
secrets and of cert-manager), named `CLIENT-tls`, `broker-DEVICE-tls` and
`broker-DEVICE-bridge-tls`. The bundle lists them in `secrets.json`; `edgeflow certs` makes them
(edgeflow/pki.py), the k8s bundle's cert-manager resources ask cert-manager for them, and
`edgeflow run` makes its throw-away ones the same way."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from edgeflow import pki
from edgeflow.emit.bundle import Bundle

TLS_DIR = "/etc/edgeflow/tls"
BRIDGE_TLS_DIR = "/etc/edgeflow/bridge-tls"


class Federated(Protocol):
    """A deployed training (edgeflow.emit.training.Federation), as far as certificates go."""

    def identities(self) -> list[Identity]: ...


@dataclass(frozen=True)
class Identity:
    secret: str                  # the secret's (and folder's) name
    common_name: str             # the MQTT user name and client id it authenticates
    dns: tuple[str, ...] = ()    # a broker's names (its Service, localhost)
    ips: tuple[str, ...] = ()
    server: bool = False         # a broker's listener
    client: bool = True


def client_secret(name: str) -> str:
    return f"{name}-tls"


def broker_secret(broker_name: str) -> str:
    return f"{broker_name}-tls"


def bridge_secret(broker_name: str) -> str:
    return f"{broker_name}-bridge-tls"


def identities(bundle: Bundle, federations: Sequence[Federated] = ()) -> list[Identity]:
    """Every certificate of `bundle`, in bundle order, then those of the `federations` it
    deploys (docs/training.md: each SuperLink's server certificate, and each SuperNode's, whose
    key authenticates it)."""
    out = [Identity(client_secret(c.name), c.identity) for c in bundle.clients]
    for b in bundle.brokers.values():
        out.append(Identity(broker_secret(b.name), b.name, dns=(b.name, "localhost"),
                            ips=("127.0.0.1",), server=True, client=False))
        if b.bridges:
            out.append(Identity(bridge_secret(b.name), b.bridges[0].identity))
    for f in federations:
        out += f.identities()
    return out


def secrets_json(bundle: Bundle, federations: Sequence[Federated] = ()) -> bytes:
    """`secrets.json`: the bundle's certificates, for `edgeflow certs` (docs/bundles.md)."""
    rows = [{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(i).items()}
            for i in identities(bundle, federations)]
    return (json.dumps({"app": bundle.app, "secrets": rows}, indent=2) + "\n").encode()


def read_secrets_json(text: str) -> tuple[str, list[Identity]]:
    data = json.loads(text)
    return data["app"], [Identity(r["secret"], r["common_name"], tuple(r["dns"]),
                                  tuple(r["ips"]), r["server"], r["client"])
                         for r in data["secrets"]]


def write_identities(folder: Path, ca: pki.CA, wanted: list[Identity], *, days: int,
                     key_mode: int = 0o600) -> list[str]:
    """Issue every identity with `ca` into `folder/SECRET/{ca.crt,tls.crt,tls.key}`; the names
    of the secrets written."""
    written = []
    for ident in wanted:
        target = folder / ident.secret
        issued = pki.issue(ca, ident.common_name, dns=ident.dns, ips=ident.ips,
                           server=ident.server, client=ident.client, days=days)
        pki.write_identity(target, "tls", issued, key_mode=key_mode)
        pki.write_certificate(target / "ca.crt", ca.cert_pem())
        written.append(ident.secret)
    return written
