"""benchmarks/bench_throughput.py: its arithmetic (fast) and a real tiny run with every row (integration)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from framework import dataset as data
from tests.helpers import ROOT

SCRIPT = ROOT / "benchmarks" / "bench_throughput.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_throughput", SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_throughput"] = mod
    spec.loader.exec_module(mod)
    return mod


bt = _load()


def test_lengths_are_instruction_like_and_scaled() -> None:
    rng = random.Random(0)
    big = bt.sample_lengths(4000, 2048, rng)
    assert min(big) >= 32 and max(big) <= 2048
    med = sorted(big)[len(big) // 2]
    assert 200 < med < 450  # log-normal, median ~300
    tiny = bt.sample_lengths(4000, 256, rng)
    assert min(tiny) >= 4 and max(tiny) <= 256 and 25 < sorted(tiny)[2000] < 60


def test_examples_padding_and_document_lengths() -> None:
    ex = bt.make_examples("varlen", 16, 256, 100, seed=1)
    assert all(e.labels[0] == data.IGNORE_INDEX for e in ex)  # a prompt with no loss
    batches = bt.padded_batches(ex, 4, pad_id=0)
    assert len(batches) == 4
    batch, real = batches[0]
    lens = [len(e.input_ids) for e in ex[:4]]
    assert batch["input_ids"].shape == (4, max(lens)) and real == sum(lens)
    assert bt.doc_lengths_padded(batch) == lens
    rows = data.pack(ex, 256, 0, True, 0)
    assert sorted(bt.doc_lengths_packed(rows)) == sorted(len(e.input_ids) for e in ex)
    full = bt.make_examples("full", 3, 64, 100, seed=1)
    assert all(len(e.input_ids) == 64 and e.labels == e.input_ids for e in full)


def test_flop_formula() -> None:
    from framework import memory

    full = bt.compose("tiny", "full", "cpu")
    lora = bt.compose("tiny", "lora", "cpu")
    s = memory.shapes(full)
    n_mm = s.matmul_params()
    attn = 12 * s.layers * s.q_dim * 10 * 11 / 2
    assert bt.flops_per_doc(full, 10) == 6 * n_mm * 10 + attn  # the classic 6N, causal attention
    n_lora = memory.param_counts(lora).lora
    assert n_lora > 0
    assert bt.flops_per_doc(lora, 10) == (4 * n_mm + 6 * n_lora) * 10 + attn
    # packing: two documents of 5 cost less attention than one of 10
    assert 2 * bt.flops_per_doc(full, 5) < bt.flops_per_doc(full, 10)


def test_report_ratios_against_best_baseline() -> None:
    R = bt.Result
    results = [
        R("hf+peft", "lora", "full", tokens_per_s=100.0),
        R("hf+peft+liger", "lora", "full", note="skipped: no GPU"),
        R("deepspeed", "lora", "full", tokens_per_s=120.0),
        R("ours", "lora", "full", tokens_per_s=150.0, est_mem_gb=1.0),
        R("ours+fast", "lora", "full", tokens_per_s=180.0),
    ]
    text = bt.table(results)
    assert "1.25x" in text and "1.50x" in text and "skipped: no GPU" in text
    assert bt.summary(results) == [
        "full/lora: ours = 1.25x the best baseline (deepspeed, 120 tokens/s)",
        "full/lora: ours+fast = 1.50x the best baseline (deepspeed, 120 tokens/s)",
    ]


@pytest.mark.integration
def test_liger_reason_on_cpu() -> None:
    reason = bt.liger_unavailable("cpu")
    assert reason and ("not installed" in reason or "GPU" in reason)


@pytest.mark.integration
def test_gpu_script_in_cpu_mode_runs_every_arm_and_writes_the_json(tmp_path: Path) -> None:
    """benchmarks/gpu/run.sh, the one-call GPU run, in its CPU mode (tiny shape, 1 step: ~40 s on 2 cores):
    every (data, recipe, arm) row printed and in results.json, each with the benchmark's Result fields."""
    out = tmp_path / "out"
    env = {
        **os.environ,
        "SHAPES": "tiny",
        "DEVICE": "cpu",
        "STEPS": "1",
        "WARMUP": "1",
        "PYTHON": sys.executable,
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu" / "run.sh"), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = [ln for ln in proc.stdout.splitlines() if ln.startswith(("full ", "varlen "))]
    result = json.loads((out / "results.json").read_text())
    rows = result["rows"]
    assert result["device"] == "cpu" and len(rows) == len(printed) == 2 * 2 * len(bt.ARMS), proc.stdout
    fields = {f.name for f in dataclasses.fields(bt.Result)} | {"shape", "device"}
    for kind in ("full", "varlen"):
        for recipe in ("lora", "full"):
            for arm in bt.ARMS:
                match = [r for r in rows if (r["data"], r["recipe"], r["arm"]) == (kind, recipe, arm)]
                assert len(match) == 1, (kind, recipe, arm)
                assert set(match[0]) == fields and match[0]["shape"] == "tiny"
                if arm == "hf+peft+liger":
                    assert match[0]["note"].startswith("skipped")
                else:
                    assert match[0]["tokens_per_s"] > 0, match[0]
            assert (
                f"{kind}/{recipe}: ours = " in proc.stdout and f"{kind}/{recipe}: ours+fast = " in proc.stdout
            )
    assert (out / "table.txt").read_text().count("tokens/s") >= 1


@pytest.mark.parametrize("shape", ["1b", "8b"])
def test_gpu_shapes_compose_for_every_recipe_and_arm(shape: str) -> None:
    """The GPU runs cannot be tried here: every arm's config for them must at least compose and validate."""
    from framework.validate import validate

    args = bt.parse_args(["--shape", shape, "--device", "cuda", "--no-compile", "--kernels", "liger"])
    for recipe in bt.RECIPES:
        for arm in bt.ARMS:
            cfg = bt.arm_config(args, recipe, arm)
            assert cfg.hardware.precision == "bf16" and cfg.dataset.max_seq_len == 2048
            problems = [p for p in validate(cfg, gpu_count=lambda: 1) if "nproc" not in p]
            assert not problems, (recipe, arm, problems)
            if recipe == "lora":
                assert cfg.lora.r == 16  # the published baselines' rank
            if arm == "ours+fast":
                assert cfg.model.fused_linear_ce and cfg.model.kernels == "liger"
