"""Real runs (tiny model, a few steps): a damaged latest checkpoint falls back to the previous intact one and the
run finishes; resume=auto with another dataset refuses (exit 2) and leaves the earlier attempt's files alone."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import read_metrics, run_cli

pytestmark = pytest.mark.integration

FAST = [
    "train.eval_interval=0",
    "train.checkpoint_interval=2",
    "train.progress=false",
    "dataset.max_seq_len=64",
]


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("damage") / "run"
    res = run_cli([*FAST, "train.max_steps=4", f"hydra.run.dir={run_dir}"], cwd=run_dir.parent)
    assert res.returncode == 0, res.stderr[-3000:]
    return run_dir


def test_truncated_shard_falls_back_and_finishes(four_steps: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(four_steps, run_dir)
    shard = next((run_dir / "checkpoints" / "step_4").rglob("*model_states.pt"))
    os.truncate(shard, shard.stat().st_size // 2)
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "lo')  # a torn last line, as a kill mid-write leaves
    res = run_cli([*FAST, "train.max_steps=5", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "Traceback" not in out
    assert f"{shard.name} is truncated or changed" in out
    assert f"Resumed from {run_dir / 'checkpoints' / 'step_2'} at step 2" in out
    assert (run_dir / "checkpoints" / "damaged-step_4").is_dir(), "the damaged checkpoint is kept"
    assert [m["step"] for m in read_metrics(run_dir) if "loss" in m] == [1, 2, 3, 4, 5]


def test_resume_auto_with_another_dataset_refuses(four_steps: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(four_steps, run_dir)
    before = {p: p.read_bytes() for p in (run_dir / "config.yaml", run_dir / "metrics.jsonl")}
    data = tmp_path / "other.jsonl"  # the sample data minus its last line: another dataset
    src = Path(__file__).resolve().parents[2] / "framework" / "data" / "sample" / "train.jsonl"
    data.write_text("".join(src.read_text().splitlines(keepends=True)[:-1]))
    res = run_cli(
        [*FAST, "train.max_steps=6", f"dataset.path={data}", f"hydra.run.dir={run_dir}"], cwd=tmp_path
    )
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert "dataset.path:" in res.stderr and "resume=none" in res.stderr
    for p, content in before.items():
        assert p.read_bytes() == content, f"{p.name} of the earlier attempt was changed"
