"""Bad data, table-driven, through ``framework.prepare``'s entry point: exit code 2, one message naming the file
and the row or line and the fix, never a traceback. UTF-8 with or without a byte-order mark is accepted."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from framework import prepare
from tests.data_fixtures import SAMPLE_TOKENIZER, chat_tokenizer, save_tokenizer

GOOD = {"instruction": "Say hi", "input": "", "response": "hi"}
CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def jsonl(*rows: object) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def parquet_bytes(tmp: Path) -> bytes:
    import datasets

    datasets.Dataset.from_list([GOOD]).to_parquet(str(tmp / "x.parquet"))
    return (tmp / "x.parquet").read_bytes()


# name -> (file name, content (bytes, or a function of tmp_path), extra overrides, expected message pieces)
CASES: dict[str, tuple[str, bytes | Callable[[Path], bytes], list[str], list[str]]] = {
    "latin-1 bytes": (
        "d.jsonl",
        jsonl(GOOD) + '{"instruction": "caf\xe9", "response": "x"}\n'.encode("latin-1"),
        [],
        ["d.jsonl", "line 2, column 21: byte 0xe9 is not UTF-8", "re-save it as UTF-8"],
    ),
    "utf-16 with BOM": (
        "d.jsonl",
        jsonl(GOOD).decode().encode("utf-16"),
        [],
        ["d.jsonl", "UTF-16", "re-save"],
    ),
    "binary garbage as jsonl": (
        "d.jsonl",
        bytes(range(256)) * 8,
        [],
        ["d.jsonl", "binary, not JSON text", "real extension"],
    ),
    "parquet named jsonl": (
        "d.jsonl",
        parquet_bytes,
        [],
        ["d.jsonl", "is a parquet file; give it a .parquet name"],
    ),
    "lone surrogate": (
        "d.jsonl",
        jsonl(GOOD, '{"instruction": "\\ud800", "response": "x"}'),
        [],
        ["d.jsonl", "line 2", "lone UTF-16 surrogate"],
    ),
    "deeply nested line": (
        "d.jsonl",
        jsonl(GOOD, '{"instruction": ' + "[" * 5000 + "]" * 5000 + ', "response": "x"}'),
        [],
        ["d.jsonl", "line 2", "nested deeper than"],
    ),
    "deeply nested array": (
        "d.json",
        ("[" * 100_000 + "]" * 100_000).encode(),
        [],
        ["d.json", "nested deeper"],
    ),
    "malformed line": (
        "d.jsonl",
        jsonl(GOOD, '{"instruction": "a",'),
        [],
        ["d.jsonl", "line 2", "malformed JSON"],
    ),
    "missing columns": (
        "d.jsonl",
        jsonl({"question": "q", "answer": "a"}),
        [],
        ["d.jsonl row 1 (line 1)", "columns ['question', 'answer']", "prompt_field=question"],
    ),
    "columns of another format": (
        "d.jsonl",
        jsonl(CHAT),
        ["dataset.format=alpaca"],
        ["row 1", "format alpaca needs `instruction` and `output`", "formats that fit this row: chat"],
    ),
    "null response": (
        "d.jsonl",
        jsonl(GOOD, {"instruction": "a", "response": None}),
        [],
        ["d.jsonl row 2 (line 2)", "field 'response' must be a string (missing (null))"],
    ),
    "unknown role": (
        "d.jsonl",
        jsonl(
            CHAT, {"messages": [{"role": "narrator", "content": "x"}, {"role": "assistant", "content": "y"}]}
        ),
        ["dataset=chat"],
        ["d.jsonl row 2 (line 2) message 1", "role 'narrator' is not known", "system, user, assistant, tool"],
    ),
    "no assistant turn": (
        "d.jsonl",
        jsonl(CHAT, {"messages": [{"role": "user", "content": "x"}]}),
        ["dataset=chat"],
        ["d.jsonl row 2 (line 2)", "no assistant turn", "train_on=all"],
    ),
    "row over the size limit": (
        "d.jsonl",
        jsonl(GOOD, {"instruction": "x" * 5000, "response": "y"}),
        ["dataset.max_row_chars=1000"],
        ["d.jsonl row 2 (line 2)", "over dataset.max_row_chars=1000"],
    ),
    "rows of different types": (
        "d.jsonl",
        jsonl(GOOD, {"instruction": ["a", "list"], "response": "x"}),
        [],
        ["d.jsonl row 2 (line 2)", "field 'instruction' must be a string (list)"],
    ),
    "directory without data": ("empty_dir/", b"", [], ["empty_dir", "directory without data files"]),
}


@pytest.fixture(scope="module")
def chat_tok(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tokenizer(chat_tokenizer("chatml"), tmp_path_factory.mktemp("tok") / "chatml")


def run_prepare(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = prepare.main(args)
    out = capsys.readouterr()
    return code, out.err + out.out


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_data_exits_2_naming_file_row_and_fix(
    case: str, tmp_path: Path, chat_tok: str, capsys: pytest.CaptureFixture[str]
) -> None:
    name, content, extra, expected = CASES[case]
    path = tmp_path / name
    if name.endswith("/"):
        path.mkdir()
        (path / "README.md").write_text("no data here")
    else:
        path.write_bytes(content(tmp_path) if callable(content) else content)
    tok = chat_tok if "dataset=chat" in extra else SAMPLE_TOKENIZER
    args = [
        "dataset=jsonl",
        *extra,
        f"dataset.path={path}",
        f"dataset.tokenizer={tok}",
        "dataset.max_seq_len=256",
    ]
    code, text = run_prepare(args, capsys)
    assert code == 2, text
    assert "Traceback" not in text
    for piece in expected:
        assert piece in text, (piece, text)


def test_utf8_with_and_without_bom_is_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = jsonl(*[{"instruction": f"q{i}", "input": "", "response": f"a{i}"} for i in range(20)])
    for name, content in (("plain.jsonl", rows), ("bom.jsonl", b"\xef\xbb\xbf" + rows)):
        (tmp_path / name).write_bytes(content)
        args = ["dataset=jsonl", f"dataset.path={tmp_path / name}", f"dataset.tokenizer={SAMPLE_TOKENIZER}",
                "dataset.max_seq_len=256", f"dataset.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
        code, text = run_prepare(args, capsys)
        assert code == 0, text
        assert "20 examples" in text


def test_overlong_examples_are_counted_per_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    long = {"instruction": "x", "input": "", "response": "word " * 200}
    rows = jsonl(long, long, *[{"instruction": f"q{i}", "input": "", "response": f"a{i}"} for i in range(20)])
    (tmp_path / "d.jsonl").write_bytes(rows)
    base = ["dataset=jsonl", f"dataset.path={tmp_path / 'd.jsonl'}", f"dataset.tokenizer={SAMPLE_TOKENIZER}",
            "dataset.max_seq_len=64", f"dataset.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    code, text = run_prepare(base, capsys)
    assert code == 0 and "2 truncated, 0 dropped" in text, text
    code, text = run_prepare([*base, "dataset.overlong=drop"], capsys)
    assert code == 0 and "0 truncated, 2 dropped" in text, text


def test_config_problems_are_listed_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f").write_text("x")
    args = ["dataset=jsonl", f"dataset.path={tmp_path}/nope.jsonl", "dataset.format=sharegpt",
            "dataset.train_on=everything", "dataset.input_template='{prompt} {nope}'",
            f"dataset.cache_dir={tmp_path / 'f'}", "dataset.chat_template=/no/such.jinja"]  # fmt: skip
    code, text = run_prepare(args, capsys)
    assert code == 2, text
    for piece in (
        "nope.jsonl does not exist",
        "dataset.format='sharegpt' is not valid; choose one of: auto, chat, alpaca, prompt_response",
        "dataset.train_on='everything' is not valid",
        "uses {nope}, which does not exist",
        "is a file; point it at a directory",
        "dataset.chat_template=/no/such.jinja is neither a Jinja template",
    ):
        assert piece in text, (piece, text)
