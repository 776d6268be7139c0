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
from framework.errors import ConfigError

log = logging.getLogger(__name__)
TAG_RE = re.compile(r"^step_(\d+)$")
LATEST = "latest"
BEST = "best"  # names the checkpoint with the lowest eval loss (train.keep_best); pruning never deletes it
MANIFEST = "manifest.json"


def tag_for(step: int) -> str:
    return f"step_{step}"


def _atomic_write(path: Path, text: str) -> None:
    """Readers see the old file or the new one, on disk before the call returns (``latest`` is the commit)."""
    from framework import storage

    storage.write_text_atomic(path, text)


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


DIGEST = "xxh3_128"  # ~5 GB/s on one core (sha256: ~0.3 GB/s), so checksums stay cheap for large checkpoints
_CHUNK = 8 << 20
DAMAGED_PREFIX = "damaged-"  # a damaged checkpoint is moved aside under this name, never deleted


def file_digest(path: Path) -> str:
    import xxhash

    h = xxhash.xxh3_128()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with path.open("rb") as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def describe_files(tag_dir: Path) -> dict[str, dict[str, Any]]:
    """Size and checksum of every file of one checkpoint (the manifest itself excluded)."""
    return {
        str(p.relative_to(tag_dir)): {"size": p.stat().st_size, DIGEST: file_digest(p)}
        for p in sorted(tag_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def _step(tag: str) -> int:
    m = TAG_RE.match(tag)
    return int(m.group(1)) if m else -1


def _tags_newest_first(names: list[str]) -> list[str]:
    return sorted((n for n in names if TAG_RE.match(n)), key=_step, reverse=True)


def _manifest_problems(doc: Any) -> tuple[list[str], dict[str, tuple[int, str | None]]]:
    """Problems with the manifest's own shape, and its files as name -> (size, checksum or None)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict):
        return [f"{MANIFEST} is malformed (no 'files' table)"], {}
    files: dict[str, tuple[int, str | None]] = {}
    bad: list[str] = []
    for name, entry in doc["files"].items():
        size = entry.get("size") if isinstance(entry, dict) else entry  # older manifests: name -> size
        digest = entry.get(DIGEST) if isinstance(entry, dict) else None
        if (
            not isinstance(size, int)
            or isinstance(size, bool)
            or size < 0
            or not isinstance(digest, str | None)
        ):
            bad.append(name)
        else:
            files[str(name)] = (size, digest)
    if bad or not isinstance(doc.get("step"), int):
        what = f"entries {bad[:3]}" if bad else "'step'"
        return [f"{MANIFEST} is malformed (wrong types in {what})"], files
    return [], files


def _summarize(problems: list[str], limit: int = 4) -> str:
    more = f"; and {len(problems) - limit} more" if len(problems) > limit else ""
    return "; ".join(problems[:limit]) + more


def damage(ckpt_root: Path, tag: str, *, checksums: bool = True) -> list[str]:
    """What is wrong with checkpoint ``tag`` (empty: intact): every file the manifest lists is present with its
    size and (``checksums``) its checksum."""
    tag_dir = ckpt_root / tag
    if not tag_dir.is_dir():
        return [f"{tag_dir} does not exist"]
    manifest = tag_dir / MANIFEST
    if not manifest.is_file():
        return [f"it has no {MANIFEST} (never committed, or the manifest was deleted)"]
    try:
        doc = json.loads(manifest.read_bytes())
    except (ValueError, OSError) as e:
        return [f"{MANIFEST} is unreadable ({type(e).__name__}: {str(e)[:80]})"]
    problems, files = _manifest_problems(doc)
    for name, (size, digest) in files.items():
        path = tag_dir / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif (have := path.stat().st_size) != size:
            problems.append(f"{name} is truncated or changed ({have} bytes; the manifest says {size})")
        elif checksums and digest is not None and file_digest(path) != digest:
            problems.append(f"{name} does not match its checksum (corrupted)")
    return problems


def _agree(problems: list[str]) -> list[str]:
    """Every rank's verdict on one checkpoint: damaged if any node found it damaged."""
    if dist.all_reduce_max([1.0 if problems else 0.0])[0] and not problems:
        return ["damaged on another node (see that node's log)"]
    return problems


def _verify_here(ckpt_root: Path, tag: str) -> list[str]:
    """Checksums are computed once per node (local rank 0); the verdict is shared by all ranks."""
    return _agree(damage(ckpt_root, tag) if dist.local_rank() == 0 else [])


def require_intact(ckpt_root: Path, tag: str, chosen_by: str) -> None:
    """A checkpoint the user named must be intact: there is no other one to fall back to (exit 2)."""
    problems = _verify_here(ckpt_root, tag)
    if problems:
        raise ConfigError(
            f"{chosen_by}: checkpoint {ckpt_root / tag} is damaged: {_summarize(problems)}. Name another "
            "checkpoint (resume=<step> or resume=<checkpoint dir>), or start over with resume=none"
        )


def _marker(ckpt_root: Path) -> tuple[str | None, str | None]:
    """(the tag ``latest`` names, what is wrong with ``latest``); (None, None) when there is no marker."""
    marker = ckpt_root / LATEST
    if not os.path.lexists(marker):
        return None, None
    if marker.is_dir():
        return None, f"{marker} is a directory, not a marker file"
    if not marker.exists():
        return None, f"{marker} is a dangling link"
    try:
        tag = marker.read_bytes().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        return None, f"{marker} is unreadable ({type(e).__name__})"
    if not tag:
        return None, f"{marker} is empty"
    if not TAG_RE.match(tag):
        return None, f"{marker} holds {tag[:40]!r}, not a checkpoint tag (step_<N>)"
    if not (ckpt_root / tag).is_dir():
        return None, f"{marker} names {tag}, which does not exist"
    return tag, None


def _candidates(latest: str | None, committed: list[str]) -> list[str]:
    """Newest first: the one ``latest`` names, then older committed ones. With no usable ``latest`` every
    committed checkpoint (one with a manifest) is a candidate; a save killed before its manifest never is."""
    if latest is None:
        return committed
    return [latest, *(t for t in committed if _step(t) < _step(latest))]


def _choose(
    where: str,
    latest: str | None,
    latest_problem: str | None,
    candidates: list[str],
    inspect: Any,
) -> tuple[str | None, dict[str, list[str]]]:
    """The first intact candidate and the damage found in the ones skipped before it. ConfigError (exit 2)
    when checkpoints exist but none is intact."""
    if latest_problem:
        log.warning("%s; looking for the newest intact checkpoint", latest_problem)
    damaged: dict[str, list[str]] = {}
    for tag in candidates:
        problems = inspect(tag)
        if not problems:
            if damaged or latest_problem:
                log.warning("Resuming from %s, the newest intact checkpoint in %s", tag, where)
            return tag, damaged
        damaged[tag] = problems
        log.warning("Checkpoint %s in %s is damaged, skipped: %s", tag, where, _summarize(problems))
    if not damaged and not latest_problem and latest is None:
        return None, {}  # no checkpoint at all: a fresh start
    found = "; ".join(f"{t}: {_summarize(p, 2)}" for t, p in damaged.items()) or "no committed checkpoint"
    raise ConfigError(
        f"no intact checkpoint to resume from in {where} ({latest_problem + '; ' if latest_problem else ''}"
        f"{found}). Nothing was deleted. Start over with resume=none, or name a checkpoint to resume from "
        "with resume=<step> or resume=<checkpoint dir or URI>"
    )


def newest_intact(ckpt_root: Path, *, move_damaged: bool = False) -> str | None:
    """The checkpoint ``resume=auto`` continues from: the one ``latest`` names when intact, else the newest
    intact older one (warning what is damaged); None when there is no checkpoint at all.

    ``move_damaged``: this run's own directory, where a damaged checkpoint is renamed ``damaged-step_<N>`` (so
    neither pruning nor a later save at the same step replaces it; nothing is deleted). ``latest`` is left as
    it is: the next save rewrites it.
    """
    if not ckpt_root.is_dir():
        if os.path.lexists(ckpt_root):
            raise ConfigError(f"{ckpt_root} is not a directory; move it away, or start over with resume=none")
        return None
    latest, problem = _marker(ckpt_root)
    committed = [t for t in _tags_newest_first([p.name for p in ckpt_root.iterdir()])
                 if (ckpt_root / t / MANIFEST).exists()]  # fmt: skip
    tag, damaged = _choose(str(ckpt_root), latest, problem, _candidates(latest, committed),
                           lambda t: _verify_here(ckpt_root, t))  # fmt: skip
    if move_damaged and damaged and dist.is_rank0():
        for bad in damaged:
            dest = ckpt_root / f"{DAMAGED_PREFIX}{bad}"
            n = 1
            while os.path.lexists(dest):
                dest, n = ckpt_root / f"{DAMAGED_PREFIX}{bad}.{n}", n + 1
            os.replace(ckpt_root / bad, dest)
            log.warning("Moved the damaged checkpoint %s to %s (kept for inspection)", bad, dest)
    dist.barrier()
    return tag


def read_latest(ckpt_root: Path) -> str | None:
    """The tag ``latest`` names when it is usable (no verification); None otherwise."""
    return _marker(ckpt_root)[0]


def save(
    engine: Any,
    ckpt_root: Path,
    step: int,
    client_state: dict[str, Any],
    *,
    meta: dict[str, Any],
    config: dict[str, Any] | None = None,
    commit: bool = True,
) -> str:
    """Save every rank's shard, then (rank 0, after a barrier) the manifest (size and checksum of every file,
    the compatibility ``meta``, the resolved ``config``) and, if ``commit``, ``latest``.

    For a remote run directory the local copy is only staging (``commit=False``); RemoteSync commits remotely.
    """
    import torch

    tag = tag_for(step)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    engine.save_checkpoint(str(ckpt_root), tag=tag, client_state=client_state, save_latest=False)
    torch.save(rng_state(), ckpt_root / tag / f"rng_rank{dist.rank()}.pt")
    dist.barrier()
    if dist.is_rank0():
        doc = {"step": step, "meta": meta, "config": config, "files": describe_files(ckpt_root / tag)}
        _atomic_write(ckpt_root / tag / MANIFEST, json.dumps(doc, indent=1))
        if commit:
            _atomic_write(ckpt_root / LATEST, tag)
    dist.barrier()
    return tag


def recorded(ckpt_root: Path, tag: str) -> dict[str, Any]:
    """The manifest of a verified checkpoint."""
    doc = json.loads((ckpt_root / tag / MANIFEST).read_text())
    return doc if isinstance(doc, dict) else {}


def load(engine: Any, ckpt_root: Path, tag: str, *, expect: dict[str, Any]) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG of a verified checkpoint; return the client state (step,
    data position).

    ``expect`` (model, recipe, LoRA rank, world size, ZeRO stage) is checked against what the checkpoint was
    written with before anything is loaded, so a changed config fails clearly instead of loading garbage.
    """
    import pickle

    import torch

    saved = recorded(ckpt_root, tag).get("meta") or {}
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
        rng_file = ckpt_root / tag / f"rng_rank{dist.rank()}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False))
    except (RuntimeError, KeyError, ValueError, AssertionError, EOFError, pickle.UnpicklingError) as e:
        # The files are verified, so what fails here is the config they are loaded into: permanent (exit 2).
        raise ConfigError(
            f"checkpoint {ckpt_root / tag} does not fit this config ({type(e).__name__}: {str(e)[:300]}); "
            "resume with the config it was written with, or start over with resume=none"
        ) from e
    if path is None:
        raise ConfigError(f"checkpoint {ckpt_root / tag} could not be loaded; use resume=none to start over")
    return dict(client_state or {})


def read_best(ckpt_root: Path) -> str | None:
    """The tag ``best`` names, if any (only a name: export checks that it exists)."""
    marker = ckpt_root / BEST
    tag = marker.read_text().strip() if marker.is_file() else ""
    return tag if TAG_RE.match(tag) else None


def write_best(ckpt_root: Path, tag: str) -> None:
    if dist.is_rank0():
        _atomic_write(ckpt_root / BEST, tag)


def prune(ckpt_root: Path, keep_last: int) -> None:
    """Delete old checkpoints beyond ``keep_last``; never the one ``latest`` or ``best`` names (rank 0 only)."""
    if not dist.is_rank0() or keep_last <= 0:
        return
    latest = read_latest(ckpt_root)
    best = read_best(ckpt_root)
    tags = sorted(
        (p.name for p in ckpt_root.iterdir() if p.is_dir() and TAG_RE.match(p.name)),
        key=lambda t: int(TAG_RE.match(t).group(1)),  # type: ignore[union-attr]
    )
    for tag in tags[:-keep_last]:
        if tag not in (latest, best):
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
        self.best: str | None = None  # to become the store's ``best`` once ``tag`` commits (mark_best)
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

    def mark_best(self, tag: str) -> None:
        """Make ``tag`` the store's ``best``: at once if it is committed, else right after its commit (as
        ``latest``, the marker never names a checkpoint whose upload has not committed). Rank 0 writes it."""
        from framework import storage

        if tag == self.tag:  # still uploading (or not yet committed): commit() writes it after latest
            self.best = tag
            return
        self.best = None
        if dist.is_rank0():
            storage.write_text_atomic(storage.join(self.remote_root, BEST), tag)

    def commit(self, keep_last: int) -> None:
        """Rank 0, once every node's upload finished: write the manifest of what the store holds, then latest."""
        from framework import storage

        tag, self.tag = self.tag, None
        best, self.best = (self.best if self.best == tag else None), None
        if tag is None or not dist.is_rank0():
            return
        remote_tag = storage.join(self.remote_root, tag)
        doc = json.loads((self.local_root / tag / MANIFEST).read_text())
        # List what the store holds (every node's shards), not just what this node wrote; checksums for the files
        # this node wrote (another node's files are checked by size).
        local = doc.get("files", {})
        doc["files"] = {
            k: local[k] if isinstance(local.get(k), dict) and local[k].get("size") == v else {"size": v}
            for k, v in storage.manifest(remote_tag).items()
            if k != MANIFEST
        }
        storage.write_text_atomic(storage.join(remote_tag, MANIFEST), json.dumps(doc, indent=1))
        storage.write_text_atomic(storage.join(self.remote_root, LATEST), tag)
        log.info("Checkpoint %s committed to %s", tag, self.remote_root)
        prune_remote(self.remote_root, keep_last, latest=tag)  # keeps the previous best: the marker names it
        if best is not None:
            storage.write_text_atomic(storage.join(self.remote_root, BEST), best)

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
    marker = storage.join(remote_root, BEST)
    best = storage.read_text(marker).strip() if storage.exists(marker) else None
    for tag in tags[:-keep_last]:
        if tag not in (latest, best):
            storage.remove(storage.join(remote_root, tag), recursive=True, missing_ok=True)


def _remote_marker(remote_root: str) -> tuple[str | None, str | None]:
    """:func:`_marker` for a remote checkpoints directory."""
    from framework import storage

    marker = storage.join(remote_root, LATEST)
    if not storage.exists(marker):
        return None, None
    if storage.isdir(marker):
        return None, f"{marker} is a directory, not a marker file"
    try:
        tag = storage.read_bytes(marker).decode("utf-8").strip()
    except UnicodeDecodeError:
        return None, f"{marker} is unreadable (not text)"
    if not tag:
        return None, f"{marker} is empty"
    if not TAG_RE.match(tag):
        return None, f"{marker} holds {tag[:40]!r}, not a checkpoint tag (step_<N>)"
    if not storage.exists(storage.join(remote_root, tag, MANIFEST)):
        return None, f"{marker} names {tag}, which does not exist or has no {MANIFEST}"
    return tag, None


def _download(remote_root: str, local_root: Path, tag: str) -> list[str]:
    """Download one checkpoint (local rank 0 of each node) and verify it; the damage found, agreed by all
    ranks. Sizes are compared with the store's listing first, so a truncated or missing shard costs no
    download."""
    from framework import storage

    problems: list[str] = []
    if dist.local_rank() == 0:
        target = local_root / tag
        shutil.rmtree(target, ignore_errors=True)
        remote_tag = storage.join(remote_root, tag)
        try:
            doc = json.loads(storage.read_bytes(storage.join(remote_tag, MANIFEST)))
        except ValueError as e:
            doc, problems = None, [f"{MANIFEST} is unreadable ({type(e).__name__}: {str(e)[:80]})"]
        if doc is not None:
            problems, files = _manifest_problems(doc)
            listed = storage.manifest(remote_tag)
            for name, (size, _) in files.items():
                if name not in listed:
                    problems.append(f"{name} is missing")
                elif listed[name] != size:
                    problems.append(
                        f"{name} is truncated or changed ({listed[name]} bytes; the manifest says {size})"
                    )
        if not problems:
            storage.download_dir(remote_tag, target)
            problems = damage(local_root, tag)
    return _agree(problems)


def fetch_remote(remote_root: str, local_root: Path, tag: str | None = None) -> str | None:
    """Download a committed, intact checkpoint into ``local_root``; return its tag.

    ``tag``: the one the user named (damaged: exit 2). None: what ``resume=auto`` continues from, the one remote
    ``latest`` names, else the newest intact older one (damaged ones are skipped with a warning and left in the
    store); None when there is no checkpoint at all. Local rank 0 of every node downloads.
    """
    from framework import storage

    if tag is not None:
        if not TAG_RE.match(tag):
            raise ConfigError(f"{tag!r} is not a checkpoint tag (step_<N>)")
        remote_tag = storage.join(remote_root, tag)
        if not storage.exists(storage.join(remote_tag, MANIFEST)):
            # A checkpoint the user named that is not there is a config error (exit 2, never retried).
            raise ConfigError(
                f"{remote_tag} has no {MANIFEST}: it does not exist or was never committed; "
                "resume from another checkpoint, or use resume=auto or resume=none"
            )
        problems = _download(remote_root, local_root, tag)
        if problems:
            raise ConfigError(
                f"checkpoint {remote_tag} is damaged: {_summarize(problems)}. Name another checkpoint, or "
                "start over with resume=none"
            )
    else:
        latest, problem = _remote_marker(remote_root)
        names = storage.listdir(remote_root) if storage.isdir(remote_root) else []
        committed = [
            t for t in _tags_newest_first(names) if storage.exists(storage.join(remote_root, t, MANIFEST))
        ]
        tag, _ = _choose(remote_root, latest, problem, _candidates(latest, committed),
                         lambda t: _download(remote_root, local_root, t))  # fmt: skip
        if tag is None:
            return None
    if dist.local_rank() == 0:
        _atomic_write(local_root / LATEST, tag)
    dist.barrier()
    return tag


# What resume=auto compares (issue 11): a changed dataset, model, tokenizer, recipe or training arithmetic is a
# different run. Where it runs and how it is logged (hardware, launcher, storage, tracking) is not compared;
# world size and ZeRO stage are checked by load(). README "Resuming" lists these.
COMPARED = ("recipe", "model", "dataset", "lora", "optim", "scheduler", "train")
MAY_CHANGE = (
    "train.max_steps",  # train longer (or stop earlier)
    "train.epochs",
    "train.eval_interval",
    "train.eval_max_batches",
    "train.checkpoint_interval",
    "train.keep_last",
    "train.keep_best",
    "train.eval_at_start",
    "train.log_interval",
    "train.progress",
    "train.compile",
    "model.gradient_checkpointing",  # memory/speed only: the same numbers
    "model.attn_implementation",
    "model.kernels",
    "model.fused_linear_ce",
    "dataset.cache_dir",
)


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = value
    return out


def config_changes(recorded_cfg: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``key: checkpoint value -> new value`` for each compared key that differs (MAY_CHANGE excepted)."""
    old = _flatten({k: recorded_cfg.get(k) for k in COMPARED}, "", {})
    new = _flatten({k: now.get(k) for k in COMPARED}, "", {})
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key) and not any(key == m or key.startswith(f"{m}.") for m in MAY_CHANGE)
    ]
