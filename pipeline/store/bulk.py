"""PostgreSQL's bulk forms of the send loop's ledger writes: one short statement per
batch, its rows bound as a few arrays (``unnest``), instead of one parameter per value.

A 500-row INSERT with 13 values per row is a new 6,500-placeholder query text for
psycopg to parse every time, and every ``IN (…)`` of 500 ids another; SQLAlchemy
renders each expanding parameter anew too. Here the query text never changes with the
number of rows: psycopg parses it once, and after a few runs with the same parameter
types on a connection it is a server-side prepared statement (psycopg's
``prepare_threshold``). SQLite keeps its own
paths (ledger.py): it has no arrays, and its many-row statements cost no round trips.

The arrays go in PostgreSQL's binary format (``%(name)b``,
https://www.psycopg.org/psycopg3/docs/basic/params.html#binary-parameters-and-results):
psycopg writes a text array element by element in Python, a binary one mostly in C.
Text arrays were 9% of a send's CPU (py-spy, 30,000 messages): 4.5 ms for the five
arrays of a 500-row record, 0.8 ms binary.

Values come in the database's own form (``schema.to_db``), as everywhere in the ledger's
write path. The rows to change are also named as ``id = ANY(ids)``: the planner then
finds them through the primary key whatever it knows of the table (a list imported a
moment ago has no statistics yet, and joined with the arrays alone it was scanned whole
for every batch, a run's time growing with the square of the list).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection


def is_postgres(conn: Connection) -> bool:
    return bool(conn.dialect.name == "postgresql")


def among(conn: Connection, column: sa.ColumnElement[Any], values: Sequence[Any]) -> Any:
    """The condition "``column`` is one of ``values``": ``IN (…)`` on SQLite, and on
    PostgreSQL ``= ANY(array)``, one parameter however many values (same result)."""
    if not is_postgres(conn):
        return column.in_(values)
    from sqlalchemy.dialects.postgresql import ARRAY

    return column == sa.any_(sa.bindparam(None, list(values), type_=ARRAY(column.type)))


_INSERT_CLAIMS = """
INSERT INTO deliveries (subscriber_id, series, article, part, state, attempts, delivery_key,
                        claim_token, claimed_until, created_at, updated_at, attempted_at, batch)
SELECT v.subscriber_id, %(series)s, v.article, v.part, 'claimed', 1, v.delivery_key,
       %(token)s, %(until)s, %(now)s, %(now)s, %(now)s, %(batch)s
FROM unnest(%(subscriber_ids)b::integer[], %(articles)b::text[], %(parts)b::integer[],
            %(keys)b::text[]) AS v(subscriber_id, article, part, delivery_key)
