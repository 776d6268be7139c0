"""Helpers shared by tests (imported as ``tests.helpers``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from framework.distributed import RENDEZVOUS_ENV

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN_ENV = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", *RENDEZVOUS_ENV}


def shell_env(**extra: str) -> dict[str, str]:
    """This process's environment as a user's shell has it: without the rendezvous env an in-process run of an
    earlier test (or a module fixture) left behind, which would make a child think it runs under torchrun, on a
    port still held."""
    return {**{k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}, **extra}


def run_cli(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m framework ARGS`` in a fresh process (as a user would) and capture its output."""
    full_env = shell_env(PYTHONUNBUFFERED="1", **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), full_env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "framework", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    from framework.rundir import read_metrics

    return list(read_metrics(run_dir))


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The CLI's one ``error:`` line on stderr (and no traceback)."""
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]
