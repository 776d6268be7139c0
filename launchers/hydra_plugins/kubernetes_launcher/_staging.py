"""Staging: a model or dataset given as a path on this machine is uploaded once to the run's S3 storage before
the job is submitted, and the job's config points at the uploaded copy, so every pod reads it from there.

    python -m framework launcher=kubernetes storage=s3 storage.output_uri=s3://runs/team-a/exp1 \\
        model.pretrained=./Llama-3.2-1B dataset=jsonl dataset.path=./train.jsonl
    # -> model.pretrained=s3://runs/framework-staging/model/<sha256:16>/Llama-3.2-1B
    #    dataset.path=s3://runs/framework-staging/dataset/<sha256:16>/train.jsonl

Content-addressed: the destination is named by the sha256 of the content (file names, sizes and bytes), and a
``STAGED`` marker is written last, so a second submit of the same content (another sweep job, a rerun) uploads
nothing, and a changed file gets a new address. Uploads show a progress bar (bytes). The root is
``launcher.staging_uri``, else ``<bucket of storage.output_uri>/framework-staging``.

What is staged: ``model.pretrained``, ``dataset.path`` and ``dataset.val_path`` when they name an existing local
file or directory that is not under a ``launcher.pvcs`` mount (that is a path inside the pods). URIs, hub ids
and pod paths are left alone. ``launcher.dry_run=true`` computes the addresses and uploads nothing.

Hub ids (``launcher.staging=all``): ``model.pretrained=org/name`` (with ``model.revision``) and
``dataset.path`` / ``dataset.val_path`` = ``hf://datasets/org/name[@revision][/file]`` are downloaded on the
cluster, once, by ``python -m framework.stage`` as an init step of the job, to
``<root>/hub/<model|dataset>/<org>--<name>/<revision>`` (the cache key: id + revision; ``STAGED`` marker
last), and the pods' config points there. Per backend:

    indexed_job, jobset   an init container on every pod: node rank 0 downloads, the others wait for the marker
    pytorchjob            the same; the Master template downloads, the Worker template waits
    trainjob              spec.initializer.model / .dataset (storageUri hf://...), run by the runtime's
                          model-initializer / dataset-initializer replicated jobs (the chart's runtime with
                          trainingRuntime.initializers=true runs framework.stage there; node dependsOn them)
    rayjob                not supported (launcher_problems says so)

The root: ``launcher.staging_uri`` (``s3://...`` or a path on a ``launcher.pvcs`` / ``run_dir_pvc`` mount),
else ``<bucket of storage.output_uri>/framework-staging``, else ``<launcher.run_dir>/.staging`` on the run-dir
PVC. Local paths always go to S3 (staging_uri when it is s3://, else the output bucket): the launcher cannot
write into a PVC from here.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from framework.lookup import dotted_get
from framework.pretrained import is_hub_id

log = logging.getLogger(__name__)

KEYS = (("model", "pretrained"), ("dataset", "path"), ("dataset", "val_path"))
MARKER = "STAGED"
DEFAULT_DIR = "framework-staging"
PVC_DIR = ".staging"  # under launcher.run_dir when the run dir's PVC is the target
MODES = ("off", "local", "all")
STAGE_COMMAND = ["python", "-m", "framework.stage"]
HF_DATASET = re.compile(r"^hf://datasets/([^/@]+/[^/@]+)(?:@([^/]+))?(?:/(.*))?$")
STAGING_PATCH_MANAGER = "framework.io/staging"  # runtimePatches entry: the initializer pods mount the PVC
TRAINJOB_INITIALIZERS = {"model": "model-initializer", "dataset": "dataset-initializer"}
_CHUNK = 1 << 20


@dataclass
class Staged:
    key: str  # model.pretrained
    local: str
    uri: str
    uploaded_bytes: int  # 0: already there


_hash_cache: dict[tuple[str, int, int], str] = {}


def _files(path: Path) -> list[tuple[str, Path]]:
    if path.is_file():
        return [(path.name, path)]
    return sorted(
        (str(p.relative_to(path)), p) for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )


def content_hash(path: Path) -> str:
    """sha256 over (relative name, size, bytes) of every file, first 16 hex digits."""
    files = _files(path)
    stamp = (str(path.resolve()), len(files), max((p.stat().st_mtime_ns for _, p in files), default=0))
    if stamp in _hash_cache:
        return _hash_cache[stamp]
    h = hashlib.sha256()
    for rel, p in files:
        h.update(f"{rel}\0{p.stat().st_size}\0".encode())
        with p.open("rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    digest = h.hexdigest()[:16]
    _hash_cache[stamp] = digest
    return digest


@dataclass(frozen=True)
class Target:
    root: str  # s3://bucket/prefix, or a path inside the pods
    mount: str | None = None  # the PVC's mount path (None: S3)
    claim: str | None = None


def _pvc_of(path: str, launcher: Any) -> tuple[str, str] | None:
    from hydra_plugins.kubernetes_launcher._names import effective_pvcs

    for claim, mount in sorted(effective_pvcs(launcher).items(), key=lambda kv: -len(str(kv[1]))):
        m = str(mount).rstrip("/")
        if path == m or path.startswith(m + "/"):
            return str(claim), m
    return None


def target(cfg: Any) -> Target | None:
    """Where inputs are staged (see the module docstring); None when nothing can hold them."""
    launcher, storage_cfg = dotted_get(cfg, "launcher"), dotted_get(cfg, "storage")
    explicit = str(dotted_get(launcher, "staging_uri") or "").rstrip("/")
    if explicit:
        if "://" in explicit:
            return Target(explicit)
        pvc = _pvc_of(explicit, launcher)
        return Target(explicit, pvc[1], pvc[0]) if pvc else None
    out = str(dotted_get(storage_cfg, "output_uri") or "")
    if out.startswith("s3://"):
        return Target("s3://" + out[len("s3://") :].split("/", 1)[0] + "/" + DEFAULT_DIR)
    run_dir = str(dotted_get(launcher, "run_dir") or "").rstrip("/")
    pvc = _pvc_of(run_dir, launcher) if dotted_get(launcher, "run_dir_pvc") and run_dir else None
    return Target(f"{run_dir}/{PVC_DIR}", pvc[1], pvc[0]) if pvc else None


def staging_root(cfg: Any) -> str | None:
    """The S3 root local paths are uploaded to: launcher.staging_uri when it is s3://, else the output bucket's
    (also when Hub ids go to a PVC: the launcher cannot write into a PVC from here). None: no S3 at all."""
    explicit = str(dotted_get(cfg, "launcher.staging_uri") or "")
    if "://" in explicit:
        return explicit.rstrip("/")
    out = str(dotted_get(cfg, "storage.output_uri") or "")
    if out.startswith("s3://"):
        return "s3://" + out[len("s3://") :].split("/", 1)[0] + "/" + DEFAULT_DIR
    return None


def _under_pvc(path: str, cfg: Any) -> bool:
    from hydra_plugins.kubernetes_launcher._names import effective_pvcs

    mounts = [str(m).rstrip("/") for m in effective_pvcs(cfg.launcher).values()]
    return any(path == m or path.startswith(m + "/") for m in mounts)


def local_inputs(cfg: Any) -> list[tuple[str, Path]]:
    """(config key, local path) of every input that exists here and that pods could not read as it is."""
    found = []
    for group, key in KEYS:
        node = getattr(cfg, group, None)
        value = getattr(node, key, None) if node is not None else None
        if not value or "://" in str(value) or _under_pvc(str(value), cfg):
            continue
        path = Path(os.path.expanduser(str(value)))
        if path.exists():
            found.append((f"{group}.{key}", path))
    return found


def _upload(path: Path, dest: str) -> int:
    from tqdm import tqdm

    from framework import storage

    files = _files(path)
    total = sum(p.stat().st_size for _, p in files)
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"staging {path.name}", leave=False) as bar:
        for rel, p in files:
            storage.put_file(p, storage.join(dest, rel))
            bar.update(p.stat().st_size)
    storage.write_text_atomic(storage.join(dest, MARKER), f"{total}\n")
    return total


def stage(cfg: DictConfig, *, upload: bool = True) -> list[Staged]:
    """Upload the config's local inputs (once per content) and point the config at them, in place."""
    from framework import storage
    from framework.errors import ConfigError

    inputs = local_inputs(cfg)
    if not inputs:
        return []
    if str(getattr(cfg.launcher, "staging", "local")) == "off":
        return []
    root = staging_root(cfg)
    if root is None:
        keys = ", ".join(k for k, _ in inputs)
        t = target(cfg)
        why = (
            f" (the staging target {t.root} is a PVC, which the launcher cannot write from here)" if t else ""
        )
        raise ConfigError(
            f"{keys}: a path on this machine, which the pods cannot read{why}. Set storage.output_uri=s3://... (or "
            "launcher.staging_uri=s3://...) to stage it there, or put it on a PVC (launcher.pvcs) and give its "
            "path in the pod"
        )
    done = []
    for key, path in inputs:
        kind = key.split(".")[0]
        base = storage.join(root, kind, content_hash(path))
        uri = storage.join(base, path.name) if path.is_file() else base
        sent = 0
        if upload and not storage.exists(storage.join(base, MARKER)):
            sent = _upload(path, base)
            log.info("Staged %s (%d bytes) to %s", path, sent, uri)
        elif upload:
            log.info("%s already staged at %s", path, uri)
        with open_dict(cfg):
            OmegaConf.update(cfg, key, uri, merge=False)
        done.append(Staged(key, str(path), uri, sent))
    return done


