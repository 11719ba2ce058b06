"""A small X.509 PKI for the MQTT brokers' TLS client-certificate authentication: a CA, the
certificates it issues (brokers: serverAuth, units and bridges: clientAuth; the broker takes a
client's common name as its MQTT user name), and their files, written atomically.

`edgeflow run` makes a throw-away CA per local run with it; `edgeflow certs` issues a
deployment's certificates. Keys are EC P-256, certificates are signed with ECDSA-SHA256.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_BACKDATE = dt.timedelta(minutes=5)  # tolerates clocks a little behind the issuer's


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _spki(key: ec.EllipticCurvePublicKey | x509.Certificate) -> bytes:
    public = key.public_key() if isinstance(key, x509.Certificate) else key
    return public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def _usage(*, ca: bool) -> x509.KeyUsage:
    """A CA's key signs certificates and CRLs, a TLS peer's key signs handshakes (ECDHE-ECDSA)."""
    return x509.KeyUsage(digital_signature=not ca, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False)


@dataclass(frozen=True)
class CA:
    """A certificate authority: its private key and its self-signed certificate."""

    key: ec.EllipticCurvePrivateKey = field(repr=False)
    cert: x509.Certificate

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        """The private key, PKCS#8 PEM, unencrypted."""
        return _key_pem(self.key)


@dataclass(frozen=True)
class Identity:
    """A certificate issued by a CA (PEM) and its private key (PKCS#8 PEM, unencrypted)."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    common_name: str


def _builder(subject: str, issuer: x509.Name, public: ec.EllipticCurvePublicKey,
             days: int, not_after: dt.datetime | None = None) -> x509.CertificateBuilder:
    if days < 1:
        raise ValueError(f"a certificate must be valid for at least a day, not {days}")
    now = dt.datetime.now(dt.UTC)
    end = now + dt.timedelta(days=days)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer).public_key(public).serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(min(end, not_after) if not_after else end)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False))


def new_ca(common_name: str, *, days: int = 365) -> CA:
    """A new self-signed CA named `common_name`, valid for `days` days."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (_builder(common_name, name, key.public_key(), days)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_usage(ca=True), critical=True)
            .sign(key, hashes.SHA256()))
    return CA(key, cert)


def load_ca(cert_pem: bytes, key_pem: bytes) -> CA:
    """The CA of a PEM certificate and its (unencrypted) PEM private key."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError("the CA's key is not an EC key")
    if _spki(key.public_key()) != _spki(cert):
        raise ValueError("the CA's key does not belong to its certificate")
    with contextlib.suppress(x509.ExtensionNotFound):
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return CA(key, cert)
    raise ValueError("the certificate is not a CA's (basicConstraints CA:true)")


def issue(ca: CA, common_name: str, *, dns: Sequence[str] = (), ips: Sequence[str] = (),
          server: bool = False, client: bool = True, days: int = 365) -> Identity:
    """A new key and a certificate for it signed by `ca`: subject CN `common_name`, subject
    alternative names `dns` and `ips` (a server's are what its clients check), extended key
    usage serverAuth if `server` and clientAuth if `client`. It expires with the CA at the
    latest."""
    if isinstance(dns, str) or isinstance(ips, str):
        raise TypeError("dns and ips are sequences of names, not one string")
    purposes = [p for p, on in ((ExtendedKeyUsageOID.SERVER_AUTH, server),
                                (ExtendedKeyUsageOID.CLIENT_AUTH, client)) if on]
    if not purposes:
        raise ValueError("a certificate must be for a server, a client or both")
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:  # a CA made elsewhere
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())
    builder = (_builder(common_name, ca.cert.subject, key.public_key(), days,
                        ca.cert.not_valid_after_utc)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(_usage(ca=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
               .add_extension(aki, critical=False))
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    return Identity(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key), common_name)


def _write(path: Path, data: bytes, mode: int) -> None:
    """`data` into `path` with permissions `mode`, atomically: readers see the old file or the
    new one. A symbolic link at `path` is refused, not followed or replaced."""
    if path.is_symlink():
        raise FileExistsError(f"{path} is a symbolic link: refusing to write through it")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_identity(folder: Path, stem: str, identity: Identity, *,
                   key_mode: int = 0o600) -> tuple[Path, Path]:
    """`folder`/`stem`.crt (mode 0644) and `folder`/`stem`.key (`key_mode`); returns both."""
    if not stem or Path(stem).name != stem or stem in (".", ".."):
        raise ValueError(f"{stem!r} is not a file name")
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{stem}.crt", folder / f"{stem}.key"
    for path in (cert, key):  # before writing either
        if path.is_symlink():
            raise FileExistsError(f"{path} is a symbolic link: refusing to write through it")
    _write(key, identity.key_pem, key_mode)
    _write(cert, identity.cert_pem, 0o644)
    return cert, key


def write_certificate(path: Path, cert_pem: bytes) -> Path:
    """A certificate alone (mode 0644), atomically, never through a symbolic link."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(path, cert_pem, 0o644)
    return path


def write_ca(folder: Path, ca: CA, *, key_mode: int = 0o600) -> tuple[Path, Path]:
    """`folder`/ca.crt (mode 0644) and `folder`/ca.key (`key_mode`); returns both."""
    name = ca.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return write_identity(folder, "ca", Identity(ca.cert_pem(), ca.key_pem(), str(name)),
                          key_mode=key_mode)
