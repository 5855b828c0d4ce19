"""Suppression sync: the provider's lists mark subscribers before anything is planned.

Driven through the real CLI against the fake Postmark on 127.0.0.1, whose stream
suppression dump has Postmark's documented shape.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline.store import open_store
from pipeline.store.schema import deliveries, status_changes, subscribers

from .conftest import POSTMARK_TOKEN as TOKEN
from .fake_postmark import FakePostmark
from .helpers import run

MONDAY = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
DUMP = "/message-streams/broadcast/suppressions/dump"
SUPPRESSED = {
    "asa.berg@example.com": "HardBounce",
    "Daniel.Okafor@Example.com": "SpamComplaint",  # the provider's spelling, not ours
    "priya.nair@example.com": "ManualSuppression",
    "stranger@example.com": "HardBounce",  # not a subscriber: ignored
}


@pytest.fixture
def postmark(postmark: FakePostmark) -> FakePostmark:
    """The fake Postmark, with four addresses on its suppression list."""
    postmark.suppress(SUPPRESSED)
    return postmark


@pytest.fixture
def workspace(postmark_example: Path) -> Path:
    return postmark_example


def statuses(root: Path) -> dict[str, str]:
    with open_store(root) as store, store.connect() as conn:
        return dict(conn.execute(sa.select(subscribers.c.email, subscribers.c.status)).all())


def recipients(fake: FakePostmark) -> set[str]:
    return {record["to"].rsplit("<", 1)[-1].rstrip(">") for record in fake.accepted}


def test_sync_marks_each_listed_subscriber_with_an_audit_entry(
    workspace: Path, postmark: FakePostmark
) -> None:
    """Hard bounce → bounced, complaint → complained, manual → unsubscribed; audited."""
    code, out, _ = run(workspace, "subscribers", "sync")

    assert code == 0
    assert out == (
        "synced 4 suppression(s) from postmark: 1 bounced, 1 complained, 1 unsubscribed\n"
    )
    now = statuses(workspace)
    assert now["asa.berg@example.com"] == "bounced"
    assert now["daniel.okafor@example.com"] == "complained"
    assert now["priya.nair@example.com"] == "unsubscribed"
    assert now["yuki.tanaka@example.com"] == "active"
    assert "stranger@example.com" not in now
    with open_store(workspace) as store, store.connect() as conn:
        audit = conn.execute(
            sa.select(status_changes.c.new_status, status_changes.c.actor, status_changes.c.reason)
            .where(status_changes.c.actor == "provider:postmark")
            .order_by(status_changes.c.new_status)
        ).all()
    assert [(a.new_status, a.actor) for a in audit] == [
        ("bounced", "provider:postmark"),
        ("complained", "provider:postmark"),
        ("unsubscribed", "provider:postmark"),
    ]
    assert audit[1].reason == "Postmark SpamComplaint (Recipient)"
    [request] = postmark.requests
    assert (request.method, request.path) == ("GET", DUMP)
    assert request.header("X-Postmark-Server-Token") == TOKEN


def test_sync_twice_changes_nobody_the_second_time(workspace: Path, postmark: FakePostmark) -> None:
    """Only active subscribers change: a second sync writes no new audit entries."""
    run(workspace, "subscribers", "sync")
    code, out, _ = run(workspace, "subscribers", "sync")

    assert (code, out) == (0, "synced 4 suppression(s) from postmark: no subscriber changed\n")
    with open_store(workspace) as store, store.connect() as conn:
        entries = conn.scalar(
            sa.select(sa.func.count()).where(status_changes.c.actor == "provider:postmark")
        )
    assert entries == 3


def test_send_syncs_before_planning(workspace: Path, postmark: FakePostmark) -> None:
    """A real send reads the list first: suppressed readers get nothing, nobody fails."""
    code, out, err = run(workspace, "send", "--now", MONDAY.isoformat())

    assert code == 0
    assert out == "sent 3, failed 0, retried 0, unknown 0, skipped 0\n"
    assert err.splitlines()[0] == (
        "synced 4 suppression(s) from postmark: 1 bounced, 1 complained, 1 unsubscribed"
    )
    assert recipients(postmark) == {
        "yuki.tanaka@example.com",
        "marcus.reyes@example.com",
        "eleanor.hughes@example.com",
    }
    assert [r.path for r in postmark.requests][:1] == [DUMP]


def test_failed_sync_stops_the_run_with_one_line(workspace: Path, postmark: FakePostmark) -> None:
    """A 500 on every try: exit 1, one line naming the cause and --skip-sync; nothing sent."""
    postmark.fail_next("500", times=3, path=DUMP)

    code, out, err = run(workspace, "send", "--now", MONDAY.isoformat())

    assert (code, out) == (1, "")
    assert err == (
        "Error: could not read postmark's suppression list (3 attempts): Postmark: answered 500; "
        "nothing was sent (run again later, or pass --skip-sync to send anyway)\n"
    )
    assert postmark.accepted == []
    with open_store(workspace) as store, store.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(deliveries)) == 0
    assert set(statuses(workspace).values()) == {"active"}


def test_a_passing_failure_is_read_again(workspace: Path, postmark: FakePostmark) -> None:
    """A 503 and a dropped connection, then the dump: the sync reads it and goes on."""
    postmark.fail_next("503", path=DUMP)
    postmark.fail_next("drop-before", path=DUMP)

    code, out, _ = run(workspace, "subscribers", "sync")

    assert (code, out) == (
        0,
        "synced 4 suppression(s) from postmark: 1 bounced, 1 complained, 1 unsubscribed\n",
    )
    assert [r.path for r in postmark.requests] == [DUMP, DUMP, DUMP]


def test_skip_sync_sends_without_reading_the_list(workspace: Path, postmark: FakePostmark) -> None:
    """--skip-sync: no request for the dump; the 406s then mark the suppressed as bounced."""
    code, out, err = run(workspace, "send", "--now", MONDAY.isoformat(), "--skip-sync")

    assert DUMP not in [r.path for r in postmark.requests]
    assert err.splitlines()[0] == "suppression sync skipped (--skip-sync)"
    assert (code, out) == (1, "sent 3, failed 3, retried 0, unknown 0, skipped 0\n")


def test_dry_run_contacts_no_provider(workspace: Path, postmark: FakePostmark) -> None:
    """--dry-run neither syncs nor sends: the fake sees no request at all."""
    code, _, _ = run(workspace, "send", "--now", MONDAY.isoformat(), "--dry-run")

    assert code == 0
    assert postmark.requests == []
    assert set(statuses(workspace).values()) == {"active"}


def test_bad_token_during_sync_is_the_usual_auth_line(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, postmark: FakePostmark
) -> None:
    """A refused token stops `subscribers sync` with one line that never shows the token."""
    monkeypatch.setenv("POSTMARK_SERVER_TOKEN", "wrong-token-9f3a")

    code, out, err = run(workspace, "subscribers", "sync")

    assert (code, out) == (1, "")
    assert err == "Error: Postmark refused the server token (401); check POSTMARK_SERVER_TOKEN\n"
    assert "wrong-token-9f3a" not in err
