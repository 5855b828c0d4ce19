"""Where readers drop off: per article, how many left (unsubscribed, bounced,
complained) right after receiving it, and how many completed the series.

A reader who left counts against the article their leave came from when the
unsubscribe link said so (links name the series and article since schema 0008:
an unsubscribe from part 3's email counts against part 3 even if part 4 went out
since); otherwise against the last article of the series they were sent before
they left (by send time; their latest if the time of leaving is not known);
readers who left before receiving any are counted apart. Read-only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .content import Series
from .store.schema import deliveries, enrollments, status_changes, subscribers

LEAVES = ("unsubscribed", "bounced", "complained")
BEFORE_FIRST = ""  # the key of readers who left before receiving anything
CHUNK = 2000


@dataclass
class DropOff:
    """``left``: by article slug (BEFORE_FIRST: before any), counts by kind of leave
    (LEAVES); ``completed``: readers who received the series' last article."""

    left: dict[str, Counter[str]] = field(default_factory=dict)
    completed: int = 0

    def count(self, slug: str, kind: str) -> int:
        return self.left.get(slug, Counter())[kind]


def drop_off(conn: Connection, series: Series) -> DropOff:
    """The drop-off of one series, from the enrollments, the audit and the ledger."""
    result = DropOff()
    if series.articles:
        last = series.articles[-1].slug
        result.completed = int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(deliveries)
                .where(
                    deliveries.c.series == series.slug,
                    deliveries.c.article == last,
                    deliveries.c.state == "sent",
                )
            ).scalar_one()
        )
    leavers = conn.execute(
        sa.select(enrollments.c.subscriber_id, enrollments.c.unsubscribed_at, subscribers.c.status)
        .join(subscribers, subscribers.c.id == enrollments.c.subscriber_id)
        .where(
            enrollments.c.series == series.slug,
            sa.or_(enrollments.c.unsubscribed_at.is_not(None), subscribers.c.status != "active"),
        )
        .order_by(enrollments.c.subscriber_id)
    ).all()
    for start in range(0, len(leavers), CHUNK):
        _count(conn, series.slug, leavers[start : start + CHUNK], result)
    return result


def _count(conn: Connection, series: str, leavers: Sequence[Any], result: DropOff) -> None:
    ids = [r.subscriber_id for r in leavers]
    # Each reader's leaves, newest last, that concern this series (or every series).
    audits: dict[int, list[Any]] = {}
    for a in conn.execute(
        sa.select(
            status_changes.c.subscriber_id,
            status_changes.c.series,
            status_changes.c.new_status,
            status_changes.c.created_at,
            status_changes.c.via_series,
            status_changes.c.via_article,
        )
        .where(
            status_changes.c.subscriber_id.in_(ids),
            status_changes.c.new_status.in_(LEAVES),
            sa.or_(status_changes.c.series.is_(None), status_changes.c.series == series),
        )
        .order_by(status_changes.c.created_at, status_changes.c.id)
    ):
        audits.setdefault(a.subscriber_id, []).append(a)
    sent: dict[int, list[tuple[datetime, str]]] = {}
    for d in conn.execute(
        sa.select(
            deliveries.c.subscriber_id,
            deliveries.c.article,
            deliveries.c.sent_at,
            deliveries.c.updated_at,
        ).where(
            deliveries.c.series == series,
            deliveries.c.subscriber_id.in_(ids),
            deliveries.c.state == "sent",
        )
    ):
        sent.setdefault(d.subscriber_id, []).append((d.sent_at or d.updated_at, d.article))
    for reader in leavers:
        kind = "unsubscribed" if reader.unsubscribed_at is not None else reader.status
        if kind not in LEAVES:
            continue
        # The series-only unsubscribe is the enrollment's; any other leave the person's.
        wanted_series = series if reader.unsubscribed_at is not None else None
        leave = next(
            (
                a
                for a in reversed(audits.get(reader.subscriber_id, []))
                if a.new_status == kind and a.series == wanted_series
            ),
            None,
        )
        article = _attributed(leave, series, reader.unsubscribed_at, sent.get(reader.subscriber_id))
        result.left.setdefault(article, Counter())[kind] += 1


def _attributed(
    leave: Any,
    series: str,
    unsubscribed_at: datetime | None,
    sent: list[tuple[datetime, str]] | None,
) -> str:
    """The article a leave counts against: the one its email named, else the last one
    sent before it, else BEFORE_FIRST."""
    if leave is not None and leave.via_series == series and leave.via_article:
        return str(leave.via_article)
    if not sent:
        return BEFORE_FIRST
    when = leave.created_at if leave is not None else unsubscribed_at
    before = [item for item in sent if when is None or item[0] <= when]
    return max(before)[1] if before else BEFORE_FIRST
