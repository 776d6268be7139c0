"""Speed switches compute what the reference path computes: fused linear+CE, LoRA's skipped work, compile,
and packed rows with no attention across documents. Tiny models, fp32, CPU."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch import nn

from framework import dataset as data
from framework.config import conf_dir, register
from framework.kernels import (
    FusedLinearCrossEntropy,
    RMSNormFunction,
    SwiGLUFunction,
    compile_model,
    default_chunk_tokens,
    enable_fused_linear_ce,
    enable_lean_ops,
    enable_liger,
    head_weight,
    linear_cross_entropy,
)
from framework.memory import fused_chunk_tokens
from framework.model import apply_lora, build_model
from framework.validate import with_schema
from recipes import trains

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = [
    "model.vocab_size=128",
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.num_hidden_layers=2",
    "model.num_attention_heads=4",
    "model.num_key_value_heads=2",
]


def cfg_for(*overrides: str) -> DictConfig:
    register()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return with_schema(compose("config", overrides=[*TINY, *overrides]))


def perturb_lora(model: nn.Module) -> None:
    """LoRA B starts at zero; give it values so adapter gradients and outputs are not trivial."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def make_pair(*overrides: str, switch: str = "model.fused_linear_ce=true") -> tuple[nn.Module, nn.Module]:
    """The reference model and the same weights with ``switch`` on, both built by the framework."""
    ref_cfg, fused_cfg = cfg_for(*overrides), cfg_for(*overrides, switch)
    models = []
    for cfg in (ref_cfg, fused_cfg):
        m = build_model(cfg, 100)
        if trains(cfg.recipe.name) == "lora":
            m = apply_lora(m, cfg)
            perturb_lora(m)
        models.append(m)
    models[1].load_state_dict(models[0].state_dict())
    return models[0], models[1]


def packed_batch(vocab: int = 128, seq: int = 48, rows: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Packed rows as the framework builds them: several documents per row, prompt tokens unlabelled, pad tail."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for n in (9, 14, 5, 20, 11, 7, 16):
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        examples.append(data.Tokenized(ids, [data.IGNORE_INDEX] * 2 + ids[2:]))
    packed = data.pack(examples, seq, 0, True, seed)[:rows]
    return data.collate(packed)


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def check_same(
    ref: nn.Module, fused: nn.Module, batch: dict[str, torch.Tensor], *, logits: bool = False
) -> dict[str, torch.Tensor]:
    ref.train()
    fused.train()
    l_ref = ref(**batch).loss
    l_ref.backward()
    out = fused(**batch)
    out.loss.backward()
    assert (out.logits is not None) == logits  # the fused loss never materializes them
    torch.testing.assert_close(out.loss, l_ref, rtol=0, atol=1e-5)
    g_ref, g_fused = grads(ref), grads(fused)
    assert g_ref.keys() == g_fused.keys() and g_ref
    for name in g_ref:
        torch.testing.assert_close(g_fused[name], g_ref[name], rtol=1e-5, atol=1e-5, msg=name)
    return g_ref


# ----------------------------------------------------------------------------------------------- fused CE


def test_fused_ce_lora_matches_hf_loss_and_grads() -> None:
    """LoRA with trained embeddings + head (peft modules_to_save): loss, LoRA, head and embedding grads."""
    ref, fused = make_pair("model.train_embeddings=true", "lora.dropout=0")
    g = check_same(ref, fused, packed_batch())
    names = list(g)
    assert any("lm_head" in n for n in names)
    assert any("embed_tokens" in n for n in names)
    assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)


def test_fused_ce_full_finetune_matches_hf() -> None:
    ref, fused = make_pair("recipe=full_finetune")
    g = check_same(ref, fused, packed_batch())
    assert "lm_head.weight" in g and "model.embed_tokens.weight" in g


def test_fused_ce_tied_embeddings_matches_hf() -> None:
    ref, fused = make_pair("recipe=full_finetune", "model.tie_word_embeddings=true")
    check_same(ref, fused, packed_batch())


def test_fused_ce_frozen_head_lora_matches_hf() -> None:
    """LoRA on a frozen base (the pretrained case): no head gradient is computed, the adapters' match."""
    ref, fused = make_pair("model.train_embeddings=false", "lora.dropout=0")
    g = check_same(ref, fused, packed_batch())
    assert not any("lm_head" in n for n in g)


