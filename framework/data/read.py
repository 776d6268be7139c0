"""Read a data file or directory into a ``datasets.Dataset``: JSONL, a JSON array, parquet, CSV, Arrow, a
directory of such shards, or a ``datasets.save_to_disk`` directory (a Dataset, or a DatasetDict and a split).

Local paths are read in place; URIs (``s3://...``) are fetched once into the cache through ``framework.storage``
(the only door to fsspec) and then read locally. Every file goes through Hugging Face ``datasets`` (pyarrow);
when the library refuses a file, :func:`diagnose` finds the line and says what is wrong in the user's terms
(encoding, binary content, malformed JSON, nesting) so the error is exit 2 with the file, the line and the fix.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framework.errors import DataError

log = logging.getLogger(__name__)

# file suffix -> datasets' packaged builder
BUILDERS = {
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".arrow": "arrow",
}
COMPRESSION = (".gz", ".bz2", ".xz", ".zst")
SUPPORTED = (
    ".jsonl, .json, .parquet, .csv, .arrow (optionally .gz/.bz2/.xz/.zst), a directory of them, or a "
    "datasets.save_to_disk directory"
)
MAX_JSON_DEPTH = 100  # deeper than any real row; stdlib json would hit a RecursionError far beyond it


@dataclass
class Part:
    """One file's rows inside a read table: ``rows[start:start+n]`` came from ``file``."""

    file: str
    start: int
    n: int


@dataclass
class Table:
    """A read source: the rows and, for error messages, which file each row came from."""

    uri: str
    data: Any  # datasets.Dataset
    parts: list[Part]

    def where(self, row: int) -> str:
        """``file row N`` (and the line for JSON lines files) for 0-based row ``row`` of the table."""
        for p in self.parts:
            if p.start <= row < p.start + p.n:
                i = row - p.start
                line = _jsonl_line(p.file, i) if builder_for(p.file) == "json" else None
                label = self.uri if len(self.parts) == 1 else p.file
                return f"{label} row {i + 1}" + (f" (line {line})" if line else "")
        return f"{self.uri} row {row + 1}"


def local_path(uri: str) -> Path:
    """A local filesystem path for ``uri``: pkg:// and file:// mapped, remote URIs fetched into the cache."""
    from framework import storage

    return storage.local_copy(uri)


def builder_for(name: str) -> str | None:
    base = name.lower()
    for c in COMPRESSION:
        base = base.removesuffix(c)
    return BUILDERS.get(os.path.splitext(base)[1])


def _quiet_datasets() -> None:
    import datasets

    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()
    # The JSON builder logs every parse failure at ERROR before raising; we report it ourselves.
    logging.getLogger("datasets.packaged_modules.json.json").setLevel(logging.CRITICAL)


def hf_cache_dir() -> str:
    from framework import storage

    return str(storage.cache_root() / "hf-datasets")


def read(uri: str, key: str = "dataset.path", split: str | None = None) -> Table:
    """Read ``uri`` (named by config ``key`` in errors) into a :class:`Table`; bad data raises DataError."""
    try:
        path = local_path(uri)
    except FileNotFoundError as e:
        raise DataError(f"{key}={uri}: {e}") from e
    if not path.exists():
        raise DataError(f"{key}={uri} does not exist; fix {key} (a local path or an s3:// URI)")
    _quiet_datasets()
    if path.is_dir():
        return _read_dir(uri, path, key, split)
    if (path.parent / "dataset_info.json").is_file() and path.suffix == ".arrow":
        log.info("%s is part of a save_to_disk directory; reading the whole directory %s", uri, path.parent)
        return _read_dir(uri, path.parent, key, split)
    builder = builder_for(path.name) or _sniff(path)
    if builder is None:
        raise DataError(
            f"{key}={uri}: cannot tell the file's format from its name; use one of {SUPPORTED} "
            "(rename the file to its format's extension)"
        )
    if not path.read_bytes()[:4096].strip(b"\xef\xbb\xbf \t\r\n") and path.stat().st_size < 4096:
        raise DataError(f"{key}={uri} holds no examples (the file is empty); point {key} at a non-empty file")
    data = _load(builder, path, uri)
    return Table(uri, data, [Part(str(path), 0, len(data))])


