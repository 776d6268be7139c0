"""``python -m framework.stage``: download a Hub model or dataset once into the staging target (S3 or a PVC).

The init step of a Kubernetes job (launcher.staging=all; README "Staging"): the launcher renders it as an init
container (indexed_job, jobset, pytorchjob) or as a TrainJob initializer, so the download happens on the
cluster, not on the machine that submits. Then the training pods read the staged copy::

    python -m framework.stage --repo meta-llama/Llama-3.1-8B-Instruct --revision main \\
        --dest s3://runs/framework-staging/hub/model/meta-llama--Llama-3.1-8B-Instruct/main \\
        --key model.pretrained --node-rank 0

Once: ``<dest>/STAGED`` is written last, so a retried pod, the other pods of the job and every later job of a
sweep find it and download nothing. Node rank 0 downloads; other ranks wait for the marker. Jobs that start at
the same time share a lock (``<dest>.lock``, refreshed while held, taken over when stale), so one downloads.
``--mount`` names the PVC's mount path when the target is a PVC: nothing mounted there is a config problem.
A TrainJob initializer passes the same as env (``STORAGE_URI=hf://<repo>``, ``FRAMEWORK_STAGE_*``).

Exit codes: 0 staged (or already there); 2 a problem a retry cannot fix (unknown id or revision, a gated repo
without access, the PVC not mounted); 1 a transient failure (hub or storage unreachable), which Kubernetes may
retry. HF_TOKEN comes from the environment (launcher.hf_token_secret).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from framework import storage
from framework.errors import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE

log = logging.getLogger("framework.stage")

MARKER = "STAGED"  # the same name the launcher's content-addressed uploads use
LOCK_SUFFIX = ".lock"
HEARTBEAT_S = 30.0
STALE_S = 300.0  # a lock not refreshed for this long belongs to a dead pod
POLL_S = 10.0
ENV_PREFIX = "FRAMEWORK_STAGE_"


class StageError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def parse_storage_uri(uri: str) -> tuple[str, str]:
    """``hf://<org>/<name>`` (a model) or ``hf://datasets/<org>/<name>`` -> (repo id, repo type)."""
    rest = uri.removeprefix("hf://")
    repo_type = "model"
    for prefix, kind in (("datasets/", "dataset"), ("models/", "model")):
        if rest.startswith(prefix):
            rest, repo_type = rest[len(prefix) :], kind
    return "/".join(rest.split("/")[:2]), repo_type


# ------------------------------------------------------------------------------------------------ locking
def _now() -> float:
    return time.time()


class _Lock:
    """A lock beside the destination that two jobs of a sweep can both see: an exclusively created file on a PVC;
    on S3 an object whose token is read back after a pause (the last writer wins, and every racer sees it)."""

    def __init__(self, dest: str) -> None:
        self.uri = dest.rstrip("/") + LOCK_SUFFIX
        self.token = f"{socket.gethostname()}-{uuid.uuid4().hex[:12]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> str:
        return json.dumps({"owner": self.token, "time": _now()})

    def holder(self) -> dict[str, Any] | None:
        try:
            data = json.loads(storage.read_text(self.uri))
        except FileNotFoundError:
            return None
        except ValueError:  # torn write: treat as held, it is being rewritten
            return {"owner": "?", "time": _now()}
        return data if isinstance(data, dict) else None

    def try_acquire(self) -> bool:
        held = self.holder()
        if held is not None and _now() - float(held.get("time", 0)) < STALE_S:
            return False
        if held is not None:
            log.warning("taking over the stale staging lock %s of %s", self.uri, held.get("owner"))
            storage.remove(self.uri, missing_ok=True)
        if storage.is_remote(self.uri):
            storage.write_text_atomic(self.uri, self._body())
            time.sleep(min(2.0, POLL_S))  # racers' writes land; then all read the same last one
            won = (self.holder() or {}).get("owner") == self.token
        else:
            Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.uri, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(self._body())
            won = True
        if won:
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()
        return won

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                storage.write_text_atomic(self.uri, self._body())
            except Exception as e:  # noqa: BLE001 - a missed heartbeat only risks a takeover after STALE_S
                log.warning("refreshing the staging lock %s failed: %s", self.uri, e)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        storage.remove(self.uri, missing_ok=True)


