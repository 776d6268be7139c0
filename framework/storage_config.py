"""Schema of the ``storage`` group: where the run directory lives and where remote inputs are cached."""

from __future__ import annotations

from dataclasses import dataclass

from framework.domains import NON_NEGATIVE_REAL, POSITIVE_REAL, URI, Int, d, one_of


@dataclass
class StorageConfig:
    name: str = d("local", one_of("local", "s3"))  # local | s3
    # run directory URI (s3://bucket/runs/name); null: Hydra's output dir
    output_uri: str | None = d(None, URI)
    # local cache for remote models/data; null: $FRAMEWORK_CACHE or ~/.cache/framework
    cache_dir: str | None = d(None, URI)
    retries: int = d(5, Int(1, 100))  # attempts for a remote read/write before failing (1: no retry)
    retry_backoff_s: float = d(1.0, NON_NEGATIVE_REAL)  # first backoff, doubled each retry
    max_retry_backoff_s: float = d(30.0, NON_NEGATIVE_REAL)  # cap on a single backoff
    connect_timeout_s: float = d(5.0, POSITIVE_REAL)  # per-attempt TCP connect timeout for remote storage
    read_timeout_s: float = d(60.0, POSITIVE_REAL)  # per-attempt socket read timeout for remote storage
    max_workers: int = d(8, Int(1, 256))  # parallel file transfers in upload_dir / download_dir
