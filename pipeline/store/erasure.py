"""What erasing a person takes beyond deleting their rows: the copies a database keeps.

`series subscribers remove` deletes the person's rows (pending signups included) in
one transaction (see ``subscribers.remove``); then ``scrub_consent`` has taken the
request details (IP addresses, user agents, page) out of their consent records,
``scrub_mentions`` has cleared their address from text
kept about others (an audit reason, another delivery's last error, written before
such texts were scrubbed as they were stored), and ``clear_traces`` removes what the
database engine itself still holds:

- SQLite: every connection runs with ``PRAGMA secure_delete=ON``, so deleted content
  is overwritten with zeros in the database file. A database used by an older version
  may still hold deleted content in free space, so the first erasure rebuilds it once
  (``VACUUM``). Then ``PRAGMA wal_checkpoint(TRUNCATE)`` copies the write-ahead log
  into the database and empties ``state.db-wal``, which otherwise keeps earlier
  versions of the deleted pages for as long as any connection (``series serve``) is
  open. SQLite documents both pragmas: https://sqlite.org/pragma.html.
- PostgreSQL: ``VACUUM`` of the tables that held the person: the deleted row versions
  are removed from the tables and their indexes, so no query, snapshot or later
  transaction can see them. The bytes may stay in free space inside table pages, in
  the write-ahead log and in backups until overwritten or expired: that part is the
  operator's (README, "Personal data").
"""

from __future__ import annotations

import json
import logging
import re
import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from ..redact import scrub_person
from . import Store
from .schema import deliveries, status_changes

log = logging.getLogger(__name__)

# Set once the SQLite file holds no deleted content from before secure_delete.
CLEAN_MARK = "secure_delete_clean"
ERASED_TABLES = (
    "subscribers",
    "enrollments",
    "deliveries",
    "status_changes",
    "suppressions",
    "signups",
)
# What the consent record of a signup (status_changes.reason, actor web:signup) says
# about the person's requests: gone on erasure. The times, series and form stay: they
# prove nothing about anyone once the row names nobody.
CONSENT_ACTOR = "web:signup"
CONSENT_PERSONAL = ("page", "request_ip", "request_user_agent", "confirm_ip", "confirm_user_agent")
CHECKPOINT_TRIES = 20


def scrub_mentions(conn: Connection, subscriber_id: int, email: str, name: str) -> int:
    """In the caller's transaction: audit reasons and last errors that may mention the
    person (``may_mention``), and the person's own audit rows, get every address
    replaced by ``[address]`` and their name, in any letter case and encoded form, by
    ``[name]`` (``redact.scrub_person``). Returns how many texts changed."""
    changed = 0
    for table, column, own in (
        (status_changes, status_changes.c.reason, status_changes.c.subscriber_id),
        (deliveries, deliveries.c.last_error, deliveries.c.subscriber_id),
    ):
        rows = conn.execute(
            sa.select(table.c.id, column).where(
                sa.or_(own == subscriber_id, *may_mention(column, email, name))
            )
        ).all()
        for row_id, text in rows:
            if text is None:
                continue
            clean = scrub_person(text, email, name)
            if clean != text:
                conn.execute(table.update().where(table.c.id == row_id).values({column: clean}))
                changed += 1
    return changed


def scrub_consent(conn: Connection, subscriber_id: int) -> int:
    """In the caller's transaction: the person's consent records (actor web:signup, a
    JSON object in ``reason``: pipeline/signup.py) lose the IP addresses, user agents
    and page of the requests (CONSENT_PERSONAL). Returns how many records changed."""
    rows = conn.execute(
        sa.select(status_changes.c.id, status_changes.c.reason).where(
            status_changes.c.subscriber_id == subscriber_id,
            status_changes.c.actor == CONSENT_ACTOR,
        )
    ).all()
    changed = 0
    for row_id, text in rows:
        try:
            record = json.loads(text or "")
        except ValueError:
            continue
        if not isinstance(record, dict) or not set(CONSENT_PERSONAL) & set(record):
            continue
        for key in CONSENT_PERSONAL:
            record.pop(key, None)
        record["erased"] = True
        clean = json.dumps(record, ensure_ascii=False, sort_keys=True)
        conn.execute(
            status_changes.update().where(status_changes.c.id == row_id).values(reason=clean)
        )
        changed += 1
    return changed


def may_mention(
    column: sa.ColumnElement[str], email: str, name: str
) -> list[sa.ColumnElement[bool]]:
    """SQL conditions that together find every text that may name the person, a
    superset for ``redact.scrub_person`` to check: the address or the longest ASCII
    word of the name (lower case, as SQLite's lower() folds only ASCII), and any text
    with an encoded form: percent (%), JSON escape (\\u), RFC 2047 (=?)."""
    lowered = sa.func.lower(column)
    found = [lowered.contains(email.lower(), autoescape=True)]
    words = sorted(re.findall(r"[A-Za-z0-9]{2,}", name), key=len)
    if words:
        found.append(lowered.contains(words[-1].lower(), autoescape=True))
    elif name.strip():
        found.append(column.contains(name.strip(), autoescape=True))
    found += [column.contains(mark, autoescape=True) for mark in ("%", "\\u", "=?")]
    return found


def clear_traces(store: Store) -> str | None:
    """After an erasure has committed: make the engine drop its own copies of what was
    deleted (see the module's text). Returns None when done, else a one-line warning
    saying what is left and what to do."""
    if store.dialect == "sqlite":
        return _sqlite(store)
    if store.dialect == "postgresql":
        return _postgresql(store)
    return None


def _sqlite(store: Store) -> str | None:
    with store.engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        cursor = raw.cursor()
        try:
            clean = cursor.execute(
                "SELECT value FROM settings WHERE key = ?", (CLEAN_MARK,)
            ).fetchone()
            if clean is None:
                # Deleted content from before secure_delete may be in free space: rebuild
                # the file once (its pages go through the WAL, emptied below).
                cursor.execute("VACUUM")
                cursor.execute(
                    "INSERT OR REPLACE INTO settings (key, value) VALUES (?, '1')", (CLEAN_MARK,)
                )
            for _ in range(CHECKPOINT_TRIES):
                busy, _log, _done = cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if not busy:
                    return None
                # A reader in the middle of a transaction: it ends within milliseconds.
                time.sleep(0.1)
        finally:
            cursor.close()
    return (
        "the database's write-ahead log could not be emptied (another process kept reading "
        "it): the erased data stays in state.db-wal until every series process has stopped"
    )


def _postgresql(store: Store) -> str | None:
    try:
        with store.engine.connect() as conn:
            auto = conn.execution_options(isolation_level="AUTOCOMMIT")
            auto.exec_driver_sql(f"VACUUM {', '.join(ERASED_TABLES)}")
    except DBAPIError as exc:
        log.info("VACUUM after an erasure failed: %s", exc.orig)
        return (
            f"VACUUM {', '.join(ERASED_TABLES)} could not run ({type(exc.orig).__name__}): the "
            "deleted rows stay in the tables' storage until autovacuum reaches them; run it "
            "as the tables' owner"
        )
    return None
