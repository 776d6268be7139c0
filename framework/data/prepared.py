"""The prepared dataset: read, render, tokenize, mask, split, mix and pack once; train from it on every rank.

Format (plain, for ``datasets.load_from_disk``): a DatasetDict with splits ``train`` and ``validation`` and
columns ``input_ids``, ``labels`` (-100 where there is no loss; the first token of every packed document too)
and ``position_ids`` (restarting at 0 for every packed document), one row per training sequence, unpadded
(rows are padded to ``dataset.max_seq_len`` when batched). ``prepared.json`` beside them records the key, the
options and the per-source counts; it is written last, so a directory without it is incomplete.

Location: ``<dataset.cache_dir or $FRAMEWORK_CACHE/prepared>/<name>-<key>``, where ``key`` hashes everything that
changes the result: the data (content of local files, ETags of remote ones), the tokenizer, the chat templates,
every format option, max_seq_len, packing, overlong handling and the seed. The root may be ``s3://``: then every
pod and every sweep job reads one shared copy (each node downloads it once into its local cache).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from collections.abc import Sequence as SequenceABC
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from framework.data.read import local_path, read
from framework.data.rows import Source, column, detect, examples, sources_of
from framework.data.tokenize import (
    IGNORE_INDEX,
    Tokenized,
    TokenizeStats,
    tokenize_chats,
    tokenize_instructions,
)
from framework.errors import DataError

log = logging.getLogger(__name__)
CACHE_VERSION = 2
MARKER = "prepared.json"
COLUMNS = ("input_ids", "labels", "position_ids")


# ----------------------------------------------------------------------------------------------- key


def _file_digest(path: Path, h: Any) -> None:
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(path)).encode())
                _file_digest(p, h)
        return
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def data_fingerprint(uri: str | None) -> str | None:
    """Content hash of a local file or directory; the store's ETags for a remote one (nothing downloaded)."""
    if not uri:
        return None
    from framework import storage
    from framework.config import package_path

    mapped = package_path(uri)
    if storage.is_remote(mapped):
        try:
            return storage.version(mapped)
        except FileNotFoundError as e:
            raise DataError(f"{uri} does not exist; fix the dataset path") from e
    path = local_path(uri)
    if not path.exists():
        raise DataError(f"{uri} does not exist; fix the dataset path (a local path or an s3:// URI)")
    h = hashlib.sha256()
    _file_digest(path, h)
    return h.hexdigest()[:24]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else repr(tokenizer)).encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    h.update(str(getattr(tokenizer, "chat_template", None)).encode())
    return h.hexdigest()[:24]


def settings(ds: DictConfig, seed: int) -> dict[str, Any]:
    """The options that change the prepared result (the sources' own options are hashed with each source)."""
    return {
        "max_seq_len": int(ds.max_seq_len),
        "packing": bool(ds.packing),
        "overlong": str(ds.overlong),
        "max_row_chars": int(ds.get("max_row_chars", 1_000_000)),
        "seed": int(seed),
        "mixture_stop": str(ds.get("mixture_stop", "first_exhausted")),
    }


def cache_key(ds: DictConfig, tokenizer: Any, seed: int) -> str:
    from framework.data.chat import template_text

    srcs = []
    for s in sources_of(ds):
        opts = s.options()
        if s.chat_template is not None and ("{%" not in s.chat_template and "{{" not in s.chat_template):
            opts["chat_template"] = template_text(s.chat_template, tokenizer, s.key)  # the file's content
        srcs.append({**opts, "data": data_fingerprint(s.path), "val_data": data_fingerprint(s.val_path)})
    blob = {
        "version": CACHE_VERSION,
        "sources": srcs,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        **settings(ds, seed),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cache_root(ds: DictConfig) -> str:
    from framework import storage

    return str(ds.cache_dir) if ds.get("cache_dir") else str(storage.cache_root() / "prepared")


def location(ds: DictConfig, tokenizer: Any, seed: int) -> str:
    from framework import storage

    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(ds.name))[:40]
    return storage.join(cache_root(ds), f"{name}-{cache_key(ds, tokenizer, seed)}")


