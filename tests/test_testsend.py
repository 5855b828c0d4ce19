"""`series test-send`: one part to an editor through the provider, nothing else touched."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline.store import open_store
from pipeline.store.schema import deliveries, enrollments, status_changes, subscribers

from .fake_postmark import FakePostmark
from .helpers import run

NOW = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
EDITOR = "maya.editor@example.com"


def try_send(root: Path, *args: str) -> tuple[int, str, str]:
    return run(root, "test-send", *args, "--now", NOW.isoformat())


def snapshot(root: Path) -> list[list[tuple[object, ...]]]:
    with open_store(root) as store, store.connect() as conn:
        return [
            [tuple(row) for row in conn.execute(sa.select(table))]
            for table in (subscribers, enrollments, deliveries, status_changes)
        ]


def test_goes_through_the_provider_marked_as_a_test(
    example_copy: Path, postmark: FakePostmark
) -> None:
    """Postmark gets one message to the editor, "[TEST]" first in the subject, with RFC 8058
    headers and the editor's address in the body; the state is exactly as before."""
    assert run(example_copy, "subscribers", "import", "subscribers/example.csv")[0] == 0
    before = snapshot(example_copy)

    code, out, err = try_send(
        example_copy, "attachment/2", "--to", EDITOR, "--provider", "postmark"
    )

    assert (code, err) == (0, "")
    [record] = postmark.accepted
    assert out.startswith("sent a test of attachment/2 “") and out.endswith(
        f" to {EDITOR} through postmark, message id {record['message_id']}\n"
    )
    [request] = postmark.batch_requests()
    [payload] = request.body
    assert payload["To"] == EDITOR
    assert payload["Subject"].startswith("[TEST] ")
    headers = {h["Name"]: h["Value"] for h in payload["Headers"]}
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert headers["List-Unsubscribe"].startswith("<https://steadyground.example/")
    assert f"with {EDITOR}." in payload["TextBody"]
    assert snapshot(example_copy) == before


def test_outbox_needs_no_state_and_creates_none(example_copy: Path) -> None:
    """With the outbox: one .eml with the marked subject; no state database appears."""
    code, _, _ = try_send(example_copy, "attachment/1", "--to", EDITOR)

    assert code == 0
    [path] = (example_copy / "outbox").glob("*.eml")
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert str(message["Subject"]).startswith("[TEST] ")
    assert message["To"] == EDITOR
    assert not (example_copy / "subscribers" / "state.db").exists()


def test_progress_changes_the_series_block(example_copy: Path) -> None:
    """--progress 0 shows part 1 as not yet received; --progress 1 shows it in the inbox."""
    try_send(example_copy, "attachment/2", "--to", EDITOR, "--progress", "0")
    try_send(example_copy, "attachment/2", "--to", "second@example.com", "--progress", "1")

    texts = {}
    for path in (example_copy / "outbox").glob("*.eml"):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        body = message.get_body(preferencelist=("plain",))
        assert body is not None
        texts[str(message["To"])] = body.get_content()
    assert "(in your inbox)" not in texts[EDITOR]
    assert "1. What attachment styles are\n" in texts[EDITOR]
    assert "(in your inbox)" in texts["second@example.com"]


def test_a_draft_can_be_tested(example_copy: Path) -> None:
    """Part 4 is a draft: the editor can still see it in an inbox, and is told it is one."""
    code, out, _ = try_send(example_copy, "attachment/4", "--to", EDITOR)

    assert code == 0
    assert "(a draft)" in out


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ("attachment/2", "--to", "not-an-address"),
            "Error: --to: invalid email 'not-an-address': ",
        ),
        (("attachment/9", "--to", EDITOR), "Error: series 'attachment' has no part '9' "),
        (("attachment", "--to", EDITOR), "Error: name one part as SERIES/PART, e.g. attachment/1"),
        (("nosuch/1", "--to", EDITOR), "Error: no series 'nosuch' "),
    ],
)
def test_bad_arguments_are_one_line(example_copy: Path, args: tuple[str, ...], line: str) -> None:
    """A bad address or part: one line naming it, exit 1, nothing written to the outbox."""
    code, out, err = try_send(example_copy, *args)

    assert (code, out) == (1, "")
    assert err.startswith(line) and err.count("\n") == 1
    assert not (example_copy / "outbox").exists()


def test_a_refused_test_email_says_why(example_copy: Path, postmark: FakePostmark) -> None:
    """Postmark calls the editor's address inactive (406): exit 1 and the reason, no traceback."""
    postmark.inactive.add(EDITOR)

    code, _, err = try_send(example_copy, "attachment/1", "--to", EDITOR, "--provider", "postmark")

    assert code == 1
    assert err.startswith("Error: postmark refused the test email: 406: ")
    assert "Traceback" not in err
