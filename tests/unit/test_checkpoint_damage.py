"""Damaged checkpoints on resume (issue 17 item 4), one table row per case the campaign found: the newest intact
checkpoint is chosen with a warning naming the damage; none intact is exit 2 with the two ways out; nothing is
deleted. Checkpoints here are plain files with the manifest ``checkpoint.save`` writes (no DeepSpeed needed)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import fsspec
import pytest
from omegaconf import OmegaConf

from framework import checkpoint
from framework.errors import ConfigError
from framework.train import RunDir, resolve_resume

SHARD = "step/mp_rank_00_model_states.pt"


def make_ckpt(root: Path, step: int, *, commit: bool = True, config: dict | None = None) -> Path:
    tag_dir = root / checkpoint.tag_for(step)
    (tag_dir / "step").mkdir(parents=True, exist_ok=True)
    (tag_dir / SHARD).write_bytes(bytes(range(256)) * (40 + step))
    (tag_dir / "rng_rank0.pt").write_bytes(b"rng" * step)
    doc = {"step": step, "meta": {}, "config": config, "files": checkpoint.describe_files(tag_dir)}
    (tag_dir / checkpoint.MANIFEST).write_text(json.dumps(doc))
    if commit:
        (root / checkpoint.LATEST).write_text(tag_dir.name)
    return tag_dir


@pytest.fixture
def ckpts(tmp_path: Path) -> Path:
    root = tmp_path / "run" / "checkpoints"
    make_ckpt(root, 10)
    make_ckpt(root, 20)
    return root


def _flip_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[100] ^= 0xFF
    p.write_bytes(bytes(data))


def _manifest(root: Path) -> Path:
    return root / "step_20" / checkpoint.MANIFEST


# (case, damage done to a run whose checkpoints are step_10 and step_20 with latest -> step_20, what the warning
# names, whether step_20 itself is the damaged one (then moved aside to damaged-step_20))
FALLBACK: list[tuple[str, Callable[[Path], None], str, bool]] = [
    ("deleted shard", lambda r: (r / "step_20" / SHARD).unlink(), f"{SHARD} is missing", True),
    (
        "truncated shard",
        lambda r: os.truncate(r / "step_20" / SHARD, 100),
        f"{SHARD} is truncated or changed (100 bytes",
        True,
    ),
    (
        "flipped byte, same size",
        lambda r: _flip_byte(r / "step_20" / SHARD),
        "does not match its checksum",
        True,
    ),
    ("missing manifest", lambda r: _manifest(r).unlink(), "no manifest.json", True),
    (
        "corrupt manifest",
        lambda r: _manifest(r).write_bytes(b'{"files": {"a'),
        "manifest.json is unreadable",
        True,
    ),
    (
        "manifest with wrong types",
        lambda r: _manifest(r).write_text(json.dumps({"step": "x", "files": {SHARD: "big"}})),
        "manifest.json is malformed",
        True,
    ),
    (
        "manifest files not a table",
        lambda r: _manifest(r).write_text(json.dumps({"step": 20, "files": [1, 2]})),
        "manifest.json is malformed",
        True,
    ),
    (
        "garbage latest",
        lambda r: (r / "latest").write_bytes(b"\x00\xff\xfe garbage"),
        "latest is unreadable",
        False,
    ),
    (
        "text garbage latest",
        lambda r: (r / "latest").write_text("hello world"),
        "not a checkpoint tag",
        False,
    ),
    ("empty latest", lambda r: (r / "latest").write_text(""), "latest is empty", False),
    ("latest names a missing step", lambda r: (r / "latest").write_text("step_99"), "names step_99", False),
]


@pytest.mark.parametrize(
    ("case", "damage", "named", "latest_damaged"), FALLBACK, ids=[c[0] for c in FALLBACK]
)
def test_damaged_falls_back_to_newest_intact(
    ckpts: Path,
    caplog: pytest.LogCaptureFixture,
    case: str,
    damage: Callable[[Path], None],
    named: str,
    latest_damaged: bool,
) -> None:
    damage(ckpts)
    with caplog.at_level(logging.WARNING, logger="framework.checkpoint"):
        tag = checkpoint.newest_intact(ckpts, move_damaged=True)
    expected = "step_10" if latest_damaged else "step_20"
    assert tag == expected, case
    assert named in caplog.text
    if latest_damaged:
        assert not (ckpts / "step_20").exists()
        assert (ckpts / "damaged-step_20").is_dir(), "moved aside, never deleted"
        assert (ckpts / "damaged-step_20" / "step").is_dir()


def test_latest_a_directory_or_a_dangling_link(ckpts: Path, caplog: pytest.LogCaptureFixture) -> None:
    (ckpts / "latest").unlink()
    (ckpts / "latest").mkdir()
    with caplog.at_level(logging.WARNING):
        assert checkpoint.newest_intact(ckpts) == "step_20"
    assert "latest is a directory" in caplog.text
    (ckpts / "latest").rmdir()
    (ckpts / "latest").symlink_to(ckpts / "nowhere")
    with caplog.at_level(logging.WARNING):
        assert checkpoint.newest_intact(ckpts) == "step_20"
    assert "dangling link" in caplog.text


def test_none_intact_is_exit_2_with_both_ways_out_and_nothing_deleted(ckpts: Path) -> None:
    (ckpts / "step_20" / SHARD).unlink()
    os.truncate(ckpts / "step_10" / SHARD, 3)
    before = sorted(p.relative_to(ckpts) for p in ckpts.rglob("*"))
    with pytest.raises(ConfigError) as e:
        checkpoint.newest_intact(ckpts, move_damaged=True)
    msg = str(e.value)
    assert e.value.exit_code == 2
    assert "step_20:" in msg and "step_10:" in msg and "is missing" in msg and "truncated" in msg
    assert "resume=none" in msg and "resume=<step>" in msg and "Nothing was deleted" in msg
    assert sorted(p.relative_to(ckpts) for p in ckpts.rglob("*")) == before


def test_garbage_latest_and_no_checkpoint_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "latest").write_text("nonsense")
    with pytest.raises(ConfigError, match="latest holds 'nonsense'.*resume=none"):
        checkpoint.newest_intact(tmp_path)


def test_fresh_starts(tmp_path: Path) -> None:
    assert checkpoint.newest_intact(tmp_path / "absent") is None
    make_ckpt(tmp_path, 5, commit=False)
    (tmp_path / "step_5" / checkpoint.MANIFEST).unlink()  # a first save killed before its manifest
    assert checkpoint.newest_intact(tmp_path) is None
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not a directory"):
        checkpoint.newest_intact(tmp_path / "file")


def test_uncommitted_newer_save_is_ignored(ckpts: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_ckpt(ckpts, 30, commit=False)  # killed between its manifest and `latest`: not a checkpoint yet
    with caplog.at_level(logging.WARNING):
        assert checkpoint.newest_intact(ckpts) == "step_20"
    assert caplog.text == ""


def test_legacy_manifest_with_sizes_only(tmp_path: Path) -> None:
    tag_dir = make_ckpt(tmp_path, 3)
    doc = json.loads((tag_dir / checkpoint.MANIFEST).read_text())
    doc["files"] = {k: v["size"] for k, v in doc["files"].items()}
    (tag_dir / checkpoint.MANIFEST).write_text(json.dumps(doc))
    assert checkpoint.damage(tmp_path, "step_3") == []
    os.truncate(tag_dir / SHARD, 1)
    assert checkpoint.damage(tmp_path, "step_3")


def _resolve(resume: str, run_dir: Path, **cfg: object) -> tuple[Path, str] | None:
    return resolve_resume(OmegaConf.create({"resume": resume, **cfg}), RunDir.at(str(run_dir)))


def test_a_named_damaged_checkpoint_is_refused_not_replaced(ckpts: Path) -> None:
    _flip_byte(ckpts / "step_10" / SHARD)
    with pytest.raises(
        ConfigError, match="resume=10: checkpoint .*step_10 is damaged: .*checksum.*resume=none"
    ):
        _resolve("10", ckpts.parent)
    with pytest.raises(ConfigError, match="is damaged"):
        _resolve(str(ckpts / "step_10"), ckpts.parent)
    assert _resolve(str(ckpts), ckpts.parent) == (ckpts, "step_20")  # another run's checkpoints dir


def test_resume_auto_refuses_a_different_run(tmp_path: Path) -> None:
    old = {
        "dataset": {"path": "a.jsonl", "max_seq_len": 64},
        "model": {"name": "tiny"},
        "train": {"max_steps": 5},
    }
    make_ckpt(tmp_path / "run" / "checkpoints", 5, config=old)
    same = {**old, "train": {"max_steps": 50}, "hardware": {"name": "other"}}  # may change
    assert _resolve("auto", tmp_path / "run", **same) == (tmp_path / "run" / "checkpoints", "step_5")
    new = {**old, "dataset": {"path": "b.jsonl", "max_seq_len": 64}, "model": {"name": "small"}}
    with pytest.raises(ConfigError) as e:
        _resolve("auto", tmp_path / "run", **new)
    msg = str(e.value)
    assert "dataset.path: 'a.jsonl' -> 'b.jsonl'" in msg and "model.name: 'tiny' -> 'small'" in msg
    assert "hydra.run.dir=<new dir>" in msg and "resume=none" in msg
    assert _resolve("none", tmp_path / "run", **new) is None
    assert _resolve("5", tmp_path / "run", **new) is not None  # a named checkpoint: the user chose it


def test_config_changes_lists_only_compared_keys() -> None:
    a = {"train": {"max_steps": 1, "seed": 1}, "launcher": {"image": "x"}, "optim": {"lr": 0.1}}
    b = {"train": {"max_steps": 9, "seed": 2}, "launcher": {"image": "y"}, "optim": {"lr": 0.1}}
    assert checkpoint.config_changes(a, b) == ["train.seed: 1 -> 2"]


def test_remote_damaged_latest_falls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fs = fsspec.filesystem("memory")
    local = tmp_path / "src"
    for step in (10, 20):
        tag_dir = make_ckpt(local, step)
        for p in tag_dir.rglob("*"):
            if p.is_file():
                fs.pipe(f"/bkt/r/checkpoints/{tag_dir.name}/{p.relative_to(tag_dir)}", p.read_bytes())
    fs.pipe("/bkt/r/checkpoints/latest", b"step_20")
    fs.pipe(f"/bkt/r/checkpoints/step_20/{SHARD}", b"short")  # truncated in the store
    staging = tmp_path / "staging"
    with caplog.at_level(logging.WARNING):
        assert checkpoint.fetch_remote("memory://bkt/r/checkpoints", staging) == "step_10"
    assert f"{SHARD} is truncated" in caplog.text
    assert checkpoint.damage(staging, "step_10") == []
    assert fs.exists("/bkt/r/checkpoints/step_20/manifest.json"), "left in the store"
    fs.pipe("/bkt/r/checkpoints/latest", b"")
    fs.pipe(f"/bkt/r/checkpoints/step_10/{SHARD}", b"x")
    with pytest.raises(ConfigError, match="no intact checkpoint .*latest is empty.*resume=none"):
        checkpoint.fetch_remote("memory://bkt/r/checkpoints", staging)


def test_torn_and_corrupt_metrics_lines_are_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = RunDir.at(tmp_path)
    good = [json.dumps({"step": s, "loss": 1.0}) for s in (1, 2, 3, 4)]
    run.metrics.write_bytes(("\n".join(good) + '\n{"step": 5, "lo').encode())
    with caplog.at_level(logging.WARNING):
        run.truncate_metrics(3)
    assert run.metrics.read_text().splitlines() == good[:3]
    assert caplog.text == "", "a torn last line is expected after a kill: no warning"
    run.metrics.write_bytes(b"\xff\xfe\x00garbage\n" + (good[0] + "\n[1, 2]\n" + good[1] + "\n").encode())
    with caplog.at_level(logging.WARNING):
        run.truncate_metrics(10)
    assert run.metrics.read_text().splitlines() == good[:2]
    assert "dropped unreadable line(s) [1, 3]" in caplog.text
