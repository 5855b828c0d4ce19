"""Plain-text tables for the terminal."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Iterator, Sequence

from .redact import terminal_text


def display_width(text: str) -> int:
    """Columns ``text`` takes in a terminal: wide and fullwidth characters (CJK, per
    Unicode's East Asian Width property, UAX #11) take two, combining marks none."""
    if text.isascii():
        return len(text)
    width = 0
    for char in text:
        if unicodedata.combining(char):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def format_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns padded to their widest cell, measured in terminal columns (a CJK title
    takes two per character, ``display_width``); the header underlined. A cell's
    control characters (a name's escape sequence) are shown as escapes, never acted on
    by the terminal (``redact.terminal_text``)."""
    materialised = [[terminal_text(str(cell)) for cell in row] for row in rows]
    widths = [display_width(h) for h in header]
    for row in materialised:
        widths = [max(w, display_width(cell)) for w, cell in zip(widths, row, strict=True)]
    return "\n".join(table_lines(header, widths, materialised))


def table_lines(
    header: Sequence[str], widths: Sequence[int], rows: Iterable[Sequence[str]]
) -> Iterator[str]:
    """`format_table`'s lines, one at a time, for column ``widths`` measured beforehand
    in terminal columns (``display_width``; a long table need not be held in memory)."""

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell + " " * (width - display_width(cell))
            for cell, width in zip(cells, widths, strict=True)
        ).rstrip()

    yield line(header)
    yield line(["-" * w for w in widths])
    for row in rows:
        yield line(row)
