"""Names, reserved keys and format rules that the renderer and the validator (``_problems``) share.

The bottom of the plugin's import graph: plain constants and pure string functions (the rendezvous variables come
from framework.distributed, the env contract's one home).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from framework.distributed import RENDEZVOUS_ENV  # the env contract's home (plain constants, no torch)

MANAGED_BY = "framework-kubernetes-launcher"
APP_NAME = "framework"
LABEL_PREFIX = "framework.io/"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
SETUP_NAME = "framework-launcher"  # ServiceAccount, Role and RoleBinding of launcher.setup_namespace

CONFIG_DIR = "/etc/framework"  # the ConfigMap's mount; every rank reads config.yaml from here
CONFIG_FILE = "config.yaml"
CACHE_DIR = "/cache"  # emptyDir: HOME, HF_HOME, Triton and torch-extension caches
TMP_DIR = "/tmp"
SHM_DIR = "/dev/shm"
RESERVED_MOUNTS = (CONFIG_DIR, CACHE_DIR, TMP_DIR, SHM_DIR)

CACHE_ENV = {
    "HOME": f"{CACHE_DIR}/home",
    "XDG_CACHE_HOME": CACHE_DIR,
    "HF_HOME": f"{CACHE_DIR}/huggingface",
    "TRITON_CACHE_DIR": f"{CACHE_DIR}/triton",
    "TORCH_EXTENSIONS_DIR": f"{CACHE_DIR}/torch_extensions",
    "FRAMEWORK_CACHE": f"{CACHE_DIR}/framework",
}
# Env the launcher or torchrun sets in every pod: launcher.env may not override them.
RESERVED_ENV = frozenset(
    {*RENDEZVOUS_ENV, *CACHE_ENV, "PYTHONUNBUFFERED", "FRAMEWORK_JOB_NAME", "HF_TOKEN"}
    | {"FRAMEWORK_CRASH_EXIT", "FRAMEWORK_RESTART_BUDGET", "FRAMEWORK_RUN_DIR"}
    | {"RANK", "WORLD_SIZE", "LOCAL_RANK"}
)

# Launcher fields that hold Secret *names* (references), never values.
SECRET_REFERENCE_KEYS = (
    "hf_token_secret",
    "s3_secret",
    "secret_env",
    "env_from_secrets",
    "image_pull_secrets",
    "ray_auth_secret",
)
EXTRA_KEYS = ("pod_spec", "job_spec")
# Labels every object gets from the launcher (and every key under LABEL_PREFIX): launcher.labels may not set them.
RESERVED_LABELS = frozenset(
    f"app.kubernetes.io/{k}" for k in ("name", "instance", "component", "part-of", "managed-by")
)
IMAGE_PULL_POLICIES = ("Always", "IfNotPresent", "Never")
CANCEL_ON_INTERRUPT = ("ask", "yes", "no")
PROMETHEUS_MONITORS = ("annotations", "podmonitor")

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_KEY_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
CIDR = re.compile(r"^[0-9a-fA-F:.]+/\d{1,3}$")


def short_hash(text: str, n: int = 6) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def dns_label(text: str, max_len: int = 63) -> str:
    """A DNS-1035 label (lowercase, starts with a letter, <= max_len) made from any text.

    Text that is too long keeps its start and gets a hash of the whole text, so distinct long names stay distinct.
    """
    s = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]+", "-", text.lower())).strip("-")
    if not s or not s[0].isalpha():
        s = f"r-{s}".rstrip("-")
    if len(s) > max_len:
        s = f"{s[: max_len - 7].rstrip('-')}-{short_hash(text)}"
    return s


def label_value(text: str) -> str:
    """A valid label value (<= 63 chars of [A-Za-z0-9-_.], alphanumeric at both ends) made from any text."""
    s = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-_.")
    if len(s) > 63:
        s = f"{s[:56].rstrip('-_.')}-{short_hash(text)}"
    return s


def split_secret_ref(ref: str) -> tuple[str, str] | None:
    """``'secret-name:key'`` as (name, key), or None when it is not of that form."""
    name, sep, item = str(ref).partition(":")
    if not sep or not DNS_SUBDOMAIN.match(name) or not item:
        return None
    return name, item


def hydra_run_dir(cfg: Any, name: str) -> str:
    """The job's Hydra run dir inside its pods: <launcher.run_dir>/<job name>."""
    return f"{str(cfg.launcher.run_dir).rstrip('/')}/{name}"


def pod_run_dir(cfg: Any, name: str) -> str:
    """Where the run directory lives as seen from a pod: storage.output_uri, else <launcher.run_dir>/<job>."""
    return str(cfg.storage.output_uri or hydra_run_dir(cfg, name))


def effective_pvcs(launcher: Any) -> dict[str, str]:
    """Every PVC the pods mount: launcher.run_dir_pvc at launcher.run_dir, then launcher.pvcs (claim -> path)."""
    get = launcher.get if isinstance(launcher, dict) else lambda k: getattr(launcher, k, None)
    pvcs = {str(get("run_dir_pvc")): str(get("run_dir"))} if get("run_dir_pvc") else {}
    pvcs.update({str(k): str(v) for k, v in (get("pvcs") or {}).items()})
    return pvcs


# Oldest Kubernetes the manifests are written for: podFailurePolicy is GA from 1.31 (podReplacementPolicy is on
# by default since 1.29); the 1.28 schemas reject the pod failure policy's rules. Tested against its schemas.
MIN_KUBERNETES = "1.31"
