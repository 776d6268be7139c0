"""LoRA siblings sharing one adapter input (framework/lora_fused.py) compute what peft computes, and the GPU
profiles' fast-path defaults (framework/fastpath.py) resolve as documented. Tiny models, fp32, CPU."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from framework import fastpath, memory
from framework.lora_fused import SharedAdapterInput, fuse_shared_inputs
from framework.model import apply_lora, build_model
from tests.unit.test_kernels import _two_steps, cfg_for, check_same, packed_batch, perturb_lora

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def lora_pair(*overrides: str) -> tuple[nn.Module, nn.Module]:
    """peft's forward and the fused one, same weights (nonzero B so every gradient is non-trivial)."""
    ref_cfg = cfg_for("lora.fused_inputs=false", *overrides)
    fused_cfg = cfg_for("lora.fused_inputs=true", *overrides)
    ref = apply_lora(build_model(ref_cfg, 100), ref_cfg)
    perturb_lora(ref)
    fused = apply_lora(build_model(fused_cfg, 100), fused_cfg)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def groups(model: nn.Module) -> set[int]:
    return {id(m._shared_adapter_input) for m in model.modules() if hasattr(m, "_shared_adapter_input")}


def test_fused_inputs_match_peft_loss_and_every_adapter_gradient() -> None:
    ref, fused = lora_pair("lora.dropout=0")
    assert len(groups(fused)) == 4 and not groups(ref)  # q/k/v and gate/up in each of 2 layers
    g = check_same(ref, fused, packed_batch(), logits=True)
    assert any("lora_A" in n for n in g) and any("lora_B" in n for n in g)


def test_fused_inputs_with_partial_targets_and_gradient_checkpointing_match() -> None:
    # only q and v targeted: no complete group in attention, gate/up still fused
    ref, fused = lora_pair(
        "lora.dropout=0",
        "lora.target_modules=[q_proj,v_proj,gate_proj,up_proj]",
        "model.gradient_checkpointing=true",
    )
    assert len(groups(fused)) == 2
    check_same(ref, fused, packed_batch(), logits=True)


def test_fused_inputs_state_dict_merge_and_disable_are_peft_s() -> None:
    ref, fused = lora_pair("lora.dropout=0")
    assert list(fused.state_dict()) == list(ref.state_dict())
    batch = packed_batch()
    with torch.no_grad():
        with fused.disable_adapter(), ref.disable_adapter():
            torch.testing.assert_close(fused(**batch).logits, ref(**batch).logits)
        merged = copy.deepcopy(fused).merge_and_unload()
        torch.testing.assert_close(merged(**batch).logits, ref(**batch).logits, rtol=1e-5, atol=1e-5)


def test_fused_inputs_drop_out_one_copy_per_group() -> None:
    """With dropout > 0 peft applies dropout once per module; a fused group once per shared input."""
    counts: dict[str, int] = {}

    def count(model: nn.Module, key: str) -> None:
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Dropout) and "lora_dropout" in name:
                mod.register_forward_hook(lambda *_: counts.__setitem__(key, counts.get(key, 0) + 1))

    ref, fused = lora_pair("lora.dropout=0.1")
    count(ref, "ref")
    count(fused, "fused")
    batch = packed_batch()
    ref(**batch).loss.backward()
    loss = fused(**batch).loss
    loss.backward()
    # per layer: peft 7 (q, k, v, o, gate, up, down); fused 4 (qkv, o, gate/up, down)
    assert counts == {"ref": 14, "fused": 8}
    assert torch.isfinite(loss)
    assert all(p.grad is not None for n, p in fused.named_parameters() if "lora_A" in n)


def test_fused_inputs_train_like_peft_and_compile_in_one_graph() -> None:
    ref, fused = lora_pair("lora.dropout=0")
    batch = packed_batch()
    compiled = copy.deepcopy(fused)
    from framework.kernels import compile_model

    torch._dynamo.reset()
    assert compile_model(compiled, backend="aot_eager", fullgraph=True) == 2
    want = _two_steps(ref, batch)
    assert _two_steps(fused, batch) == pytest.approx(want, abs=1e-5)
    assert _two_steps(compiled, batch) == pytest.approx(want, abs=1e-5)


