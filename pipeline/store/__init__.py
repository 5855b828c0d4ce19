"""The state database: SQLite at subscribers/state.db by default, PostgreSQL when
``SERIES_DATABASE_URL`` is set. Migrations are applied on first use."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from ..dburl import read_url
from ..errors import SeriesError
from ..redact import database_secrets, mask_database_url, scrub_secrets
from . import schema
from .migrate import BEFORE_ARTICLES, MappingRefused, upgrade
from .turns import WriterTurns

log = logging.getLogger(__name__)

DATABASE_URL_ENV = "SERIES_DATABASE_URL"


class StoreError(SeriesError):
    """The database cannot be reached or is not in a state this version can use."""


def database_url(workspace: Path, environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    url = env.get(DATABASE_URL_ENV, "").strip()
    if url:
        return url
    return f"sqlite:///{workspace / 'subscribers' / 'state.db'}"


def safe_url(url: str) -> str:
    """The URL as it may be shown: every password in it replaced by *** (in the user
    part, also with an unencoded @; as ?password=…; in a keyword DSN)."""
    return mask_database_url(url)


class Store:
    """An open state database. Use ``with store.begin() as conn`` for a transaction."""

    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url
        self._turns = WriterTurns.for_engine(engine)
        self._hash_key: bytes | None = None
        # Why the schema was left before 0005 (open_store's ``content_free``), if it was.
        self.upgrade_refused: str | None = None

    @property
    def display_url(self) -> str:
        return safe_url(self.url)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with self._translate(), self._turns.turn(), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection for reads: it takes no write lock and commits nothing."""
        with self._translate(), self.engine.connect() as conn:
            yield conn.execution_options(series_read_only=True)

    def require_current_schema(self) -> None:
        """For read-only commands, which must not migrate: refuse an outdated schema."""
        from .migrate import HEAD, current

        with self.connect() as conn:
            revision = current(conn)
        if revision != HEAD:
            raise StoreError(
                f"database {self.display_url} is at schema revision {revision}, this version "
                f"needs {HEAD}; run `series db upgrade` first"
            )

    def email_hash(self, conn: Connection, email: str) -> str:
        """Keyed hash of an address (HMAC-SHA256 with this database's own key)."""
        if self._hash_key is None:
            value = conn.execute(
                sa.select(schema.settings.c.value).where(schema.settings.c.key == "email_hash_key")
            ).scalar_one()
            self._hash_key = bytes.fromhex(value)
        return hmac.new(self._hash_key, email.encode("utf-8"), hashlib.sha256).hexdigest()

    def close(self) -> None:
        self.engine.dispose()
        self._turns.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except DBAPIError as exc:
            if exc.connection_invalidated or isinstance(exc, sa.exc.OperationalError):
                raise StoreError(
                    f"database {self.display_url}: {_scrub(str(exc.orig), self.url)}"
                ) from None
            if type(exc.orig) is sqlite3.DatabaseError:
                # SQLite's own error class, not a subclass such as IntegrityError: "file
                # is not a database", "database disk image is malformed" (SQLITE_NOTADB,
                # SQLITE_CORRUPT): a truncated or overwritten state.db.
                raise StoreError(
                    f"database {self.display_url} is damaged ({_scrub(str(exc.orig), self.url)}):"
                    " restore it from a backup; series will not write to it"
                ) from None
            raise


def state_exists(workspace: Path, url: str | None = None) -> bool:
    """Whether there is any state yet, without creating it (SQLite makes files on connect)."""
    url = url or database_url(workspace)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return True  # let open_store report the bad URL
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return True
    # Anything at the path counts, not only a file: a directory or a dangling symlink named
    # state.db is a database that cannot be opened (open_store says so), not "no state yet".
    return os.path.lexists(parsed.database)


def open_store(
    workspace: Path, url: str | None = None, *, migrate: bool = True, content_free: bool = False
) -> Store:
    """Connect, and bring the schema up to date unless ``migrate`` is false (a migration
    may read the workspace's content: 0005 matches recorded parts to its articles).

    ``content_free``: for what must always work and touches no delivery history
    (unsubscribing, erasure, the unsubscribe pages): when 0005 cannot match recorded
    parts from this workspace, stay at 0004 and say why in ``store.upgrade_refused``."""
    url = url or database_url(workspace)
    engine = _engine(url)
    store = Store(engine, url)
    if migrate:
        try:
            with store._translate():
                try:
                    upgrade(engine, workspace=workspace)
                except MappingRefused as exc:
                    if not content_free:
                        raise
                    upgrade(engine, BEFORE_ARTICLES, workspace=workspace)
                    store.upgrade_refused = str(exc)
        except BaseException:
            engine.dispose()
            raise
    return store


