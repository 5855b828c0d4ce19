"""Migration 0010 on SQLite and on a real PostgreSQL: every enrollment gets a change
counter (``revision``) starting at 0, in no index; the enrollments and their bookmarks
stay, and down and up again work."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from alembic import command

from pipeline.store.migrate import HEAD, _alembic_config, upgrade
from pipeline.store.schema import enrollments

from .migration_rows import add_enrolled

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
KEPT = (enrollments.c.id, enrollments.c.plan_version, enrollments.c.next_due_at)


def columns(conn: sa.Connection) -> list[str]:
    return [c["name"] for c in sa.inspect(conn).get_columns("enrollments")]


def indexed(conn: sa.Connection) -> set[str]:
    """Every column some index of ``enrollments`` holds."""
    return {
        name
        for index in sa.inspect(conn).get_indexes("enrollments")
        for name in index["column_names"]
        if name is not None
    }


def test_migration_0010_counts_from_zero_keeps_everything_and_goes_down_and_up(
    database_url: str, tmp_path: Path
) -> None:
    engine = sa.create_engine(database_url)
    upgrade(engine, "0009", workspace=tmp_path)
    with engine.begin() as conn:
        add_enrolled(conn, [(None, None), ("v1", NOW), ("v2", NOW)], NOW)
    with engine.connect() as conn:
        assert "revision" not in columns(conn)
        before = conn.execute(sa.select(*KEPT).order_by(enrollments.c.id)).all()

    assert upgrade(engine, workspace=tmp_path) == ("0009", HEAD)
    with engine.connect() as conn:
        assert conn.execute(sa.select(*KEPT).order_by(enrollments.c.id)).all() == before
        assert list(conn.scalars(sa.select(enrollments.c.revision))) == [0, 0, 0]
        assert "revision" not in indexed(conn)  # a bookmark writes no index entry for it
    with engine.begin() as conn:  # a new row counts from 0 too, without naming it
        conn.execute(enrollments.insert().values(subscriber_id=1, series="other", enrolled_at=NOW))
        assert conn.scalar(sa.select(sa.func.max(enrollments.c.revision))) == 0

    with engine.begin() as conn:
        config = _alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, "0009")
    with engine.connect() as conn:
        assert "revision" not in columns(conn)
        rows = conn.execute(sa.select(*KEPT).order_by(enrollments.c.id)).all()
        assert rows[:3] == before and len(rows) == 4
    assert upgrade(engine, workspace=tmp_path) == ("0009", HEAD)
    with engine.connect() as conn:
        assert list(conn.scalars(sa.select(enrollments.c.revision))) == [0] * 4
    engine.dispose()
