"""The drip planner: (series content, enrollment, its ledger, now) → the next step.

Pure: no clock, database or network; ``now`` is an argument.

An article is identified by its slug; its part number is only where it stands in
the series today. The ledger records which articles a reader received, and the
rules below hold however an editor inserts, renumbers, renames (keeping ``slug:``)
or removes parts after readers started (DESIGN §6, README "Editing a series after
readers started"):

- A reader never receives the same article twice: an article their ledger holds
  is never proposed again, in any state.
- The reader's position is the last article they received, in the current order.
  Their next article is the first one after it. Before they received anything, it
  is the first article whose part number is at least their start part (the
  position they enrolled at; it means nothing once they received an article).
- An article inserted before a reader's position is skipped, as Kit does; so is
  one moved from after their position to before it. A removed article is skipped.
- The next article holds the reader while it is a draft or not yet published:
  nothing after it is sent before it (a part is never skipped on the way forward);
  once out, it is due at the later of its normal time and its publish time.
- The first article is due when the reader enrolled; each next one its delay after
  the reader's latest delivery was sent. Due times move into the next send window
  in the reader's timezone, and an article whose time has come is still only due
  while the reader's local time is inside that window (else it is held until the
  window next opens, however late the run); one article per enrollment per run.
- While any delivery of the reader's is being sent by a run, or its outcome is
  unknown, nothing else is sent to them (for an article no longer in the series,
  only while a run is sending it); a failed one is retried with backoff.
- Readers who finished get articles added after their position later; the store
  hands the planner active readers only.
- A placeholder identity (``part-N``, ``part-N-removed``: a part received before
  articles had identities that no article had at the upgrade) counts as a received
  position N: the reader is at least past every article numbered N or less today, so
  a ledger upgraded without the content never starts a reader over.

Editors steer readers (README "Steering readers"):

- A paused enrollment is never handed to the planner (the store leaves it out); it
  keeps its ledger, so on resume the next article is the one after their position,
  due at its normal time, or at once if that passed while they were paused; still
  one article per run, then the normal delays from that email.
- A ``skipped`` ledger entry (the reader was moved past the article) counts for the
  position like a received one, and is never proposed; it is not received.
- A moved reader (``moved_to``, at ``moved_at``) continues at that article: entries at
  or after it from before the move do not count for the position (they still are
  never proposed again), so a reader moved back gets the articles from there that
  they do not have, in order. The article moved to is due at once (the send window
  still holds), then the normal delays; one they already have is not sent again, and
  the next they lack comes at its normal time.
- A series with ``paused: true`` holds every reader: what would be due, held,
  scheduled or waiting is "series paused" instead, and nothing is sent; the
  fingerprint includes the flag, so everyone is planned again when it is lifted.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from .config import ALWAYS, DAY_NAMES, SendWindow
from .content import Article, Series

StepKind = Literal[
    "due",
    "held",
    "scheduled",
    "waiting",
    "in_flight",
    "unknown",
    "gave_up",
    "complete",
    "paused",
]
LedgerState = Literal["claimed", "sent", "failed", "unknown", "skipped"]
# Ledger states that place a reader past an article: they have it, or were moved past it.
PAST = ("sent", "skipped")
SERIES_PAUSED = "series paused"
MOVE = "the move"  # ``previous`` for the first article after an editor moved the reader

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
END_OF_DAY = time(23, 59, 59)  # how the config keeps an end of "24:00"

# The identity migration 0005 gave a recorded part no article had (see README).
PLACEHOLDER = re.compile(r"part-(?P<part>\d+)(-removed)?")

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


_NOTHING: frozenset[str] = frozenset()  # the history of a reader with no ledger yet


@dataclass(frozen=True)
class Enrollment:
    """One reader in one series, with what the ledger says about each article
    (keyed by article slug; slugs of articles no longer in the series included)."""

    id: int
    subscriber_id: int
    email: str
    name: str
    timezone: str | None
    series: str
    enrolled_at: datetime
    start_part: int
    ledger: Mapping[str, LedgerEntry]
    first_name: str = ""  # the subscriber's first_name attribute; "": from their name
    # Where an editor moved the reader (an article slug) and when; None: never moved.
    moved_to: str | None = None
    moved_at: datetime | None = None
    # The enrollment's change counter as read (``enrollments.revision``): the bookmark
    # is written only where it still holds this value. Not read by the planner.
    revision: int = 0

    def plan_key(self, without: str | None = None) -> tuple[object, ...]:
        """Everything ``next_step`` reads of this enrollment (not who the reader is):
        two enrollments with equal keys get the same step, so a send asks the planner
        once per key. ``without``: leave that article's ledger entry out. A field the
        planner starts to read belongs here."""
        ledger = (
            tuple(sorted((k, v) for k, v in self.ledger.items() if k != without))
            if self.ledger
            else ()
        )
        return (
            self.timezone,
            self.series,
            self.enrolled_at,
            self.start_part,
            self.moved_to,
            self.moved_at,
            ledger,
        )

    def received(self) -> frozenset[str]:
        """The slugs of the articles this reader has received (state ``sent``)."""
        if not self.ledger:  # a reader's first part: the usual case in a large send
            return _NOTHING
        return frozenset(slug for slug, entry in self.ledger.items() if entry.state == "sent")

    def started_late(self, series: Series) -> bool:
        """Whether this reader was enrolled to start after ``series``' first part
        (``--start-part``, a ``start_part`` column): the emails then point them to part
        1. A reader who started at the beginning did not, even after an editor puts a
        new part before the first one they received."""
        return bool(series.articles) and self.start_part > series.articles[0].part


def started_late_from(series: Series, received: Collection[str]) -> bool:
    """Whether a reader with history ``received`` (article slugs) started after part 1,
    as far as the history tells, for where the enrollment is not at hand (repeating an
    interrupted request): they lack ``series``' first article. Wrong only for a reader
    who started at the beginning and had a new part 1 put before theirs since."""
    return bool(series.articles) and series.articles[0].slug not in received


@dataclass(frozen=True)
class Step:
    """What happens next for an enrollment, and why. ``article`` is the slug of the
    article concerned; ``part`` its part number today (None: no longer in the series)."""

    kind: StepKind
    reason: str
    part: int | None = None
    # When the part is (or was) due, after the send window; for a held part, when the
    # window opens next (UTC).
    due_at: datetime | None = None
    wake_at: datetime | None = None  # earliest time anything can change without new content
    attempt: int = 1
    article: str | None = None

    @property
    def is_due(self) -> bool:
        return self.kind == "due"


def next_step(series: Series, enrollment: Enrollment, now: datetime) -> Step:
    """The next thing to do for one active enrollment (the rules: module docstring)."""
    step = _next_step(series, enrollment, now)
    if series.paused and step.kind in ("due", "held", "scheduled", "waiting"):
        # Held where they are; nothing to wake for until the content changes.
        return Step("paused", SERIES_PAUSED, step.part, article=step.article)
    return step


def _next_step(series: Series, enrollment: Enrollment, now: datetime) -> Step:
    ledger = enrollment.ledger
    moved = _move_index(series, enrollment)
    if not ledger and moved is None:  # most readers before their first email
        first = next((a for a in series.articles if a.part >= enrollment.start_part), None)
        if first is None:
            return Step("complete", "completed: every part sent")
        return _step_for(series, enrollment, first, None, None, None, now)
    open_step = _open_delivery(series, ledger, now)
    if open_step is not None:
        return open_step
    position = -1
    for index, article in enumerate(series.articles):
        entry = ledger.get(article.slug)
        if entry is not None and entry.state in PAST and _counts(entry, index, moved, enrollment):
            position = index
    placeholder = _placeholder_position(series, ledger)
    if moved is not None:
        placeholder = min(placeholder, moved - 1)
    position = max(position, placeholder)
    # Nothing after the position has been received (it is the last received article),
    # and with no position nothing in the series has: the next article is never one
    # the reader has. A moved reader continues at the article moved to, and may have
    # some after it from before the move: those are left out.
    following: tuple[Article, ...]
    if moved is not None:
        following = tuple(
            a
            for a in series.articles[max(position + 1, moved) :]
            if (seen := ledger.get(a.slug)) is None or seen.state not in PAST
        )
    elif position >= 0:
        following = series.articles[position + 1 :]
    else:  # nothing they received is still in the series: they start where they enrolled
        following = tuple(a for a in series.articles if a.part >= enrollment.start_part)
    if not following:
        return Step("complete", "completed: every part sent")
    article = following[0]
    entry = ledger.get(article.slug)  # none, or a failed attempt
    # The drip counts from the reader's latest email, whichever article it was.
    # Emails of one run share a time: then the later article in the series is the latest.
    latest: tuple[datetime, str] | None = None
    for slug, sent in ledger.items():
        if sent.state == "sent":
            moment = sent.sent_at or sent.updated_at
            if (
                latest is None
                or moment > latest[0]
                or (moment == latest[0] and _part_of(series, slug) > _part_of(series, latest[1]))
            ):
                latest = (moment, slug)
    moved_at = enrollment.moved_at
    if (
        article.slug == enrollment.moved_to
        and moved_at is not None
        and (latest is None or moved_at >= latest[0])
    ):
        # Moved to it since their latest email: it is due at once (a reader they
        # already have it for goes on with the next one at its normal time).
        return _step_for(series, enrollment, article, MOVE, moved_at, entry, now)
    if latest is None:
        return _step_for(series, enrollment, article, None, None, entry, now)
    previous = series.article(latest[1])
    after = f"part {previous.part}" if previous is not None else f"'{latest[1]}'"
    return _step_for(series, enrollment, article, after, latest[0], entry, now)


def _part_of(series: Series, slug: str) -> int:
    """The article's part today; 0 for one no longer in the series."""
    article = series.article(slug)
    return article.part if article is not None else 0


