"""What looks like a secret: the one home of that rule (DESIGN.md: never a value in a manifest, dump or log).

By name: whole words such as TOKEN, SECRET, PASSWORD, API_KEY (``TOKENIZERS_PARALLELISM`` and a toleration's bare
``key`` pass). Pure: no I/O.
"""

from __future__ import annotations

import re

SECRET_WORDS = frozenset({"TOKEN", "SECRET", "PASSWORD", "PASSWD", "APIKEY", "CREDENTIAL", "CREDENTIALS"})
# Words that are not secrets even next to a secret word: tokenizer settings (pad_token, max_tokens) etc.
_WORDS = re.compile(r"[^A-Z0-9]+")


def name_looks_secret(name: str) -> bool:
    """True for names like HF_TOKEN, AWS_SECRET_ACCESS_KEY, WANDB_API_KEY, db_password, my-api-key.

    Whole words only, so TOKENIZERS_PARALLELISM or KEYBOARD pass; a bare ``key`` (a toleration's) is not a secret.
    """
    words = [w for w in _WORDS.split(str(name).upper()) if w]
    return any(w in SECRET_WORDS for w in words) or ("KEY" in words and len(words) > 1)
