"""Apply Alembic migrations safely: one process at a time, and never on a newer schema."""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..errors import SeriesError

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

SCRIPT_LOCATION = "pipeline.store:migrations"
# The newest revision in migrations/versions (a test keeps the two equal). Knowing it
# up front lets an up-to-date database skip loading Alembic at all.
HEAD = "0004"


def _alembic_config() -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    return config


def head() -> str:
    from alembic.script import ScriptDirectory

    return str(ScriptDirectory.from_config(_alembic_config()).get_current_head())


def current(conn: Connection) -> str | None:
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: Engine, target: str = "head") -> tuple[str | None, str]:
    """Bring the schema to ``target``; returns (revision before, revision after)."""
    if target == "head":
        with engine.connect() as conn:
            if current(conn) == HEAD:
                return HEAD, HEAD
    from alembic import command
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    config = _alembic_config()
    script = ScriptDirectory.from_config(config)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Serialise concurrent first runs; released at commit.
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7264137)")
        before = current(conn)
        if before is not None:
            try:
                script.get_revision(before)
            except CommandError:
                raise SeriesError(
                    f"the database schema is at revision {before}, newer than this version "
                    f"of series knows (newest: {script.get_current_head()}); upgrade series"
                ) from None
        wanted = script.get_current_head() if target == "head" else target
        if before != wanted:
            config.attributes["connection"] = conn
            command.upgrade(config, target)
        return before, current(conn) or ""
