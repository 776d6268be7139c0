"""Seeded command lines for the CLI fuzz tests (issue 17 item 6): random sets of good and bad overrides.

Each case is a list of :class:`Mutation`; a case with any bad mutation is a user mistake (expected: exit 2, no
traceback, the key named), one without is a valid config (expected: exit 0). ``python -m tests.fuzz_cases N``
prints N cases.
"""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Mutation:
    args: tuple[str, ...]  # command-line words
    key: str  # what a message about it must name
    bad: bool


def _kv(key: str, values: list[str], bad: bool) -> list[Mutation]:
    return [Mutation((f"{key}={v}",), key, bad) for v in values]


BAD: list[Mutation] = [
    *_kv("optim.lr", ["0", "-1", "nan", "inf", "1e6", "abc", "''"], True),
    *_kv("optim.weight_decay", ["-0.1", "nan"], True),
    *_kv("optim.eps", ["0", "-1e-8"], True),
    *_kv("optim.betas", ["[[1,2]]", "[0.9]", "[0.9,1.5]", "[a,b]"], True),
    *_kv("optim.name", ["lion", "''"], True),
    *_kv("scheduler.name", ["linear"], True),
    *_kv("scheduler.min_lr_ratio", ["-1", "1.5", "nan"], True),
    *_kv("scheduler.warmup_steps", ["-1", "1000"], True),
    *_kv("train.max_steps", ["0", "-5", "abc", "1.5"], True),
    *_kv("train.micro_batch_size", ["0", "-1"], True),
    *_kv("train.grad_accum", ["0"], True),
    *_kv("train.global_batch_size", ["0", "-8", "6"], True),
    *_kv("train.grad_clip", ["-1", "nan"], True),
    *_kv("train.eval_interval", ["-1"], True),
    *_kv("train.checkpoint_interval", ["-1"], True),
    *_kv("train.keep_last", ["-1"], True),
    *_kv("train.seed", ["-1", "abc"], True),
    *_kv("train.log_interval", ["0"], True),
    *_kv("train.epochs", ["0", "-1", "nan", "2"], True),
    *_kv("lora.r", ["0", "-1", "9223372036854775808", "1000"], True),
    *_kv("lora.alpha", ["0", "-16"], True),
    *_kv("lora.dropout", ["1.0", "-0.1", "nan"], True),
    *_kv("lora.target_modules", ["[]"], True),
    Mutation(("lora.target_modules.x=1",), "lora.target_modules", True),
    *_kv("model.hidden_size", ["0", "-64", "abc"], True),
    *_kv("model.intermediate_size", ["-1", "0"], True),
    *_kv("model.num_hidden_layers", ["0"], True),
    *_kv("model.num_attention_heads", ["0", "3"], True),
    *_kv("model.rope_theta", ["nan", "-1", "0", "inf"], True),
    *_kv("model.rms_norm_eps", ["0", "-1e-5", "nan"], True),
    *_kv("model.tie_word_embeddings", ["2", "maybe"], True),
    *_kv("model.attn_implementation", ["flash", "''"], True),
    *_kv("model.vocab_size", ["0", "-1"], True),
    *_kv("model.max_position_embeddings", ["0", "16"], True),
    *_kv("dataset.max_seq_len", ["0", "1", "-1", "100000"], True),
    *_kv("dataset.val_fraction", ["1.0", "-0.1", "nan"], True),
    *_kv("dataset.overlong", ["cut"], True),
    *_kv("dataset.path", ["/nonexistent/train.jsonl", "s3://", "gs://bucket/x", "s3:bucket/x", "''"], True),
    *_kv("dataset.val_path", ["/nonexistent/val.jsonl"], True),
    *_kv("dataset.template", ["'no prompt'", "'{prompt'", "'{prompt} {x}'"], True),
    *_kv("dataset.input_template", ["'{prompt} {nope}'"], True),
    *_kv("dataset.prompt_field", ["''"], True),
    *_kv("hardware.nodes", ["0", "-1"], True),
    *_kv("hardware.nproc_per_node", ["0"], True),
    *_kv("hardware.zero_stage", ["5", "-1"], True),
    *_kv("hardware.precision", ["fp8", "fp16"], True),
    *_kv("hardware.accelerator", ["tpu"], True),
    *_kv("hardware.cpu", ["-1", "'2 cores'", "0"], True),
    *_kv("hardware.memory", ["8GB", "-1Gi", "lots"], True),
    *_kv("hardware.shm_size", ["abc"], True),
    *_kv("hardware.bucket_size", ["-1", "0"], True),
    *_kv("hardware.gpus_per_node", ["-1"], True),
    *_kv("hardware.cpu_threads", ["0", "-2"], True),
    *_kv("hardware.offload_param", ["true"], True),
    Mutation(("storage=s3",), "storage.output_uri", True),
    *_kv("storage.output_uri", ["s3:", "/proc/x", "gs://b/x", "''"], True),
    *_kv("storage.retries", ["0", "-1"], True),
    *_kv("storage.max_workers", ["0"], True),
    *_kv("run_name", ["../..", "a/b", "x" * 300, "''"], True),
    *_kv("resume", ["/nonexistent/ckpt", "''"], True),
    Mutation(("model=gpt5",), "model", True),
    Mutation(("recipe=lora_llama.yaml",), "recipe", True),
    Mutation(("dataset=nope",), "dataset", True),
    Mutation(("hardware=tpu",), "hardware", True),
    Mutation(("+train.max_steps=3",), "train.max_steps", True),
    Mutation(("~train.max_steps",), "train.max_steps", True),
    Mutation(("++train.max_steps=abc",), "train.max_steps", True),
    Mutation(("+foo=1",), "foo", True),
    Mutation(("~nothere",), "nothere", True),
    Mutation(("train.max_steps=[1",), "train.max_steps", True),
    Mutation(("train.max_stepz=3",), "train.max_stepz", True),
    Mutation(("optim.lr=1e-3=2",), "optim.lr", True),
    Mutation(("recipe=full_finetune", "lora.r=4"), "lora.r", True),
]

