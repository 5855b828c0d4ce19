"""The drip planner, value in and value out: simulated months of hourly runs per rule."""

from __future__ import annotations

import random
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
    slug: str | None = None,
) -> Article:
    slug = slug or f"p{number}"
    return Article(
        series="demo",
        path=Path(f"series/demo/{number:02d}-{slug}.md"),
        source=f"series/demo/{number:02d}-{slug}.md",
        part=number,
        title=f"Part {number}",
        slug=slug,
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
    ledger: dict[str, LedgerEntry] | None = None,
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
    ledger: dict[str, LedgerEntry] = dict(e.ledger)
    sent: list[tuple[int, datetime]] = []
    now = start
    while now < start + timedelta(days=days):
        if skip is None or not (skip[0] <= now < skip[1]):
            current = Enrollment(**{**e.__dict__, "ledger": dict(ledger)})
            step = next_step(s, current, now)
            if step.is_due:
                assert step.part is not None and step.article is not None
                ledger[step.article] = LedgerEntry("sent", 1, now, now)
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
    step = next_step(s, enrollment({"p1": LedgerEntry("sent", 1, at(5), at(5))}), at(20))
    assert (step.kind, step.part, step.reason) == ("waiting", 2, "waiting: part 2 is a draft")


def test_unpublished_part_is_due_at_its_publish_time() -> None:
    """A part published after its normal due time goes out when it is published."""
    s = series(part(1), part(2, published=at(20, 9)), part(3), cadence=2)
    sent = simulate(s, enrollment())
    assert sent == [(1, at(5)), (2, at(20, 9)), (3, at(22, 9))]


def test_part_without_publish_date_waits() -> None:
    """A part with no `published` waits, with the reason an editor reads in the dry run."""
    s = series(part(1), part(2, published=None))
    step = next_step(s, enrollment({"p1": LedgerEntry("sent", 1, at(5), at(5))}), at(30))
    assert (step.kind, step.reason, step.wake_at) == (
        "waiting",
        "waiting: part 2 not published",
        None,
    )


def test_future_part_wakes_at_publish_time() -> None:
    """A part dated in the future says so and tells the store when to look again."""
    s = series(part(1), part(2, published=at(20, 9)), cadence=2)
    step = next_step(s, enrollment({"p1": LedgerEntry("sent", 1, at(5), at(5))}), at(10))
    assert step.kind == "waiting"
    assert step.reason == "waiting: part 2 not published until 2026-01-20"
    assert step.wake_at == at(20, 9)


def test_published_reason_names_the_date() -> None:
    """Once out, a late-published part's reason says when it was published."""
    s = series(part(1), part(2, published=at(20, 9)), cadence=2)
    step = next_step(s, enrollment({"p1": LedgerEntry("sent", 1, at(5), at(5))}), at(21))
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
    step = next_step(s, enrollment({"p1": LedgerEntry("sent", 1, at(5), at(5))}), at(28))
    assert (step.kind, step.part, step.reason) == ("due", 2, "1 day after part 1")


def test_completed_enrollment_receives_a_new_part() -> None:
    """A reader who finished gets a part published later, after its delay or at publication."""
    done = {
        "p1": LedgerEntry("sent", 1, at(5), at(5)),
        "p2": LedgerEntry("sent", 1, at(12), at(12)),
    }
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
            "part 2: a run stopped while sending it; the next run asks the provider first, "
            "and sends it again only if it never arrived; if the provider cannot tell, it "
            "waits for `series resolve`",
        ),
        (
            LedgerEntry("unknown", 1, at(5)),
            "unknown",
            "part 2: delivery unknown; the next run asks the provider first, and sends it "
            "again only if it never arrived; if the provider cannot tell, it waits for "
            "`series resolve`",
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
    ledger = {"p1": LedgerEntry("sent", 1, at(1), at(1)), "p2": entry}
    step = next_step(s, enrollment(ledger), at(5, 6, 45))
    assert (step.kind, step.part, step.reason) == (kind, 2, reason)


def test_failed_part_retries_with_backoff() -> None:
    """A transient failure is retried after 15 minutes, then 30, 60…: attempt counted."""
    s = series(part(1), part(2), cadence=0)
    sent = {"p1": LedgerEntry("sent", 1, at(1), at(1))}
    first = next_step(s, enrollment({**sent, "p2": LedgerEntry("failed", 1, at(5))}), at(5, 6, 10))
    assert (first.kind, first.due_at) == ("scheduled", at(5, 6, 15))
    third = next_step(s, enrollment({**sent, "p2": LedgerEntry("failed", 3, at(5))}), at(5, 7, 1))
    assert (third.kind, third.due_at, third.attempt) == ("due", at(5, 7), 4)
    assert third.reason == f"retry after a failed attempt (attempt 4 of {MAX_ATTEMPTS})"


def test_wake_at_is_the_due_time() -> None:
    """A scheduled step tells the store when to look again: its due time."""
    s = series(part(1), part(2), cadence=3)
    step = next_step(s, enrollment({"p1": LedgerEntry("sent", 1, at(5), at(5))}), at(6))
    assert step == Step("scheduled", "3 days after part 1", 2, at(8), wake_at=at(8), article="p2")


def test_fingerprint_changes_with_schedule_not_with_prose() -> None:
    """Publishing a part or moving a delay changes the fingerprint; a title edit does not."""
    base = series(part(1), part(2, published=None))
    published = series(part(1), part(2, published=at(9)))
    delayed = series(part(1), part(2, published=None, delay=2))
    retitled = series(part(1), Article(**{**part(2, published=None).__dict__, "title": "New"}))
    assert fingerprint(base) != fingerprint(published)
    assert fingerprint(base) != fingerprint(delayed)
    assert fingerprint(base) == fingerprint(retitled)


def sent(*slugs: str, day: int = 5) -> dict[str, LedgerEntry]:
    """A ledger of articles received one a day, from ``day`` on, in the order given."""
    return {slug: LedgerEntry("sent", 1, at(day + i), at(day + i)) for i, slug in enumerate(slugs)}


def renumbered(*slugs: str, **options: object) -> Series:
    """The series with these articles (by slug) as parts 1, 2, 3… in this order."""
    return series(*(part(i, slug=slug) for i, slug in enumerate(slugs, start=1)), **options)  # type: ignore[arg-type]


def test_article_inserted_before_the_readers_position_is_skipped() -> None:
    """The issue's case: a reader has parts 1 and 2; a new part 2 is inserted and the rest
    renumbered. Their next is the old part 3 (now 4), never the old part 2 again."""
    s = renumbered("p1", "new", "p2", "p3", "p4", "p5", cadence=1)
    step = next_step(s, enrollment(sent("p1", "p2")), at(20))
    assert (step.kind, step.article, step.part) == ("due", "p3", 4)
    assert step.reason == "1 day after part 3"  # their latest, p2, is part 3 now


def test_reader_before_the_insertion_gets_the_new_article() -> None:
    """A reader whose position is before the inserted article gets it next."""
    s = renumbered("p1", "new", "p2", "p3", cadence=1)
    step = next_step(s, enrollment(sent("p1")), at(20))
    assert (step.kind, step.article, step.part) == ("due", "new", 2)


def test_removed_article_is_skipped_and_the_drip_counts_from_it() -> None:
    """A removed article is skipped; the delay counts from the reader's latest email even
    when that article is the one removed."""
    s = renumbered("p1", "p2", "p4", cadence=3)
    step = next_step(s, enrollment(sent("p1", "p2", "p3")), at(7))
    assert (step.kind, step.article, step.part, step.due_at) == ("scheduled", "p4", 3, at(10))
    assert step.reason == "3 days after 'p3'"


def test_swapped_parts_skip_the_one_moved_behind() -> None:
    """Parts 2 and 3 swapped: a reader who had 1 and the old 2 (now 3) goes on with 4 and
    skips the old 3, now behind them; a reader who had only 1 gets the new order."""
    s = renumbered("p1", "p3", "p2", "p4")
    assert next_step(s, enrollment(sent("p1", "p2")), at(30)).article == "p4"
    assert next_step(s, enrollment(sent("p1")), at(30)).article == "p3"


def test_draft_after_the_position_still_holds_the_reader() -> None:
    """After a renumbering, a draft that comes next still holds the reader: the published
    parts after it wait."""
    s = series(part(1, slug="p1"), part(2, slug="new", draft=True), part(3, slug="p2"))
    step = next_step(s, enrollment(sent("p1")), at(30))
    assert (step.kind, step.article, step.reason) == (
        "waiting",
        "new",
        "waiting: part 2 is a draft",
    )


def test_a_delivery_in_doubt_holds_the_reader_whatever_comes_next() -> None:
    """An unknown delivery holds the reader even when an edit put another article before
    it. One of an article since removed holds them only while a run is sending it: it
    can never be sent again, whatever its outcome."""
    s = renumbered("p1", "new", "p2", "p3")
    ledger = {**sent("p1"), "p2": LedgerEntry("unknown", 1, at(6))}
    step = next_step(s, enrollment(ledger), at(30))
    assert (step.kind, step.article, step.part) == ("unknown", "p2", 3)
    removed = renumbered("p1", "p3")
    assert next_step(removed, enrollment(ledger), at(30)).article == "p3"
    sending = {**sent("p1"), "p2": LedgerEntry("claimed", 1, at(30), claimed_until=at(30, 7))}
    held = next_step(removed, enrollment(sending), at(30))
    assert (held.kind, held.article, held.part) == ("in_flight", "p2", None)
    assert held.reason == "'p2' (no longer in the series) is being sent by another run"


def test_start_part_is_a_position_until_the_first_article() -> None:
    """A reader who received nothing starts at the article that has their start part today;
    once they received one, their start part no longer matters."""
    s = renumbered("p1", "new", "p2", "p3")
    assert next_step(s, enrollment(start_part=3), at(5)).article == "p2"
    assert next_step(s, enrollment(sent("p2"), start_part=3), at(30)).article == "p3"
    # Everything they received was removed since: they start from their start part again.
    assert (
        next_step(
            renumbered("p1", "p3", "p4"), enrollment(sent("p2"), start_part=2), at(30)
        ).article
        == "p3"
    )


def test_completed_reader_skips_an_article_inserted_before_the_end() -> None:
    """A reader who finished is not sent an article inserted in the middle, only one added
    after their last."""
    done = enrollment(sent("p1", "p2", "p3"))
    assert next_step(renumbered("p1", "new", "p2", "p3"), done, at(30)).kind == "complete"
    assert next_step(renumbered("p1", "p2", "p3", "new"), done, at(30)).article == "new"


@pytest.mark.parametrize("seed", range(20))
def test_never_the_same_article_twice_whatever_the_editing(seed: int) -> None:
    """Months of daily runs while an editor inserts, removes, swaps and renumbers parts at
    random between runs: no article is ever sent twice, and each one sent comes after the
    reader's previous one in the order of the day it was sent."""
    rng = random.Random(seed)
    slugs = [f"p{i}" for i in range(1, 6)]
    fresh = iter(f"n{i}" for i in range(1000))
    ledger: dict[str, LedgerEntry] = {}
    history: list[str] = []
    now = T0
    for _ in range(120):
        edit = rng.choice(["none", "none", "insert", "remove", "swap"])
        if edit == "insert":
            slugs.insert(rng.randrange(len(slugs) + 1), next(fresh))
        elif edit == "remove" and len(slugs) > 1:
            slugs.pop(rng.randrange(len(slugs)))
        elif edit == "swap" and len(slugs) > 1:
            i = rng.randrange(len(slugs) - 1)
            slugs[i], slugs[i + 1] = slugs[i + 1], slugs[i]
        s = renumbered(*slugs, cadence=1)
        step = next_step(s, enrollment(dict(ledger)), now)
        if step.is_due:
            assert step.article is not None
            assert step.article not in ledger, f"{step.article} sent twice"
            received_here = [slug for slug in slugs if slug in ledger]
            if received_here:
                assert slugs.index(step.article) > slugs.index(received_here[-1])
            ledger[step.article] = LedgerEntry("sent", 1, now, now)
            history.append(step.article)
        now += timedelta(days=1)
    assert len(history) == len(set(history)) > 5


def test_fingerprint_changes_with_order_and_identity() -> None:
    """Renumbering, reordering or renaming an article re-plans every enrollment."""
    base = renumbered("p1", "p2", "p3")
    assert fingerprint(base) != fingerprint(renumbered("p1", "new", "p2", "p3"))
    assert fingerprint(base) != fingerprint(renumbered("p1", "p3", "p2"))
    assert fingerprint(base) != fingerprint(renumbered("p1", "p2", "third"))
    assert fingerprint(base) == fingerprint(renumbered("p1", "p2", "p3"))


WORKDAYS_9_TO_17 = SendWindow(frozenset(range(5)), time(9), time(17))
NEW_YORK = ZoneInfo("America/New_York")


def local(zone: ZoneInfo, year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    """A wall-clock moment in ``zone``, as UTC."""
    return datetime(year, month, day, hour, minute, tzinfo=zone).astimezone(UTC)


@pytest.mark.parametrize(
    ("zone", "due", "run_at", "until", "opening"),
    [
        # Due Monday 16:50; the hourly job missed 17:00; the 02:17 run on Tuesday holds it.
        (
            STOCKHOLM,
            local(STOCKHOLM, 2026, 1, 5, 16, 50),
            local(STOCKHOLM, 2026, 1, 6, 2, 17),
            "Tue 09:00",
            datetime(2026, 1, 6, 8, tzinfo=UTC),
        ),
        # Due on Friday; a run on Saturday (not a day of the window) holds it until Monday.
        (
            STOCKHOLM,
            local(STOCKHOLM, 2026, 1, 9, 16, 50),
            local(STOCKHOLM, 2026, 1, 10, 12),
            "Mon 09:00",
            datetime(2026, 1, 12, 8, tzinfo=UTC),
        ),
        # Clocks go forward in Stockholm on Sunday 29 March 2026: Monday's 09:00 is 07:00 UTC.
        (
            STOCKHOLM,
            local(STOCKHOLM, 2026, 3, 27, 16, 50),
            local(STOCKHOLM, 2026, 3, 28, 10),
            "Mon 09:00",
            datetime(2026, 3, 30, 7, tzinfo=UTC),
        ),
        # Forward in New York on Sunday 8 March 2026: Monday's 09:00 is 13:00 UTC, not 14:00.
        (
            NEW_YORK,
            local(NEW_YORK, 2026, 3, 6, 16, 50),
            local(NEW_YORK, 2026, 3, 7, 23),
            "Mon 09:00",
            datetime(2026, 3, 9, 13, tzinfo=UTC),
        ),
        # Back in New York on Sunday 1 November 2026: Monday's 09:00 is 14:00 UTC.
        (
            NEW_YORK,
            local(NEW_YORK, 2026, 10, 30, 16, 50),
            local(NEW_YORK, 2026, 10, 31, 8),
            "Mon 09:00",
            datetime(2026, 11, 2, 14, tzinfo=UTC),
        ),
    ],
)
def test_a_part_overdue_outside_the_window_is_held_until_it_opens(
    zone: ZoneInfo, due: datetime, run_at: datetime, until: str, opening: datetime
) -> None:
    """However late the run, a part whose time came is not due outside the reader's window:
    it is held until the next opening (local weekday and time), and wakes the run then."""
    s = series(part(1), window=WORKDAYS_9_TO_17, zone=STOCKHOLM)
    step = next_step(s, enrollment(enrolled_at=due, timezone=str(zone)), run_at)
    assert step == Step(
        "held",
        f"first part; held until {until} (send window)",
        1,
        opening,
        wake_at=opening,
        article="p1",
    )
    assert next_step(s, enrollment(enrolled_at=due, timezone=str(zone)), opening).kind == "due"


def test_hourly_runs_that_miss_hours_only_ever_send_inside_the_window() -> None:
    """Runs every 7 hours for two months (most of them at night or at weekends): every part
    goes out on a weekday between 09:00 and 17:00 Stockholm time, across the DST change."""
    s = series(part(1), part(2), part(3), part(4), cadence=2, window=WORKDAYS_9_TO_17)
    s = Series(**{**s.__dict__, "timezone": STOCKHOLM})
    start = datetime(2027, 3, 1, 16, 30, tzinfo=UTC)
    sent = simulate(s, enrollment(enrolled_at=start), start=start, every=timedelta(hours=7))
    assert [p for p, _ in sent] == [1, 2, 3, 4]
    for _, when in sent:
        moment = when.astimezone(STOCKHOLM)
        assert moment.weekday() < 5 and 9 <= moment.hour < 17, moment


def test_a_window_to_midnight_includes_its_last_second() -> None:
    """`end = "24:00"` (kept as 23:59:59) lets a run at 23:59:59.5 send, not wait a day."""
    late = datetime(2026, 1, 5, 23, 59, 59, 500000, tzinfo=UTC)
    assert into_window(late, ALWAYS, UTC_ZONE) == late
    step = next_step(series(part(1)), enrollment(enrolled_at=T0), late)
    assert step.kind == "due"


def test_placeholder_history_counts_as_a_position() -> None:
    """A reader whose history is only placeholders (part-1, part-2: upgraded without the
    content) goes on after part 2, never from part 1; a slug claimed by an article is not
    a placeholder."""
    ledger = {
        "part-1": LedgerEntry("sent", 1, at(5), at(5)),
        "part-2-removed": LedgerEntry("sent", 1, at(12), at(12)),
    }
    s = series(part(1), part(2), part(3), part(4))
    step = next_step(s, enrollment(ledger), at(26))
    assert (step.kind, step.part) == ("due", 3)
    claimed = series(part(1, slug="part-1"), part(2), part(3))
    only_one = {"part-1": LedgerEntry("sent", 1, at(5), at(5))}
    step = next_step(claimed, enrollment(only_one), at(26))
    assert (step.kind, step.part) == ("due", 2)
    assert next_step(s, enrollment({"part-9": ledger["part-1"]}), at(26)).kind == "complete"


# Editors steering readers (README "Steering readers"): skipped entries, moves, a paused
# series. Plain values: the ledger as the commands leave it.


def _sent(at: datetime) -> LedgerEntry:
    return LedgerEntry("sent", 1, at, at)


def _skipped(at: datetime) -> LedgerEntry:
    return LedgerEntry("skipped", 0, at)


def _moved(ledger: dict[str, LedgerEntry], to: str, at: datetime) -> Enrollment:
    base = enrollment(ledger)
    return Enrollment(**{**base.__dict__, "moved_to": to, "moved_at": at})


def test_skipped_articles_place_the_reader_but_are_never_proposed() -> None:
    """Moved ahead to part 4 from part 1: 2 and 3 are skipped, part 4 is due at once,
    and after it comes 5, never 2 or 3."""
    s = series(*(part(n) for n in range(1, 6)))
    moved_at = T0 + timedelta(days=1)
    ledger = {"p1": _sent(T0), "p2": _skipped(moved_at), "p3": _skipped(moved_at)}
    step = next_step(s, _moved(ledger, "p4", moved_at), moved_at)
    assert (step.kind, step.article, step.due_at) == ("due", "p4", moved_at)
    assert step.reason.startswith("moved to part 4 on")
    ledger["p4"] = _sent(moved_at)
    step = next_step(s, _moved(ledger, "p4", moved_at), moved_at + timedelta(days=7))
    assert (step.kind, step.article) == ("due", "p5")
    assert step.due_at == moved_at + timedelta(days=7)  # the normal delay from part 4


def test_moved_back_gets_only_what_it_lacks_in_order() -> None:
    """Received 1 and 4 (2, 3 skipped by an earlier move), moved back to 2: 2, then 3,
    then 5; part 4 is never proposed again."""
    s = series(*(part(n) for n in range(1, 6)))
    back = T0 + timedelta(days=10)
    ledger = {"p1": _sent(T0), "p4": _sent(T0 + timedelta(days=1))}
    proposed = []
    now = back
    for _ in range(4):
        step = next_step(s, _moved(ledger, "p2", back), now)
        if step.kind == "complete":
            break
        now = max(now, step.due_at or now)
        assert step.article is not None
        proposed.append(step.article)
        ledger[step.article] = _sent(now)
    assert proposed == ["p2", "p3", "p5"]


def test_moved_back_to_a_part_they_have_waits_the_normal_delay() -> None:
    """Moved back to a part they received, the next part they lack is not rushed: it
    comes at its normal time after their latest email."""
    s = series(*(part(n) for n in range(1, 4)))
    ledger = {"p1": _sent(T0), "p2": _sent(T0 + timedelta(days=7))}
    moved_at = T0 + timedelta(days=8)
    step = next_step(s, _moved(ledger, "p1", moved_at), moved_at)
    assert (step.kind, step.article) == ("scheduled", "p3")
    assert step.due_at == T0 + timedelta(days=14)


def test_paused_series_holds_every_step_and_changes_the_fingerprint() -> None:
    """`paused: true`: a due, scheduled or waiting step is "series paused" at the same
    article, with nothing to wake for; pausing or resuming plans everyone again."""
    plain = series(part(1), part(2), part(3, published=None))
    paused = Series(**{**plain.__dict__, "paused": True})
    for ledger, now in (
        ({}, T0),
        ({"p1": _sent(T0)}, T0 + timedelta(days=1)),
        ({"p1": _sent(T0), "p2": _sent(T0)}, T0 + timedelta(days=30)),
    ):
        before = next_step(plain, enrollment(ledger), now)
        held = next_step(paused, enrollment(ledger), now)
        assert before.kind in ("due", "scheduled", "waiting")
        assert (held.kind, held.reason, held.article, held.wake_at) == (
            "paused",
            "series paused",
            before.article,
            None,
        )
    assert fingerprint(paused) != fingerprint(plain)  # everyone is planned again
