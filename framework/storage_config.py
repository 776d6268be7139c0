"""Schema of the ``storage`` group: where the run directory lives and where remote inputs are cached."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StorageConfig:
    name: str = "local"  # local | s3
    output_uri: str | None = None  # run directory URI (s3://bucket/runs/name); null: Hydra's output dir
    cache_dir: str | None = (
        None  # local cache for remote models/data; null: $FRAMEWORK_CACHE or ~/.cache/framework
    )
    retries: int = 5  # attempts for a remote read/write before failing (1: no retry)
    retry_backoff_s: float = 1.0  # first backoff, doubled each retry
    max_retry_backoff_s: float = 30.0  # cap on a single backoff
    connect_timeout_s: float = 5.0  # per-attempt TCP connect timeout for remote storage
    read_timeout_s: float = 60.0  # per-attempt socket read timeout for remote storage
    max_workers: int = 8  # parallel file transfers in upload_dir / download_dir
