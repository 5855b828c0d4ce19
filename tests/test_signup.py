"""Double opt-in in the library, on SQLite and on a real PostgreSQL: the migration, the
signup store, the confirmation tokens, and the [signup] configuration."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.signup import Request, checked, confirm, iter_pending, look_up, register
from pipeline.signup_config import confirm_template, same_site
from pipeline.signup_tokens import ConfirmSigner
from pipeline.store import open_store
from pipeline.store.migrate import HEAD, _alembic_config, upgrade
from pipeline.store.schema import enrollments, signups, status_changes, subscribers

from .conftest import BuildWorkspace

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
DAY = timedelta(hours=48)
OFFERED = {"demo": "Demo Series", "other": "Another Story"}
SIGNER = ConfirmSigner(b"k" * 32)


def ask(address: str = "ann@example.com", series: str = "demo") -> Request:
    return checked(Request(email=address, name="Ann", series=series, ip="192.0.2.1"), OFFERED)


# -- the migration ----------------------------------------------------------------


def test_migration_0007_adds_signups_and_keeps_everything(
    database_url: str, tmp_path: Path
) -> None:
    """From 0006 with a subscriber in it: the table appears, the subscriber stays; down
    and up again work."""
    engine = sa.create_engine(database_url)
    upgrade(engine, "0006", workspace=tmp_path)
    with engine.begin() as conn:
        conn.execute(
            subscribers.insert().values(
                email="old@example.com",
                name="Old",
                status="active",
                created_at=NOW,
                updated_at=NOW,
                source="cli",
                attributes={},
            )
        )
    assert upgrade(engine, workspace=tmp_path) == ("0006", HEAD)
    with engine.connect() as conn:
        assert sa.inspect(conn).has_table("signups")
        assert conn.scalar(sa.select(subscribers.c.email)) == "old@example.com"
        indexes = {i["name"] for i in sa.inspect(conn).get_indexes("signups")}
        assert {"signups_by_email", "signups_by_expiry"} <= indexes
    with engine.begin() as conn:
        config = _alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, "0006")
    with engine.connect() as conn:
        assert not sa.inspect(conn).has_table("signups")
    assert upgrade(engine, workspace=tmp_path) == ("0006", HEAD)
    engine.dispose()


# -- the store ----------------------------------------------------------------------


def test_register_then_confirm_on_each_database(database_url: str, tmp_path: Path) -> None:
    """A signup is stored pending, listed, and on confirmation becomes an enrollment."""
    with open_store(tmp_path, database_url) as store:
        issued = register(store, SIGNER, ask(), now=NOW, lifetime=DAY)
        assert issued is not None and issued.expires == NOW + DAY
        [pending] = list(iter_pending(store, now=NOW))
        assert (pending.email, pending.series) == ("ann@example.com", "demo")
        assert look_up(store, SIGNER, issued.token, now=NOW, offered=OFFERED).state == "ready"
        found, joined = confirm(
            store,
            SIGNER,
            issued.token,
            now=NOW + timedelta(hours=1),
            offered=OFFERED,
            first_parts={"demo": 1},
            ip="198.51.100.7",
            user_agent="UA",
        )
        assert (found.state, joined) == ("ready", "joined")
        with store.connect() as conn:
            assert conn.scalar(sa.select(subscribers.c.status)) == "active"
            assert conn.scalar(sa.select(enrollments.c.enrolled_at)) == NOW + timedelta(hours=1)
            assert conn.scalar(sa.select(sa.func.count()).select_from(status_changes)) == 1
        assert list(iter_pending(store, now=NOW)) == []
        again = confirm(store, SIGNER, issued.token, now=NOW, offered=OFFERED, first_parts={})
        assert again[0].state == "used" and again[1] is None


def test_two_confirmations_at_once_enroll_once(database_url: str, tmp_path: Path) -> None:
    """Two POSTs of the same link racing: one confirms, the other is told it was used."""
    with open_store(tmp_path, database_url) as store:
        issued = register(store, SIGNER, ask(), now=NOW, lifetime=DAY)
        assert issued is not None
        results: list[str] = []
        barrier = threading.Barrier(4)

        def go() -> None:
            barrier.wait()
            found, joined = confirm(
                store, SIGNER, issued.token, now=NOW, offered=OFFERED, first_parts={"demo": 1}
            )
            results.append(joined or found.state)

        threads = [threading.Thread(target=go) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(results) == ["joined", "used", "used", "used"]
        with store.connect() as conn:
            assert conn.scalar(sa.select(sa.func.count()).select_from(enrollments)) == 1
            assert conn.scalar(sa.select(sa.func.count()).select_from(status_changes)) == 1


def test_expired_signups_are_purged(database_url: str, tmp_path: Path) -> None:
    """Listing (or any new signup) deletes signups whose links have expired."""
    with open_store(tmp_path, database_url) as store:
        register(store, SIGNER, ask("a@example.com"), now=NOW, lifetime=timedelta(hours=1))
        register(store, SIGNER, ask("b@example.com"), now=NOW, lifetime=DAY)
        later = NOW + timedelta(hours=1)
        assert [p.email for p in iter_pending(store, now=later)] == ["b@example.com"]
        with store.connect() as conn:
            assert list(conn.execute(sa.select(signups.c.email))) == [("b@example.com",)]


def test_a_signup_for_a_series_no_longer_offered_confirms_nothing(tmp_path: Path) -> None:
    """When the writer stops offering a series, its pending links say so and change nothing."""
    with open_store(tmp_path) as store:
        issued = register(store, SIGNER, ask(series="other"), now=NOW, lifetime=DAY)
        assert issued is not None
        found, joined = confirm(
            store, SIGNER, issued.token, now=NOW, offered={"demo": "Demo"}, first_parts={}
        )
        assert (found.state, joined) == ("unavailable", None)
        with store.connect() as conn:
            assert conn.scalar(sa.select(sa.func.count()).select_from(subscribers)) == 0


# -- tokens -------------------------------------------------------------------------


def test_token_round_trip_and_key_separation() -> None:
    """A token says what it was made for; another key, or the address's digest under
    another key, does not match."""
    token = SIGNER.token(7, "demo", "ann@example.com", expires=NOW)
    subject = SIGNER.verify(token)
    assert subject is not None
    assert (subject.signup_id, subject.series, subject.expires) == (7, "demo", NOW)
    assert subject.address_digest == SIGNER.digest("ann@example.com")
    assert subject.address_digest != SIGNER.digest("bo@example.com")
    assert ConfirmSigner(b"other").verify(token) is None
    assert "ann" not in token and "example" not in token


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_verify_never_raises_on_any_text(text: str) -> None:
    """Whatever arrives in the URL, verify answers None or a subject, never an exception."""
    SIGNER.verify(text)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=200), st.characters(codec="ascii"))
def test_any_changed_character_is_refused(position: int, char: str) -> None:
    """Changing one character anywhere in a genuine token makes it invalid."""
    token = SIGNER.token(12, "demo", "ann@example.com", expires=NOW)
    index = position % len(token)
    if token[index] == char:
        return
    changed = token[:index] + char + token[index + 1 :]
    assert SIGNER.verify(changed) is None


# -- input --------------------------------------------------------------------------


def test_checked_normalises_and_cuts() -> None:
    """The address is normalised, the name one line, the request's records cut to size."""
    request = checked(
        Request(
            email=" Ann@Example.COM ",
            name="Ann\n  Smith",
            series="demo",
            user_agent="U" * 900,
            page="p" * 900,
        ),
        OFFERED,
    )
    assert (request.email, request.name) == ("ann@example.com", "Ann Smith")
    assert len(request.user_agent) == 500 and len(request.page) == 500