JOIN subscribers AS s ON s.id = v.subscriber_id AND s.id = ANY(%(subscriber_ids)b::integer[])
FOR KEY SHARE OF s
ON CONFLICT (subscriber_id, series, article) DO NOTHING
RETURNING id, subscriber_id, article, delivery_key
"""
# The subscribers are also named as ``id = ANY(ids)``, as the module says: joined to
# the arrays alone, the planner read the whole table for every request on lists of a
# few thousand to tens of thousands (40,000 readers: the inserts took 2.6 s of a send,
# 1.6 s now; pg_stat_statements).
# The join leaves out a subscriber erased since the claim read who is active, which
# READ COMMITTED lets commit between two statements. FOR KEY SHARE, the lock the
# foreign key's check takes anyway, is taken by the join itself: a subscriber whose
# erasure is still under way is waited for and then left out too, where the check
# would have waited and then stopped the whole batch with a foreign-key error.
# (https://www.postgresql.org/docs/current/explicit-locking.html#LOCKING-ROWS)


def insert_claims(
    conn: Connection,
    series: str,
    rows: Sequence[tuple[int, str, int, str]],
    *,
    token: str,
    until: Any,
    now: Any,
    batch: str | None,
) -> list[Any]:
    """Insert new ``claimed`` ledger rows, (subscriber id, article slug, part, delivery
    key) each, skipping any that exists (another run's) and any whose subscriber is
    gone (erased since the claim read who is active, or while it inserts). Returns
    the inserted rows as
    (id, subscriber_id, article, delivery_key)."""
    subscriber_ids, articles, parts, keys = (list(c) for c in zip(*rows, strict=True))
    result = conn.exec_driver_sql(
        _INSERT_CLAIMS,
        {
            "series": series,
            "token": token,
            "until": until,
            "now": now,
            "batch": batch,
            "subscriber_ids": subscriber_ids,
            "articles": articles,
            "parts": parts,
            "keys": keys,
        },
    )
    return list(result.all())


_RECORD = """
UPDATE deliveries AS d
SET state = v.state, provider_message_id = v.message_id, last_error = v.error,
    sent_at = v.sent_at, claim_token = NULL, claimed_until = NULL, updated_at = %(now)s
FROM unnest(%(ids)b::integer[], %(states)b::text[], %(message_ids)b::text[],
            %(errors)b::text[], %(sent_at)b::timestamptz[])
     AS v(id, state, message_id, error, sent_at)
WHERE d.id = v.id AND d.id = ANY(%(ids)b::integer[]) AND d.claim_token = %(token)s
"""


def record(
    conn: Connection,
    rows: Sequence[tuple[int, str, str | None, str | None, Any]],
    *,
    token: str,
    now: Any,
) -> None:
    """(ledger row id, state, provider message id, error, sent at) of each delivery this
    run (``token``) still holds: its outcome, the claim cleared."""
    ids, states, message_ids, errors, sent_at = (list(c) for c in zip(*rows, strict=True))
    conn.exec_driver_sql(
        _RECORD,
        {
            "ids": ids,
            "states": states,
            "message_ids": message_ids,
            "errors": errors,
            "sent_at": sent_at,
            "token": token,
            "now": now,
        },
    )


_BOOKMARKS = """
UPDATE enrollments AS e
SET next_due_at = v.next_due_at, plan_version = v.plan_version, completed_at = v.completed_at
FROM unnest(%(ids)b::integer[], %(revisions)b::integer[], %(next)b::timestamptz[],
            %(versions)b::text[], %(completed)b::timestamptz[])
     AS v(id, revision, next_due_at, plan_version, completed_at)
WHERE e.id = v.id AND e.id = ANY(%(ids)b::integer[]) AND e.revision = v.revision
"""
# A change committed after the run read the enrollment has added one to its revision:
# that row is left alone. One committed while this UPDATE waits for the row's lock is
# seen too: READ COMMITTED checks the WHERE again on the row's newest version
# (https://www.postgresql.org/docs/current/transaction-iso.html#XACT-READ-COMMITTED).


def save_bookmarks(conn: Connection, rows: Sequence[tuple[int, int, Any, str, Any]]) -> None:
    """(enrollment id, revision read, next wake-up, plan version, completed at) of each
    enrollment, written where its revision is still the one read."""
    ids, revisions, wakes, versions, completed = (list(c) for c in zip(*rows, strict=True))
    conn.exec_driver_sql(
        _BOOKMARKS,
        {
            "ids": ids,
            "revisions": revisions,
            "next": wakes,
            "versions": versions,
            "completed": completed,
        },
    )


# By primary key, both tables, as the claim's own read (`ledger.active_readers`): with
# the enrollments named by reader and series instead, the planner reads the whole
# series through its index on lists of about 10,000 to 60,000 readers (5 ms a request
# at 30,000 against 1), and joined to an id array it read both tables whole (31 ms).
_STAYING = """
SELECT s.id FROM subscribers AS s JOIN enrollments AS e ON e.subscriber_id = s.id
WHERE s.id = ANY(%(ids)b::integer[]) AND e.id = ANY(%(enrollments)b::integer[])
    AND e.series = %(series)s AND s.status = 'active' AND NOT e.paused
    AND e.unsubscribed_at IS NULL
"""


def departed(conn: Connection, series: str, readers: Mapping[int, int]) -> set[int]:
    """Those of ``readers`` (subscriber id: id of their enrollment in ``series``) no
    longer to be written to there: erased, no longer active, or with that enrollment
    gone, paused or unsubscribed (the ones a read of those still to be written to does
    not find)."""
    staying = conn.exec_driver_sql(
        _STAYING, {"ids": list(readers), "enrollments": list(readers.values()), "series": series}
    ).scalars()
    return set(readers).difference(staying)


# Tables whose rows a send looks up by the thousand, and the share of rows changed since
# PostgreSQL last sampled them beyond which it is done again before a run (autovacuum
# does it too, but up to a minute later, and by then an import's first send is over).
_PLANNED_TABLES = ("subscribers", "enrollments")
_STALE = 0.1


def refresh_statistics(conn: Connection) -> list[str]:
    """PostgreSQL: ``ANALYZE`` the subscriber and enrollment tables when a tenth or more
    of their rows changed since their statistics were last gathered (a list imported a
    moment ago has none). Without them the planner guesses that a series has a handful
    of readers and answers each batch's lookups by reading the whole table. Returns the
    tables analysed; waits at most 2 s for another session analysing the same table
    (then the run goes on without). Nothing on SQLite, whose planner needs no
    statistics for these lookups."""
    if not is_postgres(conn):
        return []
    stale = sorted(
        str(name)
        for name in conn.exec_driver_sql(
            "SELECT relname FROM pg_stat_user_tables "
            "WHERE schemaname = current_schema() AND relname = ANY(%(tables)s) "
            "AND n_mod_since_analyze > 1000 "
            "AND n_mod_since_analyze >= %(stale)s * GREATEST(n_live_tup, 1)",
            {"tables": list(_PLANNED_TABLES), "stale": _STALE},
        ).scalars()
    )
    if stale:
        conn.exec_driver_sql("SET LOCAL lock_timeout = '2s'")
        conn.exec_driver_sql("ANALYZE " + ", ".join(stale))
    return stale
