"""The database password stays hidden whatever it holds: SERIES_DATABASE_URL is read as
SQLAlchemy reads it (the password runs to the first @ and may hold / ? # spaces and
quotes; ?password= runs to the next &), its secrets are blanked exactly, and a URL that
readers would split differently, or that libpq would not take, is refused with one line."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.dburl import read_url
from pipeline.redact import database_secrets, mask_database_url, scrub_secrets

from .conftest import ROOT
from .helpers import closed_port, run

MARK = "Qz7Secret"  # every password below holds it: no output may


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example workspace, shared by the tests here: none gets as far as its state."""
    root = tmp_path_factory.mktemp("database-url") / "example"
    root.mkdir()
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    for name in ("series", "templates"):
        shutil.copytree(ROOT / name, root / name)
    return root


def outputs(root: Path, url: str) -> list[tuple[int, str]]:
    """(exit code, stdout + stderr) of `series db upgrade` and `series status` with
    SERIES_DATABASE_URL=url."""
    found = []
    for args in (("db", "upgrade"), ("status",)):
        code, out, err = run(root, *args, env={"SERIES_DATABASE_URL": url})
        found.append((code, out + err))
    return found


def closed(userinfo: str = "postgres", query: str = "") -> str:
    """A PostgreSQL URL to a port on 127.0.0.1 where nothing listens."""
    return f"postgresql://{userinfo}@127.0.0.1:{closed_port()}/series{query}"


# What a reviewer found printed in clear: SQLAlchemy read (and used) each password.
REVIEWED = {
    "slash": closed(f"postgres:ab/cd{MARK}"),
    "hash": closed(f"postgres:hash#{MARK}88"),
    "question-mark": closed(f"postgres:PgPw?{MARK}"),
    "space": closed(f"postgres:Spc {MARK}9"),
    "unencoded-at-and-more": closed(f'postgres:p@ss w"ord é/#?x{MARK}'),
    "query-semicolon": closed(query=f"?password=ab;cd{MARK}"),
    "query-space": closed(query=f"?password=ab cd{MARK}"),
    "query-ampersand": closed(query=f"?password=ab&cd{MARK}"),
    "query-at": closed(query=f"?password=ab@cd{MARK}"),
    "sslpassword": closed(query=f"?sslmode=prefer&sslpassword=x{MARK}"),
}


@pytest.mark.parametrize("url", REVIEWED.values(), ids=REVIEWED.keys())
def test_passwords_that_patterns_missed_are_never_shown(workspace: Path, url: str) -> None:
    """Each command fails with one line that shows the URL with *** for the password
    and no piece of it."""
    for code, text in outputs(workspace, url):
        assert code == 1 and text.count("\n") == 1 and text.startswith("Error: "), text
        assert MARK not in text and "***" in text, text
        assert "Traceback" not in text


def test_an_unencoded_at_is_refused_whatever_follows_it(workspace: Path) -> None:
    """p@ss with a space, a quote, non-ASCII, / # ? after the @: refused before any
    connection, and nothing after the user name is shown (where the password ends is
    not known)."""
    [(code, text), _] = outputs(workspace, REVIEWED["unencoded-at-and-more"])
    assert code == 1
    assert text == (
        "Error: SERIES_DATABASE_URL has an @ that may be part of its password (percent-encode"
        " an @ in a password, user name or parameter as %40) (postgresql://postgres:***)\n"
    )


def test_a_masked_value_keeps_what_follows_it(workspace: Path) -> None:
    """?sslpassword=… is masked up to its end: the ": connection failed" after the URL
    stays."""
    [(_, text), _] = outputs(workspace, REVIEWED["sslpassword"])
    assert "/series?sslmode=prefer&sslpassword=***: connection failed" in text, text


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql://postgres@127.0.0.1:notaport/series",
            "Error: SERIES_DATABASE_URL has a port that is not a number "
            "(postgresql://postgres@127.0.0.1:notaport/series)\n",
        ),
        (
            "postgresql://postgres@127.0.0.1:5432/series?foo=bar",
            "Error: SERIES_DATABASE_URL has a parameter after its ? that is not a libpq "
            "connection keyword ('foo'): write each as keyword=value, e.g. sslmode=require, "
            "and an & in a password as %26 (postgresql://postgres@127.0.0.1:5432/series?foo=bar)\n",
        ),
        (
            f"postgresql://postgres@127.0.0.1:5432/series?PASSWORD={MARK}",
            "Error: SERIES_DATABASE_URL has a parameter after its ? that is not a libpq "
            "connection keyword ('PASSWORD'): write each as keyword=value, e.g. sslmode=require,"
            " and an & in a password as %26 (postgresql://postgres@127.0.0.1:5432/series"
            "?PASSWORD=***)\n",
        ),
        (
            "postgresql://postgres@127.0.0.1:5432/series?sslmode=require&sslmode=disable",
            "Error: SERIES_DATABASE_URL gives a parameter twice after its ? "
            "(postgresql://postgres@127.0.0.1:5432/series?sslmode=require&sslmode=disable)\n",
        ),
    ],
    ids=["port", "unknown-parameter", "upper-case-password", "twice"],
)
def test_urls_libpq_would_not_take_are_one_line(workspace: Path, url: str, expected: str) -> None:
    """A port that is not a number, a parameter libpq does not know (keywords are lower
    case), one given twice: one line, before any connection, no traceback."""
    for code, text in outputs(workspace, url):
        assert (code, text) == (1, expected)


# Any printable character a password may hold: / ? # @ ; & % + = : spaces, quotes,
# backslashes and letters of any script.
PRINTABLE = st.text(
    alphabet=st.characters(codec="utf-8", categories=("L", "M", "N", "P", "S", "Zs")),
    max_size=12,
)


def forms(password: str) -> list[str]:
    """The URL forms a password may be written in: raw and percent-encoded in the user
    part, raw and encoded as ?password=."""
    return [
        closed(f"postgres:{password}"),
        closed(f"postgres:{quote(password, safe='')}"),
        closed(query=f"?sslmode=prefer&password={password}"),
        closed(query=f"?password={quote_plus(password)}&connect_timeout=5"),
    ]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(before=PRINTABLE, after=PRINTABLE)
def test_no_password_is_ever_shown_by_the_commands(
    workspace: Path, before: str, after: str
) -> None:
    """Whatever characters surround it, no command prints the password (nor its marked
    middle) in any form it is written in."""
    password = f"{before}{MARK}{after}"
    for url in forms(password):
        for code, text in outputs(workspace, url):
            assert code == 1 and "Traceback" not in text, text
            assert MARK not in text and password not in text, (url, text)


@settings(max_examples=300, deadline=None)
@given(before=PRINTABLE, after=PRINTABLE)
@example(before="", after="@:")  # SQLAlchemy itself cannot read the port then
def test_the_url_as_shown_and_the_secrets_to_blank(before: str, after: str) -> None:
    """For each form: the shown URL holds no piece of the password; the password as
    SQLAlchemy reads it is among the secrets blanked in any other text; a driver's
    message echoing it loses it."""
    password = f"{before}{MARK}{after}"
    for url in forms(password):
        read = read_url(url)
        assert MARK not in read.shown and MARK not in mask_database_url(url), url
        if read.problem is None:  # a refused URL may not parse at all (an "@:" in it)
            parsed = sa.make_url(url)
            used = parsed.password or str(parsed.query.get("password", ""))
            assert used in read.secrets and used in database_secrets(url)
            echoed = f"FATAL: password authentication failed ('{used}', {url})"
            assert MARK not in scrub_secrets(echoed, database_secrets(url))
