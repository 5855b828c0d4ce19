"""Import as a library: header names, limits and the database's refusals (SQLite and
PostgreSQL where the database matters)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline import importer
from pipeline.csvfile import CsvFileError
from pipeline.importer import ImportReport, import_csv
from pipeline.store import Store, open_store
from pipeline.subscribers import Catalog, find, iter_subscribers

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
CATALOG = Catalog({"attachment": (1, 2, 3, 4, 5)})


@pytest.fixture
def store(database_url: str, tmp_path: Path) -> Iterator[Store]:
    """A store on each database, for what the database decides."""
    with open_store(tmp_path, database_url) as opened:
        yield opened


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    """A store on SQLite only, for what the file decides."""
    with open_store(tmp_path, f"sqlite:///{tmp_path / 'state.db'}") as opened:
        yield opened


def import_text(store: Store, path: Path, text: str, **kwargs: object) -> ImportReport:
    """Write TEXT to PATH as UTF-8 and import it."""
    path.write_text(text, encoding="utf-8", newline="")
    return import_csv(store, path, CATALOG, now=NOW, zone=UTC, display=path.name, **kwargs)  # type: ignore[arg-type]


def problems(report: ImportReport) -> list[str]:
    return [str(p) for p in report.problems]


@pytest.mark.parametrize(
    "header",
    ["email", "Email", "EMAIL", "e-mail", "E-Mail", "Email Address", "E-mail Address",
     "email_address", " Email "],
)  # fmt: skip
def test_email_column_spellings(sqlite_store: Store, tmp_path: Path, header: str) -> None:
    """The spellings of 'email' that spreadsheets and mail programs write name the column."""
    report = import_text(
        sqlite_store, tmp_path / "a.csv", f"{header},Time Zone\na@example.com,UTC\n"
    )
    assert (report.imported, report.problems) == (1, [])
    assert find(sqlite_store, "a@example.com").timezone == "UTC"


@pytest.mark.parametrize("header", ["mail", "Mail Address", "emails", "E-mail 1 - Value"])
def test_words_that_may_mean_something_else_are_not_guessed(
    sqlite_store: Store, tmp_path: Path, header: str
) -> None:
    """A column that might hold addresses but is not plainly named so is not taken for one."""
    with pytest.raises(CsvFileError, match="the header row has no email column"):
        import_text(sqlite_store, tmp_path / "a.csv", f"{header},name\na@example.com,A\n")


def test_other_columns_match_without_regard_to_case(sqlite_store: Store, tmp_path: Path) -> None:
    """'Start Part', 'SERIES', 'Subscribed At' are the known columns; 'Plan' stays an
    attribute with its own spelling."""
    report = import_text(
        sqlite_store,
        tmp_path / "a.csv",
        "E-mail,Full Name,SERIES,Start Part,Subscribed At,Plan\n"
        "a@example.com,Ann,attachment,2,2026-10-01,coaching\n",
    )
    assert (report.imported, report.problems) == (1, [])
    ann = find(sqlite_store, "a@example.com")
    assert ann.attributes == {"Full Name": "Ann", "Plan": "coaching"}
    assert (ann.enrollments[0].start_part, ann.created_at) == (2, datetime(2026, 10, 1, tzinfo=UTC))


def test_blank_rows_and_short_rows(sqlite_store: Store, tmp_path: Path) -> None:
    """Rows with no text (a spreadsheet's ',,,') are skipped; a short row is padded."""
    report = import_text(
        sqlite_store,
        tmp_path / "a.csv",
        "email,name,series\n,,\n\na@example.com\n , ,\nb@example.com,B,attachment,,\n",
    )
    assert (report.summary().split(";")[0], report.problems) == (
        "imported 2, updated 0, unchanged 0, rejected 0",
        [],
    )


def test_attribute_cells_are_limited(sqlite_store: Store, tmp_path: Path) -> None:
    """An attribute cell longer than MAX_ATTRIBUTE is that row's problem."""
    long = "x" * (importer.MAX_ATTRIBUTE + 1)
    report = import_text(
        sqlite_store, tmp_path / "a.csv", f"email,notes\na@example.com,{long}\nb@example.com,ok\n"
    )
    assert problems(report) == [
        "a.csv:2: the 'notes' cell is 10,001 characters long (at most 10,000)"
    ]
    assert [s.email for s in iter_subscribers(sqlite_store)] == ["b@example.com"]


def test_the_database_refusing_a_row_costs_that_row(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value the database refuses, which no check caught first, is that row's FILE:LINE:
    the rest of its batch is written (PostgreSQL enforces varchar sizes; SQLite does not)."""
    monkeypatch.setitem(importer.LIMITS, "name", 10_000)
    rows = "".join(f"r{i}@example.com,Reader {i}\n" for i in range(7))
    report = import_text(
        store, tmp_path / "a.csv", f"email,name\n{rows}long@example.com,{'L' * 201}\n", batch_size=5
    )
    if store.engine.dialect.name == "postgresql":
        assert problems(report) == [
            "a.csv:9: the database refused the row: value too long for type character varying(200)"
        ]
        assert (report.imported, report.rejected) == (7, 1)
    else:
        assert (report.imported, report.rejected) == (8, 0)
    assert find(store, "r6@example.com").name == "Reader 6"


def test_a_long_file_name_fits_the_source_column(store: Store, tmp_path: Path) -> None:
    """The source recorded for imported people is cut to the column's size."""
    path = tmp_path / f"{'n' * 240}.csv"
    report = import_text(store, path, "email\na@example.com\n")
    assert report.imported == 1
    assert find(store, "a@example.com").source == f"import:{'n' * 240}"[:200]
