"""`series subscribers …` and `series db …` as an editor runs them (SQLite default store)."""

from __future__ import annotations

import codecs
import csv
import io
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.store import open_store
from pipeline.store.migrate import HEAD
from pipeline.store.schema import subscribers

from .conftest import FIXTURES
from .databases import database_at_0004
from .helpers import run

NO_SERIES = "in no series, who will be sent nothing (give a series column or --series S)"
SAVE_AS_UTF8 = (
    'save it as UTF-8 (Excel: Save As "CSV UTF-8 (Comma delimited)"; LibreOffice: '
    'character set "Unicode (UTF-8)")'
)
QUOTES = (
    "the quotes on this line do not pair up (quote a cell with a quote in it whole, the "
    'quote doubled: "Ann ""AJ"" Lee")'
)


def test_import_example_then_list(example_copy: Path) -> None:
    """The example CSV imports cleanly into subscribers/state.db and lists as a table."""
    code, out, _ = run(example_copy, "subscribers", "import", "subscribers/example.csv")
    assert (code, out) == (0, "imported 6, updated 0, unchanged 0, rejected 0\n")
    assert (example_copy / "subscribers" / "state.db").is_file()
    code, out, _ = run(example_copy, "subscribers", "list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["EMAIL", "NAME", "STATUS", "TIMEZONE", "SERIES"]
    assert len(lines) == 2 + 6
    yuki = next(line for line in lines if line.startswith("yuki.tanaka@example.com"))
    assert "attachment: not started (starts at part 2)" in yuki


def test_import_with_bad_rows_exits_1(example_copy: Path) -> None:
    """Rejected rows are printed as FILE:LINE: reason on stderr and the exit code is 1."""
    bad = FIXTURES / "csv" / "subscribers_with_bad_rows.csv"
    code, out, err = run(example_copy, "subscribers", "import", str(bad))
    assert code == 1
    assert out == "imported 2, updated 0, unchanged 0, rejected 6\n"
    assert f"{bad}:5: good.one@example.com is a duplicate of line 2\n" in err
    assert f"{bad}:6: unknown series 'knitting' (series in this workspace: attachment)\n" in err


def test_add_unsubscribe_remove(example_copy: Path) -> None:
    """add, unsubscribe and remove each print one line; unknown addresses are errors."""
    assert (
        run(
            example_copy,
            "subscribers",
            "add",
            "Ann@Example.com",
            "--name",
            "Ann",
            "--series",
            "attachment",
            "--timezone",
            "Europe/Paris",
        )[1]
        == "added\n"
    )
    assert (
        run(
            example_copy, "subscribers", "unsubscribe", "ann@example.com", "--series", "attachment"
        )[1]
        == "unsubscribed ann@example.com from attachment\n"
    )
    code, out, _ = run(example_copy, "subscribers", "list", "--series", "attachment")
    assert "attachment: unsubscribed" in out
    assert run(example_copy, "subscribers", "remove", "ann@example.com")[1].startswith(
        "erased ann@example.com"
    )
    code, _, err = run(example_copy, "subscribers", "remove", "ann@example.com")
    assert (code, err) == (1, "Error: no subscriber ann@example.com\n")
    code, _, err = run(example_copy, "subscribers", "add", "ann@example.com")
    assert code == 1
    assert (
        err
        == "Error: ann@example.com was erased at the person's request and cannot be added again\n"
    )


def test_add_refuses_unknown_series_and_timezone(example_copy: Path) -> None:
    """An unknown series or timezone is one error line and exit 1, and nothing is added."""
    code, _, err = run(example_copy, "subscribers", "add", "a@example.com", "--series", "nope")
    assert (code, err) == (
        1,
        "Error: unknown series 'nope' (series in this workspace: attachment)\n",
    )
    code, _, err = run(example_copy, "subscribers", "add", "a@example.com", "--timezone", "Nowhere")
    assert code == 1 and "unknown timezone 'Nowhere'" in err
    assert run(example_copy, "subscribers", "list")[2] == "no subscribers match\n"


def test_list_unknown_status_or_series_is_one_line(example_copy: Path) -> None:
    """An unknown --status or --series is one error line naming the valid ones, exit 1."""
    code, _, err = run(example_copy, "subscribers", "list", "--status", "gone")
    assert (code, err) == (
        1,
        "Error: unknown status 'gone' (one of: active, unsubscribed, bounced, complained)\n",
    )
    code, _, err = run(example_copy, "subscribers", "list", "--series", "knitting")
    assert (code, err) == (
        1,
        "Error: unknown series 'knitting' (series in this workspace: attachment)\n",
    )


def test_export_to_file(example_copy: Path) -> None:
    """export FILE writes a CSV with status and per-series progress."""
    run(example_copy, "subscribers", "import", "subscribers/example.csv")
    target = example_copy / "out.csv"
    code, _, err = run(example_copy, "subscribers", "export", str(target))
    assert (code, err) == (0, f"exported 6 subscriber(s) to {target}\n")
    rows = list(csv.DictReader(target.open(encoding="utf-8")))
    assert {row["progress:attachment"] for row in rows} == {
        "not started",
        "not started (starts at part 2)",
    }
    assert not list(example_copy.glob(".*.partial"))


def test_db_upgrade(example_copy: Path) -> None:
    """`series db upgrade` creates the schema and says which revision it is at."""
    code, out, _ = run(example_copy, "db", "upgrade")
    assert code == 0
    assert out.startswith("database sqlite:///") and out.endswith(f"is at schema revision {HEAD}\n")


def test_database_url_password_not_printed(
    example_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PostgreSQL URL's password never reaches the terminal, even when connecting fails."""
    monkeypatch.setenv("SERIES_DATABASE_URL", "postgresql://editor:hunter22@127.0.0.1:1/series")
    code, out, err = run(example_copy, "subscribers", "list")
    assert code == 1
    assert "hunter22" not in out + err
    assert err.startswith("Error: database postgresql://editor:***@127.0.0.1:1/series: ")


def import_fixture(
    root: Path, fixture: str, *args: str, database_url: str | None = None
) -> tuple[int, str, list[str], dict[str, str]]:
    """Import tests/fixtures/csv/FIXTURE: exit code, stdout, stderr lines with the path
    written FILE, and the stored {email: name}."""
    path = FIXTURES / "csv" / fixture
    env = {"SERIES_DATABASE_URL": database_url} if database_url else None
    code, out, err = run(root, "subscribers", "import", str(path), *args, env=env)
    with open_store(root, database_url) as store, store.connect() as conn:
        stored = dict(conn.execute(sa.select(subscribers.c.email, subscribers.c.name)).all())
    return code, out, err.replace(str(path), "FILE").splitlines(), stored


@pytest.mark.parametrize(
    ("fixture", "args", "out", "err", "stored"),
    [
        (
            "header_capitalised.csv",
            ["--series", "attachment"],
            "imported 1, updated 0, unchanged 0, rejected 0\n",
            [],
            {"ann.capital@example.com": "Ann Capital"},
        ),
        (
            "header_e_mail_address.csv",
            ["--series", "attachment"],
            "imported 1, updated 0, unchanged 0, rejected 0\n",
            [],
            {"ann.outlook@example.com": "Ann Outlook"},
        ),
        (
            "semicolon_separated.csv",
            ["--series", "attachment"],
            "imported 1, updated 0, unchanged 0, rejected 0\n",
            [],
            {"asa.berg@example.com": "Berg, Åsa"},
        ),
        (
            "tab_separated.csv",
            [],
            "imported 1, updated 0, unchanged 0, rejected 0\n",
            [],
            {"tab.one@example.com": "Tab, One"},
        ),
        (
            "bom_semicolon.csv",
            [],
            "imported 1, updated 0, unchanged 0, rejected 0\n",
            [],
            {"bom.semi@example.com": "Bom; Semi"},
        ),
        (
            "excel_unicode_text.txt",
            [],
            "imported 2, updated 0, unchanged 0, rejected 0\n",
            [],
            {"asa.berg@example.com": "Åsa Berg", "jurgen@example.com": "Jürgen Groß"},
        ),
        (
            "crlf_line_endings.csv",
            [],
            "imported 2, updated 0, unchanged 0, rejected 0\n",
            [
                "FILE:2: warning: the name had a line break (U+000D); stored as 'Two Lines'",
            ],
            {"crlf.one@example.com": "Two Lines", "crlf.two@example.com": "Crlf Two"},
        ),
        (
            "cr_line_endings.csv",
            [],
            "imported 2, updated 0, unchanged 0, rejected 0\n",
            [],
            {"cr.one@example.com": "Cr One", "cr.two@example.com": "Cr Two"},
        ),
        (
            "no_series_column.csv",
            [],
            f"imported 1, updated 0, unchanged 0, rejected 0; 1 {NO_SERIES}\n",
            [],
            {"no.series@example.com": "No Series"},
        ),
    ],
)
def test_spreadsheet_files_import(
    example_copy: Path,
    fixture: str,
    args: list[str],
    out: str,
    err: list[str],
    stored: dict[str, str],
) -> None:
    """CSV as spreadsheets write it (any header case, `;` or tab, UTF-16, CR line ends)
    imports, and the summary says when people will be sent nothing."""
    assert import_fixture(example_copy, fixture, *args) == (0, out, err, stored)


@pytest.mark.parametrize(
    ("fixture", "error"),
    [
        (
            "empty.csv",
            "FILE: the file is empty; its first row must name the columns, one of them 'email'",
        ),
        (
            "header_without_email.csv",
            "FILE:1: the header row has no email column, only 'Mail', 'Name', 'Time Zone' "
            "(call the addresses' column 'email', 'E-mail' or 'Email Address')",
        ),
        (
            "duplicate_header_columns.csv",
            "FILE:1: columns 1 and 3 ('email' and 'E-mail') both name the email column; keep one",
        ),
        (
            "windows_1252.csv",
            "FILE:2: not UTF-8 text (byte 0xE9; Windows-1252, as Excel's \"CSV (Comma "
            f'delimited)" writes?); {SAVE_AS_UTF8}',
        ),
        (
            "utf16_without_bom.csv",
            "FILE:1: the header row has NUL characters: the file looks like UTF-16 without a "
            f"byte-order mark; {SAVE_AS_UTF8}",
        ),
    ],
)
def test_unreadable_files_are_one_error(example_copy: Path, fixture: str, error: str) -> None:
    """A file that cannot be read as a subscriber list is one line naming the file, the
    line and what to do; exit 1, and nobody is imported."""
    assert import_fixture(example_copy, fixture) == (1, "", [f"Error: {error}"], {})


@pytest.mark.parametrize(
    ("fixture", "out", "err", "stored"),
    [
        (
            "name_with_line_break.csv",
            "imported 2, updated 0, unchanged 0, rejected 0\n",
            ["FILE:2: warning: the name had a line break (U+000A); stored as 'Sam Example'"],
            {"line.break@example.com": "Sam Example", "after.break@example.com": "After Break"},
        ),
        (
            "name_with_nul.csv",
            "imported 2, updated 0, unchanged 0, rejected 0\n",
            ["FILE:2: warning: the name had a control character (U+0000); stored as 'Nul Name'"],
            {"nul.name@example.com": "Nul Name", "after.nul@example.com": "After Nul"},
        ),
        (
            "attribute_with_nul.csv",
            "imported 2, updated 0, unchanged 0, rejected 0\n",
            ["FILE:2: warning: the 'plan' cell had NUL characters (U+0000); stored without them"],
            {"nul.plan@example.com": "Nul Plan", "after.nul@example.com": "After Nul"},
        ),
        (
            "timezone_300_characters.csv",
            "imported 1, updated 0, unchanged 0, rejected 1\n",
            ["FILE:2: the 'timezone' cell is 292 characters long (at most 64)"],
            {"fine.zone@example.com": ""},
        ),
        (
            "timezone_folder_name.csv",
            "imported 1, updated 0, unchanged 0, rejected 1\n",
            ["FILE:2: unknown timezone 'America' (use an IANA name such as 'Europe/Stockholm')"],
            {"fine.zone@example.com": ""},
        ),
        (
            "cell_200_kb.csv",
            "imported 1, updated 0, unchanged 0, rejected 1\n",
            ["FILE:2: the 'name' cell is 200,000 characters long (at most 200)"],
            {"after.big@example.com": "After Big"},
        ),
        (
            "name_too_long.csv",
            "imported 1, updated 0, unchanged 0, rejected 1\n",
            ["FILE:2: the 'name' cell is 204 characters long (at most 200)"],
            {"short.name@example.com": "Short Name"},
        ),
        (
            "more_cells_than_header.csv",
            "imported 1, updated 0, unchanged 0, rejected 1\n",
            [
                "FILE:3: 4 cells, but the header row has 3 columns (a cell with a comma in it "
                "must be quoted)"
            ],
            {"trailing@example.com": "Trailing Empty"},
        ),
        (
            "unclosed_quote.csv",
            "imported 2, updated 0, unchanged 0, rejected 1\n",
            [f"FILE:2: {QUOTES}"],
            {"after.one@example.com": "After One", "after.two@example.com": "After Two"},
        ),
        (
            "subscribed_at_out_of_range.csv",
            "imported 1, updated 0, unchanged 0, rejected 1\n",
            [
                "FILE:2: subscribed_at is out of range: '9999-12-31T23:00:00-05:00' (a time "
                "in the years 1 to 9999)"
            ],
            {"fine.date@example.com": ""},
        ),
        (
            "series_with_line_break.csv",
            "imported 1, updated 0, unchanged 0, rejected 1\n",
            ["FILE:2: unknown series 'attach\\nment' (series in this workspace: attachment)"],
            {"fine.series@example.com": ""},
        ),
    ],
)
def test_a_bad_row_costs_that_row_only(
    example_copy: Path,
    database_url: str,
    fixture: str,
    out: str,
    err: list[str],
    stored: dict[str, str],
) -> None:
    """A row the database, a parser or a size limit refuses is FILE:LINE: reason (the line
    the row starts on), on SQLite and PostgreSQL alike; the other rows are imported."""
    code = 1 if "rejected 0" not in out else 0
    assert import_fixture(example_copy, fixture, database_url=database_url) == (
        code,
        out,
        err,
        stored,
    )


def test_export_imports_as_it_was_exported(example_copy: Path, database_url: str) -> None:
    """Importing an export restores the cells export guarded against spreadsheet formulas,
    and only those: exporting again gives the same bytes."""
    code, _, _, stored = import_fixture(
        example_copy, "export_with_formula_cells.csv", database_url=database_url
    )
    assert code == 0
    assert stored == {
        "-2+3@example.com": "=1+1",
        "'-2+3@example.com": "'=not a formula",
        "'tis@example.com": "'Tis Me",
        "plain@example.com": "@, the handle",
    }
    target = example_copy / "again.csv"
    env = {"SERIES_DATABASE_URL": database_url}
    assert run(example_copy, "subscribers", "export", str(target), env=env)[0] == 0
    assert target.read_bytes() == (FIXTURES / "csv" / "export_with_formula_cells.csv").read_bytes()


VALID_ROWS = [
    ["email", "name", "timezone", "series", "start_part", "subscribed_at", "status", "plan"],
    ["ann@example.com", "Ann", "Europe/Oslo", "attachment", "1", "2026-10-01", "active", "x"],
    ["bo@example.com", 'Bo, "B"', "", "attachment", "2", "", "", ""],
    ["cy@example.com", "Cy", "UTC", "", "", "2026-10-02T08:00:00+02:00", "unsubscribed", "y"],
]
# What a cell may become: values each parser has refused in its own way, and any text.
CELLS = st.sampled_from(
    [
        "", " ", "America", "A" * 300, "../etc", "/etc/passwd", "a\x00b", "\x00", "x" * 140_000,
        "n" * 201, "9" * 5000, "²", "0", "-1", "9999-12-31T23:00:00-05:00",
        "0001-01-01T00:00:00+01:00", "2026-02-30", "=1+1", "'-2+3@example.com",
        "jörg@example.com", "a@b@example.com", "a" * 300 + "@example.com", "knitting",
        "attachment", "bounced",
        "Email", "E-mail Address", "source", "progress:attachment", '"', "\r", "\u2028",
    ]
) | st.text(max_size=10)  # fmt: skip
EDITS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 8), CELLS), max_size=4)
PIECES = st.sampled_from(
    [b'"', b",", b";", b"\t", b"\r", b"\n", b"\x00", b"\xff", b"\xe9", codecs.BOM_UTF8,
     codecs.BOM_UTF16_LE, b"'", b"=", b" "]
) | st.binary(max_size=8)  # fmt: skip
MUTATIONS = st.lists(
    st.tuples(st.integers(0, 400), st.sampled_from(["in", "over", "out"]), PIECES), max_size=4
)


