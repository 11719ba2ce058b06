"""An independent checker of the Kubernetes Pod Security Standards (PSS), for tests.

Written from the published standard (kubernetes.io/docs/concepts/security/pod-security-standards/,
CC-BY-4.0) and the rule facts of its reference implementation, the `policy/check_*.go` files of
github.com/kubernetes/pod-security-admission (Apache-2.0). No code is copied; only the facts
(restricted fields, allowed values, the version each rule starts at, which Restricted control
replaces which Baseline one) are used.

`violations(pod, level, version)` returns one short string per broken control, each
``"<Control>: <detail>"`` where ``<Control>`` is the control's name in the standard (see
`BASELINE_CONTROLS` / `RESTRICTED_CONTROLS`); `control_of(v)` gives that name back.
As in the reference implementation, at level "restricted" three Baseline controls are replaced
by their stricter Restricted form, so each problem is reported once:
HostPath Volumes -> Volume Types, Capabilities (baseline) -> Capabilities (restricted, v1.22+),
Seccomp (baseline) -> Seccomp (restricted, v1.19+).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

# ---- control names, as the standard names them ------------------------------------------------
HOST_PROCESS = "HostProcess"
HOST_NAMESPACES = "Host Namespaces"
PRIVILEGED = "Privileged Containers"
CAPABILITIES = "Capabilities"
HOST_PATH = "HostPath Volumes"
HOST_PORTS = "Host Ports"
HOST_PROBES = "Host Probes / Lifecycle Hooks"
APPARMOR = "AppArmor"
SELINUX = "SELinux"
PROC_MOUNT = "/proc Mount Type"
SECCOMP = "Seccomp"
SYSCTLS = "Sysctls"
VOLUME_TYPES = "Volume Types"
PRIVILEGE_ESCALATION = "Privilege Escalation"
RUN_AS_NON_ROOT = "Running as Non-root"
RUN_AS_NON_ROOT_USER = "Running as Non-root user"

BASELINE_CONTROLS = (
    HOST_PROCESS,
    HOST_NAMESPACES,
    PRIVILEGED,
    CAPABILITIES,
    HOST_PATH,
    HOST_PORTS,
    HOST_PROBES,
    APPARMOR,
    SELINUX,
    PROC_MOUNT,
    SECCOMP,
    SYSCTLS,
)
RESTRICTED_CONTROLS = (
    VOLUME_TYPES,
    PRIVILEGE_ESCALATION,
    RUN_AS_NON_ROOT,
    RUN_AS_NON_ROOT_USER,
    SECCOMP,
    CAPABILITIES,
)

LEVELS = ("privileged", "baseline", "restricted")
LATEST = (1, 10_000)  # "latest": every rule of every version applies

# ---- allowed values ---------------------------------------------------------------------------
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
RESTRICTED_ADD_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})

# the "safe" sysctls, by the version that added them to the allowed set
_SAFE_SYSCTLS_SINCE: dict[tuple[int, int], frozenset[str]] = {
    (1, 0): frozenset(
        {
            "kernel.shm_rmid_forced",
            "net.ipv4.ip_local_port_range",
            "net.ipv4.tcp_syncookies",
            "net.ipv4.ping_group_range",
            "net.ipv4.ip_unprivileged_port_start",
        }
    ),
    (1, 27): frozenset({"net.ipv4.ip_local_reserved_ports"}),
    (1, 29): frozenset(
        {
            "net.ipv4.tcp_keepalive_time",
            "net.ipv4.tcp_fin_timeout",
            "net.ipv4.tcp_keepalive_intvl",
            "net.ipv4.tcp_keepalive_probes",
        }
    ),
    (1, 32): frozenset({"net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"}),
    (1, 37): frozenset({"net.ipv4.tcp_slow_start_after_idle", "net.ipv4.tcp_notsent_lowat"}),
}

SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t"})
SELINUX_TYPES_1_31 = SELINUX_TYPES | {"container_engine_t"}

SECCOMP_TYPES = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_TYPES = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_ANNOTATION_PREFIX = "container.apparmor.security.beta.kubernetes.io/"
SECCOMP_POD_ANNOTATION = "seccomp.security.alpha.kubernetes.io/pod"
SECCOMP_CONTAINER_ANNOTATION_PREFIX = "container.seccomp.security.alpha.kubernetes.io/"

# inline volume sources the Restricted profile allows (`image` was added upstream in 2025)
RESTRICTED_VOLUME_SOURCES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "image",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)

WORKLOAD_KINDS = frozenset(
    {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}
)


# ---- helpers ----------------------------------------------------------------------------------
def control_of(violation: str) -> str:
    """The control a violation string names (the text before the first ': ')."""
    return violation.split(": ", 1)[0]


def controls(found: Iterable[str]) -> set[str]:
    """The set of controls named by violation strings."""
    return {control_of(v) for v in found}


def parse_version(version: str) -> tuple[int, int]:
    """'latest', 'v1.29' or '1.29' -> (major, minor)."""
    if version == "latest":
        return LATEST
    text = version.removeprefix("v")
    parts = text.split(".")
    if len(parts) < 2 or not parts[0].isdigit() or not parts[1].isdigit():
        raise ValueError(f"bad Kubernetes version {version!r}: want 'latest' or 'v1.NN'")
    return int(parts[0]), int(parts[1])


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _is_zero(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value == 0


def _containers(spec: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every container: initContainers, containers, ephemeralContainers."""
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for c in _list(spec.get(key)):
            if isinstance(c, Mapping):
                yield c


