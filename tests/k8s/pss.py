"""The Pod Security Standard "restricted" profile (latest), checked on any object that carries pod specs.

Follows https://kubernetes.io/docs/concepts/security/pod-security-standards/ control by control, as the
PodSecurity admission plugin applies it: a pod spec is found wherever a mapping has a ``containers`` list (a
Pod, a Job's template, a JobSet's replicated jobs, a TrainingRuntime's template...).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}


def pod_specs(obj: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, pod spec) for every pod spec inside ``obj``."""
    if isinstance(obj, dict):
        if isinstance(obj.get("containers"), list):
            yield path, obj
            return
        for k, v in obj.items():
            yield from pod_specs(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from pod_specs(v, f"{path}[{i}]")


def violations(spec: dict[str, Any]) -> list[str]:
    """Every restricted-profile violation of one pod spec (empty: admitted under enforce=restricted)."""
    out: list[str] = []
    psc = spec.get("securityContext") or {}
    containers = [
        *(spec.get("initContainers") or []),
        *(spec.get("containers") or []),
        *(spec.get("ephemeralContainers") or []),
    ]
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            out.append(f"{key}: true")
    for v in spec.get("volumes") or []:
        kinds = set(v) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            out.append(f"volume {v.get('name')}: type {sorted(kinds - ALLOWED_VOLUMES)} not allowed")
    for s in psc.get("sysctls") or []:
        if s.get("name") not in SAFE_SYSCTLS:
            out.append(f"sysctl {s.get('name')} not allowed")
    if psc.get("windowsOptions", {}).get("hostProcess"):
        out.append("hostProcess")
    pod_nonroot = psc.get("runAsNonRoot") is True
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if psc.get("runAsUser") == 0:
        out.append("pod runAsUser: 0")
    for where, ctx in [("pod", psc)] + [
        (f"container {c.get('name')}", c.get("securityContext") or {}) for c in containers
    ]:
        se = ctx.get("seLinuxOptions") or {}
        if (
            se.get("user")
            or se.get("role")
            or se.get("type")
            not in (None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t")
        ):
            out.append(f"{where}: seLinuxOptions {se}")
        aa = (ctx.get("appArmorProfile") or {}).get("type")
        if aa not in (None, "RuntimeDefault", "Localhost"):
            out.append(f"{where}: appArmorProfile {aa}")
    for c in containers:
        name = f"container {c.get('name')}"
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: capabilities.add {caps['add']}")
        if sc.get("runAsNonRoot") is False or not (pod_nonroot or sc.get("runAsNonRoot") is True):
            out.append(f"{name}: runAsNonRoot must be true (pod or container)")
        if sc.get("runAsUser") == 0:
            out.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost (got {seccomp})")
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"{name}: procMount {sc['procMount']}")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                out.append(f"{name}: hostPort {p['hostPort']}")
    return out


def object_violations(obj: dict[str, Any]) -> list[str]:
    """Violations of every pod spec in one object, each prefixed with the object and where the spec is."""
    name = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}"
    return [f"{name}{path}: {v}" for path, spec in pod_specs(obj) for v in violations(spec)]
