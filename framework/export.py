"""Export a finished (or checkpointed) run as files serving stacks load: the LoRA adapter, or the merged model.

    python -m framework.export RUN                      # LoRA: RUN/export/adapter; full fine-tune: RUN/export/model
    python -m framework.export RUN --merge              # base + adapter merged: RUN/export/merged
    python -m framework.export RUN --step 400           # from checkpoints/step_400 instead of the final state
    python -m framework.export RUN --best               # from the checkpoint with the lowest eval loss
    python -m framework.export s3://bucket/runs/x --merge --out /models/x --dtype bf16

``RUN`` is a run directory (local or any storage URI). A model export is Hugging Face format: safetensors
shards with ``model.safetensors.index.json``, ``config.json``, ``generation_config.json`` and the tokenizer with
its chat template (the run's prompt template as a chat template when the tokenizer has none), which is what
``AutoModelForCausalLM.from_pretrained`` and vLLM load. ZeRO checkpoints are consolidated with DeepSpeed's
``get_fp32_state_dict_from_zero_checkpoint``. The export is written into a temporary sibling directory and
renamed into place when complete (remote: uploaded with ``config.json`` last), and an existing output is never
replaced unless ``--overwrite`` is given.

Exit codes: 0 done; 2 for anything to fix on the command line (the message names the path and the fix).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from framework import storage
from framework.errors import EXIT_USAGE, FrameworkError, UsageError
from recipes import trains

log = logging.getLogger("framework.export")

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
BASE_DIR = "base"  # where a random-init LoRA run saves its base model (recipes/lora_llama.py)
BEST = "best"  # checkpoints/best names the checkpoint with the lowest eval loss (train.keep_best)
INDEX = "model.safetensors.index.json"


# ----------------------------------------------------------------------------------------------- run dirs


@dataclass
class Run:
    """A run directory opened for reading; remote parts are fetched into the local cache when first needed."""

    uri: str
    cfg: DictConfig

    @classmethod
    def open(cls, uri: str) -> Run:
        uri = str(uri).rstrip("/") or "/"
        if not storage.exists(storage.join(uri, "config.yaml")):
            what = "does not exist" if not storage.exists(uri) else "has no config.yaml"
            raise UsageError(
                f"{uri} {what}, so it is not a run directory; pass the directory a training run wrote "
                "(it holds config.yaml and checkpoints/)"
            )
        cfg = OmegaConf.create(storage.read_text(storage.join(uri, "config.yaml")))
        assert isinstance(cfg, DictConfig)
        return cls(uri, cfg)

    @property
    def is_lora(self) -> bool:
        return trains(self.cfg.recipe.name) == "lora"

    def has(self, rel: str) -> bool:
        return storage.exists(storage.join(self.uri, rel))

    def local(self, rel: str) -> Path:
        """A local path holding ``rel`` of the run (the file itself for a local run dir)."""
        return Path(storage.local_copy(storage.join(self.uri, rel)))

    def checkpoint_steps(self) -> list[int]:
        from framework.checkpoint import MANIFEST, TAG_RE

        root = storage.join(self.uri, "checkpoints")
        if not storage.isdir(root):
            return []
        steps = []
        for name in storage.listdir(root):
            m = TAG_RE.match(name)
            if m and storage.exists(storage.join(root, name, MANIFEST)):
                steps.append(int(m.group(1)))
        return sorted(steps)

    def eval_losses(self) -> dict[int, float]:
        """``{step: eval_loss}`` from the run's metrics (the last line of a step wins)."""
        from framework.rundir import read_metrics

        rows = read_metrics(self.uri)
        return {
            int(r["step"]): float(r["eval_loss"]) for r in rows if isinstance(r.get("eval_loss"), int | float)
        }

    def best_step(self) -> int:
        """The checkpoint ``checkpoints/best`` names, else the kept checkpoint with the lowest eval loss."""
        from framework.checkpoint import TAG_RE

        steps = self.checkpoint_steps()
        marker = storage.join(self.uri, "checkpoints", BEST)
        if storage.exists(marker):
            m = TAG_RE.match(storage.read_text(marker).strip())
            if m and int(m.group(1)) in steps:
                return int(m.group(1))
        losses = self.eval_losses()
        scored = [(losses[s], s) for s in steps if s in losses]
        if not scored:
            raise UsageError(
                f"{self.uri} has no checkpoint with an eval loss (checkpoints: {_steps_text(steps)}; evals at "
                f"steps {sorted(losses) or 'none'}); train with train.keep_best=true, or pass --step N"
            )
        return min(scored)[1]


