"""LoRA fine-tuning of a Llama causal LM (transformers + peft) on the DeepSpeed engine.

Supports: random-init or pretrained Llama (local dir or URI), LoRA on any linear modules, packed sequences with
per-document attention, ZeRO 0/1/2/3 from the hardware profile, fp32 (CPU) / bf16 (GPU), eval loss and
perplexity, checkpoints with `resume=auto`, SIGTERM saves. Writes `adapter/` (load with
`peft.PeftModel.from_pretrained(base, "<run>/adapter")`) and the tokenizer beside it.

    python -m framework                                            # tiny model on the sample data, CPU
    python -m framework hardware.nproc_per_node=2                  # two processes under torchrun (gloo)
    python -m framework model=llama3_2_1b model.pretrained=/models/Llama-3.2-1B-Instruct \\
        dataset=jsonl dataset.path=/data/train.jsonl hardware=h200x1
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from framework import distributed as dist
from framework.model import apply_lora, build_model
from framework.train import full_state_dict, run_dir_for, train


def prepare_model(cfg: DictConfig, tokenizer: Any) -> Any:
    return apply_lora(build_model(cfg, len(tokenizer)), cfg)


def export(engine: Any, cfg: DictConfig, run_dir: Path, tokenizer: Any) -> None:
    state_dict = full_state_dict(engine)  # a collective under ZeRO-3: every rank calls it
    if dist.is_rank0():
        out = run_dir / "adapter"
        engine.module.save_pretrained(str(out), state_dict=state_dict)
        tokenizer.save_pretrained(str(out))
    dist.barrier()


def main(cfg: DictConfig) -> dict[str, Any]:
    return train(cfg, run_dir_for(cfg), prepare_model=prepare_model, export=export)