GOOD: list[Mutation] = [
    *_kv("optim.lr", ["1e-4", "3e-3"], False),
    *_kv("optim.weight_decay", ["0.01"], False),
    *_kv("optim.betas", ["[0.9,0.95]"], False),
    *_kv("optim.name", ["sgd"], False),
    *_kv("scheduler.name", ["constant"], False),
    *_kv("scheduler.min_lr_ratio", ["0.0", "0.5"], False),
    *_kv("scheduler.warmup_steps", ["0", "2"], False),
    *_kv("train.micro_batch_size", ["2"], False),
    *_kv("train.grad_clip", ["0.5"], False),
    *_kv("train.eval_interval", ["0", "5"], False),
    *_kv("train.seed", ["7"], False),
    *_kv("lora.r", ["4", "16"], False),
    *_kv("lora.alpha", ["8"], False),
    *_kv("lora.dropout", ["0.0"], False),
    *_kv("lora.target_modules", ["[q_proj,v_proj]"], False),
    *_kv("model.intermediate_size", ["128"], False),
    *_kv("model.num_hidden_layers", ["1"], False),
    *_kv("model.rope_theta", ["500000.0"], False),
    *_kv("model.attn_implementation", ["eager"], False),
    *_kv("dataset.max_seq_len", ["64", "128"], False),
    *_kv("dataset.val_fraction", ["0.2"], False),
    *_kv("dataset.overlong", ["drop"], False),
    *_kv("dataset.template", ["'Q: {prompt} A: '"], False),
    *_kv("hardware.cpu", ["4", "500m"], False),
    *_kv("hardware.memory", ["16Gi"], False),
    *_kv("hardware.cpu_threads", ["1"], False),
    *_kv("resume", ["none"], False),
]


def cases(n: int, seed: int = 17) -> list[list[Mutation]]:
    """``n`` cases: about a quarter valid (1-3 good mutations), the rest with 1-3 bad ones mixed in."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        picked = rng.sample(GOOD, rng.randint(0, 2))
        if rng.random() > 0.25:
            picked += rng.sample(BAD, rng.randint(1, 3))
        rng.shuffle(picked)
        seen: set[str] = set()
        unique = [m for m in picked if not (m.key in seen or seen.add(m.key))]  # one mutation per key
        out.append(unique)
    return out


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """An in-process ``main()`` lets Hydra configure logging onto pytest's captured stream, which is closed after
    the test; later tests would log into it. Put the root logger back as it was."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    framework = logging.getLogger("framework")
    fw_handlers, fw_level = framework.handlers[:], framework.level
    yield
    root.handlers[:], framework.handlers[:] = handlers, fw_handlers
    root.setLevel(level)
    framework.setLevel(fw_level)


def argv(case: list[Mutation]) -> list[str]:
    return [a for m in case for a in m.args]


if __name__ == "__main__":
    for c in cases(int(sys.argv[1]) if len(sys.argv) > 1 else 10):
        print(" ".join(argv(c)))