# ----------------------------------------------------------------------------------------------- build


@dataclass
class SourceReport:
    """What preparing did with one source (printed by framework.prepare, stored in prepared.json)."""

    name: str
    path: str
    format: str
    weight: float
    stats: dict[str, int]
    train_examples: int = 0  # held for training, before mixing
    val_examples: int = 0
    mixed_examples: int = 0  # drawn into the training split
    mixed_tokens: int = 0
    target_share: float = 1.0
    achieved_share: float = 1.0


@dataclass
class Built:
    train: list[Tokenized]
    val: list[Tokenized]
    reports: list[SourceReport] = field(default_factory=list)


def split(examples: list[Any], val_fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Deterministic hold-out: the same seed always holds out the same examples."""
    import math
    import random

    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = math.ceil(len(examples) * val_fraction) if val_fraction > 0 else 0
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [examples[i] for i in train], [examples[i] for i in val]


def tokenize_file(
    uri: str, key: str, src: Source, tokenizer: Any, ds: DictConfig
) -> tuple[list[Tokenized], TokenizeStats, str]:
    """Read, recognize, render and tokenize one file (or directory) of ``src``."""
    from framework.data.chat import Renderer

    table = read(uri, key=key, split=src.split)
    if len(table.data) == 0:
        raise DataError(f"{uri} holds no examples; point {key} at a non-empty file")
    fmt = detect(table, src)
    rows = examples(table, src, fmt, int(ds.get("max_row_chars", 1_000_000)))
    if fmt == "chat":
        renderer = Renderer(tokenizer, src.chat_template, src.key)
        toks, stats = tokenize_chats(
            rows, tokenizer, renderer, src.train_on, int(ds.max_seq_len), str(ds.overlong), table.where
        )  # type: ignore[arg-type]
    else:
        toks, stats = tokenize_instructions(rows, tokenizer, int(ds.max_seq_len), str(ds.overlong))  # type: ignore[arg-type]
    return toks, stats, fmt


def build(ds: DictConfig, tokenizer: Any, seed: int) -> Built:
    """Every source tokenized and split; a mixture's training split drawn by weight (by examples)."""
    per: list[tuple[list[Tokenized], list[Tokenized]]] = []
    reports: list[SourceReport] = []
    for src in sources_of(ds):
        toks, stats, fmt = tokenize_file(src.path, f"{src.key}.path", src, tokenizer, ds)
        if src.val_path:
            val, vstats, _ = tokenize_file(src.val_path, f"{src.key}.val_path", src, tokenizer, ds)
            stats.add(vstats)
            train = toks
        else:
            train, val = split(toks, src.val_fraction, seed)
        if not train:
            raise DataError(
                f"the train split of {src.path} is empty (after dropping overlong examples); add examples or "
                f"lower {src.key}.val_fraction"
            )
        if not val and (src.val_path or src.val_fraction > 0):
            raise DataError(
                f"the validation split of {src.val_path or src.path} is empty; raise {src.key}.val_fraction or add "
                "examples"
            )
        per.append((train, val))
        reports.append(SourceReport(src.name, src.path, fmt, src.weight, asdict(stats), len(train), len(val)))
    if len(per) == 1:
        train, val = per[0]
        reports[0].mixed_examples = len(train)
        reports[0].mixed_tokens = sum(len(t.input_ids) for t in train)
        return Built(train, val, reports)
    stop = str(ds.get("mixture_stop", "first_exhausted"))
    train = mix([t for t, _ in per], [r.weight for r in reports], seed, reports, stop)
    return Built(train, [v for _, v in per for v in v], reports)


def mix(
    parts: list[list[Tokenized]],
    weights: list[float],
    seed: int,
    reports: list[SourceReport],
    stop: str = "first_exhausted",
) -> list[Tokenized]:
    """Draw the training split from the sources with probability proportional to their weights, example by
    example (``datasets.interleave_datasets``), until the first source runs out (no example repeats) or, with
    ``all_exhausted``, until every source has been used once (smaller sources repeat)."""
    import datasets

    total = sum(weights)
    probs = [w / total for w in weights]
    index = [
        datasets.Dataset.from_dict({"s": [i] * len(p), "k": list(range(len(p)))}) for i, p in enumerate(parts)
    ]
    order = datasets.interleave_datasets(index, probabilities=probs, seed=seed, stopping_strategy=stop)
    drawn = list(zip(column(order, "s"), column(order, "k"), strict=True))
    picked = [parts[s][k] for s, k in drawn]
    counts = [0] * len(parts)
    tokens = [0] * len(parts)
    for s, k in drawn:
        counts[s] += 1
        tokens[s] += len(parts[s][k].input_ids)
    for r, n, t, p in zip(reports, counts, tokens, probs, strict=True):
        r.mixed_examples, r.mixed_tokens, r.target_share = n, t, p
        r.achieved_share = n / max(1, len(picked))
    return picked


def pack_groups(lengths: list[int], max_len: int, packing: bool, seed: int) -> list[list[int]]:
    """Greedy packing (examples shuffled by seed) into groups whose lengths sum to at most max_len."""
    import random

    order = list(range(len(lengths)))
    random.Random(seed + 1).shuffle(order)
    groups: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for i in order:
        if cur and (not packing or used + lengths[i] > max_len):
            groups.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += lengths[i]
    if cur:
        groups.append(cur)
    return groups


def to_arrow(examples: list[Tokenized], max_len: int, packing: bool, seed: int) -> Any:
    """Packed rows as a ``pyarrow.Table`` (unpadded). The first label of every document is ignored, so no
    document predicts across the boundary from the previous one."""
    import numpy as np
    import pyarrow as pa

    groups = pack_groups([len(e.input_ids) for e in examples], max_len, packing, seed)
    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []
    offsets = [0]
    for g in groups:
        for i in g:
            e = examples[i]
            ids.extend(e.input_ids)
            labels.append(IGNORE_INDEX)
            labels.extend(e.labels[1:])
            pos.extend(range(len(e.input_ids)))
        offsets.append(len(ids))
    off = pa.array(np.asarray(offsets, dtype=np.int32))
    cols = {
        name: pa.ListArray.from_arrays(off, pa.array(np.asarray(vals, dtype=np.int32)))
        for name, vals in (("input_ids", ids), ("labels", labels), ("position_ids", pos))
    }
    return pa.table(cols)


# ----------------------------------------------------------------------------------------------- store / load


@dataclass
class Prepared:
    """The prepared splits (``pyarrow.Table``s) and where they are stored."""

    train: Any
    validation: Any
    location: str
    info: dict[str, Any]
    from_cache: bool


def _info(ds: DictConfig, key_loc: str, built: Built, seed: int) -> dict[str, Any]:
    return {
        "location": key_loc,
        "version": CACHE_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": settings(ds, seed),
        "sources": [asdict(r) for r in built.reports],
        "columns": list(COLUMNS),
        "splits": {"train": None, "validation": None},
    }


def prepare(ds: DictConfig, tokenizer: Any, seed: int) -> Prepared:
    """Tokenize and pack in this process (no cache involved)."""
    loc = location(ds, tokenizer, seed)
    built = build(ds, tokenizer, seed)
    train = to_arrow(built.train, int(ds.max_seq_len), bool(ds.packing), seed)
    val = to_arrow(built.val, int(ds.max_seq_len), bool(ds.packing), seed)
    info = _info(ds, loc, built, seed)
    info["splits"] = {"train": len(train), "validation": len(val)}
    return Prepared(train, val, loc, info, from_cache=False)


def save(p: Prepared) -> None:
    """Write ``p`` at its location: atomically for a local root; for a remote root upload everything, then the
    marker last."""
    import datasets

    from framework import storage

    dd = datasets.DatasetDict(
        {"train": datasets.Dataset(p.train), "validation": datasets.Dataset(p.validation)}
    )
    if storage.is_remote(p.location):
        with _tmpdir(storage.cache_root() / "prepared-upload") as tmp:
            dd.save_to_disk(str(tmp / "data"))
            (tmp / MARKER).write_text(json.dumps(p.info, indent=1))
            storage.upload_dir(tmp / "data", p.location)
            storage.put_file(tmp / MARKER, storage.join(p.location, MARKER))  # last: the copy is complete
        return
    final = Path(p.location)
    if final.exists() and not final.is_dir():
        raise DataError(f"dataset.cache_dir: {final} is a file; point dataset.cache_dir at a directory")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        dd.save_to_disk(str(tmp))
        (tmp / MARKER).write_text(json.dumps(p.info, indent=1))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / MARKER).is_file():  # someone else won the race with a complete copy: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _tmpdir:
    def __init__(self, parent: Path) -> None:
        self.path = parent / f"tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> Path:
        self.path.mkdir(parents=True)
        return self.path

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def load(loc: str) -> Prepared | None:
    """The prepared copy at ``loc``, or None when there is none (or it is incomplete). Read with pyarrow
    alone (memory-mapped): training's start does not pay for importing ``datasets`` and pandas."""
    from framework import storage

    if not storage.exists(storage.join(loc, MARKER)):
        return None
    local = Path(storage.local_copy(loc)) if storage.is_remote(loc) else Path(loc)
    info = json.loads((local / MARKER).read_text())
    return Prepared(read_split(local, "train"), read_split(local, "validation"), loc, info, from_cache=True)


