"""Import and export as a library: header names, limits, the database's refusals, and
export then import as a round trip (SQLite and PostgreSQL where the database matters)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import csvrows
from pipeline.csvfile import CsvFileError
from pipeline.importer import ImportReport, export_csv, import_csv
from pipeline.store import Store, open_store
from pipeline.store.schema import deliveries, enrollments, status_changes, subscribers
from pipeline.subscribers import Catalog, add_subscriber, find, iter_subscribers

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
    long = "x" * (csvrows.MAX_ATTRIBUTE + 1)
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
    monkeypatch.setitem(csvrows.LIMITS, "name", 10_000)
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


def test_who_is_in_no_series(store: Store, tmp_path: Path) -> None:
    """The count of people left in no series: new or existing, active, with no enrollment."""
    add_subscriber(store, CATALOG, "enrolled@example.com", now=NOW, series="attachment")
    add_subscriber(store, CATALOG, "alone@example.com", now=NOW)
    report = import_text(
        store,
        tmp_path / "a.csv",
        "email,status\nenrolled@example.com,\nalone@example.com,\nnew@example.com,\n"
        "left@example.com,unsubscribed\n",
    )
    assert report.unenrolled == 2
    assert report.summary().endswith(
        "; 2 in no series, who will be sent nothing (give a series column or --series S)"
    )
    assert (
        import_text(
            store, tmp_path / "b.csv", "email\nnew@example.com\n", series="attachment"
        ).unenrolled
        == 0
    )


# -- export, then import: a round trip ------------------------------------------------

HOSTILE = "'=+-@\t\r\n\",; \x00\u2028aÅ"
LOCAL_PARTS = st.text(alphabet="'=+-abc", min_size=1, max_size=6) | st.sampled_from(
    ["-2+3", "'-2+3", "=1+1", "''=x", "+46", "o'brien"]
)
CELLS = st.text(alphabet=st.sampled_from(HOSTILE), max_size=8)
PEOPLE = st.dictionaries(
    LOCAL_PARTS,
    st.tuples(CELLS, CELLS, st.sampled_from(["", "active", "unsubscribed"])),
    min_size=1,
    max_size=6,
)


def state(store: Store) -> list[tuple[object, ...]]:
    """Every subscriber as (email, name, status, timezone, created_at, attributes)."""
    return sorted(
        (s.email, s.name, s.status, s.timezone, s.created_at, sorted(s.attributes.items()))
        for s in iter_subscribers(store)
    )


def wipe(store: Store) -> None:
    with store.begin() as conn:
        for table in (status_changes, deliveries, enrollments, subscribers):
            conn.execute(table.delete())


@pytest.fixture
def two_stores(tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        open_store(tmp_path / "a", f"sqlite:///{tmp_path / 'a' / 'state.db'}") as first,
        open_store(tmp_path / "b", f"sqlite:///{tmp_path / 'b' / 'state.db'}") as second,
    ):
        yield first, second


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(people=PEOPLE)
def test_export_then_import_is_a_round_trip(
    two_stores: tuple[Store, Store], tmp_path: Path, people: dict[str, tuple[str, str, str]]
) -> None:
    """Whatever hostile text a list held (formula starts, apostrophes, quotes, separators),
    importing its export elsewhere gives the same people, names, statuses and attributes."""
    first, second = two_stores
    wipe(first)
    wipe(second)
    source = io.StringIO()
    writer = csv.writer(source)
    writer.writerow(["email", "name", "status", "=note"])
    for local, (name, note, status) in people.items():
        writer.writerow([f"{local}@example.com", name, status, note])
    plain = tmp_path / "list.csv"
    plain.write_text(source.getvalue(), encoding="utf-8", newline="")
    import_csv(first, plain, CATALOG, now=NOW, zone=UTC)
    exported = tmp_path / "export.csv"
    with exported.open("w", encoding="utf-8", newline="") as out:
        export_csv(first, out, CATALOG)
    report = import_csv(second, exported, CATALOG, now=NOW, zone=UTC)
    assert [p for p in report.problems if p.is_error] == []
    assert state(second) == state(first)


def test_attributes_named_like_columns_survive_a_round_trip(
    two_stores: tuple[Store, Store], tmp_path: Path
) -> None:
    """Attributes an older version stored under a column's spelling ("Name") are exported
    and imported back as attributes, not as a second name column."""
    first, second = two_stores
    add_subscriber(first, CATALOG, "ann@example.com", now=NOW, name="Ann")
    with first.begin() as conn:
        conn.execute(subscribers.update().values(attributes={"Name": "A.", "E-mail": "x"}))
    exported = tmp_path / "export.csv"
    with exported.open("w", encoding="utf-8", newline="") as out:
        export_csv(first, out, CATALOG)
    report = import_csv(second, exported, CATALOG, now=NOW, zone=UTC)
    assert report.problems == []
    assert state(second) == state(first)


@pytest.mark.parametrize(
    "header",
    ["first_name", "First Name", "First_Name", "FIRSTNAME", "first-name", "FNAME", "Given Name"],
)
def test_first_name_column_spellings(sqlite_store: Store, tmp_path: Path, header: str) -> None:
    """Excel, Mailchimp and Google Contacts spellings of the first-name column fill the
    first_name the greeting uses (it was taken only when spelled exactly first_name)."""
    report = import_text(
        sqlite_store, tmp_path / "a.csv", f"Email,Name,{header}\na@example.com,Daniel Okafor,Dan\n"
    )
    assert (report.imported, report.problems) == (1, [])
    assert find(sqlite_store, "a@example.com").attributes == {"first_name": "Dan"}


def test_first_name_is_cleaned_like_a_name(sqlite_store: Store, tmp_path: Path) -> None:
    """Line breaks become spaces with a warning, as for names; a first name longer than
    a name may be is that row's problem; an empty cell keeps the stored first name."""
    long = "D" * (csvrows.LIMITS["name"] + 1)
    report = import_text(
        sqlite_store,
        tmp_path / "a.csv",
        'email,First Name\na@example.com,"Dan\nBcc: x@evil.example"\n'
        f"b@example.com,{long}\nc@example.com,Cy\n",
    )
    assert problems(report) == [
        "a.csv:2: warning: the first name had a line break (U+000A); stored as "
        "'Dan Bcc: x@evil.example'",
        f"a.csv:4: the 'First Name' cell is {len(long):,} characters long (at most 200)",
    ]
    assert find(sqlite_store, "a@example.com").attributes == {
        "first_name": "Dan Bcc: x@evil.example"
    }
    report = import_text(sqlite_store, tmp_path / "b.csv", "email,first_name\nc@example.com,\n")
    assert (report.unchanged, report.problems) == (1, [])
    assert find(sqlite_store, "c@example.com").attributes == {"first_name": "Cy"}


