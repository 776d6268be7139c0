"""A restart in a run dir whose earlier attempt left no checkpoint starts fresh, and drops that attempt's metrics
lines (issue 14: steps 1-5 used to appear twice)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import read_metrics, run_cli

pytestmark = pytest.mark.integration


def test_fresh_start_truncates_an_earlier_attempts_metrics(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    earlier = [{"step": s, "loss": 99.0, "lr": 0.0, "tokens_per_s": 1.0} for s in (1, 2, 3)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in earlier))  # no checkpoint
    res = run_cli(
        ["train.max_steps=2", "train.eval_interval=0", "train.progress=false", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rows = read_metrics(run_dir)
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == [1, 2] and all(r.get("loss") != 99.0 for r in rows)
