"""`edgeflow certs` and the k8s bundle's cert-manager resources: every identity a bundle needs
gets its certificate, keys stay private and outside the bundle, the bundle's brokers and clients
connect with them, and one identity's certificate cannot act as another."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as mqtt
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion

from edgeflow import api, certs, load
from edgeflow.emit.bundle import build_bundle
from edgeflow.emit.mqtt import render_acl, render_conf
from tests import kustomize
from tests.conftest import FIXTURES, ROOT, assert_golden
from tests.test_cli import run

SCHEMAS = FIXTURES / "schemas"


def _cn(cert_file: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_certs_makes_every_identity_outside_the_bundle_with_private_keys(folder: Path) -> None:
    bundle = folder / "bundle"
    assert run("compile", "examples/reference.ef", "-o", str(bundle)).returncode == 0
    made = run("certs", str(bundle), "--json")
    assert made.returncode == 0, made.stderr
    result = json.loads(made.stdout)["result"]
    out = Path(result["output"])
    assert out == folder / "bundle-secrets" and result["ca"] == "new"
    wanted = json.loads((bundle / "secrets.json").read_text())["secrets"]
    assert sorted(result["secrets"]) == sorted(s["secret"] for s in wanted)
    assert not list(bundle.rglob("*.key"))  # nothing private inside the bundle
    assert out.stat().st_mode & 0o777 == 0o700
    assert set(certs.key_modes(out).values()) == {0o600}
    for s in wanted:
        cert = x509.load_pem_x509_certificate((out / s["secret"] / "tls.crt").read_bytes())
        assert _cn(out / s["secret"] / "tls.crt") == s["common_name"]
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert (ExtendedKeyUsageOID.SERVER_AUTH in usages) == s["server"]
        assert (ExtendedKeyUsageOID.CLIENT_AUTH in usages) == s["client"]
        if s["dns"]:
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert set(names.get_values_for_type(x509.DNSName)) == set(s["dns"])
    ca = (out / "ca.crt").read_bytes()
    again = json.loads(run("certs", str(bundle), "--json").stdout)["result"]
    assert again["ca"] == "kept" and (out / "ca.crt").read_bytes() == ca  # one trust, kept
    if shutil.which("kubectl"):
        rendered = subprocess.run(["kubectl", "kustomize", str(out)], capture_output=True,
                                  text=True, check=False, timeout=60)
        assert rendered.returncode == 0, rendered.stderr
        secrets = [d for d in yaml.safe_load_all(rendered.stdout) if d]
        assert sorted(d["metadata"]["name"] for d in secrets) == sorted(result["secrets"])
        assert {d["type"] for d in secrets} == {"kubernetes.io/tls"}


def test_certs_refuses_what_is_not_a_bundle(folder: Path) -> None:
    proc = run("certs", str(folder))
    assert proc.returncode == 1 and "error[E1201]" in proc.stderr
    assert_golden(FIXTURES / "plans" / "E1201_not_a_bundle.out",
                  proc.stderr.replace(str(folder), "DIR"))


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _client(ca: Path, secret: Path, client_id: str) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    c.tls_set(ca_certs=str(ca), certfile=str(secret / "tls.crt"), keyfile=str(secret / "tls.key"))
    return c


def _connects(port: int, ca: Path, secret: Path, client_id: str) -> bool:
    c = _client(ca, secret, client_id)
    ok: list[bool] = []
    c.on_connect = lambda cl, u, f, reason, p: ok.append(not reason.is_failure)  # type: ignore[assignment]
    try:
        c.connect("127.0.0.1", port, keepalive=10)
    except OSError:
        return False
    c.loop_start()
    deadline = time.monotonic() + 5
    while not ok and time.monotonic() < deadline:
        time.sleep(0.05)
    c.disconnect()
    c.loop_stop()
    return bool(ok and ok[0])


def test_the_bundles_broker_and_clients_connect_with_the_certificates_it_made(
        folder: Path) -> None:
    bundle_dir = folder / "bundle"
    assert run("compile", "examples/reference.ef", "--target", "compose", "-o",
               str(bundle_dir)).returncode == 0
    result = certs.make(bundle_dir)
    assert result.ok and result.output is not None
    out = result.output
    program = load(ROOT / "examples" / "reference.ef")
    planned = api.plan(program)
    assert planned.plan is not None and planned.execution is not None
    bundle = build_bundle(planned.execution, planned.plan)
    broker = bundle.brokers["line_gw[0]"]
    # the broker reads its secrets as the mosquitto user: a readable copy of just its own
    mine = folder / "broker"
    shutil.copytree(out / f"{broker.name}-tls", mine / "tls")
    shutil.copytree(out / f"{broker.name}-bridge-tls", mine / "bridge")
    for p in [mine, *mine.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    (mine / "data").mkdir(mode=0o777)
    (mine / "data").chmod(0o777)
    (mine / "acl").write_text(render_acl(broker))
    port = _free_port()
    (mine / "mosquitto.conf").write_text(render_conf(
        bundle, broker, tls_dir=str(mine / "tls"), bridge_tls_dir=str(mine / "bridge"),
        port=port, acl_path=str(mine / "acl"), persistence_dir=str(mine / "data"),
        bind="127.0.0.1", addresses={d: "127.0.0.1:1" for d in bundle.brokers}))
    for p in (mine / "acl", mine / "mosquitto.conf"):
        p.chmod(0o644)
    proc = subprocess.Popen(["mosquitto", "-c", str(mine / "mosquitto.conf")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        time.sleep(0.5)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else b""
        ca = out / "ca.crt"
        users = [c for c in bundle.clients if c.device == "line_gw[0]"]
        assert users
        for c in users:  # each client with its own certificate and id
            assert _connects(port, ca, out / f"{c.name}-tls", c.identity), c.identity
        # a certificate of one identity cannot act as another: connecting with another's
        # client id, it is still itself to the ACL (CN = user name), so what it publishes on
        # the other's topic is dropped, while the real writer's message arrives
        writer = next(c for c in users if c.writes and any(
            t in r["read"] for u, r in broker.acl.items() if u != c.identity for t in c.writes))
        t = writer.writes[0]
        reader = next(c for c in bundle.clients if c.identity in broker.acl and
                      t in broker.acl[c.identity]["read"])
        impostor = next(c for c in users if c is not writer and t not in c.writes)
        inbox: list[bytes] = []
        sub = _client(ca, out / f"{reader.name}-tls", reader.identity)
        sub.on_message = lambda cl, u, m: inbox.append(m.payload)  # type: ignore[assignment]
        sub.connect("127.0.0.1", port)
        sub.loop_start()
        time.sleep(0.3)
        sub.subscribe(t, qos=1)
        time.sleep(0.3)
        for who, payload in ((impostor, b"forged"), (writer, b"genuine")):
            pub = _client(ca, out / f"{who.name}-tls", writer.identity)  # the writer's id
            pub.connect("127.0.0.1", port)
            pub.loop_start()
            time.sleep(0.3)
            pub.publish(t, payload, qos=1).wait_for_publish(5)
            time.sleep(0.5)
            pub.disconnect()
            pub.loop_stop()
        sub.disconnect()
        sub.loop_stop()
        assert inbox == [b"genuine"], inbox
    finally:
        proc.terminate()
        proc.wait(10)


def _strict(schema: Any) -> Any:
    """The CRD's structural schema with unknown fields refused (the API server prunes them;
    a bundle must not rely on that)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out and \
                not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def test_cert_manager_resources_validate_against_its_crds_and_cover_every_identity(
        folder: Path) -> None:
    out = folder / "b"
    assert run("compile", "examples/smart_city_traffic.ef", "-o", str(out)).returncode == 0
    files = {str(f.relative_to(out)): f.read_bytes() for f in out.rglob("*") if f.is_file()}
    docs = kustomize.build(files, "k8s/cert-manager")
    schemas = {kind: _strict(json.loads((SCHEMAS / f"cert-manager-{kind.lower()}.json")
                                        .read_text())) for kind in ("Certificate", "Issuer")}
    for doc in docs:
        body = {k: v for k, v in doc.items() if k != "metadata"}
        jsonschema.validate(body, schemas[doc["kind"]])
    wanted = json.loads((out / "secrets.json").read_text())["secrets"]
    made = {d["spec"]["secretName"]: d["spec"] for d in docs if d["kind"] == "Certificate"}
    for s in wanted:
        spec = made[s["secret"]]
        assert spec["commonName"] == s["common_name"]
        assert spec.get("dnsNames", []) == s["dns"] and spec["issuerRef"]["name"] == "edgeflow-ca"
    # every secret the pods mount is made
    mounted = {v["secret"]["secretName"] for d in kustomize.build(files, "k8s")
               if d["kind"] == "Deployment"
               for v in d["spec"]["template"]["spec"]["volumes"] if "secret" in v}
    assert mounted == set(made) - {"edgeflow-ca"}  # and nothing more but the CA