def _read_dir(uri: str, path: Path, key: str, split: str | None) -> Table:
    import datasets

    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        try:
            loaded = datasets.load_from_disk(str(path))
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise DataError(
                f"{key}={uri}: a damaged datasets.save_to_disk directory ({type(e).__name__}: {e}); "
                "save it again with Dataset.save_to_disk"
            ) from e
        if isinstance(loaded, datasets.DatasetDict):
            names = list(loaded)
            chosen = split or ("train" if "train" in names else names[0] if len(names) == 1 else None)
            if chosen not in names:
                raise DataError(
                    f"{key}={uri} is a DatasetDict with splits {names}; choose one with dataset.split=<name>"
                )
            loaded = loaded[chosen]
        elif split is not None:
            log.info("%s is a single Dataset; dataset.split=%s is not used", uri, split)
        return Table(uri, loaded, [Part(str(path), 0, len(loaded))])
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
    )
    kinds = {builder_for(p.name) for p in files} - {None}
    if not kinds:
        raise DataError(
            f"{key}={uri} is a directory without data files; point {key} at a file or a directory of "
            f"shards ({SUPPORTED})"
        )
    if len(kinds) > 1:
        raise DataError(
            f"{key}={uri} mixes shard formats {sorted(kinds)}; keep one format per directory (or use "
            "dataset=mixture with one source per format)"
        )
    shards = [p for p in files if builder_for(p.name)]
    builder = str(next(iter(kinds)))
    parts: list[Part] = []
    tables = []
    for p in shards:
        t = _load(builder, p, str(p))
        parts.append(Part(str(p), sum(x.n for x in parts), len(t)))
        tables.append(t)
    try:
        data = datasets.concatenate_datasets(tables) if len(tables) > 1 else tables[0]
    except ValueError as e:
        raise DataError(
            f"{key}={uri}: the shards do not share one set of columns and types ({e}); make every shard "
            "hold the same columns"
        ) from e
    return Table(uri, data, parts)


def _sniff(path: Path) -> str | None:
    with path.open("rb") as f:
        head = f.read(4096)
    if head.startswith(b"PAR1"):
        return "parquet"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith((b"{", b"[")):
        return "json"
    return None


def _load(builder: str, path: Path, uri: str) -> Any:
    import datasets

    extra: dict[str, Any] = {}
    if builder == "csv":  # cells are text: no numbers or NaN guessed from "12" or an empty cell
        header = _csv_header(path)
        if header:
            extra = {
                "features": datasets.Features({c: datasets.Value("string") for c in header}),
                "na_filter": False,
            }
    try:
        data = datasets.load_dataset(
            builder, data_files=[str(path)], split="train", cache_dir=hf_cache_dir(), **extra
        )
        if builder in ("json", "csv"):
            data.data.table.validate(full=True)  # pyarrow's JSON reader lets invalid UTF-8 through to here
        return data
    except Exception as e:  # noqa: BLE001 - any failure of the reader is explained by diagnose() below
        problem = diagnose(path, builder)
        cause = e.__cause__ or e
        detail = problem or f"{type(cause).__name__}: {str(cause)[:300]}"
        raise DataError(f"{uri}: cannot be read as {builder}: {detail}") from e


def _csv_header(path: Path) -> list[str] | None:
    import csv

    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            return next(csv.reader(f), None)
    except (UnicodeDecodeError, csv.Error):
        return None  # the reader fails next, and diagnose() says why


# ----------------------------------------------------------------------------------------------- diagnosis


