"""The Launcher class Hydra instantiates. Thin on purpose: Hydra imports this module while scanning plugins on
every run, so the Kubernetes client and the rendering code are imported only inside ``launch()``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class KubernetesLauncher(Launcher):
    """Renders each sweep job to Kubernetes objects, then submits and follows it (or only writes manifests.yaml)."""

    def __init__(self, **kwargs: Any) -> None:
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self.sweep_id: str | None = None  # one id for every batch of a sweep

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra_plugins.kubernetes_launcher._compose import install

        install(hydra_context)  # compose each sweep job once, and fast (see _compose.py)
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hydra_plugins.kubernetes_launcher._core import launch

        return launch(self, job_overrides, initial_job_idx)