def _engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(
            f"{DATABASE_URL_ENV} is not a database URL: {safe_url(url)} "
            "(expected e.g. postgresql+psycopg://user@host/db)"
        ) from None
    except ValueError:  # SQLAlchemy's int() of the port
        raise StoreError(
            f"{DATABASE_URL_ENV} has a port that is not a number ({safe_url(url)})"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed)
    if parsed.get_backend_name() != "postgresql":
        raise StoreError(
            f"unsupported database {parsed.get_backend_name()!r} in {safe_url(url)}: "
            "use SQLite (default) or postgresql+psycopg://…"
        )
    # Read as SQLAlchemy reads it: an @ that would cut the password (its tail shown as
    # a host name), a parameter libpq does not take (a traceback at connect otherwise).
    problem = read_url(url).problem
    if problem is not None:
        raise StoreError(f"{DATABASE_URL_ENV} {problem} ({safe_url(url)})")
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    try:
        engine = sa.create_engine(parsed, hide_parameters=True)
    except NoSuchModuleError:
        raise StoreError(f"no driver for {parsed.drivername}; use postgresql+psycopg://") from None
    _ping_after_idle(engine)
    return engine


# A pooled PostgreSQL connection that has been idle this long is tried before it is
# used again: the server, a proxy or a firewall may have closed it meanwhile (a run
# waiting for its rate limit, `series serve` between requests).
IDLE_PING = 10.0  # seconds


def _ping_after_idle(engine: Engine) -> None:
    """SQLAlchemy's ``pool_pre_ping``, but only for a connection idle ``IDLE_PING``
    seconds or more. The send loop takes a connection from the pool a few times per
    request; trying each one first was a round trip every time, 4% of the loop's time
    (py-spy, 30,000 messages). A connection found dead is replaced, as with
    ``pool_pre_ping``: the pool retries the checkout on DisconnectionError
    (https://docs.sqlalchemy.org/en/20/core/pooling.html#disconnect-handling-pessimistic)."""

    @sa.event.listens_for(engine.pool, "checkin")
    def _idle_from(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @sa.event.listens_for(engine.pool, "checkout")
    def _alive(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < IDLE_PING:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)  # True, or the driver's error
        except Exception as exc:
            raise sa.exc.DisconnectionError("the pooled connection was closed") from exc


def _sqlite_engine(url: sa.URL) -> Engine:
    _require_sqlite_features()
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        _refuse_empty_file(Path(url.database), url.render_as_string(hide_password=True))
    engine = sa.create_engine(url, hide_parameters=True)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves (below) instead of the driver's deferred one.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # Deleted content is overwritten with zeros, not left in free pages and free
        # space within pages: an erased person's address must not stay in the file.
        cursor.execute("PRAGMA secure_delete=ON")
        # 16 MB of page cache (the default is 2 MB): the ledger's indexes of a large
        # list stay in memory while a run writes to them.
        cursor.execute("PRAGMA cache_size=-16384")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front (IMMEDIATE), so two writers queue on
        # busy_timeout instead of failing halfway with "database is locked"; readers
        # take none and, in WAL mode, never wait for a writer.
        if conn.get_execution_options().get("series_read_only"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _require_sqlite_features() -> None:
    """Refuse, with one line, a SQLite without what the ledger's writes use: RETURNING
    (3.35) and the JSON functions (JSON1, built in since 3.38)."""
    if sqlite3.sqlite_version_info < (3, 35, 0):
        raise StoreError(
            f"this Python uses SQLite {sqlite3.sqlite_version}; series needs 3.35 or later "
            "(use a newer Python build, or PostgreSQL through SERIES_DATABASE_URL)"
        )
    try:
        with contextlib.closing(sqlite3.connect(":memory:")) as probe:
            probe.execute("SELECT json_extract('[1]', '$[0]')")
    except sqlite3.OperationalError:
        raise StoreError(
            f"this Python's SQLite {sqlite3.sqlite_version} was built without its JSON "
            "functions, which series needs (use a newer Python build, or PostgreSQL)"
        ) from None


def _refuse_empty_file(path: Path, shown: str) -> None:
    """SQLite takes an existing empty file for a new database, so a state.db emptied by a
    failed copy or a full disk would start over, and the next import would send every
    reader part 1 again. Refuse it. A database being created by another process is empty
    only until its first statement (journal_mode=WAL writes the header), so wait that out."""
    for _ in range(20):
        try:
            if path.stat().st_size > 0:
                return
        except FileNotFoundError:
            return
        time.sleep(0.05)
    raise StoreError(
        f"database {shown} is an empty file, not a database: restore it from a backup "
        "(a new database here would send every reader part 1 again); delete it only to "
        "start afresh"
    )


def _scrub(message: str, url: str) -> str:
    """A driver's message, first line only, with the database password (in any form the
    URL holds it) and every other known secret blanked, in case a driver echoes them."""
    message = scrub_secrets(message, database_secrets(url))
    return message.strip().splitlines()[0] if message.strip() else message


__all__ = [
    "Store",
    "StoreError",
    "database_url",
    "open_store",
    "safe_url",
    "schema",
    "state_exists",
]
