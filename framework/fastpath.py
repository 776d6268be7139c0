"""Which speed paths a run uses: one resolver for the model builder, the memory estimate and the resolved config.

The GPU hardware profiles set ``hardware.fast_paths=true``: then, unless the user chose otherwise, the LM head
and cross-entropy run fused in chunks (``model.fused_linear_ce``), RMSNorm/SwiGLU use Liger's kernels when
liger-kernel is installed and our lean autograd functions otherwise (``model.kernels=auto``), and LoRA siblings
that read one tensor share one adapter input (``lora.fused_inputs``). Each path is tested to give the reference
loss and gradients (tests/unit/test_kernels.py, tests/unit/test_lora_fused.py). The CPU profile keeps the
reference paths, so the demo's numbers do not move. No torch import: validation and the launcher use this.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from framework.lookup import dotted_get as _get

KERNELS = ("auto", "hf", "lean", "liger")


@dataclass(frozen=True)
class FastPaths:
    fused_linear_ce: bool  # chunked LM head + cross-entropy
    kernels: str  # hf | lean | liger
    fused_lora_inputs: bool  # one dropout + one A GEMM per group of LoRA siblings (q/k/v, gate/up)


def liger_installed() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def resolve(cfg: Any) -> FastPaths:
    """The paths ``cfg`` asks for, with ``null``/``auto`` settled by ``hardware.fast_paths``."""
    fast = bool(_get(cfg, "hardware.fast_paths"))
    cuda = _get(cfg, "hardware.accelerator") == "cuda"
    fused_ce = _get(cfg, "model.fused_linear_ce")
    kernels = _get(cfg, "model.kernels") or "auto"
    fused_inputs = _get(cfg, "lora.fused_inputs")
    if kernels == "auto":
        kernels = ("liger" if cuda and liger_installed() else "lean") if fast else "hf"
    return FastPaths(
        fused_linear_ce=fast if fused_ce is None else bool(fused_ce),
        kernels=str(kernels),
        # DoRA and 4-bit (QLoRA) modules keep peft's own forward (lora_fused._fusable), whatever is asked
        fused_lora_inputs=(fast if fused_inputs is None else bool(fused_inputs))
        and not _get(cfg, "lora.use_dora")
        and not _get(cfg, "model.load_in_4bit"),
    )


def settle(cfg: Any) -> None:
    """Write the resolved paths into ``cfg`` (a DictConfig), so config.yaml records what the run used."""
    paths = resolve(cfg)
    cfg.model.fused_linear_ce = paths.fused_linear_ce
    cfg.model.kernels = paths.kernels
    if cfg.get("lora") is not None:
        cfg.lora.fused_inputs = paths.fused_lora_inputs
