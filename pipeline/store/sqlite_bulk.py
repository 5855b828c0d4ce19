"""The send loop's three writes per request on SQLite, each one statement over one
JSON array of rows: claim the deliveries, record their outcomes, save the readers'
bookmarks.

SQLite reads the array with ``json_each`` and ``json_extract`` (JSON1,
https://sqlite.org/json1.html: built in since 3.38, and compiled into the SQLite of
mainstream Python builds before) and joins each element to its row by primary key
(``UPDATE … FROM``, 3.33; ``RETURNING``, 3.35, which the ledger needed before).
Against SQLAlchemy's executemany and multi-row VALUES this binds a handful of
parameters instead of thousands, and the statement text is the same for every batch,
so SQLite prepares it once per connection: per message, a claim took 35 µs of CPU and
now 18, a record 17 and now 7, a bookmark 20 and now 12 (`bench/ledger.py`). The
write transactions are that much shorter too, and two worker processes take turns on
one file's write lock.

Values come in the database's own form (times as the fixed-width text ``to_db``
writes); every row is a JSON array, read by position. SQLite's JSON functions end a
text at U+0000, so none may hold one: `series check` refuses a control character in a
slug, and a provider's message id keeps one as a visible escape (``SendResult``);
errors are scrubbed the same way (``redact.provider_text``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy.engine import Connection

_CLAIM = """\
INSERT INTO deliveries (subscriber_id, series, article, part, state, attempts,
    delivery_key, claim_token, claimed_until, created_at, updated_at, attempted_at, batch)
SELECT json_extract(j.value, '$[0]'), ?, json_extract(j.value, '$[1]'),
    json_extract(j.value, '$[2]'), 'claimed', 1, json_extract(j.value, '$[3]'),
    ?, ?, ?, ?, ?, ?
FROM json_each(?) AS j
JOIN subscribers AS s ON s.id = json_extract(j.value, '$[0]')
WHERE true
ON CONFLICT (subscriber_id, series, article) DO NOTHING
RETURNING id, subscriber_id, article, delivery_key"""
# The join leaves out a subscriber who is gone (erased): their row would break the
# foreign key and stop the batch. "WHERE true": without it SQLite would read ON
# CONFLICT as a join's ON clause (https://sqlite.org/lang_upsert.html, "parsing
# ambiguity").

_RECORD = """\
UPDATE deliveries SET
    state = json_extract(j.value, '$[1]'),
    provider_message_id = json_extract(j.value, '$[2]'),
    last_error = json_extract(j.value, '$[3]'),
    sent_at = CASE WHEN json_extract(j.value, '$[1]') = 'sent' THEN ? END,
    claim_token = NULL,
    claimed_until = NULL,
    updated_at = ?
FROM json_each(?) AS j
WHERE deliveries.id = json_extract(j.value, '$[0]') AND deliveries.claim_token = ?"""

_BOOKMARKS = """\
UPDATE enrollments SET
    next_due_at = json_extract(j.value, '$[2]'),
    plan_version = json_extract(j.value, '$[3]'),
    completed_at = json_extract(j.value, '$[4]')
FROM json_each(?) AS j
WHERE enrollments.id = json_extract(j.value, '$[0]')
    AND enrollments.revision = json_extract(j.value, '$[1]')"""
# An enrollment changed since the run read it has another revision: left alone.


_ACTIVE = """\
SELECT json_group_array(json_array(e.subscriber_id, e.revision)) FROM enrollments AS e
JOIN subscribers AS s ON s.id = e.subscriber_id
WHERE e.series = ? AND e.subscriber_id IN (SELECT value FROM json_each(?))
    AND s.status = 'active' AND NOT e.paused AND e.unsubscribed_at IS NULL"""


def active_subscribers(
    conn: Connection, series: str, subscriber_ids: Sequence[int]
) -> dict[int, int]:
    """Those of ``subscriber_ids`` still to be written to in ``series`` (active, with
    an enrollment neither paused nor unsubscribed), each with their enrollment's
    ``revision`` (how many changes asked for a new plan so far)."""
    values = orjson.dumps(subscriber_ids).decode()
    # One row holding every pair as a JSON array: a batch read at once, not row by row.
    found = conn.exec_driver_sql(_ACTIVE, (series, values)).scalar_one()
    return {subscriber_id: revision for subscriber_id, revision in orjson.loads(found)}


def insert_claims(
    conn: Connection,
    series: str,
    rows: Sequence[tuple[int, str, int, str]],
    *,
    token: str,
    until: str,
    now: str,
    batch: str | None,
) -> list[Any]:
    """Insert a claimed ledger row for each (subscriber id, article slug, part, delivery
    key) of ``series`` that has none yet (``deliveries_once`` decides: another run's
    row wins and is left alone), held with ``token`` until ``until``, made at ``now``
    (both database times), under the request key ``batch``; a subscriber id no longer
    in ``subscribers`` (erased) gets none. Returns the inserted rows (``id``,
    ``subscriber_id``, ``article``, ``delivery_key``), in no set order."""
    values = orjson.dumps(rows).decode()
    result = conn.exec_driver_sql(_CLAIM, (series, token, until, now, now, now, batch, values))
    return list(result.all())


def record_outcomes(
    conn: Connection,
    rows: Sequence[tuple[int, str, str | None, str | None]],
    *,
    token: str,
    now: str,
    sent_at: str,
) -> int:
    """For each (ledger row id, state, provider message id, error) still claimed with
    ``token``: its outcome, at ``now``; ``sent_at`` for those sent (database times).
    Returns how many rows changed."""
    values = orjson.dumps(rows).decode()
    return int(conn.exec_driver_sql(_RECORD, (sent_at, now, values, token)).rowcount or 0)


def save_bookmarks(
    conn: Connection, rows: Sequence[tuple[int, int, str | None, str, str | None]]
) -> None:
    """For each (enrollment id, revision read, next wake-up, plan version, completed
    at), with times in the database's form: write them to the enrollment if its
    revision is still the one read."""
    conn.exec_driver_sql(_BOOKMARKS, (orjson.dumps(rows).decode(),))


def departed(conn: Connection, series: str, subscriber_ids: Sequence[int]) -> set[int]:
    """Those of ``subscriber_ids`` no longer to be written to in ``series``: erased, no
    longer active, or with an enrollment gone, paused or unsubscribed (the ones
    `active_subscribers` does not find)."""
    return set(subscriber_ids) - active_subscribers(conn, series, subscriber_ids).keys()