# -- configuration --------------------------------------------------------------------


def config_with(workspace: BuildWorkspace, text: str) -> ConfigError | object:
    root = workspace()
    with (root / "series.toml").open("a", encoding="utf-8") as out:
        out.write("\n[signup]\n" + text)
    try:
        return load_config(root)
    except ConfigError as exc:
        return exc


def test_signup_defaults(workspace: BuildWorkspace) -> None:
    """Off unless enabled; 48 hours; 10 POSTs per IP per hour; links beside /u/."""
    config = load_config(workspace())
    assert config.signup.enabled is False
    assert (config.signup.token_hours, config.signup.per_ip_per_hour) == (48.0, 10)
    assert confirm_template(config.signup, config.unsubscribe_url, config.site_url) == (
        "https://blog.example/confirm/{token}"
    )
    assert confirm_template(config.signup, "https://news.example/x/u/{token}", "https://a") == (
        "https://news.example/x/confirm/{token}"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'next = "https://evil.example/"\n',
            "series.toml:22: 'signup.next' must be a URL on https://blog.example (site_url's "
            "scheme, host and port) or a path such as /thanks/, got 'https://evil.example/'",
        ),
        (
            'allowed_origins = ["https://blog.example/page"]\n',
            "series.toml:22: 'signup.allowed_origins[0]' must be an origin such as "
            "https://blog.example.com (scheme and host, no path), got 'https://blog.example/page'",
        ),
        (
            "token_hours = 0\n",
            "series.toml:22: 'signup.token_hours' must be a number from 0.1 to 720, got 0",
        ),
        (
            "per_ip_per_hour = 2.5\n",
            "series.toml:22: 'signup.per_ip_per_hour' must be a whole number from 0 to 100000, "
            "got 2.5",
        ),
        (
            'series = ["Demo Series"]\n',
            "series.toml:22: 'signup.series[0]' must be a series slug, got 'Demo Series'",
        ),
        (
            'confirm_url = "http://blog.example/confirm/{token}"\n',
            "series.toml:22: 'signup.confirm_url' must be an https:// URL containing {token} once "
            "(where `series serve` answers /confirm/TOKEN), got 'http://blog.example/confirm/{token}'",
        ),
        (
            "enabeld = true\n",
            "series.toml:22: unknown key 'signup.enabeld' (did you mean 'signup.enabled'?)",
        ),
    ],
)
def test_signup_config_problems_name_the_line(
    workspace: BuildWorkspace, text: str, message: str
) -> None:
    """Each bad [signup] value is one line naming the file, line and key."""
    result = config_with(workspace, text)
    assert isinstance(result, ConfigError)
    assert [str(p) for p in result.problems] == [message]


