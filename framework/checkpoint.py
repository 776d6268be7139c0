"""DeepSpeed checkpoints under ``<run>/checkpoints/step_<N>/`` with a ``latest`` marker written last.

A checkpoint exists only once ``latest`` names it: a crash mid-save leaves the previous one resumable.
Each rank also stores its RNG state, so dropout and sampling continue exactly after a resume.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

from framework import distributed as dist
from framework.errors import CheckpointError

log = logging.getLogger(__name__)
TAG_RE = re.compile(r"^step_(\d+)$")
LATEST = "latest"
MANIFEST = "manifest.json"


def tag_for(step: int) -> str:
    return f"step_{step}"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_latest(ckpt_root: Path) -> str | None:
    marker = ckpt_root / LATEST
    if not marker.is_file():
        return None
    tag = marker.read_text().strip()
    if not TAG_RE.match(tag) or not (ckpt_root / tag).is_dir():
        raise CheckpointError(
            f"{marker} names {tag!r} but {ckpt_root / tag} is missing; restore it, or start over with resume=none"
        )
    return tag


def save(engine: Any, ckpt_root: Path, step: int, client_state: dict[str, Any]) -> str:
    """Save every rank's shard, then (rank 0, after a barrier) the manifest and the ``latest`` marker."""
    import torch

    tag = tag_for(step)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    engine.save_checkpoint(str(ckpt_root), tag=tag, client_state=client_state, save_latest=False)
    torch.save(rng_state(), ckpt_root / tag / f"rng_rank{dist.rank()}.pt")
    dist.barrier()
    if dist.is_rank0():
        files = {
            str(p.relative_to(ckpt_root / tag)): p.stat().st_size
            for p in sorted((ckpt_root / tag).rglob("*"))
            if p.is_file()
        }
        _atomic_write(ckpt_root / tag / MANIFEST, json.dumps({"step": step, "files": files}, indent=1))
        _atomic_write(ckpt_root / LATEST, tag)
    dist.barrier()
    return tag


def verify(ckpt_root: Path, tag: str) -> None:
    """Every file the manifest lists is present with its size; otherwise the checkpoint cannot be trusted."""
    manifest = ckpt_root / tag / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(f"{ckpt_root / tag} has no {MANIFEST}: it was never committed; use resume=none")
    files = json.loads(manifest.read_text())["files"]
    bad = [
        name
        for name, size in files.items()
        if not (ckpt_root / tag / name).is_file() or (ckpt_root / tag / name).stat().st_size != size
    ]
    if bad:
        raise CheckpointError(f"checkpoint {ckpt_root / tag} is damaged: missing or truncated {bad[:5]}")


def load(engine: Any, ckpt_root: Path, tag: str) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG; return the client state (step, data position)."""
    import torch

    verify(ckpt_root, tag)
    try:
        path, client_state = engine.load_checkpoint(
            str(ckpt_root), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
    except (RuntimeError, KeyError, ValueError, AssertionError) as e:
        raise CheckpointError(
            f"checkpoint {ckpt_root / tag} does not fit this config ({type(e).__name__}: {str(e)[:300]}); "
            "resume with the config it was written with, or start over with resume=none"
        ) from e
    if path is None:
        raise CheckpointError(
            f"checkpoint {ckpt_root / tag} could not be loaded; use resume=none to start over"
        )
    rng_file = ckpt_root / tag / f"rng_rank{dist.rank()}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return dict(client_state or {})


def prune(ckpt_root: Path, keep_last: int) -> None:
    """Delete old checkpoints beyond ``keep_last``; never the one ``latest`` names (rank 0 only)."""
    if not dist.is_rank0() or keep_last <= 0:
        return
    latest = read_latest(ckpt_root)
    tags = sorted(
        (p.name for p in ckpt_root.iterdir() if p.is_dir() and TAG_RE.match(p.name)),
        key=lambda t: int(TAG_RE.match(t).group(1)),  # type: ignore[union-attr]
    )
    for tag in tags[:-keep_last]:
        if tag != latest:
            shutil.rmtree(ckpt_root / tag, ignore_errors=True)
