"""`series status`: the funnel per series and part, read-only."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa

from .content import Series
from .errors import SeriesError
from .plan import next_step
from .store import Store, ledger
from .store.schema import deliveries, enrollments, subscribers

PART_COLUMNS = ("sent", "due now", "scheduled", "waiting", "failed", "unknown")


@dataclass(frozen=True)
class Stuck:
    """A delivery a person may want to look at: its outcome is unknown (the provider
    may or may not have it), or it failed (a later run tries again)."""

    email: str
    part: int
    since: datetime
    error: str
    attempts: int = 0


@dataclass
class SeriesStatus:
    series: Series
    parts: dict[int, Counter[str]] = field(default_factory=dict)
    next_due: dict[int, datetime] = field(default_factory=dict)
    enrollments: Counter[str] = field(default_factory=Counter)
    unknown: list[Stuck] = field(default_factory=list)
    failed: list[Stuck] = field(default_factory=list)


def series_status(store: Store, series_list: list[Series], now: datetime) -> list[SeriesStatus]:
    report = []
    for series in series_list:
        status = SeriesStatus(series, {a.part: Counter() for a in series.articles})
        with store.connect() as conn:
            counts = conn.execute(
                sa.select(deliveries.c.part, deliveries.c.state, sa.func.count())
                .where(deliveries.c.series == series.slug)
                .group_by(deliveries.c.part, deliveries.c.state)
            ).all()
            for part, state, count in counts:
                column = {"claimed": "unknown"}.get(state, state)
                status.parts.setdefault(part, Counter())[column] += count
            status.enrollments.update(_enrollment_counts(conn, series.slug))
            status.unknown = _stuck(conn, series.slug, "unknown")
            status.failed = _stuck(conn, series.slug, "failed")
        # Due, scheduled and waiting come from the planner itself, so status and send agree.
        for chunk in ledger.iter_enrollments(store, series.slug, now=now, everything=True):
            for enrollment in chunk:
                step = next_step(series, enrollment, now)
                if step.kind == "complete":
                    status.enrollments["completed"] += 1
                    continue
                status.enrollments["active"] += 1
                if step.part is None:
                    continue
                column = {"due": "due now", "scheduled": "scheduled", "waiting": "waiting"}.get(
                    step.kind
                )
                if column:
                    status.parts[step.part][column] += 1
                if step.kind in ("scheduled", "waiting") and step.due_at is not None:
                    earliest = status.next_due.get(step.part)
                    if earliest is None or step.due_at < earliest:
                        status.next_due[step.part] = step.due_at
        report.append(status)
    return report


def _stuck(conn: sa.Connection, series: str, state: str) -> list[Stuck]:
    rows = conn.execute(
        sa.select(
            subscribers.c.email,
            deliveries.c.part,
            deliveries.c.attempted_at,
            deliveries.c.updated_at,
            deliveries.c.last_error,
            deliveries.c.attempts,
        )
        .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
        .where(deliveries.c.series == series, deliveries.c.state == state)
        .order_by(deliveries.c.part, subscribers.c.email)
    ).all()
    return [
        Stuck(r.email, r.part, r.attempted_at or r.updated_at, r.last_error or "", r.attempts)
        for r in rows
    ]


def settle_unknown(
    store: Store, series: str, part: int, email: str, *, sent: bool, now: datetime
) -> None:
    """A person decided an unknown delivery: the reader has it (``sent``), or not (a
    later run sends it). Anything but an unknown delivery is refused."""
    with store.begin() as conn:
        row = conn.execute(
            sa.select(deliveries.c.id, deliveries.c.state, deliveries.c.attempted_at)
            .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
            .where(
                deliveries.c.series == series,
                deliveries.c.part == part,
                subscribers.c.email == email,
            )
        ).first()
        if row is None:
            raise SeriesError(f"no delivery of {series}/{part} to {email}")
        if row.state != "unknown":
            raise SeriesError(
                f"{series}/{part} to {email} is {row.state}, not unknown: nothing to decide"
            )
        ledger.decide_unknown(
            conn,
            row.id,
            sent=sent,
            sent_at=row.attempted_at or now,
            error="marked sent by hand" if sent else "marked not sent by hand",
            now=now,
        )


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
