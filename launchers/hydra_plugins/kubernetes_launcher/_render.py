"""Manifest rendering: one resolved config in, the Kubernetes objects of one training job out (plain dicts).

Pure: no I/O, no API calls, no torch. Every backend gets the same pod: same image, command, env and volumes.

    pods run:  framework-torchrun --nnodes=$(NNODES) --nproc-per-node=$(NPROC_PER_NODE) --node-rank=$(NODE_RANK)
               --master-addr=$(MASTER_ADDR) --master-port=$(MASTER_PORT) -m framework
               --config-path=/etc/framework --config-name=config hydra.mode=RUN hydra.run.dir=<run dir>
               hydra.output_subdir=null

``framework-torchrun`` is torchrun that exits with the training processes' own exit code (2 bad config, 143
preempted), so the podFailurePolicy below can tell permanent failures from retryable ones; plain torchrun
exits 1 for any failed worker.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import yaml
from hydra_plugins.kubernetes_launcher import _kueue, _staging
from hydra_plugins.kubernetes_launcher._backends import BACKENDS as BACKEND_TABLE
from hydra_plugins.kubernetes_launcher._backends import BY_KIND, JobParts
from hydra_plugins.kubernetes_launcher._names import (  # noqa: F401 - re-exported: tests and api read them here
    APP_NAME,
    CACHE_DIR,
    CACHE_ENV,
    COMPLETION_INDEX,
    CONFIG_DIR,
    CONFIG_FILE,
    DNS_LABEL,
    JOB_NAME_LABEL,
    LABEL_PREFIX,
    LABEL_VALUE,
    MANAGED_BY,
    RENDEZVOUS_ENV,
    RESERVED_MOUNTS,
    SETUP_NAME,
    SHM_DIR,
    TMP_DIR,
    dns_label,
    effective_pvcs,
    hydra_run_dir,
    label_value,
    pod_run_dir,
    split_secret_ref,
)
from hydra_plugins.kubernetes_launcher._problems import endpoint_ips, plain_problems
from omegaconf import DictConfig, OmegaConf

from framework.config import config_yaml
from framework.config import resolved as resolved_config
from framework.errors import ConfigError
from framework.secrets import name_looks_secret, value_looks_secret

Manifest = dict[str, Any]
_SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when available

BACKENDS = tuple(BACKEND_TABLE)
COMMAND = [
    "framework-torchrun"
]  # console script of hydra_plugins.kubernetes_launcher.torchrun (the image has it)

looks_secret = name_looks_secret


# ----------------------------------------------------------------------------------------------- names
def _host_suffix(backend: str, nodes: int) -> str:
    """The longest suffix the backend appends to the job name to form a pod hostname (a DNS label itself)."""
    entry = BACKEND_TABLE.get(backend)
    if entry is None:  # not a backend (launcher_problems says so): the longest of any, so names stay valid
        return max((b.host_suffix(nodes) for b in BACKEND_TABLE.values()), key=len)
    return entry.host_suffix(nodes)


def job_name(run_name: str, *, sweep_id: str, job_index: int, backend: str = "jobset", nodes: int = 1) -> str:
    """``<run name>-<sweep id>-<job index>``, shortened so every pod hostname stays a valid DNS label (<= 63)."""
    suffix = f"-{sweep_id}-{job_index}"
    budget = 63 - len(_host_suffix(backend, nodes)) - len(suffix)
    name = dns_label(run_name, budget) + suffix
    assert DNS_LABEL.match(name) and len(name) + len(_host_suffix(backend, nodes)) <= 63, name
    return name


def master_addr(backend: str, name: str) -> str:
    """DNS name of the rank-0 pod (node rank 0) for each backend."""
    return BACKEND_TABLE[backend].master_addr(name)


_hydra_run_dir = hydra_run_dir


def container_args(cfg: DictConfig, name: str) -> list[str]:
    """torchrun's arguments (after COMMAND); identical on every pod of the job."""
    node_rank = BACKEND_TABLE[str(cfg.launcher.backend)].node_rank_arg
    return [
        "--nnodes=$(NNODES)",
        "--nproc-per-node=$(NPROC_PER_NODE)",
        f"--node-rank={node_rank}",
        "--master-addr=$(MASTER_ADDR)",
        "--master-port=$(MASTER_PORT)",
        "-m",
        "framework",
        f"--config-path={CONFIG_DIR}",
        f"--config-name={CONFIG_FILE.removesuffix('.yaml')}",
        "hydra.mode=RUN",
        f"hydra.run.dir={_hydra_run_dir(cfg, name)}",
        "hydra.output_subdir=null",
    ]


