"""The launcher's fast sweep-config loader gives exactly what Hydra's own load_sweep_config gives."""

from __future__ import annotations

from typing import Any

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from hydra_plugins.kubernetes_launcher._compose import SweepConfigLoader
from omegaconf import DictConfig, OmegaConf

from framework.config import conf_dir, register

BASE = ["launcher=kubernetes", "hardware=a100x8"]


@pytest.fixture(scope="module")
def loaders() -> tuple[ConfigLoaderImpl, DictConfig]:
    register()
    inner = ConfigLoaderImpl(config_search_path=create_config_search_path(str(conf_dir())))
    master = inner.load_configuration(
        "config", overrides=[*BASE, "optim.lr=1e-4,3e-4"], run_mode=RunMode.MULTIRUN
    )
    return inner, master


def plain(cfg: DictConfig) -> dict[str, Any]:
    out = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(out, dict)
    return {str(k): v for k, v in out.items()}


@pytest.mark.parametrize(
    "overrides",
    [
        [*BASE, "optim.lr=0.0003"],
        [*BASE, "hardware.nodes=2", "train.max_steps=null", "run_name=exp-1"],
        [*BASE, "+launcher.env.X=1", "++launcher.labels={team: ml}", "~lora", "recipe.name=full_finetune"],
        [*BASE, "model=llama3_2_1b", "model.gradient_checkpointing=true"],  # a group choice and a value
        ["launcher=kubernetes", "hardware=cpu", "hardware.nodes=3"],
    ],
)
def test_same_config_as_hydra(loaders: tuple[ConfigLoaderImpl, DictConfig], overrides: list[str]) -> None:
    inner, master = loaders
    fast = SweepConfigLoader(inner)
    got = fast.load_sweep_config(master, overrides)
    again = fast.load_sweep_config(
        master, overrides
    )  # the launcher's call gets the config the sweeper validated
    assert again is got
    want = inner.load_sweep_config(master, overrides)
    assert plain(got) == plain(want)
    assert list(got.hydra.overrides.task) == overrides
    assert got.hydra.job.override_dirname == want.hydra.job.override_dirname
    assert OmegaConf.get_type(got, "train") is OmegaConf.get_type(want, "train")  # still typed by the schema
    assert fast.needs_hydra_config(overrides) is False  # no ${hydra:...} in this project's config


def test_jobs_do_not_share_state(loaders: tuple[ConfigLoaderImpl, DictConfig]) -> None:
    inner, master = loaders
    fast = SweepConfigLoader(inner)
    a = fast.load_sweep_config(master, [*BASE, "optim.lr=0.1"])
    b = fast.load_sweep_config(master, [*BASE, "optim.lr=0.2"])
    a.train.seed = 7
    assert (a.optim.lr, b.optim.lr, b.train.seed) == (0.1, 0.2, 42)
    assert fast.needs_hydra_config([*BASE, "run_name=${hydra:job.num}"]) is True


@pytest.mark.parametrize("bad", ["train.no_such_key=1", "train.max_steps=abc", "+optim.lr=1"])
def test_same_errors_as_hydra(loaders: tuple[ConfigLoaderImpl, DictConfig], bad: str) -> None:
    inner, master = loaders
    with pytest.raises(ConfigCompositionException):
        inner.load_sweep_config(master, [*BASE, bad])
    with pytest.raises(ConfigCompositionException):
        SweepConfigLoader(inner).load_sweep_config(master, [*BASE, bad])


def test_hydra_node_detached_and_put_back_unchanged(loaders: tuple[ConfigLoaderImpl, DictConfig]) -> None:
    from hydra_plugins.kubernetes_launcher._core import _without_hydra

    inner, master = loaders
    cfg = SweepConfigLoader(inner).load_sweep_config(master, [*BASE, "optim.lr=0.1"])
    before, node = plain(cfg), cfg._get_node("hydra")
    with _without_hydra(cfg) as task:
        assert "hydra" not in task and task.optim.lr == 0.1
        assert OmegaConf.missing_keys(task) == set()  # what the framework's validate walks
    assert cfg._get_node("hydra") is node  # not a copy
    assert plain(cfg) == before and cfg.hydra.job.name == master.hydra.job.name