def mangle(
    edits: list[tuple[int, int, str]], mutations: list[tuple[int, str, bytes]], encoding: str
) -> bytes:
    """VALID_ROWS with cells replaced (a column past the end adds one), written as CSV
    in ENCODING, then each (position, insert/overwrite/delete, bytes) applied."""
    rows = [list(row) for row in VALID_ROWS]
    for row, column, cell in edits:
        cells = rows[row]
        if column < len(cells):
            cells[column] = cell
        else:
            cells.append(cell)
    text = io.StringIO()
    csv.writer(text, lineterminator="\r\n").writerows(rows)
    data = text.getvalue().encode(encoding, "replace")
    for at, how, piece in mutations:
        at = min(at, len(data))
        if how == "in":
            data = data[:at] + piece + data[at:]
        elif how == "over":
            data = data[:at] + piece + data[at + len(piece) :]
        else:
            data = data[:at] + data[at + len(piece) :]
    return data


def test_mangled_csv_never_a_traceback(
    example_copy: Path, database_url: str, tmp_path: Path
) -> None:
    """Whatever a CSV is mangled into, import ends with exit 0 or 1, every message one short
    line naming the file; no traceback, on SQLite and PostgreSQL."""
    path = tmp_path / "mangled.csv"
    env = {"SERIES_DATABASE_URL": database_url}
    examples = 150 if database_url.startswith("sqlite") else 50

    @settings(max_examples=examples, deadline=None)
    @given(
        edits=EDITS,
        mutations=MUTATIONS,
        encoding=st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "utf-16", "cp1252"]),
    )
    def check(
        edits: list[tuple[int, int, str]], mutations: list[tuple[int, str, bytes]], encoding: str
    ) -> None:
        path.write_bytes(mangle(edits, mutations, encoding))
        code, out, err = run(example_copy, "subscribers", "import", str(path), env=env)
        assert code in (0, 1), (code, out, err)
        assert out == "" or (out.startswith("imported ") and out.count("\n") == 1), out
        for line in err.splitlines():
            assert line.startswith((f"{path}:", f"Error: {path}:")), line
            assert len(line) < 300 + len(str(path)), line  # bad values are quoted short
        assert code == 0 or err

    check()