def _move_index(series: Series, enrollment: Enrollment) -> int | None:
    """The index today of the article the reader was moved to (None: not moved, or
    that article is no longer in the series, and the move no longer matters)."""
    if enrollment.moved_to is None:
        return None
    for index, article in enumerate(series.articles):
        if article.slug == enrollment.moved_to:
            return index
    return None


def _counts(entry: LedgerEntry, index: int, moved: int | None, enrollment: Enrollment) -> bool:
    """Whether a received or skipped entry places the reader: always, unless they were
    moved back before it (an entry at or after the article moved to, from before the
    move, is behind the move)."""
    if moved is None or index < moved or enrollment.moved_at is None:
        return True
    return (entry.sent_at or entry.updated_at) > enrollment.moved_at


def _placeholder_position(series: Series, ledger: Mapping[str, LedgerEntry]) -> int:
    """The index of the last article numbered at most N today, for the highest received
    placeholder ``part-N`` that is not one of today's slugs (-1: none)."""
    numbers = [
        int(found["part"])
        for slug, entry in ledger.items()
        if entry.state == "sent"
        and series.article(slug) is None
        and (found := PLACEHOLDER.fullmatch(slug)) is not None
    ]
    if not numbers:
        return -1
    reached = max(numbers)
    return max((i for i, a in enumerate(series.articles) if a.part <= reached), default=-1)