def _ctx(container: Mapping[str, Any]) -> Mapping[str, Any]:
    return _map(container.get("securityContext"))


def _name(container: Mapping[str, Any]) -> str:
    return str(container.get("name", "?"))


def _names(items: Iterable[str]) -> str:
    return ", ".join(f"`{n}`" for n in items)


def _who(pod_bad: bool, containers: list[str]) -> str:
    parts = ["pod"] if pod_bad else []
    if containers:
        parts.append(("containers " if len(containers) > 1 else "container ") + _names(containers))
    return " and ".join(parts)


class _Pod:
    """A pod spec with its annotations and the version being checked."""

    def __init__(
        self, spec: Mapping[str, Any], annotations: Mapping[str, Any], ver: tuple[int, int]
    ):
        self.spec = spec
        self.annotations = annotations
        self.ver = ver
        self.sc = _map(spec.get("securityContext"))

    @property
    def windows(self) -> bool:
        # from v1.25 a pod with spec.os.name=windows is exempt from some Linux-only controls
        return self.ver >= (1, 25) and _map(self.spec.get("os")).get("name") == "windows"

    @property
    def user_namespace(self) -> bool:
        # from v1.35 a pod with hostUsers: false (a user namespace) relaxes some controls
        return self.ver >= (1, 35) and self.spec.get("hostUsers") is False


Check = Callable[[_Pod], list[str]]


# ---- Baseline controls ------------------------------------------------------------------------
def _host_process(p: _Pod) -> list[str]:
    pod_bad = _map(p.sc.get("windowsOptions")).get("hostProcess") is True
    bad = [
        _name(c)
        for c in _containers(p.spec)
        if _map(_ctx(c).get("windowsOptions")).get("hostProcess") is True
    ]
    if pod_bad or bad:
        return [
            f"{HOST_PROCESS}: {_who(pod_bad, bad)} must not set windowsOptions.hostProcess=true"
        ]
    return []


def _host_namespaces(p: _Pod) -> list[str]:
    return [
        f"{HOST_NAMESPACES}: {key}=true"
        for key in ("hostNetwork", "hostPID", "hostIPC")
        if p.spec.get(key) is True
    ]


def _privileged(p: _Pod) -> list[str]:
    return [
        f"{PRIVILEGED}: container `{_name(c)}` sets privileged=true"
        for c in _containers(p.spec)
        if _ctx(c).get("privileged") is True
    ]


def _added(c: Mapping[str, Any]) -> list[str]:
    return [str(x) for x in _list(_map(_ctx(c).get("capabilities")).get("add"))]


def _capabilities_baseline(p: _Pod) -> list[str]:
    out = []
    for c in _containers(p.spec):
        for cap in _added(c):
            if cap not in BASELINE_CAPABILITIES:
                out.append(f"{CAPABILITIES}: add {cap} (container `{_name(c)}`)")
    return out