# ------------------------------------------------------------------------------------------------ Hub ids
@dataclass(frozen=True)
class HubStep:
    """One Hub repo the job's init step downloads, and where the pods then read it."""

    kind: str  # model | dataset (the repo type)
    repo: str
    revision: str | None
    dest: str  # <root>/hub/<kind>/<org>--<name>/<revision>
    keys: tuple[tuple[str, str], ...]  # (config key, the value the pods get)
    mount: str | None
    claim: str | None

    @property
    def name(self) -> str:
        return f"stage-{self.kind}"


def hub_dest_name(repo: str, revision: str | None) -> str:
    """``<org>--<name>/<revision>``: the cache key of a Hub repo under the staging root (id + revision)."""
    return f"{repo.replace('/', '--')}/{(revision or 'main').replace('/', '--')}"


def hub_inputs(plain: Mapping[str, Any]) -> list[tuple[str, str, str, str | None, str]]:
    """(config key, kind, repo, revision, path inside the repo) of every Hub input of a resolved config."""
    found = []
    model = plain.get("model") or {}
    pretrained = str(model.get("pretrained") or "")
    if pretrained.startswith("hf://") and not pretrained.startswith("hf://datasets/"):
        pretrained = pretrained.removeprefix("hf://").removeprefix("models/")
    if is_hub_id(pretrained):
        found.append(("model.pretrained", "model", pretrained, model.get("revision") or None, ""))
    dataset = plain.get("dataset") or {}
    for key in ("path", "val_path"):
        m = HF_DATASET.match(str(dataset.get(key) or ""))
        if m:
            found.append((f"dataset.{key}", "dataset", m.group(1), m.group(2), m.group(3) or ""))
    return found


