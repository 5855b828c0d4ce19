"""Plain-text tables for the terminal."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from .redact import terminal_text


def format_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the header underlined. A cell's control
    characters (a name's escape sequence) are shown as escapes, never acted on by the
    terminal (``redact.terminal_text``)."""
    materialised = [[terminal_text(str(cell)) for cell in row] for row in rows]
    widths = [len(h) for h in header]
    for row in materialised:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    return "\n".join(table_lines(header, widths, materialised))


def table_lines(
    header: Sequence[str], widths: Sequence[int], rows: Iterable[Sequence[str]]
) -> Iterator[str]:
    """`format_table`'s lines, one at a time, for column ``widths`` measured beforehand
    (a long table need not be held in memory)."""

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(width) for cell, width in zip(cells, widths, strict=True)
        ).rstrip()

    yield line(header)
    yield line(["-" * w for w in widths])
    for row in rows:
        yield line(row)
