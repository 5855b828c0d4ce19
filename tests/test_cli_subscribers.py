"""`series subscribers …` and `series db …` as an editor runs them (SQLite default store)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from .conftest import FIXTURES
from .helpers import run


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
    assert out.startswith("database sqlite:///") and out.endswith("is at schema revision 0005\n")


def test_database_url_password_not_printed(
    example_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PostgreSQL URL's password never reaches the terminal, even when connecting fails."""
    monkeypatch.setenv("SERIES_DATABASE_URL", "postgresql://editor:hunter22@127.0.0.1:1/series")
    code, out, err = run(example_copy, "subscribers", "list")
    assert code == 1
    assert "hunter22" not in out + err
    assert err.startswith("Error: database postgresql://editor:***@127.0.0.1:1/series: ")
