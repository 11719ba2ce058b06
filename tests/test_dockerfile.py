"""docker/worker.Dockerfile agrees with the bundles the compiler writes: the image tag, the user,
the command, the mount points, the metrics ports. There is no container engine on the test
machines, so the Dockerfile is parsed (a small parser: instructions, `\\` continuations, comments)
and its RUN commands are tokenized like a shell would."""

from __future__ import annotations

import ast
import json
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass
from importlib.metadata import packages_distributions
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

import edgeflow
from edgeflow import api, load
from edgeflow.emit.units import WORKER_IMAGE
from edgeflow.unit_config import METRICS_PORT
from tests.conftest import ROOT

DOCKERFILE = ROOT / "docker" / "worker.Dockerfile"
APP = "smart_city_traffic"
BASE_IMAGE = "python:3.11-slim"


# ---- the Dockerfile


@dataclass
class Instruction:
    name: str  # upper case
    args: str  # continuations joined


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order. Comment lines are dropped, also inside a continued instruction (as
    Docker does); a line ending in `\\` continues on the next."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        if whole:
            name, _, args = whole.partition(" ")
            instructions.append(Instruction(name.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return instructions


def commands(run: str) -> list[list[str]]:
    """The simple commands of a RUN (shell form), split at `;`, `&&`, `||` and `|`, quotes removed;
    the words of `if`/`then`/... are dropped so that the command after them is seen."""
    lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    out: list[list[str]] = [[]]
    for token in lexer:
        if token in {";", "&&", "||", "|"}:
            out.append([])
        elif not out[-1] and token in {"if", "then", "else", "elif", "fi", "!"}:
            continue
        else:
            out[-1].append(token)
    return [c for c in out if c]


class Dockerfile:
    def __init__(self, path: Path) -> None:
        self.text = path.read_text()
        self.instructions = parse_dockerfile(self.text)

    def all(self, name: str) -> list[str]:
        return [i.args for i in self.instructions if i.name == name]

    def one(self, name: str) -> str:
        found = self.all(name)
        assert len(found) == 1, f"expected one {name}, found {found}"
        return found[0]

    def exec_form(self, name: str) -> list[str]:
        value = json.loads(self.one(name))
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), name
        return value

    def run_commands(self) -> list[list[str]]:
        return [c for run in self.all("RUN") for c in commands(run)]

    def created_dirs(self) -> set[str]:
        dirs: set[str] = set()
        for c in self.run_commands():
            if c[0] == "mkdir" and "-p" in c:
                dirs.update(a for a in c[1:] if not a.startswith("-"))
        return dirs

    def pip_installs(self) -> list[list[str]]:
        """The arguments of every `pip install` / `python -m pip install`."""
        out = []
        for c in self.run_commands():
            if c[:2] == ["pip", "install"]:
                out.append(c[2:])
            elif c[1:4] == ["-m", "pip", "install"]:
                out.append(c[4:])
        return out

    def positional(self) -> list[str]:
        """What `set -- WORDS` made $1, $2, ... (the last such `set`)."""
        words: list[str] = []
        for c in self.run_commands():
            if c[:2] == ["set", "--"]:
                words = c[2:]
        return words

    def user(self) -> tuple[int, int]:
        uid, _, gid = self.one("USER").partition(":")
        return int(uid), int(gid or uid)

    def exposed(self) -> list[range]:
        ranges = []
        for args in self.all("EXPOSE"):
            for port in args.split():
                low, _, high = port.split("/")[0].partition("-")
                ranges.append(range(int(low), int(high or low) + 1))
        return ranges

    def documented_tag(self) -> str:
        """The `-t` of the `docker build` command in the header comment, with the version
        substitution evaluated as the shell would."""
        match = re.search(r"docker build .*-t (\S+):\$\(python -c '([^']*)'\)", self.text)
        assert match, "the header must show the docker build command with its -t"
        assert match.group(2) == "import edgeflow; print(edgeflow.__version__)"
        return f"{match.group(1)}:{edgeflow.__version__}"


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return Dockerfile(DOCKERFILE)


# ---- the bundles


@pytest.fixture(scope="module")
def bundles() -> dict[str, dict[str, bytes]]:
    program = load(ROOT / "examples" / f"{APP}.ef")
    placed = api.plan(program).plan
    assert placed is not None
    return {t: api.bundle(program, placed, t, f"examples/{APP}.ef") for t in ("k8s", "compose")}


def workers(files: dict[str, bytes]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(Deployment, the container) of every unit's worker in a k8s bundle (one pod per device
    holds its units' workers, named after the units)."""
    out = []
    for path, data in sorted(files.items()):
        if not path.startswith("k8s/") or not path.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(data):
            if not doc or doc.get("kind") != "Deployment":
                continue
            for container in doc["spec"]["template"]["spec"]["containers"]:
                if container.get("command") == ["python", "-m", "edgeflow.runtime"]:
                    out.append((doc, container))
    return out


UNIT_KINDS = ("operator", "model", "head", "tail")


def _target(volume: str) -> str:
    """The container path of a compose short-syntax volume, `${VAR:?message}` interpolated
    away first (compose interpolates before it splits on `:`)."""
    return re.sub(r"\$\{[^}]*\}", "/from-environment", volume).split(":")[1]


def unit_configs(files: dict[str, bytes]) -> list[dict[str, Any]]:
    """Every unit.json: the ConfigMaps of k8s, the files beside compose.yaml."""
    out = []
    for path, data in sorted(files.items()):
        if path.startswith("compose/") and path.endswith(".json"):
            out.append(json.loads(data))
        elif path.startswith("k8s/") and path.endswith(".yaml"):
            for doc in yaml.safe_load_all(data):
                if doc and doc.get("kind") == "ConfigMap":
                    out.extend(config for key, text in doc.get("data", {}).items()
                               if key.endswith(".json")
                               and (config := json.loads(text))["kind"] in UNIT_KINDS)
    return out


def compose_workers(files: dict[str, bytes]) -> list[dict[str, Any]]:
    out = []
    for path, data in sorted(files.items()):
        if path.startswith("compose/") and path.endswith("compose.yaml"):
            services = yaml.safe_load(data)["services"]
            out.extend(s for s in services.values() if s["image"].startswith("edgeflow-worker:"))
    return out


def config_mount(container: dict[str, Any], deployment: dict[str, Any]) -> str:
    """The mount path of the volume that holds the unit's ConfigMap."""
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    paths = [m["mountPath"] for m in container["volumeMounts"]
             if "configMap" in volumes[m["name"]]]
    assert len(paths) == 1, paths
    return str(paths[0])


def provided_by_image(path: str, dockerfile: Dockerfile) -> bool:
    """`path` is /tmp (the base image has it), a created directory, or a file in one."""
    p = PurePosixPath(path)
    return path == "/tmp" or any(p == PurePosixPath(d) or PurePosixPath(d) in p.parents
                                 for d in dockerfile.created_dirs())


# ---- the tests


def test_base_image(dockerfile: Dockerfile) -> None:
    assert dockerfile.one("FROM") == BASE_IMAGE


def test_image_tag_is_the_compiler_version(dockerfile: Dockerfile, bundles) -> None:  # type: ignore[no-untyped-def]
    expected = f"edgeflow-worker:{edgeflow.__version__}"
    assert WORKER_IMAGE == expected
    assert dockerfile.documented_tag() == expected
    deployed = workers(bundles["k8s"])
    assert deployed
    assert {c["image"] for _, c in deployed} == {expected}
    assert {s["image"] for s in compose_workers(bundles["compose"])} == {expected}


def test_user_matches_run_as(dockerfile: Dockerfile, bundles) -> None:  # type: ignore[no-untyped-def]
    uid, gid = dockerfile.user()
    for deployment, container in workers(bundles["k8s"]):
        pod = deployment["spec"]["template"]["spec"]["securityContext"]  # the device's pod
        own = container["securityContext"]  # its broker runs as another user
        assert (own["runAsUser"], own["runAsGroup"]) == (uid, gid)
        assert pod["fsGroup"] == gid  # the group that owns its secrets and empty dirs
        assert pod["runAsNonRoot"] and own["runAsNonRoot"] and uid != 0
    for service in compose_workers(bundles["compose"]):
        assert service["user"] == f"{uid}:{gid}"
    useradd = [c for c in dockerfile.run_commands() if c[0] == "useradd"]
    assert len(useradd) == 1 and f"--uid={uid}" in " ".join(useradd[0]).replace("--uid ", "--uid=")
    groupadd = [c for c in dockerfile.run_commands() if c[0] == "groupadd"]
    assert len(groupadd) == 1 and f"--gid={gid}" in " ".join(groupadd[0]).replace("--gid ", "--gid=")


def test_command_matches_entrypoint(dockerfile: Dockerfile, bundles) -> None:  # type: ignore[no-untyped-def]
    entrypoint, cmd = dockerfile.exec_form("ENTRYPOINT"), dockerfile.exec_form("CMD")
    assert entrypoint == ["python", "-m", "edgeflow.runtime"]
    for deployment, container in workers(bundles["k8s"]):
        assert container["command"] == entrypoint
        config = f"{config_mount(container, deployment)}/unit.json"
        assert container["args"] == ["--config", config]
        assert cmd == container["args"]  # the image runs the same unit without any args too
    services = compose_workers(bundles["compose"])
    assert services
    for service in services:
        assert service["command"] == entrypoint + cmd
        assert any(_target(v) == cmd[1] for v in service["volumes"])


def test_every_mount_point_exists(dockerfile: Dockerfile, bundles) -> None:  # type: ignore[no-untyped-def]
    created = dockerfile.created_dirs()
    for deployment, container in workers(bundles["k8s"]):
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        for mount in container["volumeMounts"]:
            path = mount["mountPath"]
            assert path == "/tmp" or path in created, f"{path} is not created in the image"
    for service in compose_workers(bundles["compose"]):
        for volume in service["volumes"]:
            target = _target(volume)
            assert provided_by_image(target, dockerfile), target
        for tmpfs in service.get("tmpfs", []):
            assert provided_by_image(tmpfs.split(":")[0], dockerfile), tmpfs


def test_unit_files_are_under_mounts(dockerfile: Dockerfile, bundles) -> None:  # type: ignore[no-untyped-def]
    """The files a unit.json names (TLS, model) lie under a mount point the image creates."""
    configs = unit_configs(bundles["k8s"]) + unit_configs(bundles["compose"])
    assert configs
    for config in configs:
        paths = list(config["broker"]["tls"].values())
        if config.get("model"):
            paths.append(config["model"]["file"])
        for path in paths:
            assert PurePosixPath(path).is_absolute(), path
            assert provided_by_image(path, dockerfile), path


def test_metrics_ports_are_exposed(dockerfile: Dockerfile, bundles) -> None:  # type: ignore[no-untyped-def]
    exposed = dockerfile.exposed()
    assert any(METRICS_PORT in r for r in exposed)
    ports = {c["metrics_port"] for t in ("k8s", "compose") for c in unit_configs(bundles[t])}
    assert METRICS_PORT in ports and len(ports) > 1  # the example has several units a device
    for port in ports:
        assert any(port in r for r in exposed), f"metrics port {port} is not EXPOSEd"


def test_installs_this_wheel_never_the_pypi_name(dockerfile: Dockerfile) -> None:
    copies = [c.split() for c in dockerfile.all("COPY")]
    assert ["dist/edgeflow-*.whl", "/tmp/"] in copies
    installs = dockerfile.pip_installs()
    assert len(installs) == 1, installs
    args = installs[0]
    assert "--no-cache-dir" in args
    assert "--no-deps" not in args, "the wheel's dependencies must be installed"
    for arg in args:
        name = re.split(r"[\[<>=!~;@ ]", arg, maxsplit=1)[0]
        assert name.lower() not in {"edgeflow", "edgeflow-worker"}, f"`pip install {arg}` by name"
    wheels = [a for a in args if re.sub(r"\[[\w,-]+\]$", "", a) in {"$1", "/tmp/edgeflow-*.whl"}]
    assert len(wheels) == 1, args
    if wheels[0].startswith("$1"):
        assert dockerfile.positional() == ["/tmp/edgeflow-*.whl"]


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalize(re.split(r"[\[<>=!~;@ ]", requirement.strip(), maxsplit=1)[0])


def _runtime_imports() -> set[str]:
    """Top-level names of the third-party modules the worker's code imports (also inside
    functions): edgeflow.runtime and the unit config it reads."""
    files = sorted((ROOT / "edgeflow" / "runtime").glob("*.py")) + [ROOT / "edgeflow" / "unit_config.py"]
    names: set[str] = set()
    for file in files:
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "edgeflow"}


def test_image_installs_what_the_runtime_imports(dockerfile: Dockerfile) -> None:
    """Every third-party module the worker imports comes from a distribution the image installs:
    the wheel's dependencies (pyproject.toml) with the extras named, or a requirement the
    Dockerfile adds beside the wheel."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (args,) = dockerfile.pip_installs()
    installed = {_requirement_name(r) for r in project["dependencies"]}
    for arg in (a for a in args if not a.startswith("-")):
        extras = re.search(r"\[([\w,-]+)\]$", arg)
        if arg.startswith(("$1", "/tmp/edgeflow-")):
            for extra in extras.group(1).split(",") if extras else []:
                installed.update(_requirement_name(r)
                                 for r in project["optional-dependencies"][extra])
        else:
            installed.add(_requirement_name(arg))
    distributions = packages_distributions()
    for module in sorted(_runtime_imports()):
        provided = {_normalize(d) for d in distributions.get(module, [module])}
        assert provided & installed, f"the worker imports `{module}` ({provided}), not installed"


def test_dockerignore_keeps_the_wheel() -> None:
    """The build context holds the wheel: a .dockerignore that excludes everything re-includes
    dist/edgeflow-*.whl, and none excludes dist/ itself."""
    ignore = ROOT / ".dockerignore"
    if not ignore.exists():
        return
    rules = [r.strip() for r in ignore.read_text().splitlines()
             if r.strip() and not r.strip().startswith("#")]
    assert not {"dist", "dist/", "dist/*", "*.whl", "dist/*.whl"} & set(rules)
    if "*" in rules:
        last = len(rules) - 1 - rules[::-1].index("*")
        assert {"!dist/", "!dist/edgeflow-*.whl"} <= set(rules[last + 1:])
