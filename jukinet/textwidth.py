"""Text laid out in terminal columns: wide (CJK) characters take two columns,
combining marks and variation selectors none, so that tables of Japanese names
and addresses line up."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

# Combining marks, enclosing marks and format characters (ZWJ, variation
# selectors of IVS names, …) take no column of their own.
_ZERO_WIDTH_CATEGORIES = frozenset({"Mn", "Me", "Cf"})


def char_width(ch: str) -> int:
    """Columns one character takes: 0, 1 or 2."""
    if unicodedata.category(ch) in _ZERO_WIDTH_CATEGORIES:
        return 0
    return 2 if unicodedata.east_asian_width(ch) in "WF" else 1


def display_width(text: str) -> int:
    """Columns ``text`` takes in a terminal."""
    if text.isascii():
        return len(text)
    return sum(char_width(ch) for ch in text)


def ljust(text: str, width: int) -> str:
    """``text`` padded with spaces to ``width`` columns (unchanged if already wider)."""
    return text + " " * max(0, width - display_width(text))


def pad(text: str, width: int) -> str:
    """``text`` padded with spaces to ``width`` columns, and at least one space."""
    return text + " " * max(1, width - display_width(text))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, gap: int = 2) -> list[str]:
    """Lines of a plain-text table: the header, a rule, then one line per row.

    Every column is as wide as its widest cell; the last column is not padded.
    """
    widths = [display_width(h) for h in headers]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"{len(row)} cells in a row of a {len(headers)}-column table")
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], display_width(cell))
    spacer = " " * gap

    def line(cells: Sequence[str]) -> str:
        last = len(cells) - 1
        return spacer.join(c if i == last else ljust(c, widths[i]) for i, c in enumerate(cells))

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]
