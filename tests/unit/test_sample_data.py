"""The shipped sample dataset and tokenizer (framework/data/sample/) are valid and reproducible."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from framework.data import build_sample

SAMPLE = Path(build_sample.__file__).resolve().parent / "sample"
FIELDS = ("instruction", "input", "response")


def _records() -> list[dict[str, str]]:
    lines = (SAMPLE / "train.jsonl").read_text(encoding="ascii").splitlines()
    return [json.loads(line) for line in lines]


def test_jsonl_shape() -> None:
    records = _records()
    assert len(records) >= 600
    keys = set()
    for rec in records:
        assert isinstance(rec, dict)
        for field in FIELDS:
            assert isinstance(rec.get(field), str), (field, rec)
        assert rec["instruction"] and rec["response"]
        keys.add((rec["instruction"], rec["input"]))
    assert len(keys) == len(records), "duplicate (instruction, input) pairs"


def test_tokenizer_loads_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(SAMPLE / "tokenizer"))
    assert len(tok) <= 2048
    assert tok.eos_token == "</s>" and tok.eos_token_id is not None
    assert tok.pad_token == "<pad>" and tok.pad_token_id is not None
    assert tok.pad_token_id != tok.eos_token_id

    text = "### Instruction:\nWhat is 17 plus 25?\n\n### Response:\n17 plus 25 is 42."
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    # No special tokens are added on encoding: the framework appends eos itself.
    assert tok.bos_token_id not in ids and tok.eos_token_id not in ids
    assert max(ids) < 2048


def test_builder_reproduces_shipped_files(tmp_path: Path) -> None:
    build_sample.build(tmp_path)
    for rel in ("train.jsonl", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"):
        assert (tmp_path / rel).read_bytes() == (SAMPLE / rel).read_bytes(), rel
    shipped = sorted(p.name for p in (SAMPLE / "tokenizer").iterdir())
    assert sorted(p.name for p in (tmp_path / "tokenizer").iterdir()) == shipped
