"""Composition of every config combination, and validation messages (no training, no torch)."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from framework.config import conf_dir, register
from framework.errors import ConfigError
from framework.validate import check, validate
from recipes import RECIPES

CONF = conf_dir()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_cfg(*overrides: str):
    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_recipe_table_matches_conf() -> None:
    assert set(RECIPES) == set(options("recipe"))
    for name in RECIPES:
        assert compose_cfg(f"recipe={name}").recipe.name == name


@pytest.mark.parametrize(
    "recipe,model,hardware",
    list(itertools.product(options("recipe"), options("model"), options("hardware"))),
)
def test_every_combination_composes_and_validates(recipe: str, model: str, hardware: str) -> None:
    extra = (
        [f"eval.run={CONF}"] if recipe == "evaluate" else []
    )  # the evaluate recipe needs what it evaluates
    cfg = compose_cfg(f"recipe={recipe}", f"model={model}", f"hardware={hardware}", *extra)
    assert cfg.model.name == model and cfg.hardware.name == hardware
    # GPU availability is a launch-time question; everything else must be valid as shipped, except that the
    # memory estimate rightly refuses a full fine-tune of 8B (fp32 Adam states) on one GPU without ZeRO.
    problems = validate(cfg, gpu_count=None)
    too_big = (recipe, model, hardware) == ("full_finetune", "llama3_1_8b", "h200x1")
    assert [p.startswith("estimated peak memory per GPU") for p in problems] == ([True] if too_big else [])


def test_default_is_the_embedded_demo() -> None:
    cfg = compose_cfg()
    assert (cfg.recipe.name, cfg.model.name, cfg.dataset.name, cfg.hardware.name, cfg.launcher.name) == (
        "lora_llama",
        "tiny_llama",
        "sample",
        "cpu",
        "local",
    )
    assert cfg.hardware.precision == "fp32"


def test_gpu_profiles_use_bf16_and_gpus() -> None:
    for hw in ("h200x1", "a100x8", "h100x8"):
        cfg = compose_cfg(f"hardware={hw}")
        assert cfg.hardware.precision == "bf16"
        assert cfg.hardware.gpus_per_node == cfg.hardware.nproc_per_node >= 1
        assert cfg.hardware.resource_name == "nvidia.com/gpu"


def test_nodes_makes_any_profile_multi_node() -> None:
    assert compose_cfg("hardware=cpu", "hardware.nodes=3").hardware.nodes == 3


def test_all_problems_reported_at_once() -> None:
    cfg = compose_cfg(
        "train.global_batch_size=10",
        "train.micro_batch_size=4",
        "hardware.offload_param=true",
        "optim.name=lion",
        "dataset.val_fraction=1.5",
    )
    with pytest.raises(ConfigError) as info:
        check(cfg)
    msg = str(info.value)
    assert "4 problems" in msg
    assert "train.global_batch_size=10 is not divisible by micro_batch_size x world size = 4 x 1 = 4" in msg
    assert "hardware.offload_param=true needs ZeRO stage 3" in msg
    assert "optim.name='lion' is not valid; choose one of: adamw, sgd" in msg
    assert "dataset.val_fraction=1.5 must be in [0, 1)" in msg


def test_zero3_options() -> None:
    assert validate(compose_cfg("hardware.zero_stage=3", "model.gradient_checkpointing=true")) == []
    cfg = compose_cfg("hardware.zero_stage=0", "hardware.offload_optimizer=true")
    assert any("offload_optimizer=true needs ZeRO stage 1, 2 or 3" in p for p in validate(cfg))


def test_gpu_profile_without_gpu_when_local() -> None:
    cfg = compose_cfg("hardware=h200x1")
    problems = validate(cfg, gpu_count=lambda: 0)
    assert any("hardware=h200x1 needs CUDA GPUs but this machine has none" in p for p in problems)
    assert validate(compose_cfg("hardware=h200x1", "launcher.name=kubernetes"), gpu_count=lambda: 0) == []


def test_missing_required_and_paths(tmp_path: Path) -> None:
    problems = validate(compose_cfg("dataset=jsonl"))
    assert any("dataset.path is required but not set; pass dataset.path=<value>" in p for p in problems)
    problems = validate(compose_cfg("dataset=jsonl", f"dataset.path={tmp_path}/nope.jsonl"))
    assert any(f"dataset.path={tmp_path}/nope.jsonl does not exist" in p for p in problems)
    problems = validate(compose_cfg(f"model.pretrained={tmp_path}/no-model"))
    assert any("model.pretrained=" in p and "does not exist" in p for p in problems)
    # Remote URIs are checked when read, not at compose time.
    assert validate(compose_cfg("dataset=jsonl", "dataset.path=s3://bucket/train.jsonl")) == []


def test_resolved_config_round_trips_through_the_schema() -> None:
    cfg = compose_cfg("hardware.nproc_per_node=2")
    plain = OmegaConf.create(OmegaConf.to_yaml(cfg, resolve=True))
    again = check(plain)
    assert again.hardware.nproc_per_node == 2
    bad = OmegaConf.create({**OmegaConf.to_container(plain), "bogus": 1})
    with pytest.raises(ConfigError, match="bogus"):
        check(bad)


def test_composing_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from tests.unit.test_config import compose_cfg\n"
        "from framework.validate import check\n"
        "check(compose_cfg('hardware=a100x8', 'hardware.nodes=2', 'launcher.name=kubernetes'))\n"
        "assert 'torch' not in sys.modules, 'composing imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_installed_package_has_every_module_and_the_packaged_config(tmp_path: Path) -> None:
    """Outside the checkout (no PYTHONPATH), every framework and recipe module imports from the installed
    package, and the packaged conf/ and sample data are found. A stale install (a module added since
    scripts/setup.sh last ran) fails here."""
    import os

    code = (
        "import importlib, pkgutil, framework, recipes\n"
        "from pathlib import Path\n"
        "for pkg in (framework, recipes):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__):\n"
        "        importlib.import_module(f'{pkg.__name__}.{m.name}')\n"
        "import framework.conf\n"
        "from framework.config import package_path\n"
        "conf = Path(next(iter(framework.conf.__path__)))\n"
        "assert (conf / 'config.yaml').is_file() and (conf / 'model' / 'llama3_2_1b.yaml').is_file(), conf\n"
        "assert Path(package_path('pkg://framework.data/sample/train.jsonl')).is_file()\n"
        "print(framework.__file__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert str(tmp_path) not in res.stdout
