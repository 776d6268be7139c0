"""A local torchrun job (``hardware.nproc_per_node > 1``) exits with its workers' code, not torchrun's 1: a
worker that rejects the config or data makes the parent exit 2 (never retried), its message shown once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from framework import __main__ as cli
from framework.errors import (
    EXIT_RUNTIME,
    EXIT_USAGE,
    FAILURE_DIR_ENV,
    FrameworkError,
    read_failures,
    record_failure,
)

REJECTED = "Invalid data: d.jsonl line 2: byte 0xff is not UTF-8; re-save it as UTF-8"


def spawn(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, rc: int, records: list[tuple[int, int, str]]
) -> None:
    """spawn_torchrun with torchrun replaced by a fake whose workers leave ``records`` (rank, code, message)."""
    seen: dict[str, object] = {}

    def fake_torchrun(cmd: list[str], env: dict[str, str]) -> int:
        seen["cmd"] = cmd
        for rank, code, message in records:
            Path(env[FAILURE_DIR_ENV], f"rank{rank}.json").write_text(
                json.dumps({"rank": rank, "exit_code": code, "message": message})
            )
        return rc

    monkeypatch.setattr(cli.subprocess, "call", fake_torchrun)
    monkeypatch.setattr(cli, "resolved_yaml", lambda c: "run_name: x\n")
    cfg = OmegaConf.create({"hardware": {"nproc_per_node": 2}, "run_name": "x"})
    try:
        cli.spawn_torchrun(cfg, str(tmp_path))
    finally:
        # The wrapper that maps the workers' codes, not plain torchrun (which exits 1 whatever they exit).
        assert "hydra_plugins.kubernetes_launcher.torchrun" in seen["cmd"]  # type: ignore[operator]


def test_every_rank_rejecting_gives_exit_2_and_the_message_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(FrameworkError) as e:
        spawn(monkeypatch, tmp_path, 2, [(0, 2, REJECTED), (1, 2, REJECTED)])
    assert e.value.exit_code == EXIT_USAGE and str(e.value) == REJECTED


def test_one_rank_rejecting_wins_over_its_peers_being_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rank 1 was stopped by torchrun after rank 0 rejected its shard: still exit 2, even if torchrun said 1.
    with pytest.raises(FrameworkError) as e:
        spawn(monkeypatch, tmp_path, 1, [(0, 2, REJECTED), (1, 143, "stopped")])
    assert e.value.exit_code == EXIT_USAGE and str(e.value) == REJECTED


def test_different_rejections_are_listed_per_rank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FrameworkError) as e:
        spawn(monkeypatch, tmp_path, 2, [(0, 2, "Invalid config: a"), (1, 2, "Invalid config: b")])
    assert e.value.exit_code == EXIT_USAGE
    assert str(e.value).splitlines() == ["rank 0: Invalid config: a", "rank 1: Invalid config: b"]


def test_a_runtime_failure_stays_exit_1_naming_the_rank(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(FrameworkError) as e:
        spawn(monkeypatch, tmp_path, 1, [(1, 1, "Traceback ... RuntimeError: NCCL")])
    assert e.value.exit_code == EXIT_RUNTIME and "rank 1 exited 1" in str(e.value)


def test_a_worker_records_its_rejection_and_leaves_printing_to_the_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(FAILURE_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("RANK", "1")
    rc = cli.main(["train.max_steps=lots", f"hydra.run.dir={tmp_path / 'run'}"])
    assert rc == EXIT_USAGE
    assert "error:" not in capfd.readouterr().err  # the parent prints it once for all ranks
    [record] = read_failures(str(tmp_path))
    assert record["rank"] == 1 and record["exit_code"] == EXIT_USAGE
    assert "train.max_steps" in str(record["message"])


def test_no_record_outside_a_local_torchrun_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FAILURE_DIR_ENV, raising=False)
    assert not record_failure(EXIT_USAGE, "x")
    monkeypatch.setenv(FAILURE_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("RANK", "0")
    assert record_failure(EXIT_USAGE, "x") and os.listdir(tmp_path) == ["rank0.json"]
