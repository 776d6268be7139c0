"""Training throughput of our recipes against plain baselines, measured in one run on the same device.

Arms, each on the same model shape, the same random init (``build_model`` seeds it) and the same examples:

- ``hf+peft``: a plain transformers + peft loop (``get_peft_model`` defaults, torch AdamW, no DeepSpeed), batches
  padded to the longest example in the batch;
- ``hf+peft+liger``: the same with Liger kernels (``apply_liger_kernel_to_llama``: RoPE, RMSNorm, SwiGLU, fused
  linear cross-entropy), run in a child process because Liger patches transformers' module globals; skipped
  (with the reason) where it cannot run, e.g. on CPU;
- ``deepspeed``: the DeepSpeed engine with default settings (only micro batch, clipping, bf16 set), padded
  batches;
- ``ours``: the framework's own training step (``build_model``/``apply_lora``, ``deepspeed_config(cfg)``,
  ``train.micro_step``) on packed rows (padding-free, per-document attention), as the recipe ships;
- ``ours+fast``: the same with ``model.fused_linear_ce=true``, ``model.kernels=lean`` (``--kernels``) and
  ``train.compile=true`` (``--compile``, the default on cuda).

Each recipe (``lora`` = lora_llama, ``full`` = full_finetune) is compared with baselines training the same
parameters. Two data shapes: ``full`` (every example is one full-length sequence: no padding, no packing) and
``varlen`` (instruction-like examples, lengths log-normal with median 300 and sigma 0.9 clipped to
[32, 2048] tokens, scaled by seq/2048 for the tiny shape; a ~30% prompt with no loss). Only real (non-pad)
tokens are counted.

FLOPs (model FLOPs, useful work only; padding and recomputation are not counted). Per real token:

    dense = 2 N_mm            forward through every matmul (all linear layers incl. the LM head; not embeddings)
          + 2 N_mm            backward, activation gradients
          + 2 N_mm_trained    backward, weight gradients of trained matmul weights (full: all; LoRA: none)
          + 6 N_lora          the adapters (forward, activation and weight gradients)

so a full fine-tune is the usual 6 N_mm and LoRA 4 N_mm + 6 N_lora. Attention, causal, per document of n
tokens: 12 * L * d_q * n(n+1)/2 (QK^T and AV: 4 d_q FLOPs per query-key pair per layer forward, x3 for
training), summed over documents: packed documents do not attend to each other. For a full-length row this is
6 L d_q S per token, half of the 12 L d_q S of the PaLM appendix, which counts the masked half too.
MFU = achieved FLOP/s / peak dense bf16 FLOP/s of the GPU (H100/H200 989 TFLOP/s, A100 312); n/a on CPU unless
``--peak-tflops`` is given.

Timing: on GPU each arm runs in its own process (``--isolate``: a clean allocator peak, nothing left over from
the previous arm): built on the GPU, warmed up, timed for ``--steps`` steps. On CPU (shared
cores, other jobs) all arms of a recipe and data shape are built and warmed up first, then timed one step each in
rotating order (``--interleave``), so load drift hits every arm alike; tokens/s is real tokens / timed seconds.

tokens/s and TFLOP/s are medians over the timed steps of each step's real tokens (FLOPs) / seconds.

Peak memory: ``torch.cuda.max_memory_allocated`` over build + warm-up (reset per arm) on GPU. On CPU, tensor
bytes (weights + one gradient per trainable parameter + optimizer state + the tensors autograd saved in a step),
since arms share one process and its RSS high-water mark says little. ``est GB`` is framework.memory's estimate
for the ``ours`` arms (it also counts the loss's transient gradients, which the CPU accounting does not).

    .venv/bin/python benchmarks/bench_throughput.py                        # tiny model, CPU (< 2 min)
    .venv/bin/python benchmarks/bench_throughput.py --shape 1b --device cuda --steps 20 --compile
    .venv/bin/python benchmarks/bench_throughput.py --shape 8b --device cuda --recipes lora --json out.json
    .venv/bin/python benchmarks/bench_throughput.py --shape 1b --device cuda --recipes lora --fast-micro 16
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from framework import dataset as data  # noqa: E402
from framework import memory  # noqa: E402
from recipes import trains  # noqa: E402

SHAPES: dict[str, dict[str, Any]] = {
    # CPU default: a tiny Llama; seq 256, micro batch 8.
    "tiny": {
        "model": "tiny_llama",
        "overrides": [
            "model.hidden_size=64",
            "model.intermediate_size=176",
            "model.num_hidden_layers=2",
            "model.num_attention_heads=4",
            "model.num_key_value_heads=2",
            "model.vocab_size=2048",
        ],
        "seq": 256,
        "micro": 8,
    },
    "1b": {"model": "llama3_2_1b", "overrides": [], "seq": 2048, "micro": 8},
    # the conf turns on gradient checkpointing for 8B; the published baselines ran without (101 GB fits)
    "8b": {
        "model": "llama3_1_8b",
        "overrides": ["model.gradient_checkpointing=false"],
        "seq": 2048,
        "micro": 4,
    },
}
RECIPES = {"lora": "lora_llama", "full": "full_finetune"}
# The published baselines' adapters (every linear layer, dropout 0.05), not the recipe's pretrained defaults.
ALL_LINEAR = [
    "lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]",
    "lora.dropout=0.05",
]
ARMS = ("hf+peft", "hf+peft+liger", "deepspeed", "ours-ref", "ours", "ours+fast")
BASELINES = ("hf+peft", "hf+peft+liger", "deepspeed")
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 70.0}


# ----------------------------------------------------------------------------------------------- config


def compose(shape: str, recipe: str, device: str, extra: list[str] | None = None) -> Any:
    """The framework config for one arm: the recipe's defaults, the shape, the device's hardware profile."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from framework.config import conf_dir, register
    from framework.validate import with_schema

    sh = SHAPES[shape]
    overrides = [
        f"recipe={RECIPES[recipe]}",
        f"model={sh['model']}",
        "hardware=cpu" if device == "cpu" else "hardware=h200x1",
        f"hardware.precision={'fp32' if device == 'cpu' else 'bf16'}",
        f"dataset.max_seq_len={sh['seq']}",
        f"train.micro_batch_size={sh['micro']}",
        "model.train_embeddings=false",  # adapters only, as when fine-tuning a pretrained base
        "hardware.gpu_memory_gb=null",
        *sh["overrides"],
        # issue 5's published baselines: LoRA r=16 on every linear layer (tiny: the recipe's r=8)
        *(["lora.r=16", "lora.alpha=32"] if recipe == "lora" and shape != "tiny" else []),
        *(ALL_LINEAR if recipe == "lora" else []),
        *(extra or []),
    ]
    register()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return with_schema(hydra_compose("config", overrides=overrides))