def _open_delivery(series: Series, ledger: Mapping[str, LedgerEntry], now: datetime) -> Step | None:
    """A delivery being sent or of unknown outcome holds the reader, whichever article
    (after an edit it need not be their next one): it is settled first. One of an article
    no longer in the series holds them only while a run is sending it: it can never be
    sent again, so its outcome changes nothing about what comes next."""
    found: tuple[str, LedgerEntry] | None = None
    for slug, entry in ledger.items():
        if entry.state not in ("claimed", "unknown") or (found is not None and slug > found[0]):
            continue
        sending = entry.state == "claimed" and (entry.claimed_until or now) > now
        if sending or series.article(slug) is not None:
            found = (slug, entry)
    if found is None:
        return None
    slug, entry = found
    article = series.article(slug)
    part = article.part if article is not None else None
    name = f"part {part}" if part is not None else f"'{slug}' (no longer in the series)"
    if entry.state == "claimed" and entry.claimed_until is not None and entry.claimed_until > now:
        return Step(
            "in_flight",
            f"{name} is being sent by another run",
            part,
            wake_at=entry.claimed_until,
            article=slug,
        )
    why = "a run stopped while sending it" if entry.state == "claimed" else "delivery unknown"
    return Step(
        "unknown",
        f"{name}: {why}; the next run asks the provider first, and sends it again only "
        "if it never arrived; if the provider cannot tell, it waits for `series resolve`",
        part,
        wake_at=now,
        article=slug,
    )


