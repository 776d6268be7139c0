"""Bad input to framework.export / framework.generate: exit 2 with a message naming the path and the fix.

Run directories are faked from a composed config (no training): every check happens before a model loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from framework import export, generate
from framework.config import conf_dir, register, resolved_yaml


def fake_run(path: Path, *overrides: str, steps: tuple[int, ...] = (), final: str | None = None) -> Path:
    register()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(resolved_yaml(cfg))
    for step in steps:
        (path / "checkpoints" / f"step_{step}").mkdir(parents=True)
        (path / "checkpoints" / f"step_{step}" / "manifest.json").write_text(json.dumps({"files": {}}))
    if final:
        (path / final).mkdir()
    return path


def run_export(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = export.main(args)
    return rc, capsys.readouterr().err


def test_not_a_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = run_export([str(tmp_path / "nope")], capsys)
    assert rc == 2
    assert f"{tmp_path / 'nope'} does not exist" in err and "config.yaml" in err


def test_run_without_checkpoints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = fake_run(tmp_path / "run")
    rc, err = run_export([str(run), "--merge"], capsys)
    assert rc == 2
    assert f"{run} has no checkpoints and no adapter/" in err and "train.checkpoint_interval" in err


def test_step_that_does_not_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = fake_run(tmp_path / "run", steps=(10, 20))
    rc, err = run_export([str(run), "--step", "15"], capsys)
    assert rc == 2
    assert str(run / "checkpoints" / "step_15") in err and "step_10, step_20" in err


def test_best_without_evals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = fake_run(tmp_path / "run", steps=(10,))
    rc, err = run_export([str(run), "--best"], capsys)
    assert rc == 2
    assert "no checkpoint with an eval loss" in err and "train.keep_best=true" in err


def test_merge_of_a_full_finetune(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = fake_run(tmp_path / "run", "recipe=full_finetune", final="model")
    rc, err = run_export([str(run), "--merge"], capsys)
    assert rc == 2
    assert str(run) in err and "full fine-tune" in err and "without --merge" in err


def test_out_dir_that_exists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = fake_run(tmp_path / "run", final="adapter")
    (tmp_path / "taken").mkdir()
    rc, err = run_export([str(run), "--merge", "--out", str(tmp_path / "taken")], capsys)
    assert rc == 2
    assert f"{tmp_path / 'taken'} already exists" in err and "--overwrite" in err


def test_adapter_whose_base_is_gone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A run: neither model.pretrained nor base/ -> the adapter alone cannot be exported.
    run = fake_run(tmp_path / "run", final="adapter")
    rc, err = run_export([str(run)], capsys)
    assert rc == 2
    assert f"the base of {run} cannot be found" in err and "--merge" in err
    # A pretrained base that was moved away.
    run2 = fake_run(tmp_path / "run2", f"model.pretrained={tmp_path}", final="adapter")
    text = (run2 / "config.yaml").read_text()
    (run2 / "config.yaml").write_text(text.replace(f"pretrained: {tmp_path}", "pretrained: /gone/base"))
    rc, err = run_export([str(run2), "--merge"], capsys)
    assert rc == 2
    assert "is /gone/base, which does not exist" in err and "model.pretrained" in err
    # An adapter directory given to generate.
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/gone/base"}))
    assert generate.main([str(adapter), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert f"the base of adapter {adapter} cannot be found" in err and "'/gone/base'" in err


def test_generate_bad_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert generate.main([str(tmp_path / "none"), "--prompt", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\nnot json\n')
    assert generate.main([str(tmp_path), "--file", str(tmp_path / "p.jsonl")]) == 2
    assert f"{tmp_path / 'p.jsonl'}:2: not JSON" in capsys.readouterr().err


def test_prune_keeps_latest_and_best(tmp_path: Path) -> None:
    from framework import checkpoint

    for step in (2, 4, 6, 8):
        (tmp_path / f"step_{step}").mkdir()
    (tmp_path / "latest").write_text("step_8")
    checkpoint.write_best(tmp_path, "step_2")
    checkpoint.prune(tmp_path, keep_last=1)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["step_2", "step_8"]
    assert checkpoint.read_best(tmp_path) == "step_2"
