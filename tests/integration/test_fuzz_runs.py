"""Fuzz cases run for real (issue 17 item 6): two training steps on the tiny model in this process (the first
start pays the imports, each later one ~2 s), through ``framework.__main__.main``. None may end in a
traceback; a valid config trains and writes its metrics, a mistake exits 2 before training.

``FRAMEWORK_FUZZ_REAL_CASES`` sizes it (default 30); ``FRAMEWORK_FUZZ_REPORT`` writes the figures as JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from framework import __main__ as cli
from tests.fuzz_cases import (
    argv,
    cases,
    restore_logging,  # noqa: F401 - a fixture
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("restore_logging")]

REAL_CASES = int(os.environ.get("FRAMEWORK_FUZZ_REAL_CASES", "30"))
SHORT = [
    "train.max_steps=2",
    "train.eval_interval=0",
    "train.checkpoint_interval=0",
    "train.progress=false",
    "train.eval_max_batches=2",
]


def test_fuzz_real_runs(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # Half valid, half mistakes: the mistakes' figures come from the stubbed fuzz, the real runs add what only
    # training can show (a config that validates but crashes or trains nonsense).
    picked = [c for c in cases(REAL_CASES * 4, seed=29) if not any(m.key == "train.max_steps" for m in c)]
    valid = [c for c in picked if not any(m.bad for m in c)][: REAL_CASES // 2]
    wrong = [c for c in picked if any(m.bad for m in c)][: REAL_CASES - len(valid)]
    results = {"runs": 0, "traceback": 0, "valid_trained": 0, "mistakes_exit2": 0, "accepted_nonsense": 0}
    problems = []
    for i, case in enumerate(valid + wrong):
        run_dir = tmp_path / f"run{i}"
        args = [*SHORT, *argv(case)]
        if not any(m.key == "run_name" for m in case):
            args.append(f"hydra.run.dir={run_dir}")
        rc = cli.main(args)
        out, err = capfd.readouterr()
        text = out + err
        results["runs"] += 1
        line = " ".join(argv(case))
        if "Traceback" in text:
            results["traceback"] += 1
            problems.append(f"traceback (rc={rc}): {line}\n{text[-1500:]}")
        if any(m.bad for m in case):
            results["mistakes_exit2"] += rc == 2
            if rc == 0:
                results["accepted_nonsense"] += 1
                problems.append(f"accepted: {line}")
            elif rc != 2:
                problems.append(f"rc={rc} for a mistake: {line}\n{text[-800:]}")
        else:
            metrics = run_dir / "metrics.jsonl"
            ok = (
                rc == 0
                and metrics.is_file()
                and any('"loss"' in ln for ln in metrics.read_text().splitlines())
            )
            results["valid_trained"] += ok
            if not ok:
                problems.append(f"valid config did not train (rc={rc}): {line}\n{text[-1500:]}")
    if os.environ.get("FRAMEWORK_FUZZ_REPORT"):
        Path(os.environ["FRAMEWORK_FUZZ_REPORT"]).write_text(
            json.dumps({**results, "problems": problems}, indent=1)
        )
    assert results["runs"] >= min(REAL_CASES, 20)
    assert problems == [], "\n\n".join(problems[:5])