def _host_path(p: _Pod) -> list[str]:
    return [
        f"{HOST_PATH}: hostPath volume `{v.get('name', '?')}`"
        for v in _list(p.spec.get("volumes"))
        if isinstance(v, Mapping) and v.get("hostPath") is not None
    ]


def _host_ports(p: _Pod) -> list[str]:
    out = []
    for c in _containers(p.spec):
        for port in _list(c.get("ports")):
            host_port = _map(port).get("hostPort")
            if host_port not in (None, 0):
                out.append(f"{HOST_PORTS}: hostPort {host_port} (container `{_name(c)}`)")
    return out


def _host_probes(p: _Pod) -> list[str]:
    if p.ver < (1, 34):
        return []
    out = []
    for c in _containers(p.spec):
        handlers = [
            (k, _map(c.get(k))) for k in ("livenessProbe", "readinessProbe", "startupProbe")
        ]
        lifecycle = _map(c.get("lifecycle"))
        handlers += [(f"lifecycle.{k}", _map(lifecycle.get(k))) for k in ("postStart", "preStop")]
        for where, handler in handlers:
            for kind in ("httpGet", "tcpSocket"):
                host = _map(handler.get(kind)).get("host")
                if host:
                    out.append(
                        f"{HOST_PROBES}: {where}.{kind}.host={host} (container `{_name(c)}`)"
                    )
    return out


def _apparmor(p: _Pod) -> list[str]:
    out = []
    pod_type = _map(p.sc.get("appArmorProfile")).get("type")
    if p.sc.get("appArmorProfile") is not None and pod_type not in APPARMOR_TYPES:
        out.append(f"{APPARMOR}: pod sets appArmorProfile.type={pod_type}")
    for c in _containers(p.spec):
        ctx = _ctx(c)
        if ctx.get("appArmorProfile") is not None:
            ctype = _map(ctx.get("appArmorProfile")).get("type")
            if ctype not in APPARMOR_TYPES:
                out.append(f"{APPARMOR}: container `{_name(c)}` sets appArmorProfile.type={ctype}")
    for key, value in sorted(p.annotations.items()):
        if not str(key).startswith(APPARMOR_ANNOTATION_PREFIX):
            continue
        text = "" if value is None else str(value)
        if text and text != "runtime/default" and not text.startswith("localhost/"):
            out.append(f"{APPARMOR}: annotation {key}={text}")
    return out


def _selinux(p: _Pod) -> list[str]:
    allowed = SELINUX_TYPES_1_31 if p.ver >= (1, 31) else SELINUX_TYPES
    out = []

    def check(who: str, opts: Mapping[str, Any]) -> None:
        if (opts.get("type") or "") not in allowed:
            out.append(f"{SELINUX}: {who} sets seLinuxOptions.type={opts.get('type')}")
        for field in ("user", "role"):
            if opts.get(field):
                out.append(f"{SELINUX}: {who} sets seLinuxOptions.{field}")

    if p.sc.get("seLinuxOptions") is not None:
        check("pod", _map(p.sc.get("seLinuxOptions")))
    for c in _containers(p.spec):
        if _ctx(c).get("seLinuxOptions") is not None:
            check(f"container `{_name(c)}`", _map(_ctx(c).get("seLinuxOptions")))
    return out


def _proc_mount(p: _Pod, relax_for_user_namespace: bool) -> list[str]:
    if relax_for_user_namespace and p.user_namespace:
        return []
    out = []
    for c in _containers(p.spec):
        ctx = _ctx(c)
        if ctx.get("procMount") is not None and ctx.get("procMount") != "Default":
            out.append(f"{PROC_MOUNT}: procMount={ctx['procMount']} (container `{_name(c)}`)")
    return out


def _proc_mount_baseline(p: _Pod) -> list[str]:
    return _proc_mount(p, relax_for_user_namespace=True)


def _seccomp_annotations(p: _Pod) -> list[str]:
    """Before v1.19 seccomp was set by alpha annotations."""

    def ok(value: Any) -> bool:
        text = str(value)
        return text in ("runtime/default", "docker/default") or text.startswith("localhost/")

    out = []
    keys = [SECCOMP_POD_ANNOTATION]
    keys += [SECCOMP_CONTAINER_ANNOTATION_PREFIX + _name(c) for c in _containers(p.spec)]
    for key in keys:
        if p.annotations.get(key) is not None and not ok(p.annotations[key]):
            out.append(f"{SECCOMP}: annotation {key}={p.annotations[key]}")
    return out


