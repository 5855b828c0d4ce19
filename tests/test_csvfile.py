"""Reading CSV as spreadsheets write it, and the apostrophe that guards exported cells."""

from __future__ import annotations

import codecs
import csv
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.csvfile import CsvFileError, Record, neutralise, open_csv, restore


def has_email(cells: list[str]) -> bool:
    return "email" in cells


def read(path: Path, data: bytes) -> tuple[str, list[str], list[Record]]:
    """Write DATA to PATH and read it back: (separator, header, records)."""
    path.write_bytes(data)
    with open_csv(path, "list.csv", has_email) as table:
        return table.separator, table.header, list(table)


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ("=1+1", "'=1+1"),
        ("-2+3@example.com", "'-2+3@example.com"),
        ("+46 70 123 45 67", "'+46 70 123 45 67"),
        ("@home", "'@home"),
        ("\tindented", "'\tindented"),
        ("'=already", "''=already"),
        ("'Tis", "'Tis"),
        ("O'Brien", "O'Brien"),
        ("", ""),
    ],
)
def test_neutralise_examples(cell: str, written: str) -> None:
    """A formula start gets one apostrophe, and so does an apostrophe before one; nothing
    else changes."""
    assert neutralise(cell) == written
    assert restore(written) == cell


@given(st.text(alphabet=st.sampled_from("'=+-@\t\rab ,\"\n")))
def test_restore_undoes_neutralise(cell: str) -> None:
    """Whatever the cell, restore gives back exactly what neutralise was given, and a
    spreadsheet never sees a formula start."""
    written = neutralise(cell)
    assert restore(written) == cell
    assert not written.startswith(("=", "+", "-", "@", "\t", "\r"))


def test_records_start_where_the_row_starts(tmp_path: Path) -> None:
    """A record with a line break in a quoted cell is numbered by its first line; empty
    lines are no records."""
    _, header, records = read(
        tmp_path / "a.csv", b'email,name\r\na@example.com,"Two\r\nLines"\r\n\r\nb@example.com,B\r\n'
    )
    assert header == ["email", "name"]
    assert records == [
        Record(2, ["a@example.com", "Two\r\nLines"]),
        Record(5, ["b@example.com", "B"]),
    ]


@pytest.mark.parametrize(
    ("data", "lines"),
    [
        (b'email,name\na@example.com,"Ann\nb@example.com,B\n', [(2, False), (3, True)]),
        (b'email,name\na@example.com,"Ann" Lee\nb@example.com,B\n', [(2, False), (3, True)]),
        (
            b'email,name\na@example.com,"Ann\nb@example.com,"Bob\nc@example.com,C\n',
            [(2, False), (3, False), (4, True)],
        ),
    ],
)
def test_a_stray_quote_costs_its_line_only(
    tmp_path: Path, data: bytes, lines: list[tuple[int, bool]]
) -> None:
    """A quote that never closes, or text after a closing quote, is an error on the line
    the record starts; the lines after it are read again as records of their own."""
    _, _, records = read(tmp_path / "q.csv", data)
    assert [(r.line, r.error is None) for r in records] == lines
    assert all("quotes on this line do not pair up" in (r.error or "") for r in records[:-1])
    assert records[-1].cells[1] in ("B", "C")


@pytest.mark.parametrize(
    ("header", "separator"),
    [
        (b"email,name", ","),
        (b"email;name", ";"),
        (b"email\tname", "\t"),
        (b'email;"name, full"', ";"),
        (b"email", ","),
        (b"mail;name;zone", ";"),  # no email column: the split with the most cells
    ],
)
def test_separator_is_decided_by_the_header(tmp_path: Path, header: bytes, separator: str) -> None:
    """The header row picks the separator: the first of , ; TAB that gives an email
    column, else the one that splits it most."""
    assert read(tmp_path / "s.csv", header + b"\n")[0] == separator


@pytest.mark.parametrize(
    "data",
    [
        codecs.BOM_UTF8 + "email,name\nå@example.com,Åsa\n".encode(),
        codecs.BOM_UTF16_LE + "email,name\nå@example.com,Åsa\n".encode("utf-16-le"),
        codecs.BOM_UTF16_BE + "email,name\nå@example.com,Åsa\n".encode("utf-16-be"),
        codecs.BOM_UTF32_LE + "email,name\nå@example.com,Åsa\n".encode("utf-32-le"),
    ],
)
def test_unicode_with_a_byte_order_mark(tmp_path: Path, data: bytes) -> None:
    """UTF-8, UTF-16 and UTF-32 with a byte-order mark read as the same cells."""
    _, header, records = read(tmp_path / "u.csv", data)
    assert (header, records) == (["email", "name"], [Record(2, ["å@example.com", "Åsa"])])


def test_not_utf8_names_the_line_whatever_the_line_ends(tmp_path: Path) -> None:
    """The first byte that is not UTF-8 is reported on its line, CR line ends counted."""
    with pytest.raises(CsvFileError, match=r"^list\.csv:3: not UTF-8 text \(byte 0xFF[;)]"):
        read(tmp_path / "x.csv", b"email\rok@example.com\r\xff@example.com\r")


def test_unreadable_file_is_one_error(tmp_path: Path) -> None:
    """A file that cannot be opened is a CsvFileError naming it, not an OSError."""
    with (
        pytest.raises(CsvFileError, match=r"^list\.csv: cannot read the file: "),
        open_csv(tmp_path / "missing.csv", "list.csv", has_email),
    ):
        pass


def test_field_limit_is_restored(tmp_path: Path) -> None:
    """Reading lifts the csv module's cell size limit only while the file is open."""
    before = csv.field_size_limit()
    _, _, records = read(tmp_path / "big.csv", b"email,name\na@example.com," + b"x" * 200_000)
    assert len(records[0].cells[1]) == 200_000
    assert csv.field_size_limit() == before
