"""Speed switches for the training forward: a chunked fused linear + cross-entropy loss, and regional compile.

``model.fused_linear_ce=true`` replaces the causal LM's forward (on the instance; the class, the state dict and
``save_pretrained`` are untouched) with one that runs the decoder, then computes the loss straight from the
final hidden states and the LM head weight in chunks of tokens, so the ``[tokens, vocab]`` logits are never
materialized (for Llama 3 at 2048 x 8 tokens: 2.1 GB of bf16 logits plus their fp32 upcast and gradient).
Only positions with a label are fed to the head: prompt and padding tokens cost no LM-head FLOPs either.

Two paths, the same loss (HF's ``ForCausalLMLoss``: shift by one, ignore -100, mean over labelled tokens):

- the LM head resolves to a plain ``nn.Linear`` weight (full fine-tune, LoRA not targeting ``lm_head``, peft's
  ``modules_to_save`` copy): :class:`FusedLinearCrossEntropy`, a custom autograd Function that computes the
  gradients of each chunk in the forward pass (as Liger's kernel does), so backward is a multiply and no GEMM
  is recomputed;
- anything else (LoRA on ``lm_head``, a ZeRO-3 partitioned weight): a chunk loop that calls the head module
  under activation checkpointing, so it costs one extra head forward but still never holds the full logits.

``train.compile=true`` compiles each decoder layer in place (``nn.Module.compile``: regional compilation, the
state dict keys keep their names). Pure torch; imported only when a switch is on.
"""

from __future__ import annotations

import math
import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100


MIN_CHUNK_TOKENS = 1024  # below this, per-chunk overhead outweighs the memory saved (small models, CPU)


def default_chunk_tokens(n_tokens: int, hidden: int, vocab: int) -> int:
    """Tokens per chunk: one chunk of logits about as large as the hidden states (Liger's rule), at least
    ``MIN_CHUNK_TOKENS`` (for Llama-3 1B at 8 x 2048 tokens: 16 chunks of 1024 tokens, 0.5 GB of fp32 logits
    each, instead of 8.4 GB at once)."""
    factor = max(1, math.ceil(vocab / max(hidden, 1)))
    want = max(1, math.ceil(n_tokens / factor))
    return max(MIN_CHUNK_TOKENS, 1 << (want - 1).bit_length())


