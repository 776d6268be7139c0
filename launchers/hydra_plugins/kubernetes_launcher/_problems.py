"""Every launcher-side problem of a ``launcher=kubernetes`` config, as a list (empty when it renders safely).

``framework.validate`` calls :func:`launcher_problems` in its one validation pass (a table keyed by
``launcher.name``), so a command line with several mistakes reports all of them in one ConfigError; ``render()``
calls it too, so the public rendering API never builds objects from a config it would refuse. Pure: no torch,
no I/O, no cluster. The checks of the other groups (``hardware.nodes >= 1`` ...) are theirs, not repeated here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra_plugins.kubernetes_launcher import _kueue, _trainjob
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
    split_secret_ref,
)
from omegaconf import DictConfig, OmegaConf

from framework.errors import ConfigError
from framework.secrets import name_looks_secret


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
    problems += _kueue.problems(launcher) + _trainjob.problems(launcher)
    return problems


def _settings(launcher: Mapping[str, Any], hw: Mapping[str, Any]) -> list[str]:
    problems = []
    if launcher.get("backend") not in BACKENDS:  # the table itself: a new entry is valid at once
        problems.append(
            f"launcher.backend={launcher.get('backend')!r} is not valid; choose one of: {', '.join(BACKENDS)}"
        )
    if not DNS_LABEL.match(str(launcher.get("namespace"))):
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
