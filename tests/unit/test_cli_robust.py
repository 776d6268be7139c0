"""Compose-time mistakes, set-up interrupts and sweeps through ``framework.__main__.main`` (training stubbed):
issue 17 items 2 and 5. Each: exit 2 (or 130/143), one message in the project's words, no traceback."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from framework import __main__ as cli
from tests.fuzz_cases import restore_logging  # noqa: F401 - a fixture

pytestmark = pytest.mark.usefixtures("restore_logging")


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Any]:
    """Training replaced by a stub that records the config (and, if asked, raises)."""
    calls: list[Any] = []

    def entry(name: str) -> Any:
        def run(cfg: Any) -> dict[str, Any]:
            calls.append(cfg)
            if calls and isinstance(calls[0], BaseException):
                raise calls[0]
            if str(cfg.optim.lr) == "0.5":
                os.kill(os.getpid(), signal.SIGTERM)
            return {"status": "COMPLETED", "eval_loss": 1.0, "run_dir": "x"}

        return run

    monkeypatch.setattr(cli, "recipe_entry", entry)
    monkeypatch.chdir(tmp_path)
    return calls


def run(args: list[str], capfd: pytest.CaptureFixture[str], tmp_path: Path) -> tuple[int, str]:
    rc = cli.main(
        [*args, f"hydra.run.dir={tmp_path / 'run'}"] if not any("hydra." in a for a in args) else args
    )
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert "full_key:" not in err and "object_type=" not in err, err
    return rc, err


MESSAGES = [
    (["+train.max_steps=3"], "train.max_steps already exists: set it without the '+' (train.max_steps=3)"),
    (["~train.max_steps"], "train.max_steps is part of the schema and cannot be deleted"),
    (["++train.max_steps=abc"], "train.max_steps='abc' is not an integer"),
    (["~nothere"], "nothere does not exist, so there is nothing to delete"),
    (["+foo=1"], "unknown key 'foo'"),
    (["train.max_steps=[1"], "train.max_steps=[1: Hydra cannot parse it (no viable alternative"),
    (["recipe=full_finetune", "lora.r=4"], "lora.r=4: lora is null in this config"),
    (["lora.target_modules.x=1"], "lora.target_modules is a list: index it by position"),
    (["recipe=lora_llama.yaml"], "name the option without the file extension: recipe=lora_llama"),
    (["model.tie_word_embeddings=2"], "model.tie_word_embeddings is true or false, not '2'"),
    (["model=gpt5"], "Could not find 'model/gpt5'; available options in 'model': llama3_1_8b"),
    (["hydra.run.dir=/proc/x"], "cannot create or write /proc/x"),
    (["hydra.run.dir=/dev/null/x"], "cannot create or write /dev/null/x: Not a directory"),
]


@pytest.mark.parametrize(("args", "expected"), MESSAGES, ids=[" ".join(a) for a, _ in MESSAGES])
def test_compose_mistakes_in_one_line(
    args: list[str], expected: str, stub: list[Any], capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rc, err = run(args, capfd, tmp_path)
    assert rc == 2, err
    assert expected in err, err
    assert stub == []


def test_every_wrong_override_listed_at_once(
    stub: list[Any], capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rc, err = run(
        ["optim.lr=abc", "train.max_stepz=3", "lora.r=[1", "+train.seed=1", "dataset.path=x y"],
        capfd,
        tmp_path,
    )
    assert rc == 2
    assert "Invalid config (4 problems)" in err, err
    for key in ("optim.lr", "train.max_stepz", "lora.r", "train.seed"):
        assert key in err


def test_run_name_never_leaves_outputs(
    stub: list[Any], capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for name in ("../..", "x" * 300):
        rc = cli.main([f"run_name={name}"])
        err = capfd.readouterr().err
        assert rc == 2 and "run_name=" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]
    assert all(len(p.name) <= 100 for p in (tmp_path / "outputs").iterdir())


def test_ctrl_c_and_sigterm_during_set_up(
    stub: list[Any], capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    stub.append(KeyboardInterrupt())
    assert cli.main([f"hydra.run.dir={tmp_path / 'a'}"]) == 130
    err = capfd.readouterr().err
    assert err.strip().splitlines() == [
        "error: interrupted (Ctrl-C) before training started; nothing was saved"
    ]
    stub.clear()
    assert cli.main(["optim.lr=0.5", f"hydra.run.dir={tmp_path / 'b'}"]) == 143
    err = capfd.readouterr().err
    assert "stopped by SIGTERM before training started" in err and "Traceback" not in err
    assert signal.getsignal(signal.SIGTERM) is not cli._on_sigterm, "the handler is restored"


def test_sweep_with_a_rejected_job_exits_2_and_says_rejected(
    stub: list[Any], capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rc = cli.main(["-m", "optim.lr=1e-3,nan", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    out, err = capfd.readouterr()
    assert rc == 2, err
    assert "1 rejected for their config or data" in err
    rows = [ln for ln in out.splitlines() if "optim.lr=" in ln]
    assert any("optim.lr=nan" in r and "REJECTED" in r for r in rows), out
    assert any("optim.lr=0.001" in r and "COMPLETED" in r for r in rows), out
    assert "Traceback" not in out + err


def test_local_dry_run_starts_nothing_and_says_so(tmp_path: Path) -> None:
    """launcher=local launcher.dry_run=true: validated, nothing trained; a sweep's summary says DRY_RUN."""
    from tests.helpers import run_cli

    res = run_cli(
        ["-m", "launcher.dry_run=true", "optim.lr=1e-3,3e-3", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("launcher.dry_run=true: validated only; nothing was started") == 2
    table = res.stdout[res.stdout.index("Sweep summary") :].splitlines()[2:]
    assert len(table) == 2 and all(row.split()[1] == "DRY_RUN" for row in table), res.stdout
    assert not list((tmp_path / "sweep").glob("*/metrics.jsonl"))  # nothing trained
