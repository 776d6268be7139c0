"""Row styles: which columns a row has decides how it is read (``dataset.format``).

- ``chat``: OpenAI ``messages`` (``role``/``content``; system, user, assistant, tool; an optional per-message
  ``weight`` 0/1 or ``train`` flag) or ShareGPT ``conversations`` (``from``/``value``; human/gpt/... mapped);
- ``alpaca``: ``instruction``, optional ``input``, ``output``;
- ``prompt_response``: the columns named by ``dataset.prompt_field`` / ``input_field`` / ``response_field``.

``auto`` picks the first that fits the columns and logs what it chose. A row that does not fit names its file,
row, the columns it has and the formats that would fit.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields
from typing import Any

from framework.data.read import Table
from framework.errors import DataError

log = logging.getLogger(__name__)

FORMATS = ("auto", "chat", "alpaca", "prompt_response")
TRAIN_ON = ("assistant", "last_assistant", "all")
ROLES = ("system", "user", "assistant", "tool")
# ShareGPT and other common speaker names -> OpenAI roles
ROLE_ALIASES = {
    "human": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "function": "tool",
    "observation": "tool",
    "ipython": "tool",
}
CHAT_FIELDS = ("messages", "conversations")


@dataclass
class Source:
    """One data source with every option resolved (a plain dataset, or one entry of a mixture)."""

    name: str
    path: str
    weight: float = 1.0
    format: str = "auto"
    split: str | None = None
    val_path: str | None = None
    val_fraction: float = 0.05
    messages_field: str | None = None
    prompt_field: str = "instruction"
    input_field: str | None = "input"
    response_field: str = "response"
    template: str = "### Instruction:\n{prompt}\n\n### Response:\n"
    input_template: str = "### Instruction:\n{prompt}\n\n### Input:\n{input}\n\n### Response:\n"
    chat_template: str | None = None
    train_on: str = "assistant"
    key: str = "dataset"  # config key prefix for messages: dataset or dataset.sources[i]

    def options(self) -> dict[str, Any]:
        """Everything that changes how this source's rows are read and rendered (part of the cache key)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("name", "key")}


def sources_of(ds: Any) -> list[Source]:
    """The resolved sources of a dataset config: itself, or each ``dataset.sources`` entry over its defaults."""
    names = [f.name for f in fields(Source) if f.name not in ("key", "name", "weight")]
    base = {n: ds.get(n) for n in names if n in ds}
    srcs = list(ds.get("sources") or [])
    if not srcs:
        return [Source(name=str(ds.name), key="dataset", **base)]
    out = []
    for i, s in enumerate(srcs):
        own = {n: s.get(n) for n in names if s.get(n) is not None}
        merged = {**base, **own}
        if "val_path" not in own:
            merged["val_path"] = None  # the dataset's val_path belongs to its own `path`, not to a source
        name = s.get("name") or str(merged["path"]).rstrip("/").rsplit("/", 1)[-1]
        out.append(
            Source(name=name, weight=float(s.get("weight", 1.0)), key=f"dataset.sources[{i}]", **merged)
        )
    return out


@dataclass
class Chat:
    """A conversation: (role, content, train) per message; ``train`` None means dataset.train_on decides."""

    messages: list[tuple[str, str, bool | None]]


@dataclass
class Instruction:
    prompt: str  # the rendered prompt template
    response: str


def fitting_formats(columns: list[str], src: Source) -> list[str]:
    cols = set(columns)
    fit = []
    if src.messages_field and src.messages_field in cols or cols & set(CHAT_FIELDS):
        fit.append("chat")
    if {"instruction", "output"} <= cols:
        fit.append("alpaca")
    if {src.prompt_field, src.response_field} <= cols:
        fit.append("prompt_response")
    return fit


def _needs(fmt: str, src: Source) -> str:
    return {
        "chat": f"a `{src.messages_field}` column"
        if src.messages_field
        else "a `messages` or `conversations` column",
        "alpaca": "`instruction` and `output` columns",
        "prompt_response": f"`{src.prompt_field}` and `{src.response_field}` columns "
        "(dataset.prompt_field / dataset.response_field)",
    }[fmt]


def _no_fit(table: Table, row: int, columns: list[str], src: Source, fmt: str) -> DataError:
    fit = [f for f in fitting_formats(columns, src) if f != fmt]
    if fit:
        hint = "formats that fit this row: " + ", ".join(f"{f} ({src.key}.format={f})" for f in fit)
    else:
        strs = [c for c in columns if c not in (src.input_field,)]
        guess = (
            f"; if they are prompt and target, set {src.key}.format=prompt_response {src.key}.prompt_field="
            f"{strs[0]} {src.key}.response_field={strs[1]}"
            if len(strs) >= 2
            else ""
        )
        hint = (
            "no format fits: chat needs a `messages` (role/content) or `conversations` (from/value) column, "
            f"alpaca needs `instruction` and `output`, prompt_response needs `{src.prompt_field}` and "
            f"`{src.response_field}`{guess}"
        )
    wanted = "" if fmt == "auto" else f"format {fmt} needs {_needs(fmt, src)}; "
    return DataError(f"{table.where(row)}: {wanted}the row has columns {columns}; {hint}")


