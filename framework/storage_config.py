"""Schema of the ``storage`` group: where the run directory lives and where remote inputs are cached."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StorageConfig:
    name: str = "local"  # local | s3
    output_uri: str | None = None  # run directory URI (s3://bucket/runs/name); null: Hydra's output dir
    cache_dir: str | None = None  # local cache for remote models/data; null: ~/.cache/framework
    retries: int = 5  # attempts for a remote read/write before failing
    retry_backoff_s: float = 1.0  # first backoff, doubled each retry
