"""One storage layer for every path the framework reads or writes.

Local paths (``/data/x``, ``runs/a``, ``file:///data/x``) go straight to ``os``; everything else
(``s3://``, ``gs://``, ``memory://``, any fsspec protocol) goes through fsspec. S3 endpoint and credentials come
from the standard AWS variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_ENDPOINT_URL`` for MinIO and friends, ``AWS_DEFAULT_REGION``/``AWS_REGION``, ``AWS_PROFILE``).

Failure policy, for remote paths:

- transient failures (connection refused/reset, timeouts, 5xx, throttling) are retried with exponential backoff
  (:func:`configure` / :class:`RetryPolicy`; s3fs's and botocore's own retries are switched off so the total
  time is bounded by the policy), then raise :class:`StorageError` naming the URI and what to check;
- permanent failures raise at once: wrong credentials or access denied (:class:`StorageError`, "check
  AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"), missing bucket (:class:`StorageError`, "create it or fix the
  URI"), missing object (:class:`StorageNotFoundError`, also a ``FileNotFoundError``).

The original exception is always chained (``raise ... from e``). Local paths keep plain ``os`` semantics and
exceptions. No torch here, and s3fs/botocore are only imported when an ``s3://`` path is first used.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import glob as globlib
import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import fsspec
from fsspec.core import split_protocol

from framework.errors import FrameworkError

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from framework.storage_config import StorageConfig

__all__ = [
    "RetryPolicy",
    "StorageError",
    "StorageNotFoundError",
    "StorageSettings",
    "cache_root",
    "clear_instances",
    "configure",
    "configure_from_config",
    "configured",
    "download_dir",
    "exists",
    "filesystem",
    "get_file",
    "get_settings",
    "glob",
    "info",
    "invalidate_cache",
    "is_remote",
    "isdir",
    "isfile",
    "join",
    "listdir",
    "local_copy",
    "manifest",
    "open",
    "put_file",
    "read_bytes",
    "read_text",
    "remove",
    "restore",
    "upload_dir",
    "version",
    "write_bytes_atomic",
    "write_text_atomic",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
PathLike = str | os.PathLike[str]

_LOCAL_PROTOCOLS = (None, "file", "local", "pkg")  # pkg://<module>/<path>: a file the package ships
_S3_PROTOCOLS = ("s3", "s3a")


# ----------------------------------------------------------------------------------------------- errors


class StorageError(FrameworkError, RuntimeError):
    """A remote read or write failed for good. The message names the URI and what to check.

    A :class:`~framework.errors.FrameworkError` (reported without a traceback, exit code 1) and a
    ``RuntimeError``; the original exception is chained as ``__cause__``.
    """

    def __init__(self, message: str, *, uri: str | None = None) -> None:
        super().__init__(message)
        self.uri = uri


class StorageNotFoundError(StorageError, FileNotFoundError):
    """The object or directory does not exist (also a ``FileNotFoundError``, so ``except`` clauses for it work)."""

    def __init__(self, message: str, *, uri: str | None = None) -> None:
        StorageError.__init__(self, message, uri=uri)
        self.errno = errno.ENOENT
        self.filename = uri

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# ----------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try a remote operation: ``attempts`` tries in all, sleeping ``backoff_s * 2**i`` between them
    (capped at ``max_backoff_s``, with jitter in [50%, 100%]); each try has its own connect/read timeouts."""

    attempts: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be >= 1, got {self.attempts}")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("RetryPolicy backoffs must be >= 0")
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ValueError("RetryPolicy timeouts must be > 0")

    def delay(self, failed_attempt: int) -> float:
        """Sleep before the try after ``failed_attempt`` (1-based)."""
        base = min(self.max_backoff_s, self.backoff_s * 2 ** (failed_attempt - 1))
        return base * (0.5 + random.random() / 2)


@dataclass(frozen=True)
class StorageSettings:
    """Process-wide defaults of this module (see :func:`configure`)."""

    policy: RetryPolicy = field(default_factory=RetryPolicy)
    cache_dir: str | None = None  # local_copy cache root; None: $FRAMEWORK_CACHE, else ~/.cache/framework
    max_workers: int = 8  # parallel transfers in upload_dir / download_dir
    storage_options: Mapping[str, Mapping[str, Any]] = field(
        default_factory=dict
    )  # per protocol, merged last


_settings = StorageSettings()
_settings_lock = threading.Lock()
_UNSET: Any = object()


def get_settings() -> StorageSettings:
    return _settings


