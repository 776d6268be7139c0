"""Export (merge + write) with ``framework.export`` against a plain peft script, and ``framework.generate``
against plain ``model.generate`` with the same batch, both in one invocation on the same machine.

    .venv/bin/python benchmarks/bench_export.py --shape 1b          # Llama-3.2-1B shape (needs ~16 GB RAM)
    .venv/bin/python benchmarks/bench_export.py --shape small       # 8 layers x 1024 (fits a shared box)
    .venv/bin/python benchmarks/bench_export.py --only generate --device cuda

Export: a fake run dir (config.yaml of that shape, random-init ``base/``, a LoRA r=16 ``adapter/`` on every
linear layer with non-zero B) is exported with ``framework.export.export(run, merge=True)``; the baseline is
what users write by hand: ``AutoModelForCausalLM.from_pretrained(base)``, ``PeftModel.from_pretrained``,
``merge_and_unload()``, ``save_pretrained`` + tokenizer. Both read the same files and write fp32 safetensors;
arms alternate, ``--repeats`` each, the median is reported (imports are warmed first).

Generate: one batch of ``--batch`` prompts of mixed length, greedy, ``--new-tokens`` each, through
``framework.generate.generate`` and through ``model.generate`` on the same left-padded batch; tokens/s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {  # hidden, intermediate, layers, heads, kv heads, vocab
    "1b": (2048, 8192, 16, 32, 8, 128256),
    "small": (1024, 2816, 8, 16, 4, 32000),
    "tiny": (128, 352, 2, 4, 2, 2048),
}
TOKENIZER = "pkg://framework.data/sample/tokenizer"


def make_run(root: Path, shape: str) -> Path:
    """A LoRA run dir as training leaves it, without training: config.yaml, base/, adapter/ (+ tokenizer)."""
    import torch
    from hydra import compose, initialize_config_dir
    from peft import LoraConfig, get_peft_model

    from framework.config import conf_dir, register, resolved_yaml
    from framework.model import build_model, load_tokenizer

    h, i, layers, heads, kv, vocab = SHAPES[shape]
    overrides = [
        f"model.hidden_size={h}", f"model.intermediate_size={i}", f"model.num_hidden_layers={layers}",
        f"model.num_attention_heads={heads}", f"model.num_key_value_heads={kv}", f"model.vocab_size={vocab}",
        "model.train_embeddings=false", "lora.r=16", "lora.alpha=32",
    ]  # fmt: skip
    register()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    run = root / "run"
    run.mkdir()
    (run / "config.yaml").write_text(resolved_yaml(cfg))
    tok = load_tokenizer(cfg)
    base = build_model(cfg, len(tok))
    base.save_pretrained(str(run / "base"))
    tok.save_pretrained(str(run / "base"))
    lc = cfg.lora
    peft_cfg = LoraConfig(
        r=lc.r, lora_alpha=lc.alpha, target_modules=list(lc.target_modules), task_type="CAUSAL_LM"
    )
    model = get_peft_model(base, peft_cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)  # a trained adapter is not the identity
    for pc in model.peft_config.values():
        pc.base_model_name_or_path = str(run / "base")
    model.save_pretrained(str(run / "adapter"))
    tok.save_pretrained(str(run / "adapter"))
    del model, base
    return run


def plain_export(run: Path, out: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(str(run / "base"), dtype="float32")
    merged = PeftModel.from_pretrained(base, str(run / "adapter")).merge_and_unload()
    merged.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(run / "adapter")).save_pretrained(str(out))


def ours_export(run: Path, out: Path) -> None:
    from framework.export import export

    export(str(run), merge=True, out=str(out))


def bench_export(shape: str, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {"plain peft": [], "framework.export": []}
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        run = make_run(Path(tmp), shape)
        arms = {"plain peft": plain_export, "framework.export": ours_export}
        plain_export(run, Path(tmp) / "warm")  # imports and page cache, for both arms
        shutil.rmtree(Path(tmp) / "warm")
        for r in range(repeats):
            for name, fn in arms.items() if r % 2 == 0 else reversed(arms.items()):
                out = Path(tmp) / f"out-{r}-{name.replace(' ', '_').replace('.', '_')}"
                t0 = time.perf_counter()
                fn(run, out)
                times[name].append(time.perf_counter() - t0)
                shutil.rmtree(out)
    med = {k: statistics.median(v) for k, v in times.items()}
    med["ratio (ours / plain)"] = med["framework.export"] / med["plain peft"]
    return med


def bench_generate(shape: str, batch: int, new_tokens: int, repeats: int, device: str) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from framework.config import package_path
    from framework.generate import Settings, generate

    h, i, layers, heads, kv, vocab = SHAPES[shape]
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=h, intermediate_size=i, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv, vocab_size=vocab, max_position_embeddings=4096,
    )  # fmt: skip
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_config(config).to(device=device, dtype=dtype).eval()
    tok = AutoTokenizer.from_pretrained(package_path(TOKENIZER))
    words = "the quick brown fox jumps over the lazy dog and runs far away".split()  # noqa: SIM905
    prompts = [" ".join(words[: 3 + (k * 5) % len(words)]) for k in range(batch)]
    eos = tok.eos_token_id
    # Random weights rarely emit EOS; forbid it so both arms generate exactly new_tokens per prompt.
    model.generation_config.suppress_tokens = [eos]
    settings = Settings(max_new_tokens=new_tokens, batch_size=batch)

    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(map(len, ids))
    input_ids = torch.full((batch, width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for r, row in enumerate(ids):
        input_ids[r, width - len(row) :] = torch.tensor(row)
        mask[r, width - len(row) :] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)

    def plain() -> None:
        with torch.inference_mode():
            model.generate(
                input_ids=input_ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                pad_token_id=tok.pad_token_id, use_cache=True,
            )  # fmt: skip

    def ours() -> None:
        generate(model, tok, prompts, settings)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    plain(), ours()  # warm-up
    times: dict[str, list[float]] = {"plain model.generate": [], "framework.generate": []}
    arms = {"plain model.generate": plain, "framework.generate": ours}
    for r in range(repeats):
        for name, fn in arms.items() if r % 2 == 0 else reversed(arms.items()):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    tokens = batch * new_tokens
    out = {f"{k} tokens/s": tokens / statistics.median(v) for k, v in times.items()}
    out["ratio (ours / plain)"] = out["framework.generate tokens/s"] / out["plain model.generate tokens/s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small")
    ap.add_argument("--only", choices=["export", "generate"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's default")
    a = ap.parse_args()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    results: dict[str, dict[str, float]] = {}
    if a.only in (None, "export"):
        results["export"] = bench_export(a.shape, a.repeats)
    if a.only in (None, "generate"):
        results["generate"] = bench_generate(a.shape, a.batch, a.new_tokens, a.repeats, a.device)
    print(
        json.dumps(
            {"shape": a.shape, "device": a.device, "threads": torch.get_num_threads(), **results}, indent=1
        )
    )


if __name__ == "__main__":
    main()
