"""The demo prints the run, not other libraries' internals (gcc probes, accelerator guesses, deprecations)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_cli


@pytest.mark.integration
def test_demo_prints_nothing_of_other_libraries(tmp_path: Path) -> None:
    res = run_cli(
        ["train.max_steps=2", "train.eval_interval=2", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    for noise in ("gcc ", "Setting accelerator to CPU", "FutureWarning", "Warning:"):
        assert noise not in out, out[-3000:]
