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

from framework import domains, fastpath, hydra_compat, pretrained
from framework.config import Config
from framework.errors import ConfigError
from framework.evaluation import eval_problems
from framework.model import option_problems
from framework.tracking_config import tracking_problems as _tracking_section_problems
from recipes import RECIPES, trains

log = logging.getLogger(__name__)

Problems = Callable[[DictConfig], list[str]]

# launcher.name -> "module:function" returning that launcher's problems. A launcher plugin owns its checks;
# the table is the one place the framework learns of them ("local" has no options to check).
LAUNCHER_PROBLEMS: dict[str, str] = {
    "kubernetes": "hydra_plugins.kubernetes_launcher._problems:launcher_problems",
    "ray": "hydra_plugins.ray_launcher._problems:launcher_problems",
}
LAUNCHERS = ("local", *LAUNCHER_PROBLEMS)

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
        from framework.overrides import describe  # in the project's words, not OmegaConf's

        raise ConfigError(describe(e)) from e
    assert isinstance(merged, DictConfig)
    return merged


def _get(cfg: DictConfig, key: str) -> object:
    return OmegaConf.select(cfg, key, throw_on_missing=False)


def _generic(cfg: DictConfig, group: str) -> list[str]:
    """Every field of ``group`` outside the domain its schema declares (``framework.domains``)."""
    schema = domains.declared(Config)[group][1]
    assert schema is not None, group
    return domains.problems(cfg.get(group), schema, group)


# ------------------------------------------------------------------------------------------------- groups
def recipe_problems(cfg: DictConfig) -> list[str]:
    problems = []
    recipe = _get(cfg, "recipe.name")
    if recipe is not None and recipe not in RECIPES:
        problems.append(f"recipe.name={recipe!r} is not a recipe; valid: {', '.join(sorted(RECIPES))}")
    problems += _generic(cfg, "recipe")
    if trains(recipe) == "lora" and cfg.lora is None:
        problems.append(
            f"recipe={recipe} trains LoRA adapters and needs a `lora` section (r, alpha, ...); it is null"
        )
    return problems


def train_problems(cfg: DictConfig) -> list[str]:
    """``train``: step counts, intervals and the batch arithmetic (which needs the world size)."""
    problems = _generic(cfg, "train")
    train, hw = cfg.train, cfg.hardware
    if train.max_steps is None and train.epochs is None:
        problems.append("train.max_steps and train.epochs are both null; set one, e.g. train.max_steps=100")
    if train.max_steps is not None and train.epochs is not None:
        # One decides the length of the run; the recipes set max_steps, so epochs needs max_steps=null.
        problems.append(
            f"train.max_steps={train.max_steps} and train.epochs={train.epochs} are both set; keep one: "
            "train.max_steps=<steps>, or train.epochs=<passes> train.max_steps=null"
        )
    world = hw.nodes * hw.nproc_per_node
    per_step = train.micro_batch_size * world
    if train.global_batch_size is not None and per_step > 0 and train.global_batch_size > 0:
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
    problems = _generic(cfg, "scheduler")
    warmup, steps = cfg.scheduler.warmup_steps, cfg.train.max_steps
    if isinstance(warmup, int) and isinstance(steps, int) and steps >= 1 and warmup > steps:
        why = (
            f"scheduler.warmup_steps={warmup} is longer than train.max_steps={steps}: the learning rate never "
            f"reaches optim.lr (peak {steps / warmup:.3g} of it); lower scheduler.warmup_steps"
        )
        if "scheduler.warmup_steps" in pretrained.explicit_keys():
            problems.append(why)  # the user asked for it: refuse
        else:
            log.warning("%s", why)  # the recipe's warmup on a smoke run of a few steps: say so, run
    return problems


def lora_problems(cfg: DictConfig) -> list[str]:
    lora = cfg.lora
    if lora is None:
        return []  # needed or not is the recipe's question (recipe_problems)
    problems = _generic(cfg, "lora")
    hidden = cfg.model.hidden_size
    if isinstance(lora.r, int) and isinstance(hidden, int) and lora.r > hidden >= 1:
        problems.append(
            f"lora.r={lora.r} exceeds model.hidden_size={hidden}: an adapter's rank is at most the layer width"
        )
    if not lora.target_modules:
        problems.append("lora.target_modules is empty; name at least one module, e.g. [q_proj,v_proj]")
    return problems


