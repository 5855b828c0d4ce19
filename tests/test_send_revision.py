"""A change to a reader made while a send runs is never undone by the run's bookmark.

A run reads each reader's enrollment, and later writes their bookmark (next wake-up,
plan version). An editor or the reader may change the enrollment in between: a move,
a pause and its end, a resubscribe, a new time zone. Such a change clears the plan
version so that the next run plans the reader again, and adds one to the enrollment's
``revision``; the run writes its bookmark only where the revision is still the one it
read. Each test commits a change from another connection at one of the moments a run
writes bookmarks (the planner's, the send window's hold, --limit's hold, the outcome's),
then checks what the database holds and what the next run hands the provider.

On a temporary SQLite file and on a real PostgreSQL, through the fake Postmark on
127.0.0.1.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from pathlib import Path
from threading import Event
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline.config import load_config
from pipeline.providers import get_provider
from pipeline.providers.postmark import PostmarkProvider
from pipeline.send import SendOptions, SendReport, send_due
from pipeline.store import open_store
from pipeline.store.schema import enrollments, subscribers

from .conftest import POSTMARK_TOKEN
from .fake_postmark import FakePostmark
from .helpers import configure, import_readers, run

MONDAY = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
WINDOW = "send_window:\n  days: [mon, tue, wed, thu, fri]\n  start: '09:00'\n  end: '17:00'\n"

pytestmark = pytest.mark.usefixtures("each_database")


@pytest.fixture(autouse=True)
def one_share(monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL plans a list in shares (`planning.shares`); here it is one, as on
    SQLite, so that --limit holds back the same reader on both databases."""
    from pipeline.send import planning

    monkeypatch.setattr(planning, "SHARES", 1)


