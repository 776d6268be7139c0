"""One validation pass over a composed config: every group's problems, then one ConfigError listing them all.

Hydra and the typed schema already reject unknown keys and wrong types while composing; this adds the checks a
schema cannot express (choices, ranges, batch arithmetic, ZeRO options, files that must exist). No torch import.

Each config group owns one ``<group>_problems(cfg) -> list[str]`` below (``tracking`` in
``framework.tracking_config``); the launcher contributes its own list through :data:`LAUNCHER_PROBLEMS`, looked
up by ``launcher.name``. New checks go into the matching function, never into an ad-hoc raise, so a command
line with five mistakes reports all five in one run. :func:`host_problems` holds what depends on the machine
that starts the run (files that must exist here, visible GPUs) rather than on the config alone.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from framework import fastpath, pretrained
from framework.config import Config, package_path
from framework.errors import ConfigError
from framework.evaluation import eval_problems
from framework.model import option_problems
from framework.tracking_config import tracking_problems as _tracking_section_problems
from recipes import RECIPES

log = logging.getLogger(__name__)

Problems = Callable[[DictConfig], list[str]]

# launcher.name -> "module:function" returning that launcher's problems. A launcher plugin owns its checks;
# the table is the one place the framework learns of them ("local" has no options to check).
LAUNCHER_PROBLEMS: dict[str, str] = {
    "kubernetes": "hydra_plugins.kubernetes_launcher._problems:launcher_problems",
    "ray": "hydra_plugins.ray_launcher._problems:launcher_problems",
}
LAUNCHERS = ("local", *LAUNCHER_PROBLEMS)

CHOICES: dict[str, tuple[str, ...]] = {
    "recipe.finetune": ("lora", "full", "none"),
    "optim.name": ("adamw", "sgd"),
    "scheduler.name": ("cosine", "constant"),
    "model.attn_implementation": ("eager", "sdpa", "flash_attention_2", "flex_attention"),
    "model.kernels": ("auto", "hf", "lean", "liger"),
    "dataset.overlong": ("truncate", "drop"),
    "hardware.accelerator": ("cpu", "cuda"),
    "hardware.precision": ("fp32", "bf16", "fp16"),
    "launcher.name": LAUNCHERS,
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
# model.pretrained is read (or reported missing) by framework.pretrained.apply: it may also be a Hub model id.
PATH_KEYS = ("dataset.path", "dataset.val_path", "dataset.tokenizer", "model.tokenizer", "eval.run")


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


def _generic(cfg: DictConfig, group: str) -> list[str]:
    """The table-driven checks (CHOICES, POSITIVE_INTS, NON_NEGATIVE) of the keys under ``group``."""
    problems = []
    for key, valid in CHOICES.items():
        value = _get(cfg, key) if key.startswith(f"{group}.") else None
        if value is not None and value not in valid:
            problems.append(f"{key}={value!r} is not valid; choose one of: {', '.join(valid)}")
    for key in POSITIVE_INTS:
        value = _get(cfg, key) if key.startswith(f"{group}.") else None
        if isinstance(value, int) and value < 1:
            problems.append(f"{key}={value} must be >= 1")
    for key in NON_NEGATIVE:
        value = _get(cfg, key) if key.startswith(f"{group}.") else None
        if isinstance(value, int | float) and value < 0:
            problems.append(f"{key}={value} must be >= 0")
    return problems


# ------------------------------------------------------------------------------------------------- groups
def recipe_problems(cfg: DictConfig) -> list[str]:
    problems = []
    recipe = _get(cfg, "recipe.name")
    if recipe is not None and recipe not in RECIPES:
        problems.append(f"recipe.name={recipe!r} is not a recipe; valid: {', '.join(sorted(RECIPES))}")
    problems += _generic(cfg, "recipe")
    if cfg.recipe.finetune == "lora" and cfg.lora is None:
        problems.append("recipe.finetune=lora needs a `lora` section (r, alpha, ...); it is null")
    return problems


def train_problems(cfg: DictConfig) -> list[str]:
    """``train``: step counts, intervals and the batch arithmetic (which needs the world size)."""
    problems = _generic(cfg, "train")
    train, hw = cfg.train, cfg.hardware
    if train.max_steps is None and train.epochs is None:
        problems.append("train.max_steps and train.epochs are both null; set one, e.g. train.max_steps=100")
    if train.max_steps is not None and train.max_steps < 1:
        problems.append(f"train.max_steps={train.max_steps} must be >= 1")
    if train.epochs is not None and train.epochs <= 0:
        problems.append(f"train.epochs={train.epochs} must be > 0")
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
    return problems


def optim_problems(cfg: DictConfig) -> list[str]:
    return _generic(cfg, "optim")


def scheduler_problems(cfg: DictConfig) -> list[str]:
    return _generic(cfg, "scheduler")


def lora_problems(cfg: DictConfig) -> list[str]:
    lora = cfg.lora
    if lora is None:
        return []  # needed or not is the recipe's question (recipe_problems)
    problems = []
    if lora.r < 1:
        problems.append(f"lora.r={lora.r} must be >= 1")
    if not 0.0 <= lora.dropout < 1.0:
        problems.append(f"lora.dropout={lora.dropout} must be in [0, 1)")
    if not lora.target_modules:
        problems.append("lora.target_modules is empty; name at least one module, e.g. [q_proj,v_proj]")
    return problems


def model_problems(cfg: DictConfig) -> list[str]:
    """``model`` (its pretrained checkpoint already read into it by :func:`validate`): options and what they
    need (framework.model.option_problems: train_embeddings vs tied weights, QLoRA)."""
    problems = _generic(cfg, "model") + option_problems(cfg)
    hw = cfg.hardware
    if hw.accelerator == "cpu" and cfg.model.attn_implementation == "flash_attention_2":
        problems.append("model.attn_implementation=flash_attention_2 needs a GPU; on CPU use sdpa")
    if hw.accelerator == "cpu" and cfg.model.kernels == "liger":
        problems.append("model.kernels=liger runs Triton GPU kernels; on CPU use model.kernels=lean")
    return problems


def dataset_problems(cfg: DictConfig) -> list[str]:
    problems = _generic(cfg, "dataset")
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
    from framework.data.problems import dataset_problems as data_problems  # formats, templates, mixtures

    return problems + data_problems(cfg)


def hardware_problems(cfg: DictConfig) -> list[str]:
    """``hardware``: process counts, precision, and which ZeRO stage can take which option."""
    problems = _generic(cfg, "hardware")
    hw = cfg.hardware
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
    if hw.accelerator == "cuda" and hw.gpus_per_node and hw.nproc_per_node > hw.gpus_per_node:
        problems.append(
            f"hardware.nproc_per_node={hw.nproc_per_node} exceeds hardware.gpus_per_node={hw.gpus_per_node}"
        )
    return problems


def storage_problems(cfg: DictConfig) -> list[str]:
    problems = _generic(cfg, "storage")
    if cfg.storage.retries < 1:
        problems.append(f"storage.retries={cfg.storage.retries} must be >= 1 (1: no retry)")
    return problems


def tracking_problems(cfg: DictConfig) -> list[str]:
    return _tracking_section_problems(OmegaConf.to_object(cfg.tracking))  # type: ignore[arg-type]


def launcher_problems(cfg: DictConfig) -> list[str]:
    """``launcher.name`` itself, then the chosen launcher's own list from :data:`LAUNCHER_PROBLEMS`."""
    problems = _generic(cfg, "launcher")
    entry = LAUNCHER_PROBLEMS.get(str(cfg.launcher.name))
    if problems or entry is None:
        return problems
    module, _, func = entry.partition(":")
    try:
        found = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:  # the plugin itself (or one of its imports) is missing: say so
            return [
                f"launcher.name={cfg.launcher.name}: cannot import {module} ({e}); is its plugin installed?"
            ]
        # The plugin predates its _problems module: its checks still run when it renders the job.
        log.debug("%s not found; launcher %s contributes no problems", module, cfg.launcher.name)
        return []
    return list(getattr(found, func)(cfg))


