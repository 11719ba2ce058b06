"""A throw-away PKI for broker tests, made with edgeflow.pki at test time."""

from __future__ import annotations

from pathlib import Path

from edgeflow.pki import issue, load_ca, new_ca, write_ca, write_identity

DAYS = 2


def make_ca(folder: Path) -> None:
    write_ca(folder, new_ca("edgeflow-test-ca", days=DAYS))


def make_cert(folder: Path, name: str, cn: str, ip: bool = False) -> None:
    """`name`.crt/.key signed by the CA in `folder`, with common name `cn`: a broker's (for
    localhost and 127.0.0.1) if `ip`, else a client's."""
    ca = load_ca((folder / "ca.crt").read_bytes(), (folder / "ca.key").read_bytes())
    if ip:
        identity = issue(ca, cn, dns=["localhost"], ips=["127.0.0.1"], server=True,
                         client=False, days=DAYS)
    else:
        identity = issue(ca, cn, days=DAYS)
    # mosquitto drops root privileges before reading them
    write_identity(folder, name, identity, key_mode=0o644)