def read_split(root: Path, split: str) -> Any:
    """One split of a ``save_to_disk`` directory as a pyarrow Table (its ``state.json`` lists the files)."""
    import pyarrow as pa

    state = root / split / "state.json"
    try:
        files = [f["filename"] for f in json.loads(state.read_text())["_data_files"]]
        tables = [pa.ipc.open_stream(pa.memory_map(str(root / split / f))).read_all() for f in files]
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowInvalid) as e:
        raise DataError(
            f"the prepared data at {root} is damaged ({split}: {type(e).__name__}: {e}); delete it and run "
            "python -m framework.prepare again"
        ) from e
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def load_or_prepare(ds: DictConfig, tokenizer: Any, seed: int, *, write: bool) -> Prepared:
    """Training's entry: read the prepared copy if there is one, else tokenize here (and, with ``write``,
    store the result for the next run). No collective: a rank never waits on another's tokenization."""
    loc = location(ds, tokenizer, seed)
    found = load(loc)
    if found is not None:
        log.info("Prepared data: %s (no tokenization)", loc)
        return found
    if ds.get("require_prepared"):
        raise DataError(
            f"dataset.require_prepared=true but there is no prepared data at {loc}; run `python -m "
            "framework.prepare` with the same overrides first (or set dataset.require_prepared=false)"
        )
    p = prepare(ds, tokenizer, seed)
    if write:
        try:
            save(p)
        except OSError as e:  # a read-only cache only costs a re-tokenization next time
            log.warning("Could not store the prepared data at %s: %s", loc, e)
    return p


