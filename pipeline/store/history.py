"""What readers have received, summed up per article: for the warnings `series check`
and `series send --dry-run` print when the content no longer matches the ledger.

Read-only queries, each one pass over a series' ledger whatever its size."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .schema import deliveries, enrollments, subscribers

# Articles per bit mask column: a mask is a sum of distinct powers of two, which must
# fit a signed 64-bit integer on both databases.
MASK_BITS = 62


@dataclass
class Recorded:
    """What the ledger holds of one article: its deliveries by state, and the highest
    part number it had when one of them was claimed."""

    states: Counter[str] = field(default_factory=Counter)
    part: int = 0


def recorded_articles(conn: Connection, series: str) -> dict[str, Recorded]:
    """Every article (slug) the ledger has for a series, with its deliveries by state."""
    found: dict[str, Recorded] = {}
    rows = conn.execute(
        sa.select(
            deliveries.c.article,
            deliveries.c.state,
            sa.func.count(),
            sa.func.max(deliveries.c.part),
        )
        .where(deliveries.c.series == series)
        .group_by(deliveries.c.article, deliveries.c.state)
    )
    for article, state, count, part in rows:
        recorded = found.setdefault(article, Recorded())
        recorded.states[state] += count
        recorded.part = max(recorded.part, part)
    return found


def readers_past(conn: Connection, series: str, order: Sequence[tuple[str, int]]) -> list[int]:
    """For each article of ``order`` ((slug, part) in today's order, ``part`` where it
    stood when it was sent): how many active readers have received a later article but
    not this one, though they enrolled at or before that part (a reader who started
    after it never wanted it). The planner never sends it to them: it is behind them.

    The database reduces each reader to their position (index of the last article they
    received, in today's order) and the set of articles they have (bit masks), and
    counts readers per (start part, position, set): a few rows, whatever the list's size.
    """
    if not order:
        return []
    index = sa.case(
        *((deliveries.c.article == slug, i) for i, (slug, _) in enumerate(order)), else_=None
    )
    chunks = range(0, len(order), MASK_BITS)
    masks = [
        sa.func.sum(
            sa.case(
                *(
                    (deliveries.c.article == slug, 1 << (i - start))
                    for i, (slug, _) in enumerate(order)
                    if start <= i < start + MASK_BITS
                ),
                else_=0,
            )
        ).label(f"mask_{start}")
        for start in chunks
    ]
    histories = (
        sa.select(deliveries.c.subscriber_id, sa.func.max(index).label("position"), *masks)
        # A skipped article (the reader was moved past it) is one they are not missing.
        .where(deliveries.c.series == series, deliveries.c.state.in_(("sent", "skipped")))
        .group_by(deliveries.c.subscriber_id)
        .subquery()
    )
    kinds = (
        enrollments.c.start_part,
        histories.c.position,
        *(histories.c[f"mask_{start}"] for start in chunks),
    )
    rows = conn.execute(
        sa.select(*kinds, sa.func.count())
        .select_from(histories)
        .join(
            enrollments,
            sa.and_(
                enrollments.c.subscriber_id == histories.c.subscriber_id,
                enrollments.c.series == series,
            ),
        )
        .join(subscribers, subscribers.c.id == histories.c.subscriber_id)
        .where(subscribers.c.status == "active", enrollments.c.unsubscribed_at.is_(None))
        .group_by(*kinds)
    )
    counts = [0] * len(order)
    for start_part, position, *bits, readers in rows:
        if position is None:
            continue  # they received only articles no longer in the series
        for i in range(position):
            has = (int(bits[i // MASK_BITS]) >> (i % MASK_BITS)) & 1
            if not has and start_part <= order[i][1]:
                counts[i] += readers
    return counts
