"""The drip planner, value in and value out: simulated months of hourly runs per rule."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from pipeline.config import ALWAYS, Address, SendWindow
from pipeline.content import Article, Series
from pipeline.plan import (
    MAX_ATTEMPTS,
    Enrollment,
    LedgerEntry,
    Step,
    fingerprint,
    into_window,
    next_step,
)

UTC_ZONE = ZoneInfo("UTC")
STOCKHOLM = ZoneInfo("Europe/Stockholm")
T0 = datetime(2026, 1, 5, 6, 0, tzinfo=UTC)  # a Monday


def part(
    number: int,
    *,
    published: datetime | None = T0 - timedelta(days=30),
    draft: bool = False,
    delay: float | None = None,
) -> Article:
    return Article(
        series="demo",
        path=Path(f"series/demo/{number:02d}-p{number}.md"),
        source=f"series/demo/{number:02d}-p{number}.md",
        part=number,
        title=f"Part {number}",
        slug=f"p{number}",
        subject=None,
        preheader="",
        summary="",
        url=None,
        published=published,
        draft=draft,
        delay_days=delay,
        body="Body.",
        body_line=5,
    )


def series(
    *articles: Article,
    cadence: float = 7,
    window: SendWindow = ALWAYS,
    zone: ZoneInfo = UTC_ZONE,
) -> Series:
    return Series(
        slug="demo",
        path=Path("series/demo"),
        source="series/demo",
        title="Demo",
        description="",
        cadence_days=cadence,
        url=None,
        timezone=zone,
        send_window=window,
        sender=Address("editor@example.com"),
        articles=tuple(articles),
    )


def enrollment(
    ledger: dict[int, LedgerEntry] | None = None,
    *,
    enrolled_at: datetime = T0,
    start_part: int = 1,
    timezone: str | None = None,
) -> Enrollment:
    return Enrollment(
        id=1,
        subscriber_id=1,
        email="reader@example.com",
        name="Reader",
        timezone=timezone,
        series="demo",
        enrolled_at=enrolled_at,
        start_part=start_part,
        ledger=ledger or {},
    )


def simulate(
    s: Series,
    e: Enrollment,
    *,
    start: datetime = T0,
    days: int = 90,
    every: timedelta = timedelta(hours=1),
    skip: tuple[datetime, datetime] | None = None,
) -> list[tuple[int, datetime]]:
    """Run the planner like an hourly job; each due part is sent at that run's time."""
    ledger: dict[int, LedgerEntry] = dict(e.ledger)
    sent: list[tuple[int, datetime]] = []
    now = start
    while now < start + timedelta(days=days):
        if skip is None or not (skip[0] <= now < skip[1]):
            current = Enrollment(**{**e.__dict__, "ledger": dict(ledger)})
            step = next_step(s, current, now)
            if step.is_due:
                assert step.part is not None
                ledger[step.part] = LedgerEntry("sent", 1, now, now)
                sent.append((step.part, now))
        now += every
    return sent


