"""framework.train.resolve_resume: which checkpoint a start resumes from, and the errors for a bad ``resume=``
(a remote store here is fsspec's in-memory filesystem)."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pytest
from omegaconf import OmegaConf

from framework.errors import ConfigError
from framework.rundir import RunDir
from framework.train import resolve_resume


def _resolve(resume: str, run_dir: Path) -> tuple[Path, str] | None:
    return resolve_resume(OmegaConf.create({"resume": resume}), RunDir.at(str(run_dir)))


def test_remote_uri_without_a_checkpoint_names_it_and_the_fix(tmp_path: Path) -> None:
    fsspec.filesystem("memory").pipe("/bkt/runs/a/checkpoints/notes.txt", b"x")
    uri = "memory://bkt/runs/a/checkpoints"
    with pytest.raises(ConfigError, match=f"resume={uri}: neither a checkpoint .* or use resume=auto"):
        _resolve(uri, tmp_path)


def test_remote_step_that_was_never_committed_is_a_config_error(tmp_path: Path) -> None:
    fsspec.filesystem("memory").pipe("/bkt/runs/b/checkpoints/step_4/partial.bin", b"x")  # no manifest
    uri = "memory://bkt/runs/b/checkpoints/step_4"
    with pytest.raises(ConfigError, match=f"{uri} has no manifest.json: .* use resume=auto or resume=none"):
        _resolve(uri, tmp_path)


def test_local_values(tmp_path: Path) -> None:
    assert _resolve("none", tmp_path) is None
    assert _resolve("auto", tmp_path) is None  # a fresh run dir has no checkpoint
    with pytest.raises(ConfigError, match="resume=7: .*step_7 does not exist"):
        _resolve("7", tmp_path)
    with pytest.raises(ConfigError, match="resume='nowhere' is neither auto, none, a step number"):
        _resolve("nowhere", tmp_path)
