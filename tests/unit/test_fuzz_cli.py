"""Seeded, time-bounded fuzz of the real entry point (``framework.__main__.main``, training stubbed): no
traceback ever, exit 2 for every user mistake with its key named, exit 0 for every valid config.

``FRAMEWORK_FUZZ_CASES`` / ``FRAMEWORK_FUZZ_BUDGET_S`` / ``FRAMEWORK_FUZZ_SEED`` size a campaign;
``FRAMEWORK_FUZZ_REPORT=<file>`` writes its figures as JSON.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from framework import __main__ as cli
from tests.fuzz_cases import (
    Mutation,
    argv,
    cases,
    restore_logging,  # noqa: F401 - a fixture
)

pytestmark = pytest.mark.usefixtures("restore_logging")

CASES = int(os.environ.get("FRAMEWORK_FUZZ_CASES", "100"))
BUDGET_S = float(os.environ.get("FRAMEWORK_FUZZ_BUDGET_S", "40"))  # ~0.3 s a case, idle core
SEED = int(os.environ.get("FRAMEWORK_FUZZ_SEED", "17"))


def run_case(
    case: list[Mutation], i: int, tmp_path: Path, capfd: pytest.CaptureFixture[str], started: list[Any]
) -> tuple[int, str]:
    args = argv(case)
    if not any(m.key == "run_name" for m in case):  # run_name cases keep Hydra's own outputs/<run_name>
        args += [f"hydra.run.dir={tmp_path / f'run{i}'}"]
    started.clear()
    rc = cli.main(args)
    out, err = capfd.readouterr()
    return rc, out + err


def named(key: str, text: str) -> bool:
    return key in text


def test_fuzz_cli(tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[Any] = []
    monkeypatch.setattr(
        cli, "recipe_entry", lambda name: lambda cfg: started.append(cfg) or {"status": "COMPLETED"}
    )
    monkeypatch.chdir(tmp_path)
    deadline = time.monotonic() + BUDGET_S
    stats = {"cases": 0, "mistakes": 0, "exit2": 0, "traceback_free": 0, "key_named": 0, "all_keys_named": 0}
    stats["omegaconf_internals"] = 0  # messages showing OmegaConf's `full_key:` / `object_type=`
    accepted_nonsense, failures = [], []
    for i, case in enumerate(cases(CASES, SEED)):
        if time.monotonic() > deadline:
            break
        rc, text = run_case(case, i, tmp_path, capfd, started)
        bad = [m for m in case if m.bad]
        stats["cases"] += 1
        stats["traceback_free"] += "Traceback" not in text
        line = " ".join(argv(case))
        if "Traceback" in text:
            failures.append(f"traceback: {line}\n{text[-1500:]}")
        if "full_key:" in text or "object_type=" in text:
            stats["omegaconf_internals"] += 1
            failures.append(f"OmegaConf internals in the message: {line}\n{text[-800:]}")
        if bad:
            stats["mistakes"] += 1
            stats["exit2"] += rc == 2
            some = any(named(m.key, text) for m in bad)
            stats["key_named"] += some
            stats["all_keys_named"] += all(named(m.key, text) for m in bad)
            if rc == 0:
                accepted_nonsense.append(line)
            elif rc != 2 or not some:
                failures.append(f"rc={rc}, keys {[m.key for m in bad]} named: {some}: {line}\n{text[-800:]}")
        elif rc != 0 or not started:
            failures.append(f"valid config refused (rc={rc}): {line}\n{text[-800:]}")
    stats["accepted_nonsense"] = len(accepted_nonsense)
    if os.environ.get("FRAMEWORK_FUZZ_REPORT"):
        Path(os.environ["FRAMEWORK_FUZZ_REPORT"]).write_text(
            json.dumps({**stats, "nonsense": accepted_nonsense, "failures": failures}, indent=1)
        )
    assert stats["cases"] >= min(CASES, 40), f"only {stats['cases']} cases ran within {BUDGET_S:.0f}s"
    assert accepted_nonsense == [], accepted_nonsense
    assert failures == [], "\n\n".join(failures[:5])
