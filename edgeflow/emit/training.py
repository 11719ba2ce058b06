"""What a bundle deploys of each `training` (docs/training.md, "Deploying"), derived once from the
program, for the targets that deploy federations (k8s, compose) to render:

- a SuperLink per aggregator instance (`flower-superlink` with TLS and SuperNode
  authentication, Flower's state and the model versions on a volume of its own);
- a SuperNode per client instance, and with two tiers one per site aggregator (in the site
  aggregator's pod, joining the top SuperLink), each authenticated by the key of its
  certificate from the bundle's PKI (`edgeflow.federation.deploy supernode`);
- the coordinator, which registers every SuperNode's key on its SuperLink and starts the run
  (`edgeflow.federation.deploy coordinate`): a Job, a CronJob with `every`, or a one-shot
  compose service;
- the files they share: `training/NAME/spec.json` (the FederationSpec with the paths inside the
  containers) and `coordinator.json`, and the model training starts from,
  `models/training/NAME/MODEL.onnx`.

Every name here is a DNS label, readable when it fits (`ward-risk-superlink-ward-server`),
hashed otherwise; `check_names` refuses a bundle where two coincide."""

from __future__ import annotations

import json
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgeflow import __version__, ir
from edgeflow.cost import read_model
from edgeflow.emit.artefacts import MODELS_MOUNT
from edgeflow.emit.bundle import (
    LABEL_MAX,
    NameClash,
    device_label,
    generated_label,
    span_of,
)
from edgeflow.emit.identities import Identity
from edgeflow.federation import specfile
from edgeflow.federation.deploy import FORMAT as COORDINATOR_FORMAT
from edgeflow.semantics.training import (
    FLOWER_NODE_MEMORY_BYTES,
    client_memory_bytes,
    initializers,
    sites,
    weights,
)
from edgeflow.train import federation_spec

TRAIN_IMAGE = f"edgeflow-train:{__version__}"  # docker/train.Dockerfile
SPEC_DIR = "/etc/edgeflow/train"            # spec.json, coordinator.json
WORK_DIR = "/var/lib/edgeflow/train"        # an aggregator's model versions and Flower's state
CODE_DIR = "/opt/edgeflow/code"             # where a derived image may put `samples`/`trainer`
FLWR_HOME = "/tmp/flwr"                     # Flower's own files (the installed app)
KEY_DIR = "/tmp/node-key"                   # a SuperNode's key, converted (/tmp: in memory)
TMP_BYTES = 128 * 2**20                     # /tmp of a training's container, in memory
SUPERLINK_TLS = "/etc/edgeflow/superlink-tls"
SUPERNODE_TLS = "/etc/edgeflow/supernode-tls"
COORDINATOR_CERTS = "/etc/edgeflow/train-certs"
SUPERLINK_PORT = 9092      # + 10 per training: Fleet, Control and ServerAppIo APIs
CLIENTAPPIO_PORT = 9094    # + 10 per training (+ 1 for a site's node): its ClientApps' API,
                           # on 127.0.0.1 only
ENVIRONMENT = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
               "FLWR_HOME": FLWR_HOME, "HOME": "/tmp", "PYTHONUNBUFFERED": "1"}
# a SuperLink container's request: measured peak 526 MiB for the SuperLink, its SuperExec, the
# ServerApp and the privacy accountant's process (3 clients, DP); a SuperNode's is its
# `memory_bytes`
SUPERLINK_MEMORY_BYTES = 560 * 2**20
WORK_VOLUME_BYTES = 2**30  # the PersistentVolumeClaim of an aggregator's versions


@dataclass(frozen=True)
class SuperLink:
    aggregator: str      # the device instance it runs on
    tier: str
    name: str            # its Deployment, Service, host name and certificate's CN
    port: int
    site: int | None     # a first-tier aggregator under a top one: its site's index

    @property
    def secret(self) -> str:
        return f"{self.name}-tls"

    @property
    def address(self) -> str:
        return f"{self.name}:{self.port}"


@dataclass(frozen=True)
class SuperNode:
    who: str             # the client instance, or the site aggregator (in the top federation)
    device: str          # the device instance it runs on
    tier: str
    node_config: str     # `instance=I` or `site=K`
    superlink: SuperLink
    name: str            # its Deployment (a client's) and certificate's CN
    clientappio_port: int
    memory_bytes: int    # its container's request: what check counts a client needs (E1306)

    @property
    def secret(self) -> str:
        return f"{self.name}-tls"

    @property
    def is_site(self) -> bool:
        return self.node_config.startswith("site=")

    def argv(self) -> list[str]:
        """The container's command: the SuperNode with its certificate's key."""
        return ["python", "-m", "edgeflow.federation.deploy", "supernode",
                "--key", f"{SUPERNODE_TLS}/tls.key", "--key-dir", KEY_DIR, "--",
                "--root-certificates", f"{SUPERNODE_TLS}/ca.crt",
                "--superlink", self.superlink.address, "--node-config", self.node_config,
                "--isolation", "subprocess",
                "--host", "127.0.0.1", "--port", str(self.clientappio_port)]