def _steps_text(steps: list[int]) -> str:
    return ", ".join(f"step_{s}" for s in steps) if steps else "none"


@dataclass
class Source:
    """What to export: the run's final state (``step=None``) or one checkpoint."""

    run: Run
    step: int | None
    label: str  # "final", "step_400", "best"


def select(run: Run, *, step: int | None = None, best: bool = False) -> Source:
    """The state to export; a missing checkpoint or an unfinished run is a UsageError naming the path."""
    steps = run.checkpoint_steps()
    if best:
        chosen = run.best_step()
        return Source(run, chosen, "best")
    if step is not None:
        if step not in steps:
            raise UsageError(
                f"{storage.join(run.uri, 'checkpoints', f'step_{step}')} does not exist (checkpoints kept: "
                f"{_steps_text(steps)}); pass --step with one of those, or --best"
            )
        return Source(run, step, f"step_{step}")
    final = "adapter" if run.is_lora else "model"
    if run.has(final):
        return Source(run, None, "final")
    if steps:
        log.warning("%s has no %s/ (the run did not finish); exporting its last checkpoint", run.uri, final)
        return Source(run, steps[-1], f"step_{steps[-1]}")
    raise UsageError(
        f"{run.uri} has no checkpoints and no {final}/: nothing to export; pass a run directory that trained "
        "at least to its first checkpoint (train.checkpoint_interval), or finish the run (rerun its command to "
        "resume)"
    )


# ----------------------------------------------------------------------------------------------- models


def export_cfg(cfg: DictConfig) -> DictConfig:
    """The run's config with the training-only model switches off: a plain HF module is what gets saved."""
    c = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    assert isinstance(c, DictConfig)
    m = c.model
    m.gradient_checkpointing = False
    m.fused_linear_ce = False
    m.kernels = "hf"
    if "load_in_4bit" in m:
        m.load_in_4bit = False  # merging needs the base's own weights, not NF4 codes
    if c.get("lora") is not None and "fused_inputs" in c.lora:
        c.lora.fused_inputs = False
    if "fast_paths" in c.hardware:
        c.hardware.fast_paths = False
    if m.get("attn_implementation") in ("flex_attention", "flash_attention_2"):
        m.attn_implementation = "sdpa"
    return c


def load_tokenizer_for(run: Run) -> Any:
    """The tokenizer the run trained with (the copy beside its adapter/model when there is one)."""
    from transformers import AutoTokenizer

    for rel in ("adapter", "model"):
        if run.has(rel) and run.has(f"{rel}/tokenizer_config.json"):
            tok = AutoTokenizer.from_pretrained(str(run.local(rel)))
            break
    else:
        from framework.model import load_tokenizer

        tok = load_tokenizer(run.cfg)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def base_reference(run: Run) -> str | None:
    """Where the run's base model lives: ``model.pretrained``, else the run's ``base/`` (random init)."""
    if run.cfg.model.get("pretrained"):
        return str(run.cfg.model.pretrained)
    if run.has(f"{BASE_DIR}/config.json"):
        return storage.join(run.uri, BASE_DIR)
    return None


def base_state_dict(peft_state: dict[str, Any], base: Any) -> dict[str, Any]:
    """The frozen base weights inside a peft model's state dict, under the base model's own names."""
    names = set(base.state_dict())
    out: dict[str, Any] = {}
    for key, value in peft_state.items():
        if "lora_" in key or ".modules_to_save." in key:
            continue
        name = (
            key.removeprefix("base_model.model.")
            .replace(".base_layer.", ".")
            .replace(".original_module.", ".")
        )
        if name in names:
            out[name] = value
    return out


def require_base(run: Run) -> None:
    """A configured pretrained base must still be there (checked before anything heavy loads)."""
    from framework.pretrained import is_hub_id

    uri = run.cfg.model.get("pretrained")
    if uri and not is_hub_id(str(uri)) and not storage.exists(storage.join(str(uri), "config.json")):
        raise UsageError(
            f"the base model of {run.uri} is {uri}, which does not exist or holds no config.json; restore "
            "it there, or set model.pretrained in the run's config.yaml to where it is now"
        )