def test_fused_ce_lora_on_lm_head_uses_checkpointed_chunks() -> None:
    """A LoRA-wrapped head has no plain weight: the module-calling, checkpointed path gives the same result."""
    ref, fused = make_pair(
        "model.train_embeddings=false", "lora.dropout=0", "lora.target_modules=[q_proj,v_proj,lm_head]"
    )
    head = fused.get_output_embeddings()
    assert head_weight(head) is None
    check_same(ref, fused, packed_batch())


def test_fused_ce_eval_no_grad_and_state_dict_unchanged() -> None:
    ref, fused = make_pair("model.train_embeddings=true")
    ref.eval()
    fused.eval()
    batch = packed_batch(seed=3)
    with torch.no_grad():
        torch.testing.assert_close(fused(**batch).loss, ref(**batch).loss, rtol=0, atol=1e-5)
    assert list(fused.state_dict()) == list(ref.state_dict())
    # without labels the model still returns logits (generation, inspection)
    with torch.no_grad():
        out = fused(input_ids=batch["input_ids"])
    assert out.logits.shape[-1] == 128


def test_fused_ce_small_chunks_and_num_items() -> None:
    """Direct call: any chunk size gives HF's sum / num_items_in_batch; ignored rows contribute nothing."""
    torch.manual_seed(0)
    head = nn.Linear(16, 50, bias=False)
    hidden = torch.randn(3, 11, 16, requires_grad=True)
    labels = torch.randint(0, 50, (3, 11))
    labels[0, :4] = data.IGNORE_INDEX
    shifted = nn.functional.pad(labels, (0, 1), value=data.IGNORE_INDEX)[..., 1:]
    ref = nn.functional.cross_entropy(
        head(hidden).reshape(-1, 50), shifted.reshape(-1), ignore_index=data.IGNORE_INDEX, reduction="sum"
    )
    ref_gh, ref_gw = torch.autograd.grad(ref / 7, (hidden, head.weight))
    for chunk in (1, 5, 64):
        loss = linear_cross_entropy(hidden, head, labels, num_items_in_batch=7, chunk_tokens=chunk)
        gh, gw = torch.autograd.grad(loss, (hidden, head.weight))
        torch.testing.assert_close(loss, ref / 7, rtol=0, atol=1e-5)
        torch.testing.assert_close(gh, ref_gh, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gw, ref_gw, rtol=1e-5, atol=1e-6)


def test_fused_ce_function_gradcheck() -> None:
    torch.manual_seed(0)
    h = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1, 2, -100, 8, 0, 3])
    assert torch.autograd.gradcheck(lambda a, b: FusedLinearCrossEntropy.apply(a, b, t, 4, -100), (h, w))


def test_fused_ce_bf16_close_to_hf() -> None:
    ref, fused = make_pair("recipe=full_finetune")
    ref, fused = ref.to(torch.bfloat16), fused.to(torch.bfloat16)
    batch = packed_batch()
    with torch.no_grad():
        torch.testing.assert_close(fused(**batch).loss, ref(**batch).loss.float(), rtol=2e-2, atol=2e-2)


def test_enable_is_idempotent_and_rejects_non_lm() -> None:
    m = build_model(cfg_for(), 100)
    enable_fused_linear_ce(m)
    fwd = m.forward
    enable_fused_linear_ce(m)
    assert m.forward == fwd
    with pytest.raises(TypeError):
        enable_fused_linear_ce(nn.Linear(2, 2))


def test_chunk_size_rule_agrees_with_memory_estimate() -> None:
    for n, h, v in ((16384, 2048, 128256), (8192, 4096, 128256), (2048, 64, 2048), (300, 32, 128)):
        assert min(n, default_chunk_tokens(n, h, v)) == fused_chunk_tokens(n, h, v)
    assert default_chunk_tokens(16384, 2048, 128256) == 1024  # 16 chunks of 0.5 GB fp32 logits, not 8.4 GB


# ----------------------------------------------------------------------------------------------- lean ops


def test_lean_functions_gradcheck() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: RMSNormFunction.apply(a, b, 1e-5), (x, w))
    gate = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    up = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(SwiGLUFunction.apply, (gate, up))


def test_lean_rms_norm_forward_is_bitwise_hf_and_bf16_grads_close() -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2)):
        norm = LlamaRMSNorm(64, eps=1e-5).to(dtype)
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
        x = torch.randn(2, 7, 64, dtype=dtype, requires_grad=True)
        gy = torch.randn(2, 7, 64, dtype=dtype)
        ref = norm(x)
        ref_dx, ref_dw = torch.autograd.grad(ref, (x, norm.weight), gy)
        out = RMSNormFunction.apply(x, norm.weight, norm.variance_epsilon)
        dx, dw = torch.autograd.grad(out, (x, norm.weight), gy)
        assert torch.equal(out, ref)
        torch.testing.assert_close(dx, ref_dx, rtol=tol, atol=tol)
        torch.testing.assert_close(dw.float(), ref_dw.float(), rtol=tol, atol=tol * 10)