def _seccomp(p: _Pod, required: bool) -> list[str]:
    if p.ver < (1, 19):
        return _seccomp_annotations(p)
    out = []
    pod_set = p.sc.get("seccompProfile") is not None
    pod_type = _map(p.sc.get("seccompProfile")).get("type")
    if pod_set and pod_type not in SECCOMP_TYPES:
        out.append(f"{SECCOMP}: pod sets seccompProfile.type={pod_type}")
    pod_ok = pod_set and pod_type in SECCOMP_TYPES
    missing = []
    for c in _containers(p.spec):
        ctx = _ctx(c)
        if ctx.get("seccompProfile") is not None:
            ctype = _map(ctx.get("seccompProfile")).get("type")
            if ctype not in SECCOMP_TYPES:
                out.append(f"{SECCOMP}: container `{_name(c)}` sets seccompProfile.type={ctype}")
        elif not pod_ok:
            missing.append(_name(c))
    if required and missing and not out:
        out.append(
            f"{SECCOMP}: pod or {_who(False, missing)} must set seccompProfile.type "
            "RuntimeDefault or Localhost"
        )
    return out


def _seccomp_baseline(p: _Pod) -> list[str]:
    return _seccomp(p, required=False)


def _sysctls(p: _Pod) -> list[str]:
    allowed: frozenset[str] = frozenset()
    for since, names in _SAFE_SYSCTLS_SINCE.items():
        if p.ver >= since:
            allowed |= names
    return [
        f"{SYSCTLS}: {_map(s).get('name')}"
        for s in _list(p.sc.get("sysctls"))
        if _map(s).get("name") not in allowed
    ]


# ---- Restricted controls ----------------------------------------------------------------------
def _volume_types(p: _Pod) -> list[str]:
    out = []
    for v in _list(p.spec.get("volumes")):
        vol = _map(v)
        sources = [k for k in vol if k != "name" and vol[k] is not None]
        if any(k in RESTRICTED_VOLUME_SOURCES for k in sources):
            continue
        kind = sources[0] if sources else "unknown"
        out.append(f"{VOLUME_TYPES}: {kind} volume `{vol.get('name', '?')}`")
    return out


def _privilege_escalation(p: _Pod) -> list[str]:
    if p.ver < (1, 8) or p.windows:
        return []
    return [
        f"{PRIVILEGE_ESCALATION}: container `{_name(c)}` must set allowPrivilegeEscalation=false"
        for c in _containers(p.spec)
        if _ctx(c).get("allowPrivilegeEscalation") is not False
    ]


def _run_as_non_root(p: _Pod) -> list[str]:
    if p.user_namespace:
        return []
    pod_value = p.sc.get("runAsNonRoot")
    explicit, implicit = [], []
    for c in _containers(p.spec):
        value = _ctx(c).get("runAsNonRoot")
        if value is None:
            if pod_value is not True:
                implicit.append(_name(c))
        elif value is not True:
            explicit.append(_name(c))
    if pod_value is False or explicit:
        who = _who(pod_value is False, explicit)
        return [f"{RUN_AS_NON_ROOT}: {who} must not set runAsNonRoot=false"]
    if implicit:
        who = _who(False, implicit)
        return [f"{RUN_AS_NON_ROOT}: pod or {who} must set runAsNonRoot=true"]
    return []


def _run_as_user(p: _Pod) -> list[str]:
    if p.ver < (1, 23) or p.user_namespace:
        return []
    pod_bad = _is_zero(p.sc.get("runAsUser"))
    bad = [_name(c) for c in _containers(p.spec) if _is_zero(_ctx(c).get("runAsUser"))]
    if pod_bad or bad:
        return [f"{RUN_AS_NON_ROOT_USER}: {_who(pod_bad, bad)} must not set runAsUser=0"]
    return []


def _seccomp_restricted(p: _Pod) -> list[str]:
    if p.windows:
        return []
    return _seccomp(p, required=True)


