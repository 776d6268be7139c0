"""Training from a pretrained checkpoint in the Hugging Face cache, through the real CLI: the run records what
it loaded, the weights are the checkpoint's, the adapter loads onto that base; bad weights exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helpers import read_metrics, run_cli
from tests.pretrained_fixtures import write_checkpoint, write_hub_cache

pytestmark = pytest.mark.integration

FAST = ["train.max_steps=3", "train.eval_interval=3", "train.checkpoint_interval=3", "train.progress=false"]


def test_hub_id_from_the_cache_trains_and_records_the_checkpoint(tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    source = write_checkpoint(tmp_path / "TinyLlama-Chat")
    snapshot = write_hub_cache(tmp_path / "hf", "acme/TinyLlama-Chat", source)
    run_dir = tmp_path / "run"
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    # The group says llama3_2_1b (2048 wide, 16 layers): the checkpoint decides.
    res = run_cli(
        ["model=llama3_2_1b", "model.pretrained=acme/TinyLlama-Chat", *FAST, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]
    assert (recorded["hidden_size"], recorded["num_hidden_layers"], recorded["revision"]) == (
        32,
        2,
        snapshot.name,
    )
    assert "Model TinyLlama-Chat: 99,360 parameters" in res.stdout + res.stderr
    assert [m["step"] for m in read_metrics(run_dir) if "eval_loss" in m] == [0, 3]  # step 0: eval_at_start

    base = AutoModelForCausalLM.from_pretrained(str(snapshot))
    expected = load_file(str(source / "model.safetensors"))["model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(base.model.layers[0].mlp.up_proj.weight, expected)
    model = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
    assert model(input_ids=torch.tensor([[1, 5, 9]])).logits.shape == (1, 3, 2052)


def test_truncated_weights_exit_2_without_traceback(tmp_path: Path) -> None:
    d = write_checkpoint(tmp_path / "m")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    res = run_cli([f"model.pretrained={d}", *FAST, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert f"{f}: tensor" in res.stderr and "truncated" in res.stderr