@dataclass(frozen=True)
class Federation:
    training: ir.Training
    label: str                      # the training's name as a DNS label
    superlinks: tuple[SuperLink, ...]
    nodes: tuple[SuperNode, ...]
    home: SuperLink                 # where the run starts: the top aggregator's, or the one
    coordinator: str                # its Job/CronJob/service and NetworkPolicy
    config: str                     # the ConfigMap of spec.json and coordinator.json
    model_path: str                 # the starting model in the bundle
    model_data: bytes
    model_external: dict[str, bytes]  # its external data files, by location beside it
    spec_json: str
    coordinator_json: str
    schedule_s: float | None        # `every`

    @property
    def folder(self) -> str:
        return f"training/{self.training.name}"

    def client_nodes(self) -> list[SuperNode]:
        return [n for n in self.nodes if not n.is_site]

    def site_node(self, link: SuperLink) -> SuperNode | None:
        """The SuperNode that runs in `link`'s pod: a site aggregator's in the top federation."""
        return next((n for n in self.nodes if n.is_site and n.device == link.aggregator), None)

    def superlink_argv(self, link: SuperLink) -> list[str]:
        return ["flower-superlink", "--ssl-certfile", f"{SUPERLINK_TLS}/tls.crt",
                "--ssl-keyfile", f"{SUPERLINK_TLS}/tls.key",
                "--ssl-ca-certfile", f"{SUPERLINK_TLS}/ca.crt",
                "--enable-supernode-auth", "--disable-runtime-dependency-installation",
                "--isolation", "subprocess", "--database", f"{WORK_DIR}/superlink.db",
                "--host", "0.0.0.0", "--port", str(link.port)]

    def coordinator_argv(self) -> list[str]:
        return ["python", "-m", "edgeflow.federation.deploy", "coordinate",
                f"{SPEC_DIR}/coordinator.json"]

    def identities(self) -> list[Identity]:
        out = [Identity(link.secret, link.name, dns=(link.name, "localhost"),
                        ips=("127.0.0.1",), server=True, client=False)
               for link in self.superlinks]
        out += [Identity(n.secret, n.name) for n in self.nodes]
        return out

    def files(self) -> dict[str, bytes]:
        """The files every target that deploys it shares."""
        folder = self.model_path.rsplit("/", 1)[0]
        return {self.model_path: self.model_data,
                **{posixpath.normpath(f"{folder}/{location}"): data
                   for location, data in self.model_external.items()},
                f"{self.folder}/spec.json": self.spec_json.encode(),
                f"{self.folder}/coordinator.json": self.coordinator_json.encode()}


def federations(program: ir.Program) -> tuple[Federation, ...]:
    """Every training of `program`, as a bundle deploys it (in declaration order)."""
    return tuple(_federation(program, t, k) for k, t in enumerate(program.trainings.values()))


CRONJOB_NAME_MAX = 52  # Kubernetes appends 11 characters to a CronJob's name for its Jobs


def _name(label: str, role: str, what: str, limit: int = LABEL_MAX) -> str:
    readable = f"{label}-{role}" + (f"-{device_label(what)}" if what else "")
    return generated_label(readable, ("training", label, role, what), f"{label}-{role}",
                           device_label(what) if what else "", limit)


def _tier(program: ir.Program, instance: str) -> str:
    return program.devices[instance.split("[")[0]].tier.value


