"""Plain-text result tables (the sweep summary, ``framework.report``): best first, the best row starred."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def fmt(x: float | None, spec: str) -> str:
    """A number for a table cell; '-' for a missing value or NaN."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def best_first(items: Sequence[T], loss: Callable[[T], float | None]) -> list[T]:
    """Lowest loss first; items without one last, in their order."""
    return sorted(items, key=lambda it: (loss(it) is None, loss(it) or 0.0))


def ranked_table(
    title: str,
    header: Sequence[str],
    items: Sequence[T],
    loss: Callable[[T], float | None],
    cells: Callable[[T], Sequence[str]],
) -> str:
    """``title``, then a column-aligned table of ``cells(item)`` best first, the best item (if it has a loss)
    starred in a leading column."""
    order = best_first(items, loss)
    best = order[0] if order and loss(order[0]) is not None else None
    rows = [("", *header)] + [("*" if it is best else "", *map(str, cells(it))) for it in order]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = [title]
    for row in rows:
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(out)