def test_lean_ops_lora_matches_hf_loss_and_grads() -> None:
    ref, lean = make_pair("model.train_embeddings=true", "lora.dropout=0", switch="model.kernels=lean")
    g = check_same(ref, lean, packed_batch(), logits=True)
    assert any("lora_A" in n for n in g) and any("embed_tokens" in n for n in g)


def test_lean_ops_full_finetune_with_fused_ce_matches_hf() -> None:
    """Both switches together; the norms' weight gradients come from the recomputed normalized rows."""
    ref, lean = make_pair("recipe=full_finetune", switch="model.kernels=lean")
    enable_fused_linear_ce(lean)
    g = check_same(ref, lean, packed_batch())
    assert "model.norm.weight" in g and "model.layers.0.mlp.gate_proj.weight" in g


def test_lean_ops_switch_every_norm_and_mlp_and_keep_state_dict() -> None:
    cfg = cfg_for("model.kernels=lean")
    m = build_model(cfg, 100)
    plain = build_model(cfg_for(), 100)
    assert list(m.state_dict()) == list(plain.state_dict())
    # 2 layers x (input + post-attention norm) + the final norm; one MLP per layer; idempotent
    assert enable_lean_ops(m) == {"rms_norm": 5, "swiglu": 2}
    assert enable_lean_ops(apply_lora(m, cfg)) == {"rms_norm": 5, "swiglu": 2}


def test_lean_ops_save_less_for_backward() -> None:
    """The point of the switch: fewer saved bytes in bf16 (measured with saved-tensor hooks)."""

    def saved_bytes(model: nn.Module) -> int:
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(**packed_batch()).loss.backward()
        return sum(seen.values())

    ref, lean = make_pair("recipe=full_finetune", switch="model.kernels=lean")
    ref, lean = ref.to(torch.bfloat16), lean.to(torch.bfloat16)
    assert saved_bytes(lean) < 0.85 * saved_bytes(ref)


def test_liger_switch_is_refused_on_cpu_and_names_the_package() -> None:
    from framework.validate import validate

    problems = validate(cfg_for("model.kernels=liger"))
    assert any("model.kernels=liger" in p and "lean" in p for p in problems), problems
    assert any("model.kernels='bogus'" in p for p in validate(cfg_for("model.kernels=bogus")))
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        from framework.errors import ConfigError

        with pytest.raises(ConfigError, match="liger-kernel"):
            enable_liger(build_model(cfg_for(), 100))


# ----------------------------------------------------------------------------------------------- LoRA work


def test_lora_gradient_checkpointing_matches_and_skips_the_frozen_input_gradient() -> None:
    """Checkpointed LoRA gives the reference loss and adapter gradients, and backward does not compute a
    gradient for the frozen embeddings' output (the first layer's input)."""
    ref, ckpt = make_pair(
        "model.train_embeddings=false", "lora.dropout=0", switch="model.gradient_checkpointing=true"
    )
    seen: list[bool] = []
    ckpt.get_input_embeddings().register_forward_hook(lambda mod, args, out: seen.append(out.requires_grad))
    g = check_same(ref, ckpt, packed_batch(), logits=True)
    assert g and all("lora_" in n for n in g)
    assert seen == [False]


def test_lora_dropout_zero_is_identity_and_positive_is_dropout() -> None:
    for p, kind in ((0.0, nn.Identity), (0.05, nn.Dropout)):
        m = apply_lora(build_model(cfg_for(f"lora.dropout={p}"), 100), cfg_for(f"lora.dropout={p}"))
        drops = [mod for name, mod in m.named_modules() if name.endswith("lora_dropout.default")]
        assert drops and all(type(d) is kind for d in drops), {type(d) for d in drops}


def test_lora_freezes_every_base_parameter() -> None:
    cfg = cfg_for("model.train_embeddings=false")
    m = apply_lora(build_model(cfg, 100), cfg)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    frozen = [n for n, p in m.named_parameters() if not p.requires_grad]
    assert any("base_layer" in n for n in frozen) and any("embed_tokens" in n for n in frozen)
    # with train_embeddings the only extra trainables are peft's copies, the originals stay frozen
    cfg = cfg_for("model.train_embeddings=true")
    m = apply_lora(build_model(cfg, 100), cfg)
    extra = {n for n, p in m.named_parameters() if p.requires_grad and "lora_" not in n}
    assert extra and all("modules_to_save" in n for n in extra)
    batch = packed_batch()
    m(**batch).loss.backward()
    assert all(p.grad is None for p in m.parameters() if not p.requires_grad)


