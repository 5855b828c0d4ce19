"""`series status`: the funnel per series and article (in today's order), read-only.

Counts are kept per article slug, so an article renumbered since it was sent keeps
its counts; articles that were sent and are no longer in the series are counted
apart (``gone``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa

from .content import Series
from .dropoff import DropOff, drop_off
from .errors import SeriesError
from .plan import held_until, next_step, reader_zone
from .store import Store, ledger
from .store.schema import deliveries, enrollments, subscribers

# "skipped": readers an editor moved past the article; "paused": readers held by
# `paused: true` in series.yml, at the article they get next.
PART_COLUMNS = (
    "sent",
    "skipped",
    "due now",
    "held",
    "scheduled",
    "waiting",
    "paused",
    "failed",
    "unknown",
)


@dataclass(frozen=True)
class Stuck:
    """A delivery a person may want to look at: its outcome is unknown (the provider
    may or may not have it), or it failed (a later run tries again, unless the article is
    no longer in the series: the planner never proposes it). ``part`` is the
    article's part number today (None: no longer in the series)."""

    email: str
    article: str
    part: int | None
    since: datetime
    error: str
    attempts: int = 0


@dataclass
class SeriesStatus:
    """One series' funnel: ledger and planner counts by article slug (columns as in
    PART_COLUMNS), the earliest next due time by slug, enrollment counts by state."""

    series: Series
    articles: dict[str, Counter[str]] = field(default_factory=dict)
    next_due: dict[str, datetime] = field(default_factory=dict)
    enrollments: Counter[str] = field(default_factory=Counter)
    unknown: list[Stuck] = field(default_factory=list)
    failed: list[Stuck] = field(default_factory=list)
    # (part, "held until Mon 09:00 (send window)" in the reader's time) → readers
    held: Counter[tuple[int, str]] = field(default_factory=Counter)
    dropoff: DropOff = field(default_factory=DropOff)

    @property
    def gone(self) -> dict[str, Counter[str]]:
        """Counts of the articles the ledger has that are no longer in the series."""
        present = {a.slug for a in self.series.articles}
        return {slug: c for slug, c in sorted(self.articles.items()) if slug not in present}


def series_status(store: Store, series_list: list[Series], now: datetime) -> list[SeriesStatus]:
    """The funnel of each series, from the ledger and from the planner itself (so that
    status and send agree)."""
    report = []
    for series in series_list:
        status = SeriesStatus(series, {a.slug: Counter() for a in series.articles})
        with store.connect() as conn:
            counts = conn.execute(
                sa.select(deliveries.c.article, deliveries.c.state, sa.func.count())
                .where(deliveries.c.series == series.slug)
                .group_by(deliveries.c.article, deliveries.c.state)
            ).all()
            for article, state, count in counts:
                column = {"claimed": "unknown"}.get(state, state)
                status.articles.setdefault(article, Counter())[column] += count
            status.enrollments.update(_enrollment_counts(conn, series.slug))
            status.unknown = _stuck(conn, series, "unknown")
            status.failed = _stuck(conn, series, "failed")
            status.dropoff = drop_off(conn, series)
        # Due, scheduled and waiting come from the planner itself, so status and send agree.
        for chunk in ledger.iter_enrollments(store, series.slug, now=now, everything=True):
            for enrollment in chunk:
                step = next_step(series, enrollment, now)
                if step.kind == "complete":
                    status.enrollments["completed"] += 1
                    continue
                status.enrollments["active"] += 1
                if step.article is None:
                    continue
                column = {
                    "due": "due now",
                    "held": "held",
                    "scheduled": "scheduled",
                    "waiting": "waiting",
                    "paused": "paused",
                }.get(step.kind)
                if column:
                    status.articles.setdefault(step.article, Counter())[column] += 1
                if step.kind == "held" and step.due_at is not None and step.part is not None:
                    zone = reader_zone(enrollment.timezone, series)
                    status.held[(step.part, held_until(step.due_at, zone))] += 1
                if step.kind in ("held", "scheduled", "waiting") and step.due_at is not None:
                    earliest = status.next_due.get(step.article)
                    if earliest is None or step.due_at < earliest:
                        status.next_due[step.article] = step.due_at
        report.append(status)
    return report


def _stuck(conn: sa.Connection, series: Series, state: str) -> list[Stuck]:
    """The deliveries of a series in ``state``, in today's order of their articles (those
    no longer in the series last), then by address."""
    rows = conn.execute(
        sa.select(
            subscribers.c.email,
            deliveries.c.article,
            deliveries.c.attempted_at,
            deliveries.c.updated_at,
            deliveries.c.last_error,
            deliveries.c.attempts,
        )
        .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
        .where(deliveries.c.series == series.slug, deliveries.c.state == state)
    ).all()
    parts = {a.slug: a.part for a in series.articles}
    found = [
        Stuck(
            r.email,
            r.article,
            parts.get(r.article),
            r.attempted_at or r.updated_at,
            r.last_error or "",
            r.attempts,
        )
        for r in rows
    ]
    never = 1 + max(parts.values(), default=0)  # gone articles after today's parts
    return sorted(found, key=lambda u: (u.part or never, u.article, u.email))


def settle_unknown(
    store: Store,
    series: str,
    article: str,
    email: str,
    *,
    sent: bool,
    now: datetime,
    label: str | None = None,
) -> None:
    """A person decided an unknown delivery of ``article`` (a slug) of ``series`` to
    ``email``: the reader has it (``sent``), or not (a later run sends it). Raises
    SeriesError for a delivery that does not exist or is not unknown; its message
    names the article as ``label`` (what the person typed), else by slug."""
    target = f"{series}/{label or article}"
    with store.begin() as conn:
        row = conn.execute(
            sa.select(deliveries.c.id, deliveries.c.state, deliveries.c.attempted_at)
            .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
            .where(
                deliveries.c.series == series,
                deliveries.c.article == article,
                subscribers.c.email == email,
            )
        ).first()
        if row is None:
            raise SeriesError(f"no delivery of {target} to {email}")
        if row.state != "unknown":
            raise SeriesError(f"{target} to {email} is {row.state}, not unknown: nothing to decide")
        decided = ledger.decide_unknown(
            conn,
            row.id,
            sent=sent,
            sent_at=row.attempted_at or now,
            error="marked sent by hand" if sent else "marked not sent by hand",
            now=now,
        )
        if not decided:  # a run settled it between the read and this write
            raise SeriesError(f"{target} to {email} was settled meanwhile: nothing to decide")


def _enrollment_counts(conn: sa.Connection, series: str) -> Counter[str]:
    rows = conn.execute(
        sa.select(
            enrollments.c.paused,
            enrollments.c.unsubscribed_at.is_not(None),
            subscribers.c.status,
            sa.func.count(),
        )
        .join(subscribers, subscribers.c.id == enrollments.c.subscriber_id)
        .where(enrollments.c.series == series)
        .group_by(
            enrollments.c.paused, enrollments.c.unsubscribed_at.is_not(None), subscribers.c.status
        )
    ).all()
    counts: Counter[str] = Counter()
    for paused, unsubscribed, status, count in rows:
        if unsubscribed or status == "unsubscribed":
            counts["unsubscribed"] += count
        elif status != "active":
            counts[status] += count  # bounced, complained
        elif paused:
            counts["paused"] += count
    return counts