def hub_steps(plain: Mapping[str, Any]) -> list[HubStep]:
    """The init steps of a resolved config (none unless launcher.staging=all and a target exists)."""
    launcher = plain.get("launcher") or {}
    if str(launcher.get("staging", "local")) != "all":
        return []
    t = target(plain)
    if t is None:
        return []
    steps: dict[tuple[str, str, str | None], HubStep] = {}
    for key, kind, repo, revision, sub in hub_inputs(plain):
        dest = f"{t.root}/hub/{kind}/{hub_dest_name(repo, revision)}"
        value = f"{dest}/{sub}" if sub else dest
        k = (kind, repo, revision)
        prev = steps.get(k)
        keys = (prev.keys if prev else ()) + ((key, value),)
        steps[k] = HubStep(kind, repo, revision, dest, keys, t.mount, t.claim)
    return list(steps.values())


def step_name(step: HubStep, index: int) -> str:
    return step.name if index == 0 else f"{step.name}-{index + 1}"


def pod_config(plain: dict[str, Any], steps: list[HubStep]) -> dict[str, Any]:
    """The resolved config the pods get: every staged key points at its staged copy."""
    if not steps:
        return plain
    out = copy.deepcopy(plain)
    for step in steps:
        for key, value in step.keys:
            group, field = key.split(".")
            out[group][field] = value
            if key == "model.pretrained":
                out["model"]["revision"] = None  # a directory holds one revision (pretrained refuses both)
    return out


def _stage_args(step: HubStep, node_rank: str) -> list[str]:
    args = [f"--repo={step.repo}", f"--repo-type={step.kind}", f"--dest={step.dest}"]
    args += [f"--revision={step.revision}"] if step.revision else []
    args += [f"--key={','.join(k for k, _ in step.keys)}"]
    args += [f"--mount={step.mount}"] if step.mount else []
    return [*args, f"--node-rank={node_rank}"]