def configure(
    retries: int | None = None,
    backoff_s: float | None = None,
    *,
    max_backoff_s: float | None = None,
    connect_timeout_s: float | None = None,
    read_timeout_s: float | None = None,
    policy: RetryPolicy | None = None,
    cache_dir: str | None = _UNSET,
    max_workers: int | None = None,
    storage_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> StorageSettings:
    """Set process-wide defaults; arguments left out keep their value. Returns the previous settings, for
    :func:`restore`. ``retries`` is the total number of attempts (as ``storage.retries``)."""
    global _settings
    with _settings_lock:
        previous = _settings
        pol = policy or previous.policy
        overrides = {
            "attempts": retries,
            "backoff_s": backoff_s,
            "max_backoff_s": max_backoff_s,
            "connect_timeout_s": connect_timeout_s,
            "read_timeout_s": read_timeout_s,
        }
        pol = replace(pol, **{k: v for k, v in overrides.items() if v is not None})
        new = replace(previous, policy=pol)
        if cache_dir is not _UNSET:
            new = replace(new, cache_dir=cache_dir)
        if max_workers is not None:
            if max_workers < 1:
                raise ValueError(f"max_workers must be >= 1, got {max_workers}")
            new = replace(new, max_workers=max_workers)
        if storage_options is not None:
            new = replace(new, storage_options={k: dict(v) for k, v in storage_options.items()})
        _settings = new
    return previous


def configure_from_config(cfg: StorageConfig | Any) -> StorageSettings:
    """Apply a ``storage`` config group (:class:`framework.storage_config.StorageConfig`, its DictConfig, or a
    partial mapping read by attribute: absent fields take the schema's defaults)."""
    from framework.storage_config import StorageConfig

    schema = StorageConfig()

    def get(name: str) -> Any:
        return getattr(cfg, name, getattr(schema, name))

    return configure(
        retries=int(get("retries")),
        backoff_s=float(get("retry_backoff_s")),
        max_backoff_s=float(get("max_retry_backoff_s")),
        connect_timeout_s=float(get("connect_timeout_s")),
        read_timeout_s=float(get("read_timeout_s")),
        cache_dir=get("cache_dir"),
        max_workers=int(get("max_workers")),
    )


def restore(previous: StorageSettings) -> None:
    """Put back settings returned by :func:`configure`."""
    global _settings
    with _settings_lock:
        _settings = previous


@contextlib.contextmanager
def configured(**kwargs: Any) -> Iterator[StorageSettings]:
    """``with configured(retries=2, backoff_s=0.01): ...`` (same arguments as :func:`configure`)."""
    previous = configure(**kwargs)
    try:
        yield _settings
    finally:
        restore(previous)


# ----------------------------------------------------------------------------------------------- paths


def _protocol(uri: str) -> str | None:
    if "::" in uri:  # chained URL (simplecache::s3://...): remote, handled by fsspec as a whole
        return uri.split("::", 1)[0].split("://", 1)[0]
    proto, _ = split_protocol(uri)
    return proto


def is_remote(uri: PathLike) -> bool:
    """True for a URI that is not on the local filesystem (anything but a plain path, ``file://`` or
    ``pkg://``). The one answer to "is this remote?" in the framework."""
    return _protocol(os.fspath(uri)) not in _LOCAL_PROTOCOLS


def _local(uri: PathLike) -> str:
    """The local path of a plain path (``~`` expanded), ``file://`` URI or ``pkg://`` URI."""
    s = os.fspath(uri)
    proto, path = split_protocol(s)
    if proto == "pkg":
        from framework.config import package_path

        return package_path(s)
    if proto in ("file", "local"):
        return path
    return os.path.expanduser(s)


def join(uri: PathLike, *parts: PathLike) -> str:
    """Join path components onto a local path or a URI: ``join("s3://b/runs", "x", "y.json")``.

    ``parts`` are relative: leading and trailing slashes on them are ignored, empty parts are skipped.
    """
    base = os.fspath(uri)
    clean = [p.strip("/") for p in (os.fspath(x) for x in parts)]
    clean = [p for p in clean if p]
    if not clean:
        return base
    if not is_remote(base) and not base.startswith(("file://", "local://")):
        return os.path.join(base, *clean)
    if base.endswith("://"):
        return base + "/".join(clean)
    return base.rstrip("/") + "/" + "/".join(clean)


def _basename(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


# ----------------------------------------------------------------------------------------------- filesystems

_instances: dict[tuple[Any, ...], AbstractFileSystem] = {}
_instances_lock = threading.Lock()


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _storage_options(protocol: str) -> dict[str, Any]:
    settings = _settings
    opts: dict[str, Any] = {}
    if protocol in _S3_PROTOCOLS:
        env = os.environ
        pol = settings.policy
        config_kwargs: dict[str, Any] = {
            "connect_timeout": pol.connect_timeout_s,
            "read_timeout": pol.read_timeout_s,
            # One try per botocore call: retries are ours (RetryPolicy), so the total time stays bounded.
            "retries": {"total_max_attempts": 1, "mode": "standard"},
        }
        endpoint = _endpoint()
        if endpoint:
            opts["endpoint_url"] = endpoint
            # MinIO, Ceph and moto want path-style addressing (http://host:9000/bucket/key).
            config_kwargs["s3"] = {"addressing_style": env.get("AWS_S3_ADDRESSING_STYLE", "path")}
        if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
            opts["key"] = env["AWS_ACCESS_KEY_ID"]
            opts["secret"] = env["AWS_SECRET_ACCESS_KEY"]
            if env.get("AWS_SESSION_TOKEN"):
                opts["token"] = env["AWS_SESSION_TOKEN"]
        elif env.get("AWS_PROFILE"):
            opts["profile"] = env["AWS_PROFILE"]
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        if region:
            opts["client_kwargs"] = {"region_name": region}
        opts["config_kwargs"] = config_kwargs
        # Never answer exists/info/ls from a stale listing: other ranks and processes write here too.
        opts["use_listings_cache"] = False
    extra = settings.storage_options.get(protocol) or (
        settings.storage_options.get("s3") if protocol in _S3_PROTOCOLS else None
    )
    if extra:
        opts = _merge(opts, extra)
    return opts


def filesystem(uri: PathLike) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path inside it.

    Instances are cached per process, protocol, options and AWS environment, so changed credentials or a
    changed endpoint give a fresh client (fsspec's own instance cache is bypassed).
    """
    s = os.fspath(uri)
    if "::" in s:
        fs, path = fsspec.core.url_to_fs(s)
        return fs, path
    proto = _protocol(s)
    if proto in _LOCAL_PROTOCOLS:
        return fsspec.filesystem("file"), _local(s)
    assert proto is not None
    opts = _storage_options(proto)
    aws_env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    key = (os.getpid(), proto, json.dumps(opts, sort_keys=True, default=repr), aws_env)
    with _instances_lock:
        fs = _instances.get(key)
        if fs is None:
            if len(_instances) >= 32:
                _instances.clear()
            cls = fsspec.get_filesystem_class(proto)
            fs = cls(skip_instance_cache=True, **opts)
            if proto in _S3_PROTOCOLS:
                fs.retries = 1  # type: ignore[attr-defined]  # s3fs's own retry loop: off (ours is outside)
            _instances[key] = fs
    return fs, fs._strip_protocol(s)  # type: ignore[return-value]


def clear_instances() -> None:
    """Forget every cached filesystem instance (next use builds fresh clients from the current environment)."""
    with _instances_lock:
        _instances.clear()


def invalidate_cache(uri: PathLike | None = None) -> None:
    """Drop fsspec listing caches for ``uri`` (or everything), so ``exists``/``ls`` see objects written
    elsewhere. This module already disables the S3 listing cache and invalidates after its own writes; call
    this after writing through an fsspec handle of your own."""
    with _instances_lock:
        instances = list(_instances.values())
    if uri is None:
        for fs in instances:
            fs.invalidate_cache()
        return
    if not is_remote(uri):
        return
    fs, path = filesystem(uri)
    fs.invalidate_cache(path)


# ----------------------------------------------------------------------------------------------- errors: classify

_CONNECT_ERRORS = frozenset(
    {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ProxyConnectionError",
        "ClientConnectorError",
        "ClientConnectorDNSError",
        "ConnectionRefusedError",
        "gaierror",
    }
)
_TRANSIENT_ERRORS = frozenset(
    {
        "ConnectionError",  # builtins (reset, aborted, broken pipe) and botocore's
        "TimeoutError",
        "timeout",
        "HTTPClientError",
        "ConnectionClosedError",
        "ReadTimeoutError",
        "ClientConnectionError",
        "ClientOSError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
        "ClientPayloadError",
        "IncompleteRead",
        "IncompleteReadError",
        "ResponseStreamingError",
        "ResponseParserError",
        "FSTimeoutError",
    }
)
_AUTH_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AllAccessDisabled",
        "AccountProblem",
        "InvalidSecurity",
        "RequestTimeTooSkewed",
        "UnrecognizedClientException",
        "403",
    }
)
_THROTTLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequests",
        "TooManyRequestsException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "XAmzContentSHA256Mismatch",
        "500",
        "502",
        "503",
        "504",
    }
)
_NO_CREDENTIALS = frozenset(
    {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError", "NoAuthTokenError"}
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404", "NoSuchUpload", "NoSuchVersion"})


@dataclass(frozen=True)
class _Failure:
    kind: str  # unreachable | transient | auth | no_credentials | no_bucket | not_found | other
    code: str | None = None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen and len(seen) < 32:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _names(exc: BaseException) -> set[str]:
    return {c.__name__ for c in type(exc).__mro__}


def _classify(exc: BaseException) -> _Failure:
    chain = list(_chain(exc))
    for e in chain:
        response = getattr(e, "response", None)
        if isinstance(response, Mapping) and isinstance(response.get("Error"), Mapping):
            code = str(response["Error"].get("Code") or "")
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            status = int(status) if isinstance(status, int | str) and str(status).isdigit() else None
            if code == "NoSuchBucket":
                return _Failure("no_bucket", code)
            if code in _AUTH_CODES or status == 403:
                return _Failure("auth", code or "403")
            if code in _NOT_FOUND_CODES or status == 404:
                return _Failure("not_found", code)
            if code in _THROTTLE_CODES or status == 429 or (status is not None and status >= 500):
                return _Failure("transient", code or str(status))
            return _Failure("other", code or None)
    for e in chain:
        if _names(e) & _NO_CREDENTIALS:
            return _Failure("no_credentials", type(e).__name__)
    for e in chain:
        if _names(e) & _CONNECT_ERRORS:
            return _Failure("unreachable", type(e).__name__)
    for e in chain:
        if _names(e) & _TRANSIENT_ERRORS:
            return _Failure("transient", type(e).__name__)
    if isinstance(exc, FileNotFoundError):
        return _Failure("not_found")
    if isinstance(exc, PermissionError):
        return _Failure("auth")
    return _Failure("other")


def _short(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bucket(uri: str) -> str:
    rest = uri.split("://", 1)[-1]
    return rest.split("/", 1)[0]


def _translate(
    exc: BaseException, failure: _Failure, uri: str, op: str, attempts: int, elapsed: float
) -> BaseException:
    s3 = _protocol(uri) in _S3_PROTOCOLS
    endpoint = (_endpoint() or "the default AWS endpoint") if s3 else None
    kind = failure.kind
    if kind == "unreachable":
        where = f"the S3 endpoint {endpoint}" if s3 else "the storage service"
        hint = (
            "Check AWS_ENDPOINT_URL (and AWS_DEFAULT_REGION), and that the endpoint is up and reachable from here."
            if s3
            else "Check the URI and that the service is up and reachable from here."
        )
        return StorageError(
            f"Cannot reach {where} to {op} {uri} ({attempts} attempt(s) over {elapsed:.1f}s; last error: "
            f"{_short(exc)}). {hint}",
            uri=uri,
        )
    if kind == "transient":
        where = f" at {endpoint}" if s3 else ""
        return StorageError(
            f"Could not {op} {uri}: storage{where} kept failing ({attempts} attempt(s) over {elapsed:.1f}s; last "
            f"error: {_short(exc)}). The service is down, overloaded or throttling: retry later, or raise "
            f"storage.retries / storage.retry_backoff_s." + (" Check AWS_ENDPOINT_URL." if s3 else ""),
            uri=uri,
        )
    if kind == "auth":
        code = failure.code or "PermissionError"
        if s3:
            if code == "AccessDenied":
                hint = (
                    "the credentials were accepted but lack permission for this bucket or key: check the "
                    "bucket policy / IAM permissions, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY."
                )
            elif code == "RequestTimeTooSkewed":
                hint = "this machine's clock is off; fix it (NTP), then retry."
            else:
                hint = (
                    "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary "
                    f"credentials) for the endpoint {endpoint}."
                )
        else:
            hint = "check the credentials configured for this storage."
        return StorageError(f"Access denied to {uri} ({code}): {hint}", uri=uri)
    if kind == "no_credentials":
        return StorageError(
            f"No credentials to access {uri} ({_short(exc, 120)}): set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
            "(on Kubernetes, from a Secret), or AWS_PROFILE, or give the pod an IAM role.",
            uri=uri,
        )
    if kind == "no_bucket":
        where = f" at {endpoint}" if s3 else ""
        return StorageError(
            f"Bucket {_bucket(uri)!r} does not exist{where} (while trying to {op} {uri}): create it or fix the URI.",
            uri=uri,
        )
    if kind == "not_found":
        return StorageNotFoundError(f"No such file or directory: {uri}", uri=uri)
    if isinstance(exc, OSError):
        return StorageError(f"Could not {op} {uri}: {_short(exc)}", uri=uri)
    return exc


def _run(uri: str, op: str, fn: Callable[[], T], *, policy: RetryPolicy | None = None) -> T:
    """Call ``fn`` (one remote operation on ``uri``) with retries; raise a translated error on failure."""
    pol = policy or _settings.policy
    start = time.monotonic()
    for attempt in range(1, pol.attempts + 1):
        try:
            return fn()
        except FrameworkError:  # e.g. Preempted raised by a signal handler mid-call: never retried
            raise
        except Exception as e:
            failure = _classify(e)
            if failure.kind in ("unreachable", "transient") and attempt < pol.attempts:
                pause = pol.delay(attempt)
                log.warning(
                    "storage: %s %s failed (attempt %d/%d: %s); retrying in %.2fs",
                    op,
                    uri,
                    attempt,
                    pol.attempts,
                    _short(e, 200),
                    pause,
                )
                time.sleep(pause)
                continue
            translated = _translate(e, failure, uri, op, attempt, time.monotonic() - start)
            if translated is e:
                raise
            raise translated from e
    raise AssertionError("unreachable")  # pragma: no cover


# ----------------------------------------------------------------------------------------------- local helpers


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _tmp_sibling(path: str) -> str:
    d, name = os.path.split(path)
    return os.path.join(d, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _write_local_atomic(path: str, data: bytes) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = _tmp_sibling(os.path.abspath(path))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(d)


def _copy_local_atomic(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    tmp = _tmp_sibling(os.path.abspath(dst))
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _walk_local(root: str) -> list[tuple[str, str, int]]:
    """(relpath with '/', absolute path, size) of every file under ``root``, sorted."""
    out: list[tuple[str, str, int]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            out.append((rel, full, os.path.getsize(full)))
    return out


def _parallel(fn: Callable[[T], Any], items: Iterable[T], max_workers: int) -> None:
    items = list(items)
    if not items:
        return
    if max_workers <= 1 or len(items) == 1:
        for item in items:
            fn(item)
        return
    pool = ThreadPoolExecutor(max_workers=min(max_workers, len(items)), thread_name_prefix="storage")
    try:
        futures = [pool.submit(fn, item) for item in items]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for fut in futures:
            if fut.done() and fut.exception() is not None:
                for other in futures:
                    other.cancel()
                raise fut.exception()  # type: ignore[misc]
        for fut in futures:
            fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------------------------- queries


def info(uri: PathLike) -> dict[str, Any]:
    """``{"name", "size", "type": "file"|"directory", ...}`` (S3 adds ``ETag``, ``LastModified``)."""
    s = os.fspath(uri)
    if not is_remote(s):
        path = _local(s)
        st = os.stat(path)
        kind = "directory" if os.path.isdir(path) else "file"
        return {"name": path, "size": st.st_size, "type": kind, "mtime": st.st_mtime}
    fs, path = filesystem(s)
    return dict(_run(s, "stat", lambda: fs.info(path)))


def _remote_info_or_none(s: str) -> dict[str, Any] | None:
    fs, path = filesystem(s)

    def probe() -> dict[str, Any] | None:
        try:
            return dict(fs.info(path))
        except FileNotFoundError as e:
            if _classify(e).kind == "no_bucket":
                raise
            return None

    return _run(s, "check", probe)


def exists(uri: PathLike) -> bool:
    """Whether a file or directory exists. A missing bucket is an error (:class:`StorageError`), not False."""
    s = os.fspath(uri)
    if not is_remote(s):
        return os.path.exists(_local(s))
    return _remote_info_or_none(s) is not None


def isdir(uri: PathLike) -> bool:
    s = os.fspath(uri)
    if not is_remote(s):
        return os.path.isdir(_local(s))
    found = _remote_info_or_none(s)
    return found is not None and found.get("type") == "directory"


def isfile(uri: PathLike) -> bool:
    s = os.fspath(uri)
    if not is_remote(s):
        return os.path.isfile(_local(s))
    found = _remote_info_or_none(s)
    return found is not None and found.get("type") == "file"


def listdir(uri: PathLike) -> list[str]:
    """Names (not paths) of the entries directly under a directory, sorted."""
    s = os.fspath(uri)
    if not is_remote(s):
        return sorted(os.listdir(_local(s)))
    fs, path = filesystem(s)
    entries = _run(s, "list", lambda: fs.ls(path, detail=True))
    own = path.rstrip("/")
    names: set[str] = set()
    for e in entries:
        raw = str(e["name"])
        name = raw.rstrip("/")
        if name == own:  # the directory's own marker object, or `ls` of a file listing the file itself
            if len(entries) == 1 and e.get("type") == "file" and not raw.endswith("/"):
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", s)
            continue
        names.add(name.rsplit("/", 1)[-1])
    return sorted(n for n in names if n)


def glob(pattern: PathLike) -> list[str]:
    """Every path matching a glob pattern (``*``, ``**``, ``?``), sorted: local paths, or full URIs
    (``s3://bucket/x``) for a remote pattern."""
    s = os.fspath(pattern)
    if not is_remote(s):
        return sorted(globlib.glob(_local(s)))
    fs, path = filesystem(s)
    found = _run(s, "list", lambda: fs.glob(path))
    return sorted(str(fs.unstrip_protocol(p)) for p in found)


def manifest(uri: PathLike) -> dict[str, int]:
    """``{relpath: size}`` of every file under a directory (recursive), the same shape :func:`upload_dir`
    returns, so an upload can be verified against what the store holds."""
    s = os.fspath(uri)
    if not is_remote(s):
        root = _local(s)
        if not os.path.isdir(root):
            raise FileNotFoundError(errno.ENOENT, "No such directory", root)
        return {rel: size for rel, _, size in _walk_local(root)}
    return {rel: int(i.get("size") or 0) for rel, (_, i) in _remote_files(s).items()}


def _remote_files(s: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """``{relpath: (path in fs, info)}`` of the files under a remote directory; raises if there are none."""
    fs, path = filesystem(s)
    found = _run(s, "list", lambda: fs.find(path, detail=True, withdirs=False))
    prefix = path.rstrip("/") + "/"
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, i in sorted(found.items()):
        if i.get("type") == "directory" or name.endswith("/"):
            continue
        if not name.startswith(prefix):  # `find` on a file returns the file itself
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", s)
        out[name[len(prefix) :]] = (name, dict(i))
    if not out:
        raise StorageNotFoundError(f"No such directory (or it holds no files): {s}", uri=s)
    return out


def _tag(i: Mapping[str, Any]) -> str:
    for k in ("ETag", "etag", "md5Hash", "md5", "checksum"):
        if i.get(k):
            return str(i[k]).strip('"')
    mtime = i.get("LastModified") or i.get("mtime") or i.get("updated") or i.get("created") or ""
    return f"{i.get('size')}-{mtime}"


def version(uri: PathLike) -> str:
    """A fingerprint that changes when the file (or any file under the directory) changes: ETags where the
    store has them, else size + modification time."""
    s = os.fspath(uri)
    _, entries = _version_and_entries(s)
    return _fingerprint(entries)


def _version_and_entries(s: str) -> tuple[bool, dict[str, tuple[str, dict[str, Any]]]]:
    """(is_dir, entries) of a remote file or directory; for a file the single entry's relpath is ''."""
    if not is_remote(s):
        path = _local(s)
        if os.path.isdir(path):
            return True, {
                rel: (full, {"size": size, "mtime": os.path.getmtime(full)})
                for rel, full, size in _walk_local(path)
            }
        st = os.stat(path)
        return False, {"": (path, {"size": st.st_size, "mtime": st.st_mtime})}
    fs, path = filesystem(s)
    i = _remote_info_or_none(s)
    if i is None:
        raise StorageNotFoundError(f"No such file or directory: {s}", uri=s)
    if i.get("type") == "directory":
        return True, _remote_files(s)
    return False, {"": (path, i)}


def _fingerprint(entries: Mapping[str, tuple[str, Mapping[str, Any]]]) -> str:
    rows = sorted((rel, _tag(i), int(i.get("size") or 0)) for rel, (_, i) in entries.items())
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- read / write


def read_bytes(uri: PathLike) -> bytes:
    s = os.fspath(uri)
    if not is_remote(s):
        with builtins.open(_local(s), "rb") as f:
            return f.read()
    fs, path = filesystem(s)
    return bytes(_run(s, "read", lambda: fs.cat_file(path)))


def read_text(uri: PathLike, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


def write_bytes_atomic(uri: PathLike, data: bytes) -> None:
    """Write a whole file so readers see the old content or the new, never a partial file.

    Local: temp file in the same directory, fsync, ``os.replace``. Remote: one PUT (or one multipart upload,
    which S3 also publishes atomically on completion). Parent directories are created as needed.
    """
    s = os.fspath(uri)
    if not is_remote(s):
        _write_local_atomic(_local(s), bytes(data))
        return
    fs, path = filesystem(s)
    payload = bytes(data)
    _run(s, "write", lambda: fs.pipe_file(path, payload))
    fs.invalidate_cache(path)


def write_text_atomic(uri: PathLike, text: str, encoding: str = "utf-8") -> None:
    write_bytes_atomic(uri, text.encode(encoding))


def put_file(local_path: PathLike, uri: PathLike) -> None:
    """Copy one local file to ``uri`` (atomic as :func:`write_bytes_atomic`)."""
    src = _local(local_path)
    s = os.fspath(uri)
    if not is_remote(s):
        _copy_local_atomic(src, _local(s))
        return
    fs, path = filesystem(s)
    _run(s, "upload", lambda: fs.put_file(src, path))
    fs.invalidate_cache(path)


def get_file(uri: PathLike, local_path: PathLike) -> None:
    """Copy one file from ``uri`` to a local path (via a temp name: a partial download never shows)."""
    s = os.fspath(uri)
    dst = Path(_local(local_path))
    if not is_remote(s):
        _copy_local_atomic(_local(s), str(dst))
        return
    fs, path = filesystem(s)
    _download_one(fs, path, dst, None, s)


def remove(uri: PathLike, recursive: bool = False, *, missing_ok: bool = False) -> None:
    """Delete a file, or a directory tree with ``recursive=True``."""
    s = os.fspath(uri)
    if not is_remote(s):
        path = _local(s)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                if recursive:
                    shutil.rmtree(path)
                else:
                    os.rmdir(path)
            else:
                os.unlink(path)
        except FileNotFoundError:
            if not missing_ok:
                raise
        return
    fs, path = filesystem(s)
    found = _remote_info_or_none(s)  # S3 deletes never fail on a missing key: look first
    if found is None:
        if missing_ok:
            return
        raise StorageNotFoundError(f"No such file or directory: {s}", uri=s)
    if found.get("type") == "directory" and not recursive:
        raise IsADirectoryError(errno.EISDIR, "Is a directory (pass recursive=True)", s)

    def rm() -> None:
        try:
            fs.rm(path, recursive=recursive)
        except FileNotFoundError as e:
            if _classify(e).kind == "no_bucket":
                raise
            # A retry after a failed try may find part (or all) of it gone already: that is success.

    try:
        _run(s, "delete", rm)
    finally:
        fs.invalidate_cache(path)


_MODES = frozenset({"r", "rb", "w", "wb", "a", "ab", "rt", "wt", "at"})


@contextlib.contextmanager
def open(  # noqa: A001 - mirrors builtins.open on purpose
    uri: PathLike,
    mode: str = "r",
    *,
    encoding: str | None = None,
    newline: str | None = None,
) -> Iterator[IO[Any]]:
    """Open a file for reading or writing as a context manager.

    Writes (``w``/``wb``) are atomic everywhere: the file appears with its full content when the block exits
    without an exception, and not at all (old content kept) when it raises. Remote files are spooled through a
    local temp file (in ``$TMPDIR``), so remote reads and writes get the same retries as every other call;
    ``a``/``ab`` on a remote file re-uploads the whole object. Text modes default to UTF-8.
    """
    if mode not in _MODES:
        raise ValueError(f"unsupported mode {mode!r}; use one of {sorted(_MODES)}")
    s = os.fspath(uri)
    binary = "b" in mode
    kind = mode[0]
    text_kw: dict[str, Any] = {} if binary else {"encoding": encoding or "utf-8", "newline": newline}
    if not is_remote(s):
        path = _local(s)
        if kind in "ra":
            if kind == "a":
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with builtins.open(path, mode, **text_kw) as f:
                yield f
            return
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = _tmp_sibling(os.path.abspath(path))
        try:
            with builtins.open(tmp, mode, **text_kw) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return

    fs, path = filesystem(s)
    spool_dir = tempfile.mkdtemp(prefix="framework-storage-")
    spool = Path(spool_dir) / (_basename(path) or "object")
    try:
        if kind == "r" or (kind == "a" and exists(s)):
            _download_one(fs, path, spool, None, s)
        with builtins.open(spool, mode, **text_kw) as f:
            yield f
        if kind in "wa":
            _run(s, "upload", lambda: fs.put_file(str(spool), path))
            fs.invalidate_cache(path)
    finally:
        shutil.rmtree(spool_dir, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- directories


class _IncompleteDownload(ConnectionError):
    """Fewer bytes arrived than the listing promised (retried as a transient failure)."""


def _download_one(fs: AbstractFileSystem, path: str, dst: Path, size: int | None, uri: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    part = dst.with_name(f".{dst.name}.part-{os.getpid()}-{uuid.uuid4().hex[:8]}")

    def attempt() -> None:
        try:
            fs.get_file(path, str(part))
            got = part.stat().st_size
            if size is not None and got != size:
                raise _IncompleteDownload(f"got {got} of {size} bytes")
            os.replace(part, dst)
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()

    _run(uri, "download", attempt)


def upload_dir(local_dir: PathLike, uri: PathLike, *, max_workers: int | None = None) -> dict[str, int]:
    """Upload every file under ``local_dir`` to ``uri`` (in parallel, each file retried on its own).

    Returns the manifest ``{relpath: size}`` (relpaths use '/'). Works for a local destination too (copies).
    Not atomic as a whole: write a marker object last (e.g. ``checkpoints/latest``) to publish the directory.
    """
    if is_remote(local_dir):
        raise ValueError(f"upload_dir needs a local source directory, got {os.fspath(local_dir)}")
    src = _local(local_dir)
    if not os.path.isdir(src):
        raise FileNotFoundError(errno.ENOENT, "No such directory", src)
    files = _walk_local(src)
    workers = max_workers or _settings.max_workers
    s = os.fspath(uri)
    if not is_remote(s):
        dest = _local(s)
        _parallel(
            lambda item: _copy_local_atomic(item[1], os.path.join(dest, *item[0].split("/"))), files, workers
        )
    else:
        fs, base = filesystem(s)
        base = base.rstrip("/")

        def one(item: tuple[str, str, int]) -> None:
            rel, full, _ = item
            _run(join(s, rel), "upload", lambda: fs.put_file(full, f"{base}/{rel}"))

        try:
            _parallel(one, files, workers)
        finally:
            fs.invalidate_cache(base)
    return {rel: size for rel, _, size in files}


def download_dir(uri: PathLike, local_dir: PathLike, *, max_workers: int | None = None) -> dict[str, int]:
    """Download every file under ``uri`` into ``local_dir`` (created; existing files are overwritten, each
    replaced atomically). Returns the manifest ``{relpath: size}``."""
    s = os.fspath(uri)
    dest = Path(_local(local_dir))
    workers = max_workers or _settings.max_workers
    if not is_remote(s):
        src = _local(s)
        if not os.path.isdir(src):
            raise FileNotFoundError(errno.ENOENT, "No such directory", src)
        files = _walk_local(src)
        _parallel(
            lambda item: _copy_local_atomic(item[1], str(dest.joinpath(*item[0].split("/")))), files, workers
        )
        return {rel: size for rel, _, size in files}
    entries = _remote_files(s)
    _download_entries(entries, dest, s, workers)
    return {rel: int(i.get("size") or 0) for rel, (_, i) in entries.items()}


def _download_entries(
    entries: Mapping[str, tuple[str, Mapping[str, Any]]], dest: Path, uri: str, max_workers: int
) -> None:
    """Download ``{relpath: (path, info)}`` into ``dest`` ('' as relpath means ``dest`` itself is the file)."""
    fs, _ = filesystem(uri)

    def one(item: tuple[str, tuple[str, Mapping[str, Any]]]) -> None:
        rel, (path, i) = item
        target = dest.joinpath(*rel.split("/")) if rel else dest
        size = i.get("size")
        _download_one(fs, path, target, int(size) if size is not None else None, join(uri, rel))

    _parallel(one, sorted(entries.items()), max_workers)


# ----------------------------------------------------------------------------------------------- local cache


def cache_root(cache_dir: PathLike | None = None) -> Path:
    """The one local cache root: ``cache_dir``, else ``storage.cache_dir`` (:func:`configure`), else
    ``$FRAMEWORK_CACHE``, else ``~/.cache/framework``. Remote copies, staging copies and tokenized data live
    under it."""
    chosen = cache_dir or _settings.cache_dir or os.environ.get("FRAMEWORK_CACHE")
    return Path(os.fspath(chosen)).expanduser() if chosen else Path.home() / ".cache" / "framework"


def staging_dir(uri: PathLike) -> Path:
    """The one local working copy of a remote directory: ``<cache root>/staging/<protocol>/<path>``.

    Written locally, published with :func:`put_file` / :func:`upload_dir`. The layout mirrors the URI, so the
    staging dir of ``s3://b/run/tensorboard`` is the ``tensorboard`` subdir of the staging dir of ``s3://b/run``
    (a run directory has one staging copy, whoever writes into it), and a restarted process finds the same
    paths again.
    """
    s = os.fspath(uri)
    if not is_remote(s):
        raise ValueError(f"staging_dir({s!r}): a local path needs no staging copy")
    proto = _protocol(s) or "remote"
    path = s.split("://", 1)[-1]
    parts = [_safe_name(p) for p in path.split("/") if p and p not in (".", "..")]
    return cache_root().joinpath("staging", _safe_name(proto), *parts)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80] or "object"


def local_copy(uri: PathLike, cache_dir: PathLike | None = None) -> Path:
    """A local path holding the content of a remote file or directory, downloaded once and reused.

    Local paths come back unchanged (as ``Path``). A remote one is downloaded into
    ``<cache root>/remote/<hash of URI>-<name>/<version>/<name>``, where ``version`` fingerprints the remote
    ETags (or size + mtime): a changed object gives a new download, an unchanged one is reused across runs.
    Safe when several processes (ranks on one node) or threads call it at once: one downloads under a file
    lock into a temp directory that is renamed into place when complete; the others wait and reuse it. A
    partial download is never used. Old versions are kept (delete the cache root to reclaim space).
    """
    s = os.fspath(uri)
    if not is_remote(s):
        return Path(_local(s))
    is_dir, entries = _version_and_entries(s)
    ver = _fingerprint(entries)
    fs, path = filesystem(s)
    name = _safe_name(_basename(path))
    normalized = f"{_protocol(s)}://{path.rstrip('/')}"
    base = cache_root(cache_dir) / "remote" / f"{hashlib.sha256(normalized.encode()).hexdigest()[:16]}-{name}"
    final = base / ver
    target = final / name
    if final.is_dir():
        return target
    base.mkdir(parents=True, exist_ok=True)
    with _file_lock(base / f"{ver}.lock"):
        if final.is_dir():  # another process finished while we waited
            return target
        for stale in base.glob(f".tmp-{ver}-*"):  # left by a process that died mid-download
            shutil.rmtree(stale, ignore_errors=True)
        tmp = base / f".tmp-{ver}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            dest = tmp / name
            if is_dir:
                dest.mkdir()
            log.info("storage: downloading %s into the cache %s", s, final)
            _download_entries(entries, dest, s, _settings.max_workers)
            files = {rel: int(i.get("size") or 0) for rel, (_, i) in entries.items()}
            (tmp / ".source.json").write_text(
                json.dumps({"uri": s, "version": ver, "files": files}, indent=1)
            )
            os.rename(tmp, final)
            _fsync_dir(str(base))
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def scheme_problem(scheme: str) -> str | None:
    """Why a URI scheme cannot be read or written here (unknown, or its filesystem package not installed);
    None when it can. Cheap: finds the package without importing it."""
    import importlib.util

    from fsspec.registry import known_implementations, registry

    scheme = scheme.lower()
    if scheme in _LOCAL_PROTOCOLS or scheme in registry:
        return None
    impl = known_implementations.get(scheme)
    if impl is None:
        return f"uses the unknown scheme {scheme}://; use a local path or e.g. s3://bucket/path"
    module = impl["class"].split(".", 1)[0]
    if importlib.util.find_spec(module) is None:
        return f"needs the {module} package for {scheme}://, which is not installed (pip install {module})"
    return None
