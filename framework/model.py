"""Model and tokenizer: an HF causal LM from a local dir, a URI or the HF cache (:mod:`framework.pretrained`),
or random init from the config; LoRA, DoRA and QLoRA (4-bit base via bitsandbytes) through peft."""

from __future__ import annotations

import importlib.util
import logging
import pickle
import warnings
from typing import Any

from omegaconf import DictConfig

from framework import fastpath, pretrained, storage
from framework.errors import ConfigError
from recipes import trains

log = logging.getLogger(__name__)

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def option_problems(cfg: DictConfig) -> list[str]:
    """What the model options need (no torch), after :func:`framework.pretrained.apply` read the checkpoint."""
    problems: list[str] = []
    m, hw = cfg.model, cfg.hardware
    lora = trains(cfg.recipe.name) == "lora"
    if lora and m.train_embeddings and m.tie_word_embeddings and not m.pretrained:
        # peft copies modules_to_save; a tied LM head would stay frozen on the original weights.
        problems.append(
            "model.train_embeddings=true needs model.tie_word_embeddings=false (peft trains copies of the "
            "embeddings and the LM head; a tied head would stay frozen)"
        )
    if m.get("load_in_4bit"):
        qlora = "model.load_in_4bit=true (QLoRA)"
        if not lora:
            problems.append(f"{qlora} trains adapters on a frozen 4-bit base; use recipe=lora_llama")
        if not m.pretrained:
            problems.append(f"{qlora} quantizes pretrained weights; set model.pretrained")
        if hw.accelerator != "cuda":
            problems.append(
                f"{qlora} needs a CUDA GPU (bitsandbytes' 4-bit kernels); on hardware.accelerator="
                f"{hw.accelerator} use model.load_in_4bit=false (plain LoRA), or a GPU profile (hardware=h200x1)"
            )
        elif cfg.launcher.name == "local" and importlib.util.find_spec("bitsandbytes") is None:
            problems.append(f"{qlora} needs bitsandbytes: pip install 'framework[qlora]'")
        if hw.zero_stage == 3:
            problems.append(f"{qlora} cannot be sharded by ZeRO-3 here; use hardware.zero_stage=0, 1 or 2")
        if hw.precision == "fp32" and hw.accelerator == "cuda":
            problems.append(f"{qlora} computes in bf16; set hardware.precision=bf16")
    return problems


def tokenizer_uri(cfg: DictConfig) -> str:
    uri = cfg.model.tokenizer or cfg.model.pretrained or cfg.dataset.tokenizer
    if not uri:
        raise ConfigError(
            "no tokenizer: set model.tokenizer, model.pretrained, or dataset.tokenizer to a tokenizer directory"
        )
    return str(uri)