def load_base(run: Run, vocab_len: int) -> Any:
    """The base model as it was trained on: pretrained weights, the saved random-init base, or (runs from before
    bases were saved) the random init rebuilt from the config's seed."""
    from framework.model import build_model

    cfg = export_cfg(run.cfg)
    ref = base_reference(run)
    if ref is not None and not cfg.model.get("pretrained"):
        cfg.model.pretrained = ref
    if cfg.model.get("pretrained"):
        require_base(
            run
        )  # a local dir, a URI (downloaded once into the cache) or a hub id, as training read it
    else:
        log.warning(
            "%s has no %s/: rebuilding the random-init base from the config's seed", run.uri, BASE_DIR
        )
    model = build_model(cfg, vocab_len)
    model.config.use_cache = True  # build_model turns the KV cache off for training
    return model


def checkpoint_state_dict(run: Run, step: int) -> dict[str, Any]:
    """The trainable weights (ZeRO 1-3: consolidated with DeepSpeed's own tool) or, ZeRO 0, the module state.

    Keys are those of the trained module (``base_model.model.…`` for a peft model).
    """
    import torch

    from framework.checkpoint import damage, tag_for

    tag = tag_for(step)
    root = run.local(f"checkpoints/{tag}").parent
    problems = damage(root, tag)
    if problems:
        raise UsageError(
            f"checkpoint {storage.join(run.uri, 'checkpoints', tag)} is damaged ({'; '.join(problems[:3])}); "
            "export another one (--step N, or the final state without --step)"
        )
    stage = int(run.cfg.hardware.get("zero_stage", 0))
    if stage == 0:
        states = root / tag / "mp_rank_00_model_states.pt"
        return dict(torch.load(states, map_location="cpu", weights_only=False)["module"])
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    # Frozen base weights are excluded: they come from the base itself, exactly as training read them.
    with _quiet("deepspeed"):
        sd = get_fp32_state_dict_from_zero_checkpoint(
            str(root), tag=tag, exclude_frozen_parameters=run.is_lora
        )
    return dict(sd)


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _load_into(module: Any, sd: dict[str, Any], where: str, *, partial: bool) -> None:
    """Load ``sd`` into ``module``; every checkpoint key must fit, and only frozen weights may be absent."""
    result = module.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys if not partial or _trainable(module, k)]
    if result.unexpected_keys or missing:
        raise FrameworkError(
            f"checkpoint {where} does not fit the model its config.yaml describes (unexpected "
            f"{result.unexpected_keys[:5]}, missing {missing[:5]}); was config.yaml edited after training?"
        )


def _trainable(module: Any, key: str) -> bool:
    params = dict(module.named_parameters())
    return key in params and params[key].requires_grad


def load_model(source: Source, tokenizer: Any) -> Any:
    """The trained model of ``source``: a peft model (LoRA) or an HF causal LM (full fine-tune), in fp32 or the
    training dtype, on CPU, in eval mode."""
    run = source.run
    if run.is_lora:
        from peft import PeftModel

        from framework.model import apply_lora

        base = load_base(run, len(tokenizer))
        if source.step is None:
            model = PeftModel.from_pretrained(base, str(run.local("adapter")))
        else:
            cfg = export_cfg(run.cfg)
            model = apply_lora(base, cfg)
            where = storage.join(run.uri, "checkpoints", f"step_{source.step}")
            _load_into(model, checkpoint_state_dict(run, source.step), where, partial=True)
    elif source.step is None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(run.local("model")), dtype="auto")
    else:
        from framework.model import build_model

        model = build_model(export_cfg(run.cfg), len(tokenizer))
        where = storage.join(run.uri, "checkpoints", f"step_{source.step}")
        _load_into(model, checkpoint_state_dict(run, source.step), where, partial=False)
    model.eval()
    return model


# ----------------------------------------------------------------------------------------------- templates


def chat_template_from(template: str, input_template: str | None = None) -> str:
    """A Jinja chat template that renders a conversation the way ``dataset.template`` rendered training prompts:
    each user turn through the template, each assistant turn as the response followed by EOS. A system message
    is prepended to the first user turn."""
    before, _, after = template.replace("{input}", "").partition("{prompt}")

    def raw(text: str) -> str:
        text = text.replace("{{", "{").replace("}}", "}")
        return "{% raw %}" + text + "{% endraw %}" if text else ""

    return (
        "{% set ns = namespace(system='') %}"
        "{% for m in messages %}"
        "{% if m['role'] == 'system' %}{% set ns.system = m['content'] + '\n\n' %}"
        "{% elif m['role'] == 'user' %}" + raw(before) + "{{ ns.system }}{{ m['content'] }}" + raw(after) + ""
        "{% set ns.system = '' %}"
        "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}"
        "{% endif %}{% endfor %}"
    )


