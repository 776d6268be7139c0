"""Weighted mixtures: the training split draws examples in proportion to the weights (within 2% over a few
thousand), deterministically per seed; validation keeps each source's own held-out part; the prepare step
reports the achieved shares."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from framework.config import DatasetConfig, MixtureSource
from framework.data.prepared import build
from tests.data_fixtures import chat_tokenizer, write_jsonl

N = 2000


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("mix")
    alpaca = [{"instruction": f"Add {i} and 1.", "input": "", "output": f"{i + 1}"} for i in range(N)]
    chat = [
        {"messages": [{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i}"}]}
        for i in range(N)
    ]
    return {"alpaca": write_jsonl(root / "a.jsonl", alpaca), "chat": write_jsonl(root / "c.jsonl", chat)}


def mixture(files: dict[str, str], weights: tuple[float, float]):
    return OmegaConf.structured(
        DatasetConfig(
            name="mix",
            path=None,
            max_seq_len=128,
            val_fraction=0.05,
            sources=[
                MixtureSource(path=files["alpaca"], format="alpaca", weight=weights[0], name="alpaca"),
                MixtureSource(
                    path=files["chat"], format="chat", weight=weights[1], name="chat", val_fraction=0.1
                ),
            ],
        )
    )


@pytest.fixture(scope="module")
def tok():
    return chat_tokenizer("chatml")


def source_of(tok, ex) -> str:
    return "chat" if tok.convert_tokens_to_ids("<|im_start|>") in ex.input_ids else "alpaca"


def test_shares_follow_the_weights_by_examples(files, tok) -> None:
    built = build(mixture(files, (1.0, 3.0)), tok, seed=7)
    drawn = [source_of(tok, e) for e in built.train]
    assert len(drawn) > 2000
    share = drawn.count("chat") / len(drawn)
    assert abs(share - 0.75) < 0.02, share
    by_name = {r.name: r for r in built.reports}
    assert by_name["chat"].achieved_share == pytest.approx(share)
    assert by_name["chat"].target_share == 0.75 and by_name["alpaca"].target_share == 0.25
    # Validation: each source's own held-out part, whatever the weights.
    val = [source_of(tok, e) for e in built.val]
    assert val.count("alpaca") == N * 5 // 100 and val.count("chat") == N * 10 // 100
    held_out = {tuple(e.input_ids) for e in built.val}
    assert not held_out & {tuple(e.input_ids) for e in built.train}


def test_same_seed_same_mixture_other_seed_another(files, tok) -> None:
    a = build(mixture(files, (1.0, 1.0)), tok, seed=1)
    b = build(mixture(files, (1.0, 1.0)), tok, seed=1)
    c = build(mixture(files, (1.0, 1.0)), tok, seed=2)
    ids = lambda built: [e.input_ids for e in built.train]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)


def test_prepare_reports_shares(files, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from framework import prepare
    from tests.data_fixtures import save_tokenizer

    tok_dir = save_tokenizer(chat_tokenizer("chatml"), tmp_path / "tok")
    sources = (
        f"[{{path: '{files['alpaca']}', format: alpaca, weight: 1}}, "
        f"{{path: '{files['chat']}', format: chat, weight: 3, name: chats}}]"
    )  # what a user types: dataset.sources=[{path: a.jsonl, weight: 3}, ...]
    code = prepare.main(
        [
            "dataset=mixture",
            f"dataset.sources={sources}",
            f"dataset.tokenizer={tok_dir}",
            "dataset.max_seq_len=128",
            f"dataset.cache_dir={tmp_path / 'cache'}",
        ]  # fmt: skip
    )
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, captured.err
    assert "a.jsonl (alpaca," in out and "chats (chat," in out
    assert "(weight 75.0%)" in out and "(weight 25.0%)" in out and "shares are by examples" in out
    assert out.strip().splitlines()[-1].startswith(str(tmp_path / "cache" / "mixture-"))


def test_all_exhausted_repeats_the_smaller_source_to_keep_its_share(files, tok) -> None:
    ds = mixture(files, (1.0, 3.0))
    ds.mixture_stop = "all_exhausted"
    built = build(ds, tok, seed=7)
    drawn = [source_of(tok, e) for e in built.train]
    assert drawn.count("alpaca") >= N * 95 // 100  # every alpaca example used at least once
    assert abs(drawn.count("chat") / len(drawn) - 0.75) < 0.02
