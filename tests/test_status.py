"""`series status` lists deliveries left unknown; `series resolve` lets a person decide them.

The unknown deliveries come from a real run against the fake Postmark on 127.0.0.1
whose answer to the batch is lost after it accepted it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline.store import open_store
from pipeline.store.schema import deliveries, subscribers

from .fake_postmark import SEARCH_PATH, FakePostmark
from .helpers import run

MONDAY = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
ANN = "asa.berg@example.com"


@pytest.fixture
def unknown(postmark_example: Path, postmark: FakePostmark) -> Path:
    """Six part-1 deliveries whose outcome is unknown (the batch's answer was lost)."""
    postmark.fail_next("drop-after")
    _, out, _ = run(postmark_example, "send", "--now", MONDAY.isoformat())
    assert out == "sent 0, failed 0, retried 0, unknown 6, skipped 0\n"
    return postmark_example


def state_of(root: Path, email: str, part: int) -> str | None:
    with open_store(root) as store, store.connect() as conn:
        return conn.scalar(
            sa.select(deliveries.c.state)
            .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
            .where(subscribers.c.email == email, deliveries.c.part == part)
        )


def test_status_lists_each_unknown_delivery_and_how_to_decide(unknown: Path) -> None:
    """The status names every unknown delivery (address, part) and the resolve command."""
    code, out, _ = run(unknown, "status", "--now", MONDAY.isoformat())

    assert code == 0
    assert "6 delivery(ies) with an unknown outcome" in out
    assert "`series resolve attachment/PART EMAIL --sent`" in out
    lines = [line.split() for line in out.splitlines()]
    listed = {(words[0], words[1]) for words in lines if words and "@" in words[0]}
    assert (ANN, "1") in listed
    assert ("yuki.tanaka@example.com", "2") in listed
    assert len(listed) == 6


def test_resolve_sent_is_never_sent_again(unknown: Path, postmark: FakePostmark) -> None:
    """--sent: the delivery counts as sent; a later run does not send it again, even when
    the provider's search (which would otherwise find nothing) is down."""
    code, out, _ = run(unknown, "resolve", "attachment/1", ANN, "--sent")

    assert (code, out) == (0, f"attachment/1 to {ANN}: marked sent (it will not be sent again)\n")
    assert state_of(unknown, ANN, 1) == "sent"
    postmark.fail_next("500", times=50, path=SEARCH_PATH)
    later = (MONDAY + timedelta(hours=1)).isoformat()
    run(unknown, "send", "--now", later)
    assert [r["to"].endswith(f"<{ANN}>") for r in postmark.accepted].count(True) == 1


def test_resolve_not_sent_is_sent_by_a_later_run(unknown: Path, postmark: FakePostmark) -> None:
    """--not-sent: the delivery becomes failed, and the next run sends it."""
    code, out, _ = run(
        unknown, "resolve", "attachment/1", ANN.upper(), "--not-sent", "--now", MONDAY.isoformat()
    )

    assert (code, out) == (0, f"attachment/1 to {ANN}: marked not sent (a later run sends it)\n")
    assert state_of(unknown, ANN, 1) == "failed"
    postmark.fail_next("500", times=50, path=SEARCH_PATH)  # the others stay unknown
    later = (MONDAY + timedelta(hours=1)).isoformat()
    _, out, _ = run(unknown, "send", "--now", later)
    assert out.startswith("sent 1,")
    assert state_of(unknown, ANN, 1) == "sent"


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (("attachment/2", ANN, "--sent"), f"Error: no delivery of attachment/2 to {ANN}\n"),
        (
            ("attachment", ANN, "--sent"),
            "Error: name the delivery as SERIES/PART or SERIES/ARTICLE, e.g. attachment/2\n",
        ),
        (("attachment/1", "nobody", "--sent"), "Error: invalid email 'nobody': "),
    ],
)
def test_resolve_refuses_what_it_cannot_find(
    unknown: Path, args: tuple[str, ...], line: str
) -> None:
    """A delivery that does not exist, a target without a part, a bad address: one line."""
    code, out, err = run(unknown, "resolve", *args)

    assert (code, out) == (1, "")
    assert err.startswith(line) and err.count("\n") == 1


