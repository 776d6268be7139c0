"""What looks like a secret: the one home of that rule (DESIGN.md: never a value in a manifest, dump or log).

By name (:func:`name_looks_secret`): whole words such as TOKEN, SECRET, PASSWORD, API_KEY (``TOKENIZERS_PARALLELISM``
and a toleration's bare ``key`` pass). By shape (:func:`value_looks_secret`): cloud keys, hub and GitHub tokens,
JWTs, PEM private keys, ``user:password@`` in URIs, whatever key holds them. Pure: no I/O.
"""

from __future__ import annotations

import re

SECRET_WORDS = frozenset({"TOKEN", "SECRET", "PASSWORD", "PASSWD", "APIKEY", "CREDENTIAL", "CREDENTIALS"})
TOKENIZER_WORDS = frozenset(
    {"PAD", "EOS", "BOS", "UNK", "SEP", "CLS", "MASK"}
)  # <word>_token is a tokenizer's
_WORDS = re.compile(r"[^A-Z0-9]+")


def name_looks_secret(name: str) -> bool:
    """True for names like HF_TOKEN, AWS_SECRET_ACCESS_KEY, WANDB_API_KEY, db_password, my-api-key.

    Whole words only, so TOKENIZERS_PARALLELISM, max_tokens or KEYBOARD pass; a bare ``key`` (a toleration's) is
    not a secret, nor is a tokenizer's special token (pad_token, eos_token).
    """
    words = [w for w in _WORDS.split(str(name).upper()) if w]
    if len(words) == 2 and words[1] == "TOKEN" and words[0] in TOKENIZER_WORDS:
        return False  # a tokenizer's pad_token / eos_token, not a credential
    return any(w in SECRET_WORDS for w in words) or ("KEY" in words and len(words) > 1)


# By shape: values that are credentials whatever key holds them. Each pattern is specific enough that ordinary
# config values (paths, model names, git commits, hashes) never match.
_SHAPES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("an AWS access key id", re.compile(r"\b(AKIA|ASIA|AGPA|AIDA|AROA)[A-Z0-9]{16}\b")),
    ("a Hugging Face token", re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")),
    ("a GitHub token", re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})\b")),
    ("an OpenAI/Anthropic-style API key", re.compile(r"\bsk-(ant-|proj-)?[A-Za-z0-9_-]{20,}")),
    ("a Slack token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    ("a Google API key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),
    ("a JSON Web Token", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    ("a PEM private key", re.compile(r"-----BEGIN ([A-Z ]+ )?PRIVATE KEY-----")),
    # scheme://user:password@host (a bare user@host, or ${VAR} placeholders, are fine)
    ("a password in a URI (user:password@)", re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:(?!\$\{)[^/\s@]+@")),
)


def value_looks_secret(value: object) -> str | None:
    """What kind of credential ``value`` looks like ("an AWS access key id", ...), or None."""
    if not isinstance(value, str) or len(value) < 8:
        return None
    for what, pattern in _SHAPES:
        if pattern.search(value):
            return what
    return None


def find_secret_values(node: object, path: str = "") -> list[tuple[str, str]]:
    """Every (dotted key, kind) under a plain config tree whose string value looks like a credential."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            found += find_secret_values(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list | tuple):
        for i, item in enumerate(node):
            found += find_secret_values(item, f"{path}[{i}]")
    else:
        what = value_looks_secret(node)
        if what:
            found.append((path, what))
    return found