# ---------------------------------------------------------------------------------------------- download
def _hub_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    return GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError


def _download(repo: str, repo_type: str, revision: str | None, local_dir: Path, key: str) -> str:
    """snapshot_download into ``local_dir`` (a rerun only fetches what is missing); returns the commit."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RevisionNotFoundError

    from framework.pretrained import hub_endpoint

    token = os.environ.get("HF_TOKEN") or None
    what = f"{key}={repo}" if key else repo
    try:
        path = snapshot_download(
            repo,
            repo_type=repo_type,
            revision=revision,
            local_dir=str(local_dir),
            token=token,
            endpoint=hub_endpoint(),
        )
    except GatedRepoError as e:
        fix = (
            "HF_TOKEN's account has no access: accept the license on the repo's page"
            if token
            else "no HF_TOKEN is set: set launcher.hf_token_secret=<secret>:<key> (dockerfiles/chart README)"
        )
        raise StageError(f"{what}: a gated repo and {fix}", EXIT_USAGE) from e
    except RevisionNotFoundError as e:
        raise StageError(
            f"{what}: revision {revision!r} not found on {hub_endpoint()}; check model.revision", EXIT_USAGE
        ) from e
    except (
        _hub_errors()
    ) as e:  # RepositoryNotFoundError (also what a private repo without a token looks like)
        fix = "check the id" + ("" if token else ", or set launcher.hf_token_secret for a private repo")
        raise StageError(f"{what}: no such {repo_type} on {hub_endpoint()}; {fix}", EXIT_USAGE) from e
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 404:
            raise StageError(
                f"{what}: not found on {hub_endpoint()} (HTTP 404); check the id", EXIT_USAGE
            ) from e
        if status in (401, 403):
            raise StageError(
                f"{what}: the hub refused access (HTTP {status}); check HF_TOKEN", EXIT_USAGE
            ) from e
        raise StageError(f"{what}: the hub failed (HTTP {status}); retrying may help", EXIT_RUNTIME) from e
    except OSError as e:  # connection errors, LocalEntryNotFoundError (hub unreachable), a full disk
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise StageError(f"{what}: downloading from {hub_endpoint()} failed: {first}", EXIT_RUNTIME) from e
    meta = local_dir / ".cache" / "huggingface"
    # local_dir mode returns local_dir; the commit is the first line of each file's download metadata
    commit = next((m.read_text().split("\n", 1)[0] for m in sorted(meta.rglob("*.metadata"))), None)
    commit = commit or (Path(path).name if Path(path).parent.name == "snapshots" else None)
    shutil.rmtree(meta, ignore_errors=True)  # snapshot_download's resume bookkeeping: not part of the model
    if meta.parent.is_dir() and not any(meta.parent.iterdir()):
        meta.parent.rmdir()
    return commit or (revision or "")


def _scratch(dest: str) -> Path:
    """Where an S3-bound snapshot is downloaded first: the pod's cache emptyDir (HF_HOME's volume)."""
    return storage.cache_root() / "stage" / hashlib.sha256(dest.encode()).hexdigest()[:16]


@contextmanager
def _locked(dest: str, node_rank: int, wait_s: float) -> Iterator[bool]:
    """Yields True when this process must download, False when the marker appeared meanwhile."""
    marker = storage.join(dest, MARKER)
    lock = _Lock(dest)
    deadline = _now() + wait_s
    owned = False
    try:
        while True:
            if storage.exists(marker):
                yield False
                return
            if node_rank == 0 and lock.try_acquire():
                owned = True
                if storage.exists(marker):  # finished between our check and the lock
                    yield False
                else:
                    yield True
                return
            if _now() > deadline:
                raise StageError(
                    f"{dest}: waited {wait_s:.0f} s for another pod to stage it ({lock.uri}); retrying may help",
                    EXIT_RUNTIME,
                )
            log.info(
                "waiting for %s (staged by %s)", marker, "another job" if node_rank == 0 else "node rank 0"
            )
            time.sleep(POLL_S)
    finally:
        if owned:
            lock.release()


def stage(
    repo: str,
    dest: str,
    *,
    repo_type: str = "model",
    revision: str | None = None,
    key: str = "",
    mount: str | None = None,
    node_rank: int = 0,
    wait_s: float = 6 * 3600.0,
) -> bool:
    """Download ``repo`` to ``dest`` unless its marker is there. True when this call downloaded it."""
    if not repo:
        return False
    if mount is not None:
        m = Path(mount)
        if not m.is_dir() or not os.access(m, os.W_OK):
            raise StageError(
                f"staging target {dest}: nothing writable is mounted at {mount} (the PVC is not mounted); mount "
                f"the claim there with launcher.pvcs.<claim>={mount}, or set launcher.staging_uri=s3://...",
                EXIT_USAGE,
            )
        if not dest.startswith(mount.rstrip("/") + "/"):
            raise StageError(f"staging target {dest} is not under the PVC mount {mount}", EXIT_USAGE)
    try:
        with _locked(dest, node_rank, wait_s) as download:
            if not download:
                log.info("%s already staged at %s", repo, dest)
                return False
            local = Path(dest) if not storage.is_remote(dest) else _scratch(dest)
            local.mkdir(parents=True, exist_ok=True)
            started = _now()
            commit = _download(repo, repo_type, revision, local, key)
            size = sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
            if storage.is_remote(dest):
                storage.upload_dir(local, dest)
                shutil.rmtree(local, ignore_errors=True)
            info = {
                "repo": repo,
                "repo_type": repo_type,
                "revision": revision,
                "commit": commit,
                "bytes": size,
            }
            storage.write_text_atomic(storage.join(dest, MARKER), json.dumps(info) + "\n")
            log.info("staged %s (%d bytes, %.0f s) to %s", repo, size, _now() - started, dest)
            return True
    except StageError:
        raise
    except storage.StorageError as e:  # retries are spent: the bucket or the network; Kubernetes may retry
        raise StageError(f"staging target {dest}: {e}", EXIT_RUNTIME) from e


def _from_env(args: argparse.Namespace) -> argparse.Namespace:
    """A TrainJob initializer: Trainer sets STORAGE_URI from spec.initializer.*.storageUri, we set the rest."""
    env = os.environ
    uri = env.get("STORAGE_URI", "")
    if uri and not args.repo:
        args.repo, args.repo_type = parse_storage_uri(uri)
    for name in ("dest", "revision", "key", "mount"):
        if getattr(args, name) is None and env.get(ENV_PREFIX + name.upper()):
            setattr(args, name, env[ENV_PREFIX + name.upper()])
    return args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m framework.stage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", help="Hub id, org/name (or STORAGE_URI=hf://... in the environment)")
    parser.add_argument("--repo-type", default="model", choices=("model", "dataset"))
    parser.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    parser.add_argument("--dest", default=None, help="s3://... or a path on a mounted PVC")
    parser.add_argument("--key", default=None, help="the config key, for messages (model.pretrained)")
    parser.add_argument("--mount", default=None, help="the PVC's mount path when --dest is on a PVC")
    parser.add_argument("--node-rank", default="0", help="0 downloads; other ranks wait for the marker")
    parser.add_argument("--wait-s", type=float, default=6 * 3600.0)
    args = _from_env(parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.repo:
        log.info("nothing to stage (no --repo, no STORAGE_URI)")
        return EXIT_OK
    if not args.dest:
        print(f"error: {args.repo}: no --dest (or {ENV_PREFIX}DEST) to stage it to", file=sys.stderr)
        return EXIT_USAGE
    try:
        rank = int(args.node_rank or 0)
    except ValueError:
        rank = 0
    try:
        stage(
            args.repo,
            args.dest,
            repo_type=args.repo_type,
            revision=args.revision or None,
            key=args.key or "",
            mount=args.mount or None,
            node_rank=rank,
            wait_s=args.wait_s,
        )
    except StageError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
