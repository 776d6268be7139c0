"""Every launcher-side problem of a ``launcher=kubernetes`` config, as a list (empty when it renders safely).

``framework.validate`` calls :func:`launcher_problems` in its one validation pass (a table keyed by
``launcher.name``), so a command line with several mistakes reports all of them in one ConfigError; ``render()``
calls it too, so the public rendering API never builds objects from a config it would refuse. Pure: no torch,
no I/O, no cluster. The checks of the other groups (``hardware.nodes >= 1`` ...) are theirs, not repeated here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from hydra_plugins.kubernetes_launcher import _kueue, _staging, _trainjob
from hydra_plugins.kubernetes_launcher._backends import BACKENDS
from hydra_plugins.kubernetes_launcher._names import (
    CANCEL_ON_INTERRUPT,
    CIDR,
    DNS_LABEL,
    DNS_SUBDOMAIN,
    ENV_NAME,
    EXTRA_KEYS,
    IMAGE_PULL_POLICIES,
    LABEL_KEY_NAME,
    LABEL_PREFIX,
    LABEL_VALUE,
    PROMETHEUS_MONITORS,
    RESERVED_ENV,
    RESERVED_LABELS,
    RESERVED_MOUNTS,
    SECRET_REFERENCE_KEYS,
    effective_pvcs,
    split_secret_ref,
)
from hydra_plugins.ray_launcher import _rayjob
from omegaconf import DictConfig, OmegaConf

from framework.errors import ConfigError
from framework.secrets import find_secret_values, name_looks_secret


def launcher_problems(cfg: DictConfig | Mapping[str, Any]) -> list[str]:
    """Every problem of the config's launcher settings (and of what they render), each naming the key and fix.

    ``cfg``: the composed config (DictConfig, with or without its ``hydra`` node) or its resolved plain form.
    A config that does not resolve (a mandatory value unset) yields no launcher problems: the framework's pass
    reports the missing key.
    """
    if OmegaConf.is_config(cfg):
        from framework.config import resolved

        try:
            plain = resolved(cfg)  # type: ignore[arg-type]
        except ConfigError:
            return []
    else:
        plain = {k: v for k, v in dict(cfg).items() if k != "hydra"}
    return plain_problems(plain)


def plain_problems(plain: Mapping[str, Any]) -> list[str]:
    """:func:`launcher_problems` of a resolved plain config (what ``render()`` already has)."""
    launcher = plain.get("launcher") or {}
    hw = plain.get("hardware") or {}
    problems: list[str] = []
    problems += _settings(launcher, hw)
    problems += _secret_values(plain)
    problems += _env(launcher)
    problems += _volumes(launcher)
    problems += _extra(launcher)
    problems += _labels(launcher)
    problems += _prometheus(plain.get("tracking") or {})
    problems += _kueue.problems(launcher) + _trainjob.problems(launcher) + _rayjob.problems(plain)
    problems += _staging.problems(plain)
    named = {p.split(" ", 1)[0] for p in problems}  # a key refused by its name is not refused again by shape
    problems += [p for p in _secret_shapes(plain) if p.split(" ", 1)[0] not in named]
    problems += _durable_run_dir(plain)
    problems += _egress(plain)
    problems += _interconnect(launcher, hw)
    return problems


def _secret_shapes(plain: Mapping[str, Any]) -> list[str]:
    """A value shaped like a credential lands in the ConfigMap, the env or an annotation: refuse it by key."""
    return [
        f"{key} holds what looks like {what}; values are written into the job's manifests. Keep it in a "
        "Kubernetes Secret and pass it by reference (launcher.secret_env={VAR: 'secret-name:key'}, "
        "launcher.env_from_secrets, or launcher.s3_secret for S3 credentials)"
        for key, what in find_secret_values(dict(plain))
    ]


def run_dir_is_durable(plain: Mapping[str, Any]) -> bool:
    """The pods' run dir outlives them: an s3:// storage.output_uri, or launcher.run_dir on a PVC."""
    launcher = plain.get("launcher") or {}
    if str((plain.get("storage") or {}).get("output_uri") or "").startswith("s3://"):
        return True
    root = str(launcher.get("run_dir") or "").rstrip("/")
    mounts = [str(p).rstrip("/") for p in effective_pvcs(launcher).values()]
    return any(root == m or root.startswith(m + "/") for m in mounts)


