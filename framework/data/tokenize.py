"""Tokenize examples in batches with the fast tokenizer and set the labels (-100 where there is no loss).

Instruction rows: the rendered prompt has no loss, the response and EOS have it (as the framework always did).
Chat rows: the rendered conversation is tokenized once with character offsets; a token carries the loss when it
lies inside a span :class:`framework.data.chat.Renderer` derived. Examples longer than ``max_seq_len`` are
truncated or dropped as configured and counted; one whose loss was cut away entirely is dropped and counted.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from framework.data.chat import Renderer, bos_to_add
from framework.data.rows import Chat, Instruction
from framework.errors import DataError

IGNORE_INDEX = -100
BATCH = 1000  # texts per tokenizer call: the Rust tokenizer parallelizes within a batch
VERIFY_ROWS = 8  # conversations per source whose prompts are re-tokenized alone and compared


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]


@dataclass
class TokenizeStats:
    examples: int = 0
    truncated: int = 0
    dropped: int = 0
    tokens: int = 0

    def add(self, other: TokenizeStats) -> None:
        for k in ("examples", "truncated", "dropped", "tokens"):
            setattr(self, k, getattr(self, k) + getattr(other, k))


def _fit(
    ids: list[int], labels: list[int], max_len: int, overlong: str, stats: TokenizeStats
) -> Tokenized | None:
    stats.examples += 1
    if len(ids) > max_len:
        if overlong == "drop":
            stats.dropped += 1
            return None
        stats.truncated += 1
        ids, labels = ids[:max_len], labels[:max_len]
    if all(x == IGNORE_INDEX for x in labels[1:]):
        # Truncation cut the whole response: nothing left to learn from.
        stats.dropped += 1
        return None
    stats.tokens += len(ids)
    return Tokenized(ids, labels)


def tokenize_instructions(
    rows: Sequence[Instruction], tokenizer: Any, max_len: int, overlong: str
) -> tuple[list[Tokenized], TokenizeStats]:
    """Prompt tokens get IGNORE_INDEX labels; the response is followed by EOS and is what the loss sees."""
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no eos_token; set one in its tokenizer_config.json")
    bos = bos_to_add(tokenizer)
    head = [bos] if bos is not None else []
    eos = tokenizer.eos_token_id
    stats = TokenizeStats()
    out: list[Tokenized] = []
    for lo in range(0, len(rows), BATCH):
        chunk = rows[lo : lo + BATCH]
        p_ids = tokenizer([r.prompt for r in chunk], add_special_tokens=False)["input_ids"]
        r_ids = tokenizer([r.response for r in chunk], add_special_tokens=False)["input_ids"]
        for p, r in zip(p_ids, r_ids, strict=True):
            p = head + p
            ex = _fit(p + r + [eos], [IGNORE_INDEX] * len(p) + r + [eos], max_len, overlong, stats)
            if ex is not None:
                out.append(ex)
    return out, stats


def _encode(tokenizer: Any, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """(ids, character offsets) per text, without special tokens. Straight from the Rust tokenizer when it
    has no padding or truncation of its own (transformers' per-encoding conversion costs ~20% more)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.padding is None and backend.truncation is None:
        return [(e.ids, e.offsets) for e in backend.encode_batch(texts, add_special_tokens=False)]
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return list(zip(enc["input_ids"], enc["offset_mapping"], strict=True))


def _token_range(starts: list[int], ends: list[int], a: int, b: int) -> tuple[int, int]:
    """Indices ``[i, j)`` of the tokens wholly inside characters ``[a, b)``: one straddling a boundary belongs
    to the untrained side (a header is never trained)."""
    return bisect.bisect_left(starts, a), bisect.bisect_right(ends, b)


def tokenize_chats(
    rows: Sequence[Chat],
    tokenizer: Any,
    renderer: Renderer,
    train_on: str,
    max_len: int,
    overlong: str,
    where: Callable[[int], str],
) -> tuple[list[Tokenized], TokenizeStats]:
    """Render, tokenize in batches with offsets, and label the tokens inside the trained spans."""
    bos = bos_to_add(tokenizer)
    bos_text = tokenizer.bos_token
    stats = TokenizeStats()
    out: list[Tokenized] = []
    for lo in range(0, len(rows), BATCH):
        rendered = [
            renderer.spans(c, train_on, lambda r=lo + k: where(r))
            for k, c in enumerate(rows[lo : lo + BATCH])
        ]
        for k, ((text, spans), (ids, offsets)) in enumerate(
            zip(rendered, _encode(tokenizer, [t for t, _ in rendered]), strict=True)
        ):
            ids = list(ids)
            starts = [o[0] for o in offsets]
            ends = [o[1] for o in offsets]
            labels = [IGNORE_INDEX] * len(ids)
            for a, b in spans:
                i, j = _token_range(starts, ends, a, b)
                labels[i:j] = ids[i:j]
            if lo + k < VERIFY_ROWS:
                _verify(tokenizer, text, spans, ids, ends, where(lo + k), renderer.key)
            if bos is not None and not (bos_text and text.startswith(bos_text)):
                ids, labels = [bos, *ids], [IGNORE_INDEX, *labels]
            ex = _fit(ids, labels, max_len, overlong, stats)
            if ex is not None:
                out.append(ex)
    return out, stats


def _verify(
    tokenizer: Any,
    text: str,
    spans: list[tuple[int, int]],
    ids: list[int],
    ends: list[int],
    where: str,
    key: str,
) -> None:
    """The prompt before each trained span, tokenized alone (as generation will see it), must give the same ids
    as inside the whole conversation; otherwise the trained spans would not match inference."""
    for a, _ in spans:
        if a == 0:
            continue
        n = bisect.bisect_right(ends, a)
        alone = tokenizer(text[:a], add_special_tokens=False)["input_ids"]
        if list(alone) != ids[:n]:
            raise DataError(
                f"{where}: the prompt before an assistant turn tokenizes differently alone ({len(alone)} tokens) "
                f"than inside the conversation ({n}); the template's text at the boundary merges across it "
                f"(…{text[max(0, a - 20) : a + 20]!r}…); fix {key}.chat_template so a special token or a newline "
                "ends each header"
            )
