"""Apply Alembic migrations safely: one process at a time, and never on a newer schema."""

from __future__ import annotations

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import Connection, Engine

from ..errors import SeriesError

SCRIPT_LOCATION = "pipeline.store:migrations"


def _alembic_config() -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    return config


def head() -> str:
    return str(ScriptDirectory.from_config(_alembic_config()).get_current_head())


def current(conn: Connection) -> str | None:
    heads = MigrationContext.configure(conn).get_current_heads()
    return heads[0] if heads else None


def upgrade(engine: Engine, target: str = "head") -> tuple[str | None, str]:
    """Bring the schema to ``target``; returns (revision before, revision after)."""
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
