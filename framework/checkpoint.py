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
import threading
import time
from pathlib import Path
from typing import Any

from framework import distributed as dist
from framework.errors import CheckpointError, ConfigError

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


def save(
    engine: Any,
    ckpt_root: Path,
    step: int,
    client_state: dict[str, Any],
    *,
    meta: dict[str, Any],
    commit: bool = True,
) -> str:
    """Save every rank's shard, then (rank 0, after a barrier) the manifest and, if ``commit``, ``latest``.

    For a remote run directory the local copy is only staging (``commit=False``); RemoteSync commits remotely.
    """
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
        doc = {"step": step, "meta": meta, "files": files}
        _atomic_write(ckpt_root / tag / MANIFEST, json.dumps(doc, indent=1))
        if commit:
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


def load(engine: Any, ckpt_root: Path, tag: str, *, expect: dict[str, Any]) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG; return the client state (step, data position).

    ``expect`` (model, recipe, LoRA rank, world size, ZeRO stage) is checked against what the checkpoint was
    written with before anything is loaded, so a changed config fails clearly instead of loading garbage.
    """
    import torch

    verify(ckpt_root, tag)
    saved = json.loads((ckpt_root / tag / MANIFEST).read_text()).get("meta", {})
    diff = {k: (saved.get(k), v) for k, v in expect.items() if saved.get(k) != v}
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs run {b!r}" for k, (a, b) in diff.items())
        raise ConfigError(
            f"checkpoint {ckpt_root / tag} does not fit this run ({detail}); resume with the config it was "
            "written with, point resume= at another checkpoint, or start over with resume=none"
        )
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


class RemoteSync:
    """Mirrors local checkpoints to a remote run directory, overlapping the upload with training.

    Every node's local rank 0 uploads what its node wrote in a background thread. The commit (manifest, then
    ``latest``) happens on rank 0 only once every node reports its upload finished, which the training loop
    learns from the one collective it already runs per step; so an upload never stalls a step, and a preempted
    or killed upload never moves ``latest``.
    """

    def __init__(self, local_root: Path, remote_root: str) -> None:
        self.local_root = local_root
        self.remote_root = remote_root
        self.tag: str | None = None  # uploaded or uploading, not yet committed
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.upload_s = 0.0

    def start(self, tag: str) -> None:
        self.tag = tag
        self._error = None
        if dist.local_rank() != 0:
            return

        def upload() -> None:
            from framework import storage

            t0 = time.perf_counter()
            try:
                storage.upload_dir(self.local_root / tag, storage.join(self.remote_root, tag))
            except BaseException as e:  # noqa: BLE001 - re-raised in the training thread by check()
                self._error = e
            self.upload_s = time.perf_counter() - t0

        self._thread = threading.Thread(target=upload, name=f"upload-{tag}", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def failed(self) -> bool:
        return self._error is not None

    def raise_error(self) -> None:
        if self._error is not None:
            raise self._error
        from framework.storage import StorageError

        raise StorageError(f"checkpoint {self.tag} upload to {self.remote_root} failed on another node")

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def commit(self, keep_last: int) -> None:
        """Rank 0, once every node's upload finished: write the manifest of what the store holds, then latest."""
        from framework import storage

        tag, self.tag = self.tag, None
        if tag is None or not dist.is_rank0():
            return
        remote_tag = storage.join(self.remote_root, tag)
        doc = json.loads((self.local_root / tag / MANIFEST).read_text())
        # List what the store holds (every node's shards), not just what this node wrote.
        doc["files"] = {k: v for k, v in storage.manifest(remote_tag).items() if k != MANIFEST}
        storage.write_text_atomic(storage.join(remote_tag, MANIFEST), json.dumps(doc, indent=1))
        storage.write_text_atomic(storage.join(self.remote_root, LATEST), tag)
        log.info("Checkpoint %s committed to %s", tag, self.remote_root)
        prune_remote(self.remote_root, keep_last, latest=tag)

    def sync(self, keep_last: int) -> None:
        """Blocking: wait for this node's upload, agree with every rank that all finished, then commit."""
        self.wait()
        failed = dist.all_reduce_max([1.0 if self.failed else 0.0])[0]
        if failed:
            self.raise_error()
        self.commit(keep_last)
        dist.barrier()


def prune_remote(remote_root: str, keep_last: int, latest: str) -> None:
    from framework import storage

    if keep_last <= 0:
        return
    tags = sorted(
        (n for n in storage.listdir(remote_root) if TAG_RE.match(n)),
        key=lambda t: int(TAG_RE.match(t).group(1)),  # type: ignore[union-attr]
    )
    for tag in tags[:-keep_last]:
        if tag != latest:
            storage.remove(storage.join(remote_root, tag), recursive=True, missing_ok=True)


def fetch_remote(remote_root: str, local_root: Path, tag: str | None = None) -> str | None:
    """Download a committed checkpoint into ``local_root``; return its tag. ``tag``: which one (default: the
    one remote ``latest`` names; None when there is none).

    Local rank 0 of every node downloads; the others wait at the barrier.
    """
    from framework import storage

    chosen = tag is not None
    if tag is None:
        marker = storage.join(remote_root, LATEST)
        if storage.exists(marker):
            tag = storage.read_text(marker).strip()
            if not TAG_RE.match(tag):
                raise CheckpointError(
                    f"{marker} holds {tag!r}, not a checkpoint tag; fix it or use resume=none"
                )
    elif not TAG_RE.match(tag):
        raise CheckpointError(f"{tag!r} is not a checkpoint tag (step_<N>)")
    if tag is not None and dist.local_rank() == 0:
        target = local_root / tag
        shutil.rmtree(target, ignore_errors=True)
        remote_tag = storage.join(remote_root, tag)
        if not storage.exists(storage.join(remote_tag, MANIFEST)):
            # A checkpoint the user named that is not there is a config error (exit 2, never retried).
            raise (ConfigError if chosen else CheckpointError)(
                f"{remote_tag} has no {MANIFEST}: it does not exist or was never committed; "
                "resume from another checkpoint, or use resume=auto or resume=none"
            )
        storage.download_dir(remote_tag, target)
        _atomic_write(local_root / LATEST, tag)
    dist.barrier()
    return tag
