"""framework.storage against local paths, memory:// and a moto S3 server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from framework import storage
from framework.storage_config import StorageConfig
from tests import s3_fixtures
from tests.s3_fixtures import MotoServer, free_port

# The S3 fixtures, used here by name (the project's conftest may register tests.s3_fixtures as a plugin too).
s3_server = s3_fixtures.s3_server
s3_client = s3_fixtures.s3_client
s3_bucket = s3_fixtures.s3_bucket


@pytest.fixture(autouse=True)
def fast_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Short backoffs and timeouts, a private cache, fresh clients: every test stays well under a second."""
    monkeypatch.setenv("FRAMEWORK_CACHE", str(tmp_path / "cache"))
    storage.clear_instances()
    with storage.configured(
        retries=3,
        backoff_s=0.01,
        max_backoff_s=0.05,
        connect_timeout_s=1.0,
        read_timeout_s=5.0,
        cache_dir=None,
    ):
        yield
    storage.clear_instances()


def retry_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "framework.storage" and "retrying" in r.getMessage()
    ]


class DownloadCounter:
    """Wraps storage._download_entries; counts calls in a file so forked processes add to the same count."""

    def __init__(self, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path = path
        self.path.write_text("")
        inner = storage._download_entries

        def counted(*args: Any, **kwargs: Any) -> None:
            with open(self.path, "a") as f:
                f.write(f"{os.getpid()}\n")
            time.sleep(0.05)  # widen the race window for the concurrency tests
            inner(*args, **kwargs)

        monkeypatch.setattr(storage, "_download_entries", counted)

    @property
    def count(self) -> int:
        return len(self.path.read_text().split())


# ------------------------------------------------------------------------------------------------ paths


def test_is_remote_and_join() -> None:
    assert not storage.is_remote("/data/x")
    assert not storage.is_remote("relative/x")
    assert not storage.is_remote(Path("/data/x"))
    assert not storage.is_remote("file:///data/x")
    assert storage.is_remote("s3://bucket/x")
    assert storage.is_remote("memory://x")
    assert storage.is_remote("simplecache::s3://bucket/x")

    assert storage.join("s3://bucket", "runs", "a/b", "c.json") == "s3://bucket/runs/a/b/c.json"
    assert storage.join("s3://bucket/runs/", "/x/") == "s3://bucket/runs/x"
    assert storage.join("s3://bucket/runs") == "s3://bucket/runs"
    assert storage.join("/tmp/runs", "a", "b.txt") == os.path.join("/tmp/runs", "a", "b.txt")
    assert storage.join(Path("/tmp"), "/a", "") == "/tmp/a"
    assert storage.join("file:///tmp", "a") == "file:///tmp/a"


def test_configure_from_config_and_restore() -> None:
    before = storage.get_settings()
    previous = storage.configure_from_config(
        StorageConfig(retries=7, retry_backoff_s=0.5, cache_dir="/x/cache", max_workers=3)
    )
    try:
        s = storage.get_settings()
        assert (s.policy.attempts, s.policy.backoff_s, s.cache_dir, s.max_workers) == (7, 0.5, "/x/cache", 3)
        assert storage.cache_root() == Path("/x/cache")
        assert storage.cache_root("/y") == Path("/y")
    finally:
        storage.restore(previous)
    assert storage.get_settings() == before
    with pytest.raises(ValueError):
        storage.configure(retries=0)


# ------------------------------------------------------------------------------------------------ local


def test_local_round_trip(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "x.txt"
    storage.write_text_atomic(str(target), "héllo")
    assert storage.read_text(str(target)) == "héllo"
    assert storage.read_text(f"file://{target}") == "héllo"
    storage.write_bytes_atomic(target, b"\x00\x01")
    assert storage.read_bytes(target) == b"\x00\x01"
    assert storage.exists(target) and storage.isfile(target) and not storage.isdir(target)
    assert storage.isdir(tmp_path / "a")
    assert storage.listdir(target.parent) == ["x.txt"]  # no temp files left behind
    assert storage.local_copy(str(target)) == target
    storage.remove(target)
    assert not storage.exists(target)
    storage.remove(target, missing_ok=True)
    with pytest.raises(FileNotFoundError):
        storage.read_text(target)
    storage.remove(tmp_path / "a", recursive=True)
    assert not storage.exists(tmp_path / "a")


@pytest.mark.parametrize("remote", [False, True], ids=["local", "s3"])
def test_open_write_is_atomic(tmp_path: Path, remote: bool, request: pytest.FixtureRequest) -> None:
    base = request.getfixturevalue("s3_bucket") if remote else str(tmp_path)
    uri = storage.join(base, "dir", "state.json")
    with storage.open(uri, "w") as f:
        f.write('{"step": 1}')
    with pytest.raises(RuntimeError, match="boom"), storage.open(uri, "w") as f:
        f.write('{"step": 2, "trunc')
        raise RuntimeError("boom")
    assert json.loads(storage.read_text(uri)) == {"step": 1}  # old content kept, no partial file
    assert storage.listdir(storage.join(base, "dir")) == ["state.json"]

    with storage.open(uri, "a") as f:
        f.write("\nmore")
    with storage.open(uri) as f:
        assert f.read() == '{"step": 1}\nmore'
    with storage.open(uri, "rb") as f:
        assert f.read().endswith(b"more")
    with pytest.raises(ValueError):
        storage.open(uri, "r+").__enter__()


def test_upload_download_dir_local(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(b"a" * 10)
    (src / "sub" / "b.txt").write_text("bb")
    man = storage.upload_dir(src, tmp_path / "dst")
    assert man == {"a.bin": 10, "sub/b.txt": 2}
    assert storage.manifest(tmp_path / "dst") == man
    assert storage.download_dir(tmp_path / "dst", tmp_path / "back") == man
    assert (tmp_path / "back" / "sub" / "b.txt").read_text() == "bb"


def test_memory_protocol_round_trip(tmp_path: Path) -> None:
    """Any fsspec protocol works (here memory://) through the same calls."""
    base = f"memory://storage-test-{os.getpid()}-{time.monotonic_ns()}"
    storage.write_text_atomic(storage.join(base, "x.txt"), "hi")
    assert storage.read_text(storage.join(base, "x.txt")) == "hi"
    assert storage.exists(storage.join(base, "x.txt"))
    src = tmp_path / "src"
    src.mkdir()
    (src / "w.bin").write_bytes(b"123")
    assert storage.upload_dir(src, storage.join(base, "ck")) == {"w.bin": 3}
    assert storage.listdir(base) == ["ck", "x.txt"]
    path = storage.local_copy(storage.join(base, "ck"))
    assert (path / "w.bin").read_bytes() == b"123"
    storage.remove(base, recursive=True)
    assert not storage.exists(storage.join(base, "x.txt"))


# ------------------------------------------------------------------------------------------------ s3


def test_s3_round_trip(s3_bucket: str) -> None:
    uri = storage.join(s3_bucket, "runs", "r1", "config.yaml")
    assert not storage.exists(uri)
    storage.write_text_atomic(uri, "a: 1\n")
    assert storage.exists(uri)  # no stale listing after a write
    assert storage.read_text(uri) == "a: 1\n"
    storage.write_bytes_atomic(storage.join(s3_bucket, "runs", "r1", "w.bin"), bytes(range(256)))
    assert storage.read_bytes(storage.join(s3_bucket, "runs", "r1", "w.bin")) == bytes(range(256))
    assert storage.listdir(storage.join(s3_bucket, "runs", "r1")) == ["config.yaml", "w.bin"]
    assert storage.listdir(storage.join(s3_bucket, "runs")) == ["r1"]
    assert storage.isdir(storage.join(s3_bucket, "runs")) and not storage.isdir(uri)
    assert storage.isfile(uri) and storage.info(uri)["size"] == 5
    v1 = storage.version(uri)
    storage.write_text_atomic(uri, "a: 2\n")
    assert storage.version(uri) != v1
    assert storage.listdir(storage.join(s3_bucket, "runs", "r1")) == ["config.yaml", "w.bin"]
    storage.remove(uri)
    assert not storage.exists(uri)
    storage.remove(storage.join(s3_bucket, "runs"), recursive=True)
    assert not storage.exists(storage.join(s3_bucket, "runs", "r1", "w.bin"))
    storage.remove(uri, missing_ok=True)


def test_s3_directory_semantics(s3_bucket: str, s3_client: Any) -> None:
    """Like local paths: deleting what is missing, or a directory without recursive=True, is an error; the
    directory marker objects some tools write ("d/") are not entries."""
    bucket = s3_bucket[len("s3://") :]
    s3_client.put_object(Bucket=bucket, Key="d/", Body=b"")
    s3_client.put_object(Bucket=bucket, Key="d/f.txt", Body=b"x")
    assert storage.listdir(storage.join(s3_bucket, "d")) == ["f.txt"]
    assert storage.manifest(storage.join(s3_bucket, "d")) == {"f.txt": 1}
    with pytest.raises(NotADirectoryError):
        storage.listdir(storage.join(s3_bucket, "d", "f.txt"))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        storage.remove(storage.join(s3_bucket, "missing.txt"))
    storage.remove(storage.join(s3_bucket, "missing.txt"), missing_ok=True)
    with pytest.raises(IsADirectoryError):
        storage.remove(storage.join(s3_bucket, "d"))
    storage.remove(storage.join(s3_bucket, "d"), recursive=True)
    assert storage.listdir(s3_bucket) == []


def test_s3_sees_objects_written_elsewhere(s3_bucket: str, s3_client: Any) -> None:
    """Listings are never served from a stale cache: another writer's object shows up at once."""
    prefix = storage.join(s3_bucket, "ck")
    storage.write_text_atomic(storage.join(prefix, "a"), "1")
    assert storage.listdir(prefix) == ["a"]
    s3_client.put_object(Bucket=s3_bucket[5:], Key="ck/latest", Body=b"step_1")
    assert storage.exists(storage.join(prefix, "latest"))
    assert storage.listdir(prefix) == ["a", "latest"]
    storage.invalidate_cache(prefix)
    storage.invalidate_cache()


def test_s3_upload_download_dir(tmp_path: Path, s3_bucket: str) -> None:
    src = tmp_path / "step_10"
    (src / "model").mkdir(parents=True)
    files = {
        "model/w1.bin": os.urandom(300_000),
        "model/w2.bin": os.urandom(1000),
        "meta.json": b"{}",
        "e": b"",
    }
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    uri = storage.join(s3_bucket, "run", "checkpoints", "step_10")
    man = storage.upload_dir(src, uri, max_workers=4)
    assert man == {rel: len(data) for rel, data in files.items()}
    assert storage.manifest(uri) == man
    back = tmp_path / "back"
    assert storage.download_dir(uri, back) == man
    for rel, data in files.items():
        assert (back / rel).read_bytes() == data
    assert not [p for p in back.rglob("*") if ".part-" in p.name]
    with pytest.raises(FileNotFoundError, match="step_99"):
        storage.download_dir(storage.join(s3_bucket, "run", "checkpoints", "step_99"), tmp_path / "nope")


def test_missing_key_names_the_uri(s3_bucket: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="framework.storage")
    uri = storage.join(s3_bucket, "nope", "missing.json")
    with pytest.raises(FileNotFoundError, match=uri) as info:
        storage.read_text(uri)
    assert isinstance(info.value, storage.StorageNotFoundError)
    assert not [r for r in caplog.records if "retrying" in r.getMessage()], "a missing key is never retried"
    with pytest.raises(FileNotFoundError, match=storage.join(s3_bucket, "nope")):
        storage.listdir(storage.join(s3_bucket, "nope"))
    with pytest.raises(FileNotFoundError, match=uri):
        storage.local_copy(uri)


def test_missing_bucket_says_create_it(s3_server: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="framework.storage")
    uri = "s3://no-such-bucket-for-tests/runs/r1/config.yaml"
    for call in (
        lambda: storage.read_text(uri),
        lambda: storage.write_text_atomic(uri, "x"),
        lambda: storage.exists(uri),
    ):
        with pytest.raises(storage.StorageError, match="create it or fix the URI") as info:
            call()
        assert uri in str(info.value) and "no-such-bucket-for-tests" in str(info.value)
        assert not isinstance(info.value, FileNotFoundError)
        assert info.value.__cause__ is not None
    assert retry_warnings(caplog) == []


def test_wrong_access_key_fails_at_once(s3_bucket: str, caplog: pytest.LogCaptureFixture) -> None:
    from moto.core import enable_iam_authentication

    caplog.set_level(logging.WARNING, logger="framework.storage")
    uri = storage.join(s3_bucket, "x.txt")
    with enable_iam_authentication():  # moto now checks keys; the fixture's fake key is unknown
        with pytest.raises(
            storage.StorageError, match="check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        ) as info:
            storage.write_text_atomic(uri, "x")
        assert "InvalidAccessKeyId" in str(info.value) and uri in str(info.value)
        with pytest.raises(storage.StorageError, match="check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"):
            storage.read_text(uri)  # a HEAD answers a bare 403: same message
    assert retry_warnings(caplog) == []  # fails at once: never retried


def test_no_credentials_at_all(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    uri = storage.join(s3_bucket, "x.txt")
    with pytest.raises(storage.StorageError, match="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY") as info:
        storage.write_text_atomic(uri, "x")
    assert uri in str(info.value) and type(info.value.__cause__).__name__ == "NoCredentialsError"


def test_credentials_follow_the_environment(
    s3_bucket: str, s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right key: works; wrong secret: SignatureDoesNotMatch; right again: works (no stale cached client)."""
    import boto3
    from moto.core import enable_iam_authentication

    iam = boto3.client("iam", endpoint_url=s3_server, region_name="us-east-1")
    user = f"u{time.monotonic_ns()}"
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    uri = storage.join(s3_bucket, "creds.txt")
    with enable_iam_authentication():
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        storage.write_text_atomic(uri, "ok")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
        with pytest.raises(storage.StorageError, match="SignatureDoesNotMatch") as info:
            storage.write_text_atomic(uri, "no")
        assert "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" in str(info.value)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        assert storage.read_text(uri) == "ok"


def test_unreachable_endpoint_retries_then_fails(
    s3_server: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="framework.storage")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    uri = "s3://some-bucket/runs/r1/checkpoints/latest"
    with storage.configured(retries=4, backoff_s=0.05):
        t0 = time.monotonic()
        with pytest.raises(storage.StorageError) as info:
            storage.read_text(uri)
        elapsed = time.monotonic() - t0
    msg = str(info.value)
    assert uri in msg and "AWS_ENDPOINT_URL" in msg and "4 attempt(s)" in msg
    assert info.value.__cause__ is not None
    warnings = retry_warnings(caplog)
    assert len(warnings) == 3
    # the configured backoff (0.05 s doubling), not the default 1 s doubling
    assert all(float(w.rsplit("retrying in ", 1)[1].rstrip("s")) <= 0.2 for w in warnings), warnings
    assert elapsed < 20  # three short pauses; the bound only catches a hang (loose: the box may be loaded)
    with pytest.raises(storage.StorageError, match="AWS_ENDPOINT_URL"):
        storage.upload_dir(Path(__file__).parent, "s3://some-bucket/x", max_workers=2)


def test_hung_endpoint_is_bounded_by_timeouts(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An endpoint that accepts connections but never answers: per-attempt read timeout, then StorageError."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # never accept()ed: requests hang until the read timeout
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{listener.getsockname()[1]}")
        uri = "s3://some-bucket/x.json"
        with storage.configured(retries=2, backoff_s=0.01, read_timeout_s=0.3, connect_timeout_s=0.3):
            t0 = time.monotonic()
            with pytest.raises(storage.StorageError, match="kept failing") as info:
                storage.read_text(uri)
            elapsed = time.monotonic() - t0
    assert uri in str(info.value)
    assert elapsed < 20  # 2 x 0.3 s timeouts; the default 60 s read timeout would exceed it


def test_server_restart_mid_sequence(
    s3_client: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The endpoint goes away between two calls and comes back: the retries carry the second call through."""
    caplog.set_level(logging.WARNING, logger="framework.storage")
    server = MotoServer().start()
    restarted: list[MotoServer] = []
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
        s3_client.create_bucket(Bucket="restart-bucket")
        uri = "s3://restart-bucket/state.txt"
        storage.write_text_atomic(uri, "before")
        server.stop()
        timer = threading.Timer(0.5, lambda: restarted.append(MotoServer(server.port).start()))
        timer.start()
        with storage.configured(retries=10, backoff_s=0.1, max_backoff_s=0.3):
            t0 = time.monotonic()
            assert storage.read_text(uri) == "before"  # refused while down, then served
            storage.write_text_atomic(uri, "after")
            assert time.monotonic() - t0 < 20  # only catches a hang: the box may be loaded
        timer.join()
        assert storage.read_text(uri) == "after"
        assert retry_warnings(caplog), "the endpoint was down: the read must have been retried"
    finally:
        for s in restarted:
            s.stop()
        server.stop()
        s3_client.delete_object(Bucket="restart-bucket", Key="state.txt")
        s3_client.delete_bucket(Bucket="restart-bucket")


def test_throttling_and_5xx_are_retried(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ClientError

    uri = storage.join(s3_bucket, "t.txt")
    fs, _ = storage.filesystem(uri)
    real = fs.pipe_file
    errors = [("SlowDown", 503), ("InternalError", 500)]
    calls: list[str] = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if len(calls) < len(errors):
            code, status = errors[len(calls)]
            calls.append(code)
            err = ClientError(
                {
                    "Error": {"Code": code, "Message": "try later"},
                    "ResponseMetadata": {"HTTPStatusCode": status},
                },
                "PutObject",
            )
            raise OSError(5, "s3 error") from err  # what s3fs raises, with the ClientError chained
        calls.append("ok")
        return real(*args, **kwargs)

    monkeypatch.setattr(fs, "pipe_file", flaky)
    storage.write_text_atomic(uri, "x")
    assert calls == ["SlowDown", "InternalError", "ok"]
    assert storage.read_text(uri) == "x"

    calls.clear()
    with storage.configured(retries=2), pytest.raises(storage.StorageError, match="kept failing") as info:
        storage.write_text_atomic(uri, "y")
    assert uri in str(info.value) and "storage.retries" in str(info.value)


# ------------------------------------------------------------------------------------------------ local_copy


def test_local_copy_file_is_cached_and_follows_etag(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = DownloadCounter(tmp_path / "downloads", monkeypatch)
    uri = storage.join(s3_bucket, "data", "train.jsonl")
    storage.write_text_atomic(uri, '{"a": 1}\n')
    first = storage.local_copy(uri)
    assert first.read_text() == '{"a": 1}\n' and first.name == "train.jsonl"
    assert str(first).startswith(str(tmp_path / "cache"))  # $FRAMEWORK_CACHE
    mtime = first.stat().st_mtime_ns
    assert storage.local_copy(uri) == first
    assert counter.count == 1 and first.stat().st_mtime_ns == mtime

    storage.write_text_atomic(uri, '{"a": 2}\n')  # new ETag: new version in the cache
    second = storage.local_copy(uri)
    assert second != first and second.read_text() == '{"a": 2}\n'
    assert counter.count == 2
    assert storage.local_copy(uri, cache_dir=tmp_path / "other") != second  # explicit cache_dir wins
    assert counter.count == 3


def test_local_copy_dir_and_no_partial_copy(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "Llama-tiny"
    src.mkdir()
    for name, data in {
        "config.json": b"{}",
        "model.safetensors": os.urandom(50_000),
        "tok.json": b"t",
    }.items():
        (src / name).write_bytes(data)
    uri = storage.join(s3_bucket, "models", "Llama-tiny")
    storage.upload_dir(src, uri)

    real = storage._download_one
    fail = {"on": True}

    def broken(fs: Any, path: str, dst: Path, size: Any, u: str) -> None:
        if fail["on"] and path.endswith("tok.json"):
            raise storage.StorageError(f"simulated failure for {u}")
        real(fs, path, dst, size, u)

    monkeypatch.setattr(storage, "_download_one", broken)
    with pytest.raises(storage.StorageError, match="simulated"):
        storage.local_copy(uri)
    base = next((tmp_path / "cache" / "remote").iterdir())
    assert [p.name for p in base.iterdir() if not p.name.endswith(".lock")] == []  # nothing half-done kept

    (base / f".tmp-{storage.version(uri)}-1-dead").mkdir()  # as left by a killed process
    fail["on"] = False
    path = storage.local_copy(uri)
    assert path.name == "Llama-tiny" and path.is_dir()
    assert {p.name: p.read_bytes() for p in path.iterdir()} == {p.name: p.read_bytes() for p in src.iterdir()}
    assert [p.name for p in base.iterdir() if p.name.startswith(".tmp-")] == []
    assert json.loads((path.parent / ".source.json").read_text())["uri"] == uri


def test_local_copy_concurrent_threads(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = DownloadCounter(tmp_path / "downloads", monkeypatch)
    uri = storage.join(s3_bucket, "tok", "tokenizer.json")
    payload = os.urandom(200_000)
    storage.write_bytes_atomic(uri, payload)
    barrier = threading.Barrier(6)
    results: list[Path] = []

    def worker() -> None:
        barrier.wait()
        results.append(storage.local_copy(uri))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert len(results) == 6 and len(set(results)) == 1
    assert results[0].read_bytes() == payload
    assert counter.count == 1


def _child_local_copy(uri: str, out: str, start_at: float) -> None:
    time.sleep(max(0.0, start_at - time.time()))
    path = storage.local_copy(uri)
    Path(out).write_text(json.dumps({"path": str(path), "size": path.stat().st_size}))


def test_local_copy_concurrent_processes(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ranks on one node: several processes ask at once; exactly one downloads, all get the complete copy."""
    counter = DownloadCounter(tmp_path / "downloads", monkeypatch)
    uri = storage.join(s3_bucket, "models", "m")
    src = tmp_path / "m"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(100_000))
    (src / "b.bin").write_bytes(os.urandom(100_000))
    storage.upload_dir(src, uri)

    ctx = multiprocessing.get_context("fork")
    start_at = time.time() + 0.3
    outs = [tmp_path / f"out{i}.json" for i in range(3)]
    procs = [ctx.Process(target=_child_local_copy, args=(uri, str(o), start_at)) for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=30)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    paths = {json.loads(o.read_text())["path"] for o in outs}
    assert len(paths) == 1
    assert counter.count == 1
    got = Path(paths.pop())
    assert {p.name: p.read_bytes() for p in got.iterdir()} == {p.name: p.read_bytes() for p in src.iterdir()}
