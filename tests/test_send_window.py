"""The send window holds at the moment of sending (issue 9, point 2).

Nothing is handed to a provider for a reader unless the reader's local time is inside
the window at that moment: not by a run at 02:00 or on a weekend, not by a long run
whose clock crosses 17:00, not by a retry after a backoff, not by the repeat of an
interrupted request. Held parts wait for the window's next opening, and `--dry-run`
and `status` say until when.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline.config import load_config
from pipeline.providers import PROVIDER_URL_ENV, get_provider
from pipeline.providers.resend import KEY_ENV
from pipeline.send import RETRIES, SendOptions, SendReport, send_due
from pipeline.store import ledger, open_store
from pipeline.store.schema import deliveries, enrollments, subscribers

from .fake_postmark import FakePostmark
from .fake_resend import BATCH_PATH, FakeResend
from .helpers import configure, enroll_examples, import_readers, run

WEEKDAYS_9_TO_17 = """
[tool.series.send_window]
days = ["mon", "tue", "wed", "thu", "fri"]
start = "09:00"
end = "17:00"
"""
# Monday 30 November 2026, 16:59:58 in Stockholm (UTC+1): two seconds before closing.
BEFORE_CLOSING = datetime(2026, 11, 30, 15, 59, 58, tzinfo=UTC)
# Tuesday 09:00 in Stockholm.
TUESDAY_OPENING = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
RESEND_KEY = "re_window_test_key"


def by_reader(root: Path, column: sa.Column[Any]) -> dict[str, Any]:
    """A column of each reader's enrollment or delivery rows, by address."""
    with open_store(root) as store, store.connect() as conn:
        rows = conn.execute(
            sa.select(subscribers.c.email, column).join(
                subscribers, subscribers.c.id == column.table.c.subscriber_id
            )
        ).all()
    return {email: value for email, value in rows}


def next_due(root: Path) -> dict[str, datetime | None]:
    """Each reader's bookmark: when a run looks at them again."""
    return by_reader(root, enrollments.c.next_due_at)


def states(root: Path) -> dict[str, str]:
    return by_reader(root, deliveries.c.state)


def postmark_recipients(fake: FakePostmark) -> Counter[str]:
    return Counter(parseaddr(m["to"])[1] for m in fake.accepted)


def send_with_clock(
    root: Path, now: datetime, *, per_request: float = 0.0, on_sleep: float = 0.0
) -> SendReport:
    """`send_due` in this process through the configured provider, on a run clock that
    moves ``per_request`` seconds with each request and ``on_sleep`` with each wait."""
    config = load_config(root)
    provider = get_provider(config.provider, config)
    clock = [0.0]
    real_send = provider.send

    def send(messages: Any, *, batch_key: str) -> Any:
        try:
            return real_send(messages, batch_key=batch_key)
        finally:
            clock[0] += per_request

    def sleep(seconds: float) -> None:
        clock[0] += on_sleep

    provider.send = send  # type: ignore[method-assign]
    options = SendOptions(now=now, sleep=sleep, monotonic=lambda: clock[0])
    try:
        with open_store(root) as store:
            return send_due(config, store, provider, options)
    finally:
        provider.close()


@pytest.fixture
def windowed(example_copy: Path) -> Path:
    """The example workspace, its six readers in six zones, sending Mon–Fri 09–17."""
    configure(example_copy, "", WEEKDAYS_9_TO_17)
    return enroll_examples(example_copy)


@pytest.fixture
def postmark_windowed(example_copy: Path, postmark: FakePostmark) -> Path:
    """Sending through the fake Postmark, Mon–Fri 09–17, in batches of two."""
    configure(
        example_copy,
        'provider = "postmark"',
        WEEKDAYS_9_TO_17 + "\n[tool.series.postmark]\nbatch_size = 2\n",
    )
    return example_copy


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
    # In the workspace's zone (Stockholm), as the header says: 08:00 UTC.
    assert "DUE (Europe/Stockholm)" in table.splitlines()[0]
    assert re.search(r"2026-12-01 09:00 +first part; held until Tue 09:00 \(send window\)", table)

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
    # sent, skipped, due now, held, scheduled, waiting, paused, failed, unknown; next due:
    # the first opening
    assert counts == ["1", "0", "0", "4", "0", "0", "0", "0", "0", "2026-12-01", "09:00"]
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