class FusedLinearCrossEntropy(torch.autograd.Function):
    """Sum over rows of ``cross_entropy(hidden @ weight.T, targets)``, chunk by chunk, gradients in forward.

    ``hidden`` is ``[N, H]``, ``weight`` ``[V, H]``, ``targets`` ``[N]`` (``ignore_index`` rows add nothing).
    Logits, softmax and the loss are computed in fp32 whatever the input dtype; the gradient GEMMs run in the
    input dtype, and the weight gradient is accumulated in fp32 across chunks.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        chunk: int,
        ignore_index: int,
    ) -> torch.Tensor:
        n = hidden.shape[0]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        acc = torch.promote_types(hidden.dtype, torch.float32)  # fp32, or fp64 under gradcheck
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        total = torch.zeros((), dtype=acc, device=hidden.device)
        for start in range(0, n, chunk):
            h = hidden[start : start + chunk]
            t = targets[start : start + chunk]
            logits = (h @ weight.t()).to(acc)
            valid = t != ignore_index
            safe = torch.where(valid, t, torch.zeros_like(t))
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, safe.unsqueeze(1)).squeeze(1)
            total += torch.where(valid, lse - picked, torch.zeros_like(lse)).sum()
            if grad_h is None and grad_w is None:
                continue
            # d(sum of losses)/d(logits) = softmax - one_hot(target), zero on ignored rows; in place on `logits`.
            g = logits.sub_(lse.unsqueeze(1)).exp_()
            g[torch.arange(g.shape[0], device=g.device), safe] -= 1.0
            g.mul_(valid.unsqueeze(1).to(g.dtype))
            g = g.to(hidden.dtype)
            if grad_h is not None:
                grad_h[start : start + chunk] = g @ weight
            if grad_w is not None:
                if grad_w.dtype == g.dtype:
                    grad_w.addmm_(g.t(), h)
                else:
                    grad_w += (g.t() @ h).to(acc)
        ctx.save_for_backward(
            grad_h if grad_h is not None else torch.empty(0),
            grad_w if grad_w is not None else torch.empty(0),
        )
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        dh = grad_h * grad_out.to(grad_h.dtype) if ctx.needs_input_grad[0] else None
        dw = (grad_w * grad_out).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return dh, dw, None, None, None


def _chunk_loss(head: nn.Module, h: torch.Tensor, t: torch.Tensor, ignore_index: int) -> torch.Tensor:
    return F.cross_entropy(head(h).float(), t, ignore_index=ignore_index, reduction="sum")


def head_weight(head: nn.Module) -> torch.Tensor | None:
    """The weight a head module multiplies by, if it is a plain (unpartitioned) linear map; else None.

    Sees through peft's ``ModulesToSaveWrapper`` (the active trained copy). A LoRA-wrapped head, a head with a
    bias, or a ZeRO-3 partitioned weight returns None: the caller then calls the module itself.
    """
    mod: Any = head
    for _ in range(4):
        if type(mod) is nn.Linear:
            w = mod.weight
            if mod.bias is not None or hasattr(w, "ds_id"):
                return None
            return w
        if hasattr(mod, "modules_to_save") and hasattr(mod, "active_adapters"):
            if getattr(mod, "disable_adapters", False) or not mod.active_adapters:
                mod = mod.original_module
            else:
                mod = mod.modules_to_save[mod.active_adapters[0]]
            continue
        return None
    return None


def linear_cross_entropy(
    hidden: torch.Tensor,
    head: nn.Module,
    labels: torch.Tensor,
    *,
    num_items_in_batch: torch.Tensor | int | None = None,
    shift_labels: torch.Tensor | None = None,
    chunk_tokens: int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """HF's causal LM loss of ``head(hidden)`` against ``labels`` without materializing all the logits.

    ``hidden`` is ``[B, S, H]`` (the decoder's normed output), ``labels`` ``[B, S]`` unshifted (or pass
    ``shift_labels``). Mean over labelled tokens, or sum / ``num_items_in_batch`` when given (as HF does).
    """
    h_dim = hidden.shape[-1]
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    targets = shift_labels.reshape(-1).to(hidden.device)
    flat = hidden.reshape(-1, h_dim)
    keep = (targets != ignore_index).nonzero().squeeze(1)
    flat, targets = flat.index_select(0, keep), targets.index_select(0, keep)
    n = flat.shape[0]
    weight = head_weight(head)
    vocab = weight.shape[0] if weight is not None else int(getattr(head, "out_features", 32000))
    chunk = chunk_tokens or default_chunk_tokens(n, h_dim, vocab)
    if weight is not None and torch.is_grad_enabled():
        total = FusedLinearCrossEntropy.apply(flat, weight, targets, chunk, ignore_index)
    elif not torch.is_grad_enabled():
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for s in range(0, n, chunk):
            total = total + _chunk_loss(head, flat[s : s + chunk], targets[s : s + chunk], ignore_index)
    else:
        from torch.utils.checkpoint import checkpoint

        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for s in range(0, n, chunk):
            total = total + checkpoint(
                _chunk_loss,
                head,
                flat[s : s + chunk],
                targets[s : s + chunk],
                ignore_index,
                use_reentrant=False,
            )
    if num_items_in_batch is not None:
        denom = num_items_in_batch
        if torch.is_tensor(denom):
            denom = denom.to(total.device)
        return total / denom
    return total / n  # n == 0 gives nan, as HF's mean over no labelled token does


def _fused_forward(
    self: Any,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    past_key_values: Any = None,
    inputs_embeds: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    use_cache: bool | None = None,
    logits_to_keep: int | torch.Tensor = 0,
    **kwargs: Any,
) -> Any:
    """A causal LM forward that returns the loss (and no logits) when labels are given."""
    inputs = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "past_key_values": past_key_values,
        "inputs_embeds": inputs_embeds,
        "use_cache": use_cache,
    }
    if labels is None:
        return self._unfused_forward(**inputs, logits_to_keep=logits_to_keep, **kwargs)
    from transformers.modeling_outputs import CausalLMOutputWithPast

    num_items = kwargs.pop("num_items_in_batch", None)
    shift_labels = kwargs.pop("shift_labels", None)
    kwargs.pop("return_dict", None)
    outputs = self.model(**inputs, **kwargs)
    loss = linear_cross_entropy(
        outputs.last_hidden_state,
        self.get_output_embeddings(),
        labels,
        num_items_in_batch=num_items,
        shift_labels=shift_labels,
        chunk_tokens=getattr(self, "_fused_ce_chunk", None),
    )
    return CausalLMOutputWithPast(
        loss=loss,
        logits=None,
        past_key_values=outputs.past_key_values,
        hidden_states=outputs.hidden_states,
        attentions=outputs.attentions,
    )


def enable_fused_linear_ce(model: nn.Module, chunk_tokens: int | None = None) -> nn.Module:
    """Switch an HF causal LM (``.model`` decoder + output embeddings) to the fused loss, in place.

    Call on the base model, before or after peft wraps it (peft calls the base model's ``forward``).
    """
    if not hasattr(model, "model") or not hasattr(model, "get_output_embeddings"):
        raise TypeError(f"{type(model).__name__} is not a causal LM with a .model decoder and an LM head")
    if getattr(model, "_unfused_forward", None) is None:
        model._unfused_forward = model.forward  # type: ignore[assignment]
        model.forward = types.MethodType(_fused_forward, model)  # type: ignore[method-assign]
    model._fused_ce_chunk = chunk_tokens  # type: ignore[assignment]
    return model


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks (``*DecoderLayer``) of an HF model, peft-wrapped or not."""
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


def compile_model(model: nn.Module, **options: Any) -> int:
    """Compile each decoder layer in place (regional compilation); return how many were compiled.

    Compiling the blocks, not the whole model, keeps HF's mask construction and peft's dispatch out of the
    graph (no graph breaks in the hot path), compiles one block shape once and reuses it for every layer, and
    leaves parameter names unchanged, so checkpoints and ``save_pretrained`` see the same state dict.
    """
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(**options)
    return len(layers)


# ------------------------------------------------------------------------------------ lean RMSNorm and SwiGLU


def _stats_dtype(t: torch.Tensor) -> torch.dtype:
    """fp32 for half types and fp32, fp64 under gradcheck."""
    return torch.promote_types(t.dtype, torch.float32)


class RMSNormFunction(torch.autograd.Function):
    """Llama's RMSNorm (``weight * (x * rsqrt(mean(x^2) + eps)).to(x.dtype)``, statistics in fp32) that saves
    only its input and the per-row ``rstd`` for backward.

    Autograd through transformers' module keeps the fp32 upcast of the input, the fp32 normalized rows and
    their cast (6 bytes per bf16 element); this keeps 2. The forward is bitwise the module's.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:  # type: ignore[override]
        xf = x.to(_stats_dtype(x))
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return weight * (xf * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, weight, rstd = ctx.saved_tensors
        acc = rstd.dtype
        xhat = x.to(acc) * rstd
        dx = dw = None
        if ctx.needs_input_grad[1]:
            normed = xhat.to(x.dtype).to(acc)
            dw = (gy.to(acc) * normed).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
        if ctx.needs_input_grad[0]:
            gn = (gy * weight).to(acc)  # the module multiplies in the weight's dtype, then upcasts
            dx = (rstd * (gn - xhat * (gn * xhat).mean(-1, keepdim=True))).to(x.dtype)
        return dx, dw, None


class SwiGLUFunction(torch.autograd.Function):
    """``silu(gate) * up`` that saves only ``gate`` and ``up`` (autograd also keeps ``silu(gate)``: a third
    ``[tokens, intermediate]`` tensor per layer), recomputing the sigmoid in fp32 in backward."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        gate, up = ctx.saved_tensors
        acc = _stats_dtype(gate)
        g, gyf = gate.to(acc), gy.to(acc)
        sig = torch.sigmoid(g)
        silu = g * sig
        d_up = (gyf * silu).to(up.dtype) if ctx.needs_input_grad[1] else None
        d_gate = None
        if ctx.needs_input_grad[0]:
            d_gate = (gyf * up.to(acc) * sig * (1.0 + g * (1.0 - sig))).to(gate.dtype)
        return d_gate, d_up


def _lean_rms_norm_forward(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    return RMSNormFunction.apply(hidden_states, self.weight, self.variance_epsilon)


def _lean_mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(SwiGLUFunction.apply(self.gate_proj(x), self.up_proj(x)))


def _is_rms_norm(mod: nn.Module) -> bool:
    return type(mod).__name__.endswith("RMSNorm") and hasattr(mod, "variance_epsilon")


def _is_swiglu_mlp(mod: nn.Module) -> bool:
    act = getattr(mod, "act_fn", None)
    silu = isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"  # transformers' own class
    return (
        type(mod).__name__.endswith("MLP")
        and all(hasattr(mod, n) for n in ("gate_proj", "up_proj", "down_proj"))
        and silu
    )


def enable_lean_ops(model: nn.Module) -> dict[str, int]:
    """Route every Llama-style RMSNorm and SiLU-gated MLP of ``model`` through the lean autograd functions, in
    place (the instances' ``forward``; classes, parameters and state dict untouched). Idempotent; works before
    or after peft wraps the model. Returns how many modules of each kind were switched."""
    counts = {"rms_norm": 0, "swiglu": 0}
    for mod in model.modules():
        if _is_rms_norm(mod):
            mod.forward = types.MethodType(_lean_rms_norm_forward, mod)  # type: ignore[method-assign]
            counts["rms_norm"] += 1
        elif _is_swiglu_mlp(mod):
            mod.forward = types.MethodType(_lean_mlp_forward, mod)  # type: ignore[method-assign]
            counts["swiglu"] += 1
    return counts


def enable_liger(model: nn.Module) -> None:
    """Liger's Triton RMSNorm, SwiGLU and RoPE kernels on a Llama instance (CUDA only).

    The loss stays ours (``model.fused_linear_ce``) so the logits rule and the tests are one. Liger swaps
    RoPE in transformers' Llama module globally: every Llama in this process then uses it.
    """
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_llama
    except ImportError as e:
        from framework.errors import ConfigError

        raise ConfigError(
            f"model.kernels=liger needs the liger-kernel package ({e}); pip install liger-kernel, "
            "or set model.kernels=lean"
        ) from e
    apply_liger_kernel_to_llama(
        rope=True,
        rms_norm=True,
        swiglu=True,
        cross_entropy=False,
        fused_linear_cross_entropy=False,
        model=model,
    )
