"""Training data: the formats, rendering and masking live in ``framework.data``; this module is what the
training loop uses (the prepared splits as padded rows, deterministic sharded batches, collation).

Every problem names the file and row; nothing is skipped silently (overlong examples are truncated or dropped
as configured, counted per source and reported).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from framework.data.prepared import Prepared, Rows, Sequence, load_or_prepare, pack_groups, padded, split
from framework.data.prepared import cache_root as prepared_root
from framework.data.read import local_path
from framework.data.rows import sources_of
from framework.data.tokenize import IGNORE_INDEX, Tokenized, TokenizeStats

__all__ = [
    "IGNORE_INDEX",
    "Batches",
    "Prepared",
    "Rows",
    "Sequence",
    "TokenizeStats",
    "Tokenized",
    "collate",
    "load_or_prepare",
    "load_tokenized",
    "local_path",
    "n_real_tokens",
    "pack",
    "prepared_root",
    "report",
    "split",
]

log = logging.getLogger(__name__)


def load_tokenized(uri: str, tokenizer: Any, ds: DictConfig) -> tuple[list[Tokenized], TokenizeStats]:
    """One file of the (single-source) dataset ``ds``, read and tokenized as preparing does (no cache)."""
    from framework.data.prepared import tokenize_file

    src = sources_of(ds)[0]
    toks, stats, _ = tokenize_file(uri, "dataset.path", src, tokenizer, ds)
    return toks, stats


def pack(examples: list[Tokenized], max_len: int, pad_id: int, packing: bool, seed: int) -> list[Sequence]:
    """Pack examples greedily (shuffled by seed) into rows of max_len; pad the tail of each row.

    Position ids restart per document, so the attention backend builds a block-diagonal causal mask and no
    token attends across documents. The first label of every document is ignored so no document predicts
    across the boundary from the previous one.
    """
    rows = []
    for g in pack_groups([len(e.input_ids) for e in examples], max_len, packing, seed):
        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        for i in g:
            ids.extend(examples[i].input_ids)
            labels.extend([IGNORE_INDEX, *examples[i].labels[1:]])
            pos.extend(range(len(examples[i].input_ids)))
        rows.append(padded(ids, labels, pos, max_len, pad_id))
    return rows


@dataclass
class Batches:
    """Deterministic sharded micro batches: position is one integer (global micro batches consumed).

    Global micro batch ``b`` of an epoch is ``micro * world`` rows of that epoch's permutation; rank ``r``
    takes its ``r``-th slice. Resuming at ``consumed`` reproduces the exact same sequence of batches.
    """

    rows: list[Sequence] | Rows
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


def report(p: Prepared) -> None:
    """Log what preparing did per source; truncated and dropped examples are always reported."""
    ds_settings = p.info.get("settings", {})
    for r in p.info.get("sources", []):
        st = r["stats"]
        msg = f"{r['path']}: {st['examples']} examples ({r['format']}), {st['tokens']} tokens"
        if st["truncated"] or st["dropped"]:
            log.warning(
                "%s; %d truncated to dataset.max_seq_len=%s and %d dropped (dataset.overlong=%s)",
                msg,
                st["truncated"],
                ds_settings.get("max_seq_len"),
                st["dropped"],
                ds_settings.get("overlong"),
            )
        else:
            log.info(msg)
