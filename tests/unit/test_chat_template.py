"""Chat rendering and masking with two templates written here (Llama-3 headers, ChatML): the trained tokens
decode to exactly each assistant turn's content plus its end-of-turn token, computed from the messages alone."""

from __future__ import annotations

import pytest

from framework.data.chat import Renderer
from framework.data.rows import Chat
from framework.data.tokenize import IGNORE_INDEX, tokenize_chats
from framework.errors import DataError
from tests.data_fixtures import CONVERSATION, EOT, chat_tokenizer, expected_trained_text

STYLES = ("llama3", "chatml")


def tokenize(tok, messages, train_on="assistant", template=None, max_len=4096, overlong="truncate"):
    chat = Chat([(m["role"], m["content"], m.get("train")) for m in messages])
    out, stats = tokenize_chats(
        [chat], tok, Renderer(tok, template), train_on, max_len, overlong, lambda i: f"test.jsonl row {i + 1}"
    )
    return out, stats


def trained_runs(tok, ex) -> list[str]:
    """Each maximal run of tokens with a label, decoded."""
    runs, cur = [], []
    for t, label in zip(ex.input_ids, ex.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == t
            cur.append(t)
        elif cur:
            runs.append(tok.decode(cur, skip_special_tokens=False))
            cur = []
    if cur:
        runs.append(tok.decode(cur, skip_special_tokens=False))
    return runs


@pytest.mark.parametrize("style", STYLES)
def test_every_assistant_turn_is_trained_and_nothing_else(style: str) -> None:
    tok = chat_tokenizer(style)
    (ex,), stats = tokenize(tok, CONVERSATION)
    assert trained_runs(tok, ex) == expected_trained_text(CONVERSATION, style)
    assert stats.examples == 1 and stats.dropped == stats.truncated == 0
    # The empty assistant turn still trains its end-of-turn token (the model learns to stop).
    assert EOT[style] in trained_runs(tok, ex)
    # The rendering is the one apply_chat_template gives (what inference will see).
    assert tok.decode(ex.input_ids, skip_special_tokens=False) == tok.apply_chat_template(
        CONVERSATION, tokenize=False
    )


@pytest.mark.parametrize("style", STYLES)
def test_last_assistant_only_and_all_tokens(style: str) -> None:
    tok = chat_tokenizer(style)
    (ex,), _ = tokenize(tok, CONVERSATION, train_on="last_assistant")
    assert trained_runs(tok, ex) == expected_trained_text(CONVERSATION, style, "last_assistant")
    (ex,), _ = tokenize(tok, CONVERSATION, train_on="all")
    assert all(label == t for t, label in zip(ex.input_ids, ex.labels, strict=True))


@pytest.mark.parametrize("style", STYLES)
def test_per_message_flag_wins(style: str) -> None:
    tok = chat_tokenizer(style)
    msgs = [dict(m) for m in CONVERSATION]
    msgs[2]["train"] = False  # the first reply is excluded, the others keep the default
    (ex,), _ = tokenize(tok, msgs)
    assert trained_runs(tok, ex) == expected_trained_text(CONVERSATION, style)[1:]


@pytest.mark.parametrize("bos_from_tokenizer", [False, True])
def test_bos_exactly_once(bos_from_tokenizer: bool) -> None:
    # Llama 3: the template emits BOS; a tokenizer that also adds one must not double it.
    tok = chat_tokenizer("llama3", bos_from_tokenizer=bos_from_tokenizer)
    (ex,), _ = tokenize(tok, CONVERSATION)
    assert ex.input_ids.count(tok.bos_token_id) == 1 and ex.input_ids[0] == tok.bos_token_id
    # ChatML emits none: BOS only when the tokenizer adds one by default.
    tok = chat_tokenizer("chatml", bos_from_tokenizer=bos_from_tokenizer)
    (ex,), _ = tokenize(tok, CONVERSATION)
    assert ex.input_ids.count(tok.bos_token_id) == (1 if bos_from_tokenizer else 0)
    assert ex.labels[0] == IGNORE_INDEX


def test_template_given_as_string_overrides_the_tokenizer() -> None:
    tok = chat_tokenizer("llama3")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    from tests.data_fixtures import CHATML

    (ex,), _ = tokenize(tok, CONVERSATION, template=CHATML)
    assert trained_runs(tok, ex) == expected_trained_text(CONVERSATION, "chatml")


def test_template_that_rewrites_earlier_turns_is_refused() -> None:
    # Like reasoning templates that drop earlier assistant text: not prefix-stable, so per-turn masks are wrong.
    unstable = (
        "{%- for m in messages %}{%- if m['role'] == 'assistant' and not loop.last %}"
        "{{- '<|im_start|>assistant\\n(earlier)<|im_end|>\\n' }}{%- else %}"
        "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    tok = chat_tokenizer("chatml")
    with pytest.raises(DataError, match=r"test.jsonl row 1: the chat template is not prefix-stable at message 3.*"
                       r"train_on=last_assistant"):  # fmt: skip
        tokenize(tok, CONVERSATION, template=unstable)
    (ex,), _ = tokenize(tok, CONVERSATION, template=unstable, train_on="last_assistant")
    assert trained_runs(tok, ex) == ["twelve<|im_end|>"]


def test_template_errors_name_the_row() -> None:
    strict = "{%- for m in messages %}{%- if m['role'] == 'system' %}{{ raise_exception('no system role') }}" \
        "{%- endif %}{{ m['content'] }}{%- endfor %}"  # fmt: skip
    tok = chat_tokenizer("chatml")
    with pytest.raises(
        DataError, match=r"test.jsonl row 1: the chat template refused the conversation \(no system"
    ):
        tokenize(tok, CONVERSATION, template=strict)


def test_no_chat_template_says_how_to_set_one() -> None:
    tok = chat_tokenizer("chatml")
    tok.chat_template = None
    with pytest.raises(DataError, match=r"no chat_template.*dataset.chat_template"):
        Renderer(tok, None)


def test_overlong_conversations_truncated_or_dropped() -> None:
    tok = chat_tokenizer("chatml")
    long = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "word " * 300}]
    (ex,), stats = tokenize(tok, long, max_len=64)
    assert len(ex.input_ids) == 64 and stats.truncated == 1
    out, stats = tokenize(tok, long, max_len=64, overlong="drop")
    assert out == [] and stats.dropped == 1
