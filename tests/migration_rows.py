"""Rows written straight into a schema at an older revision, for the migration tests
(the store's own functions always migrate to the newest first)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa

from pipeline.store.schema import enrollments, subscribers


def add_enrolled(
    conn: sa.Connection, bookmarks: Sequence[tuple[str | None, datetime | None]], now: datetime
) -> None:
    """One active subscriber (r0@example.com, r1@…) enrolled in the series "demo" per
    (plan version, next wake-up) of ``bookmarks``, created at ``now``."""
    for n, (version, wake) in enumerate(bookmarks):
        key = conn.execute(
            subscribers.insert().values(
                email=f"r{n}@example.com",
                name="",
                status="active",
                created_at=now,
                updated_at=now,
                source="cli",
                attributes={},
            )
        ).inserted_primary_key
        assert key is not None
        conn.execute(
            enrollments.insert().values(
                subscriber_id=key[0],
                series="demo",
                enrolled_at=now,
                plan_version=version,
                next_due_at=wake,
            )
        )