def load_tokenizer(cfg: DictConfig) -> Any:
    from transformers import AutoTokenizer

    uri = tokenizer_uri(cfg)
    if uri == cfg.model.pretrained:
        path = pretrained.local_dir(uri, cfg.model.get("revision"))
    else:
        path = storage.local_copy(uri)
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"tokenizer at {uri} cannot be loaded ({e}); point model.tokenizer at a HF tokenizer dir"
        ) from e
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def build_model(cfg: DictConfig, vocab_len: int) -> Any:
    """Load pretrained weights, or build a random-init Llama (seeded) from the model config."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    m = cfg.model
    dtype = getattr(torch, DTYPES[cfg.hardware.precision])
    if m.pretrained:
        model = load_pretrained(cfg, dtype)
    else:
        if vocab_len > m.vocab_size:
            raise ConfigError(
                f"model.vocab_size={m.vocab_size} is smaller than the tokenizer ({vocab_len} tokens); "
                f"set model.vocab_size>={vocab_len}"
            )
        config = LlamaConfig(
            vocab_size=m.vocab_size,
            hidden_size=m.hidden_size,
            intermediate_size=m.intermediate_size,
            num_hidden_layers=m.num_hidden_layers,
            num_attention_heads=m.num_attention_heads,
            num_key_value_heads=m.num_key_value_heads,
            max_position_embeddings=m.max_position_embeddings,
            rope_theta=m.rope_theta,
            rms_norm_eps=m.rms_norm_eps,
            tie_word_embeddings=m.tie_word_embeddings,
        )
        config._attn_implementation = m.attn_implementation
        torch.manual_seed(cfg.train.seed)
        model = LlamaForCausalLM(config).to(dtype)
    model.config.use_cache = False
    if m.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name warns
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    paths = fastpath.resolve(cfg)
    if paths.fused_linear_ce:
        from framework.kernels import enable_fused_linear_ce

        enable_fused_linear_ce(model)  # the loss from hidden states in chunks; no [tokens, vocab] logits
    kernels = paths.kernels
    if kernels == "lean":
        from framework.kernels import enable_lean_ops

        enable_lean_ops(model)
    elif kernels == "liger":
        from framework.kernels import enable_liger

        enable_liger(model)
    return model


def load_pretrained(cfg: DictConfig, dtype: Any) -> Any:
    """The checkpoint's weights (4-bit NF4 with ``model.load_in_4bit``). Weights that cannot be read, or whose
    shapes do not match config.json, are a ConfigError naming the file (exit 2): a retry cannot help."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    m = cfg.model
    path = pretrained.local_dir(str(m.pretrained), m.get("revision"))
    problems = pretrained.directory_problems(path)  # again here: a URI's files are local only now
    if problems:
        raise ConfigError(problems)
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": m.attn_implementation}
    if m.get("load_in_4bit"):
        from transformers import BitsAndBytesConfig

        from framework import distributed as dist

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",  # QLoRA's NormalFloat4 (Dettmers et al., 2023)
            bnb_4bit_use_double_quant=True,  # quantized quantization constants: ~0.4 bits/param less
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": dist.local_rank()}  # bitsandbytes quantizes while placing on the GPU
    try:
        return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, SafetensorError, pickle.UnpicklingError, EOFError) as e:
        raise ConfigError(f"model.pretrained={m.pretrained} cannot be loaded from {path}: {e}") from e


def apply_lora(model: Any, cfg: DictConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    lc = cfg.lora
    if cfg.model.train_embeddings and model.config.tie_word_embeddings:
        # peft copies modules_to_save; a tied LM head would stay frozen on the original weights.
        raise ConfigError("model.train_embeddings=true needs model.tie_word_embeddings=false")
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    unknown = [t for t in lc.target_modules if t not in names]
    if unknown:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, mod in model.named_modules() if type(mod).__name__ == "Linear"}
        )
        raise ConfigError(f"lora.target_modules {unknown} are not modules of this model; valid: {linear}")
    peft_cfg = LoraConfig(
        task_type="CAUSAL_LM",
        r=lc.r,
        lora_alpha=lc.alpha,
        lora_dropout=lc.dropout,
        use_dora=bool(lc.get("use_dora", False)),
        target_modules=list(lc.target_modules),
        # A random-init base has no vocabulary to adapt; its embeddings must learn one alongside the adapters.
        modules_to_save=["embed_tokens", "lm_head"] if cfg.model.train_embeddings else None,
    )
    # Adapters in the base's (compute) dtype: peft's default fp32 upcast only makes a copy DeepSpeed casts back.
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing`: a FutureWarning for their code, not ours
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        model = get_peft_model(model, peft_cfg, autocast_adapter_dtype=False)
    if fastpath.resolve(cfg).fused_lora_inputs:
        from framework.lora_fused import fuse_shared_inputs

        fuse_shared_inputs(model)
    if cfg.model.gradient_checkpointing:
        drop_input_grad_hooks(model)
    return model


def drop_input_grad_hooks(model: Any) -> int:
    """Remove the hooks that make the embeddings' output require grad; return how many.

    transformers' ``gradient_checkpointing_enable`` and peft each add one, for reentrant checkpointing, which
    cannot reach the adapters otherwise. Ours is non-reentrant, so they only make backward compute the gradient
    of the frozen embeddings' output: the input gradient of every projection in the first layer, for nothing.
    """
    emb = model.get_input_embeddings()
    hooks = emb._forward_hooks  # no public API lists them; both libraries register the same-named closure
    doomed = [k for k, fn in hooks.items() if getattr(fn, "__name__", "") == "make_inputs_require_grads"]
    for k in doomed:
        del hooks[k]
    return len(doomed)


def count_params(model: Any) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