WIP_DRAFT = "---\ntitle: Work in progress\npart: 9\ndraft: true\n---\n"  # no body yet


@pytest.mark.parametrize(
    "command", [("unsubscribe", "ann@example.com"), ("remove", "bo@example.com")]
)
def test_unsubscribe_and_remove_work_on_an_old_database_with_a_broken_draft(
    example_copy: Path, command: tuple[str, str]
) -> None:
    """On a 0004 database, an error in a draft nobody received stops neither unsubscribe
    nor erasure (nor the upgrade)."""
    database_at_0004(f"sqlite:///{example_copy / 'subscribers' / 'state.db'}")
    (example_copy / "series" / "attachment" / "09-wip.md").write_text(WIP_DRAFT, encoding="utf-8")
    code, out, _ = run(example_copy, "check")
    assert code == 1 and "09-wip.md" in out

    code, out, err = run(example_copy, "subscribers", *command)

    assert (code, err) == (0, ""), out + err


def test_unsubscribe_works_where_the_upgrade_is_refused(example_copy: Path) -> None:
    """When a recorded part's article is broken, unsubscribe still works: the database
    stays at 0004 and one warning says why."""
    database_at_0004(f"sqlite:///{example_copy / 'subscribers' / 'state.db'}")
    secure = example_copy / "series" / "attachment" / "02-secure.md"
    secure.write_text(secure.read_text().replace("title:", "titel:", 1), encoding="utf-8")

    code, out, err = run(example_copy, "subscribers", "unsubscribe", "ann@example.com")

    assert code == 0, out + err
    assert err.startswith(
        "Warning: cannot upgrade the database to schema 0005 while series 'attachment' has "
        "content errors (series/attachment/02-secure.md:"
    )
    assert run(example_copy, "subscribers", "list")[0] == 1
