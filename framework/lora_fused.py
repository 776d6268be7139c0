"""LoRA without the waste peft's per-module forward carries: projections that read the same tensor share one
adapter input.

peft runs each LoRA ``Linear`` on its own: q_proj, k_proj and v_proj each apply dropout to the same hidden
states (three copies of the input, three masks) and each launch a skinny ``[tokens, d] x [d, r]`` GEMM that reads
the whole input again. Here the siblings that read one tensor (q/k/v of an attention, gate/up of a SwiGLU MLP)
form a group: dropout once, then ONE GEMM against their concatenated A matrices, split into each member's part.
The base GEMMs, the B matrices, the scaling and the state dict are peft's own, so adapters save, load and merge
as before.

With ``lora.dropout=0`` the result equals peft's to float rounding (tested on loss and every gradient). With
dropout > 0 the group shares one mask, where peft draws one per module: the same dropout rate, fewer copies.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Sibling projections that read the same input in a Llama-style decoder layer.
SHARED_INPUT_GROUPS: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class SharedAdapterInput:
    """The A projections of LoRA modules that read the same tensor, computed as one GEMM per forward.

    The first member called with a tensor computes every member's part; the others take theirs. A member called
    again, or with another tensor, starts a new computation, so any call order stays correct. Nothing is kept
    once every member has taken its part (the parts live on only in autograd's graph).
    """

    def __init__(self, members: list[nn.Module], adapter: str) -> None:
        self.members = members
        self.adapter = adapter
        self.sizes = [m.lora_A[adapter].out_features for m in members]
        self._x: torch.Tensor | None = None
        self._parts: list[torch.Tensor | None] = []

    def part(self, member: nn.Module, x: torch.Tensor) -> torch.Tensor:
        i = self.members.index(member)
        if self._x is not x or self._parts[i] is None:
            a = [m.lora_A[self.adapter].weight for m in self.members]
            h = F.linear(member.lora_dropout[self.adapter](x.to(a[0].dtype)), torch.cat(a))
            self._x, self._parts = x, list(h.split(self.sizes, dim=-1))
        out, self._parts[i] = self._parts[i], None
        assert out is not None
        if all(p is None for p in self._parts):
            self._x = None
        return out


def _fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    group: SharedAdapterInput = self._shared_adapter_input
    if (
        self.disable_adapters
        or self.merged
        or kwargs.get("adapter_names") is not None
        or list(self.active_adapters) != [group.adapter]
    ):
        return type(self).forward(self, x, *args, **kwargs)  # peft's own path for every other state
    result = self.base_layer(x, *args, **kwargs)
    h = group.part(self, x)
    return (result + self.lora_B[group.adapter](h) * self.scaling[group.adapter]).to(result.dtype)


def _fusable(mod: nn.Module, adapter: str) -> bool:
    """A plain LoRA Linear (no DoRA or other variant) with the adapter active."""
    return (
        hasattr(mod, "lora_A")
        and hasattr(mod, "base_layer")
        and adapter in mod.lora_A
        and adapter not in getattr(mod, "lora_variant", {})
        and isinstance(mod.base_layer, nn.Linear)
    )


def fuse_shared_inputs(model: nn.Module, adapter: str = "default") -> int:
    """Group LoRA siblings that read the same input (see module docstring); return the number of groups.

    Idempotent. Members must agree on input width, adapter dtype and dropout rate; a group that does not is
    left to peft's forward.
    """
    n = 0
    for parent in model.modules():
        for names in SHARED_INPUT_GROUPS:
            members = [getattr(parent, name, None) for name in names]
            if not all(m is not None and _fusable(m, adapter) for m in members):
                continue
            if any(hasattr(m, "_shared_adapter_input") for m in members):
                n += 1
                continue
            widths = {m.base_layer.in_features for m in members}
            dtypes = {m.lora_A[adapter].weight.dtype for m in members}
            drops = {float(getattr(m.lora_dropout[adapter], "p", 0.0)) for m in members}
            if len(widths) > 1 or len(dtypes) > 1 or len(drops) > 1:
                continue
            group = SharedAdapterInput(members, adapter)  # type: ignore[arg-type]
            for m in members:
                m._shared_adapter_input = group
                m.forward = types.MethodType(_fused_forward, m)
            n += 1
    return n
