"""Compose the project's config in-process (as `python -m framework` would) for rendering tests."""

from __future__ import annotations

from omegaconf import DictConfig

from framework.config import conf_dir, register


def compose(*overrides: str) -> DictConfig:
    """The task config (no hydra node) for ``launcher=kubernetes`` plus ``overrides``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return hydra_compose("config", overrides=["launcher=kubernetes", *overrides])