def test_a_long_run_stops_handing_over_when_the_window_closes(
    postmark_windowed: Path, postmark: FakePostmark
) -> None:
    """Six Stockholm readers, batches of two, each request taking five seconds of the run's
    clock from 16:59:58: the first batch goes out, the other four readers are given back
    untouched for Tuesday 09:00 and sent then, each once."""
    emails = import_readers(postmark_windowed, 6, zones=["Europe/Stockholm"] * 6)

    report = send_with_clock(postmark_windowed, BEFORE_CLOSING, per_request=5.0)

    assert len(postmark.accepted) == 2
    assert (report.sent, report.held, report.failed, report.unknown) == (2, 4, 0, 0)
    sent = set(states(postmark_windowed))
    assert len(sent) == 2 and set(states(postmark_windowed).values()) == {"sent"}
    bookmarks = next_due(postmark_windowed)
    assert {bookmarks[e] for e in emails if e not in sent} == {TUESDAY_OPENING}

    late = run(
        postmark_windowed, "send", "--now", (BEFORE_CLOSING + timedelta(hours=1)).isoformat()
    )
    assert late[1].startswith("sent 0,")
    assert run(postmark_windowed, "send", "--now", TUESDAY_OPENING.isoformat())[1].startswith(
        "sent 4,"
    )
    assert postmark_recipients(postmark) == {e: 1 for e in emails}


def test_a_retry_after_the_window_closed_sends_only_to_readers_still_inside(
    postmark_windowed: Path, postmark: FakePostmark
) -> None:
    """A batch for two Stockholm and two London readers is refused with 429 at 16:59:58
    Stockholm time; the backoff takes the clock past 17:00 there (16:00 in London): the
    retry goes to the London readers only, under the key of what it carries, and the
    Stockholm readers are given back for Tuesday 09:00."""
    text = postmark_windowed / "pyproject.toml"
    text.write_text(text.read_text().replace("batch_size = 2", "batch_size = 4"), encoding="utf-8")
    emails = import_readers(postmark_windowed, 4, zones=["Europe/Stockholm", "Europe/London"] * 2)
    postmark.fail_next("429")

    report = send_with_clock(postmark_windowed, BEFORE_CLOSING, on_sleep=10.0)

    first, second = postmark.batch_requests()
    assert len(first.body) == 4
    assert [parseaddr(m["To"])[1] for m in second.body] == [emails[1], emails[3]]
    assert (report.sent, report.held, report.retried) == (2, 2, 1)
    assert states(postmark_windowed) == {emails[1]: "sent", emails[3]: "sent"}
    with open_store(postmark_windowed) as store, store.connect() as conn:
        keys = conn.execute(sa.select(deliveries.c.delivery_key, deliveries.c.batch)).all()
    assert {batch for _, batch in keys} == {ledger.batch_key(k for k, _ in keys)}
    assert next_due(postmark_windowed)[emails[0]] == TUESDAY_OPENING

    run(postmark_windowed, "send", "--now", TUESDAY_OPENING.isoformat())
    assert postmark_recipients(postmark) == {e: 1 for e in emails}


@pytest.fixture
def resend(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeResend]:
    with FakeResend(key=RESEND_KEY) as server:
        monkeypatch.setenv(PROVIDER_URL_ENV, server.url)
        monkeypatch.setenv(KEY_ENV, RESEND_KEY)
        yield server


def test_an_interrupted_request_is_repeated_only_inside_the_window(
    example_copy: Path, resend: FakeResend
) -> None:
    """Resend's answers are lost at 16:59 (the outcome is unknown). A run at 23:00 does not
    repeat the request, since a repeat sends whatever never arrived: the deliveries stay
    unknown and it says until when; Tuesday 09:00 repeats it under the same key and Resend
    answers from the first, so each reader has the part once."""
    configure(example_copy, 'provider = "resend"', WEEKDAYS_9_TO_17)
    emails = import_readers(example_copy, 2, zones=["Europe/Stockholm"] * 2)
    resend.fail_next(BATCH_PATH, "drop-after", times=RETRIES + 1)
    report = send_with_clock(example_copy, BEFORE_CLOSING)
    assert report.unknown == 2
    attempts = len(resend.batch_requests())

    night = datetime(2026, 11, 30, 22, 0, tzinfo=UTC)
    code, out, err = run(example_copy, "send", "--now", night.isoformat())

    assert (code, out) == (0, "sent 0, failed 0, retried 0, unknown 2, skipped 0\n")
    assert (
        "2 deliveries of an interrupted request stay unknown until the send window opens: "
        f"repeating it may send it ({emails[0]}: held until Tue 09:00 (send window))"
    ) in err
    assert len(resend.batch_requests()) == attempts
    assert set(states(example_copy).values()) == {"unknown"}

    _, out, _ = run(example_copy, "send", "--now", TUESDAY_OPENING.isoformat())

    assert "resolved 2 delivery(ies) left unknown by an earlier run" in out
    assert len(resend.batch_requests()) == attempts + 1
    assert Counter(a for e in resend.accepted for a in e["to"]) == {e: 1 for e in emails}
    assert set(states(example_copy).values()) == {"sent"}
