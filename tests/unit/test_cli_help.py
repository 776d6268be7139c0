"""First contact: ``framework --help``, one group's settings, bash tab completion of the ``framework`` command,
dict options that need ``+key=`` and the README's first command."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from framework.config import conf_dir
from tests.helpers import ROOT, run_cli

FRAMEWORK = Path(sys.executable).parent / "framework"  # the console script setup.sh installs


def console(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FRAMEWORK), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_help_names_the_app_and_lists_every_option_with_one_line() -> None:
    res = console("--help")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert out.startswith("framework: ") and "powered by Hydra" not in out
    assert "framework --cfg job -p dataset" in out and "--shell-completion install=bash" in out
    for group in ("recipe", "model", "dataset", "hardware", "launcher", "storage", "tracking", "experiment"):
        for option in sorted(p.stem for p in (conf_dir() / group).glob("*.yaml")):
            line = next(
                (ln for ln in out.splitlines() if re.search(rf"\s{re.escape(option)}( \*)?(\s|$)", ln)), None
            )
            assert line is not None, f"{group}={option} missing from --help:\n{out}"
    assert "tiny_llama *" in out and "name: tiny_llama" not in out  # the default marked; no config dump
    assert len(out.splitlines()) < 60


def test_one_group_settings() -> None:
    res = console("--cfg", "job", "-p", "dataset")
    assert res.returncode == 0, res.stderr
    assert "name: sample" in res.stdout and "recipe:" not in res.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completion_of_the_framework_command(tmp_path: Path) -> None:
    script = f"""
        export PATH={FRAMEWORK.parent}:$PATH
        eval "$(framework --shell-completion install=bash)"
        complete -p framework
        COMP_LINE="framework hardware=h" COMP_POINT=20 COMP_CWORD=1
        hydra_bash_completion
        echo "REPLY1 ${{COMPREPLY[@]}}"
        COMP_LINE="framework model.pretr" COMP_POINT=22 COMP_CWORD=1
        hydra_bash_completion
        echo "REPLY2 ${{COMPREPLY[@]}}"
    """
    res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "-F hydra_bash_completion framework" in res.stdout
    lines = dict(ln.split(" ", 1) for ln in res.stdout.splitlines() if ln.startswith("REPLY"))
    assert lines["REPLY1"].split() == ["hardware=h100x8", "hardware=h200x1"]
    assert lines["REPLY2"].split() == ["model.pretrained="]


@pytest.mark.parametrize("override", ["launcher.env.MY_FLAG=1", "launcher.pvcs.datasets=/data"])
def test_dict_option_key_says_to_use_plus(tmp_path: Path, override: str) -> None:
    res = run_cli([override, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    key = override.split("=", 1)[0]
    assert f"+{key}=<value>" in res.stderr and "is a dict option" in res.stderr


def test_readme_starts_with_the_demo() -> None:
    text = (ROOT / "README.md").read_text()
    first = re.search(r"```(\w*)\n(.*?)```", text, re.S)
    assert first is not None
    assert "python -m framework" in first.group(2) and "kubernetes" not in first.group(2).lower()
    assert "--shell-completion install=bash" in text
