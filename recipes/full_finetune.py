"""Full fine-tuning of a Llama causal LM on the DeepSpeed engine: every weight is trained.

Same data pipeline, loop, checkpoints and resume as `lora_llama`; writes `model/` in Hugging Face format
(load with `AutoModelForCausalLM.from_pretrained("<run>/model")`) with the tokenizer beside it.

    python -m framework recipe=full_finetune
    python -m framework recipe=full_finetune hardware.nproc_per_node=2 hardware.zero_stage=3
    python -m framework recipe=full_finetune model=llama3_2_1b model.pretrained=/models/Llama-3.2-1B \\
        dataset=jsonl dataset.path=/data/train.jsonl hardware=h200x1
    python -m framework experiment=llama3_1_8b_full_h100x8 launcher=kubernetes ...

Trainable: every weight. Exported: ``model/`` (Hugging Face format) and the tokenizer.

Defaults (conf/recipe/full_finetune.yaml) are for a pretrained Llama and come from torchtune's
``recipes/configs/llama3_1/8B_full.yaml``: AdamW lr 2e-5, weight decay 0.01 (torch's AdamW default), constant
learning rate. The random-init demo (``model=tiny_llama``) uses conf/tuning/full_finetune-tiny_llama.yaml
(lr 1e-3, 5 warmup steps, cosine to 0.1).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from framework import distributed as dist
from framework.model import build_model
from framework.rundir import RunDir
from framework.train import full_state_dict, train

EXPORTED = "model"


def prepare_model(cfg: DictConfig, tokenizer: Any) -> Any:
    """The trainable set: every parameter (build_model leaves all of them trainable)."""
    return build_model(cfg, len(tokenizer))


def export(engine: Any, cfg: DictConfig, run: RunDir, tokenizer: Any) -> list[str]:
    """Write ``model/`` (rank 0) and return what was written, on every rank."""
    state_dict = full_state_dict(engine)  # a collective under ZeRO-3: every rank calls it
    if dist.is_rank0():
        out = run.path / EXPORTED
        engine.module.save_pretrained(str(out), state_dict=state_dict)
        tokenizer.save_pretrained(str(out))
    dist.barrier()
    return [EXPORTED]


def main(cfg: DictConfig) -> dict[str, Any]:
    return train(cfg, RunDir.for_config(cfg), prepare_model=prepare_model, export=export)