def test_shared_input_recomputes_for_a_new_tensor_or_a_repeated_member() -> None:
    lin = [nn.Linear(4, 4) for _ in range(2)]

    class Member(nn.Module):
        def __init__(self, base: nn.Linear) -> None:
            super().__init__()
            self.lora_A = nn.ModuleDict({"default": nn.Linear(4, 2, bias=False)})
            self.lora_dropout = nn.ModuleDict({"default": nn.Identity()})
            self.base_layer = base

    a, b = Member(lin[0]), Member(lin[1])
    group = SharedAdapterInput([a, b], "default")
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(group.part(a, x), a.lora_A["default"](x))
    torch.testing.assert_close(group.part(a, y), a.lora_A["default"](y))  # a again: recomputed for y
    torch.testing.assert_close(group.part(b, y), b.lora_A["default"](y))
    assert group._x is None  # every member took its part: nothing kept
    torch.testing.assert_close(group.part(b, x), b.lora_A["default"](x))


def test_dora_is_left_to_peft() -> None:
    cfg = cfg_for("lora.fused_inputs=true", "lora.dropout=0")
    model = build_model(cfg, 100)
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        model, LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj"], use_dora=True)
    )
    assert fuse_shared_inputs(model) == 0


def test_adapters_are_created_in_the_compute_dtype() -> None:
    cfg = cfg_for("hardware.precision=bf16", "lora.dropout=0")
    model = apply_lora(build_model(cfg, 100), cfg)
    dtypes = {p.dtype for n, p in model.named_parameters() if "lora_" in n}
    assert dtypes == {torch.bfloat16}


# ----------------------------------------------------------------------------------------------- defaults


@pytest.mark.parametrize(
    ("hardware", "extra", "want"),
    [
        ("cpu", [], fastpath.FastPaths(False, "hf", False)),
        ("h200x1", [], fastpath.FastPaths(True, "liger" if fastpath.liger_installed() else "lean", True)),
        (
            "a100x8",
            ["model.kernels=hf", "model.fused_linear_ce=false"],
            fastpath.FastPaths(False, "hf", True),
        ),
        ("h200x1", ["hardware.fast_paths=false"], fastpath.FastPaths(False, "hf", False)),
        ("cpu", ["hardware.fast_paths=true"], fastpath.FastPaths(True, "lean", True)),
    ],
)
def test_fast_path_defaults(hardware: str, extra: list[str], want: fastpath.FastPaths) -> None:
    cfg = cfg_for(f"hardware={hardware}", "hardware.gpu_memory_gb=null", *extra)
    assert fastpath.resolve(cfg) == want


def test_memory_estimate_follows_the_gpu_defaults() -> None:
    from tests.unit.test_memory import cfg_for as full_size

    base = ["model=llama3_2_1b", "hardware=h200x1", "lora.r=16", "lora.alpha=32", "train.micro_batch_size=8"]
    default = memory.estimate(full_size(*base, "dataset.max_seq_len=2048"))
    ref = memory.estimate(full_size(*base, "dataset.max_seq_len=2048", "hardware.fast_paths=false"))
    explicit = memory.estimate(
        full_size(
            *base,
            "dataset.max_seq_len=2048",
            "hardware.fast_paths=false",
            "model.fused_linear_ce=true",
            "model.kernels=lean",
            "lora.fused_inputs=true",
        )
    )
    assert default.total == explicit.total < 0.7 * ref.total


def test_check_records_the_resolved_paths() -> None:
    from framework.validate import check

    cfg = check(cfg_for("hardware=h200x1", "hardware.gpu_memory_gb=null"), gpu_count=lambda: 1)
    assert cfg.model.kernels in ("lean", "liger") and cfg.model.fused_linear_ce is True
    assert cfg.lora.fused_inputs is True