def send(
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    when: datetime,
    *,
    limit: int | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> tuple[SendReport, list[tuple[str, str]]]:
    """One `send_due` at WHEN through a fresh fake Postmark: its report and, for each
    message the provider received, (recipient, tag) from the request's JSON (the tag
    names the series and part: ``attachment-part2``)."""
    with FakePostmark(token=POSTMARK_TOKEN) as fake:
        monkeypatch.setenv("POSTMARK_SERVER_TOKEN", POSTMARK_TOKEN)
        monkeypatch.setenv("SERIES_PROVIDER_URL", fake.url)
        config = load_config(root)
        provider = get_provider("postmark", config)
        try:
            with open_store(root) as store:
                options = SendOptions(now=when, limit=limit, monotonic=monotonic)
                report = send_due(config, store, provider, options)
        finally:
            provider.close()
        received = sorted(
            (parseaddr(item["To"])[1], item["Tag"])
            for request in fake.batch_requests()
            for item in json.loads(request.raw)
        )
    return report, received


def cli(root: Path, *args: str) -> None:
    """A `series` command, as an editor types it in another terminal."""
    code, out, err = run(root, *args)
    assert code == 0, out + err


def enrollment(root: Path, email: str) -> tuple[str | None, datetime | None, int]:
    """(plan version, next wake-up, revision) of EMAIL's enrollment in the example."""
    with open_store(root) as store, store.connect() as conn:
        row = conn.execute(
            sa.select(enrollments.c.plan_version, enrollments.c.next_due_at, enrollments.c.revision)
            .join(subscribers, subscribers.c.id == enrollments.c.subscriber_id)
            .where(subscribers.c.email == email)
        ).one()
    return row.plan_version, row.next_due_at, row.revision


def while_planning(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> Event:
    """Run ``action`` once, while the run plans its first chunk of readers: after it
    read them, before it writes the bookmarks of those with nothing due."""
    from pipeline.send import planning

    real = planning.next_step
    ran = Event()

    def next_step(*args: Any, **kwargs: Any) -> Any:
        if not ran.is_set():
            ran.set()
            action()
        return real(*args, **kwargs)

    monkeypatch.setattr(planning, "next_step", next_step)
    return ran


def during_the_request(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> Event:
    """Run ``action`` once, while the run's first request is with the provider: after
    the claim, before the outcome and the readers' bookmarks are recorded."""
    real = PostmarkProvider.send
    ran = Event()

    def send(self: PostmarkProvider, messages: Sequence[Any], *, batch_key: str) -> Any:
        if not ran.is_set():
            ran.set()
            action()
        return real(self, messages, batch_key=batch_key)

    monkeypatch.setattr(PostmarkProvider, "send", send)
    return ran


def test_a_reader_moved_back_while_the_planner_reads_them_gets_the_part_the_move_chose(
    example_copy: Path, readers: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both readers have had part 3, the last one out (part 4 is a draft): they wait,
    with no wake-up time. A date in the series changes, so the next run plans everyone;
    it has read them when an editor moves the first back to part 2 (--resend). The
    planner's bookmark ("wait, until the content changes") used to be written over the
    move: the reader was never planned again and never got part 2."""
    ann, bea = readers
    for days in (0, 4, 9):
        send(example_copy, monkeypatch, MONDAY + timedelta(days=days))
    later = MONDAY + timedelta(days=10)
    last = example_copy / "series" / "attachment" / "05-disorganized.md"
    last.write_text(last.read_text().replace("2027-03-15", "2027-03-22"), encoding="utf-8")

    def move_back() -> None:
        cli(
            example_copy,
            *("subscribers", "move", ann, "--series", "attachment", "--to-part", "2"),
            *("--resend", "--now", later.isoformat()),
        )

    moved = while_planning(monkeypatch, move_back)
    report, received = send(example_copy, monkeypatch, later)
    assert moved.is_set() and received == [] and report.sent == 0
    assert enrollment(example_copy, ann)[:2] == (None, None)
    assert enrollment(example_copy, ann)[2] == 1
    assert enrollment(example_copy, bea)[0] is not None  # bookmarked as usual

    _, received = send(example_copy, monkeypatch, later + timedelta(minutes=5))
    assert received == [(ann, "attachment-part2")]


class Jump:
    """A monotonic clock that jumps ``hours`` ahead when told to: the run's clock
    (`Run.clock`) then says the send window closed while it planned."""

    def __init__(self, hours: float) -> None:
        self.offset = 0.0
        self.hours = hours

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def jump(self) -> None:
        self.offset = self.hours * 3600


def test_a_reader_moved_while_held_for_the_send_window_is_planned_again(
    example_copy: Path, readers: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Part 2 is due for both on Friday; while the run plans them, an editor moves the
    first on to part 3, and the run's clock passes the window's end (17:00 in
    Stockholm), so that the claim holds both readers for Monday's opening and writes
    that bookmark. The moved reader's is not written: the move wins, and the next run
    plans them with it."""
    ann, bea = readers
    series_yml = example_copy / "series" / "attachment" / "series.yml"
    series_yml.write_text(series_yml.read_text(encoding="utf-8") + WINDOW, encoding="utf-8")
    send(example_copy, monkeypatch, MONDAY)
    friday = MONDAY + timedelta(days=4)
    clock = Jump(hours=7)

    def move_on() -> None:
        cli(
            example_copy,
            *("subscribers", "move", ann, "--series", "attachment", "--to-part", "3"),
            *("--now", friday.isoformat()),
        )
        clock.jump()

    moved = while_planning(monkeypatch, move_on)
    report, received = send(example_copy, monkeypatch, friday, monotonic=clock)
    assert moved.is_set() and received == [] and report.held == 2
    opening = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)  # Monday 09:00 in Stockholm
    assert enrollment(example_copy, ann)[0::2] == (None, 1)  # no plan: planned next run
    assert enrollment(example_copy, bea)[1:] == (opening, 0)

    _, received = send(example_copy, monkeypatch, opening + timedelta(minutes=5))
    assert received == [(ann, "attachment-part3"), (bea, "attachment-part2")]


def test_a_reader_moved_while_held_back_by_the_limit_is_planned_again(
    example_copy: Path, readers: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--limit 1 sends part 2 to the first reader and holds the second back, with a
    bookmark for the next run; the second was moved on to part 3 while the run planned:
    their bookmark is not written over the move."""
    ann, bea = readers
    send(example_copy, monkeypatch, MONDAY)
    friday = MONDAY + timedelta(days=4)

    def move_on() -> None:
        cli(
            example_copy,
            *("subscribers", "move", bea, "--series", "attachment", "--to-part", "3"),
            *("--now", friday.isoformat()),
        )

    moved = while_planning(monkeypatch, move_on)
    _, received = send(example_copy, monkeypatch, friday, limit=1)
    assert moved.is_set() and received == [(ann, "attachment-part2")]
    assert enrollment(example_copy, bea)[0::2] == (None, 1)

    _, received = send(example_copy, monkeypatch, friday + timedelta(minutes=5))
    assert received == [(bea, "attachment-part3")]


def test_a_new_time_zone_given_while_the_request_is_out_decides_the_next_part(
    example_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader in Los Angeles gets part 1 on Tuesday at 09:30 their time; while the
    request is with the provider, they are given Stockholm's time zone. Part 2 falls on
    Saturday: held for Monday 09:00 in Stockholm (08:00 UTC), not in Los Angeles (17:00
    UTC). The bookmark the run worked out with the old zone used to be written over
    the change, and the part went nine hours late."""
    configure(example_copy, 'provider = "postmark"')
    series_yml = example_copy / "series" / "attachment" / "series.yml"
    series_yml.write_text(series_yml.read_text(encoding="utf-8") + WINDOW, encoding="utf-8")
    (ann,) = import_readers(example_copy, 1, zones=["America/Los_Angeles"])
    tuesday = datetime(2026, 12, 1, 17, 30, tzinfo=UTC)

    def new_zone() -> None:
        cli(
            example_copy,
            *("subscribers", "add", ann, "--timezone", "Europe/Stockholm"),
            *("--now", tuesday.isoformat()),
        )

    changed = during_the_request(monkeypatch, new_zone)
    report, received = send(example_copy, monkeypatch, tuesday)
    assert changed.is_set() and received == [(ann, "attachment-part1")] and report.sent == 1
    assert enrollment(example_copy, ann) == (None, None, 1)

    monday = datetime(2026, 12, 7, 8, 30, tzinfo=UTC)  # 09:30 in Stockholm
    _, received = send(example_copy, monkeypatch, monday)
    assert received == [(ann, "attachment-part2")]


@pytest.mark.parametrize("change", ["pause and resume", "unsubscribe and resubscribe"])
def test_a_change_undone_while_the_request_is_out_still_replans_the_reader(
    example_copy: Path, readers: list[str], monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """While part 1's request is with the provider, the first reader is paused and
    resumed, or leaves and asks to come back (`subscribers add --resubscribe`). Each
    step says "plan this reader again"; the run's bookmark, worked out before, is not
    written over it. The delivery itself is recorded as sent, and part 2 follows at
    its usual time."""
    ann, bea = readers
    at = ("--now", MONDAY.isoformat())
    steps = {
        "pause and resume": [
            ("subscribers", "pause", ann, *at),
            ("subscribers", "resume", ann, *at),
        ],
        "unsubscribe and resubscribe": [
            ("subscribers", "unsubscribe", ann, "--series", "attachment"),
            ("subscribers", "add", ann, "--series", "attachment", "--resubscribe", *at),
        ],
    }[change]
    changed = during_the_request(monkeypatch, lambda: [cli(example_copy, *s) for s in steps])
    report, received = send(example_copy, monkeypatch, MONDAY)
    assert changed.is_set() and report.sent == 2
    assert received == [(ann, "attachment-part1"), (bea, "attachment-part1")]
    # One for each step that asks for a new plan (leaving asks for none).
    assert enrollment(example_copy, ann) == (None, None, len(steps) - 1 if "sub" in change else 2)
    assert enrollment(example_copy, bea)[1:] == (MONDAY + timedelta(days=4), 0)

    _, received = send(example_copy, monkeypatch, MONDAY + timedelta(days=1))
    assert received == []
    _, received = send(example_copy, monkeypatch, MONDAY + timedelta(days=4))
    assert received == [(ann, "attachment-part2"), (bea, "attachment-part2")]


def test_a_reader_given_a_new_time_zone_after_the_plan_is_not_sent_outside_their_window(
    example_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim reads, in its write transaction, whether the reader changed since the
    planner read them (their revision), as it read whether they were moved: a reader in
    Stockholm planned at 11:00 their time is given Los Angeles' time zone (02:00 there)
    before the claim. The run's plan and its send window check used the old zone and
    sent part 1 in the night; now the reader is left for the next run, which holds
    them for 09:00 in Los Angeles."""
    configure(example_copy, 'provider = "postmark"')
    series_yml = example_copy / "series" / "attachment" / "series.yml"
    series_yml.write_text(series_yml.read_text(encoding="utf-8") + WINDOW, encoding="utf-8")
    (ann,) = import_readers(example_copy, 1, zones=["Europe/Stockholm"])

    def new_zone() -> None:
        cli(
            example_copy,
            *("subscribers", "add", ann, "--timezone", "America/Los_Angeles"),
            *("--now", MONDAY.isoformat()),
        )

    changed = while_planning(monkeypatch, new_zone)
    report, received = send(example_copy, monkeypatch, MONDAY)
    assert changed.is_set() and received == [] and report.sent == 0 and report.skipped == 1
    assert enrollment(example_copy, ann)[0::2] == (None, 1)

    _, received = send(example_copy, monkeypatch, MONDAY + timedelta(minutes=5))
    assert received == []
    opening = datetime(2026, 11, 30, 17, 0, tzinfo=UTC)  # 09:00 in Los Angeles
    assert enrollment(example_copy, ann)[1] == opening
    _, received = send(example_copy, monkeypatch, opening + timedelta(minutes=5))
    assert received == [(ann, "attachment-part1")]


def test_a_move_made_while_the_claim_is_written_waits_for_it_and_is_refused(
    example_copy: Path, readers: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An editor moves a reader back (--resend) at the moment the run writes the claim
    of their part 2: the move waits for the claim and then finds it (a delivery being
    sent: refused, nothing changed), instead of both going through, which on
    PostgreSQL sent part 2 right after a move that said part 1 comes next. SQLite's
    single writer already made the move wait."""
    from pipeline.content import load_series
    from pipeline.steering import move
    from pipeline.store import ledger
    from pipeline.subscribers import SubscriberError

    ann, bea = readers
    send(example_copy, monkeypatch, MONDAY)
    friday = MONDAY + timedelta(days=4)
    said: list[str] = []

    def move_back() -> None:
        (series,) = load_series(load_config(example_copy))[0]
        with open_store(example_copy) as store:
            try:
                said.append(move(store, series, ann, series.articles[0], now=friday, resend=True))
            except SubscriberError as exc:
                said.append(f"refused: {exc}")

    editor = threading.Thread(target=move_back)
    real = ledger.active_readers

    def active_readers(conn: sa.Connection, due: Sequence[Any]) -> set[int]:
        found = real(conn, due)
        if not editor.is_alive() and not said:  # the first claim, inside its transaction
            editor.start()
            editor.join(1.5)
            assert editor.is_alive(), f"the move did not wait for the claim: {said}"
        return found

    monkeypatch.setattr(ledger, "active_readers", active_readers)
    report, received = send(example_copy, monkeypatch, friday)
    editor.join(30)
    assert received == [(ann, "attachment-part2"), (bea, "attachment-part2")]
    assert report.sent == 2
    # Waited for the claim, the move found part 2 being sent; or (SQLite, whose writers
    # queue) its turn came after the run had recorded part 2, and it saw it sent.
    refused = said[0].startswith(f"refused: {ann}: part 2 of attachment is being sent")
    assert refused or said[0].endswith("to be sent again: part 1, 2"), said
    _, received = send(example_copy, monkeypatch, friday + timedelta(minutes=1))
    assert received == ([] if refused else [(ann, "attachment-part1")])