def _durable_run_dir(plain: Mapping[str, Any]) -> list[str]:
    launcher = plain.get("launcher") or {}
    if int(launcher.get("backoff_limit") or 0) == 0 or run_dir_is_durable(plain):
        return []
    return [
        f"launcher.backoff_limit={launcher.get('backoff_limit')} allows retries, but the pods' run dir "
        f"{launcher.get('run_dir')} is an emptyDir: every retry would restart from step 0. Keep it durable: "
        "storage.output_uri=s3://<bucket>/<path>, or a PVC at the run dir: launcher.run_dir_pvc=<claim> (the "
        "chart's is framework-outputs); or launcher.backoff_limit=0 to run without retries"
    ]


def external_endpoints(plain: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(config key, host) of every service outside the cluster the pods will call, from the config."""
    found: list[tuple[str, str]] = []
    env = {
        **((plain.get("hardware") or {}).get("nccl_env") or {}),
        **((plain.get("launcher") or {}).get("env") or {}),
    }
    s3_keys = [
        k
        for k in (
            "storage.output_uri",
            "model.pretrained",
            "model.tokenizer",
            "dataset.path",
            "dataset.val_path",
        )
        if str(_get(plain, k) or "").startswith("s3://")
    ]
    if s3_keys:
        endpoint = env.get("AWS_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL_S3")
        found.append(
            (
                s3_keys[0],
                urlsplit(str(endpoint)).hostname or str(endpoint) if endpoint else "s3.amazonaws.com",
            )
        )
    tracking = plain.get("tracking") or {}
    backends = set(tracking.get("backends") or [])
    mlflow = tracking.get("mlflow") or {}
    uri = str(mlflow.get("tracking_uri") or "")
    if (mlflow.get("enabled") or "mlflow" in backends) and uri.startswith(("http://", "https://")):
        found.append(("tracking.mlflow.tracking_uri", urlsplit(uri).hostname or uri))
    wandb = tracking.get("wandb") or {}
    if (wandb.get("enabled") or "wandb" in backends) and wandb.get("mode") not in ("offline", "disabled"):
        found.append(("tracking.wandb", "api.wandb.ai"))
    for k in ("model.pretrained", "model.tokenizer", "dataset.tokenizer"):
        value = str(_get(plain, k) or "")
        if _HUB_ID.match(value) and env.get("HF_HUB_OFFLINE") not in ("1", "true"):
            found.append((k, "huggingface.co"))
            break
    return found


def endpoint_ips(plain: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The external endpoints given as IP addresses (the NetworkPolicy lets those through by itself)."""
    out = []
    for key, host in external_endpoints(plain):
        try:
            out.append((key, str(ipaddress.ip_address(host))))
        except ValueError:
            continue
    return out


def _egress(plain: Mapping[str, Any]) -> list[str]:
    launcher = plain.get("launcher") or {}
    if not launcher.get("setup_namespace") or launcher.get("egress_cidrs"):
        return []
    by_ip = {key for key, _ in endpoint_ips(plain)}
    blocked = [(k, h) for k, h in external_endpoints(plain) if k not in by_ip]
    return [
        f"launcher.setup_namespace=true renders a NetworkPolicy that allows only the job's pods and DNS, but "
        f"{key} needs {host}: set launcher.egress_cidrs to its address range (e.g. [10.0.0.0/8] for an "
        "in-cluster MinIO, [0.0.0.0/0] for anywhere)"
        for key, host in blocked
    ]


def _interconnect(launcher: Mapping[str, Any], hw: Mapping[str, Any]) -> list[str]:
    problems = []
    for name, count in (hw.get("extra_resources") or {}).items():
        if not _RESOURCE_NAME.match(str(name)):
            problems.append(
                f"hardware.extra_resources.{name}: not an extended resource name like rdma/ib or "
                "vpc.amazonaws.com/efa"
            )
        elif not isinstance(count, int) or count < 1:
            problems.append(f"hardware.extra_resources.{name}={count} must be a count >= 1")
    for var in hw.get("nccl_env") or {}:
        if not ENV_NAME.match(str(var)) or var in RESERVED_ENV:
            problems.append(f"hardware.nccl_env.{var}: not a variable the profile may set")
    # hardware.cpu, .memory and .allocatable_fraction: their domains in the schema (framework.domains) check them
    for net in launcher.get("networks") or []:
        if not _NETWORK.match(str(net)):
            problems.append(
                f"launcher.networks: {net!r} is not a NetworkAttachmentDefinition like ib-net, "
                "other-ns/ib-net or ib-net@net1"
            )
    if launcher.get("exclusive_topology"):
        entry = BACKENDS.get(str(launcher.get("backend")))
        if entry is not None and entry.exclusive_topology_annotation is None:
            problems.append(
                f"launcher.exclusive_topology is a JobSet placement; launcher.backend={entry.name} has none "
                "(use launcher.topology_required with Kueue's topology-aware scheduling, or backend=jobset)"
            )
    return problems


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")  # org/name on the hub
_RESOURCE_NAME = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_NETWORK = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?(@[A-Za-z0-9_.-]+)?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$")


def _get(plain: Mapping[str, Any], dotted: str) -> Any:
    node: Any = plain
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _settings(launcher: Mapping[str, Any], hw: Mapping[str, Any]) -> list[str]:
    problems = []
    if launcher.get("backend") not in BACKENDS:  # the table itself: a new entry is valid at once
        problems.append(
            f"launcher.backend={launcher.get('backend')!r} is not valid; choose one of: {', '.join(BACKENDS)}"
        )
    if launcher.get("namespace") is not None and not DNS_LABEL.match(str(launcher.get("namespace"))):
        problems.append(
            f"launcher.namespace={launcher.get('namespace')!r} is not a valid namespace name (a DNS label)"
        )
    if launcher.get("image_pull_policy") not in IMAGE_PULL_POLICIES:
        problems.append(
            f"launcher.image_pull_policy={launcher.get('image_pull_policy')!r}; choose "
            f"{', '.join(IMAGE_PULL_POLICIES)}"
        )
    if launcher.get("cancel_on_interrupt") not in CANCEL_ON_INTERRUPT:
        problems.append(
            f"launcher.cancel_on_interrupt={launcher.get('cancel_on_interrupt')!r}; choose "
            f"{', '.join(CANCEL_ON_INTERRUPT)}"
        )
    if launcher.get("prometheus_monitor") not in PROMETHEUS_MONITORS:
        problems.append(
            f"launcher.prometheus_monitor={launcher.get('prometheus_monitor')!r}; choose "
            f"{', '.join(PROMETHEUS_MONITORS)}"
        )
    port = launcher.get("master_port")
    if not isinstance(port, int) or not 1 <= port <= 65535:
        problems.append(f"launcher.master_port={port} is not a port (1..65535)")
    for key in ("backoff_limit", "ttl_after_finished_s", "termination_grace_s", "max_parallel"):
        value = launcher.get(key)
        if isinstance(value, int) and value < (1 if key == "max_parallel" else 0):
            problems.append(f"launcher.{key}={value} must be >= {1 if key == 'max_parallel' else 0}")
    deadline = launcher.get("active_deadline_s")
    if isinstance(deadline, int) and deadline < 1:
        problems.append(f"launcher.active_deadline_s={deadline} must be >= 1 (or null for no limit)")
    if hw.get("gpus_per_node") and not hw.get("resource_name"):
        problems.append(
            "hardware.gpus_per_node is set but hardware.resource_name is null (e.g. nvidia.com/gpu)"
        )
    for cidr in launcher.get("egress_cidrs") or []:
        if not CIDR.match(str(cidr)):
            problems.append(f"launcher.egress_cidrs: {cidr!r} is not a CIDR like 10.0.0.0/8")
    return problems


def _secret_values(plain: Mapping[str, Any]) -> list[str]:
    """A config key named like a secret that holds a value would land in the job's ConfigMap."""
    found: list[str] = []
    skip = {f"launcher.{k}" for k in SECRET_REFERENCE_KEYS} | {"launcher.env"}  # launcher.env: see _env

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                full = f"{path}.{key}" if path else str(key)
                if full in skip:
                    continue
                if isinstance(value, str) and value and name_looks_secret(str(key)):
                    found.append(full)
                walk(value, full)
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")

    walk(plain, "")
    return [
        f"{key} looks like a secret and would be written into the job's ConfigMap; keep the value in a "
        "Kubernetes Secret and pass it as env: launcher.secret_env={VAR: 'secret-name:key'}"
        for key in found
    ]


def _env(launcher: Mapping[str, Any]) -> list[str]:
    problems = []
    for var, _value in (launcher.get("env") or {}).items():
        key = f"launcher.env.{var}"
        if name_looks_secret(str(var)):
            problems.append(
                f"{key} looks like a secret: plain env values are written into the manifest. Store it in a "
                f"Secret and use launcher.secret_env={{{var}: 'secret-name:key'}} (or launcher.env_from_secrets)"
            )
        elif var in RESERVED_ENV:
            problems.append(f"{key}: {var} is set by the launcher; remove it from launcher.env")
        elif not ENV_NAME.match(str(var)):
            problems.append(f"{key}: {var!r} is not a valid environment variable name")
    for var, ref in (launcher.get("secret_env") or {}).items():
        key = f"launcher.secret_env.{var}"
        if var in RESERVED_ENV - {"HF_TOKEN"}:
            problems.append(f"{key}: {var} is set by the launcher; pick another name")
        elif not ENV_NAME.match(str(var)):
            problems.append(f"{key}: {var!r} is not a valid environment variable name")
        if split_secret_ref(ref) is None:
            problems.append(f"{key}={ref!r} must name a Secret and a key in it as 'secret-name:key'")
    token = launcher.get("hf_token_secret")
    if token and split_secret_ref(token) is None:
        problems.append(
            f"launcher.hf_token_secret={token!r} must name a Secret and a key in it as 'secret-name:key'"
        )
    names = ([launcher["s3_secret"]] if launcher.get("s3_secret") else []) + list(
        launcher.get("env_from_secrets") or []
    )
    for n in names:
        if not DNS_SUBDOMAIN.match(str(n)):
            problems.append(
                f"launcher.s3_secret / launcher.env_from_secrets: {n!r} is not a valid Secret name"
            )
    for n in launcher.get("image_pull_secrets") or []:
        if not DNS_SUBDOMAIN.match(str(n)):
            problems.append(f"launcher.image_pull_secrets: {n!r} is not a valid Secret name")
    return problems


def _volumes(launcher: Mapping[str, Any]) -> list[str]:
    problems = []
    pvcs = effective_pvcs(launcher)
    paths = [str(p).rstrip("/") for p in pvcs.values()]
    for path in sorted({p for p in paths if paths.count(p) > 1}):
        claims = sorted(c for c, p in pvcs.items() if str(p).rstrip("/") == path)
        problems.append(
            f"launcher.run_dir_pvc / launcher.pvcs: {', '.join(claims)} are all mounted at {path}; mount one "
            f"claim there (for the run dir: launcher.run_dir_pvc=<claim>, and no launcher.pvcs entry at {path})"
        )
    if launcher.get("run_dir_pvc") and not DNS_SUBDOMAIN.match(str(launcher["run_dir_pvc"])):
        problems.append(
            f"launcher.run_dir_pvc={launcher['run_dir_pvc']!r} is not a valid PersistentVolumeClaim name"
        )
    run_dir = str(launcher.get("run_dir"))
    if not run_dir.startswith("/"):
        problems.append(f"launcher.run_dir={run_dir!r} must be an absolute path inside the pod")
    for claim, path in sorted((launcher.get("pvcs") or {}).items()):
        path = str(path).rstrip("/")
        key = f"launcher.pvcs.{claim}"
        if not DNS_SUBDOMAIN.match(str(claim)):
            problems.append(f"{key}: {claim!r} is not a valid PersistentVolumeClaim name")
        if not path.startswith("/") or any(path == r or path.startswith(r + "/") for r in RESERVED_MOUNTS):
            problems.append(
                f"{key}={path!r}: mount path must be absolute and not under {', '.join(RESERVED_MOUNTS)}"
            )
    return problems


def _extra(launcher: Mapping[str, Any]) -> list[str]:
    extra = launcher.get("extra") or {}
    problems = []
    unknown = sorted(set(extra) - set(EXTRA_KEYS))
    if unknown:
        problems.append(
            f"launcher.extra: unknown key(s) {', '.join(unknown)}; valid: {', '.join(EXTRA_KEYS)}"
        )
    for key in EXTRA_KEYS:
        if extra.get(key) is not None and not isinstance(extra[key], Mapping):
            problems.append(f"launcher.extra.{key} must be a mapping of spec fields")
    return problems


def _labels(launcher: Mapping[str, Any]) -> list[str]:
    problems = []
    for key, value in (launcher.get("labels") or {}).items():
        key, value = str(key), str(value)
        prefix, _, last = key.rpartition("/")
        if key in RESERVED_LABELS or key.startswith(LABEL_PREFIX):
            problems.append(f"launcher.labels.{key}: reserved for the launcher")
        elif (prefix and not DNS_SUBDOMAIN.match(prefix)) or len(last) > 63 or not LABEL_KEY_NAME.match(last):
            problems.append(f"launcher.labels.{key}: not a valid label key")
        elif len(value) > 63 or not LABEL_VALUE.match(value):
            problems.append(
                f"launcher.labels.{key}={value!r}: not a valid label value (<= 63 of [A-Za-z0-9-_.])"
            )
    return problems


def _prometheus(tracking: Mapping[str, Any]) -> list[str]:
    prom = tracking.get("prometheus") if isinstance(tracking, Mapping) else None
    if not (isinstance(prom, Mapping) and prom.get("enabled")):
        return []
    port = int(prom.get("port") or 0)
    if not 0 < port < 65536:
        return [f"tracking.prometheus.port={port}: pods need a fixed port for scraping; set e.g. 9400"]
    return []
