"""Keys that match: `series send` and `series serve` refuse to start with a link-signing
key other than the one the links in inboxes were signed with; `--force` rotates, and
SERIES_PREVIOUS_SECRET_KEY keeps links from before a rotation working."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline.config import load_config
from pipeline.store import open_store
from pipeline.tokens import PREVIOUS_SECRET_ENV, SECRET_ENV, fingerprint
from pipeline.web import make_app

from .helpers import enroll_examples, run, send_at

MONDAY = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
FRIDAY = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
OLD, NEW = "old-link-key-5b1e", "new-link-key-9c2f"


def tokens(root: Path) -> set[str]:
    """The unsubscribe tokens in the outbox's .eml files."""
    found = set()
    for eml in (root / "outbox").rglob("*.eml"):
        found |= set(re.findall(r"/u/([A-Za-z0-9_.-]+)>", eml.read_text(encoding="utf-8")))
    return found


def outbox_count(root: Path) -> int:
    return len(list((root / "outbox").rglob("*.eml")))


@pytest.fixture
def sent(example_copy: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example, its six readers sent part 1 with SERIES_SECRET_KEY=OLD."""
    monkeypatch.setenv("SERIES_DATABASE_URL", database_url)
    monkeypatch.setenv(SECRET_ENV, OLD)
    enroll_examples(example_copy)
    code, out, err = send_at(example_copy, MONDAY)
    assert code == 0, out + err
    assert outbox_count(example_copy) == 6
    return example_copy


def test_send_records_the_fingerprint_never_the_key(sent: Path, database_url: str) -> None:
    """The state database holds the key's fingerprint and not the key itself."""
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        values = dict(conn.execute(sa.text("SELECT key, value FROM settings")).all())
    engine.dispose()
    assert values["link_key_fingerprint"] == fingerprint(OLD.encode())
    assert OLD not in repr(values)


@pytest.mark.parametrize("key", [NEW, None], ids=["another-key", "unset"])
def test_send_refuses_another_key(
    sent: Path, key: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A send whose key differs (another value, or unset: the database's own key) stops
    with one line before sending anything, dry run included."""
    if key is None:
        monkeypatch.delenv(SECRET_ENV)
    else:
        monkeypatch.setenv(SECRET_ENV, key)
    for args in ((), ("--dry-run",)):
        code, out, err = send_at(sent, FRIDAY, *args)
        assert code == 1 and out == ""
        assert err.count("\n") == 1 and err.startswith("Error: the link-signing key (fingerprint ")
        assert "not the one the links already sent (unsubscribe or signup confirmation)" in err
        assert "pass --force" in err and OLD not in err and (key or OLD) not in err
    assert outbox_count(sent) == 6


def test_serve_refuses_another_key(sent: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`series serve` with a key the links were not signed with does not start: one line,
    exit code 1 (every link would be "not valid" otherwise)."""
    monkeypatch.setenv(SECRET_ENV, NEW)
    code, out, err = run(sent, "serve", "--port", "1")
    assert code == 1 and out == ""
    assert err.startswith("Error: the link-signing key (fingerprint ") and err.count("\n") == 1
    assert "the links already sent were signed with" in err and NEW not in err


def test_rotation_with_force_and_the_previous_key(
    sent: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--force signs with the new key from then on; serve with the new key and the old
    one as SERIES_PREVIOUS_SECRET_KEY verifies links of both, and without the old one
    warns that links from before the rotation will be refused."""
    old_links = tokens(sent)
    monkeypatch.setenv(SECRET_ENV, NEW)
    code, out, err = send_at(sent, FRIDAY, "--force")
    assert code == 0, out + err
    assert "Warning: signing links with a new key" in err and NEW not in err
    new_links = tokens(sent) - old_links
    assert new_links
    config = load_config(sent)
    with open_store(sent, database_url) as store:
        app = make_app(config, store)
        assert app.warnings and "links signed before the last key rotation" in app.warnings[0]
        assert all(app.signer.verify(t) for t in new_links)
        assert not any(app.signer.verify(t) for t in old_links)
        monkeypatch.setenv(PREVIOUS_SECRET_ENV, OLD)
        app = make_app(config, store)
        assert app.warnings == []
        assert all(app.signer.verify(t) for t in old_links | new_links)
    # The old key alone no longer matches what links are signed with now.
    monkeypatch.setenv(SECRET_ENV, OLD)
    monkeypatch.delenv(PREVIOUS_SECRET_ENV)
    code, _, err = run(sent, "serve", "--port", "1")
    assert code == 1 and "is not the one the links already sent were signed with" in err


def test_no_links_sent_yet_takes_any_key(
    example_copy: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before any link went out, a new key is simply recorded: nothing to match."""
    monkeypatch.setenv("SERIES_DATABASE_URL", database_url)
    monkeypatch.setenv(SECRET_ENV, OLD)
    assert send_at(example_copy, MONDAY)[0] == 0  # nobody yet: nothing sent
    monkeypatch.setenv(SECRET_ENV, NEW)
    enroll_examples(example_copy)
    code, out, err = send_at(example_copy, MONDAY)
    assert code == 0, out + err
    assert outbox_count(example_copy) == 6


def test_rotating_away_from_the_stored_key_keeps_its_links_working(
    example_copy: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Links signed with the database's own key (no SERIES_SECRET_KEY) stay valid after
    `SERIES_SECRET_KEY=… series send --force`, and after a second rotation too: that
    key is in the database, so it is accepted for verifying without being named."""
    monkeypatch.setenv("SERIES_DATABASE_URL", database_url)
    monkeypatch.delenv(SECRET_ENV, raising=False)
    monkeypatch.delenv(PREVIOUS_SECRET_ENV, raising=False)
    enroll_examples(example_copy)
    assert send_at(example_copy, MONDAY)[0] == 0
    stored_links = tokens(example_copy)
    assert len(stored_links) == 6
    config = load_config(example_copy)
    for when, key in ((FRIDAY, OLD), (datetime(2026, 12, 8, 9, 0, tzinfo=UTC), NEW)):
        monkeypatch.setenv(SECRET_ENV, key)
        code, out, err = send_at(example_copy, when, "--force")
        assert code == 0, out + err
        with open_store(example_copy, database_url) as store:
            app = make_app(config, store)
            assert all(app.signer.verify(t) for t in stored_links), key
            assert all(app.signer.verify(t) for t in tokens(example_copy) - stored_links) or (
                key == NEW  # OLD's links need SERIES_PREVIOUS_SECRET_KEY=OLD
            )
    with open_store(example_copy, database_url) as store:
        assert make_app(config, store).warnings  # OLD (the key before NEW) is not set
        monkeypatch.setenv(PREVIOUS_SECRET_ENV, OLD)
        app = make_app(config, store)
        assert app.warnings == []
        assert all(app.signer.verify(t) for t in tokens(example_copy))
