"""`edgeflow certs BUNDLE_DIR`: every certificate a compiled bundle needs (its `secrets.json`),
made with one CA by `edgeflow/pki.py`, outside the bundle by default, private keys 0600 in a 0700
folder: one subfolder per secret (`ca.crt`, `tls.crt`, `tls.key`), the CA (`ca.crt`, and
`ca.key` unless the CA is the user's), and a `kustomization.yaml` whose secretGenerator creates
the k8s bundle's secrets (`kubectl apply -k DIR`). Running it again re-issues every certificate
with the CA already in the folder, so identities added by a recompile join the same trust."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from edgeflow import pki
from edgeflow.diagnostics import Diagnostic
from edgeflow.emit.bundle import k8s_name
from edgeflow.emit.identities import read_secrets_json, write_identities
from edgeflow.files import reason
from edgeflow.span import file_span

MARKER = ".edgeflow-secrets"
CA_DAYS = 3650


@dataclass
class CertsResult:
    output: Path | None = None
    secrets: list[str] = field(default_factory=list)
    ca: str = ""                  # "new", "kept" (from the folder) or "given"
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.diagnostics


def _fail(code: str, message: str, where: Path, help: str | None = None) -> CertsResult:
    return CertsResult(diagnostics=[Diagnostic(code, message, file_span(str(where)),
                                               help=help)])


def default_output(bundle_dir: Path) -> Path:
    """Beside the bundle, never in it: `BUNDLE-secrets`."""
    resolved = bundle_dir.resolve()
    return resolved.parent / f"{resolved.name}-secrets"


def make(bundle_dir: Path, output: Path | None = None, *, ca_cert: Path | None = None,
         ca_key: Path | None = None, days: int = 365, force: bool = False) -> CertsResult:
    manifest = bundle_dir / "secrets.json"
    try:
        app, wanted = read_secrets_json(manifest.read_text())
    except OSError as e:
        return _fail("E1201", f"`{bundle_dir}` is not a bundle: cannot read its secrets.json "
                     f"({reason(manifest, e)})", bundle_dir,
                     help="name a folder `edgeflow compile` wrote")
    except (ValueError, KeyError, TypeError):
        return _fail("E1201", f"`{manifest}` is not a secrets.json edgeflow wrote", manifest,
                     help="recompile the bundle")
    out = (output or default_output(bundle_dir)).absolute()
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        return _fail("E1001", f"cannot write certificates into `{out}`: not a folder", out)
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file() and not force:
        return _fail("E1002", f"`{out}` holds files `edgeflow certs` did not write", out,
                     help="choose another folder with -o, or pass --force to write beside them")
    if (ca_cert is None) != (ca_key is None):
        return _fail("E1201", "--ca-cert and --ca-key go together", bundle_dir)
    for given_file in (ca_cert, ca_key):
        if given_file is not None and not given_file.is_file():
            return _fail("E1201", f"cannot read the CA file `{given_file}`", given_file)
    result = CertsResult(out)
    try:
        given = None if ca_cert is None or ca_key is None else \
            pki.load_ca(ca_cert.read_bytes(), ca_key.read_bytes())  # before writing anything
        out.mkdir(parents=True, exist_ok=True)
        out.chmod(0o700)
        if given is not None:
            ca = given
            pki.write_certificate(out / "ca.crt", ca.cert_pem())
            result.ca = "given"
        elif (out / "ca.crt").is_file() and (out / "ca.key").is_file():
            ca = pki.load_ca((out / "ca.crt").read_bytes(), (out / "ca.key").read_bytes())
            result.ca = "kept"
        else:
            ca = pki.new_ca(f"edgeflow {app} CA", days=CA_DAYS)
            pki.write_ca(out, ca)
            result.ca = "new"
        result.secrets = write_identities(out, ca, wanted, days=days)
        (out / "kustomization.yaml").write_text(_kustomization(app, result.secrets))
        (out / MARKER).write_text(json.dumps({"app": app, "secrets": result.secrets}) + "\n")
    except (ValueError, TypeError) as e:
        return _fail("E1201", f"the CA given cannot sign: {e}", ca_cert or out)
    except OSError as e:
        where = Path(e.filename) if e.filename else out
        return _fail("E1001", f"cannot write `{where}`: {reason(where, e)}", out)
    return result


def _kustomization(app: str, secrets: list[str]) -> str:
    lines = [f"# kubectl apply -k . creates the secrets of the bundle of app {app}.",
             "apiVersion: kustomize.config.k8s.io/v1beta1", "kind: Kustomization",
             f"namespace: {k8s_name('edgeflow', app)}", "generatorOptions:",
             "  disableNameSuffixHash: true  # the names the bundle's pods mount",
             "secretGenerator:"]
    for s in secrets:
        lines += [f"  - name: {s}", "    type: kubernetes.io/tls", "    files:",
                  *(f"      - {s}/{f}" for f in ("ca.crt", "tls.crt", "tls.key"))]
    return "\n".join(lines) + "\n"


def key_modes(folder: Path) -> dict[str, int]:
    """The permission bits of every private key under `folder` (for tests and `--check`)."""
    return {str(p.relative_to(folder)): os.stat(p).st_mode & 0o777
            for p in sorted(folder.rglob("*.key"))}
