"""The Launcher class Hydra instantiates. Thin on purpose: Hydra imports this module while scanning plugins on
every run, so Ray (and the submission code) is imported only inside ``launch()``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class RayLauncher(Launcher):
    """Submits each sweep job to a Ray cluster through the Jobs API and follows it."""

    def __init__(self, **kwargs: Any) -> None:
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self.sweep_id: str | None = None  # one id for every batch of a sweep

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hydra_plugins.ray_launcher._core import launch

        return launch(self, job_overrides, initial_job_idx)