def ensure_chat_template(tokenizer: Any, dataset_cfg: DictConfig | None) -> Any:
    """Give ``tokenizer`` the chat template training rendered with: ``dataset.chat_template`` when set; else,
    when the tokenizer has none (so training used instruction rows), the run's prompt template as one."""
    if dataset_cfg is None:
        return tokenizer
    from framework.data.chat import template_text
    from framework.data.rows import sources_of

    src = sources_of(dataset_cfg)[0]
    if src.chat_template:
        tokenizer.chat_template = template_text(src.chat_template, tokenizer, f"{src.key}")
    elif not getattr(tokenizer, "chat_template", None) and src.template:
        tokenizer.chat_template = chat_template_from(str(src.template))
    return tokenizer


# ----------------------------------------------------------------------------------------------- writing


def torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, DTYPES[name])


def training_dtype(run: Run) -> str:
    return str(run.cfg.hardware.get("precision", "fp32"))


def write_hf_model(model: Any, tokenizer: Any, out: Path, dtype: str, max_shard_size: str) -> None:
    """``save_pretrained`` as safetensors shards with an index (also for one shard), a generation config and
    the tokenizer. The ids the tokenizer uses are the model's special-token ids, so generation stops at EOS."""
    from transformers import GenerationConfig

    model = model.to(torch_dtype(dtype))
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, key, None)
        if value is not None:
            setattr(model.config, key, value)
    model.config.use_cache = True
    gen = model.generation_config if model.generation_config is not None else GenerationConfig()
    gen.bos_token_id = tokenizer.bos_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    model.generation_config = gen
    model.save_pretrained(str(out), max_shard_size=max_shard_size)
    single = out / "model.safetensors"
    if single.is_file() and not (out / INDEX).is_file():
        # One shard still gets an index, so every export has the same layout (shards + index).
        from safetensors import safe_open

        shard = "model-00001-of-00001.safetensors"
        with safe_open(str(single), framework="pt") as f:
            names = list(f.keys())
        single.rename(out / shard)
        index = {"metadata": {"total_size": _tensor_bytes(model)}, "weight_map": dict.fromkeys(names, shard)}
        (out / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    config = json.loads((out / "config.json").read_text())
    if "dtype" in config and "torch_dtype" not in config:
        # transformers >= 4.56 writes `dtype`; serving stacks on older transformers (vLLM pins) read `torch_dtype`
        config["torch_dtype"] = config["dtype"]
        (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(str(out))


def _tensor_bytes(model: Any) -> int:
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def write_adapter(model: Any, tokenizer: Any, out: Path, base_ref: str | None, dtype: str) -> None:
    """The peft adapter (``adapter_config.json`` naming a base that exists) and the tokenizer."""
    if base_ref is not None:
        for pc in model.peft_config.values():
            pc.base_model_name_or_path = base_ref
    model.to(torch_dtype(dtype)).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def default_out(run: Run, kind: str, label: str) -> str:
    name = kind if label == "final" else f"{kind}-{label}"
    return storage.join(run.uri, "export", name)


def check_out(out: str, overwrite: bool) -> None:
    if storage.exists(out) and not overwrite:
        raise UsageError(
            f"{out} already exists; pass --out with a new directory, or --overwrite to replace it"
        )


def publish(tmp: Path, out: str, overwrite: bool) -> None:
    """Move a complete export into place. Local: one rename (the old one moved aside first when replacing).
    Remote: upload every file, the ones that make it loadable (index, config.json) last."""
    if not storage.is_remote(out):
        dest = Path(out)
        dest.parent.mkdir(parents=True, exist_ok=True)
        old = None
        if dest.exists():
            if not overwrite:
                raise UsageError(f"{out} appeared while exporting; pass --overwrite to replace it")
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.rename(dest, old)
        os.rename(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return
    if storage.exists(out):
        storage.remove(out, recursive=True, missing_ok=True)
    last = [n for n in (INDEX, "adapter_config.json", "config.json") if (tmp / n).is_file()]
    staged = tmp.with_name(tmp.name + ".first")
    staged.mkdir()
    for p in tmp.iterdir():
        if p.name not in last:
            os.rename(p, staged / p.name)
    storage.upload_dir(staged, out)
    for name in last:
        storage.put_file(tmp / name, storage.join(out, name))
    shutil.rmtree(staged, ignore_errors=True)


def _tmp_dir(out: str) -> Path:
    if storage.is_remote(out):
        return Path(tempfile.mkdtemp(prefix="framework-export-"))
    dest = Path(out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))


@dataclass
class ExportResult:
    out: str
    kind: str  # adapter | merged | model
    source: str  # final | step_<N> | best
    step: int | None
    dtype: str
    seconds: float


def export(
    run_uri: str,
    *,
    merge: bool = False,
    step: int | None = None,
    best: bool = False,
    out: str | None = None,
    dtype: str = "auto",
    overwrite: bool = False,
    max_shard_size: str = "5GB",
) -> ExportResult:
    """Export ``run_uri`` (see the module docstring); returns where it went and what it holds."""
    t0 = time.perf_counter()
    if dtype != "auto" and dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype} is not one of auto, {', '.join(DTYPES)}")
    run = Run.open(run_uri)
    if merge and not run.is_lora:
        raise UsageError(
            f"--merge needs a LoRA run, but {run.uri} is a full fine-tune (recipe=full_finetune): its "
            "weights are already whole; export it without --merge"
        )
    source = select(run, step=step, best=best)
    kind = "merged" if merge else ("adapter" if run.is_lora else "model")
    target = out or default_out(run, kind, source.label)
    check_out(target, overwrite)
    chosen = training_dtype(run) if dtype == "auto" else dtype
    if run.is_lora:
        require_base(run)
    tokenizer = ensure_chat_template(load_tokenizer_for(run), run.cfg.get("dataset"))
    base_ref = base_reference(run) if run.is_lora else None
    if run.is_lora and base_ref is None and not merge:
        raise UsageError(
            f"the base of {run.uri} cannot be found: no model.pretrained in its config.yaml and no {BASE_DIR}/ "
            "in the run; export with --merge (rebuilds the random-init base from the seed), or retrain"
        )
    model = load_model(source, tokenizer)
    tmp = _tmp_dir(target)
    try:
        if kind == "merged":
            write_hf_model(model.merge_and_unload(), tokenizer, tmp, chosen, max_shard_size)
        elif kind == "adapter":
            write_adapter(model, tokenizer, tmp, base_ref, chosen)
        else:
            write_hf_model(model, tokenizer, tmp, chosen, max_shard_size)
        (tmp / "export.json").write_text(
            json.dumps(
                {"run": run.uri, "kind": kind, "source": source.label, "step": source.step, "dtype": chosen},
                indent=1,
            )
            + "\n"
        )
        publish(tmp, target, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(target, kind, source.label, source.step, chosen, time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------- CLI


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m framework.export",
        description=(
            "Export a training run as Hugging Face files: the LoRA adapter (default for LoRA runs), the base "
            "with the adapter merged (--merge), or the full fine-tuned model. Loads with "
            "AutoModelForCausalLM.from_pretrained / peft and has the layout vLLM reads (safetensors shards + "
            "index, config.json, generation_config.json, tokenizer with chat template). Written to a temporary "
            "directory, then renamed into place; an existing output is never replaced without --overwrite."
        ),
        epilog="Exit codes: 0 done; 2 bad input (the message names the path and the fix); 1 runtime failure.",
    )
    p.add_argument("run", help="run directory (local path or s3://... URI) holding config.yaml")
    p.add_argument("--merge", action="store_true", help="LoRA runs: merge the adapter into the base")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--step", type=int, help="export checkpoints/step_N instead of the final state")
    which.add_argument("--best", action="store_true", help="export the checkpoint with the lowest eval loss")
    p.add_argument(
        "--out",
        help="output directory (local or URI); default RUN/export/<adapter|merged|model>[-step_N|-best]",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", *DTYPES],
        help="weights dtype; auto: the training precision (hardware.precision)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        res = export(
            args.run,
            merge=args.merge,
            step=args.step,
            best=args.best,
            out=args.out,
            dtype=args.dtype,
            overwrite=args.overwrite,
            max_shard_size=args.max_shard_size,
        )
    except FrameworkError as e:
        print(f"export: error: {e}", file=sys.stderr)
        return e.exit_code
    except FileNotFoundError as e:
        print(f"export: error: {e}; check the path", file=sys.stderr)
        return EXIT_USAGE
    step = f" (step {res.step})" if res.step is not None else ""
    print(f"Exported {res.kind} from {res.source}{step} in {res.dtype} to {res.out} in {res.seconds:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
