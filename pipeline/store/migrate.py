"""Apply Alembic migrations safely: one process at a time, and never on a newer schema."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
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
HEAD = "0010"
# The last revision that needs no content (0005 matches recorded parts to articles).
BEFORE_ARTICLES = "0004"
# The revision that matches recorded parts to articles (what MappingRefused is about).
ARTICLES = "0005"


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
    numbers to (None: no content, so a database with recorded deliveries is refused).
    Raises SeriesError for a schema newer than this version, and MappingRefused when
    0005 cannot match recorded parts to this workspace's articles (see
    ``current_articles``)."""
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


class MappingRefused(SeriesError):
    """Migration 0005 cannot match recorded part numbers to articles from this workspace:
    the series is not here, or an article that may be a recorded part does not load."""


# The number an article file name starts with (02-secure.md): for a file that does
# not load, the part it most likely is.
FILE_NUMBER = re.compile(r"(?P<number>\d+)-")


def current_articles(
    workspace: Path | None, recorded: Mapping[str, Collection[int]]
) -> Mapping[str, Mapping[int, str]]:
    """For migration 0005: the slug of each part number in the workspace as it is now,
    for the series with recorded deliveries (``recorded``: {series: parts}); returns
    {series: {part: slug}}.

    Raises MappingRefused rather than guess: a recorded series that is not in this
    workspace (a folder with only the configuration, where `series serve` runs, would
    give every delivery a placeholder and the real workspace would start every reader
    over), or a content error that makes a recorded part's article uncertain (the
    article failed to load, or its part or slug may be wrong: its readers would receive
    it again). Errors in articles whose part nobody received (a new draft) do not count.
    """
    if not recorded:
        return {}
    if workspace is None or not any(
        (workspace / name).is_file() for name in ("series.toml", "pyproject.toml")
    ):
        raise _not_here(sorted(recorded)[0], "there is no workspace here")
    from ..config import load_config
    from ..content import load_series

    config = load_config(workspace)
    series_list, problems = load_series(config)
    loaded = {s.slug: s for s in series_list}
    for name in sorted(recorded):
        directory = config.series_dir / name
        prefix = config.rel(directory) + "/"
        errors = [p for p in problems if p.is_error and f"{p.path}/".startswith(prefix)]
        series = loaded.get(name)
        if series is None and not errors:
            raise _not_here(name, f"no {config.rel(directory)}/ folder in {workspace}")
        parts = set(recorded[name])
        by_source = {a.source: a for a in series.articles} if series is not None else {}
        missing = parts - {a.part for a in by_source.values()}
        for problem in errors:
            article = by_source.get(problem.path)
            if article is not None:
                uncertain = article.part in parts
            else:  # series.yml, or an article file that did not load: its part is unknown
                number = FILE_NUMBER.match(Path(problem.path).name)
                uncertain = (
                    series is None
                    or bool(missing)
                    or (number is not None and int(number["number"]) in parts)
                )
            if uncertain:
                raise MappingRefused(
                    f"cannot upgrade the database to schema {ARTICLES} while series '{name}' has "
                    f"content errors ({problem}): the upgrade matches each recorded part to the "
                    "article that has that part number now; fix the content (`series check`) "
                    "and run again"
                )
    return {s.slug: {a.part: a.slug for a in s.articles} for s in series_list if s.slug in recorded}


def _not_here(series: str, why: str) -> MappingRefused:
    return MappingRefused(
        f"cannot upgrade the database to schema {ARTICLES} from here: series '{series}' has "
        f"recorded deliveries and {why}; run `series db upgrade` in the workspace that "
        "holds the series (the upgrade matches each recorded part to its article there)"
    )