def _step_for(
    series: Series,
    enrollment: Enrollment,
    article: Article,
    previous: str | None,
    previous_sent: datetime | None,
    entry: LedgerEntry | None,
    now: datetime,
) -> Step:
    """The step for ``article``, the reader's next; ``previous`` names their latest
    delivery (sent at ``previous_sent``), None before their first."""
    part, slug = article.part, article.slug
    if article.draft:
        return Step("waiting", f"waiting: part {part} is a draft", part, article=slug)
    if article.published is None:
        return Step("waiting", f"waiting: part {part} not published", part, article=slug)

    zone = _zone(enrollment.timezone, series.timezone)
    if previous is None or previous_sent is None:
        base, reason = enrollment.enrolled_at, "first part"
        if enrollment.start_part > series.articles[0].part:
            reason = f"first part (starting at part {enrollment.start_part})"
    elif previous is MOVE:
        base = previous_sent
        reason = f"moved to part {part} on {previous_sent.astimezone(zone).date().isoformat()}"
    else:
        # Wall-clock arithmetic in the reader's zone: "7 days later" is the same local
        # time a week later, even across a daylight-saving change.
        base = (previous_sent.astimezone(zone) + series.delay(article)).astimezone(UTC)
        reason = f"{_duration(series.delay(article))} after {previous}"
    if article.published > base:
        base = article.published
        reason = f"part {part} published on {article.published.date().isoformat()}"
    attempt = 1
    if entry is not None and entry.state == "failed":
        if entry.attempts >= MAX_ATTEMPTS:
            return Step(
                "gave_up",
                f"part {part} failed {entry.attempts} times; not retried",
                part,
                article=slug,
            )
        if entry.attempts:  # 0: retried by hand (`series resolve --retry`), so at once
            retry = min(FIRST_RETRY * 2 ** (entry.attempts - 1), LONGEST_RETRY)
            base = max(base, entry.updated_at + retry)
        attempt = entry.attempts + 1
        reason = f"retry after a failed attempt (attempt {attempt} of {MAX_ATTEMPTS})"
    due = into_window(base, series.send_window, zone)
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
            article=slug,
        )
    opening = into_window(now, series.send_window, zone) if due <= now else now
    if opening != now:
        # Its time has come, but not the reader's hours: nothing goes out before they open.
        reason += f"; {held_until(opening, zone)}"
        return Step("held", reason, part, opening, wake_at=opening, attempt=attempt, article=slug)
    if due != base:
        reason += "; held for the send window"
    kind: StepKind = "due" if due <= now else "scheduled"
    return Step(kind, reason, part, due, wake_at=due, attempt=attempt, article=slug)


def window_opening(series: Series, timezone: str | None, moment: datetime) -> datetime | None:
    """None when ``moment`` is inside the series' send window in the reader's local time
    (``timezone``, an IANA name; else the series' zone); otherwise the instant (UTC) the
    window opens next. The check the send loop makes right before handing a message over."""
    window = series.send_window
    if window == ALWAYS:
        return None
    zone = _zone(timezone, series.timezone)
    opening = into_window(moment, window, zone)
    return None if opening == moment else opening


def held_until(opening: datetime, zone: ZoneInfo) -> str:
    """How a hold is shown: "held until Mon 09:00 (send window)", in the reader's time."""
    local = opening.astimezone(zone)
    return f"held until {WEEKDAYS[local.weekday()]} {local:%H:%M} (send window)"


def reader_zone(timezone: str | None, series: Series) -> ZoneInfo:
    """The zone a reader's send window is read in: theirs, else the series'."""
    return _zone(timezone, series.timezone)


def into_window(moment: datetime, window: SendWindow, zone: ZoneInfo) -> datetime:
    """The first instant at or after ``moment`` inside the send window, local to ``zone``."""
    local = moment.astimezone(zone)
    if local.weekday() in window.days and window.start <= local.time() and _open(window, local):
        return moment  # the common case, without building the day's window
    for offset in range(8):
        day: date = local.date() + timedelta(days=offset)
        if day.weekday() not in window.days:
            continue
        start = _local(day, window.start, zone)
        if offset == 0 and start <= local and _open(window, local):
            return moment
        if local < start:
            return start.astimezone(UTC)
    raise ValueError("a send window must allow at least one day")  # config validation ensures it


def _open(window: SendWindow, local: datetime) -> bool:
    """Whether the window has not yet closed at ``local`` on that day (wall clock)."""
    # "24:00" is kept as 23:59:59: such a window runs to midnight, its last second too.
    return window.end == END_OF_DAY or local.time() < window.end


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

    When it changes (a part is published, a delay edited, the window moved, parts
    inserted, renumbered, reordered, renamed or removed), every enrollment of the
    series is planned again; otherwise only those whose wake-up time has come are
    looked at.
    """
    window = series.send_window
    parts = [
        (
            a.slug,
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
            # Only when set, so that the fingerprints of unpaused series stay as they were.
            *(("paused",) if series.paused else ()),
        )
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]