def test_certs_with_a_given_ca_signs_with_it_and_a_bad_ca_writes_nothing(folder: Path) -> None:
    from edgeflow import pki
    bundle = folder / "bundle"
    assert run("compile", "examples/reference.ef", "-o", str(bundle)).returncode == 0
    ca = pki.new_ca("my company CA")
    pki.write_ca(folder / "myca", ca)
    made = certs.make(bundle, folder / "out", ca_cert=folder / "myca/ca.crt",
                      ca_key=folder / "myca/ca.key")
    assert made.ok and made.ca == "given" and not (folder / "out" / "ca.key").exists()
    leaf = x509.load_pem_x509_certificate((folder / "out/archive-tls/tls.crt").read_bytes())
    leaf.verify_directly_issued_by(ca.cert)
    (folder / "junk.pem").write_text("not a certificate")
    bad = certs.make(bundle, folder / "none", ca_cert=folder / "junk.pem",
                     ca_key=folder / "junk.pem")
    assert [d.code for d in bad.diagnostics] == ["E1201"] and not (folder / "none").exists()
    missing = certs.make(bundle, folder / "none", ca_cert=folder / "nope.pem",
                         ca_key=folder / "junk.pem")
    assert [d.code for d in missing.diagnostics] == ["E1201"] and not (folder / "none").exists()
