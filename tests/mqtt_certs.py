"""A throw-away PKI for broker tests, made with the openssl command line at test time."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
         "/CN=edgeflow-test-ca", "-keyout", "ca.key", "-out", "ca.crt", cwd=folder)


def make_cert(folder: Path, name: str, cn: str, ip: bool = False) -> None:
    """`name`.crt/.key signed by the CA in `folder`, with common name `cn`."""
    _run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={cn}", "-keyout",
         f"{name}.key", "-out", f"{name}.csr", cwd=folder)
    ext = folder / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n" if ip else
                   "extendedKeyUsage=clientAuth\n")
    _run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
         "-CAcreateserial", "-days", "2", "-extfile", ext.name, "-out", f"{name}.crt", cwd=folder)
    for suffix in (".key", ".crt"):  # mosquitto drops root privileges before reading them
        (folder / f"{name}{suffix}").chmod(0o644)
