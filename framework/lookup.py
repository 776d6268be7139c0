"""Dotted reads (``model.hidden_size``) that work alike on a DictConfig, a (partial) plain dict and the schema
dataclasses: what the memory estimate and the fast-path resolver read configs with. No imports, no torch."""

from __future__ import annotations

from typing import Any


def dotted_get(node: Any, key: str) -> Any:
    """``node.a.b.c`` for ``key="a.b.c"``; None where a part is absent or None."""
    cur = node
    for part in key.split("."):
        if cur is None:
            return None
        cur = cur.get(part) if isinstance(cur, dict) or hasattr(cur, "keys") else getattr(cur, part, None)
    return cur
