"""The prepared cache: its documented format, training reads it without tokenizing, an s3:// root shared by
every job, and require_prepared."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from framework import dataset as data
from framework.config import conf_dir, register
from framework.data import prepared as P
from framework.errors import DataError


@pytest.fixture
def ds_cfg(tmp_path: Path):
    register()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"dataset.cache_dir={tmp_path / 'cache'}"])
    return cfg.dataset


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(data.local_path("pkg://framework.data/sample/tokenizer"))


def test_format_is_a_plain_load_from_disk_directory(ds_cfg, tokenizer) -> None:
    import datasets

    p = data.load_or_prepare(ds_cfg, tokenizer, 42, write=True)
    dd = datasets.load_from_disk(p.location)
    assert set(dd) == {"train", "validation"}
    assert dd["train"].column_names == ["input_ids", "labels", "position_ids"]
    row = dd["train"][0]
    assert len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"]) <= ds_cfg.max_seq_len
    assert row["position_ids"][0] == 0 and row["labels"][0] == -100
    assert set(row["labels"]) - set(row["input_ids"]) == {-100}
    assert (Path(p.location) / P.MARKER).is_file()
    # What training batches: the same rows, padded to max_seq_len.
    rows = data.Rows(p.train, ds_cfg.max_seq_len, tokenizer.pad_token_id)
    assert rows[0].input_ids[: len(row["input_ids"])] == row["input_ids"]
    assert len(rows[0].input_ids) == ds_cfg.max_seq_len and rows[0].n_tokens == len(row["input_ids"])


def test_training_reads_the_prepared_copy_and_tokenizes_nothing(ds_cfg, tokenizer, monkeypatch) -> None:
    first = data.load_or_prepare(ds_cfg, tokenizer, 42, write=True)

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("tokenized although the data was prepared")

    monkeypatch.setattr(P, "tokenize_instructions", boom)
    monkeypatch.setattr(P, "tokenize_chats", boom)
    monkeypatch.setattr(P, "read", boom)
    again = data.load_or_prepare(ds_cfg, tokenizer, 42, write=True)
    assert again.from_cache and again.train.equals(first.train) and again.validation.equals(first.validation)


def test_require_prepared_refuses_to_tokenize(ds_cfg, tokenizer) -> None:
    ds_cfg.require_prepared = True
    with pytest.raises(DataError, match=r"no prepared data at .*run `python -m framework.prepare`") as e:
        data.load_or_prepare(ds_cfg, tokenizer, 42, write=True)
    assert e.value.exit_code == 2


def test_an_s3_root_is_shared(
    ds_cfg, tokenizer, s3_bucket: str, s3_env: None, tmp_path: Path, monkeypatch
) -> None:
    from framework import storage

    ds_cfg.cache_dir = f"{s3_bucket}/prepared"
    p = data.load_or_prepare(ds_cfg, tokenizer, 42, write=False)
    assert p.location.startswith(f"{s3_bucket}/prepared/sample-")
    P.save(p)
    assert storage.exists(storage.join(p.location, P.MARKER))
    # Another job (a fresh local cache) finds it by the same key and reads it without tokenizing.
    monkeypatch.setenv("FRAMEWORK_CACHE", str(tmp_path / "other-node"))
    monkeypatch.setattr(P, "read", lambda *a, **k: (_ for _ in ()).throw(AssertionError("tokenized")))
    found = data.load_or_prepare(ds_cfg, tokenizer, 42, write=False)
    assert found.from_cache and found.train.equals(p.train)


def test_incomplete_copy_is_not_used(ds_cfg, tokenizer) -> None:
    p = data.load_or_prepare(ds_cfg, tokenizer, 42, write=True)
    (Path(p.location) / P.MARKER).unlink()
    assert P.load(p.location) is None


def test_reading_a_prepared_copy_imports_neither_datasets_nor_pandas(
    ds_cfg, tokenizer, tmp_path: Path
) -> None:
    """Training's start pays only for pyarrow (importing datasets + pandas costs seconds)."""
    import subprocess
    import sys

    from omegaconf import OmegaConf

    p = data.load_or_prepare(ds_cfg, tokenizer, 42, write=True)
    code = (
        "import sys; from omegaconf import OmegaConf; from framework import dataset as data;"
        "from transformers import AutoTokenizer;"
        f"tok = AutoTokenizer.from_pretrained(str(data.local_path('pkg://framework.data/sample/tokenizer')));"
        f"ds = OmegaConf.create({OmegaConf.to_container(ds_cfg)!r});"
        "p = data.load_or_prepare(ds, tok, 42, write=False); assert p.from_cache, p.location;"
        "print(p.location, 'datasets' in sys.modules, 'pandas' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [p.location, "False", "False"]
