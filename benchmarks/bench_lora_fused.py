"""LoRA siblings sharing one adapter input (``lora.fused_inputs``) against peft's per-module forward, same run.

One Llama decoder stack with LoRA on every linear layer, forward + backward of one micro batch, timed in
rotation (so load drift hits both arms alike); also the bytes autograd saves (saved-tensor hooks,
each storage counted once).

    .venv/bin/python benchmarks/bench_lora_fused.py                      # CPU: hidden 512, 2 layers, 2048 tokens
    .venv/bin/python benchmarks/bench_lora_fused.py --device cuda --hidden 2048 --layers 4 --tokens 16384
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(fused: bool, args: argparse.Namespace) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from framework.lora_fused import fuse_shared_inputs

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=args.hidden,
        intermediate_size=int(args.hidden * 2.75),
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 64),
        num_key_value_heads=max(1, args.hidden // 256),
    )
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    model = LlamaForCausalLM(cfg).to(args.device, dtype)
    peft_cfg = LoraConfig(
        r=args.r,
        lora_alpha=2 * args.r,
        lora_dropout=args.dropout,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    model = get_peft_model(model, peft_cfg, autocast_adapter_dtype=False)
    if fused:
        fuse_shared_inputs(model)
    return model


def step(model: Any, ids: Any) -> None:
    model(input_ids=ids, labels=ids).loss.backward()


def saved_bytes(model: Any, ids: Any) -> int:
    import torch

    storages: dict[int, int] = {}  # one tensor saved by several ops is kept once

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return sum(storages.values())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    ids = torch.randint(0, 256, (1, args.tokens), device=args.device)
    arms = {"peft": build(False, args), "fused_inputs": build(True, args)}
    times: dict[str, list[float]] = {k: [] for k in arms}
    mem = {k: saved_bytes(m, ids) for k, m in arms.items()}  # also the warm-up step
    for i in range(args.steps):
        for name in list(arms)[i % 2 :] + list(arms)[: i % 2]:
            if args.device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step(arms[name], ids)
            if args.device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["peft"])
    print(
        f"bench_lora_fused: device={args.device} hidden={args.hidden} layers={args.layers} "
        f"tokens={args.tokens} r={args.r} dropout={args.dropout} steps={args.steps}"
    )
    print(f"{'arm':14s} {'step ms':>9s} {'tokens/s':>10s} {'saved MB':>9s} {'vs peft':>8s}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(
            f"{name:14s} {1e3 * med:9.1f} {args.tokens / med:10,.0f} {mem[name] / 1e6:9.1f} {base / med:7.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