# ----------------------------------------------------------------------------------------------- data


def sample_lengths(n: int, seq: int, rng: random.Random) -> list[int]:
    """Instruction-like example lengths: log-normal (median 300, sigma 0.9) in [32, 2048], scaled to ``seq``."""
    scale = seq / 2048
    lo, hi = max(4, round(32 * scale)), seq
    return [min(hi, max(lo, round(rng.lognormvariate(math.log(300), 0.9) * scale))) for _ in range(n)]


def make_examples(kind: str, n: int, seq: int, vocab: int, seed: int) -> list[data.Tokenized]:
    """``full``: one full-length document each (every token labelled); ``varlen``: ~30% prompt, no loss on it."""
    rng = random.Random(seed)
    lengths = [seq] * n if kind == "full" else sample_lengths(n, seq, rng)
    out = []
    for length in lengths:
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        prompt = 0 if kind == "full" else max(1, int(0.3 * length))
        out.append(data.Tokenized(ids, [data.IGNORE_INDEX] * prompt + ids[prompt:]))
    return out


def padded_batches(
    examples: list[data.Tokenized], micro: int, pad_id: int
) -> list[tuple[dict[str, Any], int]]:
    """Baseline batching: ``micro`` examples per batch, right-padded to the longest; (tensors, real tokens)."""
    import torch

    out = []
    for i in range(0, len(examples) - micro + 1, micro):
        group = examples[i : i + micro]
        width = max(len(e.input_ids) for e in group)
        ids = torch.full((micro, width), pad_id, dtype=torch.long)
        labels = torch.full((micro, width), data.IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((micro, width), dtype=torch.long)
        for j, e in enumerate(group):
            n = len(e.input_ids)
            ids[j, :n] = torch.tensor(e.input_ids)
            labels[j, :n] = torch.tensor(e.labels)
            mask[j, :n] = 1
        out.append(
            (
                {"input_ids": ids, "labels": labels, "attention_mask": mask},
                sum(len(e.input_ids) for e in group),
            )
        )
    return out


def doc_lengths_padded(batch: dict[str, Any]) -> list[int]:
    return [int(x) for x in batch["attention_mask"].sum(dim=1).tolist()]


def doc_lengths_packed(rows: list[data.Sequence]) -> list[int]:
    """Document lengths inside packed rows (position ids restart at 0 for each; the pad tail is not counted)."""
    out = []
    for r in rows:
        pos = r.position_ids[: r.n_tokens]
        starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
        out.extend(b - a for a, b in zip(starts, starts[1:], strict=False) if b > a)
    return out


# ----------------------------------------------------------------------------------------------- FLOPs


def flops_per_doc(cfg: Any, n: int) -> float:
    """Training FLOPs of one document of ``n`` real tokens (see the module docstring)."""
    s = memory.shapes(cfg)
    pc = memory.param_counts(cfg)
    n_mm = s.matmul_params()
    trained_mm = n_mm if trains(cfg.recipe.name) == "full" else 0
    dense = 4 * n_mm + 2 * trained_mm + 6 * pc.lora
    attention = 12 * s.layers * s.q_dim * n * (n + 1) / 2
    return dense * n + attention


def peak_flops(device: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name()
    return next((v * 1e12 for k, v in PEAK_TFLOPS.items() if k in name), None)


# ----------------------------------------------------------------------------------------------- memory


@dataclass
class Arm:
    """A built arm: its step function and the objects whose tensors count towards its memory."""

    step: Callable[[int], tuple[Any, list[int]]]
    module: Any
    optimizer: Any


class MemoryMeter:
    """Peak memory of an arm. GPU: the CUDA allocator's peak over build + warm-up.

    CPU: tensor bytes, because the RSS high-water mark is meaningless once arms share one process (freed memory
    is reused): parameters + a gradient per trainable parameter + optimizer state + what autograd saved in the
    warm-up step (saved-tensor hooks, each storage once), the same accounting tests/unit/test_memory.py checks
    framework.memory against.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.saved = 0

    @contextlib.contextmanager
    def build(self) -> Iterator[None]:
        if self.device == "cuda":
            import torch

            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        yield

    @contextlib.contextmanager
    def step(self, module: Any) -> Iterator[None]:
        import torch

        if self.device == "cuda":
            yield
            return
        params = {p.untyped_storage().data_ptr() for p in module.parameters()}
        seen: dict[int, int] = {}

        def pack(t: Any) -> Any:
            st = t.untyped_storage()
            if st.data_ptr() not in params:
                seen[st.data_ptr()] = st.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield
        self.saved = max(self.saved, sum(seen.values()))

    def peak(self, arm: Arm) -> float:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            return float(torch.cuda.max_memory_allocated())
        weights = {
            p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in arm.module.parameters()
        }
        grads = sum(p.numel() * p.element_size() for p in arm.module.parameters() if p.requires_grad)
        opt = arm.optimizer
        while not hasattr(opt, "state") and hasattr(opt, "optimizer"):
            opt = opt.optimizer
        state = sum(
            v.numel() * v.element_size()
            for st in getattr(opt, "state", {}).values()
            for v in st.values()
            if torch.is_tensor(v) and v.dim() > 0
        )
        return float(sum(weights.values()) + grads + state + self.saved)


# ----------------------------------------------------------------------------------------------- arms


@dataclass
class Result:
    arm: str
    recipe: str
    data: str
    tokens_per_s: float | None = None
    tflops: float | None = None
    mfu: float | None = None
    peak_mem_gb: float | None = None
    est_mem_gb: float | None = None
    loss: float | None = None
    steps: int = 0
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


@dataclass
class Running:
    """An arm built and warmed up, and its timed steps so far: (real tokens, FLOPs, seconds) each."""

    result: Result
    cfg: Any
    arm: Arm | None
    next_step: int = 0
    samples: list[tuple[int, float, float]] = field(default_factory=list)
    last_loss: Any = None

    def run(self, n: int, device: str) -> None:
        assert self.arm is not None
        for _ in range(n):
            _sync(device)
            t0 = time.perf_counter()
            self.last_loss, lens = self.arm.step(self.next_step)
            _sync(device)
            dt = time.perf_counter() - t0
            self.samples.append((sum(lens), sum(flops_per_doc(self.cfg, k) for k in lens), dt))
            self.next_step += 1

    def finish(self, args: argparse.Namespace) -> Result:
        """Median over steps of tokens/s and FLOP/s: robust to a step slowed by another process."""
        res = self.result
        self.arm = None
        if not self.samples:
            return res
        res.tokens_per_s = statistics.median(t / dt for t, _, dt in self.samples)
        flops_s = statistics.median(f / dt for _, f, dt in self.samples)
        res.tflops = flops_s / 1e12
        pk = peak_flops(args.device, args.peak_tflops)
        res.mfu = flops_s / pk if pk else None
        res.loss = float(self.last_loss)
        res.steps = len(self.samples)
        res.extra = {
            "tokens": sum(t for t, _, _ in self.samples),
            "seconds": sum(dt for _, _, dt in self.samples),
            "step_seconds": [round(dt, 4) for _, _, dt in self.samples],
        }
        return res


def build_base(cfg: Any, liger: bool = False) -> Any:
    """The same seeded model for every arm (``framework.model.build_model``), peft-wrapped for LoRA.

    Built directly on the arm's device (random init of an 8B model on the host would take minutes)."""
    import torch

    from framework.model import apply_lora, build_model

    with torch.device("cuda" if cfg.hardware.accelerator == "cuda" else "cpu"):
        model = build_model(cfg, cfg.model.vocab_size)
    if liger:
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        apply_liger_kernel_to_llama(model=model)
    if trains(cfg.recipe.name) == "lora":
        model = apply_lora(model, cfg)
    return model


def _adamw(cfg: Any, params: list[Any]) -> Any:
    import torch

    o = cfg.optim
    return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)


def run_plain(cfg: Any, examples: list[data.Tokenized], device: str, liger: bool) -> Arm:
    """transformers + peft, torch AdamW, grad clipping; padded batches."""
    import torch

    model = build_base(cfg, liger=liger).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _adamw(cfg, params)
    batches = padded_batches(examples, cfg.train.micro_batch_size, pad_id=0)

    def step(i: int) -> tuple[Any, list[int]]:
        batch, _ = batches[i % len(batches)]
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach(), doc_lengths_padded(batch)

    return Arm(step, model, opt)


def run_deepspeed_default(cfg: Any, examples: list[data.Tokenized]) -> Arm:
    """The DeepSpeed engine with default settings around the same model and torch AdamW; padded batches."""
    import deepspeed

    model = build_base(cfg)
    opt = _adamw(cfg, [p for p in model.parameters() if p.requires_grad])
    ds = {
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch_size,
        "gradient_clipping": float(cfg.train.grad_clip),
        "bf16": {"enabled": cfg.hardware.precision == "bf16"},
    }
    engine, optimizer, *_ = deepspeed.initialize(
        model=model, optimizer=opt, config=ds, dist_init_required=False
    )
    batches = padded_batches(examples, cfg.train.micro_batch_size, pad_id=0)

    def step(i: int) -> tuple[Any, list[int]]:
        batch, _ = batches[i % len(batches)]
        batch = {k: v.to(engine.device, non_blocking=True) for k, v in batch.items()}
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        return loss.detach(), doc_lengths_padded(batch)

    return Arm(step, engine.module, optimizer)


def run_ours(cfg: Any, examples: list[data.Tokenized]) -> Arm:
    """The recipes' own path: build_model/apply_lora, deepspeed_config(cfg), train.micro_step on packed rows."""
    import deepspeed

    from framework.train import deepspeed_config, micro_step

    model = build_base(cfg)
    if cfg.train.compile:
        from framework.kernels import compile_model

        compile_model(model)
    params = [p for p in model.parameters() if p.requires_grad]
    engine, optimizer, *_ = deepspeed.initialize(
        model=model, model_parameters=params, config=deepspeed_config(cfg), dist_init_required=False
    )
    rows = data.pack(examples, cfg.dataset.max_seq_len, 0, cfg.dataset.packing, cfg.train.seed)
    micro = cfg.train.micro_batch_size
    batches = [rows[i : i + micro] for i in range(0, len(rows) - micro + 1, micro)]

    def step(i: int) -> tuple[Any, list[int]]:
        b = batches[i % len(batches)]
        return micro_step(engine, b), doc_lengths_packed(b)

    return Arm(step, engine.module, optimizer)


def arm_config(args: argparse.Namespace, recipe: str, arm: str) -> Any:
    extra = []
    if arm == "ours-ref":
        extra = ["hardware.fast_paths=false"]  # the reference paths (what the GPU profiles shipped before)
    if arm == "ours+fast":
        extra = [
            "hardware.fast_paths=true",
            "model.fused_linear_ce=true",
            f"model.kernels={args.kernels}",
            f"train.compile={str(args.compile).lower()}",
            *([f"train.micro_batch_size={args.fast_micro}"] if args.fast_micro else []),
        ]
    return compose(args.shape, recipe, args.device, extra)


def examples_for(cfg: Any, kind: str, args: argparse.Namespace) -> list[data.Tokenized]:
    """Enough examples for warmup + steps of the arm that eats the most (packed rows hold several)."""
    seq, micro = cfg.dataset.max_seq_len, cfg.train.micro_batch_size
    n_steps = args.warmup + args.steps
    if kind == "full":
        n = micro * n_steps
    else:
        mean = sum(sample_lengths(2000, seq, random.Random(0))) / 2000
        n = int(micro * n_steps * seq / mean * 1.3) + micro
    return make_examples(kind, n, seq, cfg.model.vocab_size, args.seed)


def liger_unavailable(device: str) -> str | None:
    """Why the Liger baseline cannot run here (None when it can)."""
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        return "liger-kernel is not installed (pip install liger-kernel)"
    if device != "cuda":
        try:
            import torch
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            w, x = torch.randn(8, 4), torch.randn(2, 4)
            LigerFusedLinearCrossEntropyLoss()(w, x, torch.tensor([1, 2]))
        except Exception as e:  # noqa: BLE001 - the reason is what we report
            return f"Liger's kernels are Triton GPU kernels; on {device}: {type(e).__name__}: {e}"
        return f"Liger is a GPU library; not measured on {device}"
    return None


def prepare(arm: str, recipe: str, kind: str, args: argparse.Namespace) -> Running:
    """Build one arm and run its warm-up steps (at least one); the peak memory covers both."""
    import torch

    res = Result(arm, recipe, kind)
    cfg = arm_config(args, recipe, arm)
    if arm.startswith("ours"):
        est = memory.estimate(cfg)
        res.est_mem_gb = est.total / 1e9
        if args.device == "cuda":
            budget = torch.cuda.get_device_properties(0).total_memory / 1e9
            if est.total > budget * 1e9:
                res.note = f"skipped: estimate {est.total / 1e9:.0f} GB > {budget:.0f} GB"
                return Running(res, cfg, None)
    examples = examples_for(cfg, kind, args)
    meter = MemoryMeter(args.device)
    run = Running(res, cfg, None)
    try:
        with meter.build():
            if arm in ("hf+peft", "hf+peft+liger"):
                run.arm = run_plain(cfg, examples, args.device, liger=arm == "hf+peft+liger")
            elif arm == "deepspeed":
                run.arm = run_deepspeed_default(cfg, examples)
            else:
                run.arm = run_ours(cfg, examples)
            for _ in range(max(1, args.warmup)):
                with meter.step(run.arm.module):
                    run.last_loss, _lens = run.arm.step(run.next_step)
                run.next_step += 1
            res.peak_mem_gb = meter.peak(run.arm) / 1e9
    except torch.cuda.OutOfMemoryError as e:
        res.note = f"OOM: {str(e).splitlines()[0][:80]}"
        run.arm = None
        free(args.device)
    return run


def free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def measure(arm: str, recipe: str, kind: str, args: argparse.Namespace) -> Result:
    """One arm alone: build, warm up, time ``args.steps`` steps, free."""
    import torch

    run = prepare(arm, recipe, kind, args)
    if run.arm is not None:
        try:
            run.run(args.steps, args.device)
        except torch.cuda.OutOfMemoryError as e:
            run.result.note = f"OOM: {str(e).splitlines()[0][:80]}"
            run.samples.clear()
    res = run.finish(args)
    del run
    free(args.device)
    return res


def measure_interleaved(arms: list[str], recipe: str, kind: str, args: argparse.Namespace) -> list[Result]:
    """All arms built at once, then timed one step each in rotating order, so load drift hits every arm alike.

    Used on CPU, where other processes share the cores.
    """
    runs = [prepare(arm, recipe, kind, args) for arm in arms]
    live = [r for r in runs if r.arm is not None]
    for i in range(args.steps):
        k = i % len(live) if live else 0
        for r in live[k:] + live[:k]:
            r.run(1, args.device)
    results = [r.finish(args) for r in runs]
    del runs, live
    free(args.device)
    return results


def measure_in_child(arm: str, recipe: str, kind: str, args: argparse.Namespace) -> Result:
    """Run one arm in a fresh interpreter (Liger patches transformers' module globals for the whole process)."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--shape", args.shape, "--device", args.device, "--steps", str(args.steps),
        "--warmup", str(args.warmup), "--seed", str(args.seed), "--recipes", recipe, "--data", kind,
        "--only-arm", arm, "--compile" if args.compile else "--no-compile", "--kernels", args.kernels,
    ]  # fmt: skip
    if args.fast_micro:
        cmd += ["--fast-micro", str(args.fast_micro)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.peak_tflops:
        cmd += ["--peak-tflops", str(args.peak_tflops)]
    # The child gets a world of one of its own (this process's rendezvous port is taken).
    rendezvous = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in rendezvous}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.arm_timeout)
    except subprocess.TimeoutExpired:
        return Result(arm, recipe, kind, note=f"timeout: over {args.arm_timeout:.0f} s")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return Result(**json.loads(line[len("RESULT ") :]))
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return Result(arm, recipe, kind, note=f"failed: {tail[0][:100]}")


# ----------------------------------------------------------------------------------------------- report


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(results: list[Result]) -> str:
    head = (
        f"{'data':7s} {'recipe':6s} {'arm':14s} {'tokens/s':>10s} {'TFLOP/s':>9s} {'MFU':>6s} "
        f"{'peak GB':>8s} {'est GB':>7s} {'loss':>7s} {'vs best':>8s}  note"
    )
    lines = [head, "-" * len(head)]
    best = best_baselines(results)
    for r in results:
        b = best.get((r.data, r.recipe))
        ratio = (
            f"{r.tokens_per_s / b.tokens_per_s:.2f}x" if (b and r.tokens_per_s and b.tokens_per_s) else "-"
        )
        lines.append(
            f"{r.data:7s} {r.recipe:6s} {r.arm:14s} {_fmt(r.tokens_per_s, '10,.0f')} {_fmt(r.tflops, '9.4f')} "
            f"{_fmt(r.mfu and 100 * r.mfu, '5.1f') + ('%' if r.mfu else ' '):>6s} {_fmt(r.peak_mem_gb, '8.3f')} "
            f"{_fmt(r.est_mem_gb, '7.3f')} {_fmt(r.loss, '7.3f')} {ratio:>8s}  {r.note}"
        )
    return "\n".join(lines)


def best_baselines(results: list[Result]) -> dict[tuple[str, str], Result]:
    best: dict[tuple[str, str], Result] = {}
    for r in results:
        if r.arm in BASELINES and r.tokens_per_s:
            key = (r.data, r.recipe)
            if key not in best or r.tokens_per_s > (best[key].tokens_per_s or 0):
                best[key] = r
    return best


def summary(results: list[Result]) -> list[str]:
    out = []
    best = best_baselines(results)
    for r in results:
        b = best.get((r.data, r.recipe))
        if r.arm.startswith("ours") and r.tokens_per_s and b and b.tokens_per_s:
            out.append(
                f"{r.data}/{r.recipe}: {r.arm} = {r.tokens_per_s / b.tokens_per_s:.2f}x the best baseline "
                f"({b.arm}, {b.tokens_per_s:,.0f} tokens/s)"
            )
    return out


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available, else cpu"
    )
    p.add_argument("--steps", type=int, default=None, help="timed steps per arm (default: 10 cpu, 20 cuda)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 2 cpu, 5 cuda)")
    p.add_argument("--recipes", default="lora,full", help="comma list of: lora, full")
    p.add_argument("--data", default="full,varlen", help="comma list of: full, varlen")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma list of: {', '.join(ARMS)}")
    p.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None, help="ours+fast compiles"
    )
    p.add_argument(
        "--kernels",
        choices=("hf", "lean", "liger"),
        default="lean",
        help="model.kernels of ours+fast (RMSNorm/SwiGLU; liger: Liger's Triton kernels, CUDA)",
    )
    p.add_argument(
        "--fast-micro",
        type=int,
        default=None,
        help="micro batch of ours+fast (default: the shape's): what the memory it frees buys "
        "(framework.memory.max_micro_batch says what fits)",
    )
    p.add_argument("--peak-tflops", type=float, default=None, help="peak FLOP/s of the device for MFU")
    p.add_argument(
        "--interleave",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="build all arms, then time them step by step in turn (default: on for cpu, off for cuda)",
    )
    p.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="each arm in its own process: clean allocator peak, no leftovers (default: on for cuda)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default on CPU: 1, which keeps timings stable on cores shared with other jobs)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument(
        "--arm-timeout", type=float, default=None, help="seconds per arm run in a child process (--isolate)"
    )
    p.add_argument("--only-arm", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = args.device == "cuda"
    args.steps = args.steps if args.steps is not None else (20 if gpu else 10)
    args.warmup = args.warmup if args.warmup is not None else (5 if gpu else 2)
    args.compile = gpu if args.compile is None else args.compile
    args.interleave = not gpu if args.interleave is None else args.interleave
    args.isolate = gpu if args.isolate is None else args.isolate
    if args.threads is None and not gpu:
        args.threads = 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import torch

    from framework import distributed as dist

    dist.init(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipes = [r for r in args.recipes.split(",") if r]
    kinds = [k for k in args.data.split(",") if k]
    if args.only_arm:
        res = measure(args.only_arm, recipes[0], kinds[0], args)
        print("RESULT " + json.dumps(asdict(res)), flush=True)
        return 0

    arms = [a for a in args.arms.split(",") if a]
    dev = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {os.cpu_count()} cores"
    print(
        f"bench_throughput: shape={args.shape} device={args.device} ({dev}) steps={args.steps} "
        f"warmup={args.warmup} compile={args.compile} threads={torch.get_num_threads()} torch {torch.__version__}",
        flush=True,
    )
    liger_reason = liger_unavailable(args.device) if "hf+peft+liger" in arms else None
    results: list[Result] = []
    t_start = time.perf_counter()
    for kind in kinds:
        for recipe in recipes:
            group: list[Result] = []
            local = [a for a in arms if a != "hf+peft+liger"]
            if "hf+peft+liger" in arms:
                if liger_reason:
                    group.append(Result("hf+peft+liger", recipe, kind, note=f"skipped: {liger_reason}"))
                else:
                    group.append(measure_in_child("hf+peft+liger", recipe, kind, args))
            if args.interleave:
                group.extend(measure_interleaved(local, recipe, kind, args))
            elif args.isolate:
                group.extend(measure_in_child(arm, recipe, kind, args) for arm in local)
            else:
                group.extend(measure(arm, recipe, kind, args) for arm in local)
            group.sort(key=lambda r: arms.index(r.arm))
            for r in group:
                print(
                    f"  {kind}/{recipe}/{r.arm}: "
                    + (f"{r.tokens_per_s:,.0f} tokens/s" if r.tokens_per_s else r.note[:120]),
                    flush=True,
                )
            results.extend(group)
    print()
    print(table(results))
    print()
    for line in summary(results):
        print(line)
    print(f"\ntotal {time.perf_counter() - t_start:.1f}s")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
