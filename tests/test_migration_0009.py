"""Migration 0009 on SQLite and on a real PostgreSQL: the planner's indexes hold only
what the planner looks for, so a bookmark writes fewer index entries (issue 16); the
enrollments stay, and down and up again work."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from alembic import command

from pipeline.store.migrate import HEAD, _alembic_config, upgrade
from pipeline.store.schema import enrollments

from .migration_rows import add_enrolled

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def index_sql(conn: sa.Connection) -> dict[str, str]:
    """The definition of each index of ``enrollments``, as the database keeps it, in
    lower case with runs of spaces and brackets taken out."""
    if conn.dialect.name == "sqlite":
        rows = conn.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
            "AND tbl_name = 'enrollments' AND sql IS NOT NULL"
        )
    else:
        rows = conn.exec_driver_sql(
            "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index "
            "WHERE indrelid = 'enrollments'::regclass"
        )
    return {
        name: " ".join(sql.lower().replace("(", " ").replace(")", " ").split())
        for name, sql in rows
    }


def test_migration_0009_indexes_only_the_unplanned_and_keeps_everything(
    database_url: str, tmp_path: Path
) -> None:
    engine = sa.create_engine(database_url)
    upgrade(engine, "0008", workspace=tmp_path)
    with engine.begin() as conn:
        add_enrolled(conn, [(None, NOW), ("v1", NOW), (None, NOW)], NOW)
    with engine.connect() as conn:
        before = index_sql(conn)
    assert "plan_version" in before["enrollments_to_plan"]
    assert "where" not in before["enrollments_to_plan"]

    assert upgrade(engine, workspace=tmp_path) == ("0008", HEAD)
    with engine.connect() as conn:
        after = index_sql(conn)
        unplanned = conn.execute(
            sa.select(enrollments.c.id)
            .where(enrollments.c.series == "demo", enrollments.c.plan_version.is_(None))
            .order_by(enrollments.c.id)
        ).scalars()
        assert len(list(unplanned)) == 2
        assert conn.scalar(sa.select(sa.func.count()).select_from(enrollments)) == 3
    to_plan = after["enrollments_to_plan"]
    assert "series, id" in to_plan.replace(" ,", ",")
    assert to_plan.endswith("where plan_version is null")
    # PostgreSQL writes an entry in every index on each bookmark; SQLite only in those
    # whose columns change, and keeps (series, rowid) for the full plan's id order.
    assert ("enrollments_by_series" in after) == (engine.dialect.name == "sqlite")
    assert after["enrollments_by_wakeup"] == before["enrollments_by_wakeup"]

    with engine.begin() as conn:
        config = _alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, "0008")
    with engine.connect() as conn:
        assert index_sql(conn) == before
    assert upgrade(engine, workspace=tmp_path) == ("0008", HEAD)
    engine.dispose()
