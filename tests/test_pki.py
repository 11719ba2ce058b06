"""edgeflow.pki: its certificates verify against their CA (and not another), carry the names and
purposes asked for, are written with private keys private and never through a symbolic link,
and a real mosquitto with a TLS listener requiring client certificates admits a client whose
certificate its CA issued and refuses one from another CA."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID as EKU
from paho.mqtt.enums import CallbackAPIVersion

from edgeflow.pki import CA, Identity, issue, load_ca, new_ca, write_ca, write_identity

try:
    from cryptography.x509 import verification
except ImportError:  # cryptography < 42
    verification = None  # type: ignore[assignment]

def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def ca() -> CA:
    return new_ca("edgeflow-test-ca", days=30)


def _cert(identity: Identity) -> x509.Certificate:
    return x509.load_pem_x509_certificate(identity.cert_pem)


def _ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


def _verify(ca: CA, cert: x509.Certificate, *, server: str | None = None) -> None:
    """Raises unless `cert` chains to `ca` (as a server for host `server`, else as a client)."""
    cert.verify_directly_issued_by(ca.cert)
    if verification is None or not hasattr(verification, "ExtensionPolicy"):
        return
    builder = verification.PolicyBuilder().store(verification.Store([ca.cert])).time(_now())
    if server is not None:
        try:
            subject: x509.verification.Subject = x509.IPAddress(ipaddress.ip_address(server))
        except ValueError:
            subject = x509.DNSName(server)
        builder.build_server_verifier(subject).verify(cert, [])
        return
    # a client is known by its common name (the broker's user name): the Web PKI's defaults
    # require a subjectAltName, which client certificates need not have
    policy = verification.ExtensionPolicy
    ee = policy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, verification.Criticality.AGNOSTIC, None)
    (builder.extension_policies(ca_policy=policy.webpki_defaults_ca(), ee_policy=ee)
     .build_client_verifier().verify(cert, []))


def test_the_ca_is_a_ca(ca: CA) -> None:
    cert = ca.cert
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == \
        "edgeflow-test-ca"
    cert.verify_directly_issued_by(cert)
    basic = _ext(cert, x509.BasicConstraints)
    assert basic.critical and isinstance(basic.value, x509.BasicConstraints) and basic.value.ca
    usage = _ext(cert, x509.KeyUsage).value
    assert isinstance(usage, x509.KeyUsage) and usage.key_cert_sign and usage.crl_sign
    assert _ext(cert, x509.SubjectKeyIdentifier).value == \
        x509.SubjectKeyIdentifier.from_public_key(ca.key.public_key())
    assert isinstance(ca.key.curve, ec.SECP256R1)
    assert cert.not_valid_before_utc <= _now() - dt.timedelta(minutes=5)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=30,
                                                                                minutes=5)
    assert b"PRIVATE" not in repr(ca).encode()


def test_a_server_certificate_verifies_for_its_names_only(ca: CA) -> None:
    server = issue(ca, "localhost", dns=["localhost"], ips=["127.0.0.1", "::1"], server=True,
                   client=False)
    cert = _cert(server)
    assert server.common_name == "localhost"
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                       ipaddress.ip_address("::1")]
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [EKU.SERVER_AUTH]  # type: ignore[call-overload]
    for host in ("localhost", "127.0.0.1", "::1"):
        _verify(ca, cert, server=host)
    if verification is not None:
        with pytest.raises(verification.VerificationError):
            _verify(ca, cert, server="example.com")
        with pytest.raises(verification.VerificationError):  # not a client's certificate
            _verify(ca, cert)


def test_a_client_certificate_verifies_against_its_ca_and_no_other(ca: CA) -> None:
    client = issue(ca, "app.unit")
    cert = _cert(client)
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "app.unit"
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [EKU.CLIENT_AUTH]  # type: ignore[call-overload]
    with pytest.raises(x509.ExtensionNotFound):
        _ext(cert, x509.SubjectAlternativeName)
    basic = _ext(cert, x509.BasicConstraints).value
    assert isinstance(basic, x509.BasicConstraints) and not basic.ca
    aki = _ext(cert, x509.AuthorityKeyIdentifier).value
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    assert aki.key_identifier == _ext(ca.cert, x509.SubjectKeyIdentifier).value.digest  # type: ignore[attr-defined]
    _verify(ca, cert)
    other = new_ca("another-ca")
    with pytest.raises(ValueError):  # its issuer is not the other CA
        _verify(other, cert)
    if verification is not None:
        with pytest.raises(verification.VerificationError):  # not a server's certificate
            _verify(ca, cert, server="localhost")


def test_purposes_keys_serials_and_validity(ca: CA) -> None:
    before = _now()
    both = _cert(issue(ca, "both", dns=["h"], server=True, client=True, days=2))
    after = _now()
    assert set(_ext(both, x509.ExtendedKeyUsage).value) == {  # type: ignore[call-overload]
        EKU.SERVER_AUTH, EKU.CLIENT_AUTH}
    with pytest.raises(ValueError):
        issue(ca, "neither", server=False, client=False)
    with pytest.raises(TypeError):
        issue(ca, "oops", dns="localhost")
    with pytest.raises(ValueError):
        issue(ca, "bad-ip", ips=["not-an-address"])
    start = both.not_valid_before_utc  # 5 minutes early, to the second
    assert before - dt.timedelta(minutes=5, seconds=1) <= start <= after - dt.timedelta(minutes=5)
    assert both.not_valid_after_utc - start == dt.timedelta(days=2, minutes=5)
    capped = _cert(issue(ca, "long", days=10_000))  # never outlives its CA
    assert capped.not_valid_after_utc <= ca.cert.not_valid_after_utc
    one = issue(ca, "c")
    assert one.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    key = serialization.load_pem_private_key(one.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    assert key.public_key() == _cert(one).public_key()
    assert len({_cert(issue(ca, "c")).serial_number for _ in range(5)}) == 5


def test_load_ca_round_trips_and_rejects_a_foreign_key(ca: CA) -> None:
    loaded = load_ca(ca.cert_pem(), ca.key_pem())
    assert loaded.cert == ca.cert
    _verify(ca, _cert(issue(loaded, "app.unit")))
    with pytest.raises(ValueError):
        load_ca(ca.cert_pem(), new_ca("other").key_pem())
    leaf = issue(ca, "leaf")
    with pytest.raises(ValueError):  # not a CA
        load_ca(leaf.cert_pem, leaf.key_pem)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_keys_private_certificates_public(ca: CA, tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    crt, key = write_ca(folder, ca)
    assert (crt, key) == (folder / "ca.crt", folder / "ca.key")
    assert (_mode(crt), _mode(key)) == (0o644, 0o600)
    assert load_ca(crt.read_bytes(), key.read_bytes()).cert == ca.cert
    unit = issue(ca, "app.unit")
    crt, key = write_identity(folder, "unit", unit)
    assert (crt.read_bytes(), key.read_bytes()) == (unit.cert_pem, unit.key_pem)
    assert (_mode(crt), _mode(key)) == (0o644, 0o600)
    again = issue(ca, "app.unit")  # replaces the files, with the same modes
    crt, key = write_identity(folder, "unit", again, key_mode=0o640)
    assert (crt.read_bytes(), key.read_bytes()) == (again.cert_pem, again.key_pem)
    assert (_mode(crt), _mode(key)) == (0o644, 0o640)
    assert sorted(p.name for p in folder.iterdir()) == ["ca.crt", "ca.key", "unit.crt",
                                                        "unit.key"]  # no temporary files left
    for stem in ("", "..", "../unit", "sub/unit"):
        with pytest.raises(ValueError):
            write_identity(folder, stem, unit)


@pytest.mark.parametrize("suffix", [".key", ".crt"])
def test_a_symlink_target_is_refused(ca: CA, tmp_path: Path, suffix: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"precious")
    folder = tmp_path / "tls"
    folder.mkdir()
    (folder / f"unit{suffix}").symlink_to(elsewhere)
    with pytest.raises(FileExistsError):
        write_identity(folder, "unit", issue(ca, "app.unit"))
    assert elsewhere.read_bytes() == b"precious"
    assert (folder / f"unit{suffix}").is_symlink()
    assert [p.name for p in folder.iterdir()] == [f"unit{suffix}"]  # nor the other file
    (folder / "ca.key").symlink_to(elsewhere)
    with pytest.raises(FileExistsError):
        write_ca(folder, ca)
    assert elsewhere.read_bytes() == b"precious"


# --- a real mosquitto ---------------------------------------------------------------------

needs_mosquitto = pytest.mark.skipif(
    shutil.which("mosquitto") is None and not os.path.exists("/usr/sbin/mosquitto")
    and not os.environ.get("CI"), reason="mosquitto is not installed (.ci/run installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def broker() -> Iterator[tuple[Path, int, CA]]:
    """mosquitto on a loopback TLS port requiring client certificates of a new CA: its folder
    (ca.crt there), port and CA."""
    # mosquitto started as root drops privileges: pytest's private tmp folders, and keys only
    # root may read, are out of its reach
    folder = Path(tempfile.mkdtemp(prefix="edgeflow-pki-"))
    folder.chmod(0o755)
    ca = new_ca("edgeflow-test-ca", days=1)
    write_ca(folder, ca)
    server = issue(ca, "localhost", dns=["localhost"], ips=["127.0.0.1"], server=True,
                   client=False, days=1)
    crt, key = write_identity(folder, "broker", server, key_mode=0o644)
    port = _free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(f"persistence false\nlog_dest stdout\nper_listener_settings false\n"
                    f"listener {port} 127.0.0.1\ncafile {folder / 'ca.crt'}\ncertfile {crt}\n"
                    f"keyfile {key}\nrequire_certificate true\nuse_identity_as_username true\n")
    conf.chmod(0o644)
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"mosquitto exited: {proc.stdout.read()}")  # type: ignore[union-attr]
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "mosquitto did not start listening"
            time.sleep(0.05)
        yield folder, port, ca
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(folder)


def _connects(folder: Path, port: int, identity: Identity, host: str = "127.0.0.1") -> bool:
    """Whether a paho client with `identity`'s certificate gets a successful CONNACK."""
    crt, key = write_identity(folder / "clients", identity.common_name, identity)
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    c.tls_set(ca_certs=str(folder / "ca.crt"), certfile=str(crt), keyfile=str(key))
    done, result = threading.Event(), []

    def on_connect(client, userdata, flags, reason, props):  # type: ignore[no-untyped-def]
        result.append(not reason.is_failure)
        done.set()

    c.on_connect = on_connect
    c.on_disconnect = lambda *args: done.set()
    try:
        c.connect(host, port)
    except OSError:  # ssl.SSLError included: the broker refused the certificate
        return False
    c.loop_start()
    try:
        return done.wait(5) and result == [True]
    finally:
        c.disconnect()
        c.loop_stop()


@needs_mosquitto
def test_mosquitto_admits_its_cas_clients_and_refuses_others(
        broker: tuple[Path, int, CA]) -> None:
    folder, port, ca = broker
    assert _connects(folder, port, issue(ca, "app.unit"))
    assert _connects(folder, port, issue(ca, "app.other"), host="localhost")
    assert not _connects(folder, port, issue(new_ca("edgeflow-test-ca"), "app.intruder"))
    # a certificate of the right CA for another purpose: not a client's
    assert not _connects(folder, port, issue(ca, "app.server", server=True, client=False))
