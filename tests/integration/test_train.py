"""End-to-end training runs on CPU: the run directory contract, resume after SIGTERM, torchrun + ZeRO, sweeps,
and the LoRA loss curve against a plain transformers + peft + torch loop."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, read_metrics, run_cli, shell_env

pytestmark = pytest.mark.integration

SHORT = [
    "train.max_steps=30",
    "train.eval_interval=10",
    "train.checkpoint_interval=10",
    "train.progress=false",
]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("lora") / "run"
    res = run_cli([*SHORT, f"hydra.run.dir={run_dir}"], cwd=run_dir.parent)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"Run directory: {run_dir}" in res.stderr + res.stdout
    return run_dir


def test_run_directory_contract(lora_run: Path) -> None:
    assert (lora_run / "config.yaml").is_file()
    metrics = read_metrics(lora_run)
    assert all("step" in m for m in metrics)
    train = [m for m in metrics if "loss" in m]
    evals = [m for m in metrics if "eval_loss" in m]
    assert [m["step"] for m in train] == list(range(1, 31))
    assert all({"loss", "lr", "tokens_per_s"} <= m.keys() for m in train)
    assert [m["step"] for m in evals] == [0, 10, 20, 30]  # train.eval_at_start: the step-0 baseline
    assert all(math.isclose(m["perplexity"], math.exp(m["eval_loss"]), rel_tol=1e-6) for m in evals)
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.5  # learning, not noise
    ckpts = lora_run / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_30"
    assert sorted(p.name for p in ckpts.iterdir() if p.is_dir()) == ["step_20", "step_30"]  # keep_last=2
    assert (ckpts / "step_30" / "manifest.json").is_file()
    assert (lora_run / "adapter" / "adapter_config.json").is_file()


def test_resume_with_incompatible_config_fails_clearly(lora_run: Path, tmp_path: Path) -> None:
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(lora_run / "checkpoints", run_dir / "checkpoints")
    res = run_cli([*SHORT, "train.max_steps=40", "lora.r=16", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    assert (
        "written by a different run; changed: lora.r: 8 -> 16" in res.stderr
    )  # resume=auto compares configs
    named = [*SHORT, "lora.r=16", f"resume={run_dir / 'checkpoints' / 'step_30'}", f"hydra.run.dir={run_dir}"]
    res = run_cli(named, cwd=tmp_path)  # a named checkpoint: the compatibility check still applies
    assert res.returncode == 2, res.stderr[-3000:]
    assert "does not fit this run (lora_r: checkpoint 8 vs run 16)" in res.stderr
    assert "resume=none" in res.stderr


def test_adapter_loads_with_peft(lora_run: Path) -> None:
    import torch
    from omegaconf import OmegaConf
    from peft import PeftModel

    from framework.model import build_model

    cfg = OmegaConf.load(lora_run / "config.yaml")
    base = build_model(cfg, vocab_len=cfg.model.vocab_size)
    model = PeftModel.from_pretrained(base, str(lora_run / "adapter"))
    ids = torch.tensor([[1, 5, 9, 2]])
    assert model(input_ids=ids).logits.shape == (1, 4, cfg.model.vocab_size)
    assert any("lora_A" in n for n, _ in model.named_parameters())


def _popen(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = shell_env(PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "framework", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_sigterm_saves_then_resume_matches_uninterrupted(lora_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [*SHORT, f"hydra.run.dir={run_dir}"]
    proc = _popen(args, tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline:
        if (run_dir / "metrics.jsonl").is_file() and len(read_metrics(run_dir)) >= 12:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-3000:]
    stopped_at = int((run_dir / "checkpoints" / "latest").read_text().strip().removeprefix("step_"))
    assert 0 < stopped_at < 30, "the SIGTERM checkpoint is the latest one"

    res = run_cli(args, cwd=tmp_path)  # the same command again, as a restarted pod would run it
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"Resumed from {run_dir / 'checkpoints' / f'step_{stopped_at}'}" in res.stderr + res.stdout
    resumed, reference = read_metrics(run_dir), read_metrics(lora_run)
    assert [m["step"] for m in resumed] == [m["step"] for m in reference]
    for a, b in zip(resumed, reference, strict=True):
        for key in ("loss", "eval_loss", "lr"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a, b)


def test_full_finetune_writes_hf_model(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = tmp_path / "run"
    res = run_cli(
        ["recipe=full_finetune", "train.max_steps=4", "train.progress=false", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    AutoTokenizer.from_pretrained(run_dir / "model")
    assert model.config.num_hidden_layers == 2
    assert not (run_dir / "adapter").exists()


@pytest.mark.parametrize("stage", [2, 3])
def test_torchrun_two_processes_zero(stage: int, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [
        "hardware.nproc_per_node=2", f"hardware.zero_stage={stage}", "train.max_steps=6", "train.eval_interval=3",
        "train.checkpoint_interval=3", "train.micro_batch_size=4", "train.progress=false", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    res = run_cli(args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "World: 2 process(es)" in res.stderr + res.stdout
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics if "loss" in m] == list(range(1, 7))
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_6"
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    # Resume in a world of two from the ZeRO checkpoint and train further.
    res = run_cli([*args[:-1], "train.max_steps=8", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "Resumed from" in res.stderr + res.stdout
    assert [m["step"] for m in read_metrics(run_dir) if "loss" in m][-2:] == [7, 8]


def test_zero_switches_keep_the_losses(tmp_path: Path) -> None:
    """LoRA on a frozen base, 2 processes: ZeRO-3 with gradient checkpointing, and ZeRO-2 with reduce buckets
    of 5,000 elements (many small all-reduces), compute the losses of ZeRO-2 with the default bucket."""
    runs = {
        "zero2": ["hardware.zero_stage=2"],
        "zero3+ckpt": ["hardware.zero_stage=3", "model.gradient_checkpointing=true"],
        "zero2+small-buckets": ["hardware.zero_stage=2", "hardware.bucket_size=5000"],
    }
    losses = {}
    for name, extra in runs.items():
        run_dir = tmp_path / name
        args = [
            "hardware.nproc_per_node=2", *extra, "model.train_embeddings=false", "train.max_steps=4",
            "train.eval_interval=0", "train.checkpoint_interval=0", "train.progress=false",
            f"hydra.run.dir={run_dir}",
        ]  # fmt: skip
        res = run_cli(args, cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-4000:]
        losses[name] = [m["loss"] for m in read_metrics(run_dir) if "loss" in m]
    assert len(losses["zero2"]) == 4
    for name in runs:
        assert losses[name] == pytest.approx(losses["zero2"], rel=1e-5), name


def test_sweep_runs_each_job_and_summarises(tmp_path: Path) -> None:
    res = run_cli(
        ["-m", "optim.lr=1e-3,3e-3", "train.max_steps=4", "train.eval_interval=2", "train.progress=false",
         f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Sweep summary (best first):" in res.stdout
    table = res.stdout[res.stdout.index("Sweep summary") :].splitlines()
    assert len(table) == 4 and table[2].startswith("*")  # header, column names, 2 jobs with the best marked
    assert {"optim.lr=0.001", "optim.lr=0.003"} == {line.split()[-6] for line in table[2:]}
    assert "train.max_steps" not in "\n".join(table)  # only what varies between jobs
    for job in ("0", "1"):
        assert (tmp_path / "sweep" / job / "metrics.jsonl").is_file()


def test_lora_loss_curve_matches_plain_peft_loop(tmp_path: Path) -> None:
    """The DeepSpeed engine must not change the math: same model, data, seed -> same losses as plain torch."""
    import torch
    from hydra import compose, initialize_config_dir

    from framework import dataset as data
    from framework.config import conf_dir, register
    from framework.model import apply_lora, build_model, load_tokenizer
    from framework.train import lr_lambda, seed_everything

    overrides = ["train.max_steps=12", "train.eval_interval=0", "train.progress=false", "lora.dropout=0.0"]
    run_dir = tmp_path / "run"
    res = run_cli([*overrides, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    ours = [m["loss"] for m in read_metrics(run_dir) if "loss" in m]

    register()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    seed_everything(cfg.train.seed)
    tok = load_tokenizer(cfg)
    examples, _ = data.load_tokenized(cfg.dataset.path, tok, cfg.dataset)
    train_ex, _ = data.split(examples, cfg.dataset.val_fraction, cfg.train.seed)
    rows = data.pack(train_ex, cfg.dataset.max_seq_len, tok.pad_token_id, True, cfg.train.seed)
    batches = data.Batches(rows, cfg.train.micro_batch_size, 1, 0, cfg.train.seed)
    model = apply_lora(build_model(cfg, len(tok)), cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                            weight_decay=cfg.optim.weight_decay)  # fmt: skip
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, cfg.train.max_steps))
    plain = []
    for step in range(cfg.train.max_steps):
        loss = model(**data.collate(batches.batch(step))).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad()
        plain.append(loss.item())
    assert ours == pytest.approx(plain, rel=1e-4, abs=1e-5)


def test_torchrun_worker_rejecting_the_data_exits_2_with_its_message_once(tmp_path: Path) -> None:
    """Bad bytes in the data file are found by the workers (after validation): the local launcher exits 2 with
    the worker's message once, not torchrun's exit 1 and a traceback per rank."""
    data = tmp_path / "d.jsonl"
    data.write_bytes(b'{"instruction": "a", "output": "b"}\n{"instruction": "\xff", "output": "b"}\n')
    res = run_cli(
        ["hardware.nproc_per_node=2", "dataset=jsonl", f"dataset.path={data}",
         "dataset.tokenizer=pkg://framework.data/sample/tokenizer", "train.max_steps=1", "train.progress=false",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
    )  # fmt: skip
    text = res.stdout + res.stderr
    assert res.returncode == 2, text[-3000:]
    assert "Starting 2 processes under torchrun" in text  # rejected by the workers, not at validation
    assert "Traceback" not in text and "ChildFailedError" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "d.jsonl" in errors[0], text[-3000:]
