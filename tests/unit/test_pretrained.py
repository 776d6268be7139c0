"""A pretrained checkpoint is read, not assumed: config.json at validation (local dir, HF cache snapshot), the
architecture and what the user set, the memory check and thread policy, the recipe defaults, unreadable weights."""

from __future__ import annotations

import importlib.util
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from framework import pretrained
from framework.config import conf_dir, register, resolved
from framework.errors import ConfigError
from framework.validate import check, validate, with_schema
from tests.pretrained_fixtures import LLAMA_3_1_8B, LLAMA_3_2_1B, TINY, write_checkpoint, write_hub_cache


@pytest.fixture(autouse=True)
def _no_hydra_left() -> Iterator[None]:
    yield
    HydraConfig.instance().cfg = None  # type: ignore[assignment]


def as_run(*overrides: str) -> DictConfig:
    """Compose as ``python -m framework OVERRIDES`` does: Hydra's config (overrides, choices) set for the job."""
    register()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def checked(*overrides: str) -> DictConfig:
    return check(as_run(*overrides))


def problems(*overrides: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        checked(*overrides)
    return e.value.problems


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    return write_checkpoint(tmp_path / "TinyLlama-Chat")


def test_pretrained_architecture_replaces_a_mismatching_group(tiny_dir: Path) -> None:
    cfg = checked("model=llama3_1_8b", f"model.pretrained={tiny_dir}")
    m = cfg.model
    got = {k: m[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")}
    assert got == {"hidden_size": 32, "intermediate_size": 96, "num_hidden_layers": 2, "vocab_size": 2052}
    assert (m.num_key_value_heads, m.max_position_embeddings, m.tie_word_embeddings) == (2, 1024, True)
    assert (m.name, m.architecture, m.rms_norm_eps) == ("TinyLlama-Chat", "LlamaForCausalLM", 1e-6)
    plain = resolved(cfg)  # what config.yaml records
    assert plain["model"]["hidden_size"] == 32 and plain["run_name"] == "lora_llama-TinyLlama-Chat"


def test_explicit_value_contradicting_the_checkpoint_names_both(tiny_dir: Path) -> None:
    found = problems(f"model.pretrained={tiny_dir}", "model.hidden_size=128", "model.num_hidden_layers=2")
    assert len(found) == 1, found  # num_hidden_layers=2 agrees with the checkpoint
    assert "model.hidden_size=128 (set on the command line)" in found[0]
    assert f"{tiny_dir}/config.json has hidden_size=32" in found[0]


def test_tied_checkpoint_on_the_default_group_needs_no_train_embeddings_flag(tiny_dir: Path) -> None:
    cfg = checked(f"model.pretrained={tiny_dir}")  # tiny_llama's group says train_embeddings: true
    assert cfg.model.tie_word_embeddings is True and cfg.model.train_embeddings is False
    found = problems(f"model.pretrained={tiny_dir}", "model.train_embeddings=true")
    assert "model.train_embeddings=true needs untied embeddings" in found[0]
    assert "tie_word_embeddings=true" in found[0]


def test_random_init_tied_with_train_embeddings_is_refused_at_validation() -> None:
    found = problems("model.tie_word_embeddings=true")
    assert any("model.train_embeddings=true needs model.tie_word_embeddings=false" in p for p in found)


def test_recipe_defaults_for_pretrained_and_the_demo_keeps_its_own(tiny_dir: Path) -> None:
    demo = checked()
    assert (demo.optim.lr, demo.scheduler.warmup_steps, demo.lora.dropout, len(demo.lora.target_modules)) == (
        2e-3,
        5,
        0.05,
        7,
    )
    assert demo.model.train_embeddings is True
    pre = checked(f"model.pretrained={tiny_dir}")  # the default group: the demo's values would not suit it
    assert (pre.optim.lr, pre.optim.weight_decay, pre.scheduler.warmup_steps, pre.scheduler.min_lr_ratio) == (
        3e-4,
        0.01,
        100,
        0.0,
    )
    assert (pre.lora.r, pre.lora.alpha, pre.lora.dropout) == (8, 16, 0.0)
    assert "k_proj" not in pre.lora.target_modules
    mine = checked(f"model.pretrained={tiny_dir}", "optim.lr=1e-3", "lora.dropout=0.1")
    assert (mine.optim.lr, mine.lora.dropout, mine.scheduler.warmup_steps) == (1e-3, 0.1, 100)
    group = checked("model=llama3_2_1b", "train.max_steps=300")
    assert (group.optim.lr, group.lora.dropout) == (3e-4, 0.0)
    full = checked("recipe=full_finetune")
    assert (full.optim.lr, full.scheduler.name) == (1e-3, "cosine")  # the demo's full fine-tune, unchanged
    full_pre = checked("recipe=full_finetune", f"model.pretrained={tiny_dir}")
    assert (full_pre.optim.lr, full_pre.scheduler.name) == (2e-5, "constant")


def test_hub_id_resolves_through_a_cache_snapshot(
    tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hf_home = tmp_path / "hf"
    snapshot = write_hub_cache(hf_home, "acme/TinyLlama-Chat", tiny_dir)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = checked("model=llama3_2_1b", "model.pretrained=acme/TinyLlama-Chat")
    assert (cfg.model.hidden_size, cfg.model.revision, cfg.model.name) == (
        32,
        snapshot.name,
        "TinyLlama-Chat",
    )
    assert pretrained.local_dir("acme/TinyLlama-Chat", cfg.model.revision) == snapshot
    assert pretrained.local_dir("acme/TinyLlama-Chat") == snapshot  # refs/main

    found = problems("model.pretrained=acme/not-downloaded")
    assert "acme/not-downloaded is not in the Hugging Face cache" in found[0]
    assert str(hf_home / "hub") in found[0] and "hf download acme/not-downloaded" in found[0]


def test_memory_check_uses_the_checkpoint_size(tmp_path: Path) -> None:
    big = write_checkpoint(tmp_path / "Llama-3.1-8B-Instruct", LLAMA_3_1_8B, sparse=True)
    # The default group is the 0.3M-parameter tiny_llama: only the checkpoint's config.json says 8B.
    found = problems("recipe=full_finetune", "hardware=h200x1", f"model.pretrained={big}")
    assert len(found) == 1 and found[0].startswith("estimated peak memory per GPU"), found
    assert "hardware.gpu_memory_gb=141" in found[0]
    lora = checked("hardware=h200x1", f"model.pretrained={big}", "model.gradient_checkpointing=true")
    assert lora.model.hidden_size == 4096

    from framework.memory import estimate
    from framework.train import cpu_threads

    assert estimate(lora).params_total > 8e9
    cpu = checked(f"model.pretrained={big}", "dataset.max_seq_len=256")
    assert cpu_threads(cpu, available=8) == 8  # the 8B model's matmuls split; tiny_llama would get 1


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml")))
def test_every_preset_validates_with_its_checkpoint(tmp_path: Path, experiment: str) -> None:
    """Each preset is one word away from a run: with its checkpoint present (here: config.json and the weights'
    headers, as sparse files), it validates, memory check included; QLoRA also needs bitsandbytes."""
    hub_id = str(as_run(f"experiment={experiment}").model.pretrained)
    arch = LLAMA_3_2_1B if "1B" in hub_id else LLAMA_3_1_8B
    ckpt = write_checkpoint(tmp_path / hub_id.split("/")[-1], arch, sparse=True)
    cfg = with_schema(as_run(f"experiment={experiment}", f"model.pretrained={ckpt}"))
    found = validate(cfg, gpu_count=None)
    if cfg.model.load_in_4bit and importlib.util.find_spec("bitsandbytes") is None:
        assert found == ["model.load_in_4bit=true (QLoRA) needs bitsandbytes: pip install 'framework[qlora]'"]
    else:
        assert found == []
    assert cfg.model.hidden_size == arch["hidden_size"] and cfg.hardware.accelerator == "cuda"


def test_untrainable_architecture_is_refused(tmp_path: Path) -> None:
    bert = {
        "architectures": ["BertForMaskedLM"],
        "model_type": "bert",
        "hidden_size": 768,
        "vocab_size": 30522,
    }
    d = tmp_path / "bert-base-uncased"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(bert))
    found = problems(f"model.pretrained={d}")
    assert "is a 'bert' checkpoint (BertForMaskedLM)" in found[0] and "llama" in found[0]


def test_not_a_model_directory(tmp_path: Path, tiny_dir: Path) -> None:
    assert "does not exist" in problems(f"model.pretrained={tmp_path}/nope")[0]
    assert "has no config.json" in problems(f"model.pretrained={tmp_path}")[0]
    assert "is a file" in problems(f"model.pretrained={tiny_dir / 'model.safetensors'}")[0]
    assert "s3:// names no bucket or path" in problems("model.pretrained=s3://")[0]
    assert (
        "applies to a Hugging Face model id"
        in problems(f"model.pretrained={tiny_dir}", "model.revision=v1")[0]
    )
    if importlib.util.find_spec("gcsfs") is None:
        assert "gs:// cannot be read here" in problems("model.pretrained=gs://bucket/m")[0]
    (tiny_dir / "config.json").write_text("{not json")
    assert "config.json is not valid JSON" in problems(f"model.pretrained={tiny_dir}")[0]


# ------------------------------------------------------------------------------------- unreadable weights


def _corrupt(path: Path, case: str) -> None:
    f = path / "model.safetensors"
    data = f.read_bytes()
    if case == "truncated":
        f.write_bytes(data[: len(data) // 2])
    elif case == "corrupt_header":
        (n,) = struct.unpack("<Q", data[:8])
        f.write_bytes(data[:8] + b"\x00garbage" + data[16:])
    elif case == "oversized_header":
        f.write_bytes(struct.pack("<Q", 1 << 40) + data[8:])
    elif case == "random_bytes":
        import numpy as np

        f.write_bytes(np.random.default_rng(1).bytes(len(data)))
    elif case == "no_weights":
        f.unlink()


@pytest.mark.parametrize(
    "case,expected",
    [
        ("truncated", "truncated"),
        ("corrupt_header", "header is not valid JSON"),
        ("oversized_header", "the safetensors header claims"),
        ("random_bytes", "the safetensors header claims"),
        ("no_weights", "has no weights"),
    ],
)
def test_unreadable_weights_name_the_file(tiny_dir: Path, case: str, expected: str) -> None:
    _corrupt(tiny_dir, case)
    found = problems(f"model.pretrained={tiny_dir}")
    assert any(expected in p for p in found), found
    if case != "no_weights":
        assert any(str(tiny_dir / "model.safetensors") in p for p in found), found


def test_config_that_does_not_match_the_weights_names_file_key_and_shapes(tmp_path: Path) -> None:
    d = write_checkpoint(tmp_path / "m", {**TINY, "intermediate_size": 128})
    (d / "config.json").write_text(json.dumps(TINY))  # config says 96, the weights have 128
    found = problems(f"model.pretrained={d}")
    assert any(
        "model.safetensors holds layers.0.mlp.gate_proj.weight with shape [128, 32]" in p and "[96, 32]" in p
        for p in found
    ), found


@pytest.mark.parametrize("case", ["truncated", "random_bytes"])
def test_unreadable_torch_bin_weights(tiny_dir: Path, case: str) -> None:
    (tiny_dir / "model.safetensors").unlink()
    data = b"PK\x03\x04" + bytes(2000)  # the start of a zip archive, cut off
    if case == "random_bytes":
        import numpy as np

        data = np.random.default_rng(2).bytes(2000)
    (tiny_dir / "pytorch_model.bin").write_bytes(data)
    found = problems(f"model.pretrained={tiny_dir}")
    assert any(f"{tiny_dir / 'pytorch_model.bin'} is not a torch checkpoint" in p for p in found), found


def test_checkpoint_without_tokenizer(tmp_path: Path) -> None:
    d = write_checkpoint(tmp_path / "m", tokenizer=False)
    assert "has no tokenizer" in problems(f"model.pretrained={d}")[0]
    cfg = checked(f"model.pretrained={d}", "model.tokenizer=pkg://framework.data/sample/tokenizer")
    assert cfg.model.hidden_size == 32


def test_hub_snapshot_with_config_only_offline(
    tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for f in tiny_dir.iterdir():
        if f.name != "config.json":
            f.unlink()
    write_hub_cache(tmp_path / "hf", "acme/partial", tiny_dir)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    found = problems("model.pretrained=acme/partial")
    assert "has its config.json but not its weights" in found[0] and "hf download acme/partial" in found[0]


def test_hub_id_downloads_when_the_hub_is_reachable(
    tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fake_hub import fake_hub

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(
        "huggingface_hub.constants.HF_HUB_OFFLINE", False
    )  # read at import (conftest sets it)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_123")
    with fake_hub("acme/TinyLlama-Chat", tiny_dir) as (endpoint, seen):
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        cfg = checked("model.pretrained=acme/TinyLlama-Chat")  # validation fetches config.json only
        assert (cfg.model.hidden_size, cfg.model.revision) == (32, "f" * 40)
        assert {p for p, _ in seen} == {"/acme/TinyLlama-Chat/resolve/main/config.json"}
        snapshot = pretrained.local_dir("acme/TinyLlama-Chat", cfg.model.revision)  # the build downloads all
    assert snapshot == tmp_path / "hf" / "hub" / "models--acme--TinyLlama-Chat" / "snapshots" / ("f" * 40)
    assert (snapshot / "model.safetensors").read_bytes() == (tiny_dir / "model.safetensors").read_bytes()
    assert seen and all(auth == "Bearer hf_test_token_123" for _, auth in seen)


def test_s3_checkpoint_config_at_validation_and_weights_checked_once_downloaded(
    s3_bucket: str, tmp_path: Path
) -> None:
    from framework import storage
    from framework.model import load_pretrained

    src = write_checkpoint(tmp_path / "Tiny-S3", {**TINY, "tie_word_embeddings": False})
    uri = f"{s3_bucket}/models/Tiny-S3"
    storage.upload_dir(src, uri)
    cfg = checked("model=llama3_2_1b", f"model.pretrained={uri}")
    assert (cfg.model.hidden_size, cfg.model.tie_word_embeddings, cfg.model.name) == (32, False, "Tiny-S3")
    model = load_pretrained(cfg, dtype=None)
    assert model.config.hidden_size == 32

    blob = (src / "model.safetensors").read_bytes()
    storage.write_bytes_atomic(f"{uri}-cut/model.safetensors", blob[: len(blob) - 64])
    storage.put_file(src / "config.json", f"{uri}-cut/config.json")
    cut = checked(f"model.pretrained={uri}-cut", "model.tokenizer=pkg://framework.data/sample/tokenizer")
    with pytest.raises(ConfigError, match="truncated"):
        load_pretrained(cut, dtype=None)


def test_unreadable_storage_is_left_to_the_pod_or_a_runtime_error(s3_bucket: str) -> None:
    from framework.storage import StorageError

    cfg = with_schema(as_run("model.pretrained=s3://no-such-bucket-for-this-test/m"))
    assert pretrained.apply(cfg, here=False) == []  # Kubernetes: the pods read it with their credentials
    assert cfg.model.name == "tiny_llama"
    with pytest.raises(StorageError, match="does not exist"):
        pretrained.apply(cfg, here=True)  # here: exit 1 (retryable), not a config error


def test_neither_a_path_nor_a_hub_id() -> None:
    found = problems("model.pretrained=acme--x/y..")
    assert "does not exist locally and is not a valid Hugging Face model id" in found[0]