def at(day: int, hour: int = 6, minute: int = 0, month: int = 1, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_first_part_at_enrollment_then_cadence() -> None:
    """Part 1 goes at enrollment; each next part cadence_days after the previous was sent."""
    sent = simulate(series(part(1), part(2), part(3), cadence=3), enrollment())
    assert sent == [(1, at(5)), (2, at(8)), (3, at(11))]


def test_delay_days_overrides_cadence() -> None:
    """A part's own delay_days replaces the series cadence for that part only."""
    s = series(part(1), part(2, delay=1), part(3, delay=0.5), part(4), cadence=7)
    sent = simulate(s, enrollment())
    assert sent == [(1, at(5)), (2, at(6)), (3, at(6, 18)), (4, at(13, 18))]


def test_draft_part_holds_the_reader_and_never_skips() -> None:
    """A draft part stops the sequence there: the parts after it are not sent either."""
    s = series(part(1), part(2, draft=True), part(3))
    assert simulate(s, enrollment()) == [(1, at(5))]
    step = next_step(s, enrollment({1: LedgerEntry("sent", 1, at(5), at(5))}), at(20))
    assert (step.kind, step.part, step.reason) == ("waiting", 2, "waiting: part 2 is a draft")


def test_unpublished_part_is_due_at_its_publish_time() -> None:
    """A part published after its normal due time goes out when it is published."""
    s = series(part(1), part(2, published=at(20, 9)), part(3), cadence=2)
    sent = simulate(s, enrollment())
    assert sent == [(1, at(5)), (2, at(20, 9)), (3, at(22, 9))]


def test_part_without_publish_date_waits() -> None:
    """A part with no `published` waits, with the reason an editor reads in the dry run."""
    s = series(part(1), part(2, published=None))
    step = next_step(s, enrollment({1: LedgerEntry("sent", 1, at(5), at(5))}), at(30))
    assert (step.kind, step.reason, step.wake_at) == (
        "waiting",
        "waiting: part 2 not published",
        None,
    )


def test_future_part_wakes_at_publish_time() -> None:
    """A part dated in the future says so and tells the store when to look again."""
    s = series(part(1), part(2, published=at(20, 9)), cadence=2)
    step = next_step(s, enrollment({1: LedgerEntry("sent", 1, at(5), at(5))}), at(10))
    assert step.kind == "waiting"
    assert step.reason == "waiting: part 2 not published until 2026-01-20"
    assert step.wake_at == at(20, 9)


def test_published_reason_names_the_date() -> None:
    """Once out, a late-published part's reason says when it was published."""
    s = series(part(1), part(2, published=at(20, 9)), cadence=2)
    step = next_step(s, enrollment({1: LedgerEntry("sent", 1, at(5), at(5))}), at(21))
    assert (step.kind, step.reason) == ("due", "part 2 published on 2026-01-20")


def test_a_job_down_for_weeks_sends_one_part_per_run() -> None:
    """After three weeks without runs, parts resume one per run, each after its delay."""
    s = series(part(1), part(2), part(3), part(4), cadence=2)
    sent = simulate(s, enrollment(), skip=(at(6), at(27)))
    # Part 2 was due on the 7th; the job came back on the 27th and sent only part 2.
    assert sent == [(1, at(5)), (2, at(27)), (3, at(29)), (4, at(31))]


def test_at_most_one_part_per_run_even_when_all_are_late() -> None:
    """With every part overdue, one run proposes exactly one part: the next in order."""
    s = series(part(1), part(2), part(3), cadence=1)
    step = next_step(s, enrollment({1: LedgerEntry("sent", 1, at(5), at(5))}), at(28))
    assert (step.kind, step.part, step.reason) == ("due", 2, "1 day after part 1")


def test_completed_enrollment_receives_a_new_part() -> None:
    """A reader who finished gets a part published later, after its delay or at publication."""
    done = {1: LedgerEntry("sent", 1, at(5), at(5)), 2: LedgerEntry("sent", 1, at(12), at(12))}
    before = series(part(1), part(2))
    assert next_step(before, enrollment(done), at(20)).kind == "complete"
    after = series(part(1), part(2), part(3, published=at(25, 12)))
    step = next_step(after, enrollment(done), at(26))
    assert (step.kind, step.part, step.due_at) == ("due", 3, at(25, 12))


def test_start_part_skips_earlier_parts() -> None:
    """A reader who starts at part 2 gets part 2 first, at enrollment, and never part 1."""
    s = series(part(1), part(2), part(3), cadence=3)
    sent = simulate(s, enrollment(start_part=2))
    assert sent == [(2, at(5)), (3, at(8))]


WEEKDAYS_9_TO_10 = SendWindow(frozenset(range(5)), time(9), time(10))


@pytest.mark.parametrize(
    ("moment", "zone", "expected"),
    [
        # Inside the window: unchanged.
        (at(5, 8, 30), STOCKHOLM, at(5, 8, 30)),  # 09:30 in Stockholm (UTC+1)
        # Before the window: later the same day.
        (at(5, 6), STOCKHOLM, at(5, 8)),
        # After the window: the next day.
        (at(5, 12), STOCKHOLM, at(6, 8)),
        # Friday evening: Monday morning.
        (at(9, 18), STOCKHOLM, at(12, 8)),
        # The same instant in New York is still Monday morning before 9.
        (at(5, 12), ZoneInfo("America/New_York"), at(5, 14)),
        # Summer time in Stockholm (UTC+2): 09:00 local is 07:00 UTC.
        (at(6, 5, month=4, year=2027), STOCKHOLM, at(6, 7, month=4, year=2027)),
    ],
)
def test_into_window(moment: datetime, zone: ZoneInfo, expected: datetime) -> None:
    """Due times move to the next instant inside the window, in the reader's local time."""
    assert into_window(moment, WEEKDAYS_9_TO_10, zone) == expected


def test_send_window_follows_dst_over_months() -> None:
    """Over a spring DST change, parts keep arriving at 09:00 Stockholm time (08:00→07:00 UTC)."""
    s = series(part(1), part(2), part(3), cadence=7, window=WEEKDAYS_9_TO_10, zone=STOCKHOLM)
    start = datetime(2027, 3, 15, 12, tzinfo=UTC)  # a Monday, after the window
    sent = simulate(s, enrollment(enrolled_at=start), start=start, days=30)
    local = [(p, when.astimezone(STOCKHOLM).strftime("%a %d %b %H:%M")) for p, when in sent]
    # The clocks go forward on Sunday 28 March 2027.
    assert local == [(1, "Tue 16 Mar 09:00"), (2, "Tue 23 Mar 09:00"), (3, "Tue 30 Mar 09:00")]
    assert [when.hour for _, when in sent] == [8, 8, 7]


def test_dst_gap_in_window_start() -> None:
    """A window opening at 02:30 on the night clocks skip it opens at 03:30 instead."""
    window = SendWindow(frozenset(range(7)), time(2, 30), time(4))
    moment = datetime(2027, 3, 28, 0, 0, tzinfo=UTC)  # 01:00 in Stockholm
    assert into_window(moment, window, STOCKHOLM).astimezone(STOCKHOLM).strftime("%H:%M") == "03:30"


def test_readers_timezone_beats_series_timezone() -> None:
    """The window is applied in the subscriber's own timezone when they have one."""
    s = series(part(1), window=WEEKDAYS_9_TO_10, zone=STOCKHOLM)
    step = next_step(s, enrollment(timezone="Asia/Tokyo"), at(5, 12))
    assert step.due_at == at(6, 0)  # 09:00 Tuesday in Tokyo
    assert step.reason == "first part; held for the send window"


@pytest.mark.parametrize(
    ("entry", "kind", "reason"),
    [
        (
            LedgerEntry("claimed", 1, at(5), claimed_until=at(5, 7)),
            "in_flight",
            "part 2 is being sent by another run",
        ),
        (
            LedgerEntry("claimed", 1, at(5), claimed_until=at(5, 6, 30)),
            "unknown",
            "part 2: a run stopped while sending it; checking with the provider before "
            "sending again",
        ),
        (
            LedgerEntry("unknown", 1, at(5)),
            "unknown",
            "part 2: delivery unknown; checking with the provider before sending again",
        ),
        (
            LedgerEntry("failed", MAX_ATTEMPTS, at(5)),
            "gave_up",
            f"part 2 failed {MAX_ATTEMPTS} times; not retried",
        ),
    ],
)
def test_part_in_progress_blocks_the_next(entry: LedgerEntry, kind: str, reason: str) -> None:
    """A claimed, unknown or abandoned part is never sent again blindly, nor overtaken."""
    s = series(part(1), part(2), part(3), cadence=0)
    ledger = {1: LedgerEntry("sent", 1, at(1), at(1)), 2: entry}
    step = next_step(s, enrollment(ledger), at(5, 6, 45))
    assert (step.kind, step.part, step.reason) == (kind, 2, reason)


def test_failed_part_retries_with_backoff() -> None:
    """A transient failure is retried after 15 minutes, then 30, 60…: attempt counted."""
    s = series(part(1), part(2), cadence=0)
    sent = {1: LedgerEntry("sent", 1, at(1), at(1))}
    first = next_step(s, enrollment({**sent, 2: LedgerEntry("failed", 1, at(5))}), at(5, 6, 10))
    assert (first.kind, first.due_at) == ("scheduled", at(5, 6, 15))
    third = next_step(s, enrollment({**sent, 2: LedgerEntry("failed", 3, at(5))}), at(5, 7, 1))
    assert (third.kind, third.due_at, third.attempt) == ("due", at(5, 7), 4)
    assert third.reason == f"retry after a failed attempt (attempt 4 of {MAX_ATTEMPTS})"


def test_wake_at_is_the_due_time() -> None:
    """A scheduled step tells the store when to look again: its due time."""
    s = series(part(1), part(2), cadence=3)
    step = next_step(s, enrollment({1: LedgerEntry("sent", 1, at(5), at(5))}), at(6))
    assert step == Step("scheduled", "3 days after part 1", 2, at(8), wake_at=at(8))


def test_fingerprint_changes_with_schedule_not_with_prose() -> None:
    """Publishing a part or moving a delay changes the fingerprint; a title edit does not."""
    base = series(part(1), part(2, published=None))
    published = series(part(1), part(2, published=at(9)))
    delayed = series(part(1), part(2, published=None, delay=2))
    retitled = series(part(1), Article(**{**part(2, published=None).__dict__, "title": "New"}))
    assert fingerprint(base) != fingerprint(published)
    assert fingerprint(base) != fingerprint(delayed)
    assert fingerprint(base) == fingerprint(retitled)
