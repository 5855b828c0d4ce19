"""Apply Alembic migrations safely: one process at a time, and never on a newer schema."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..errors import SeriesError

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

SCRIPT_LOCATION = "pipeline.store:migrations"
# The newest revision in migrations/versions (a test keeps the two equal). Knowing it
# up front lets an up-to-date database skip loading Alembic at all.
HEAD = "0005"


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


def upgrade(
    engine: Engine, target: str = "head", *, workspace: Path | None = None
) -> tuple[str | None, str]:
    """Bring the schema to ``target``; returns (revision before, revision after).

    ``workspace``: the workspace whose articles migration 0005 matches recorded part
    numbers to (None: no content; every recorded part gets a placeholder identity).
    Raises SeriesError for a schema newer than this version, or content 0005 cannot
    read (see ``current_articles``)."""
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
            config.attributes["workspace"] = workspace
            command.upgrade(config, target)
        return before, current(conn) or ""


def current_articles(workspace: Path | None, wanted: set[str]) -> Mapping[str, Mapping[int, str]]:
    """For migration 0005: the slug of each part number in the workspace as it is now,
    for the series in ``wanted`` ({series: {part: slug}}).

    A series whose directory is missing maps nothing (its deliveries keep placeholder
    identities). A wanted series with content errors raises SeriesError: an article that
    failed to load would lose its readers' history, and they would receive it again.
    """
    if workspace is None or not wanted:
        return {}
    from ..config import load_config
    from ..content import load_series

    if not any((workspace / name).is_file() for name in ("series.toml", "pyproject.toml")):
        return {}  # not a workspace: a database used on its own
    config = load_config(workspace)
    series_list, problems = load_series(config)
    for name in sorted(wanted):
        prefix = config.rel(config.series_dir / name) + "/"
        errors = [p for p in problems if p.is_error and f"{p.path}/".startswith(prefix)]
        if errors:
            raise SeriesError(
                f"cannot upgrade the database to schema {HEAD} while series '{name}' has "
                f"content errors ({errors[0]}): the upgrade matches each recorded part to the "
                "article that has that part number now; fix the content (`series check`) "
                "and run again"
            )
    return {s.slug: {a.part: a.slug for a in s.articles} for s in series_list if s.slug in wanted}
