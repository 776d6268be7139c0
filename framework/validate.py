"""Semantic validation of a composed config: every problem collected, then one ConfigError listing them all.

Hydra and the typed schema already reject unknown keys and wrong types while composing; this adds the checks a
schema cannot express (choices, ranges, batch arithmetic, ZeRO options, files that must exist). No torch import.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from framework.config import Config, package_path
from framework.errors import ConfigError
from framework.tracking_config import tracking_problems
from recipes import RECIPES

CHOICES: dict[str, tuple[str, ...]] = {
    "recipe.finetune": ("lora", "full"),
    "optim.name": ("adamw", "sgd"),
    "scheduler.name": ("cosine", "constant"),
    "model.attn_implementation": ("eager", "sdpa", "flash_attention_2", "flex_attention"),
    "model.kernels": ("hf", "lean", "liger"),
    "dataset.overlong": ("truncate", "drop"),
    "hardware.accelerator": ("cpu", "cuda"),
    "hardware.precision": ("fp32", "bf16", "fp16"),
    "launcher.name": ("local", "kubernetes"),
    "launcher.backend": ("indexed_job", "jobset", "pytorchjob"),
    "storage.name": ("local", "s3"),
}

POSITIVE_INTS = (
    "train.micro_batch_size",
    "train.grad_accum",
    "train.log_interval",
    "dataset.max_seq_len",
    "hardware.nodes",
    "hardware.nproc_per_node",
    "model.hidden_size",
    "model.num_hidden_layers",
    "model.num_attention_heads",
    "model.num_key_value_heads",
    "model.vocab_size",
)
NON_NEGATIVE = (
    "train.eval_interval",
    "train.checkpoint_interval",
    "train.grad_clip",
    "train.eval_max_batches",
)


def with_schema(cfg: DictConfig) -> DictConfig:
    """Merge ``cfg`` onto the typed schema (a resolved config read back from a file has none attached)."""
    plain = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), plain)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"{key}: {e.msg if hasattr(e, 'msg') else e}") from e
    assert isinstance(merged, DictConfig)
    return merged


def _get(cfg: DictConfig, key: str) -> object:
    return OmegaConf.select(cfg, key, throw_on_missing=False)


def _local_missing(uri: str | None) -> bool:
    """True for a local (or pkg://, file://) path that does not exist; remote URIs are checked when read."""
    if not uri:
        return False
    if uri.startswith("pkg://"):
        try:
            path = package_path(uri)
        except FileNotFoundError:
            return True
    elif uri.startswith("file://"):
        path = uri.removeprefix("file://")
    elif "://" in uri:
        return False
    else:
        path = uri
    return not Path(path).expanduser().exists()


def validate(
    cfg: DictConfig, *, gpu_count: Callable[[], int] | None = None, check_local_paths: bool = True
) -> list[str]:
    """Return every problem found in ``cfg`` (empty when valid). ``gpu_count`` is asked only for local GPU runs;
    ``check_local_paths=False`` skips path existence (a launcher whose jobs read paths on another machine)."""
    problems: list[str] = []
    missing = sorted(OmegaConf.missing_keys(cfg))
    for key in missing:
        problems.append(f"{key} is required but not set; pass {key}=<value> on the command line")

    recipe = _get(cfg, "recipe.name")
    if recipe is not None and recipe not in RECIPES:
        problems.append(f"recipe.name={recipe!r} is not a recipe; valid: {', '.join(sorted(RECIPES))}")
    for key, valid in CHOICES.items():
        value = _get(cfg, key)
        if value is not None and value not in valid:
            problems.append(f"{key}={value!r} is not valid; choose one of: {', '.join(valid)}")
    for key in POSITIVE_INTS:
        value = _get(cfg, key)
        if isinstance(value, int) and value < 1:
            problems.append(f"{key}={value} must be >= 1")
    for key in NON_NEGATIVE:
        value = _get(cfg, key)
        if isinstance(value, int | float) and value < 0:
            problems.append(f"{key}={value} must be >= 0")

    train = cfg.train
    if train.max_steps is None and train.epochs is None:
        problems.append("train.max_steps and train.epochs are both null; set one, e.g. train.max_steps=100")
    if train.max_steps is not None and train.max_steps < 1:
        problems.append(f"train.max_steps={train.max_steps} must be >= 1")
    if train.epochs is not None and train.epochs <= 0:
        problems.append(f"train.epochs={train.epochs} must be > 0")

    hw = cfg.hardware
    world = hw.nodes * hw.nproc_per_node
    per_step = train.micro_batch_size * world
    if train.global_batch_size is not None and per_step > 0:
        if train.global_batch_size % per_step != 0:
            problems.append(
                f"train.global_batch_size={train.global_batch_size} is not divisible by micro_batch_size x "
                f"world size = {train.micro_batch_size} x {world} = {per_step}; use a multiple of {per_step} "
                f"(e.g. {max(1, train.global_batch_size // per_step) * per_step}) or change train.micro_batch_size"
            )
        elif train.global_batch_size // per_step != train.grad_accum and train.grad_accum != 1:
            problems.append(
                f"train.global_batch_size={train.global_batch_size} implies grad_accum="
                f"{train.global_batch_size // per_step} but train.grad_accum={train.grad_accum}; set only one"
            )

    if cfg.recipe.finetune == "lora" and cfg.lora is None:
        problems.append("recipe.finetune=lora needs a `lora` section (r, alpha, ...); it is null")
    if cfg.lora is not None:
        if cfg.lora.r < 1:
            problems.append(f"lora.r={cfg.lora.r} must be >= 1")
        if not 0.0 <= cfg.lora.dropout < 1.0:
            problems.append(f"lora.dropout={cfg.lora.dropout} must be in [0, 1)")
        if not cfg.lora.target_modules:
            problems.append("lora.target_modules is empty; name at least one module, e.g. [q_proj,v_proj]")

    # ZeRO: which stage can take which option.
    if hw.zero_stage not in (0, 1, 2, 3):
        problems.append(f"hardware.zero_stage={hw.zero_stage} is not a ZeRO stage; choose 0, 1, 2 or 3")
    if hw.offload_param and hw.zero_stage != 3:
        problems.append(
            f"hardware.offload_param=true needs ZeRO stage 3 (hardware.zero_stage={hw.zero_stage}); "
            "set hardware.zero_stage=3 or hardware.offload_param=false"
        )
    if hw.offload_optimizer and hw.zero_stage == 0:
        problems.append(
            "hardware.offload_optimizer=true needs ZeRO stage 1, 2 or 3; set hardware.zero_stage=2"
        )
    if hw.zero_stage == 3 and hw.accelerator == "cpu" and hw.precision != "fp32":
        problems.append(f"ZeRO-3 on CPU supports only fp32, not hardware.precision={hw.precision}")
    if hw.accelerator == "cpu" and hw.precision == "fp16":
        problems.append("hardware.precision=fp16 needs a GPU; on CPU use fp32 (or bf16)")
    if hw.accelerator == "cpu" and cfg.model.attn_implementation == "flash_attention_2":
        problems.append("model.attn_implementation=flash_attention_2 needs a GPU; on CPU use sdpa")
    if hw.accelerator == "cpu" and cfg.model.get("kernels") == "liger":
        problems.append("model.kernels=liger runs Triton GPU kernels; on CPU use model.kernels=lean")
    if hw.accelerator == "cuda" and hw.gpus_per_node and hw.nproc_per_node > hw.gpus_per_node:
        problems.append(
            f"hardware.nproc_per_node={hw.nproc_per_node} exceeds hardware.gpus_per_node={hw.gpus_per_node}"
        )

    ds = cfg.dataset
    if not 0.0 <= ds.val_fraction < 1.0:
        problems.append(f"dataset.val_fraction={ds.val_fraction} must be in [0, 1)")
    if "{prompt}" not in ds.template:
        problems.append("dataset.template must contain {prompt}")
    model_max = cfg.model.max_position_embeddings
    if ds.max_seq_len > model_max:
        problems.append(
            f"dataset.max_seq_len={ds.max_seq_len} exceeds model.max_position_embeddings={model_max}"
        )
    for key in (
        "dataset.path",
        "dataset.val_path",
        "dataset.tokenizer",
        "model.pretrained",
        "model.tokenizer",
    ):
        value = _get(cfg, key)
        if check_local_paths and isinstance(value, str) and key not in missing and _local_missing(value):
            problems.append(f"{key}={value} does not exist; fix the path (local path or s3:// URI)")

    problems += tracking_problems(OmegaConf.to_object(cfg.tracking))  # type: ignore[arg-type]
    if cfg.launcher.name == "local" and hw.accelerator == "cuda" and gpu_count is not None:
        have = gpu_count()
        if have == 0:
            problems.append(
                f"hardware={hw.name} needs CUDA GPUs but this machine has none; run it with "
                "launcher=kubernetes, or use hardware=cpu here"
            )
        elif have < hw.nproc_per_node:
            problems.append(f"hardware.nproc_per_node={hw.nproc_per_node} but only {have} GPU(s) are visible")
    if cfg.launcher.name == "local" and hw.nodes > 1 and not os.environ.get("NNODES"):
        problems.append(
            f"hardware.nodes={hw.nodes} with launcher=local: multi-node runs need launcher=kubernetes "
            "(or start torchrun on each node yourself with the rendezvous env)"
        )
    if not problems and hw.accelerator == "cuda" and _get(cfg, "hardware.gpu_memory_gb") is not None:
        from framework.memory import check_fits  # pure arithmetic, no torch

        try:
            check_fits(cfg)
        except ConfigError as e:
            problems.extend(e.problems)
    return problems


def check(cfg: DictConfig, *, gpu_count: Callable[[], int] | None = None) -> DictConfig:
    """Attach the schema if needed, validate, and raise one ConfigError listing every problem."""
    cfg = with_schema(cfg)
    problems = validate(cfg, gpu_count=gpu_count)
    if problems:
        raise ConfigError(problems)
    return cfg
