"""AWS IoT Greengrass v2: a component recipe per unit replica, broker and driver, one deployment
per edge or fog device (a thing), and the cloud part as Kubernetes manifests (docs/targets.md).

Components run as native processes of the core device, none as root or with privilege:
- `edgeflow.APP.runtime`, on every device that runs a worker: a Python virtual environment with
  edgeflow installed from its wheel (an artifact), which every worker and driver runs;
- `edgeflow.APP.broker-DEVICE`: the device's mosquitto, its configuration written from the recipe
  at start, its ACL an artifact;
- `edgeflow.APP.UNIT-rR` (and one per sensor and sink driver): the worker, its unit.json in the
  recipe's lifecycle environment (`EDGEFLOW_CONFIG`, read with `--config-from-env`), its model
  file an artifact (with its sha256, which the worker checks again).
Each but the runtime runs as a system user of its own that alone can read its certificate (the
device's setup script, `greengrass/setup/DEVICE.sh`, makes them), so no component can take
another's identity.

Units talk through the bundle's brokers (mutual TLS, per-identity ACLs, privacy-checked
bridges), as in every target, never through Greengrass IPC or IoT Core: no component is given
any `accessControl`, the least there is. One deployment per thing gives each device exactly its
components; a thing-group deployment would give every member the same ones.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from edgeflow import __version__
from edgeflow.cost import unit_memory_bytes
from edgeflow.emit.artefacts import Artefact
from edgeflow.emit.bundle import Broker, Bundle, Client, device_label, k8s_name
from edgeflow.emit.identities import bridge_secret, broker_secret, client_secret
from edgeflow.emit.mqtt import render_acl, render_conf
from edgeflow.emit.targets.base import Rendering, Target, TargetError
from edgeflow.emit.targets.k8s import cloud_part
from edgeflow.emit.templating import render
from edgeflow.emit.units import driver_spec, unit_spec
from edgeflow.plan import Part
from edgeflow.unit_config import CONFIG_ENV, TlsSpec

HOST_ROOT = "/var/lib/edgeflow"
"""A device's folder for the app, HOST_ROOT/APP: secrets/SECRET/{ca.crt,tls.crt,tls.key} and
venv/ (edgeflow, installed by the runtime component); setup/DEVICE.sh makes it."""
RECIPE_FORMAT = "2020-01-25"
RUNTIME_USER = "ggc_user:ggc_group"  # Greengrass' default component user, for the runtime
NAME_MAX = 128  # characters of a component name
WHEEL = f"edgeflow-{__version__}-py3-none-any.whl"
_WHEEL_HELP = "build it with `pip wheel --no-deps -w dist .` and give its path"


def posix_user(component: str) -> str:
    """The system user (and group) a component runs as, its own: `ef-` and 12 hex digits of
    the component name's sha256 (user names have at most 32 characters)."""
    return "ef-" + hashlib.sha256(component.encode()).hexdigest()[:12]


def b64_sha256(data: bytes) -> str:
    """An artifact's digest as Greengrass states it: Base64 of its SHA-256."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _version(recipe: dict[str, Any]) -> str:
    """A component version that changes exactly when its recipe does: semver, the patch
    number taken from the recipe's sha256 (Greengrass never replaces a published version)."""
    text = json.dumps(recipe, sort_keys=True, separators=(",", ":"))
    return f"1.0.{int(hashlib.sha256(text.encode()).hexdigest()[:7], 16)}"


def _compact(config: Any) -> str:
    return json.dumps(json.loads(config.to_json()), sort_keys=True, separators=(",", ":"))