def detect(table: Table, src: Source) -> str:
    """The row style of ``table``: ``src.format``, or for auto the first that fits its columns (logged)."""
    columns = list(table.data.column_names)
    if src.format != "auto":
        if src.format not in fitting_formats(columns, src):
            raise _no_fit(table, 0, columns, src, src.format)
        return src.format
    fit = fitting_formats(columns, src)
    if not fit:
        raise _no_fit(table, 0, columns, src, "auto")
    log.info("%s: dataset.format=auto chose %s (columns %s)", src.path, fit[0], columns)
    return fit[0]


def column(data: Any, name: str) -> list[Any]:
    """One column of a ``datasets.Dataset`` as Python objects, in one pyarrow conversion (not row by row)."""
    if type(data.features.get(name)).__name__ == "Json":  # mixed types across rows: decoded by datasets
        return list(data.with_format(None)[name])
    return data.with_format("arrow")[name].to_pylist()  # type: ignore[no-any-return]


def examples(table: Table, src: Source, fmt: str, max_chars: int) -> list[Chat | Instruction]:
    """Every row of ``table`` as a :class:`Chat` or :class:`Instruction`; the first bad row raises DataError."""
    data = table.data
    if fmt == "chat":
        field = src.messages_field or next(f for f in CHAT_FIELDS if f in data.column_names)
        return [_chat(table, i, conv, max_chars, src) for i, conv in enumerate(column(data, field))]
    if fmt == "alpaca":
        p_field, i_field, r_field = "instruction", "input", "output"
    else:
        p_field, i_field, r_field = src.prompt_field, src.input_field, src.response_field
    prompts = column(data, p_field)
    responses = column(data, r_field)
    extras = column(data, i_field) if i_field and i_field in data.column_names else [None] * len(prompts)
    out: list[Chat | Instruction] = []
    for i, (p, x, r) in enumerate(zip(prompts, extras, responses, strict=True)):
        for name, value in ((p_field, p), (r_field, r)):
            if not isinstance(value, str):
                got = "missing (null)" if value is None else type(value).__name__
                raise DataError(
                    f"{table.where(i)}: field {name!r} must be a string ({got}); fix the row, or set "
                    f"{src.key}.prompt_field / {src.key}.response_field to your file's columns"
                )
        if len(p) + len(r) + len(x or "") > max_chars:
            raise _too_long(table, i, len(p) + len(r) + len(x or ""), max_chars)
        if isinstance(x, str) and x.strip():
            prompt = src.input_template.format(prompt=p, input=x)
        else:
            prompt = src.template.format(prompt=p, input="")
        out.append(Instruction(prompt, r))
    return out


def _too_long(table: Table, row: int, n: int, limit: int) -> DataError:
    return DataError(
        f"{table.where(row)}: {n} characters of text, over dataset.max_row_chars={limit}; remove or split "
        "the row, or raise dataset.max_row_chars"
    )


def _chat(table: Table, row: int, conv: Any, max_chars: int, src: Source) -> Chat:
    if isinstance(conv, str):  # a CSV or parquet column holding the conversation as JSON text
        try:
            conv = json.loads(conv)
        except json.JSONDecodeError as e:
            raise DataError(f"{table.where(row)}: the conversation is a string but not JSON ({e.msg})") from e
    if not isinstance(conv, list) or not conv:
        raise DataError(
            f"{table.where(row)}: the conversation must be a non-empty list of messages, got "
            f"{'an empty list' if conv == [] else type(conv).__name__}"
        )
    msgs: list[tuple[str, str, bool | None]] = []
    total = 0
    for k, m in enumerate(conv, start=1):
        if not isinstance(m, dict):
            raise DataError(f"{table.where(row)} message {k}: expected an object, got {type(m).__name__}")
        role = m.get("role") if m.get("role") is not None else m.get("from")
        content = m.get("content") if "content" in m and m.get("content") is not None else m.get("value")
        if role is None:
            have = sorted(k2 for k2, v in m.items() if v is not None)
            raise DataError(
                f"{table.where(row)} message {k}: no `role` (OpenAI) or `from` (ShareGPT) key; it has {have}"
            )
        role = ROLE_ALIASES.get(str(role).lower(), str(role).lower())
        if role not in ROLES:
            raise DataError(
                f"{table.where(row)} message {k}: role {m.get('role') or m.get('from')!r} is not known; use one "
                f"of {', '.join(ROLES)} (ShareGPT names {', '.join(sorted(ROLE_ALIASES))} are mapped)"
            )
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = "".join(p.get("text") or "" for p in content if isinstance(p, dict))
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise DataError(
                f"{table.where(row)} message {k}: content must be a string, got {type(content).__name__}"
            )
        flag: bool | None = None
        if m.get("weight") is not None:
            flag = float(m["weight"]) > 0
        elif m.get("train") is not None:
            flag = bool(m["train"])
        total += len(content)
        msgs.append((role, content, flag))
    if total > max_chars:
        raise _too_long(table, row, total, max_chars)
    if src.train_on != "all" and not any(r == "assistant" for r, _, _ in msgs):
        raise DataError(
            f"{table.where(row)}: the conversation has no assistant turn, so nothing to learn; remove the row, "
            f"add the reply, or set {src.key}.train_on=all"
        )
    return Chat(msgs)
