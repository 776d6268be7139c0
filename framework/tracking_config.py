"""Schema of the ``tracking`` group: experiment trackers and Prometheus metrics."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrackingConfig:
    backends: list[str] = field(default_factory=list)  # any of: tensorboard, mlflow, wandb
