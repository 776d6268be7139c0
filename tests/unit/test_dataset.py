"""Data pipeline: JSONL errors, template and label masking, overlong handling, splits, packing, batch order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from framework import dataset as data
from framework.config import conf_dir, register
from framework.errors import DataError


@pytest.fixture(scope="module")
def ds_cfg():
    register()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="config").dataset


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(data.local_path("pkg://framework.data/sample/tokenizer"))


def write(path: Path, rows: list[object]) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def examples_of(path: str, ds_cfg):
    ds = ds_cfg.copy()
    ds.path = path
    return data.load_tokenized(path, _tok(), ds)


def _tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(data.local_path("pkg://framework.data/sample/tokenizer"))


def test_malformed_line_names_file_and_line(tmp_path: Path, ds_cfg) -> None:
    f = write(tmp_path / "d.jsonl", [{"instruction": "a", "response": "b"}, "{oops"])
    with pytest.raises(DataError, match=r"d.jsonl: cannot be read as json: line 2, column 2: malformed JSON"):
        examples_of(f, ds_cfg)


def test_missing_field_names_key_and_line(tmp_path: Path, ds_cfg) -> None:
    f = write(
        tmp_path / "d.jsonl", [{"instruction": "a", "response": "b"}, {"instruction": "a", "answer": "b"}]
    )
    with pytest.raises(
        DataError, match=r"d.jsonl row 2 \(line 2\): field 'response' must be a string \(missing"
    ):
        examples_of(f, ds_cfg)


def test_missing_and_empty_files(tmp_path: Path, ds_cfg) -> None:
    with pytest.raises(DataError, match="does not exist; fix dataset.path"):
        examples_of(str(tmp_path / "nope.jsonl"), ds_cfg)
    with pytest.raises(DataError, match="holds no examples"):
        examples_of(write(tmp_path / "e.jsonl", []), ds_cfg)


def test_loss_only_on_response_tokens(tmp_path: Path, ds_cfg, tokenizer) -> None:
    f = write(tmp_path / "d.jsonl", [{"instruction": "Say hi", "input": "", "response": "hi there"}])
    (ex,), stats = examples_of(f, ds_cfg)
    prompt = tokenizer(ds_cfg.template.format(prompt="Say hi"), add_special_tokens=False)["input_ids"]
    assert ex.labels[: len(prompt)] == [data.IGNORE_INDEX] * len(prompt)
    assert ex.labels[len(prompt) :] == ex.input_ids[len(prompt) :]
    assert ex.input_ids[-1] == tokenizer.eos_token_id
    assert stats.examples == 1 and stats.truncated == stats.dropped == 0


def test_overlong_truncated_or_dropped_and_counted(tmp_path: Path, ds_cfg) -> None:
    long = {"instruction": "x", "input": "", "response": "word " * 400}
    short = {"instruction": "y", "input": "", "response": "ok"}
    f = write(tmp_path / "d.jsonl", [long, short])
    out, stats = examples_of(f, ds_cfg)
    assert stats.truncated == 1 and len(out) == 2 and len(out[0].input_ids) == ds_cfg.max_seq_len
    ds_drop = ds_cfg.copy()
    ds_drop.overlong = "drop"
    out, stats = examples_of(f, ds_drop)
    assert stats.dropped == 1 and len(out) == 1


def test_input_field_uses_input_template(tmp_path: Path, ds_cfg, tokenizer) -> None:
    f = write(tmp_path / "d.jsonl", [{"instruction": "Add", "input": "1 and 2", "response": "3"}])
    (ex,), _ = examples_of(f, ds_cfg)
    assert "### Input:\n1 and 2" in tokenizer.decode(ex.input_ids)


def test_split_is_deterministic_and_disjoint() -> None:
    exs = [data.Tokenized([i, i], [i, i]) for i in range(100)]
    tr1, va1 = data.split(exs, 0.1, seed=3)
    tr2, va2 = data.split(exs, 0.1, seed=3)
    assert [e.input_ids for e in va1] == [e.input_ids for e in va2]
    assert len(va1) == 10 and len(tr1) == 90
    assert not {e.input_ids[0] for e in va1} & {e.input_ids[0] for e in tr1}


def test_packing_restarts_positions_and_masks_boundaries() -> None:
    exs = [
        data.Tokenized([1, 2, 3], [-100, 2, 3]),
        data.Tokenized([4, 5], [-100, 5]),
        data.Tokenized([6] * 6, [6] * 6),
    ]
    rows = data.pack(exs, max_len=8, pad_id=0, packing=True, seed=0)
    assert all(len(r.input_ids) == len(r.labels) == len(r.position_ids) == 8 for r in rows)
    assert sum(r.n_tokens for r in rows) == 11
    for r in rows:
        starts = [i for i, p in enumerate(r.position_ids[: r.n_tokens]) if p == 0]
        assert all(r.labels[i] == data.IGNORE_INDEX for i in starts)  # no prediction across documents
        assert r.labels[r.n_tokens :] == [data.IGNORE_INDEX] * (8 - r.n_tokens)
    unpacked = data.pack(exs, max_len=8, pad_id=0, packing=False, seed=0)
    assert len(unpacked) == 3


def test_batches_shard_ranks_and_resume_exactly() -> None:
    rows = [data.Sequence([i], [i], [0], 1) for i in range(20)]
    r0 = data.Batches(rows, micro=2, world=2, rank=0, seed=1)
    r1 = data.Batches(rows, micro=2, world=2, rank=1, seed=1)
    assert r0.per_epoch == 5
    seen = [x.input_ids[0] for b in range(5) for x in r0.batch(b) + r1.batch(b)]
    assert sorted(seen) == list(range(20))  # one epoch covers every row once, across ranks
    assert [x.input_ids for x in r0.batch(7)] == [
        x.input_ids for x in data.Batches(rows, 2, 2, 0, 1).batch(7)
    ]
    assert [x.input_ids for x in r0.batch(5)] != [x.input_ids for x in r0.batch(0)]  # new epoch, new order


def test_prepared_cache_is_keyed_by_content(ds_cfg, tokenizer, tmp_path: Path) -> None:
    f = write(tmp_path / "d.jsonl", [{"instruction": f"q{i}", "response": f"a{i}"} for i in range(20)])
    ds = ds_cfg.copy()
    ds.path, ds.cache_dir = f, str(tmp_path / "cache")
    first = data.load_or_prepare(ds, tokenizer, 0, write=True)
    assert not first.from_cache and len(list((tmp_path / "cache").iterdir())) == 1
    again = data.load_or_prepare(ds, tokenizer, 0, write=True)
    assert again.from_cache and again.train.equals(first.train)
    (tmp_path / "d.jsonl").write_text("garbage that would fail to parse\n")
    with pytest.raises(DataError):
        data.load_or_prepare(
            ds, tokenizer, 0, write=True
        )  # a changed file is a new cache key, so it is re-read
    for key, value in (("max_seq_len", 128), ("packing", False), ("template", "Q: {prompt}\nA: ")):
        changed = ds.copy()
        changed.path = write(
            tmp_path / "d.jsonl", [{"instruction": f"q{i}", "response": f"a{i}"} for i in range(20)]
        )
        changed[key] = value
        assert data.load_or_prepare(changed, tokenizer, 0, write=False).location != first.location, key
    assert data.load_or_prepare(ds, tokenizer, 1, write=False).location != first.location  # the seed
