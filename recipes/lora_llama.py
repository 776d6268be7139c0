"""LoRA fine-tuning of a Llama causal LM (transformers + peft) on the DeepSpeed engine.

Supports: random-init or pretrained Llama (local dir or URI), LoRA on any linear modules, packed sequences with
per-document attention, ZeRO 0/1/2/3 from the hardware profile, fp32 (CPU) / bf16 (GPU), eval loss and
perplexity, checkpoints with `resume=auto`, SIGTERM saves.

Trainable: the LoRA adapters (and, with model.train_embeddings, the embeddings and LM head). Exported:
`adapter/` with the tokenizer beside it; its `adapter_config.json` names the base. A random-init base is
saved to `base/` (the frozen weights training used, bit for bit), so the adapter loads with
`peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("<run>/base"), "<run>/adapter")`.

    python -m framework                                            # tiny model on the sample data, CPU
    python -m framework hardware.nproc_per_node=2                  # two processes under torchrun (gloo)
    python -m framework model=llama3_2_1b model.pretrained=/models/Llama-3.2-1B-Instruct \\
        dataset=jsonl dataset.path=/data/train.jsonl hardware=h200x1
    python -m framework experiment=llama3_1_8b_lora_h200 lora.use_dora=true    # DoRA; QLoRA: ..._qlora_h200

Trainable: the LoRA (or DoRA) adapters; with ``model.train_embeddings`` (the random-init demo) also copies of the
embeddings and LM head. Exported: ``adapter/`` and the tokenizer.

Defaults (conf/recipe/lora_llama.yaml) are for a pretrained Llama and come from torchtune's
``recipes/configs/llama3_1/8B_lora_single_device.yaml``: AdamW lr 3e-4, weight decay 0.01, 100 warmup steps then
cosine decay to 0, rank 8, alpha 16, dropout 0, adapters on q/v/o and the MLP. The random-init demo
(``model=tiny_llama`` without ``model.pretrained``) uses conf/tuning/lora_llama-tiny_llama.yaml instead (lr 2e-3,
dropout 0.05, every linear, 5 warmup steps), which Hydra picks for that recipe x model pair only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from framework import distributed as dist
from framework.model import apply_lora, build_model
from framework.rundir import RunDir
from framework.train import full_state_dict, train

EXPORTED = "adapter"
BASE = "base"  # a random-init base's frozen weights, which the adapter names


def prepare_model(cfg: DictConfig, tokenizer: Any) -> Any:
    """The trainable set: LoRA adapters (apply_lora freezes the base)."""
    return apply_lora(build_model(cfg, len(tokenizer)), cfg)


def base_reference(cfg: DictConfig, run: RunDir) -> str:
    """What ``adapter_config.json`` names as its base: the pretrained model as configured, else ``<run>/base``."""
    from framework import storage

    ref = str(cfg.model.pretrained) if cfg.model.pretrained else storage.join(run.uri, BASE)
    return ref if storage.is_remote(ref) else str(Path(ref).expanduser().resolve())


def save_base(state_dict: dict[str, Any], cfg: DictConfig, out: Path, tokenizer: Any) -> None:
    """Save the frozen base weights of the trained peft model's state dict as an HF model."""
    from framework.export import base_state_dict, export_cfg

    base = build_model(export_cfg(cfg), len(tokenizer))
    base.load_state_dict(base_state_dict(state_dict, base), strict=True)
    base.config.use_cache = True
    base.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def export(engine: Any, cfg: DictConfig, run: RunDir, tokenizer: Any) -> list[str]:
    """Write ``adapter/`` (and ``base/`` for a random-init base) on rank 0; return what was written."""
    state_dict = full_state_dict(engine)  # a collective under ZeRO-3: every rank calls it
    written = [EXPORTED]
    if dist.is_rank0():
        if not cfg.model.pretrained:
            # first: peft's save reads the base's config.json (else it warns it cannot find one)
            save_base(state_dict, cfg, run.path / BASE, tokenizer)
            written.append(BASE)
        out = run.path / EXPORTED
        for pc in engine.module.peft_config.values():
            pc.base_model_name_or_path = base_reference(cfg, run)
        engine.module.save_pretrained(str(out), state_dict=state_dict)
        tokenizer.save_pretrained(str(out))
    dist.barrier()
    return written


def main(cfg: DictConfig) -> dict[str, Any]:
    return train(cfg, RunDir.for_config(cfg), prepare_model=prepare_model, export=export)
