"""Reading a CSV file the way spreadsheets write them, and writing one they read safely.

The format is RFC 4180: records end at a line break, cells are separated by one
character, and a cell that holds a separator, a quote or a line break is enclosed in
double quotes, with its quotes doubled. What spreadsheets and editors do beyond the
RFC, and is accepted here:

- line breaks: CRLF, LF or a lone CR;

- the text encoding: UTF-8, with or without a byte-order mark, or UTF-16 / UTF-32
  with a byte-order mark (Excel's "Unicode text" is UTF-16). Anything else is refused
  before a row is read, naming the line of the first byte that is not UTF-8;
- the separator: a comma, a semicolon (Excel where the decimal mark is a comma) or a
  tab. The header row decides: the first of the three that makes it name the columns
  the caller asks for (``fits``), else the one that splits it into the most cells.

Anything else wrong with a record (a quote never closed, text after a closing quote)
is that record's problem, reported with the line it starts on; reading goes on from
the line after that one. The standard library's ``csv`` module does the parsing.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .errors import SeriesError
from .headers import CONTROL
from .sources import quote

SEPARATORS = (",", ";", "\t")
# Byte-order marks, longest first: UTF-32-LE's starts with UTF-16-LE's.
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# Cells a spreadsheet would run as a formula start with one of these (OWASP, "CSV
# injection"); a cell written with a leading apostrophe is shown as text.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# A cell neutralise() guards: a formula start, perhaps after apostrophes.
_NEUTRALISED = re.compile(f"'*[{re.escape(''.join(FORMULA_START))}]")
SAVE_AS_UTF8 = (
    'save it as UTF-8 (Excel: Save As "CSV UTF-8 (Comma delimited)"; LibreOffice: '
    'character set "Unicode (UTF-8)")'
)
# Larger than any cell anyone means to write; the caller limits cells itself, with a
# message naming the column, and a quote never closed is found by the parser.
_FIELD_LIMIT = 2**31 - 1
_CHUNK = 1 << 20


class CsvFileError(SeriesError):
    """The file as a whole cannot be read as a CSV: not text, or no usable header row."""


@dataclass(frozen=True)
class Record:
    """One record: the physical line it starts on (the header is line 1) and its
    cells, or, when it cannot be read, ``error`` in words and no cells."""

    line: int
    cells: list[str]
    error: str | None = None


class CsvFile:
    """An open CSV file: its ``header`` cells, and its records after the header."""

    def __init__(self, name: str, fh: TextIO, fits: Callable[[list[str]], bool]):
        first = fh.readline()
        if not first:
            raise CsvFileError(
                f"{name}: the file is empty; its first row must name the columns, "
                "one of them 'email'"
            )
        if "\x00" in first:
            raise CsvFileError(
                f"{name}:1: the header row has NUL characters: the file looks like UTF-16 "
                f"without a byte-order mark; {SAVE_AS_UTF8}"
            )
        self.separator, self.header = _read_header(name, first, fits)
        self._lines = _Lines(fh)
        self._reader = csv.reader(
            self._lines, delimiter=self.separator, quotechar='"', doublequote=True, strict=True
        )

    def __iter__(self) -> Iterator[Record]:
        while True:
            line = self._lines.start_record()
            try:
                cells = next(self._reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield Record(line, [], self._explain(exc))
                continue
            if cells:  # an empty line is no record
                yield Record(line, cells)

    def _explain(self, exc: csv.Error) -> str:
        """The parser's complaint in an editor's words. The record's lines after its
        first are read again as records of their own: a stray quote must cost one
        row, not the rows that follow it."""
        self._lines.read_again_after_first()
        message = str(exc)
        if message.startswith("unexpected end of data") or "expected after" in message:
            return (
                "the quotes on this line do not pair up (quote a cell with a quote in "
                'it whole, the quote doubled: "Ann ""AJ"" Lee")'
            )
        return f"not a CSV record: {message}"


class _Lines:
    """The file's lines for the csv reader, counting them, and keeping the lines of
    the record being read so they can be read again."""

    def __init__(self, fh: TextIO) -> None:
        self._fh = fh
        self.number = 1  # the header's line has been read
        self._record: list[str] = []
        self._again: deque[str] = deque()

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self._again.popleft() if self._again else next(self._fh)
        self.number += 1
        self._record.append(line)
        return line

    def start_record(self) -> int:
        """Begin a record; the number of the line it starts on."""
        self._record = []
        return self.number + 1

    def read_again_after_first(self) -> None:
        again = self._record[1:]
        self.number -= len(again)
        self._again.extendleft(reversed(again))
        self._record = []


def _read_header(name: str, line: str, fits: Callable[[list[str]], bool]) -> tuple[str, list[str]]:
    """The separator and the header cells, found as the module docstring says."""
    parsed: list[tuple[str, list[str]]] = []
    for separator in SEPARATORS:
        try:
            cells = next(csv.reader([line], delimiter=separator, strict=True), [])
        except csv.Error:
            continue
        if fits(cells):
            return separator, cells
        parsed.append((separator, cells))
    if not parsed:
        raise CsvFileError(f"{name}:1: the header row has a quote that is never closed")
    return max(parsed, key=lambda found: len(found[1]))


@contextmanager
def open_csv(path: Path, name: str, fits: Callable[[list[str]], bool]) -> Iterator[CsvFile]:
    """Open ``path`` (called ``name`` in messages) for reading as a CSV file.

    ``fits(cells)`` says whether a header row, split at a candidate separator, names
    the columns the caller needs. Raises CsvFileError when the file cannot be read,
    is not text in an accepted encoding (the whole file is checked first), or is
    empty. Records are read lazily, in order."""
    encoding = _encoding(path, name)
    limit = csv.field_size_limit(_FIELD_LIMIT)
    try:
        with path.open(encoding=encoding, newline="") as fh:
            yield CsvFile(name, fh, fits)
    finally:
        csv.field_size_limit(limit)


def _encoding(path: Path, name: str) -> str:
    """The file's encoding, from its byte-order mark (UTF-8 without one); CsvFileError
    naming the line of the first byte that does not decode in it."""
    try:
        with path.open("rb") as fh:
            start = fh.read(4)
            encoding = next((enc for bom, enc in BOMS if start.startswith(bom)), "utf-8-sig")
            fh.seek(0)
            decoder = codecs.getincrementaldecoder(encoding)()
            line = 1
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                try:
                    text = decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    before = exc.object[: exc.start].decode(encoding, errors="replace")
                    raise CsvFileError(
                        f"{name}:{line + _line_breaks(before)}: "
                        + _not_decodable(path, encoding, exc)
                    ) from None
                line += _line_breaks(text)
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError as exc:
                raise CsvFileError(
                    f"{name}:{line}: " + _not_decodable(path, encoding, exc)
                ) from None
    except OSError as exc:
        raise CsvFileError(f"{name}: cannot read the file: {exc.strerror or exc}") from None
    return encoding


def _line_breaks(text: str) -> int:
    return text.count("\n") + text.count("\r") - text.count("\r\n")


def _not_decodable(path: Path, encoding: str, exc: UnicodeDecodeError) -> str:
    byte = exc.object[exc.start : exc.start + 1].hex().upper() if exc.object else ""
    found = f"byte 0x{byte}" if byte else exc.reason
    if encoding != "utf-8-sig":
        label = "UTF-16" if encoding == "utf-16" else "UTF-32"
        return f"not {label} text ({found}), though it starts like it; {SAVE_AS_UTF8}"
    guess = ""
    try:
        path.read_bytes().decode("cp1252")
        guess = '; Windows-1252, as Excel\'s "CSV (Comma delimited)" writes?'
    except (OSError, UnicodeDecodeError):
        pass
    return f"not UTF-8 text ({found}{guess}); {SAVE_AS_UTF8}"


def neutralise(cell: str) -> str:
    """``cell`` as written to a CSV: a leading apostrophe added when a spreadsheet would
    take the cell for a formula, and when it is already apostrophes before such a
    start, so that ``restore`` gives back exactly the cell written."""
    return f"'{cell}" if _NEUTRALISED.match(cell) else cell


def restore(cell: str) -> str:
    """The cell ``neutralise`` was given: one leading apostrophe removed when the rest
    is apostrophes and a formula start. Only for files series wrote."""
    if cell.startswith("'") and _NEUTRALISED.match(cell, 1):
        return cell[1:]
    return cell


def as_one_line(message: str) -> str:
    """A message with any control character escaped, so it prints as one line."""
    return CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), message)


def header_cells(cells: Sequence[str], most: int = 8) -> str:
    """The first ``most`` header cells for a message: 'email', 'name', …"""
    listed = ", ".join(quote(c.strip(), 30) for c in cells[:most]) or "nothing"
    return listed + (f" and {len(cells) - most} more" if len(cells) > most else "")