def test_a_name_with_runs_of_spaces_is_reported_in_words(
    sqlite_store: Store, tmp_path: Path
) -> None:
    """The warning said "the name had None" when only spaces were made one."""
    report = import_text(
        sqlite_store, tmp_path / "a.csv", 'email,name\na@example.com,"  Leading  Spaces  "\n'
    )
    assert problems(report) == [
        "a.csv:2: warning: the name had runs of more than one space; stored as 'Leading Spaces'"
    ]
    assert find(sqlite_store, "a@example.com").name == "Leading Spaces"


# -- an import beside a send --------------------------------------------------------


def test_an_import_leaves_alone_a_reader_who_bounced_while_it_ran(
    postgres_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL lets a send's bounce commit between the import's read of a reader and
    its write. An import marking x and y unsubscribed then leaves x bounced, with no
    audit row saying x went from active to unsubscribed; y's change goes in."""
    from pipeline import importer
    from pipeline.store import ledger

    with open_store(tmp_path, postgres_database_url) as store:
        for email in ("x@example.com", "y@example.com"):
            add_subscriber(store, CATALOG, email, now=NOW, series="attachment")
        real_changes = importer._changes

        def changes(current: object, row: csvrows.Row) -> dict[str, object]:
            if row.email == "x@example.com":  # a run records a bounce of x meanwhile
                with open_store(tmp_path, postgres_database_url) as other, other.begin() as conn:
                    reader = find(other, row.email).id
                    ledger.mark_subscriber(
                        conn, reader, "bounced", actor="provider:postmark", reason="hard", now=NOW
                    )
            return real_changes(current, row)

        monkeypatch.setattr(importer, "_changes", changes)
        text = "email,status\nx@example.com,unsubscribed\ny@example.com,unsubscribed\n"
        import_text(store, tmp_path / "left.csv", text)
        assert (find(store, "x@example.com").status, find(store, "y@example.com").status) == (
            "bounced",
            "unsubscribed",
        )
        with store.connect() as conn:
            audit = conn.execute(
                sa.select(
                    subscribers.c.email, status_changes.c.old_status, status_changes.c.new_status
                )
                .join(subscribers, subscribers.c.id == status_changes.c.subscriber_id)
                .where(status_changes.c.new_status != "active")
                .order_by(status_changes.c.id)
            ).all()
    assert [tuple(row) for row in audit] == [
        ("x@example.com", "active", "bounced"),
        ("y@example.com", "active", "unsubscribed"),
    ]
