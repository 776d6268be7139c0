"""A Hydra callback that records each job's start and end (for tests/unit/test_k8s_hydra_suite.py)."""

from __future__ import annotations

import json
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class Record(Callback):
    def __init__(self, path: str) -> None:
        self.path = path

    def _write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._write({"event": "start", "num": int(config.hydra.job.num)})

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        self._write(
            {
                "event": "end",
                "num": int(config.hydra.job.num),
                "status": job_return.status.name,
                "cfg_has_hydra": "hydra" in job_return.cfg,
                "lr": float(job_return.cfg.optim.lr),
            }
        )
