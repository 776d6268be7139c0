"""One test per Hydra/OmegaConf private hook in framework.hydra_compat: an upgrade that breaks one fails here."""

from __future__ import annotations

import contextlib
import pickle

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationToMissingValueError

from framework import hydra_compat
from tests.unit.test_config import compose_cfg


def test_no_mode_compose_patches_and_restores_get_mode() -> None:
    from hydra._internal.hydra import Hydra

    original = Hydra.get_mode
    with hydra_compat.no_mode_compose(skip=True):
        assert Hydra.get_mode is not original
        assert Hydra.get_mode(None, config_name="config", overrides=[]) is None  # type: ignore[arg-type]
    assert Hydra.get_mode is original
    with hydra_compat.no_mode_compose(skip=False):
        assert Hydra.get_mode is original


def test_apply_overrides_uses_hydras_grammar() -> None:
    cfg = compose_cfg()
    parsed = OverridesParser.create().parse_overrides(["optim.lr=0.5", "+extra_key=1", "~lora"])
    hydra_compat.apply_overrides(parsed, cfg)
    assert cfg.optim.lr == 0.5 and cfg.extra_key == 1 and "lora" not in cfg


def test_overrides_dirname_as_hydra_writes_it() -> None:
    parsed = OverridesParser.create().parse_overrides(["optim.lr=0.5", "seed=3", "run_name=x"])
    name = hydra_compat.overrides_dirname(parsed, kv_sep="=", item_sep=",", exclude_keys=["run_name"])
    assert name == "optim.lr=0.5,seed=3"


def test_detached_removes_then_restores_the_same_node() -> None:
    cfg = OmegaConf.create({"hydra": {"job": {"num": 3}}, "train": {"max_steps": 2}})
    node = cfg._get_node("hydra")
    with hydra_compat.detached(cfg, "hydra") as task:
        assert "hydra" not in task and task.train.max_steps == 2
    assert cfg._get_node("hydra") is node and cfg.hydra.job.num == 3  # the node itself, not a copy
    assert pickle.loads(pickle.dumps(cfg)).hydra.job.num == 3  # still a well-formed config


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["storage.output_uri=???", "+dataset.extra=???"],
        ["launcher=kubernetes", "hardware=a100x8", "+launcher.env.TOKEN_FILE=???"],
        ["+train.extra_list=[1,???,3]", "+train.extra_dict={a: ???, b: 2}", "lora=null"],
    ],
)
def test_missing_keys_as_omegaconf_finds_them(overrides: list[str]) -> None:
    cfg = compose_cfg(*overrides)
    with hydra_compat.detached(cfg, "hydra") if "hydra" in cfg else contextlib.nullcontext(cfg) as task:
        assert hydra_compat.missing_keys(task) == OmegaConf.missing_keys(task)


def test_missing_keys_raises_as_omegaconf_for_an_interpolation_to_a_missing_value() -> None:
    cfg = OmegaConf.create({"a": "???", "b": "${a}", "c": {"d": "${c.e}", "e": {"f": "???"}}})
    with pytest.raises(InterpolationToMissingValueError):
        OmegaConf.missing_keys(cfg)
    with pytest.raises(InterpolationToMissingValueError):
        hydra_compat.missing_keys(cfg)
    nested = OmegaConf.create({"c": {"d": "${c.e}", "e": {"f": "???"}}, "l": [{"x": "???"}]})
    assert hydra_compat.missing_keys(nested) == OmegaConf.missing_keys(nested) == {"c.e.f", "l[0].x"}


def test_return_value_of_completed_and_failed_jobs() -> None:
    done = JobReturn(status=JobStatus.COMPLETED, _return_value={"eval_loss": 1.0})
    assert hydra_compat.return_value(done) == {"eval_loss": 1.0}
    failed = JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("boom"))
    assert hydra_compat.return_value(failed) is None