def _federation(program: ir.Program, t: ir.Training, k: int) -> Federation:
    label = generated_label(t.name.replace("_", "-"), ("training", t.name), t.name)
    found = sites(program.devices[t.clients], program.devices[t.aggregate[0]])
    top = t.aggregate[1] if len(t.aggregate) == 2 else None
    assert found is not None and (top is not None or len(found) == 1)  # E1307 otherwise
    port = SUPERLINK_PORT + 10 * k
    links = [SuperLink(s.aggregator, _tier(program, s.aggregator),
                       _name(label, "superlink", s.aggregator), port,
                       i if top else None) for i, s in enumerate(found)]
    if top is not None:
        links.append(SuperLink(top, _tier(program, top), _name(label, "superlink", top),
                               port, None))
    by_aggregator = {link.aggregator: link for link in links}
    index = {name: i for i, name in enumerate(program.devices[t.clients].instances())}
    model = program.models[t.model]
    need = client_memory_bytes(t, weights(t, model, initializers(model)))
    train_bytes = -(-need // 2**20) * 2**20  # in whole MiB, rounded up
    nodes = [SuperNode(c, c, _tier(program, c), f"instance={index[c]}",
                       by_aggregator[s.aggregator], _name(label, "node", c),
                       CLIENTAPPIO_PORT + 10 * k, train_bytes)
             for s in found for c in s.clients]
    if top is not None:  # a site's node trains nothing itself: it relays its site's round
        nodes += [SuperNode(s.aggregator, s.aggregator, _tier(program, s.aggregator),
                            f"site={i}", by_aggregator[top], _name(label, "node", s.aggregator),
                            CLIENTAPPIO_PORT + 10 * k + 1, FLOWER_NODE_MEMORY_BYTES)
                  for i, s in enumerate(found)]
    home = by_aggregator[top or found[0].aggregator]
    source = read_model(program.models[t.model])
    model_path = f"models/training/{t.name}/{t.model}.onnx"
    spec = federation_spec(program, t, model=Path(f"{MODELS_MOUNT}/training/{t.name}/"
                                                   f"{t.model}.onnx"),
                           code_root=Path(CODE_DIR), work_dir=Path(WORK_DIR), resume=True)
    # a site's ClientApp starts its site's rounds on the SuperLink in its own pod
    local = {link.aggregator: specfile.SuperLinkAddress(f"127.0.0.1:{link.port}",
                                                        Path(f"{SUPERLINK_TLS}/ca.crt"))
             for link in links if link.site is not None}
    spec_json = json.dumps(specfile.to_json(spec, local), indent=2, sort_keys=True) + "\n"
    coordinator = {
        "format": COORDINATOR_FORMAT, "spec": f"{SPEC_DIR}/spec.json", "home": home.aggregator,
        "superlinks": {link.aggregator: {
            "address": link.address, "root_certificates": f"{COORDINATOR_CERTS}/ca.crt",
            "nodes": {n.who: f"{COORDINATOR_CERTS}/{n.name}.crt"
                      for n in nodes if n.superlink == link}} for link in links},
        "ready_s": 900, "run_s": 86400}
    return Federation(
        training=t, label=label, superlinks=tuple(links), nodes=tuple(nodes), home=home,
        coordinator=_name(label, "coordinator", "", CRONJOB_NAME_MAX), config=_name(label, "config", ""),
        model_path=model_path, model_data=source.data, model_external=source.external,
        spec_json=spec_json,
        coordinator_json=json.dumps(coordinator, indent=2, sort_keys=True) + "\n",
        schedule_s=t.every_s)


def object_names(f: Federation) -> list[tuple[str, str]]:
    """(name, what it names) of every object `f` deploys."""
    return [(f.config, f"the configuration of training `{f.training.name}`"),
            (f.coordinator, f"the coordinator of training `{f.training.name}`"),
            *((link.name, f"the SuperLink of training `{f.training.name}` on {link.aggregator}")
              for link in f.superlinks),
            *((n.name, f"the SuperNode of training `{f.training.name}` for {n.who}")
              for n in f.nodes)]


def check_federation_names(program: ir.Program, feds: Sequence[Federation],
                           taken: dict[str, str]) -> None:
    """NameClash when an object of a federation would share a name with another, or with one of
    `taken` (the bundle's other names, name -> what it names)."""
    seen = dict(taken)
    for f in feds:
        for name, what in object_names(f):
            if name in seen:
                raise NameClash(f"{seen[name]} and {what} would both get the name `{name}`",
                                f.training.span or span_of(program, f.training.name)
                                or program.app.span)
            seen[name] = what


def cron_schedule(seconds: float) -> str | None:
    """`every` as a cron schedule when one says exactly that, else None: minutes dividing an
    hour, hours dividing a day, a day, a week."""
    if seconds % 60:
        return None
    minutes = int(seconds // 60)
    if minutes < 60 and 60 % minutes == 0:
        return "* * * * *" if minutes == 1 else f"*/{minutes} * * * *"
    if minutes % 60:
        return None
    hours = minutes // 60
    if hours < 24 and 24 % hours == 0:
        return "0 * * * *" if hours == 1 else f"0 */{hours} * * *"
    return {24: "0 0 * * *", 168: "0 0 * * 0"}.get(hours)