def test_serve_refuses_an_unknown_offered_series(workspace: BuildWorkspace) -> None:
    """signup.series naming no series of the workspace stops `series serve` with one line."""
    from .helpers import run

    root = workspace()
    with (root / "series.toml").open("a", encoding="utf-8") as out:
        out.write('\n[signup]\nenabled = true\nseries = ["nope"]\n')
    code, _, err = run(root, "serve", "--port", "65535")  # refused before it listens
    assert code == 1
    assert err == (
        "Error: series.toml: signup.series names 'nope', not a series of this workspace "
        "(series: demo)\n"
    )


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://blog.example/x", True),
        ("https://BLOG.example/x", True),
        ("https://blog.example:443/", True),
        ("https://blog.example:8443/", False),  # another port
        ("http://blog.example/", False),  # a downgrade
        ("https://blog.example.evil/", False),
        ("https://evil.example/?https://blog.example/", False),
        ("//blog.example/", False),
        ("https://a@blog.example/", False),
        ("https://blog.example\\@evil.example/", False),
        ("ftp://blog.example/", False),
    ],
)
def test_same_site(url: str, ok: bool) -> None:
    """Only http(s) URLs on site_url's host are followed."""
    assert same_site(url, "https://blog.example") is ok


def test_check_and_serve_report_a_broken_confirmation_template(workspace: BuildWorkspace) -> None:
    """With signup on, `series check` renders the confirmation email and names a broken
    override; `series serve` refuses to start with the same line."""
    from .helpers import run

    root = workspace()
    with (root / "series.toml").open("a", encoding="utf-8") as out:
        out.write("\n[signup]\nenabled = true\n")
    assert run(root, "check")[0] == 0
    (root / "templates" / "confirm.txt.j2").write_text(
        "Hello,\n{{ confirm_url }}\n{% if %}\n", encoding="utf-8"
    )
    code, out, err = run(root, "check")
    assert code == 1
    line = (
        "templates/confirm.txt.j2:3: template syntax error: Expected an expression, got "
        "'end of statement block'"
    )
    assert line in out + err
    code, _, err = run(root, "serve", "--port", "65535")
    assert (code, err) == (1, f"Error: {line}\n")


def test_a_confirmation_template_without_the_link_is_refused(workspace: BuildWorkspace) -> None:
    """An override that leaves out {{ confirm_url }} would mail a useless email: an error."""
    from .helpers import run

    root = workspace()
    with (root / "series.toml").open("a", encoding="utf-8") as out:
        out.write("\n[signup]\nenabled = true\n")
    (root / "templates" / "confirm.txt.j2").write_text("Hello!\n", encoding="utf-8")
    code, out, err = run(root, "check")
    assert code == 1
    assert (
        "templates/confirm.txt.j2: the confirmation email must show {{ confirm_url }}, the "
        "link that confirms the subscription" in out + err
    )