GROUPS: tuple[Problems, ...] = (
    recipe_problems,
    train_problems,
    optim_problems,
    scheduler_problems,
    lora_problems,
    model_problems,
    dataset_problems,
    hardware_problems,
    storage_problems,
    tracking_problems,
    eval_problems,
    launcher_problems,
)


# --------------------------------------------------------------------------------------------- this machine
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


def host_problems(
    cfg: DictConfig, *, gpu_count: Callable[[], int] | None, check_local_paths: bool, missing: set[str]
) -> list[str]:
    """What this machine must have: the local files the config names, and the GPUs a local run needs."""
    problems = []
    hw = cfg.hardware
    for key in PATH_KEYS:
        value = _get(cfg, key)
        if check_local_paths and isinstance(value, str) and key not in missing and _local_missing(value):
            problems.append(f"{key}={value} does not exist; fix the path (local path or s3:// URI)")
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
    return problems


def validate(
    cfg: DictConfig, *, gpu_count: Callable[[], int] | None = None, check_local_paths: bool = True
) -> list[str]:
    """Return every problem found in ``cfg`` (empty when valid). ``gpu_count`` is asked only for local GPU runs;
    ``check_local_paths=False`` skips path existence (a launcher whose jobs read paths on another machine)."""
    missing = set(OmegaConf.missing_keys(cfg))
    problems = [
        f"{key} is required but not set; pass {key}=<value> on the command line" for key in sorted(missing)
    ]
    # First: a pretrained checkpoint's config.json replaces the group's architecture in cfg.model (and the demo's
    # settings of the default group), so every group's checks and the memory estimate see what will be loaded.
    problems += pretrained.apply(cfg, here=check_local_paths)
    for group in GROUPS:
        problems += group(cfg)
    problems += host_problems(cfg, gpu_count=gpu_count, check_local_paths=check_local_paths, missing=missing)
    # The memory estimate needs an otherwise consistent config (valid stage, precision, batch sizes).
    if (
        not problems
        and cfg.recipe.finetune != "none"  # an estimate of training memory; evaluate trains nothing
        and cfg.hardware.accelerator == "cuda"
        and _get(cfg, "hardware.gpu_memory_gb") is not None
    ):
        from framework.memory import check_fits  # pure arithmetic, no torch

        try:
            check_fits(cfg)
        except ConfigError as e:
            problems.extend(e.problems)
    return problems


def check(
    cfg: DictConfig, *, gpu_count: Callable[[], int] | None = None, check_local_paths: bool = True
) -> DictConfig:
    """Attach the schema if needed, validate, and raise one ConfigError listing every problem."""
    cfg = with_schema(cfg)
    problems = validate(cfg, gpu_count=gpu_count, check_local_paths=check_local_paths)
    if problems:
        raise ConfigError(problems)
    fastpath.settle(cfg)  # config.yaml records the speed paths the run uses, not "auto"
    return cfg
