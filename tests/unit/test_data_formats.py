"""Every file format x every row style reads into the same tokenized examples as the JSONL file of that style;
``dataset.format=auto`` says what it chose."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from framework.config import DatasetConfig
from framework.data.prepared import tokenize_file
from framework.data.rows import sources_of
from tests.data_fixtures import CONVERSATION, chat_tokenizer

N = 6


def rows_for(style: str) -> list[dict]:
    out = []
    for i in range(N):
        if style == "messages":
            msgs = [dict(m) for m in CONVERSATION]
            msgs[2]["content"] = f"{i} plus {i} is {2 * i}."
            out.append({"messages": msgs})
        elif style == "conversations":
            names = {"system": "system", "user": "human", "assistant": "gpt"}
            out.append({"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in CONVERSATION[:3]]
                        + [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]})  # fmt: skip
        elif style == "alpaca":
            out.append(
                {"instruction": f"Add {i} and {i}.", "input": "" if i % 2 else f"{i}", "output": f"{2 * i}"}
            )
        else:
            out.append({"question": f"What is {i} times 3?", "answer": f"{3 * i}"})
    return out


def write(fmt: str, rows: list[dict], root: Path) -> str:
    import datasets

    root.mkdir(parents=True, exist_ok=True)
    flat = [{k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows]
    if fmt == "jsonl":
        (root / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(root / "d.jsonl")
    if fmt == "json":
        (root / "d.json").write_text(json.dumps(rows, indent=1))
        return str(root / "d.json")
    if fmt == "parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(root / "d.parquet"))
        return str(root / "d.parquet")
    if fmt == "csv":  # conversations as JSON text in a column
        datasets.Dataset.from_list(flat).to_csv(str(root / "d.csv"), index=False)
        return str(root / "d.csv")
    if fmt == "save_to_disk":
        datasets.Dataset.from_list(rows).save_to_disk(str(root / "saved"))
        return str(root / "saved")
    if fmt == "dataset_dict":
        datasets.DatasetDict(
            {"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:1])}
        ).save_to_disk(str(root / "dd"))
        return str(root / "dd")
    if fmt == "jsonl_shards":
        for k in range(2):
            (root / "shards").mkdir(exist_ok=True)
            part = rows[k * len(rows) // 2 : (k + 1) * len(rows) // 2]
            (root / "shards" / f"part-{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
        return str(root / "shards")
    if fmt == "parquet_shards":
        (root / "pq").mkdir(exist_ok=True)
        for k in range(2):
            datasets.Dataset.from_list(rows[k * len(rows) // 2 : (k + 1) * len(rows) // 2]).to_parquet(
                str(root / "pq" / f"{k}.parquet")
            )
        return str(root / "pq")
    raise AssertionError(fmt)


def ds_for(path: str, style: str, **kw: object):
    ds = OmegaConf.structured(DatasetConfig(name="t", path=path, max_seq_len=4096))
    if style == "prompt_response":
        ds.prompt_field, ds.response_field = "question", "answer"
    for k, v in kw.items():
        ds[k] = v
    return ds


@pytest.fixture(scope="module")
def tok():
    return chat_tokenizer("chatml")


FILE_FORMATS = [
    "jsonl",
    "json",
    "parquet",
    "csv",
    "save_to_disk",
    "dataset_dict",
    "jsonl_shards",
    "parquet_shards",
]
STYLES = ["messages", "conversations", "alpaca", "prompt_response"]


@pytest.mark.parametrize("style", STYLES)
def test_every_file_format_reads_like_jsonl(style: str, tok, tmp_path: Path) -> None:
    rows = rows_for(style)
    ref_ds = ds_for(write("jsonl", rows, tmp_path / "ref"), style)
    ref, _, fmt = tokenize_file(ref_ds.path, "dataset.path", sources_of(ref_ds)[0], tok, ref_ds)
    assert fmt == {"messages": "chat", "conversations": "chat"}.get(style, style)
    assert len(ref) == N
    for file_format in FILE_FORMATS[1:]:
        ds = ds_for(write(file_format, rows, tmp_path / file_format), style)
        got, stats, got_fmt = tokenize_file(ds.path, "dataset.path", sources_of(ds)[0], tok, ds)
        assert got_fmt == fmt, file_format
        assert [(e.input_ids, e.labels) for e in got] == [(e.input_ids, e.labels) for e in ref], file_format
        assert stats.examples == N


def test_auto_says_what_it_chose(tok, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write("jsonl", rows_for("alpaca"), tmp_path)
    ds = ds_for(path, "alpaca")
    with caplog.at_level(logging.INFO):
        tokenize_file(path, "dataset.path", sources_of(ds)[0], tok, ds)
    assert "dataset.format=auto chose alpaca" in caplog.text


def test_dataset_dict_split_is_chosen(tok, tmp_path: Path) -> None:
    path = write("dataset_dict", rows_for("alpaca"), tmp_path)
    ds = ds_for(path, "alpaca", split="test")
    got, _, _ = tokenize_file(path, "dataset.path", sources_of(ds)[0], tok, ds)
    assert len(got) == 1


def test_alpaca_output_without_renaming_matches_the_instruction_template(tok, tmp_path: Path) -> None:
    path = write("jsonl", [{"instruction": "Say hi", "input": "", "output": "hi"}], tmp_path)
    ds = ds_for(path, "alpaca")
    (ex,), _, _ = tokenize_file(path, "dataset.path", sources_of(ds)[0], tok, ds)
    prompt = tok("### Instruction:\nSay hi\n\n### Response:\n", add_special_tokens=False)["input_ids"]
    assert ex.input_ids == prompt + tok("hi", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ex.labels[: len(prompt)] == [-100] * len(prompt)
