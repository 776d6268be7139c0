"""Instruction data: read JSONL, apply the prompt template, tokenize (loss on response tokens only), split, pack.

Every problem names the file and line; nothing is skipped silently (overlong examples are truncated or dropped
as configured, counted and reported).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from framework.config import package_path
from framework.errors import DataError

log = logging.getLogger(__name__)
IGNORE_INDEX = -100
CACHE_VERSION = 1


def local_path(uri: str) -> Path:
    """A local filesystem path for ``uri``: pkg:// and file:// mapped, remote URIs fetched into the cache."""
    uri = package_path(uri)
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    if "://" in uri:
        from framework import storage

        return Path(storage.local_copy(uri))
    return Path(uri).expanduser()


def read_jsonl(uri: str, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """Parse a JSONL file; a malformed line or a missing/non-string field raises DataError naming file:line."""
    path = local_path(uri)
    if not path.is_file():
        raise DataError(f"dataset file {uri} does not exist; fix dataset.path (local path or s3:// URI)")
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{uri}:{lineno}: malformed JSON ({e.msg} at column {e.colno}); fix or remove the line"
                ) from e
            if not isinstance(row, dict):
                raise DataError(f"{uri}:{lineno}: expected a JSON object, got {type(row).__name__}")
            for key in fields:
                if not isinstance(row.get(key), str):
                    got = "missing" if key not in row else type(row[key]).__name__
                    raise DataError(
                        f"{uri}:{lineno}: field {key!r} must be a string ({got}); set dataset.prompt_field / "
                        "dataset.response_field to your file's keys"
                    )
            rows.append(row)
    if not rows:
        raise DataError(f"{uri} holds no examples; point dataset.path at a non-empty JSONL file")
    return rows


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


def render_prompt(row: dict[str, Any], ds: DictConfig) -> str:
    extra = row.get(ds.input_field) if ds.input_field else None
    if isinstance(extra, str) and extra.strip():
        return ds.input_template.format(prompt=row[ds.prompt_field], input=extra)
    return ds.template.format(prompt=row[ds.prompt_field], input="")


def tokenize_rows(
    rows: list[dict[str, Any]], tokenizer: Any, ds: DictConfig
) -> tuple[list[Tokenized], TokenizeStats]:
    """Prompt tokens get IGNORE_INDEX labels; the response is followed by EOS and is what the loss sees."""
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no eos_token; set one in its tokenizer_config.json")
    prompts = [render_prompt(r, ds) for r in rows]
    responses = [r[ds.response_field] for r in rows]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    stats = TokenizeStats()
    out: list[Tokenized] = []
    max_len = ds.max_seq_len
    for p, r in zip(p_ids, r_ids, strict=True):
        stats.examples += 1
        ids = p + r + [tokenizer.eos_token_id]
        labels = [IGNORE_INDEX] * len(p) + r + [tokenizer.eos_token_id]
        if len(ids) > max_len:
            if ds.overlong == "drop":
                stats.dropped += 1
                continue
            stats.truncated += 1
            ids, labels = ids[:max_len], labels[:max_len]
        if all(x == IGNORE_INDEX for x in labels[1:]):
            # Truncation cut the whole response: nothing left to learn from.
            stats.dropped += 1
            continue
        stats.tokens += len(ids)
        out.append(Tokenized(ids, labels))
    return out, stats


def _fingerprint(path: Path, tokenizer: Any, ds: DictConfig) -> str:
    h = hashlib.sha256()
    h.update(f"v{CACHE_VERSION}".encode())
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    tok_state = (
        tokenizer.backend_tokenizer.to_str() if hasattr(tokenizer, "backend_tokenizer") else repr(tokenizer)
    )
    h.update(tok_state.encode())
    h.update(str(tokenizer.eos_token_id).encode())
    keys = (
        "prompt_field",
        "input_field",
        "response_field",
        "template",
        "input_template",
        "max_seq_len",
        "overlong",
    )
    h.update(json.dumps({k: OmegaConf.select(ds, k) for k in keys}, sort_keys=True).encode())
    return h.hexdigest()[:24]


