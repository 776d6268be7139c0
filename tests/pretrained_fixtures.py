"""Pretrained checkpoints for tests, written without torch: config.json + safetensors (numpy), optionally laid
out in a Hugging Face cache exactly as huggingface_hub lays it out (blobs, refs/main, snapshots/<commit>)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np

from framework.config import package_path

SAMPLE_TOKENIZER = Path(package_path("pkg://framework.data/sample/tokenizer"))

# A tiny Llama whose vocabulary fits the sample tokenizer (2048 + 4 added tokens), different from tiny_llama.
TINY = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 2052,
    "hidden_size": 32,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

# meta-llama/Llama-3.1-8B-Instruct's config.json (the architecture fields).
LLAMA_3_1_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 131072,
    "rope_theta": 500000.0,
    "rope_scaling": {"factor": 8.0, "rope_type": "llama3"},
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}

# meta-llama/Llama-3.2-1B-Instruct's config.json (the architecture fields).
LLAMA_3_2_1B = {
    **LLAMA_3_1_8B,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "tie_word_embeddings": True,
    "rope_scaling": {"factor": 32.0, "rope_type": "llama3"},
}


def shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The HF Llama state dict's names and shapes for ``cfg`` (written independently of framework.pretrained)."""
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    n, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = h // n
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not cfg["tie_word_embeddings"]:
        out["lm_head.weight"] = (v, h)
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        out[p + "self_attn.q_proj.weight"] = (n * d, h)
        out[p + "self_attn.k_proj.weight"] = (kv * d, h)
        out[p + "self_attn.v_proj.weight"] = (kv * d, h)
        out[p + "self_attn.o_proj.weight"] = (h, n * d)
        out[p + "mlp.gate_proj.weight"] = (i, h)
        out[p + "mlp.up_proj.weight"] = (i, h)
        out[p + "mlp.down_proj.weight"] = (h, i)
        out[p + "input_layernorm.weight"] = (h,)
        out[p + "post_attention_layernorm.weight"] = (h,)
    return out


def write_checkpoint(
    path: Path, config: dict[str, Any] | None = None, *, tokenizer: bool = True, sparse: bool = False
) -> Path:
    """A Hugging Face model directory. ``sparse``: the weights file is a sparse file of the right size with a
    valid header (an 8B checkpoint costs no disk), for tests that only read headers."""
    cfg = dict(TINY if config is None else config)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    if sparse:
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, shape in shapes(cfg).items():
            n = 2 * int(np.prod(shape))
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with (path / "model.safetensors").open("wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            f.truncate(8 + len(raw) + offset)
    else:
        from safetensors.numpy import save_file

        rng = np.random.default_rng(0)
        tensors = {
            name: (np.ones(shape) if len(shape) == 1 else rng.normal(0, 0.02, shape)).astype(np.float32)
            for name, shape in shapes(cfg).items()
        }
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer:
        for f in SAMPLE_TOKENIZER.iterdir():
            shutil.copy(f, path / f.name)
    return path


def write_hub_cache(
    hf_home: Path, repo_id: str, source: Path, commit: str = "0123456789abcdef" * 2 + "01234567"
) -> Path:
    """Put the files of ``source`` into ``$HF_HOME/hub`` as huggingface_hub stores a download: content-addressed
    blobs, ``snapshots/<commit>/<file>`` symlinks to them, ``refs/main`` naming the commit. Returns the snapshot."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in sorted(source.iterdir()):
        data = f.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        blob = repo / "blobs" / digest
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / f.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot
