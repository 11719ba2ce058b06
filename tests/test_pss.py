"""Tests of the independent Pod Security Standards checker in tests/pss.py."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import pss
from tests.pss import (
    APPARMOR,
    CAPABILITIES,
    HOST_NAMESPACES,
    HOST_PATH,
    HOST_PORTS,
    HOST_PROBES,
    HOST_PROCESS,
    PRIVILEGE_ESCALATION,
    PRIVILEGED,
    PROC_MOUNT,
    RUN_AS_NON_ROOT,
    RUN_AS_NON_ROOT_USER,
    SECCOMP,
    SELINUX,
    SYSCTLS,
    VOLUME_TYPES,
    check_objects,
    controls,
    violations,
)

Path = tuple[str | int, ...]


def compliant_spec() -> dict[str, Any]:
    """A PodSpec that meets the Restricted profile."""
    return {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "app",
                "image": "registry.example/app:1",
                "ports": [{"containerPort": 8080}],
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
        "volumes": [
            {"name": "cfg", "configMap": {"name": "cfg"}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }


def compliant_pod() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "annotations": {}},
        "spec": compliant_spec(),
    }


def put(obj: dict[str, Any], path: Path, value: Any) -> None:
    """Set `value` at `path`, creating missing dicts on the way."""
    node: Any = obj
    for key in path[:-1]:
        if isinstance(key, str) and key not in node:
            node[key] = {}
        node = node[key]
    node[path[-1]] = value


C0 = ("spec", "containers", 0)
C0SC = (*C0, "securityContext")
PSC = ("spec", "securityContext")
B, R = "baseline", "restricted"

# (id, path, bad value, control at baseline or None (passes), control at restricted)
CASES: list[tuple[str, Path, Any, str | None, str]] = [
    # ---- Baseline controls (a Baseline violation is also a Restricted one) ----
    ("hostprocess-pod", (*PSC, "windowsOptions", "hostProcess"), True, HOST_PROCESS, HOST_PROCESS),
    ("hostprocess-ctr", (*C0SC, "windowsOptions", "hostProcess"), True, HOST_PROCESS, HOST_PROCESS),
    ("host-network", ("spec", "hostNetwork"), True, HOST_NAMESPACES, HOST_NAMESPACES),
    ("host-pid", ("spec", "hostPID"), True, HOST_NAMESPACES, HOST_NAMESPACES),
    ("host-ipc", ("spec", "hostIPC"), True, HOST_NAMESPACES, HOST_NAMESPACES),
    ("privileged", (*C0SC, "privileged"), True, PRIVILEGED, PRIVILEGED),
    (
        "cap-add-net-admin",
        (*C0SC, "capabilities", "add"),
        ["NET_ADMIN"],
        CAPABILITIES,
        CAPABILITIES,
    ),
    (
        "hostpath",
        ("spec", "volumes", 0),
        {"name": "data", "hostPath": {"path": "/var"}},
        HOST_PATH,
        VOLUME_TYPES,
    ),
    ("host-port", (*C0, "ports", 0, "hostPort"), 8080, HOST_PORTS, HOST_PORTS),
    (
        "probe-host",
        (*C0, "livenessProbe"),
        {"httpGet": {"path": "/", "port": 8080, "host": "10.0.0.1"}},
        HOST_PROBES,
        HOST_PROBES,
    ),
    (
        "lifecycle-host",
        (*C0, "lifecycle"),
        {"preStop": {"tcpSocket": {"port": 8080, "host": "metadata"}}},
        HOST_PROBES,
        HOST_PROBES,
    ),
    (
        "apparmor-annotation",
        ("metadata", "annotations", "container.apparmor.security.beta.kubernetes.io/app"),
        "unconfined",
        APPARMOR,
        APPARMOR,
    ),
    ("apparmor-pod", (*PSC, "appArmorProfile"), {"type": "Unconfined"}, APPARMOR, APPARMOR),
    ("apparmor-ctr", (*C0SC, "appArmorProfile"), {"type": "Unconfined"}, APPARMOR, APPARMOR),
    ("selinux-type", (*PSC, "seLinuxOptions"), {"type": "spc_t"}, SELINUX, SELINUX),
    ("selinux-user", (*C0SC, "seLinuxOptions"), {"user": "system_u"}, SELINUX, SELINUX),
    ("selinux-role", (*C0SC, "seLinuxOptions"), {"role": "sysadm_r"}, SELINUX, SELINUX),
    ("proc-mount", (*C0SC, "procMount"), "Unmasked", PROC_MOUNT, PROC_MOUNT),
    ("seccomp-pod-unconfined", (*PSC, "seccompProfile"), {"type": "Unconfined"}, SECCOMP, SECCOMP),
    ("seccomp-ctr-unconfined", (*C0SC, "seccompProfile"), {"type": "Unconfined"}, SECCOMP, SECCOMP),
    (
        "sysctl-unsafe",
        (*PSC, "sysctls"),
        [
            {"name": "net.ipv4.tcp_syncookies", "value": "1"},
            {"name": "kernel.msgmax", "value": "1"},
        ],
        SYSCTLS,
        SYSCTLS,
    ),
    # ---- Restricted-only controls (these pass Baseline) ----
    (
        "volume-nfs",
        ("spec", "volumes", 1),
        {"name": "n", "nfs": {"server": "s", "path": "/"}},
        None,
        VOLUME_TYPES,
    ),
    (
        "volume-gitrepo",
        ("spec", "volumes", 1),
        {"name": "g", "gitRepo": {"repository": "r"}},
        None,
        VOLUME_TYPES,
    ),
    ("ape-true", (*C0SC, "allowPrivilegeEscalation"), True, None, PRIVILEGE_ESCALATION),
    ("ape-unset", (*C0SC, "allowPrivilegeEscalation"), None, None, PRIVILEGE_ESCALATION),
    ("nonroot-pod-false", (*PSC, "runAsNonRoot"), False, None, RUN_AS_NON_ROOT),
    ("nonroot-pod-unset", (*PSC, "runAsNonRoot"), None, None, RUN_AS_NON_ROOT),
    ("nonroot-ctr-false", (*C0SC, "runAsNonRoot"), False, None, RUN_AS_NON_ROOT),
    ("root-user-pod", (*PSC, "runAsUser"), 0, None, RUN_AS_NON_ROOT_USER),
    ("root-user-ctr", (*C0SC, "runAsUser"), 0, None, RUN_AS_NON_ROOT_USER),
    ("seccomp-pod-unset", (*PSC, "seccompProfile"), None, None, SECCOMP),
    ("cap-no-drop-all", (*C0SC, "capabilities", "drop"), ["NET_RAW"], None, CAPABILITIES),
    ("cap-add-default", (*C0SC, "capabilities", "add"), ["CHOWN"], None, CAPABILITIES),
]
IDS = [c[0] for c in CASES]


def mutated(*changes: tuple[Path, Any]) -> dict[str, Any]:
    pod = compliant_pod()
    for path, value in changes:
        put(pod, path, value)
    return pod


def expected(level: str, case: tuple[str, Path, Any, str | None, str]) -> set[str]:
    control = case[3] if level == B else case[4]
    return {control} if control else set()


def test_compliant_pod_passes_every_level() -> None:
    for level in ("privileged", B, R):
        assert violations(compliant_spec(), level) == []
        assert violations(compliant_pod(), level) == []


def test_case_table_covers_every_control_and_paths_do_not_nest() -> None:
    named = {c[3] for c in CASES} | {c[4] for c in CASES}
    assert set(pss.BASELINE_CONTROLS) | set(pss.RESTRICTED_CONTROLS) <= named
    paths = {c[1] for c in CASES}
    for a in paths:
        for b in paths:
            assert a == b or a[: len(b)] != b, (a, b)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("level", [B, R])
def test_each_control_is_named(level: str, case: tuple[str, Path, Any, str | None, str]) -> None:
    found = violations(mutated((case[1], case[2])), level)
    assert controls(found) == expected(level, case), found
    assert all(": " in v for v in found)


CONTAINER_CASES = [c for c in CASES if c[1][:2] == ("spec", "containers")]


@pytest.mark.parametrize("case", CONTAINER_CASES, ids=[c[0] for c in CONTAINER_CASES])
@pytest.mark.parametrize("kind", ["initContainers", "ephemeralContainers"])
def test_init_and_ephemeral_containers_are_checked(
    kind: str, case: tuple[str, Path, Any, str | None, str]
) -> None:
    pod = compliant_pod()
    pod["spec"][kind] = copy.deepcopy(pod["spec"]["containers"])
    pod["spec"][kind][0]["name"] = "other"
    for level in (B, R):
        assert violations(pod, level) == []
    put(pod, ("spec", kind, *case[1][2:]), case[2])
    for level in (B, R):
        assert controls(violations(pod, level)) == expected(level, case)


def test_violation_strings_name_the_detail() -> None:
    found = violations(mutated((("spec", "hostNetwork"), True)), B)
    assert found == ["Host Namespaces: hostNetwork=true"]
    hostpath = {"name": "data", "hostPath": {"path": "/"}}
    assert violations(mutated((("spec", "volumes", 0), hostpath)), R) == [
        "Volume Types: hostPath volume `data`"
    ]
    assert violations(mutated((("spec", "volumes", 0), hostpath)), B) == [
        "HostPath Volumes: hostPath volume `data`"
    ]
    found = violations(mutated(((*C0SC, "capabilities", "add"), ["NET_ADMIN"])), B)
    assert found == ["Capabilities: add NET_ADMIN (container `app`)"]


# ---- container-level settings against pod-level ones ------------------------------------------
def test_container_run_as_non_root_false_overrides_pod_true() -> None:
    pod = mutated(((*C0SC, "runAsNonRoot"), False))
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert controls(violations(pod, R)) == {RUN_AS_NON_ROOT}


def test_run_as_non_root_on_every_container_is_enough() -> None:
    pod = mutated(((*PSC, "runAsNonRoot"), None), ((*C0SC, "runAsNonRoot"), True))
    assert violations(pod, R) == []
    pod["spec"]["initContainers"] = [copy.deepcopy(pod["spec"]["containers"][0])]
    pod["spec"]["initContainers"][0]["name"] = "init"
    del pod["spec"]["initContainers"][0]["securityContext"]["runAsNonRoot"]
    assert controls(violations(pod, R)) == {RUN_AS_NON_ROOT}


def test_pod_seccomp_covers_containers_without_their_own() -> None:
    pod = compliant_pod()
    assert "seccompProfile" not in pod["spec"]["containers"][0]["securityContext"]
    assert violations(pod, R) == []


def test_container_seccomp_is_enough_without_pod_level() -> None:
    pod = mutated(
        ((*PSC, "seccompProfile"), None),
        ((*C0SC, "seccompProfile"), {"type": "Localhost", "localhostProfile": "p.json"}),
    )
    assert violations(pod, R) == []
    pod["spec"]["initContainers"] = [{"name": "init", "securityContext": {}}]
    put(pod, ("spec", "initContainers", 0, "securityContext", "allowPrivilegeEscalation"), False)
    put(pod, ("spec", "initContainers", 0, "securityContext", "capabilities"), {"drop": ["ALL"]})
    assert controls(violations(pod, R)) == {SECCOMP}


def test_container_seccomp_unconfined_overrides_pod_runtime_default() -> None:
    pod = mutated(((*C0SC, "seccompProfile"), {"type": "Unconfined"}))
    assert controls(violations(pod, B)) == {SECCOMP}
    assert controls(violations(pod, R)) == {SECCOMP}


def test_container_run_as_user_zero_is_flagged_despite_pod_user() -> None:
    pod = mutated(((*C0SC, "runAsUser"), 0))
    assert controls(violations(pod, R)) == {RUN_AS_NON_ROOT_USER}
    assert violations(mutated(((*C0SC, "runAsUser"), 1)), R) == []


# ---- allowed values ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "value"),
    [
        ((*C0SC, "capabilities", "add"), ["NET_BIND_SERVICE"]),
        ((*C0SC, "capabilities", "drop"), ["NET_RAW", "ALL"]),
        ((*C0SC, "procMount"), "Default"),
        ((*C0SC, "privileged"), False),
        ((*C0, "ports", 0, "hostPort"), 0),
        ((*PSC, "seLinuxOptions"), {"type": "container_init_t", "level": "s0:c1,c2"}),
        ((*PSC, "appArmorProfile"), {"type": "Localhost", "localhostProfile": "k8s-default"}),
        (
            ("metadata", "annotations", "container.apparmor.security.beta.kubernetes.io/app"),
            "localhost/k8s-default",
        ),
        ((*PSC, "sysctls"), [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]),
        ((*PSC, "seccompProfile"), {"type": "Localhost", "localhostProfile": "p.json"}),
        (("spec", "volumes", 1), {"name": "pvc", "persistentVolumeClaim": {"claimName": "c"}}),
        (("spec", "volumes", 1), {"name": "s", "secret": {"secretName": "s"}}),
        (("spec", "volumes", 1), {"name": "pr", "projected": {"sources": []}}),
        (("spec", "volumes", 1), {"name": "d", "downwardAPI": {"items": []}}),
        (("spec", "volumes", 1), {"name": "c", "csi": {"driver": "d"}}),
        (("spec", "volumes", 1), {"name": "e", "ephemeral": {"volumeClaimTemplate": {}}}),
        (("spec", "volumes", 1), {"name": "i", "image": {"reference": "r/x:1"}}),
        ((*C0, "readinessProbe"), {"httpGet": {"path": "/", "port": 8080}}),
        (("spec", "hostNetwork"), False),
    ],
)
def test_allowed_values_pass_restricted(path: Path, value: Any) -> None:
    assert violations(mutated((path, value)), R) == []


def test_baseline_allows_default_capabilities_and_unset_security_context() -> None:
    spec = {
        "containers": [
            {
                "name": "a",
                "image": "x",
                "securityContext": {"capabilities": {"add": sorted(pss.BASELINE_CAPABILITIES)}},
            }
        ]
    }
    assert violations(spec, B) == []
    assert controls(violations(spec, R)) == {
        CAPABILITIES,
        PRIVILEGE_ESCALATION,
        RUN_AS_NON_ROOT,
        SECCOMP,
    }


# ---- versions ---------------------------------------------------------------------------------
def test_version_gated_rules() -> None:
    root = mutated(((*PSC, "runAsUser"), 0))
    assert violations(root, R, "v1.22") == []
    assert controls(violations(root, R, "v1.23")) == {RUN_AS_NON_ROOT_USER}

    rmem = mutated(((*PSC, "sysctls"), [{"name": "net.ipv4.tcp_rmem", "value": "4096"}]))
    assert controls(violations(rmem, B, "v1.31")) == {SYSCTLS}
    assert violations(rmem, B, "v1.32") == []

    engine = mutated(((*PSC, "seLinuxOptions"), {"type": "container_engine_t"}))
    assert controls(violations(engine, B, "1.30")) == {SELINUX}
    assert violations(engine, B, "1.31") == []

    probe = mutated(((*C0, "startupProbe"), {"tcpSocket": {"port": 1, "host": "h"}}))
    assert violations(probe, B, "v1.33") == []
    assert controls(violations(probe, B, "v1.34")) == {HOST_PROBES}

    no_drop = mutated(((*C0SC, "capabilities"), None))
    assert violations(no_drop, R, "v1.21") == []
    assert controls(violations(no_drop, R, "v1.22")) == {CAPABILITIES}

    with pytest.raises(ValueError, match="version"):
        violations(compliant_spec(), R, "one")
    with pytest.raises(ValueError, match="level"):
        violations(compliant_spec(), "strict")


def test_windows_pods_are_exempt_from_linux_only_restricted_controls() -> None:
    spec = {
        "os": {"name": "windows"},
        "securityContext": {"runAsNonRoot": True},
        "containers": [{"name": "w", "image": "x"}],
    }
    assert violations(spec, R) == []
    assert controls(violations(spec, R, "v1.24")) == {PRIVILEGE_ESCALATION, SECCOMP, CAPABILITIES}


def test_user_namespace_relaxations() -> None:
    pod = mutated(
        (("spec", "hostUsers"), False),
        ((*PSC, "runAsNonRoot"), None),
        ((*PSC, "runAsUser"), 0),
        ((*C0SC, "procMount"), "Unmasked"),
    )
    assert violations(pod, B) == []
    assert controls(violations(pod, R)) == {PROC_MOUNT}
    assert controls(violations(pod, R, "v1.34")) == {
        PROC_MOUNT,
        RUN_AS_NON_ROOT,
        RUN_AS_NON_ROOT_USER,
    }
    assert controls(violations(pod, B, "v1.34")) == {PROC_MOUNT}


def test_seccomp_annotations_before_1_19() -> None:
    pod = mutated(
        ((*PSC, "seccompProfile"), None),
        (("metadata", "annotations", "seccomp.security.alpha.kubernetes.io/pod"), "unconfined"),
    )
    assert controls(violations(pod, B, "v1.18")) == {SECCOMP}
    pod["metadata"]["annotations"]["seccomp.security.alpha.kubernetes.io/pod"] = "runtime/default"
    assert violations(pod, R, "v1.18") == []


# ---- workload objects -------------------------------------------------------------------------
def wrap(kind: str, name: str, pod: dict[str, Any]) -> dict[str, Any]:
    template = {"metadata": pod["metadata"], "spec": pod["spec"]}
    spec: dict[str, Any] = {"template": template}
    if kind == "CronJob":
        spec = {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": template}}}
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


@pytest.mark.parametrize(
    "kind", ["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"]
)
def test_workloads_are_unwrapped(kind: str) -> None:
    bad = mutated(
        (("spec", "hostPID"), True),
        (
            ("metadata", "annotations", "container.apparmor.security.beta.kubernetes.io/app"),
            "unconfined",
        ),
    )
    assert violations(wrap(kind, "w", compliant_pod())) == []
    assert controls(violations(wrap(kind, "w", bad), B)) == {HOST_NAMESPACES, APPARMOR}


def test_annotations_for_a_bare_pod_spec() -> None:
    key = "container.apparmor.security.beta.kubernetes.io/app"
    found = violations(compliant_spec(), B, annotations={key: "unconfined"})
    assert controls(found) == {APPARMOR}


def test_check_objects() -> None:
    bad = mutated(((*C0SC, "allowPrivilegeEscalation"), True))
    objects = [
        wrap("Deployment", "web", compliant_pod()),
        wrap("CronJob", "nightly", bad),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}},
        None,
        {**compliant_pod(), "metadata": {"name": "solo"}},
        {"apiVersion": "v1", "kind": "List", "items": [wrap("Job", "web", bad)]},
    ]
    result = check_objects(objects)
    assert set(result) == {"web", "nightly", "solo", "Job/web"}
    assert result["web"] == [] and result["solo"] == []
    assert controls(result["nightly"]) == {PRIVILEGE_ESCALATION}
    assert check_objects(objects, level=B)["nightly"] == []


# ---- property: random mutations are reported with exactly their controls ----------------------
@settings(max_examples=150, deadline=None)
@given(
    picks=st.lists(st.sampled_from(CASES), min_size=1, max_size=4, unique_by=lambda c: c[1]),
    level=st.sampled_from([B, R]),
)
def test_random_mutations_report_exactly_their_controls(
    picks: list[tuple[str, Path, Any, str | None, str]], level: str
) -> None:
    pod = mutated(*[(c[1], copy.deepcopy(c[2])) for c in picks])
    want: set[str] = set()
    for case in picks:
        want |= expected(level, case)
    assert controls(violations(pod, level)) == want
    # baseline findings are always a subset of restricted findings, by control
    assert controls(violations(pod, B)) <= controls(violations(pod, R)) | {HOST_PATH}
