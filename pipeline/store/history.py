"""What readers have received, summed up per article: for the warnings `series check`
and `series send --dry-run` print when the content no longer matches the ledger.

Read-only queries, each one pass over a series' ledger whatever its size."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .schema import deliveries, enrollments, subscribers


def article_states(conn: Connection, series: str) -> dict[str, Counter[str]]:
    """Deliveries of a series by article slug and state ({slug: {state: count}})."""
    counts: dict[str, Counter[str]] = {}
    rows = conn.execute(
        sa.select(deliveries.c.article, deliveries.c.state, sa.func.count())
        .where(deliveries.c.series == series)
        .group_by(deliveries.c.article, deliveries.c.state)
    )
    for article, state, count in rows:
        counts.setdefault(article, Counter())[state] += count
    return counts


def recorded_parts(conn: Connection, series: str, articles: Sequence[str]) -> dict[str, int]:
    """The part number each of these articles (slugs) had when it was last claimed."""
    rows = conn.execute(
        sa.select(deliveries.c.article, sa.func.max(deliveries.c.part))
        .where(deliveries.c.series == series, deliveries.c.article.in_(articles))
        .group_by(deliveries.c.article)
    )
    return {article: part for article, part in rows}


def readers_past(conn: Connection, series: str, order: Sequence[tuple[str, int]]) -> list[int]:
    """For each article of ``order`` ((slug, part) in today's order, ``part`` where it
    stood when it was sent): how many active readers have received a later article but
    not this one, though they enrolled at or before that part (a reader who started
    after it never wanted it). The planner never sends it to them: it is behind them.

    One grouped pass: each reader's position (index of the last article they received,
    in today's order) and which articles they have, then a count per article."""
    if not order:
        return []
    received = deliveries.c.state == "sent"
    position = sa.func.max(
        sa.case(
            *(
                (sa.and_(received, deliveries.c.article == slug), index)
                for index, (slug, _) in enumerate(order)
            ),
            else_=-1,
        )
    ).label("position")
    has = [
        sa.func.max(sa.case((sa.and_(received, deliveries.c.article == slug), 1), else_=0)).label(
            f"has_{index}"
        )
        for index, (slug, _) in enumerate(order)
    ]
    histories = (
        sa.select(deliveries.c.subscriber_id, position, *has)
        .where(deliveries.c.series == series)
        .group_by(deliveries.c.subscriber_id)
        .subquery()
    )
    readers = (
        sa.select(
            *(
                sa.func.coalesce(
                    sa.func.sum(
                        sa.case(
                            (
                                sa.and_(
                                    histories.c.position > index,
                                    histories.c[f"has_{index}"] == 0,
                                    enrollments.c.start_part <= part,
                                ),
                                1,
                            ),
                            else_=0,
                        )
                    ),
                    0,
                )
                for index, (_, part) in enumerate(order)
            )
        )
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
    )
    return [int(count) for count in conn.execute(readers).one()]
