"""The drip planner: (series content, enrollment, its ledger, now) → the next step.

Pure: no clock, database or network; ``now`` is an argument. The rules (DESIGN §6):
parts go out in order and none is skipped; the first part is due when the reader
enrolled; each next part its delay after the previous one was sent; a part that is
a draft or not yet published holds the reader there, and once out it is due at
the later of its normal time and its publish time; due times move into the next
send window in the reader's timezone; one part per enrollment per run; readers who
finished get parts published later; inactive readers get nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from .config import DAY_NAMES, SendWindow
from .content import Article, Series

StepKind = Literal["due", "scheduled", "waiting", "in_flight", "unknown", "gave_up", "complete"]
LedgerState = Literal["claimed", "sent", "failed", "unknown"]

MAX_ATTEMPTS = 8
FIRST_RETRY = timedelta(minutes=15)
LONGEST_RETRY = timedelta(hours=12)


@dataclass(frozen=True)
class LedgerEntry:
    state: LedgerState
    attempts: int
    updated_at: datetime
    sent_at: datetime | None = None
    claimed_until: datetime | None = None


@dataclass(frozen=True)
class Enrollment:
    """One reader in one series, with what the ledger says about each part."""

    id: int
    subscriber_id: int
    email: str
    name: str
    timezone: str | None
    series: str
    enrolled_at: datetime
    start_part: int
    ledger: Mapping[int, LedgerEntry]


@dataclass(frozen=True)
class Step:
    """What happens next for an enrollment, and why."""

    kind: StepKind
    reason: str
    part: int | None = None
    due_at: datetime | None = None  # when the part is (or was) due, after the send window
    wake_at: datetime | None = None  # earliest time anything can change without new content
    attempt: int = 1

    @property
    def is_due(self) -> bool:
        return self.kind == "due"


def next_step(series: Series, enrollment: Enrollment, now: datetime) -> Step:
    """The next thing to do for one active enrollment."""
    parts = [a for a in series.articles if a.part >= enrollment.start_part]
    previous: Article | None = None
    previous_sent: datetime | None = None
    for article in parts:
        entry = enrollment.ledger.get(article.part)
        if entry is not None and entry.state == "sent":
            previous, previous_sent = article, entry.sent_at or entry.updated_at
            continue
        return _step_for(series, enrollment, article, previous, previous_sent, entry, now)
    return Step("complete", "completed: every part sent")


def _step_for(
    series: Series,
    enrollment: Enrollment,
    article: Article,
    previous: Article | None,
    previous_sent: datetime | None,
    entry: LedgerEntry | None,
    now: datetime,
) -> Step:
    part = article.part
    if entry is not None and entry.state == "claimed":
        if entry.claimed_until is not None and entry.claimed_until > now:
            return Step(
                "in_flight",
                f"part {part} is being sent by another run",
                part,
                wake_at=entry.claimed_until,
            )
        return Step(
            "unknown",
            f"part {part}: a run stopped while sending it; checking with "
            "the provider before sending again",
            part,
            wake_at=now,
        )
    if entry is not None and entry.state == "unknown":
        return Step(
            "unknown",
            f"part {part}: delivery unknown; checking with the provider before sending again",
            part,
            wake_at=now,
        )
    if article.draft:
        return Step("waiting", f"waiting: part {part} is a draft", part)
    if article.published is None:
        return Step("waiting", f"waiting: part {part} not published", part)

    zone = _zone(enrollment.timezone, series.timezone)
    if previous is None or previous_sent is None:
        base, reason = enrollment.enrolled_at, "first part"
        if enrollment.start_part > series.articles[0].part:
            reason = f"first part (starting at part {enrollment.start_part})"
    else:
        # Wall-clock arithmetic in the reader's zone: "7 days later" is the same local
        # time a week later, even across a daylight-saving change.
        base = (previous_sent.astimezone(zone) + series.delay(article)).astimezone(UTC)
        reason = f"{_duration(series.delay(article))} after part {previous.part}"
    if article.published > base:
        base = article.published
        reason = f"part {part} published on {article.published.date().isoformat()}"
    attempt = 1
    if entry is not None and entry.state == "failed":
        if entry.attempts >= MAX_ATTEMPTS:
            return Step("gave_up", f"part {part} failed {entry.attempts} times; not retried", part)
        retry_at = entry.updated_at + min(FIRST_RETRY * 2 ** (entry.attempts - 1), LONGEST_RETRY)
        base = max(base, retry_at)
        attempt = entry.attempts + 1
        reason = f"retry after a failed attempt (attempt {attempt} of {MAX_ATTEMPTS})"
    due = into_window(base, series.send_window, zone)
    if due != base:
        reason += "; held for the send window"
    if not article.is_published(now):
        # Out later: nothing can happen before its publish time.
        when = article.published.date().isoformat()
        return Step(
            "waiting",
            f"waiting: part {part} not published until {when}",
            part,
            due,
            wake_at=due,
            attempt=attempt,
        )
    if due <= now:
        return Step("due", reason, part, due, wake_at=due, attempt=attempt)
    return Step("scheduled", reason, part, due, wake_at=due, attempt=attempt)


def into_window(moment: datetime, window: SendWindow, zone: ZoneInfo) -> datetime:
    """The first instant at or after ``moment`` inside the send window, local to ``zone``."""
    local = moment.astimezone(zone)
    if local.weekday() in window.days and window.start <= local.time() < window.end:
        return moment  # the common case, without building the day's window
    for offset in range(8):
        day: date = local.date() + timedelta(days=offset)
        if day.weekday() not in window.days:
            continue
        start = _local(day, window.start, zone)
        end = _local(day, window.end, zone)
        if offset == 0 and start <= local < end:
            return moment
        if local < start:
            return start.astimezone(UTC)
    raise ValueError("a send window must allow at least one day")  # config validation ensures it


def _local(day: date, clock: time, zone: ZoneInfo) -> datetime:
    # A wall-clock time that does not exist (spring forward) is read with the offset
    # before the change, which lands an hour later in real time: 02:30 becomes 03:30.
    naive = datetime.combine(day, clock)
    return naive.replace(tzinfo=zone).astimezone(UTC).astimezone(zone)


def _zone(name: str | None, default: ZoneInfo) -> ZoneInfo:
    if name:
        try:
            return ZoneInfo(name)
        except (KeyError, ValueError):
            return default
    return default


def _duration(delay: timedelta) -> str:
    days = delay.total_seconds() / 86400
    if days >= 1 and days == int(days):
        return f"{int(days)} day{'s' if days != 1 else ''}"
    hours = delay.total_seconds() / 3600
    return f"{hours:g} hour{'s' if hours != 1 else ''}"


def fingerprint(series: Series) -> str:
    """Everything about a series that the schedule depends on, as one short hash.

    When it changes (a part is published, a delay edited, the window moved), every
    enrollment of the series is planned again; otherwise only those whose wake-up
    time has come are looked at.
    """
    window = series.send_window
    parts = [
        (
            a.part,
            a.draft,
            a.published.isoformat() if a.published else None,
            a.delay_days,
        )
        for a in series.articles
    ]
    text = repr(
        (
            parts,
            series.cadence_days,
            str(series.timezone),
            sorted(DAY_NAMES[d] for d in window.days),
            window.start.isoformat(),
            window.end.isoformat(),
        )
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]