# ----------------------------------------------------------------------------------------------- compile


def _two_steps(model: nn.Module, batch: dict[str, torch.Tensor]) -> list[float]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(2):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("kernels", ["hf", "lean"])
def test_compile_regional_traces_and_matches_eager(kernels: str) -> None:
    """Dynamo + AOT autograd (no codegen: fast) over every decoder layer, in one graph each (the lean autograd
    functions included): same losses, same parameter names."""
    torch._dynamo.reset()
    cfg = cfg_for("lora.dropout=0", f"model.kernels={kernels}")
    eager = apply_lora(build_model(cfg, 100), cfg)
    perturb_lora(eager)
    compiled = copy.deepcopy(eager)
    assert compile_model(compiled, backend="aot_eager", fullgraph=True) == 2
    batch = packed_batch()
    assert _two_steps(compiled, batch) == pytest.approx(_two_steps(eager, batch), abs=1e-5)
    assert list(compiled.state_dict()) == list(eager.state_dict())


@pytest.mark.integration
def test_compile_inductor_matches_eager_two_steps() -> None:
    """train.compile's real backend (inductor, C++ codegen on CPU: ~1 min on 2 cores), with every switch on."""
    torch._dynamo.reset()
    cfg = cfg_for("lora.dropout=0", "model.fused_linear_ce=true", "model.kernels=lean")
    eager = apply_lora(build_model(cfg, 100), cfg)
    perturb_lora(eager)
    compiled = copy.deepcopy(eager)
    compile_model(compiled)
    batch = packed_batch()
    assert _two_steps(compiled, batch) == pytest.approx(_two_steps(eager, batch), abs=1e-4)


# ----------------------------------------------------------------------------------------------- packing


def _doc_spans(position_ids: list[int], n_real: int) -> list[tuple[int, int]]:
    starts = [i for i, p in enumerate(position_ids[:n_real]) if p == 0] + [n_real]
    return list(zip(starts, starts[1:], strict=False))


def _summed_loss(model: Any, **batch: torch.Tensor) -> torch.Tensor:
    labels = batch["labels"]
    n = (labels[:, 1:] != data.IGNORE_INDEX).sum()
    return model(**batch).loss * n


@pytest.mark.parametrize("attn", ["sdpa", "eager", "flex_attention"])
def test_packed_row_loss_is_sum_of_separate_documents(attn: str) -> None:
    """No cross-document attention: a packed row's summed loss (and each logit) equals that of its documents
    run one by one; with position ids that do not restart (one long document) it does not."""
    cfg = cfg_for("recipe=full_finetune", f"model.attn_implementation={attn}")
    model = build_model(cfg, 100).eval()
    g = torch.Generator().manual_seed(1)
    examples = []
    for n in (7, 12, 5, 9):
        ids = torch.randint(3, 128, (n,), generator=g).tolist()
        examples.append(data.Tokenized(ids, [data.IGNORE_INDEX] + ids[1:]))
    (row,) = data.pack(examples, 40, 0, True, 0)
    batch = data.collate([row])
    spans = _doc_spans(row.position_ids, row.n_tokens)
    assert len(spans) == 4
    with torch.no_grad():
        packed = _summed_loss(model, **batch)
        packed_logits = model(**batch).logits[0]
        separate = torch.zeros(())
        for a, b in spans:
            doc = {k: v[:, a:b] for k, v in batch.items()}
            doc["position_ids"] = torch.arange(b - a)[None]
            separate = separate + _summed_loss(model, **doc)
            torch.testing.assert_close(packed_logits[a:b], model(**doc).logits[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(packed, separate, rtol=1e-6, atol=1e-5)
        leaky = dict(batch, position_ids=torch.arange(batch["input_ids"].shape[1])[None])
        assert abs(float(_summed_loss(model, **leaky)) - float(separate)) > 1e-3


# ----------------------------------------------------------------------------------------------- threads


def test_cpu_threads_policy() -> None:
    from framework.train import cpu_threads

    assert cpu_threads(cfg_for(), 8) == 1  # tiny model on CPU: one thread
    assert cpu_threads(cfg_for("hardware.cpu_threads=3"), 8) == 3
    assert cpu_threads(cfg_for("model.hidden_size=1024", "model.intermediate_size=2048"), 8) == 8
    assert cpu_threads(cfg_for("hardware=h200x1"), 16) == 16