class Greengrass(Target):
    name = "greengrass"
    description = "AWS IoT Greengrass v2 recipes and per-device deployments; cloud part as k8s"
    # the default names no bucket anyone could own (bucket names are lower case)
    options: ClassVar[Mapping[str, tuple[str, str]]] = {
        "artifacts": ("s3://YOUR-BUCKET/edgeflow/{app}",
                      "the S3 URI the bundle's files are uploaded under"),
        "wheel": ("", ("the edgeflow wheel the runtime component installs, read to pin its "
                       "digest (and the runtime's version) to it"))}

    def warnings(self, options: Mapping[str, str]) -> list[str]:
        out = []
        if "artifacts" not in options:
            out.append("the Greengrass recipes name artifacts under s3://YOUR-BUCKET/, which is "
                       "no bucket: compile with --target-option artifacts=s3://BUCKET/PREFIX "
                       "to deploy")
        if "wheel" not in options:
            out.append("the runtime component installs the edgeflow wheel unpinned: compile "
                       "with --target-option wheel=dist/edgeflow-VERSION-py3-none-any.whl to "
                       "pin it by its digest")
        return out

    def broker_host(self, bundle: Bundle, client: Client) -> str:
        return "127.0.0.1"  # components share their core device's network

    def render(self, r: Rendering) -> dict[str, bytes]:
        bundle = r.bundle
        cloud, files = cloud_part(r)
        prefix = r.option(self, "artifacts").rstrip("/")
        app = bundle.app
        venv = f"{HOST_ROOT}/{k8s_name(app)}/venv"
        wheel, pinned = WHEEL, None
        if given := r.option(self, "wheel"):
            wheel = Path(given).name
            if not re.fullmatch(r"edgeflow-[^/-]+-py3-none-any\.whl", wheel):
                raise TargetError(f"`{given}` is not an edgeflow wheel (edgeflow-VERSION-py3-"
                                  "none-any.whl)", "", _WHEEL_HELP)
            try:
                pinned = Path(given).read_bytes()
            except OSError as exc:
                raise TargetError(f"cannot read the wheel `{given}`: "
                                  f"{exc.strerror or exc}", "", _WHEEL_HELP) from None
        runtime_name = self._component(app, "runtime")
        runtime = self._recipe(
            runtime_name, f"edgeflow {__version__} in a virtual environment, for the workers "
                          f"and drivers of app {app}",
            # (in a folder every component's user may read, which setup/DEVICE.sh makes)
            {"Install": {"Script": f"python3 -m venv --clear {venv} && {venv}/bin/pip install "
                                   "--no-cache-dir --disable-pip-version-check "
                                   f"{{artifacts:path}}/{wheel}",
                         "RequiresPrivilege": False, "Timeout": 900}},
            # the wheel is built from this checkout (docs/bundles.md, "The worker image"):
            # pinned by its digest when given, else the service computes one at publishing
            [self._artifact(prefix, f"dist/{wheel}", pinned) if pinned is not None else
             {"URI": f"{prefix}/dist/{wheel}",
              "Permission": {"Read": "OWNER", "Execute": "NONE"}}], {})
        recipes: dict[str, dict[str, Any]] = {runtime_name: runtime}
        for b in bundle.brokers.values():
            if b.device in cloud:
                continue
            components, users = self._device(r, b, prefix, runtime, recipes, files)
            files[f"greengrass/setup/{device_label(b.device)}.sh"] = render(
                "greengrass/setup.sh.j2", app=app, device=b.device, root=f"{HOST_ROOT}/"
                f"{k8s_name(app)}", runtime_user=RUNTIME_USER.split(":")[0],
                runtime_group=RUNTIME_USER.split(":")[1], label=device_label(b.device),
                users=users).encode()
            deployment = {
                "deploymentName": f"edgeflow {app} {device_label(b.device)}",
                "components": components,
                "deploymentPolicies": {
                    "failureHandlingPolicy": "ROLLBACK",
                    "componentUpdatePolicy": {"action": "NOTIFY_COMPONENTS",
                                              "timeoutInSeconds": 60},
                    "configurationValidationPolicy": {"timeoutInSeconds": 60}},
                "tags": {"edgeflow-app": app, "edgeflow-device": device_label(b.device)}}
            files[f"greengrass/deployments/{device_label(b.device)}.json"] = _json(deployment)
        for name, recipe in recipes.items():
            files[f"greengrass/recipes/{name}-{recipe['ComponentVersion']}.json"] = \
                _json(recipe)
        return files

    def _device(self, r: Rendering, b: Broker, prefix: str, runtime: dict[str, Any],
                recipes: dict[str, dict[str, Any]], files: dict[str, bytes],
                ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The recipes of device instance `b.device` (added to `recipes`), its deployment's
        component list, and the users its setup script makes: one per component, owning
        exactly that component's certificates (so no component can read another's key). The
        halves of a decision table are artifacts of their own names, `greengrass/artifacts/`
        (added to `files`): an artifact is stored by the last part of its URI."""
        bundle = r.bundle
        app = bundle.app
        secrets = f"{HOST_ROOT}/{k8s_name(app)}/secrets"
        venv = f"{HOST_ROOT}/{k8s_name(app)}/venv"
        device = bundle.program.devices[b.device.split("[")[0]]
        acl_path = f"mqtt/{b.name}/edgeflow.acl"  # (every target's bundle has it)
        acl = render_acl(b).encode()
        conf = render_conf(bundle, b, tls_dir=f"{secrets}/{broker_secret(b.name)}",
                           bridge_tls_dir=f"{secrets}/{bridge_secret(b.name)}",
                           acl_path="{artifacts:path}/edgeflow.acl",
                           persistence_dir="{work:path}/data")
        runtime_name = runtime["ComponentName"]
        broker_name = self._component(app, b.name, b.device)
        broker = self._recipe(
            broker_name, f"mosquitto for app {app} on {b.device}",
            {"Setenv": {"EDGEFLOW_MOSQUITTO_CONF": conf},
             "Run": {"Script": "mkdir -p {work:path}/data && printf '%s\\n' "
                               "\"$EDGEFLOW_MOSQUITTO_CONF\" > {work:path}/mosquitto.conf && "
                               "exec mosquitto -c {work:path}/mosquitto.conf",
                     "RequiresPrivilege": False}},
            [self._artifact(prefix, acl_path, acl)], {})
        recipes[broker_name] = broker
        broker_user = posix_user(broker_name)
        users = [{"name": broker_user, "component": broker_name,
                  "secrets": [broker_secret(b.name)] + ([bridge_secret(b.name)] if b.bridges
                                                       else [])}]
        components: dict[str, Any] = {
            broker_name: {
                "componentVersion": broker["ComponentVersion"], "runWith": {
                    "posixUser": f"{broker_user}:{broker_user}", "systemResourceLimits": {
                        "memory": max(2 * device.broker_memory_bytes, 256 * 2**20,
                                      4 * bundle.max_message_bytes + 128 * 2**20) // 1024}}}}
        depends = {runtime_name: {"VersionRequirement": f"={runtime['ComponentVersion']}",
                                  "DependencyType": "HARD"},
                   broker_name: {"VersionRequirement": f"={broker['ComponentVersion']}",
                                 "DependencyType": "SOFT"}}
        python = f"{venv}/bin/python"
        for c in [u for u in bundle.units() if u.device == b.device] + \
                [d for d in bundle.clients if not d.is_unit and d.device == b.device]:
            tls = TlsSpec(ca=f"{secrets}/{client_secret(c.name)}/ca.crt",
                          cert=f"{secrets}/{client_secret(c.name)}/tls.crt",
                          key=f"{secrets}/{client_secret(c.name)}/tls.key")
            artifacts: list[dict[str, Any]] = []
            if c.is_unit:
                unit = bundle.placed(c)
                spec: Any = unit_spec(r, c, self.broker_host(bundle, c))
                if spec.model is not None:
                    art: Artefact = r.artefacts[(unit.step, unit.part, unit.replica)]
                    artifacts.append(self._artifact(prefix, art.path, art.data))
                    spec = spec.model_copy(update={"model": spec.model.model_copy(update={
                        "file": "{artifacts:path}/" + art.path.rsplit("/", 1)[1]})})
                if spec.adapt is not None:  # every half of the decision table, each its name
                    cuts = []
                    for cut in spec.adapt.cuts:
                        half = r.adapt[(unit.step, unit.replica)][cut.id][
                            0 if unit.part is Part.HEAD else 1]
                        flat = f"{unit.step}{'-' + half.variant if half.variant else ''}-cut-" \
                               f"{cut.id}-{unit.part.value}.onnx"
                        files[f"greengrass/artifacts/{flat}"] = half.data
                        artifacts.append(self._artifact(prefix, f"greengrass/artifacts/{flat}",
                                                        half.data))
                        cuts.append(cut.model_copy(update={"file": "{artifacts:path}/" + flat}))
                    spec = spec.model_copy(update={"adapt": spec.adapt.model_copy(
                        update={"cuts": cuts})})
                memory = 2 * unit_memory_bytes(unit.memory_bytes, device)
                module = "edgeflow.runtime"
                what = f"unit {c.step} (replica {unit.replica}) of app {app} on {b.device}"
            else:
                spec = driver_spec(bundle, c, self.broker_host(bundle, c))
                if spec.database is not None:
                    spec = spec.model_copy(update={"database": "{work:path}/store.sqlite"})
                memory = 2 * device.driver_memory_bytes
                module = "edgeflow.runtime.drivers"
                what = f"{c.kind} {c.step} of app {app} on {b.device}"
            spec = spec.model_copy(update={"broker": spec.broker.model_copy(
                update={"tls": tls})})
            name = self._component(app, c.name, c.step)
            recipe = self._recipe(
                name, what,
                {"Setenv": {CONFIG_ENV: _compact(spec)},
                 # (metrics for this device only: its processes share the host's network)
                 "Run": {"Script": f"exec {python} -m {module} --config-from-env "
                                   "--metrics-host 127.0.0.1",
                         "RequiresPrivilege": False}},
                artifacts, depends)
            recipes[name] = recipe
            user = posix_user(name)
            users.append({"name": user, "component": name, "secrets": [client_secret(c.name)]})
            components[name] = {"componentVersion": recipe["ComponentVersion"], "runWith": {
                "posixUser": f"{user}:{user}",
                "systemResourceLimits": {"memory": memory // 1024}}}
        if len(components) > 1:  # its workers and drivers run edgeflow
            components[runtime_name] = {"componentVersion": runtime["ComponentVersion"],
                                        "runWith": {"posixUser": RUNTIME_USER}}
        return components, users

    @staticmethod
    def _component(app: str, name: str, subject: str = "") -> str:
        """The component named `name` of app `app`; `subject` is the declaration it comes
        from (the app's when none)."""
        component = f"edgeflow.{app}.{name}"
        if len(component) > NAME_MAX:
            raise TargetError(f"the Greengrass component name {component} is longer than "
                              f"{NAME_MAX} characters", subject,
                              "give the app or this declaration a shorter name")
        return component

    @staticmethod
    def _artifact(prefix: str, path: str, data: bytes) -> dict[str, Any]:
        """The artifact of bundle file `path` (holding `data`), uploaded under `prefix`."""
        return {"URI": f"{prefix}/{path}", "Digest": b64_sha256(data), "Algorithm": "SHA-256",
                "Unarchive": "NONE", "Permission": {"Read": "OWNER", "Execute": "NONE"}}

    @staticmethod
    def _recipe(name: str, description: str, lifecycle: dict[str, Any],
                artifacts: list[dict[str, Any]], depends: dict[str, Any]) -> dict[str, Any]:
        recipe: dict[str, Any] = {
            "RecipeFormatVersion": RECIPE_FORMAT, "ComponentName": name,
            "ComponentDescription": description, "ComponentPublisher": "edgeflow"}
        if depends:
            recipe["ComponentDependencies"] = depends
        recipe["Manifests"] = [{"Platform": {"os": "linux"}, "Lifecycle": lifecycle,
                                "Artifacts": artifacts}]
        return {**recipe, "ComponentVersion": _version(recipe)}


def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