def torchrun_args(cfg: Any) -> list[str]:
    """torchrun's own options: workers get SIGTERM and this long to checkpoint before SIGKILL, inside the pod's
    grace period (the rest is torchrun's and framework-torchrun's own exit)."""
    grace = grace_period_s(cfg._plain)
    return [f"--shutdown-timeout={max(grace - GRACE_MARGIN_S, 1)}"]


# Grace period rule (README "Grace period"): 60 s to reach the next step boundary and start saving, plus the
# checkpoint each node writes at the storage's sustained rate, never below 120 s. A checkpoint holds the
# trainable weights and their fp32 Adam state: 16 bytes per trainable parameter, sharded over the nodes under
# ZeRO (each node writes its share), all on node rank 0 without it.
GRACE_FLOOR_S = 120
GRACE_STEP_S = 60
GRACE_MARGIN_S = 15  # SIGKILL to torchrun's workers this long before the pod's own SIGKILL
CHECKPOINT_BYTES_PER_PARAM = 16
WRITE_BYTES_PER_S = {"s3": 100e6, "pvc": 200e6}  # sustained per node: S3 multipart, a network PVC


def checkpoint_bytes_per_node(plain: Mapping[str, Any]) -> float:
    from framework.memory import param_counts  # pure arithmetic on the model config, no torch

    total = CHECKPOINT_BYTES_PER_PARAM * param_counts(plain).trainable
    hw = plain["hardware"]
    return total / int(hw["nodes"]) if int(hw.get("zero_stage") or 0) >= 1 else total


def grace_period_s(plain: Mapping[str, Any]) -> int:
    """launcher.termination_grace_s, or the rule above when it is null (``plain``: the resolved config)."""
    explicit = plain["launcher"].get("termination_grace_s")
    return int(explicit) if explicit is not None else derived_grace_s(plain)


def derived_grace_s(plain: Mapping[str, Any]) -> int:
    uri = str((plain.get("storage") or {}).get("output_uri") or "")
    rate = WRITE_BYTES_PER_S["s3" if uri.startswith("s3://") else "pvc"]
    return max(GRACE_FLOOR_S, GRACE_STEP_S + math.ceil(checkpoint_bytes_per_node(plain) / rate))


# ---------------------------------------------------------------------------------------------- config
def _plain(value: Any) -> Any:
    """Plain containers from a DictConfig/ListConfig or a SimpleNamespace view (or the value itself)."""
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, SimpleNamespace):
        return dict(vars(value))
    return value


def _view(plain: dict[str, Any]) -> Any:
    """Attribute access (cfg.launcher.backend) over plain resolved data: rendering reads hundreds of values, and
    each DictConfig lookup costs tens of microseconds. Second-level mappings (env, pvcs, ...) stay dicts."""
    return SimpleNamespace(
        **{k: SimpleNamespace(**v) if isinstance(v, dict) else v for k, v in plain.items()}, _plain=plain
    )


_DIGEST = re.compile(r"@(sha256:[0-9a-f]{64})$")


def image_digest(image: str) -> str | None:
    """The ``sha256:...`` of an image given by digest (``repo@sha256:...``, with or without a tag), else None."""
    m = _DIGEST.search(image)
    return m.group(1) if m else None