def load_tokenized(uri: str, tokenizer: Any, ds: DictConfig) -> tuple[list[Tokenized], TokenizeStats]:
    """Tokenize a JSONL file once; the result is cached on local disk keyed by data, tokenizer and settings.

    Every rank calls this without any collective: the first to finish writes the cache atomically, and no rank
    waits on another in a collective while tokenizing.
    """
    fields = (ds.prompt_field, ds.response_field)
    path = local_path(uri)
    if not path.is_file():
        raise DataError(f"dataset file {uri} does not exist; fix dataset.path (local path or s3:// URI)")
    cache_root = Path(ds.cache_dir or os.environ.get("FRAMEWORK_CACHE", "~/.cache/framework")).expanduser()
    if not ds.cache_dir:
        cache_root = cache_root / "tokenized"
    cache = cache_root / f"{_fingerprint(path, tokenizer, ds)}.json"
    if cache.is_file():
        try:
            blob = json.loads(cache.read_text())
            return [Tokenized(*x) for x in blob["examples"]], TokenizeStats(**blob["stats"])
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("Ignoring unreadable tokenized cache %s", cache)
    rows = read_jsonl(uri, fields)
    examples, stats = tokenize_rows(rows, tokenizer, ds)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        blob = {"examples": [[e.input_ids, e.labels] for e in examples], "stats": stats.__dict__}
        tmp.write_text(json.dumps(blob))
        os.replace(tmp, cache)
    except OSError as e:  # A read-only cache only costs a re-tokenization next time.
        log.warning("Could not write tokenized cache %s: %s", cache, e)
    return examples, stats


def split(
    examples: list[Tokenized], val_fraction: float, seed: int
) -> tuple[list[Tokenized], list[Tokenized]]:
    """Deterministic hold-out: the same seed always holds out the same examples."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = math.ceil(len(examples) * val_fraction) if val_fraction > 0 else 0
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [examples[i] for i in train], [examples[i] for i in val]


@dataclass
class Sequence:
    """One fixed-length training row; position_ids restart at 0 for every packed document."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    n_tokens: int  # real (non-pad) tokens


def pack(examples: list[Tokenized], max_len: int, pad_id: int, packing: bool, seed: int) -> list[Sequence]:
    """Pack examples greedily (shuffled by seed) into rows of max_len; pad the tail of each row.

    Position ids restart per document, so the attention backend builds a block-diagonal causal mask and no
    token attends across documents. The first label of every document is ignored so no document predicts
    across the boundary from the previous one.
    """
    order = list(range(len(examples)))
    random.Random(seed + 1).shuffle(order)
    rows: list[Sequence] = []
    cur_ids: list[int] = []
    cur_labels: list[int] = []
    cur_pos: list[int] = []

    def flush() -> None:
        if not cur_ids:
            return
        n = len(cur_ids)
        pad = max_len - n
        last = cur_pos[-1] + 1
        rows.append(
            Sequence(
                input_ids=cur_ids + [pad_id] * pad,
                labels=cur_labels + [IGNORE_INDEX] * pad,
                position_ids=cur_pos + list(range(last, last + pad)),
                n_tokens=n,
            )
        )
        cur_ids.clear()
        cur_labels.clear()
        cur_pos.clear()

    for i in order:
        ex = examples[i]
        if not packing or len(cur_ids) + len(ex.input_ids) > max_len:
            flush()
        cur_ids.extend(ex.input_ids)
        cur_labels.extend([IGNORE_INDEX, *ex.labels[1:]])
        cur_pos.extend(range(len(ex.input_ids)))
    flush()
    return rows


@dataclass
class Batches:
    """Deterministic sharded micro batches: position is one integer (global micro batches consumed).

    Global micro batch ``b`` of an epoch is ``micro * world`` rows of that epoch's permutation; rank ``r``
    takes its ``r``-th slice. Resuming at ``consumed`` reproduces the exact same sequence of batches.
    """

    rows: list[Sequence]
    micro: int
    world: int
    rank: int
    seed: int

    @property
    def per_epoch(self) -> int:
        return len(self.rows) // (self.micro * self.world)

    def batch(self, consumed: int) -> list[Sequence]:
        epoch, b = divmod(consumed, self.per_epoch)
        order = list(range(len(self.rows)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        start = (b * self.world + self.rank) * self.micro
        return [self.rows[i] for i in order[start : start + self.micro]]


def collate(rows: list[Sequence]) -> dict[str, Any]:
    import torch

    return {
        "input_ids": torch.tensor([r.input_ids for r in rows], dtype=torch.long),
        "labels": torch.tensor([r.labels for r in rows], dtype=torch.long),
        "position_ids": torch.tensor([r.position_ids for r in rows], dtype=torch.long),
    }


def n_real_tokens(rows: list[Sequence]) -> int:
    return sum(r.n_tokens for r in rows)


def report(stats: TokenizeStats, uri: str, ds: DictConfig) -> None:
    """Log what tokenization did; truncated and dropped examples are always reported."""
    msg = f"{uri}: {stats.examples} examples, {stats.tokens} tokens"
    if stats.truncated or stats.dropped:
        log.warning(
            "%s; %d truncated to dataset.max_seq_len=%d and %d dropped (dataset.overlong=%s)",
            msg,
            stats.truncated,
            ds.max_seq_len,
            stats.dropped,
            ds.overlong,
        )
    else:
        log.info(msg)
