"""Every launcher-side problem of a ``launcher=ray`` config, as a list (empty when it can be submitted).

``framework.validate`` calls :func:`launcher_problems` in its one validation pass (a table keyed by
``launcher.name``), so a command line with several mistakes reports all of them in one ConfigError. Pure: no Ray,
no torch, no cluster. The checks of the other groups (``hardware.nodes >= 1`` ...) are theirs, not repeated here.
"""

from __future__ import annotations

import re
from typing import Any

from hydra_plugins.ray_launcher._scaling import quantity
from omegaconf import DictConfig, OmegaConf

from framework.secrets import name_looks_secret

ADDRESS = re.compile(r"^(auto|(https?|ray)://[A-Za-z0-9.\-\[\]:]+(:[0-9]{1,5})?/?)$")
CANCEL_ON_INTERRUPT = ("ask", "yes", "no")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, throw_on_missing=False)


def is_remote(uri: str | None) -> bool:
    from framework import storage

    return bool(uri) and storage.is_remote(str(uri))


def run_dir_problems(cfg: DictConfig) -> list[str]:
    """A multi-node Ray job writes checkpoints from every node: its run directory must be shared storage."""
    nodes = _get(cfg, "hardware.nodes")
    if not isinstance(nodes, int) or nodes <= 1:
        return []
    uri = _get(cfg, "storage.output_uri")
    if is_remote(uri) or _get(cfg, "launcher.run_dir_shared"):
        return []
    where = f"storage.output_uri={uri}" if uri else f"launcher.run_dir={_get(cfg, 'launcher.run_dir')}"
    return [
        f"hardware.nodes={nodes} with launcher=ray needs a run directory every Ray node shares, but {where} is a "
        "local path on each node; set storage=s3 storage.output_uri=s3://bucket/runs/<name>, or (if that path "
        "is an NFS/RWX volume mounted on every node) launcher.run_dir_shared=true"
    ]


def launcher_problems(cfg: DictConfig) -> list[str]:
    """Every problem of the ``launcher`` settings a Ray job uses, each naming the key and the fix."""
    problems: list[str] = []
    address = str(_get(cfg, "launcher.address"))
    if not ADDRESS.match(address):
        problems.append(
            f"launcher.address={address!r} is not a Ray address; use the Jobs API http://<host>:8265 (e.g. after "
            "`kubectl port-forward svc/<cluster>-head-svc 8265:8265`), ray://<host>:10001, or auto"
        )
    if _get(cfg, "launcher.dry_run") and address != "auto":
        # auto: the driver inside a cluster (a RayJob's entrypoint), which runs what a dry run rendered earlier
        problems.append(
            "launcher.dry_run=true: launcher=ray submits to a running cluster and has no dry run; check the "
            "config without submitting with --validate, or render a KubeRay RayJob with launcher=kubernetes "
            "launcher.backend=rayjob launcher.dry_run=true"
        )
    max_failures = _get(cfg, "launcher.max_failures")
    if isinstance(max_failures, int) and max_failures < -1:
        problems.append(f"launcher.max_failures={max_failures} must be >= 0 (or -1: unlimited restarts)")
    max_parallel = _get(cfg, "launcher.max_parallel")
    if isinstance(max_parallel, int) and max_parallel < 1:
        problems.append(f"launcher.max_parallel={max_parallel} must be >= 1")
    policy = _get(cfg, "launcher.cancel_on_interrupt")
    if policy not in CANCEL_ON_INTERRUPT:
        problems.append(
            f"launcher.cancel_on_interrupt={policy!r} is not valid; choose one of: {', '.join(CANCEL_ON_INTERRUPT)}"
        )
    fraction = _get(cfg, "launcher.ray_memory_fraction")
    if isinstance(fraction, int | float) and not 0.0 <= fraction <= 1.0:
        problems.append(f"launcher.ray_memory_fraction={fraction} must be in [0, 1] (0: no memory request)")
    if not str(_get(cfg, "launcher.ray_python") or "").strip():
        problems.append("launcher.ray_python is empty; name the cluster's interpreter, e.g. python")
    for key in ("hardware.cpu", "hardware.memory"):
        value = _get(cfg, key)
        if value is None:
            continue
        try:
            if quantity(value, key) <= 0 and key == "hardware.cpu":
                problems.append(f"{key}={value} must be > 0: each Ray Train worker takes a share of it")
        except ValueError as e:
            problems.append(str(e))
    env = _get(cfg, "launcher.env") or {}
    for name in env:
        if not ENV_NAME.match(str(name)):
            problems.append(f"launcher.env.{name}: not an environment variable name")
        elif name_looks_secret(str(name)) or str(name) == "RAY_AUTH_TOKEN":
            problems.append(
                f"launcher.env.{name} looks like a secret: a Ray job's runtime env is visible to anyone with the "
                "dashboard; give the cluster's pods the value from a Secret instead (secretKeyRef)"
            )
    for key in ("storage.output_uri", "launcher.run_dir"):
        value = _get(cfg, key)
        if value and not is_remote(value) and not str(value).removeprefix("file://").startswith("/"):
            problems.append(
                f"{key}={value} is a relative path, which the Ray cluster would resolve in its own working "
                "directory; give an absolute path (or an s3:// URI)"
            )
    problems += run_dir_problems(cfg)
    return problems