def image_tag(image: str) -> str | None:
    """The tag of ``repo[:tag][@digest]``, None when there is none."""
    ref = image.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def config_hash(config_yaml: str) -> str:
    return hashlib.sha256(config_yaml.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ pods
def _secret_ref(ref: str) -> dict[str, str]:
    parts = split_secret_ref(ref)
    assert parts is not None, ref  # launcher_problems refused it
    return {"name": parts[0], "key": parts[1]}


def _env(cfg: DictConfig, name: str) -> list[dict[str, Any]]:
    launcher, hw = cfg.launcher, cfg.hardware
    env: list[dict[str, Any]] = [
        {"name": "MASTER_ADDR", "value": master_addr(launcher.backend, name)},
        {"name": "MASTER_PORT", "value": str(launcher.master_port)},
        {"name": "NNODES", "value": str(hw.nodes)},
        {"name": "NPROC_PER_NODE", "value": str(hw.nproc_per_node)},
    ]
    if BACKEND_TABLE[str(launcher.backend)].node_rank_env:  # else the operator's RANK (see container_args)
        env.append(
            {
                "name": "NODE_RANK",
                "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}},
            }
        )
    env.append({"name": "PYTHONUNBUFFERED", "value": "1"})
    env.extend({"name": k, "value": v} for k, v in CACHE_ENV.items())
    env.append({"name": "FRAMEWORK_JOB_NAME", "value": name})
    env.extend(BACKEND_TABLE[str(launcher.backend)].pod_env(cfg, name))

    # The profile's NCCL/EFA settings, then launcher.env (which overrides them by name).
    plain_env = {**(getattr(hw, "nccl_env", None) or {}), **(launcher.env or {})}
    env.extend(
        {"name": str(var), "value": "" if value is None else str(value)} for var, value in plain_env.items()
    )
    if launcher.hf_token_secret:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": _secret_ref(launcher.hf_token_secret)},
            }
        )
    for var, ref in (launcher.secret_env or {}).items():
        env.append({"name": str(var), "valueFrom": {"secretKeyRef": _secret_ref(ref)}})
    return env


def _env_from(launcher: DictConfig) -> list[dict[str, Any]]:
    names = ([launcher.s3_secret] if launcher.s3_secret else []) + list(launcher.env_from_secrets or [])
    return [{"secretRef": {"name": str(n)}} for n in dict.fromkeys(names)]


