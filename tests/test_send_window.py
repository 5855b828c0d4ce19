"""The send window holds at the moment of sending (issue 9, point 2).

Nothing is handed to a provider for a reader unless the reader's local time is inside
the window at that moment: not by a run at 02:00, on a weekend, or when daylight
saving has moved the reader's clock. Held parts wait for the window's next opening,
and `--dry-run` and `status` say until when.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline.store import open_store
from pipeline.store.schema import deliveries, enrollments, subscribers

from .helpers import configure, enroll_examples, run

WEEKDAYS_9_TO_17 = """
[tool.series.send_window]
days = ["mon", "tue", "wed", "thu", "fri"]
start = "09:00"
end = "17:00"
"""
# Tuesday 09:00 in Stockholm.
TUESDAY_OPENING = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def next_due(root: Path) -> dict[str, datetime | None]:
    """Each reader's bookmark: when a run looks at them again."""
    with open_store(root) as store, store.connect() as conn:
        rows = conn.execute(
            sa.select(subscribers.c.email, enrollments.c.next_due_at).join(
                subscribers, subscribers.c.id == enrollments.c.subscriber_id
            )
        ).all()
    return {email: when for email, when in rows}


def states(root: Path) -> dict[str, str]:
    with open_store(root) as store, store.connect() as conn:
        rows = conn.execute(
            sa.select(subscribers.c.email, deliveries.c.state).join(
                subscribers, subscribers.c.id == deliveries.c.subscriber_id
            )
        ).all()
    return {email: state for email, state in rows}


@pytest.fixture
def windowed(example_copy: Path) -> Path:
    """The example workspace, its six readers in six zones, sending Mon–Fri 09–17."""
    configure(example_copy, "", WEEKDAYS_9_TO_17)
    return enroll_examples(example_copy)


def test_a_run_at_night_holds_readers_outside_their_window(windowed: Path) -> None:
    """At 01:17 UTC on a Tuesday only the readers whose morning it is (Tokyo, Sydney) get
    their part; the dry run (JSON and table) and `status` say the others are held until
    Tue 09:00, their own time, and their bookmark is that opening."""
    now = datetime(2026, 12, 1, 1, 17, tzinfo=UTC)
    code, out, _ = run(windowed, "send", "--dry-run", "--format", "json", "--now", now.isoformat())
    assert code == 0
    plan = {row["email"]: row for row in json.loads(out)}
    held = {
        "asa.berg@example.com": "2026-12-01T08:00:00+00:00",  # Stockholm, 02:17
        "daniel.okafor@example.com": "2026-12-01T14:00:00+00:00",  # New York, Mon 20:17
        "marcus.reyes@example.com": "2026-12-01T17:00:00+00:00",  # Los Angeles, Mon 17:17
        "eleanor.hughes@example.com": "2026-12-01T09:00:00+00:00",  # London, 01:17
    }
    for email, opening in held.items():
        assert plan[email]["status"] == "held"
        assert plan[email]["why"] == "first part; held until Tue 09:00 (send window)"
        assert plan[email]["due_at"] == opening
    assert plan["yuki.tanaka@example.com"]["status"] == "due"  # Tokyo, 10:17
    assert plan["priya.nair@example.com"]["status"] == "due"  # Sydney, 12:17
    _, table, _ = run(windowed, "send", "--dry-run", "--now", now.isoformat())
    assert "2026-12-01 08:00 UTC  first part; held until Tue 09:00 (send window)" in table

    code, out, err = run(windowed, "send", "--now", now.isoformat())

    assert (code, out) == (0, "sent 2, failed 0, retried 0, unknown 0, skipped 0\n"), err
    assert set(states(windowed)) == {"yuki.tanaka@example.com", "priya.nair@example.com"}
    bookmarks = next_due(windowed)
    for email, opening in held.items():
        assert bookmarks[email] == datetime.fromisoformat(opening)
    _, status, _ = run(windowed, "status", "--now", now.isoformat())
    assert "part 1: 4 reader(s) held until Tue 09:00 (send window), in their own time" in status
    part1 = next(line for line in status.splitlines() if line.startswith("1 ")).split()
    counts = part1[part1.index("published") + 1 :]
    # sent, due now, held, scheduled, waiting, failed, unknown; next due: the first opening
    assert counts == ["1", "0", "4", "0", "0", "0", "0", "2026-12-01", "08:00", "UTC"]
    # Stockholm's opening: Åsa only (London is at 08:00, the Americas are asleep).
    assert run(windowed, "send", "--now", TUESDAY_OPENING.isoformat())[1].startswith("sent 1,")
    assert states(windowed)["asa.berg@example.com"] == "sent"


def test_a_run_on_a_day_outside_the_window_sends_nothing(windowed: Path) -> None:
    """On a Saturday nothing goes out, though every part is days overdue; on Monday at
    08:00 UTC it is 09:00 in Stockholm only, and only Åsa gets hers."""
    saturday = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)

    code, out, _ = run(windowed, "send", "--now", saturday.isoformat())

    assert (code, out) == (0, "sent 0, failed 0, retried 0, unknown 0, skipped 0\n")
    assert states(windowed) == {}
    monday = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
    assert run(windowed, "send", "--now", monday.isoformat())[1].startswith("sent 1,")
    assert states(windowed) == {"asa.berg@example.com": "sent"}


def test_the_window_follows_the_readers_clock_across_a_dst_change(example_copy: Path) -> None:
    """New York falls back on Sunday 1 November 2026: at 13:30 UTC it is 08:30 there, not
    09:30, so a window opening at 09:00 holds the part until 14:00 UTC."""
    configure(example_copy, "", WEEKDAYS_9_TO_17.replace('"fri"]', '"fri", "sat", "sun"]'))
    sunday = datetime(2026, 11, 1, 13, 30, tzinfo=UTC)
    code, out, err = run(
        example_copy,
        "subscribers",
        "add",
        "ny@example.com",
        "--series",
        "attachment",
        "--timezone",
        "America/New_York",
        "--now",
        (sunday - timedelta(days=1)).isoformat(),
    )
    assert code == 0, out + err
    _, plan, _ = run(
        example_copy, "send", "--dry-run", "--format", "json", "--now", sunday.isoformat()
    )
    (row,) = json.loads(plan)
    assert (row["status"], row["due_at"]) == ("held", "2026-11-01T14:00:00+00:00")
    assert row["why"] == "first part; held until Sun 09:00 (send window)"
    assert run(example_copy, "send", "--now", sunday.isoformat())[1].startswith("sent 0,")
    at_nine = (sunday + timedelta(minutes=30)).isoformat()
    assert run(example_copy, "send", "--now", at_nine)[1].startswith("sent 1,")