def init_containers(steps: list[HubStep], main: Mapping[str, Any], node_rank: str) -> list[dict[str, Any]]:
    """One init container per step: the training container's image, env, mounts and profile; no GPUs."""
    out = []
    by_kind: dict[str, int] = {}
    requests = {
        k: v for k, v in (main.get("resources") or {}).get("requests", {}).items() if k in ("cpu", "memory")
    }
    for step in steps:
        n = by_kind.get(step.kind, 0)
        by_kind[step.kind] = n + 1
        c: dict[str, Any] = {
            "name": step_name(step, n),
            "image": main["image"],
            "imagePullPolicy": main.get("imagePullPolicy", "IfNotPresent"),
            "command": list(STAGE_COMMAND),
            "args": _stage_args(step, node_rank),
            "workingDir": main.get("workingDir", "/tmp"),
            "env": copy.deepcopy(main.get("env") or []),
            "resources": {"requests": dict(requests), "limits": dict(requests)},
            "volumeMounts": copy.deepcopy(main.get("volumeMounts") or []),
            "securityContext": copy.deepcopy(main.get("securityContext") or {}),
        }
        if main.get("envFrom"):
            c["envFrom"] = copy.deepcopy(main["envFrom"])
        out.append(c)
    return out


def _fail_on_permanent(job_spec: dict[str, Any], names: list[str]) -> None:
    """Exit 2 of a staging init container (unknown id, no access, no PVC) fails the job at once, as the trainer's."""
    rules = job_spec.setdefault("podFailurePolicy", {}).setdefault("rules", [])
    for name in names:
        rules.insert(
            0, {"action": "FailJob", "onExitCodes": {"containerName": name, "operator": "In", "values": [2]}}
        )


def _add_to(job_spec: dict[str, Any], pod: dict[str, Any], steps: list[HubStep], node_rank: str) -> None:
    inits = init_containers(steps, pod["spec"]["containers"][0], node_rank)
    pod["spec"]["initContainers"] = inits + list(pod["spec"].get("initContainers") or [])
    if "podFailurePolicy" in job_spec:
        _fail_on_permanent(job_spec, [c["name"] for c in inits])


def add_to_indexed_job(job_spec: dict[str, Any], steps: list[HubStep]) -> None:
    """Init containers on every pod of an Indexed Job spec: node rank 0 downloads, the others wait."""
    _add_to(job_spec, job_spec["template"], steps, "$(NODE_RANK)")


def add_to_replicas(templates: dict[str, dict[str, Any]], steps: list[HubStep]) -> None:
    """Init containers per replica type (``{"0": template}`` downloads, other keys only wait for the marker);
    each template is copied first (replica types may share one)."""
    for rank, holder in templates.items():
        holder["template"] = template = copy.deepcopy(holder["template"])
        _add_to({}, template, steps, rank)


def add_init_steps(job: dict[str, Any], backend: str, steps: list[HubStep]) -> None:
    """Put the Hub staging steps into the job object, the way its controller runs them (the backend table's
    ``stage_init``; module docstring)."""
    from hydra_plugins.kubernetes_launcher._backends import BACKENDS

    init = BACKENDS[backend].stage_init
    if steps and init is not None:
        init(job["spec"], steps)