def _volumes(cfg: DictConfig, name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    launcher, hw = cfg.launcher, cfg.hardware
    volumes: list[dict[str, Any]] = [
        {
            "name": "config",
            "configMap": {"name": f"{name}-config", "items": [{"key": CONFIG_FILE, "path": CONFIG_FILE}]},
        },
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": str(hw.shm_size)}},
        {"name": "tmp", "emptyDir": {"sizeLimit": str(launcher.tmp_size)}},
        {"name": "cache", "emptyDir": {"sizeLimit": str(launcher.cache_size)}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": SHM_DIR},
        {"name": "tmp", "mountPath": TMP_DIR},
        {"name": "cache", "mountPath": CACHE_DIR},
    ]
    run_root = str(launcher.run_dir).rstrip("/")
    covered = False
    for claim, path in sorted(effective_pvcs(launcher).items()):
        path = str(path).rstrip("/")
        vol = dns_label(f"pvc-{claim}")
        volumes.append({"name": vol, "persistentVolumeClaim": {"claimName": str(claim)}})
        mounts.append({"name": vol, "mountPath": path})
        covered = covered or run_root == path or run_root.startswith(path + "/")
    if not covered:  # the run dir must be writable under a read-only root filesystem
        volumes.append({"name": "runs", "emptyDir": {}})
        mounts.append({"name": "runs", "mountPath": run_root})
    return volumes, mounts


_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$")
_FACTOR = {
    None: 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
}


def quantity(text: str) -> float | None:
    """A Kubernetes quantity ("96", "500m", "1152Gi") as a number, None when not one of these forms."""
    m = _QUANTITY.match(str(text).strip())
    return float(m.group(1)) * _FACTOR[m.group(2)] if m else None


def requested(hw: Any) -> dict[str, str]:
    """cpu and memory a pod requests: hardware.allocatable_fraction of the node's (millicores, MiB, floored)."""
    fraction = float(getattr(hw, "allocatable_fraction", 1.0) or 1.0)
    cpu_m = math.floor((quantity(str(hw.cpu)) or 0) * fraction * 1000)
    mem_mi = math.floor((quantity(str(hw.memory)) or 0) * fraction / 2**20)
    cpu = f"{cpu_m // 1000}" if cpu_m % 1000 == 0 else f"{cpu_m}m"
    return {"cpu": cpu, "memory": f"{mem_mi // 1024}Gi" if mem_mi % 1024 == 0 else f"{mem_mi}Mi"}


def _resources(hw: DictConfig) -> dict[str, Any]:
    amounts = requested(hw)
    if hw.resource_name and hw.gpus_per_node:
        amounts[str(hw.resource_name)] = str(hw.gpus_per_node)
    for name, count in (getattr(hw, "extra_resources", None) or {}).items():  # RDMA / EFA devices
        amounts[str(name)] = str(count)
    # requests = limits: Guaranteed QoS, so a training pod is the last to be evicted under node pressure.
    return {"requests": amounts, "limits": dict(amounts)}


METRICS_PORT_NAME = "metrics"
MULTUS_NETWORKS = "k8s.v1.cni.cncf.io/networks"


def prometheus_port(cfg: DictConfig) -> int | None:
    """The /metrics port when ``tracking.prometheus.enabled``, else None."""
    tracking = _plain(getattr(cfg, "tracking", None))
    prom = tracking.get("prometheus") if isinstance(tracking, dict) else None
    if not (isinstance(prom, dict) and prom.get("enabled")):
        return None
    return int(prom["port"])  # a fixed port: launcher_problems refuses 0


def pod_monitor(cfg: DictConfig, name: str, labels: Mapping[str, str]) -> Manifest:
    """A prometheus-operator PodMonitor scraping every pod of the job (launcher.prometheus_monitor=podmonitor)."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": _metadata(name, str(cfg.launcher.namespace), labels),
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/instance": labels["app.kubernetes.io/instance"]}},
            "podMetricsEndpoints": [{"port": METRICS_PORT_NAME, "path": "/metrics", "interval": "15s"}],
        },
    }


def _container(cfg: DictConfig, name: str, mounts: list[dict[str, Any]]) -> dict[str, Any]:
    launcher = cfg.launcher
    entry = BACKEND_TABLE[str(launcher.backend)]
    container: dict[str, Any] = {
        "name": entry.container,
        "image": str(launcher.image),
        "imagePullPolicy": str(launcher.image_pull_policy),
        "command": list(COMMAND),
        "args": torchrun_args(cfg) + container_args(cfg, name),
        "workingDir": TMP_DIR,
        "env": _env(cfg, name),
        "ports": [
            {
                "name": entry.port_name,
                "containerPort": int(launcher.master_port),
                "protocol": "TCP",
            }
        ],
        "resources": _resources(cfg.hardware),
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # The last log lines become the termination message of a failed container: the launcher shows them.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    env_from = _env_from(launcher)
    if env_from:
        container["envFrom"] = env_from
    return container


def _pod_template(cfg: DictConfig, name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    launcher, hw = cfg.launcher, cfg.hardware
    volumes, mounts = _volumes(cfg, name)
    container = _container(cfg, name, mounts)
    spec: dict[str, Any] = {
        "restartPolicy": "Never",  # the Job (or operator) decides about retries, by exit code
        "terminationGracePeriodSeconds": grace_period_s(cfg._plain),
        "automountServiceAccountToken": bool(
            launcher.service_account and launcher.mount_service_account_token
        ),
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": int(launcher.run_as_user),
            "runAsGroup": int(launcher.run_as_user),
            "fsGroup": int(launcher.fs_group),
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if BACKEND_TABLE[str(launcher.backend)].headless_service:
        spec["subdomain"] = name  # hostname <job>-<index> resolves under the headless Service <job>
    if launcher.service_account:
        spec["serviceAccountName"] = str(launcher.service_account)
    if hw.node_selector:
        spec["nodeSelector"] = {str(k): str(v) for k, v in hw.node_selector.items()}
    if hw.tolerations:
        spec["tolerations"] = _plain(hw.tolerations)
    if launcher.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": str(s)} for s in launcher.image_pull_secrets]
    spec.update(_extra(launcher, "pod_spec"))
    annotations = {"kubectl.kubernetes.io/default-container": container["name"]}
    port = prometheus_port(cfg)
    if port is not None:
        container["ports"].append({"name": METRICS_PORT_NAME, "containerPort": port, "protocol": "TCP"})
        if getattr(cfg.launcher, "prometheus_monitor", "annotations") == "annotations":
            annotations.update(
                {
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(port),
                    "prometheus.io/path": "/metrics",
                }
            )
    if getattr(launcher, "networks", None):  # Multus: extra NICs (RDMA, EFA-less multi-NIC) for NCCL
        annotations[MULTUS_NETWORKS] = ",".join(str(n) for n in launcher.networks)
    annotations.update({str(k): str(v) for k, v in (launcher.annotations or {}).items()})
    return {"metadata": {"labels": dict(labels), "annotations": annotations}, "spec": spec}


def _extra(launcher: DictConfig, key: str) -> dict[str, Any]:
    extra = _plain(launcher.extra) if launcher.extra else {}
    return dict(extra.get(key) or {})


# -------------------------------------------------------------------------------------- job-level objects
def _metadata(
    name: str, namespace: str, labels: Mapping[str, str], annotations: Mapping[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def _labels(
    cfg: DictConfig, name: str, *, sweep_id: str, job_index: int, chash: str, git_commit: str | None
) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": APP_NAME,
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": "training",
        "app.kubernetes.io/part-of": APP_NAME,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        f"{LABEL_PREFIX}run-name": label_value(str(cfg.run_name)),
        f"{LABEL_PREFIX}sweep-id": label_value(sweep_id),
        f"{LABEL_PREFIX}job-index": str(job_index),
        f"{LABEL_PREFIX}config-hash": chash,
    }
    if git_commit and LABEL_VALUE.match(git_commit) and len(git_commit) <= 63:
        labels[f"{LABEL_PREFIX}git-commit"] = git_commit
    digest = image_digest(str(cfg.launcher.image))
    if digest:  # a label value holds 63 characters: the digest's first 32 hex digits (the annotation has all)
        labels[f"{LABEL_PREFIX}image-digest"] = digest.replace(":", "-")[: len("sha256-") + 32]
    labels.update({str(k): str(v) for k, v in (cfg.launcher.labels or {}).items()})  # checked: _problems
    return labels


def render(
    cfg: DictConfig | dict[str, Any],
    *,
    job_name: str,
    sweep_id: str,
    job_index: int,
    git_commit: str | None,
    overrides: Sequence[str] = (),
) -> list[Manifest]:
    """Every object of one training job, in apply order (namespace set-up, ConfigMap, Service, the job).

    ``cfg`` is the job's composed config (its ``hydra`` node, if any, is dropped). Raises ConfigError naming the
    key for anything that cannot be rendered safely (a secret-looking plain env var, a bad Secret reference...).
    """
    plain = dict(cfg) if isinstance(cfg, dict) else resolved_config(cfg)  # a launcher passes what it resolved
    problems = plain_problems(plain)
    problems += [  # the overrides land in an annotation as written
        f"the override {o.split('=', 1)[0]}=... holds what looks like {what}; pass secrets by reference "
        "(launcher.secret_env / env_from_secrets)"
        for o in overrides
        if (what := value_looks_secret(o))
    ]
    if problems:
        raise ConfigError(problems)
    steps = _staging.hub_steps(plain)  # launcher.staging=all: Hub ids downloaded by an init step
    plain = _staging.pod_config(plain, steps)  # ... and the pods read the staged copies
    cfg = _view(plain)  # from here on, plain values
    if cfg.launcher.namespace is None:  # the launcher fills in the context's; a bare render: default
        cfg.launcher.namespace = "default"
    launcher, hw = cfg.launcher, cfg.hardware
    backend, ns, name = str(launcher.backend), str(launcher.namespace), job_name
    if not DNS_LABEL.match(name) or len(name) + len(_host_suffix(backend, int(hw.nodes))) > 63:
        raise ConfigError(f"job name {name!r} is not a DNS label short enough for its pod hostnames")
    text = config_yaml(plain)
    chash = config_hash(text)
    labels = _labels(cfg, name, sweep_id=sweep_id, job_index=job_index, chash=chash, git_commit=git_commit)
    annotations = {
        f"{LABEL_PREFIX}run-name": str(cfg.run_name),
        f"{LABEL_PREFIX}run-dir": pod_run_dir(cfg, name),
    }
    if overrides:
        annotations[f"{LABEL_PREFIX}overrides"] = " ".join(overrides)
    entry = BACKEND_TABLE[backend]
    if launcher.exclusive_topology and entry.exclusive_topology_annotation:
        annotations[entry.exclusive_topology_annotation] = str(launcher.exclusive_topology)
    annotations.update({str(k): str(v) for k, v in (launcher.job_annotations or {}).items()})
    digest = image_digest(str(launcher.image))
    if digest:
        annotations[f"{LABEL_PREFIX}image-digest"] = digest
    template = _pod_template(cfg, name, labels)

    objs: list[Manifest] = []
    if launcher.setup_namespace:
        podmonitor = prometheus_port(cfg) is not None and launcher.prometheus_monitor == "podmonitor"
        objs.extend(
            setup_objects(ns, backend, str(launcher.service_account or SETUP_NAME), podmonitor=podmonitor)
        )
    objs.append(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _metadata(f"{name}-config", ns, labels),
            "data": {CONFIG_FILE: text},
        }
    )
    if entry.headless_service:
        objs.append(headless_service(name, ns, labels, int(launcher.master_port), entry.port_name))
    spec = entry.job_spec(JobParts(cfg, name, template, labels))
    spec.update(_extra(launcher, "job_spec"))
    job = {
        "apiVersion": entry.api_version,
        "kind": entry.kind,
        "metadata": _metadata(name, ns, labels, annotations),
        "spec": spec,
    }
    _staging.add_init_steps(job, backend, steps)
    _kueue.apply(job, entry, launcher)  # queue label + suspended, priority, topology (no-op without them)
    objs.append(job)
    if launcher.setup_namespace:
        objs.append(network_policy(cfg, name, labels))
    if prometheus_port(cfg) is not None and getattr(launcher, "prometheus_monitor", "") == "podmonitor":
        objs.append(pod_monitor(cfg, name, labels))
    return objs


def headless_service(
    name: str, namespace: str, labels: Mapping[str, str], port: int, port_name: str
) -> Manifest:
    """Service <job> for the pods' hostnames <job>-<index>.<job> (backends whose controller makes none)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, namespace, labels),
        "spec": {
            "clusterIP": "None",  # headless: DNS answers with the pod IPs
            "publishNotReadyAddresses": True,  # rank 0 must resolve before any pod is Ready
            "selector": {JOB_NAME_LABEL: name},
            "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        },
    }


# ------------------------------------------------------------------------------------ namespace set-up
def launcher_rules(backend: str, *, podmonitor: bool = False) -> list[dict[str, Any]]:
    """The least the launcher needs in its namespace: manage every kind it creates, read pods, logs, events."""
    manage = ["create", "get", "list", "watch", "delete"]
    entry = BACKEND_TABLE[backend]
    core = ["configmaps", "services"] if entry.headless_service else ["configmaps"]
    extra = [{"apiGroups": ["monitoring.coreos.com"], "resources": ["podmonitors"], "verbs": manage}]
    return [
        {"apiGroups": [entry.group], "resources": [entry.plural], "verbs": manage},
        {"apiGroups": [""], "resources": core, "verbs": manage},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
        # setup_namespace also renders one NetworkPolicy per job, owned by (and deleted with) the job.
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": manage},
        *(extra if podmonitor else []),
    ]


def setup_objects(
    namespace: str, backend: str, service_account: str, *, podmonitor: bool = False
) -> list[Manifest]:
    """ServiceAccount + Role + RoleBinding for running the launcher inside the cluster (e.g. from CI)."""
    labels = {
        "app.kubernetes.io/name": APP_NAME,
        "app.kubernetes.io/component": "launcher",
        "app.kubernetes.io/part-of": APP_NAME,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _metadata(service_account, namespace, labels),
            "automountServiceAccountToken": False,  # pods that run the launcher opt in explicitly
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _metadata(SETUP_NAME, namespace, labels),
            "rules": launcher_rules(backend, podmonitor=podmonitor),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _metadata(SETUP_NAME, namespace, labels),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SETUP_NAME},
            "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
        },
    ]


