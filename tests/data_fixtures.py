"""Chat templates and tokenizers written for the data tests (no hub access): a Llama-3-style header template
and a ChatML one, on the bundled sample tokenizer with each template's special tokens added."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SAMPLE_TOKENIZER = "pkg://framework.data/sample/tokenizer"

# Llama 3: BOS from the template, a header per message, content trimmed, <|eot_id|> ends every turn.
LLAMA3 = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

# ChatML: no BOS, <|im_start|>role\n ... <|im_end|>\n
CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
CHATML_SPECIAL = ["<|im_start|>", "<|im_end|>"]
EOT = {"llama3": "<|eot_id|>", "chatml": "<|im_end|>"}

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2 plus 2?"},
    {"role": "assistant", "content": "2 plus 2 is 4."},
    {"role": "user", "content": "And the opposite of hot?"},
    {"role": "assistant", "content": ""},
    {"role": "user", "content": "Write 12 in words."},
    {"role": "assistant", "content": "twelve"},
]


def chat_tokenizer(style: str, *, bos_from_tokenizer: bool = False) -> Any:
    """The sample tokenizer with ``style``'s template and special tokens (``llama3`` or ``chatml``).

    ``bos_from_tokenizer``: its post-processor also prepends BOS (as Llama's does), so a template that emits
    BOS itself must not get a second one.
    """
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    from framework.data.read import local_path

    tok = AutoTokenizer.from_pretrained(str(local_path(SAMPLE_TOKENIZER)))
    if style == "llama3":
        tok.add_special_tokens({"additional_special_tokens": LLAMA3_SPECIAL})
        tok.bos_token = "<|begin_of_text|>"
        tok.eos_token = "<|eot_id|>"
        tok.chat_template = LLAMA3
    else:
        tok.add_special_tokens({"additional_special_tokens": CHATML_SPECIAL})
        tok.eos_token = "<|im_end|>"
        tok.chat_template = CHATML
    if bos_from_tokenizer:
        bos = tok.bos_token
        tok.backend_tokenizer.post_processor = TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.bos_token_id)]
        )
    return tok


def save_tokenizer(tok: Any, path: Path) -> str:
    tok.save_pretrained(str(path))
    return str(path)


def write_jsonl(path: Path, rows: list[Any]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return str(path)


def expected_trained_text(messages: list[dict[str, str]], style: str, which: str = "assistant") -> list[str]:
    """What the loss must cover, computed from the messages alone: each assistant turn's content (trimmed,
    for the Llama-3 template) followed by the template's end-of-turn token."""
    turns = [m for m in messages if m["role"] == "assistant"]
    if which == "last_assistant":
        turns = turns[-1:]
    return [(m["content"].strip() if style == "llama3" else m["content"]) + EOT[style] for m in turns]