def trainjob_initializer(spec: dict[str, Any], steps: list[HubStep]) -> None:
    """spec.initializer.{model,dataset} of a TrainJob (+ a runtimePatches entry mounting a PVC target)."""
    from hydra_plugins.kubernetes_launcher import _trainjob

    trainer_env = spec["trainer"]["env"]
    keep = {
        "HF_TOKEN",
        "HOME",
        "XDG_CACHE_HOME",
        "HF_HOME",
        "FRAMEWORK_CACHE",
        *(k for k, _ in _trainjob.S3_KEYS),
    }
    shared = [copy.deepcopy(e) for e in trainer_env if e["name"] in keep]
    initializer: dict[str, Any] = {}
    patches = []
    for step in steps:
        env = [
            {"name": "FRAMEWORK_STAGE_DEST", "value": step.dest},
            {"name": "FRAMEWORK_STAGE_KEY", "value": ",".join(k for k, _ in step.keys)},
        ]
        if step.revision:
            env.append({"name": "FRAMEWORK_STAGE_REVISION", "value": step.revision})
        if step.mount:
            env.append({"name": "FRAMEWORK_STAGE_MOUNT", "value": step.mount})
        prefix = "hf://datasets/" if step.kind == "dataset" else "hf://"
        initializer[step.kind] = {"storageUri": prefix + step.repo, "env": env + shared}
        if step.claim:  # the initializer pod mounts the staging PVC too
            from hydra_plugins.kubernetes_launcher._names import dns_label

            vol = dns_label(f"pvc-{step.claim}")
            rj_name = TRAINJOB_INITIALIZERS[step.kind]
            patches.append(
                {
                    "name": rj_name,
                    "template": {
                        "spec": {
                            "template": {
                                "spec": {
                                    "volumes": [
                                        {"name": vol, "persistentVolumeClaim": {"claimName": step.claim}}
                                    ],
                                    "containers": [
                                        {
                                            "name": rj_name,
                                            "volumeMounts": [{"name": vol, "mountPath": step.mount}],
                                        }
                                    ],
                                }
                            }
                        }
                    },
                }
            )
    spec["initializer"] = initializer
    if patches:  # an entry of its own: the launcher's entry patches the node replicated job only
        spec["runtimePatches"].append(
            {
                "manager": STAGING_PATCH_MANAGER,
                "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": patches}}},
            }
        )


# ----------------------------------------------------------------------------------------------- problems
def problems(plain: Mapping[str, Any]) -> list[str]:
    """launcher.staging / launcher.staging_uri, each problem naming the key and the fix."""
    launcher = plain.get("launcher") or {}
    mode = str(launcher.get("staging", "local"))
    out = []
    if mode not in MODES:
        return [f"launcher.staging={mode!r}; choose {' | '.join(MODES)}"]
    explicit = str(launcher.get("staging_uri") or "")
    if explicit and "://" not in explicit and not _pvc_of(explicit.rstrip("/"), launcher):
        out.append(
            f"launcher.staging_uri={explicit} is neither s3://... nor under a PVC the pods mount; mount one there "
            f"(launcher.pvcs.<claim>={explicit.rstrip('/')}) or give an s3:// URI"
        )
    elif explicit and "://" in explicit and not explicit.startswith("s3://"):
        out.append(f"launcher.staging_uri={explicit}: only s3:// or a path on a PVC mount can be staged to")
    if mode != "all" or out:
        return out
    hub = hub_inputs(plain)
    if not hub:
        return out
    keys = ", ".join(k for k, *_ in hub)
    from hydra_plugins.kubernetes_launcher._backends import BACKENDS

    backend = str(launcher.get("backend"))
    entry = BACKENDS.get(backend)
    if target(plain) is None:
        out.append(
            f"launcher.staging=all stages {keys} but there is no staging target: set storage.output_uri=s3://..., "
            "launcher.staging_uri, or launcher.run_dir_pvc"
        )
    if entry is not None and entry.stage_init is None:
        out.append(
            f"launcher.staging=all: backend={backend} has no init step; use backend=jobset or launcher.staging=local"
        )
    if (
        entry is not None
        and entry.kind == "TrainJob"
        and len({(r, v) for _, kind, r, v, _ in hub if kind == "dataset"}) > 1
    ):
        out.append(
            "launcher.staging=all: a TrainJob has one dataset initializer, but dataset.path and dataset.val_path "
            "name different Hub repos; use one repo or backend=jobset"
        )
    return out


def runtime_problems(objs: Any, runtime: Mapping[str, Any]) -> list[str]:
    """Preflight: a TrainJob's spec.initializer needs the runtime's <kind>-initializer replicated job (else
    Trainer ignores it and the pods find nothing staged)."""
    name = str((runtime.get("metadata") or {}).get("name"))
    have = {
        rj.get("name")
        for rj in (((runtime.get("spec") or {}).get("template") or {}).get("spec") or {}).get(
            "replicatedJobs"
        )
        or []
    }
    out = []
    for obj in objs:
        for kind in sorted(
            ((obj.get("spec") or {}).get("initializer") or {}) if obj.get("kind") == "TrainJob" else {}
        ):
            step = TRAINJOB_INITIALIZERS[kind]
            if step not in have:
                out.append(
                    f"{runtime.get('kind')} {name} has no {step} step for launcher.staging=all: install "
                    "dockerfiles/chart with trainingRuntime.initializers=true (launcher.runtime=framework-torch), "
                    "or use launcher.staging=local or another backend"
                )
    return out
