"""One validation pass: every group's problems and the launcher's, in one ConfigError; ``--validate``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from framework import validate as v
from tests.helpers import run_cli
from tests.unit.test_config import compose_cfg

FIVE_MISTAKES = [
    "train.global_batch_size=6",  # train: does not divide micro batch x world
    "optim.name=lion",  # optim: not a choice
    "hardware.zero_stage=5",  # hardware: not a ZeRO stage
    "lora.r=0",  # lora: must be >= 1
    "dataset.val_fraction=1.5",  # dataset: out of range
]


def test_five_mistakes_are_reported_in_one_run(tmp_path: Path) -> None:
    res = run_cli(["--validate", *FIVE_MISTAKES], cwd=tmp_path, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "Invalid config (5 problems)" in res.stderr, res.stderr
    for text in (
        "train.global_batch_size=6 is not divisible",
        "optim.name='lion' is not valid",
        "hardware.zero_stage=5 is not a ZeRO stage",
        "lora.r=0 must be >= 1",
        "dataset.val_fraction=1.5 must be in [0, 1)",
    ):
        assert text in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.kubernetes_launcher._problems") is None,
    reason="the Kubernetes launcher's _problems module (issue 10 item 5, k8s side) is not on this branch yet",
)
def test_framework_and_kubernetes_mistakes_in_one_run(tmp_path: Path) -> None:
    """What took four runs before (framework.validate, then the renderer's _validate, _labels and _env)."""
    args = [
        "--validate",
        "launcher=kubernetes",
        "train.max_steps=0",  # framework
        "launcher.namespace=Bad_NS",  # renderer's _validate
        "+launcher.labels={framework.io/x: y}",  # renderer's _labels
        "+launcher.env={HF_TOKEN: abc}",  # renderer's _env
        "hardware.zero_stage=5",  # framework
    ]
    res = run_cli(args, cwd=tmp_path, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "Invalid config (5 problems)" in res.stderr, res.stderr


def test_validate_only_starts_nothing(tmp_path: Path) -> None:
    res = run_cli(["--validate", "train.max_steps=3"], cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Config OK: recipe=lora_llama model=tiny_llama" in res.stdout
    assert list(tmp_path.iterdir()) == []  # no outputs/, no run directory, no metrics


def test_validate_only_a_sweep_and_a_kubernetes_job(tmp_path: Path) -> None:
    res = run_cli(["--validate", "-m", "optim.lr=1e-4,3e-4"], cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("Config OK") == 2
    # Never submitted (no cluster here), never rendered into multirun/.
    res = run_cli(["--validate", "launcher=kubernetes", "hardware=a100x8"], cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "launcher=kubernetes" in res.stdout
    res = run_cli(["--validate", "-m", "optim.lr=1e-4,-1", "optim.name=lion"], cwd=tmp_path, timeout=120)
    assert res.returncode == 2, res.stderr
    assert list(tmp_path.iterdir()) == []


def test_every_group_contributes() -> None:
    cfg = compose_cfg(*FIVE_MISTAKES, "storage.name=gcs", "tracking.backends=[nope]", "recipe.name=nope")
    by_group = {g.__name__: g(cfg) for g in v.GROUPS}
    assert by_group["train_problems"] and by_group["optim_problems"] and by_group["hardware_problems"]
    assert by_group["lora_problems"] and by_group["dataset_problems"] and by_group["storage_problems"]
    assert by_group["tracking_problems"] and by_group["recipe_problems"]
    assert sorted(v.validate(cfg)) == sorted(p for ps in by_group.values() for p in ps)


def test_each_check_is_made_once() -> None:
    """hardware.nodes and launcher.backend had a second check in the renderer; now one problem each."""
    cfg = compose_cfg("hardware.nodes=0", "launcher.name=kubernetes")
    assert [p for p in v.validate(cfg, check_local_paths=False) if "hardware.nodes" in p] == [
        "hardware.nodes=0 must be >= 1"
    ]
    cfg = compose_cfg("launcher=kubernetes", "launcher.backend=slurm")
    assert sum("launcher.backend" in p for p in v.validate(cfg, check_local_paths=False)) <= 1


def test_launcher_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "fake_launcher_problems.py").write_text(
        "def launcher_problems(cfg):\n    return [f'launcher.namespace={cfg.launcher.namespace} is bad']\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(v.LAUNCHER_PROBLEMS, "kubernetes", "fake_launcher_problems:launcher_problems")
    cfg = compose_cfg("launcher.name=kubernetes", "train.max_steps=0")
    assert v.validate(cfg, check_local_paths=False) == [
        "train.max_steps=0 must be >= 1",
        f"launcher.namespace={cfg.launcher.namespace} is bad",
    ]
    # A plugin that predates its _problems module contributes nothing; a broken plugin is reported.
    monkeypatch.setitem(v.LAUNCHER_PROBLEMS, "kubernetes", "fake_launcher_problems_absent:launcher_problems")
    assert v.validate(cfg, check_local_paths=False) == ["train.max_steps=0 must be >= 1"]
    (tmp_path / "broken_launcher_problems.py").write_text("import no_such_module_here\n")
    monkeypatch.setitem(v.LAUNCHER_PROBLEMS, "kubernetes", "broken_launcher_problems:launcher_problems")
    problems = v.validate(cfg, check_local_paths=False)
    assert len(problems) == 2 and "no_such_module_here" in problems[1]
    sys.modules.pop("fake_launcher_problems", None)
