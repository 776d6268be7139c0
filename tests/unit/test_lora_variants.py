"""LoRA variants: DoRA (runs here, on CPU) and QLoRA (bitsandbytes, CUDA only: refused at validation here)."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from framework import memory
from framework.config import conf_dir, register
from framework.model import apply_lora, build_model, count_params
from framework.validate import validate, with_schema

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cfg_for(*overrides: str) -> DictConfig:
    register()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return with_schema(compose("config", overrides=list(overrides)))


def test_dora_starts_as_the_base_model_and_trains_its_magnitudes() -> None:
    cfg = cfg_for("lora.use_dora=true", "lora.dropout=0", "model.train_embeddings=false")
    base = build_model(cfg, 100)
    ids = torch.randint(0, cfg.model.vocab_size, (2, 16))
    with torch.no_grad():
        before = base(input_ids=ids).logits.clone()
    model = apply_lora(base, cfg)
    magnitudes = {n: p for n, p in model.named_parameters() if "lora_magnitude_vector" in n}
    # one magnitude vector per adapted module and layer, trained; the base weights frozen
    assert len(magnitudes) == cfg.model.num_hidden_layers * len(cfg.lora.target_modules)
    assert all(p.requires_grad for p in magnitudes.values())
    assert not any(p.requires_grad for n, p in model.named_parameters() if "base_layer" in n)
    with torch.no_grad():  # DoRA's init: magnitude = the column norms of W, B = 0, so the output is unchanged
        torch.testing.assert_close(model(input_ids=ids).logits, before)
    total, trainable = count_params(model)
    counts = memory.param_counts(cfg)
    assert (counts.total, counts.trainable) == (total, trainable)

    start = {n: p.detach().clone() for n, p in magnitudes.items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(3):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert all(not torch.equal(p, start[n]) for n, p in magnitudes.items())


def test_dora_memory_estimate_against_measured_tensors() -> None:
    from tests.unit.test_memory import SMALL, measure

    cfg = cfg_for(*SMALL, "lora.use_dora=true", "lora.dropout=0")
    est, got = memory.estimate(cfg), measure(cfg)
    assert (est.weights, est.gradients) == (got["weights"], got["gradients"])
    assert got["activations"] <= est.activations <= 1.15 * got["activations"]


def test_qlora_is_refused_where_bitsandbytes_cannot_run() -> None:
    found = validate(cfg_for("model.load_in_4bit=true"), gpu_count=None)
    assert any("needs a CUDA GPU (bitsandbytes' 4-bit kernels)" in p for p in found), found
    assert any("quantizes pretrained weights; set model.pretrained" in p for p in found), found
    full = validate(cfg_for("model.load_in_4bit=true", "recipe=full_finetune"), gpu_count=None)
    assert any("use recipe=lora_llama" in p for p in full), full


def test_qlora_on_a_gpu_profile_needs_bitsandbytes(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a)
    )
    found = validate(cfg_for("experiment=llama3_1_8b_qlora_h200"), gpu_count=None)
    # no checkpoint here: the hub id is not in this machine's cache; that is reported, and bitsandbytes' absence
    assert any("needs bitsandbytes: pip install 'framework[qlora]'" in p for p in found), found


def test_qlora_memory_estimate_quantizes_only_the_decoder_linears() -> None:
    base = ["model=llama3_1_8b", "hardware=h200x1", "dataset.max_seq_len=2048"]
    bf16, nf4 = memory.estimate(cfg_for(*base)), memory.estimate(cfg_for(*base, "model.load_in_4bit=true"))
    s = memory.shapes(cfg_for(*base))
    linear = 32 * (4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336)  # q,o + k,v + gate,up,down
    assert bf16.weights - nf4.weights == pytest.approx((2 - 0.516) * linear, rel=1e-3)
    assert nf4.weights > 2 * 2 * s.vocab * s.hidden  # embeddings and head stay bf16


def test_qlora_loads_the_base_in_nf4(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What runs here of the QLoRA load: the quantization config handed to transformers (the 4-bit load itself
    needs bitsandbytes on a CUDA GPU)."""
    import transformers

    from framework.model import load_pretrained
    from tests.pretrained_fixtures import write_checkpoint

    ckpt = write_checkpoint(tmp_path / "m")
    cfg = cfg_for(f"model.pretrained={ckpt}", "model.load_in_4bit=true", "hardware.precision=bf16")
    seen = {}
    monkeypatch.setattr(
        transformers.AutoModelForCausalLM, "from_pretrained", lambda path, **kw: seen.update(kw, path=path)
    )
    load_pretrained(cfg, torch.bfloat16)
    q = seen["quantization_config"]
    assert (q.load_in_4bit, q.bnb_4bit_quant_type, q.bnb_4bit_use_double_quant) == (True, "nf4", True)
    assert q.bnb_4bit_compute_dtype == torch.bfloat16 and seen["device_map"] == {"": 0}
    assert seen["path"] == str(ckpt)
