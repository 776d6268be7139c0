"""train.keep_best on an s3:// run dir: the store's ``best`` marker, like ``latest``, only ever names a checkpoint
whose upload has committed (manifest, then latest, then best), never one still uploading or whose upload failed.
Against a moto S3 server (tests/s3_fixtures.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from framework import checkpoint, storage
from framework.checkpoint import BEST, LATEST, MANIFEST, RemoteSync


def local_checkpoint(root: Path, tag: str) -> None:
    (root / tag).mkdir(parents=True)
    (root / tag / "shard.pt").write_bytes(b"x" * 64)
    (root / tag / MANIFEST).write_text(json.dumps({"files": {"shard.pt": {"size": 64}}}))


def marker(remote: str, name: str) -> str | None:
    uri = storage.join(remote, name)
    return storage.read_text(uri).strip() if storage.exists(uri) else None


@pytest.fixture
def sync(tmp_path: Path, s3_env: str, s3_bucket: str) -> RemoteSync:
    rs = RemoteSync(tmp_path / "checkpoints", f"{s3_bucket}/run/checkpoints")
    local_checkpoint(rs.local_root, "step_2")
    rs.start("step_2")
    rs.mark_best("step_2")
    rs.sync(keep_last=1)  # step_2: committed, and the best so far
    return rs


def test_best_waits_for_its_upload_to_commit(sync: RemoteSync, monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[str] = []
    real = storage.write_text_atomic
    monkeypatch.setattr(
        storage, "write_text_atomic", lambda uri, text, **kw: (writes.append(str(uri)), real(uri, text, **kw))
    )
    local_checkpoint(sync.local_root, "step_4")
    sync.start("step_4")
    sync.mark_best("step_4")  # the eval at step 4 was the best; its upload runs in the background
    sync.wait()
    assert marker(sync.remote_root, BEST) == "step_2"  # uploaded, but not committed yet
    sync.sync(keep_last=1)
    assert marker(sync.remote_root, LATEST) == marker(sync.remote_root, BEST) == "step_4"
    names = [w.rsplit("/", 1)[-1] for w in writes]
    assert names == [MANIFEST, LATEST, BEST]  # best last, as latest after the manifest
    assert storage.exists(storage.join(sync.remote_root, "step_4", MANIFEST))


def test_a_failed_upload_never_becomes_best(sync: RemoteSync, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(local: object, uri: object, **kw: object) -> None:
        raise storage.StorageError(f"upload to {uri} failed: connection reset")

    monkeypatch.setattr(storage, "upload_dir", fail)
    local_checkpoint(sync.local_root, "step_4")
    sync.start("step_4")
    sync.mark_best("step_4")
    with pytest.raises(storage.StorageError):
        sync.sync(keep_last=1)
    assert marker(sync.remote_root, BEST) == marker(sync.remote_root, LATEST) == "step_2"
    assert checkpoint.TAG_RE.match(str(marker(sync.remote_root, BEST)))
    assert storage.exists(storage.join(sync.remote_root, "step_2", MANIFEST))  # what best names is whole


def test_a_committed_checkpoint_becomes_best_at_once(sync: RemoteSync) -> None:
    local_checkpoint(sync.local_root, "step_4")
    sync.start("step_4")
    sync.sync(keep_last=2)  # a blocking save: committed before the best is marked
    sync.mark_best("step_4")
    assert marker(sync.remote_root, BEST) == "step_4"


def test_training_marks_best_only_after_the_commit(sync: RemoteSync, tmp_path: Path) -> None:
    """The training loop's path: a best eval at a checkpoint step whose upload is still pending (save without
    blocking, then mark_best) leaves the store's best alone until the next commit (poll or next save)."""
    from types import SimpleNamespace

    from framework.rundir import RunDir
    from framework.train import Checkpointer

    ckpt = Checkpointer.__new__(Checkpointer)  # its checkpoint I/O only: no engine, no config
    ckpt.run = RunDir(uri=sync.remote_root.rsplit("/", 1)[0], path=tmp_path)
    ckpt.remote, ckpt.keep_last = sync, 1
    ckpt.out = SimpleNamespace(publish_metrics=lambda: None)
    assert ckpt.run.checkpoints == sync.local_root and ckpt.run.remote_checkpoints == sync.remote_root
    local_checkpoint(sync.local_root, "step_4")
    sync.start("step_4")  # what Checkpointer.save(job) leaves: the upload running in the background
    ckpt.mark_best(SimpleNamespace(step=4, best_pending=4), saved=True)  # type: ignore[arg-type]
    assert (sync.local_root / BEST).read_text() == "step_4"  # the staging copy's marker: its files are whole
    assert marker(sync.remote_root, BEST) == "step_2"
    ckpt._commit(sync=True)
    assert marker(sync.remote_root, BEST) == "step_4"
