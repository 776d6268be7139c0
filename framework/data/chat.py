"""Chat rendering with the model's own template, and where the loss goes.

The conversation is rendered exactly as ``tokenizer.apply_chat_template`` renders it (same Jinja environment,
same special-token variables), or with the template named by ``dataset.chat_template`` (a Jinja file or the
template text). Assistant spans are found without ``{% generation %}`` tags, which most templates lack: for
assistant message ``i`` the prompt ``render(messages[:i], add_generation_prompt=True)`` must be a prefix of
``render(messages[:i+1])``, which must be a prefix of the whole conversation. What lies between the two is the
assistant's turn; the loss covers it up to and including the first special token after its content (the
end-of-turn token: ``<|eot_id|>``, ``<|im_end|>``, ``</s>``), so nothing of the role headers or of the
system/user turns is trained. A template that is not prefix-stable is refused with the row and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from framework.data.rows import Chat
from framework.errors import DataError

Span = tuple[int, int]


def template_text(value: str | None, tokenizer: Any, key: str) -> str:
    """The Jinja text of ``dataset.chat_template``: a file (local or URI), the template itself, or None for the
    tokenizer's own."""
    if value is None:
        text = getattr(tokenizer, "chat_template", None)
        if isinstance(text, dict):  # several named templates: the default one
            text = text.get("default")
        if not text:
            raise DataError(
                f"the tokenizer has no chat_template, so chat rows cannot be rendered; set {key}.chat_template "
                "to a Jinja file or the template text (e.g. the one of the model you will serve with)"
            )
        return str(text)
    if "{%" in value or "{{" in value:
        return value
    from framework.data.read import local_path

    try:
        path = local_path(value)
    except FileNotFoundError as e:
        raise DataError(f"{key}.chat_template={value}: {e}") from e
    if not path.is_file():
        raise DataError(
            f"{key}.chat_template={value} is neither a Jinja template (no {{% or {{{{ in it) nor an existing "
            "file; pass the template text or the path of a .jinja file"
        )
    return path.read_text(encoding="utf-8-sig")


@lru_cache(maxsize=16)
def _compile(text: str) -> Any:
    try:  # the very environment apply_chat_template uses, so training renders what inference renders
        from transformers.utils.chat_template_utils import _compile_jinja_template

        return _compile_jinja_template(text)
    except ImportError:  # pragma: no cover - an older/newer transformers without the helper
        import json

        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise jinja2.exceptions.TemplateError(message)

        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
        env.globals["raise_exception"] = raise_exception
        return env.from_string(text)


class Renderer:
    """Renders conversations of one source and derives the character spans that carry the loss."""

    def __init__(self, tokenizer: Any, template: str | None, key: str = "dataset") -> None:
        import jinja2

        self.key = key
        self.text = template_text(template, tokenizer, key)
        try:
            self.compiled = _compile(self.text)
        except jinja2.TemplateSyntaxError as e:
            raise DataError(f"{key}.chat_template is not valid Jinja (line {e.lineno}: {e.message})") from e
        self.variables = {k: str(v) for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
        specials = set(getattr(tokenizer, "all_special_tokens", []))
        decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        specials |= {t.content for t in decoder.values() if getattr(t, "special", False)}
        specials = {s for s in specials if s}
        self.special_re = (
            re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)))
            if specials
            else None
        )

    def render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return str(
            self.compiled.render(
                messages=messages,
                tools=None,
                documents=None,
                add_generation_prompt=generation_prompt,
                **self.variables,
            )
        )

    def spans(self, chat: Chat, train_on: str, where: Callable[[], str]) -> tuple[str, list[Span]]:
        """The rendered conversation and the ``[start, end)`` character spans that carry the loss; ``where``
        names the row in errors (called only then)."""
        import jinja2

        msgs = [{"role": r, "content": c} for r, c, _ in chat.messages]
        try:
            full = self.render(msgs, False)
            if train_on == "all":
                return full, [(0, len(full))]
            assistant = [i for i, (r, _, _) in enumerate(chat.messages) if r == "assistant"]
            chosen = [
                i
                for i in assistant
                if chat.messages[i][2] is True
                or chat.messages[i][2] is None
                and (train_on == "assistant" or i == assistant[-1])
            ]
            out: list[Span] = []
            for i in chosen:
                prompt = self.render(msgs[:i], True)
                turn = full if i == len(msgs) - 1 else self.render(msgs[: i + 1], False)
                if not (turn.startswith(prompt) and full.startswith(turn)):
                    raise DataError(self._unstable(where, i, prompt, turn, full, train_on))
                out.append(
                    (
                        len(prompt),
                        len(prompt) + self._trained_end(turn[len(prompt) :], msgs[i]["content"], where, i),
                    )
                )
        except jinja2.TemplateError as e:
            raise DataError(
                f"{where()}: the chat template refused the conversation ({e}); fix the row, or set "
                f"{self.key}.chat_template to a template that accepts it"
            ) from e
        return full, out

    def _trained_end(self, turn: str, content: str, where: Callable[[], str], i: int) -> int:
        """Where the trained part of an assistant turn ends: after the first special token past its content."""
        end = 0
        if content.strip():
            at, n = turn.find(content), len(content)
            if at < 0:
                at, n = turn.find(content.strip()), len(content.strip())
            if at < 0:
                raise DataError(
                    f"{where()} message {i + 1}: the chat template changes the assistant text, so its span cannot "
                    f"be found; check {self.key}.chat_template"
                )
            end = at + n
        found = self.special_re.search(turn, end) if self.special_re is not None else None
        return found.end() if found else len(turn)

    def _unstable(
        self, where: Callable[[], str], i: int, prompt: str, turn: str, full: str, train_on: str
    ) -> str:
        a, b = (prompt, turn) if not turn.startswith(prompt) else (turn, full)
        at = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        fix = (
            f"use {self.key}.train_on=last_assistant (only the final reply is trained)"
            if train_on == "assistant"
            else f"set {self.key}.chat_template to a prefix-stable template"
        )
        return (
            f"{where()}: the chat template is not prefix-stable at message {i + 1}: the conversation up to it renders "
            f"{a[max(0, at - 30) : at + 30]!r} where the longer one renders {b[max(0, at - 30) : at + 30]!r} "
            f"(templates that rewrite earlier turns cannot be masked per turn); {fix}"
        )


def bos_to_add(tokenizer: Any) -> int | None:
    """The BOS id to put in front of a rendered text that lacks it: the tokenizer's, if encoding adds it by
    default (its post-processor); None when the tokenizer adds none (then the template decides alone)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return bos if with_special[:1] == [bos] and without[:1] != [bos] else None