def _capabilities_restricted(p: _Pod) -> list[str]:
    if p.windows:
        return []
    out = []
    for c in _containers(p.spec):
        caps = _map(_ctx(c).get("capabilities"))
        if "ALL" not in [str(x) for x in _list(caps.get("drop"))]:
            out.append(f"{CAPABILITIES}: container `{_name(c)}` must drop ALL")
        for cap in _added(c):
            if cap not in RESTRICTED_ADD_CAPABILITIES:
                out.append(f"{CAPABILITIES}: add {cap} (container `{_name(c)}`)")
    return out


def _checks(level: str, ver: tuple[int, int]) -> list[Check]:
    if level not in LEVELS:
        raise ValueError(f"unknown PSS level {level!r}: want one of {LEVELS}")
    if level == "privileged":
        return []
    restricted = level == "restricted"
    checks: list[Check] = [
        _host_process,
        _host_namespaces,
        _privileged,
        _host_ports,
        _host_probes,
        _apparmor,
        _selinux,
        _proc_mount_baseline,
        _sysctls,
    ]
    # Restricted replaces three Baseline controls by stricter forms of the same control
    checks.append(_volume_types if restricted else _host_path)
    restricted_caps = restricted and ver >= (1, 22)
    checks.append(_capabilities_restricted if restricted_caps else _capabilities_baseline)
    restricted_seccomp = restricted and ver >= (1, 19)
    checks.append(_seccomp_restricted if restricted_seccomp else _seccomp_baseline)
    if restricted:
        checks += [_privilege_escalation, _run_as_non_root, _run_as_user]
        if ver >= (1, 35):
            # from v1.35 Baseline allows any procMount in a user namespace; Restricted does not
            checks[checks.index(_proc_mount_baseline)] = _proc_mount_restricted
    return checks


def _proc_mount_restricted(p: _Pod) -> list[str]:
    return _proc_mount(p, relax_for_user_namespace=False)


# ---- object unwrapping ------------------------------------------------------------------------
def pod_of(obj: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """(pod spec, pod annotations) of a PodSpec, a Pod or a workload object."""
    if "containers" in obj:  # a bare PodSpec
        return obj, {}
    spec = _map(obj.get("spec"))
    template: Mapping[str, Any] | None = None
    if "jobTemplate" in spec:  # CronJob
        template = _map(_map(_map(spec.get("jobTemplate")).get("spec")).get("template"))
    elif "template" in spec:
        template = _map(spec.get("template"))
    if template is not None:
        meta, pod_spec = _map(template.get("metadata")), _map(template.get("spec"))
    else:  # a Pod
        meta, pod_spec = _map(obj.get("metadata")), spec
    return pod_spec, _map(meta.get("annotations"))


# ---- public API -------------------------------------------------------------------------------
def violations(
    pod_spec: Mapping[str, Any],
    level: str = "restricted",
    version: str = "latest",
    *,
    annotations: Mapping[str, Any] | None = None,
) -> list[str]:
    """Every PSS violation of `pod_spec` at `level` ("privileged", "baseline", "restricted").

    `pod_spec` may be a PodSpec, a Pod or a workload object (its pod template is checked, with
    the template's annotations); `annotations` adds pod annotations for a bare PodSpec.
    `version` is "latest" or "v1.NN" (the PSS version: rules added later do not apply).
    """
    ver = parse_version(version)
    spec, found_annotations = pod_of(pod_spec)
    merged = {**found_annotations, **(annotations or {})}
    pod = _Pod(spec, merged, ver)
    out: list[str] = []
    for check in _checks(level, ver):
        out += check(pod)
    return out


def _workloads(objects: Iterable[Any]) -> Iterator[Mapping[str, Any]]:
    for obj in objects:
        if not isinstance(obj, Mapping):
            continue
        if obj.get("kind") == "List":
            yield from _workloads(_list(obj.get("items")))
        elif obj.get("kind") in WORKLOAD_KINDS:
            yield obj


def check_objects(
    objects: Iterable[Any], level: str = "restricted", version: str = "latest"
) -> dict[str, list[str]]:
    """metadata.name -> violations, for every workload object (other kinds are ignored).

    A name already used by an earlier workload is keyed "Kind/name" instead.
    """
    result: dict[str, list[str]] = {}
    for obj in _workloads(objects):
        name = str(_map(obj.get("metadata")).get("name", "?"))
        key = name if name not in result else f"{obj.get('kind')}/{name}"
        result[key] = violations(obj, level, version)
    return result