NODELOCAL_DNS_CIDR = "169.254.20.10/32"  # NodeLocal DNSCache's default listen address


def network_policy(cfg: DictConfig, name: str, labels: Mapping[str, str]) -> Manifest:
    """The job's pods talk to each other and to DNS; other egress only to launcher.egress_cidrs."""
    peers = {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": name}}}
    dns_ports = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    egress: list[dict[str, Any]] = [
        {"to": [peers]},
        {"to": [{"namespaceSelector": {}}], "ports": dns_ports},  # cluster DNS, wherever it runs
        # NodeLocal DNSCache answers on a link-local address on each node, outside any pod selector.
        {"to": [{"ipBlock": {"cidr": NODELOCAL_DNS_CIDR}}], "ports": dns_ports},
    ]
    cidrs = [str(c) for c in cfg.launcher.egress_cidrs or []]
    # Endpoints the config names by IP (a MinIO at 10.0.0.5:9000) are let through as they are.
    cidrs += [
        f"{ip}/{32 if '.' in ip else 128}" for _, ip in endpoint_ips(cfg._plain) if f"{ip}/32" not in cidrs
    ]
    cidrs = list(dict.fromkeys(cidrs))
    if cidrs:
        egress.append({"to": [{"ipBlock": {"cidr": c}} for c in cidrs]})
    ingress: list[dict[str, Any]] = [{"from": [peers]}]
    tracking = _plain(getattr(cfg, "tracking", None))
    prometheus = tracking.get("prometheus") if isinstance(tracking, dict) else None
    if isinstance(prometheus, dict) and prometheus.get("enabled"):  # let a scraper reach /metrics
        ingress.append({"ports": [{"protocol": "TCP", "port": int(prometheus.get("port") or 9400)}]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(name, str(cfg.launcher.namespace), labels),
        "spec": {
            "podSelector": {"matchLabels": {"app.kubernetes.io/instance": name}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    }


# ------------------------------------------------------------------------------------------------ reading
def main_object(objs: Sequence[Manifest]) -> Manifest:
    """The job object (Job, JobSet, PyTorchJob, ...) among a job's objects."""
    return next(o for o in objs if o["kind"] in BY_KIND)


def pod_templates(obj: Manifest) -> list[dict[str, Any]]:
    """The pod templates of a job object (PyTorchJob: Master first)."""
    return BY_KIND[obj["kind"]].pod_templates(obj["spec"])


def run_dir_is_ephemeral(objs: Sequence[Manifest]) -> bool:
    """True when the pods' run directory is an emptyDir (gone with the pod) rather than a PVC."""
    return any(v["name"] == "runs" for v in pod_templates(main_object(objs))[0]["spec"]["volumes"])


# ------------------------------------------------------------------------------------------------ output
class _Dumper(_SafeDumper):  # type: ignore[misc,valid-type]
    """Safe YAML; multi-line strings (the config) as literal blocks so manifests.yaml stays readable. No anchors
    or aliases for objects used twice (a PyTorchJob's two pod templates): every tool reads plain YAML."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(objs: Iterable[Manifest]) -> str:
    """Multi-document YAML that ``kubectl apply -f`` accepts."""
    return yaml.dump_all(list(objs), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)