def test_resolve_refuses_a_delivery_that_is_not_unknown(unknown: Path) -> None:
    """Deciding twice: the second time says it is no longer unknown, and changes nothing."""
    run(unknown, "resolve", "attachment/1", ANN, "--not-sent")

    code, _, err = run(unknown, "resolve", "attachment/1", ANN, "--sent")

    assert code == 1
    assert err == f"Error: attachment/1 to {ANN} is failed, not unknown: nothing to decide\n"
    assert state_of(unknown, ANN, 1) == "failed"


def test_an_article_gone_since_is_listed_apart_and_resolved_by_slug(unknown: Path) -> None:
    """Part 1 removed while its deliveries are unknown: status shows them under its slug,
    apart from today's parts, and `series resolve` takes the slug (a part number names
    today's article)."""
    (unknown / "series" / "attachment" / "01-attachment-theory.md").unlink()

    code, out, _ = run(unknown, "status", "--now", MONDAY.isoformat())
    assert code == 0
    lines = out.splitlines()
    gone = lines.index(
        "no longer in the series (renamed? give the new file the old `slug:`; removed: never "
        "sent again):"
    )
    assert lines[gone + 3].split() == ["attachment-theory", "0", "0", "5"]  # Yuki: part 2
    assert [line.split()[:2] for line in lines if line.startswith(ANN)] == [
        [ANN, "attachment-theory"]
    ]
    code, _, err = run(unknown, "resolve", "attachment/1", ANN, "--sent")
    assert (code, err) == (
        1,
        "Error: attachment has no part 1 today; name the article by its slug (`series "
        "status` lists unknown deliveries with theirs)\n",
    )
    code, out, _ = run(unknown, "resolve", "attachment/attachment-theory", ANN, "--sent")
    assert (code, out) == (
        0,
        f"attachment/attachment-theory to {ANN}: marked sent (it will not be sent again)\n",
    )
    assert state_of(unknown, ANN, 1) == "sent"


def test_failed_deliveries_of_a_gone_article_are_never_tried_again(unknown: Path) -> None:
    """Status does not promise a retry the planner never makes: a failed delivery of an
    article no longer in the series is said never to be tried again."""
    run(unknown, "resolve", "attachment/1", ANN, "--not-sent")
    (unknown / "series" / "attachment" / "01-attachment-theory.md").unlink()

    code, out, _ = run(unknown, "status", "--now", MONDAY.isoformat())

    assert code == 0
    assert (
        "1 failed delivery(ies): a later run tries each again until it has failed 8 times "
        "(1 of an article no longer in the series: never tried again)."
    ) in out


def test_resolve_retry_sends_again_deliveries_that_gave_up(
    unknown: Path, postmark: FakePostmark
) -> None:
    """--retry: failed deliveries that gave up are sent by the next run, and only then."""
    with open_store(unknown) as store, store.begin() as conn:
        conn.execute(deliveries.update().values(state="failed", attempts=8, last_error="boom"))
    later = (MONDAY + timedelta(days=1)).isoformat()
    assert run(unknown, "send", "--now", later)[1].startswith("sent 0,")

    code, out, err = run(unknown, "resolve", "attachment", "--retry", "--now", later)

    assert (code, err) == (0, "")
    assert out == "attachment: 6 failed delivery(ies) will be tried again by the next run\n"
    with open_store(unknown) as store, store.connect() as conn:
        errors = set(conn.scalars(sa.select(deliveries.c.last_error)))
    assert errors == {"retried by hand after: boom"}
    assert run(unknown, "send", "--now", later)[1].startswith("sent 6,")
    assert run(unknown, "resolve", "attachment/1", ANN, "--retry")[2] == (
        "Error: no failed delivery there: nothing to retry (`series status` lists them)\n"
    )