def model_problems(cfg: DictConfig) -> list[str]:
    """``model`` (its pretrained checkpoint already read into it by :func:`validate`): options and what they
    need (framework.model.option_problems: train_embeddings vs tied weights, QLoRA)."""
    problems = _generic(cfg, "model")
    hw, m = cfg.hardware, cfg.model
    heads, kv, hidden = m.num_attention_heads, m.num_key_value_heads, m.hidden_size
    if not problems and hidden % heads:
        problems.append(f"model.hidden_size={hidden} is not divisible by model.num_attention_heads={heads}")
    elif not problems and (hidden // heads) % 2:
        problems.append(f"model.hidden_size / num_attention_heads = {hidden // heads} must be even (rotary)")
    if not problems and heads % kv:
        problems.append(
            f"model.num_attention_heads={heads} is not divisible by model.num_key_value_heads={kv}"
        )
    problems += option_problems(cfg)
    if hw.accelerator == "cpu" and cfg.model.attn_implementation == "flash_attention_2":
        problems.append("model.attn_implementation=flash_attention_2 needs a GPU; on CPU use sdpa")
    if hw.accelerator == "cpu" and cfg.model.kernels == "liger":
        problems.append("model.kernels=liger runs Triton GPU kernels; on CPU use model.kernels=lean")
    return problems


def dataset_problems(cfg: DictConfig) -> list[str]:
    problems = _generic(cfg, "dataset")
    ds = cfg.dataset
    if isinstance(ds.template, str) and "{prompt}" not in ds.template:
        problems.append(f"dataset.template={domains.show(ds.template)} must contain {{prompt}}")
    model_max = cfg.model.max_position_embeddings
    if isinstance(ds.max_seq_len, int) and ds.max_seq_len > model_max:
        problems.append(
            f"dataset.max_seq_len={ds.max_seq_len} exceeds model.max_position_embeddings={model_max}"
        )
    from framework.data.problems import dataset_problems as data_problems  # formats, templates, mixtures

    return problems + data_problems(cfg)


def hardware_problems(cfg: DictConfig) -> list[str]:
    """``hardware``: process counts, precision, and which ZeRO stage can take which option."""
    problems = _generic(cfg, "hardware")
    hw = cfg.hardware
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
    st = cfg.storage
    if st.name == "s3" and not (isinstance(st.output_uri, str) and st.output_uri.startswith("s3://")):
        # conf/storage/s3.yaml says ??? but a group's ??? never overrides the schema's null: checked here.
        problems.append(
            f"storage=s3 needs storage.output_uri=s3://<bucket>/<path> (it is {st.output_uri!r}); without it the "
            "run directory would stay on the pod's local disk and be lost"
        )
    return problems


def tracking_problems(cfg: DictConfig) -> list[str]:
    return _tracking_section_problems(OmegaConf.to_object(cfg.tracking))  # type: ignore[arg-type]


def launcher_problems(cfg: DictConfig) -> list[str]:
    """``launcher.name`` itself, then the chosen launcher's own list from :data:`LAUNCHER_PROBLEMS`."""
    problems = _generic(cfg, "launcher")
    if cfg.launcher.name not in LAUNCHERS:
        problems.append(
            f"launcher.name={cfg.launcher.name!r} is not valid; choose one of: {', '.join(LAUNCHERS)}"
        )
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


def run_problems(cfg: DictConfig) -> list[str]:
    """The top-level keys (``run_name``, ``resume``): their domains, as every group's."""
    found = []
    for name, (domain, nested) in domains.declared(Config).items():
        value = _get(cfg, name)
        if nested is None and domain is not None and value is not None and (problem := domain.problem(value)):
            found.append(f"{name}={domains.show(value)} {problem}")
    return found


GROUPS: tuple[Problems, ...] = (
    run_problems,
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
    from framework import storage  # not at import: a launcher that renders jobs never checks paths

    if not uri or storage.is_remote(uri):
        return False
    try:
        return not storage.exists(uri)
    except FileNotFoundError:  # pkg:// naming a package that is not installed
        return True


OUTPUT_KEYS = ("storage.output_uri", "storage.cache_dir", "dataset.cache_dir")


def _unwritable(path: Path) -> str | None:
    """Why ``path`` cannot be created and written (None: it can). Probes the nearest existing ancestor with a
    temporary file, which catches read-only mounts and /proc, where permission bits say nothing (root)."""
    import tempfile

    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return "no parent directory exists"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a directory"
    try:
        fd, name = tempfile.mkstemp(dir=probe, prefix=".framework-probe-")
    except OSError as e:
        return f"{probe} is not writable ({e.strerror})"
    os.close(fd)
    os.unlink(name)
    return None


def _output_problems(cfg: DictConfig, missing: set[str]) -> list[str]:
    """Local output locations must be writable (or creatable) before any work starts."""
    from framework import storage

    problems = []
    for key in OUTPUT_KEYS:
        value = _get(cfg, key)
        if not isinstance(value, str) or key in missing or not value.strip():
            continue
        if storage.is_remote(value):
            continue  # remote: checked by the first write, with retries (framework.storage)
        path = Path(storage.local_copy(value))
        if key == "dataset.cache_dir" and path.is_file():
            continue  # framework.data.problems names that one
        why = _unwritable(path)
        if why:
            problems.append(f"{key}={value} cannot be written: {why}; choose a writable location")
    return problems


def host_problems(
    cfg: DictConfig, *, gpu_count: Callable[[], int] | None, check_local_paths: bool, missing: set[str]
) -> list[str]:
    """What this machine must have: the local files the config names, and the GPUs a local run needs."""
    from framework import storage  # not at import: a launcher that renders jobs never checks paths

    problems = []
    hw = cfg.hardware
    for key in PATH_KEYS:
        value = _get(cfg, key)
        if check_local_paths and isinstance(value, str) and key not in missing and _local_missing(value):
            problems.append(f"{key}={value} does not exist; fix the path (local path or s3:// URI)")
    if check_local_paths:
        problems += _output_problems(cfg, missing)
        resume = _get(cfg, "resume")
        named = isinstance(resume, str) and resume not in ("auto", "none") and not resume.isdigit()
        if named and not storage.is_remote(str(resume)) and not storage.exists(str(resume)):
            problems.append(
                f"resume={resume} does not exist; name a checkpoint dir (…/checkpoints/step_<N>), a step "
                "number, auto or none"
            )
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
    missing = hydra_compat.missing_keys(cfg)  # OmegaConf.missing_keys, without reading every value
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
        and trains(cfg.recipe.name) is not None  # an estimate of training memory; evaluate trains nothing
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
    return apply_global_batch_size(cfg)


def apply_global_batch_size(cfg: DictConfig) -> DictConfig:
    """``train.global_batch_size`` decides grad accumulation: global / (micro batch x world size); the resolved
    config (config.yaml, the pods' copy) records the derived value. Divisibility was checked above."""
    tr, hw = cfg.train, cfg.hardware
    if tr.global_batch_size is not None:
        tr.grad_accum = int(tr.global_batch_size) // (tr.micro_batch_size * hw.nodes * hw.nproc_per_node)
    return cfg
