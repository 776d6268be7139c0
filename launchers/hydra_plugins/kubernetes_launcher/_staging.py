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
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

KEYS = (("model", "pretrained"), ("dataset", "path"), ("dataset", "val_path"))
MARKER = "STAGED"
DEFAULT_DIR = "framework-staging"
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


def staging_root(cfg: Any) -> str | None:
    launcher, storage_cfg = cfg.launcher, cfg.storage
    root = getattr(launcher, "staging_uri", None)
    if root:
        return str(root).rstrip("/")
    out = str(getattr(storage_cfg, "output_uri", None) or "")
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
    root = staging_root(cfg)
    if root is None:
        keys = ", ".join(k for k, _ in inputs)
        raise ConfigError(
            f"{keys}: a path on this machine, which the pods cannot read. Set storage.output_uri=s3://... (or "
            "launcher.staging_uri) to stage it there, or put it on a PVC (launcher.pvcs) and give its path in the pod"
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