# ----------------------------------------------------------------------------------------------- rows


@dataclass
class Sequence:
    """One fixed-length training row; position_ids restart at 0 for every packed document."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    n_tokens: int  # real (non-pad) tokens


def padded(ids: list[int], labels: list[int], pos: list[int], max_len: int, pad_id: int) -> Sequence:
    n = len(ids)
    pad = max_len - n
    last = pos[-1] + 1 if pos else 0
    return Sequence(
        input_ids=ids + [pad_id] * pad,
        labels=labels + [IGNORE_INDEX] * pad,
        position_ids=pos + list(range(last, last + pad)),
        n_tokens=n,
    )


class Rows(SequenceABC):  # type: ignore[type-arg]
    """A prepared split (a pyarrow Table) as a sequence of padded :class:`Sequence` rows, read on access."""

    def __init__(self, table: Any, max_len: int, pad_id: int) -> None:
        self.cols = [table.column(c) for c in COLUMNS]
        self.n = table.num_rows
        self.max_len = max_len
        self.pad_id = pad_id

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        ids, labels, pos = (c[int(i)].as_py() for c in self.cols)
        return padded(ids, labels, pos, self.max_len, self.pad_id)

    def __iter__(self) -> Iterator[Sequence]:
        for i in range(self.n):
            yield self[i]
