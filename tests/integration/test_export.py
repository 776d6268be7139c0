"""After training: export (adapter, merged; final, step, best; ZeRO-3), the demo adapter loaded the README way,
and generation from a run, an export and a pretrained dir with a chat template."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, read_metrics, run_cli

pytestmark = pytest.mark.integration

SHORT = [
    "train.max_steps=30",
    "train.eval_interval=10",
    "train.checkpoint_interval=10",
    "train.keep_last=5",
    "train.progress=false",
]
IDS = [[1, 5, 9, 2, 100, 7, 33, 250], [4, 4, 80, 12, 6, 600, 3, 2]]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("export") / "run"
    res = run_cli([*SHORT, f"hydra.run.dir={run_dir}"], cwd=run_dir.parent)
    assert res.returncode == 0, res.stderr[-3000:]
    return run_dir


def logits(model, ids=IDS):  # type: ignore[no-untyped-def]
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor(ids)).logits


def readme_model(run: Path):  # type: ignore[no-untyped-def]
    """The adapter loaded exactly as the README shows."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(f"{run}/base")
    return PeftModel.from_pretrained(base, f"{run}/adapter").eval()


def test_demo_adapter_loads_the_readme_way(lora_run: Path) -> None:
    import torch
    from peft import AutoPeftModelForCausalLM

    cfg = json.loads((lora_run / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str((lora_run / "base").resolve())
    model = readme_model(lora_run)
    # The saved base holds the frozen weights training used, bit for bit.
    from transformers import AutoModelForCausalLM

    ckpt = lora_run / "checkpoints" / "step_30" / "mp_rank_00_model_states.pt"
    module = torch.load(ckpt, weights_only=False)["module"]
    base = AutoModelForCausalLM.from_pretrained(f"{lora_run}/base").state_dict()
    frozen = {k: v for k, v in module.items() if ".base_layer." in k or ".original_module." in k}
    assert len(frozen) >= 14
    for key, value in frozen.items():
        name = (
            key.removeprefix("base_model.model.")
            .replace(".base_layer.", ".")
            .replace(".original_module.", ".")
        )
        assert torch.equal(value, base[name]), name
    # base_model_name_or_path points at something real: peft's auto class finds the base by itself.
    auto = AutoPeftModelForCausalLM.from_pretrained(str(lora_run / "adapter")).eval()
    assert torch.allclose(logits(auto), logits(model), atol=0, rtol=0)


def test_export_final_step_best_match_peft(lora_run: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from framework.export import export

    reference = logits(readme_model(lora_run))
    final = export(str(lora_run), merge=True)
    assert final.out == str(lora_run / "export" / "merged") and final.dtype == "fp32"
    merged = AutoModelForCausalLM.from_pretrained(final.out)
    assert (logits(merged) - reference).abs().max() < 1e-5

    # The last checkpoint is the final state: same logits through DeepSpeed's checkpoint instead of adapter/.
    step30 = export(str(lora_run), merge=True, step=30)
    assert (logits(AutoModelForCausalLM.from_pretrained(step30.out)) - reference).abs().max() < 1e-5

    # An earlier step differs from the final state, and its adapter export loads with peft on the base.
    step10 = export(str(lora_run), merge=True, step=10, out=str(tmp_path / "m10"))
    adapter10 = export(str(lora_run), step=10, out=str(tmp_path / "a10"))
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(f"{lora_run}/base")
    peft10 = PeftModel.from_pretrained(base, adapter10.out).eval()
    m10 = logits(AutoModelForCausalLM.from_pretrained(step10.out))
    assert (m10 - logits(peft10)).abs().max() < 1e-5
    assert (m10 - reference).abs().max() > 1e-3

    evals = {m["step"]: m["eval_loss"] for m in read_metrics(lora_run) if "eval_loss" in m}
    best_step = min(
        (loss, s) for s, loss in evals.items() if (lora_run / "checkpoints" / f"step_{s}").is_dir()
    )[1]
    best = export(str(lora_run), merge=True, best=True)
    assert best.step == best_step and best.out == str(lora_run / "export" / "merged-best")
    own = export(str(lora_run), merge=True, step=best_step, out=str(tmp_path / "own"))
    a = logits(AutoModelForCausalLM.from_pretrained(best.out))
    assert torch.equal(a, logits(AutoModelForCausalLM.from_pretrained(own.out)))


def test_export_layout_for_serving(lora_run: Path, tmp_path: Path) -> None:
    """The file set vLLM and transformers read: config + generation config, safetensors shards + index that
    covers every tensor, tokenizer with a chat template; no stray temp dirs; never over an existing dir."""
    from safetensors import safe_open

    out = tmp_path / "serve"
    res = subprocess.run(
        [sys.executable, "-m", "framework.export", str(lora_run), "--merge", "--out", str(out),
         "--max-shard-size", "200KB", "--dtype", "bf16"],
        capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 1 and all(s.startswith("model-") for s in shards)
    assert {p.name for p in out.iterdir()} == {
        *shards, "model.safetensors.index.json", "config.json", "generation_config.json",
        "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "export.json",
    }  # fmt: skip
    index = json.loads((out / "model.safetensors.index.json").read_text())
    stored = {}
    for shard in shards:
        with safe_open(str(out / shard), framework="pt") as f:
            stored.update(dict.fromkeys(f.keys(), shard))
            assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"BF16"}  # noqa: SIM118
    assert index["weight_map"] == stored
    config = json.loads((out / "config.json").read_text())
    assert (
        config["architectures"] == ["LlamaForCausalLM"]
        and config["dtype"] == config["torch_dtype"] == "bfloat16"
    )
    gen = json.loads((out / "generation_config.json").read_text())
    tok = json.loads((out / "tokenizer_config.json").read_text())
    assert gen["eos_token_id"] == config["eos_token_id"] and tok["eos_token"] == "</s>"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    again = subprocess.run(
        [sys.executable, "-m", "framework.export", str(lora_run), "--merge", "--out", str(out)],
        capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert again.returncode == 2 and f"{out} already exists" in again.stderr


def test_zero3_export_after_two_process_run(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from framework.export import export

    run = tmp_path / "z3"
    res = run_cli(
        [
            "hardware.nproc_per_node=2", "hardware.zero_stage=3", "train.max_steps=4",
            "train.micro_batch_size=2", "train.checkpoint_interval=2", "train.eval_interval=2",
            "train.keep_last=3", "train.progress=false", f"hydra.run.dir={run}",
        ],
        cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert (run / "checkpoints" / "step_4" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").is_file()
    reference = logits(readme_model(run))  # adapter/ from the consolidated 16-bit state dict
    final = export(str(run), merge=True)
    step4 = export(str(run), merge=True, step=4, out=str(tmp_path / "s4"))  # zero_to_fp32 of the shards
    assert (logits(AutoModelForCausalLM.from_pretrained(final.out)) - reference).abs().max() < 1e-5
    assert (logits(AutoModelForCausalLM.from_pretrained(step4.out)) - reference).abs().max() < 1e-5
    step2 = export(str(run), merge=True, step=2, out=str(tmp_path / "s2"))
    assert (logits(AutoModelForCausalLM.from_pretrained(step2.out)) - reference).abs().max() > 1e-4


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_generate_from_run_export_and_pretrained_dir(lora_run: Path, tmp_path: Path) -> None:
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from framework.export import export
    from framework.generate import Settings, format_prompt, generate, load

    merged = Path(export(str(lora_run), merge=True, out=str(tmp_path / "merged")).out)
    model = AutoModelForCausalLM.from_pretrained(merged).eval()
    tok = AutoTokenizer.from_pretrained(merged)

    def plain(text: str, n: int = 12) -> str:
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)[
            0, ids.shape[1] :
        ]
        out = out.tolist()
        return tok.decode(
            out[: out.index(tok.eos_token_id)] if tok.eos_token_id in out else out, skip_special_tokens=True
        )

    prompts = ["Add 2 and 3.", "Repeat the word cat 3 times.", "Name a colour."]
    training_format = [f"### Instruction:\n{p}\n\n### Response:\n" for p in prompts]
    expected = [plain(t) for t in training_format]
    assert any(expected)
    s = Settings(max_new_tokens=12, batch_size=2)
    for source in (lora_run, merged):  # the run (dataset template) and the export (its chat template)
        loaded = load(str(source))
        texts = [format_prompt(p, loaded.tokenizer, loaded.dataset) for p in prompts]
        assert texts == training_format
        assert generate(loaded.model, loaded.tokenizer, texts, s) == expected  # batched = one by one

    # A pretrained dir with its own chat template (written here), prompts and chats from a JSONL file.
    pre = tmp_path / "pretrained"
    shutil.copytree(merged, pre)
    (pre / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    items = [
        {"prompt": prompts[0]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompts[1]}]},
    ]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    res = subprocess.run(
        [sys.executable, "-m", "framework.generate", str(pre), "--file", str(tmp_path / "p.jsonl"),
         "--out", str(tmp_path / "preds.jsonl"), "--max-new-tokens", "12"],
        capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    got = [json.loads(x) for x in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert [g["prompt"] if "prompt" in g else g["messages"] for g in got] == [
        i.get("prompt", i.get("messages")) for i in items
    ]
    assert [g["generation"] for g in got] == [
        plain(f"<|user|>{prompts[0]}\n<|assistant|>"),
        plain(f"<|system|>Be brief.\n<|user|>{prompts[1]}\n<|assistant|>"),
    ]
    # The interactive chat: each turn is the whole conversation through the chat template.
    res = subprocess.run(
        [sys.executable, "-m", "framework.generate", str(pre), "--chat", "--max-new-tokens", "12"],
        input=f"{prompts[0]}\n\n", capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.splitlines()[0].removeprefix("> ") == plain(f"<|user|>{prompts[0]}\n<|assistant|>")
    # Sampling is seeded: the same seed gives the same text.
    loaded = load(str(pre))
    sample = Settings(max_new_tokens=8, do_sample=True, temperature=1.5, seed=3)
    assert generate(loaded.model, loaded.tokenizer, ["x"], sample) == generate(
        loaded.model, loaded.tokenizer, ["x"], sample
    )
    del torch


def test_export_from_and_to_s3(lora_run: Path, tmp_path: Path, s3_env: str, s3_bucket: str) -> None:
    """A run dir on S3 (moto) exports like a local one: merged locally, and the adapter written to S3."""
    import torch
    from transformers import AutoModelForCausalLM

    from framework import storage
    from framework.export import export

    remote = f"{s3_bucket}/runs/x"
    storage.upload_dir(lora_run, remote)
    local = export(remote, merge=True, out=str(tmp_path / "merged"))
    assert local.kind == "merged"
    a = logits(AutoModelForCausalLM.from_pretrained(local.out))
    assert torch.equal(a, logits(AutoModelForCausalLM.from_pretrained(str(lora_run / "export" / "merged"))))
    up = export(remote, step=30)  # default out: beside the run, on S3
    assert up.out == f"{remote}/export/adapter-step_30"
    files = set(storage.listdir(up.out))
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "export.json"} <= files
    cfg = json.loads(storage.read_text(f"{up.out}/adapter_config.json"))
    assert cfg["base_model_name_or_path"] == f"{remote}/base"  # the base beside the run, on S3
    from framework.errors import UsageError

    with pytest.raises(UsageError, match="already exists"):
        export(remote, step=30)


def test_full_finetune_export_and_generate(tmp_path: Path) -> None:
    """A full fine-tune: its model/ and a checkpoint export as HF models; --merge is refused; generate reads it."""
    from transformers import AutoModelForCausalLM

    from framework.export import export
    from framework.generate import Settings, format_prompt, generate, load

    run = tmp_path / "full"
    res = run_cli(
        ["recipe=full_finetune", "train.max_steps=4", "train.checkpoint_interval=2", "train.eval_interval=2",
         "train.progress=false", f"hydra.run.dir={run}"],
        cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    reference = logits(AutoModelForCausalLM.from_pretrained(str(run / "model")))
    final = export(str(run))
    assert final.kind == "model" and final.out == str(run / "export" / "model")
    assert (logits(AutoModelForCausalLM.from_pretrained(final.out)) - reference).abs().max() < 1e-5
    step4 = export(str(run), step=4, out=str(tmp_path / "s4"))
    assert (logits(AutoModelForCausalLM.from_pretrained(step4.out)) - reference).abs().max() < 1e-5
    loaded = load(str(run))
    text = format_prompt("Add 2 and 3.", loaded.tokenizer, loaded.dataset)
    exported = load(final.out)
    s = Settings(max_new_tokens=8)
    assert generate(loaded.model, loaded.tokenizer, [text], s) == generate(
        exported.model, exported.tokenizer, [text], s
    )
