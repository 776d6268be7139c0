"""Data end to end on the tiny model: every file format and row style trains (one mixture run holding them all),
and ``framework.prepare`` then training under torchrun reads the one prepared copy and tokenizes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.data_fixtures import chat_tokenizer, save_tokenizer
from tests.helpers import ROOT, read_metrics, run_cli, shell_env
from tests.unit.test_data_formats import rows_for, write

pytestmark = pytest.mark.integration

TINY = ["model.vocab_size=2064", "train.max_steps=3", "train.eval_interval=0", "train.checkpoint_interval=0",
        "train.progress=false", "train.micro_batch_size=2", "dataset.max_seq_len=256"]  # fmt: skip

# (file format, row style): every format and every style at least once
SOURCES = [
    ("jsonl", "messages"),
    ("parquet", "conversations"),
    ("csv", "alpaca"),
    ("json", "prompt_response"),
    ("save_to_disk", "messages"),
    ("dataset_dict", "alpaca"),
    ("jsonl_shards", "conversations"),
    ("parquet_shards", "messages"),
]


def test_every_format_and_row_style_trains(tmp_path: Path) -> None:
    tok = save_tokenizer(chat_tokenizer("chatml"), tmp_path / "tok")
    entries = []
    for i, (fmt, style) in enumerate(SOURCES):
        path = write(fmt, rows_for(style) * 4, tmp_path / f"s{i}")
        extra = ", prompt_field: question, response_field: answer" if style == "prompt_response" else ""
        entries.append(f"{{path: '{path}', name: {fmt}-{style}, val_fraction: 0.2{extra}}}")
    run_dir = tmp_path / "run"
    res = run_cli(
        [
            "dataset=mixture",
            f"dataset.sources=[{', '.join(entries)}]",
            f"dataset.tokenizer={tok}",
            *TINY,
            f"dataset.cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={run_dir}",
        ],  # fmt: skip
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (info,) = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*/prepared.json")]
    fmts = {"messages": "chat", "conversations": "chat"}
    assert [(r["name"], r["format"]) for r in info["sources"]] == [
        (f"{fmt}-{style}", fmts.get(style, style)) for fmt, style in SOURCES
    ]
    assert all(r["mixed_examples"] > 0 and r["val_examples"] > 0 for r in info["sources"]), info["sources"]
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3]
    assert "eval_loss" in metrics[-1]


def test_prepare_then_two_ranks_read_one_copy(tmp_path: Path) -> None:
    cache = tmp_path / "prepared"
    args = [*TINY, "model.vocab_size=2048", f"dataset.cache_dir={cache}"]
    env = shell_env(PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    prep = subprocess.run(
        [sys.executable, "-m", "framework.prepare", *args, "--show", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert prep.returncode == 0, prep.stderr[-3000:]
    location = prep.stdout.strip().splitlines()[-1]
    assert location.startswith(str(cache)) and Path(location, "prepared.json").is_file()
    assert "«" in prep.stdout  # the trained span is marked
    stamp = Path(location, "train", "state.json").stat().st_mtime_ns
    run_dir = tmp_path / "run"
    # require_prepared: a rank that would tokenize fails instead, so success means no rank tokenized.
    res = run_cli(
        [*args, "hardware.nproc_per_node=2", "dataset.require_prepared=true", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"Prepared data: {location} (no tokenization)" in res.stderr + res.stdout
    assert Path(location, "train", "state.json").stat().st_mtime_ns == stamp  # read, not rewritten
    assert len(list(cache.iterdir())) == 1  # one shared copy
    assert [m["step"] for m in read_metrics(run_dir) if "loss" in m] == [1, 2, 3]