def diagnose(path: Path, builder: str) -> str | None:
    """What is wrong with a file the library could not read, with its line and the fix; None if unknown."""
    if path.name.lower().endswith(COMPRESSION):
        return None  # the library's own message says what is wrong with a compressed file
    with path.open("rb") as f:
        head = f.read(8192)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "it is UTF-16 (it starts with a UTF-16 byte-order mark); re-save it as UTF-8 (iconv -f UTF-16 -t UTF-8)"
    if head.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "it is UTF-32; re-save it as UTF-8"
    if builder in ("json", "csv"):
        if head.startswith(b"PAR1"):
            return "it is a parquet file; give it a .parquet name"
        if b"\x00" in head or _binary_share(head) > 0.3:
            return (
                f"it is binary, not {builder.upper()} text (NUL or control bytes in the first {len(head)} "
                "bytes); point at the text file, or at a .parquet/.arrow file with its real extension"
            )
        found = _bad_text_line(path)
        if found:
            return found
        if builder == "json":
            return _bad_json(path)
    return None


def _binary_share(head: bytes) -> float:
    if not head:
        return 0.0
    bad = sum(1 for b in head if b < 32 and b not in (9, 10, 13))
    return bad / len(head)


def _bad_text_line(path: Path) -> str | None:
    """The first line that is not UTF-8 (a BOM at the very start is fine)."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                byte = raw[e.start : e.start + 1].hex()
                return (
                    f"line {lineno}, column {e.start + 1}: byte 0x{byte} is not UTF-8 (the file is in another "
                    "encoding); re-save it as UTF-8 (iconv -f <encoding> -t UTF-8)"
                )
    return None


def _depth(x: Any) -> int:
    depth, stack = 0, [(x, 1)]
    while stack:
        node, d = stack.pop()
        depth = max(depth, d)
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node)
    return depth


def _has_surrogate(x: Any) -> bool:
    stack = [x]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def _check_value(value: Any, where: str) -> str | None:
    if _depth(value) > MAX_JSON_DEPTH:
        return f"{where}: nested deeper than {MAX_JSON_DEPTH} levels; rows must be flat records"
    if _has_surrogate(value):
        return f"{where}: a string holds a lone UTF-16 surrogate escape (like \\ud800); fix or remove that escape"
    return None


def _bad_json(path: Path) -> str | None:
    text = path.read_bytes().decode("utf-8").removeprefix("\ufeff")
    if text.lstrip().startswith("["):
        try:
            doc = json.loads(text)
        except RecursionError:
            return f"nested deeper than Python can parse (over {MAX_JSON_DEPTH} levels); rows must be flat records"
        except json.JSONDecodeError as e:
            return f"line {e.lineno}, column {e.colno}: malformed JSON ({e.msg}); fix the file"
        if not isinstance(doc, list) or not all(isinstance(r, dict) for r in doc):
            return "a JSON array file must hold a list of objects (one per example)"
        for i, row in enumerate(doc, start=1):
            found = _check_value(row, f"element {i}")
            if found:
                return found
        return "the objects do not share one set of columns and types; make every row hold the same keys"
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except RecursionError:
            return f"line {lineno}: nested deeper than Python can parse; rows must be flat records"
        except json.JSONDecodeError as e:
            return f"line {lineno}, column {e.colno}: malformed JSON ({e.msg}); fix or remove the line"
        if not isinstance(row, dict):
            return f"line {lineno}: expected a JSON object per line, got {type(row).__name__}"
        found = _check_value(row, f"line {lineno}")
        if found:
            return found
    return (
        "its rows do not share one set of types (e.g. a field that is a string in one row and a number or "
        "list in another); make each field one type"
    )


def _jsonl_line(file: str, row: int) -> int | None:
    """The 1-based line of the ``row``-th (0-based) non-blank line of a JSON lines file; None for other files."""
    p = Path(file)
    if (
        not p.is_file()
        or p.suffix.lower() in COMPRESSION
        or p.suffix.lower() == ".json"
        and p.read_bytes()[:64].lstrip(b"\xef\xbb\xbf \r\n\t")[:1] == b"["
    ):
        return None
    seen = -1
    try:
        with p.open("rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if raw.strip():
                    seen += 1
                    if seen == row:
                        return lineno
    except OSError:
        return None
    return None
