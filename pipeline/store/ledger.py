"""Queries of the drip engine: enrollments to plan, claims on ledger rows, outcomes.

The claim protocol: a run inserts the (subscriber, series, article) row in state
``claimed`` with its own token and a lease, or takes a ``failed`` row back the
same way; the unique constraint lets exactly one run own each delivery. After
sending it records ``sent``, ``failed`` or ``unknown``. A claim whose lease ended
belongs to a run that stopped: it becomes ``unknown`` and is checked with the
provider before anything is sent again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection

from ..personal import FIRST_NAME_ATTRIBUTE
from ..plan import Enrollment, LedgerEntry
from ..redact import scrub_addresses
from ..tokens import Signer
from . import Store, bulk, sqlite_bulk
from .idset import IdSet
from .schema import (
    UTCDateTime,
    deliveries,
    enrollments,
    replanned,
    settings,
    status_changes,
    subscribers,
    to_db,
)

CHUNK = 5000
SETTING_KEY_LENGTH = 64  # settings.key, a String(64)
# Spelled as in the partial index `deliveries_open`, so both databases use it.
OPEN = sa.text("state IN ('claimed', 'unknown')")


@dataclass(frozen=True)
class Due:
    """A delivery the planner found due: ``article`` (its slug) at part ``part`` today."""

    enrollment: Enrollment
    article: str
    part: int


@dataclass(frozen=True)
class Claim:
    """A delivery this run owns: ledger row ``id``, sent with delivery key ``key``."""

    id: int
    key: str
    enrollment: Enrollment
    article: str
    part: int
    attempts: int
    new: bool  # the row did not exist before this claim


def plan_marker(conn: Connection, series: str) -> str | None:
    """The content fingerprint every enrollment of ``series`` has a bookmark for."""
    return setting_or_none(conn, _plan_key(series))


def set_plan_marker(conn: Connection, series: str, version: str) -> None:
    """Note that every enrollment of ``series`` has a bookmark for fingerprint ``version``."""
    set_setting(conn, _plan_key(series), version)


def _plan_key(series: str) -> str:
    """The settings key of a series' plan marker: ``plan:`` and the slug, or for a slug
    too long for the key column (64 characters; a series slug may have 100) a hash of
    it, so that a long slug is not refused by PostgreSQL or kept cut short."""
    key = f"plan:{series}"
    if len(key) <= SETTING_KEY_LENGTH:
        return key  # as earlier versions wrote it: their markers stay valid
    return f"plan-of:{hashlib.sha256(series.encode('utf-8')).hexdigest()[:40]}"


def setting_or_none(conn: Connection, key: str) -> str | None:
    """The value kept under ``key`` in the settings table, None when there is none."""
    value = conn.execute(sa.select(settings.c.value).where(settings.c.key == key)).scalar()
    return None if value is None else str(value)


def set_setting(conn: Connection, key: str, value: str) -> None:
    """Keep ``value`` under ``key`` (at most 64 characters), replacing any earlier one."""
    # An upsert: two runs writing the same key at once must not collide on it.
    dialect = _dialect(conn)
    insert = dialect.insert(settings).values(key=key, value=value)
    conn.execute(insert.on_conflict_do_update(index_elements=["key"], set_={"value": value}))


def setting(conn: Connection, key: str) -> str:
    return str(conn.execute(sa.select(settings.c.value).where(settings.c.key == key)).scalar_one())


# Part of a list, by enrollment id: (remainders, n), the enrollments whose id modulo n
# is one of the remainders (a worker process's, or the shares a PostgreSQL run holds).
Shard = tuple[tuple[int, ...], int]


def _active(series: str, shard: Shard | None) -> list[Any]:
    conditions = [
        enrollments.c.series == series,
        subscribers.c.status == "active",
        enrollments.c.paused.is_(False),
        enrollments.c.unsubscribed_at.is_(None),
    ]
    if shard is not None:
        remainders, count = shard
        remainder = enrollments.c.id % count
        if len(remainders) == 1:
            conditions.append(remainder == remainders[0])
        else:
            conditions.append(remainder.in_(remainders))
    return conditions


def start_parts(conn: Connection, series: str) -> set[int]:
    """The parts readers of a series started at (their emails differ in what they have)."""
    return set(
        conn.scalars(
            sa.select(enrollments.c.start_part).where(enrollments.c.series == series).distinct()
        )
    )


def received_articles(
    conn: Connection, series: str, subscriber_ids: Sequence[int]
) -> dict[int, frozenset[str]]:
    """The slugs of the articles each of these readers has received in a series (a
    reader with none is left out)."""
    found: dict[int, set[str]] = {}
    rows = conn.execute(
        sa.select(deliveries.c.subscriber_id, deliveries.c.article).where(
            deliveries.c.series == series,
            bulk.among(conn, deliveries.c.subscriber_id, subscriber_ids),
            deliveries.c.state == "sent",
        )
    )
    for subscriber_id, article in rows:
        found.setdefault(subscriber_id, set()).add(article)
    return {subscriber_id: frozenset(slugs) for subscriber_id, slugs in found.items()}


def count_to_plan(
    conn: Connection, series: str, *, now: datetime, everything: bool, cap: int
) -> int:
    """How many enrollments a run would look at, counting no further than ``cap`` (to
    decide whether to share the work, at the cost of an index probe when idle)."""
    conditions = (
        [sa.true()]
        if everything
        else [enrollments.c.plan_version.is_(None), enrollments.c.next_due_at <= now]
    )
    total = 0
    for condition in conditions:  # one query per index; an OR would scan the table
        found = (
            sa.select(enrollments.c.id)
            .join(subscribers, subscribers.c.id == enrollments.c.subscriber_id)
            .where(*_active(series, None), condition)
            .limit(cap)
            .subquery()
        )
        total += int(conn.execute(sa.select(sa.func.count()).select_from(found)).scalar_one())
    return min(total, cap)


def iter_enrollments(
    store: Store,
    series: str,
    *,
    now: datetime,
    everything: bool,
    shard: Shard | None = None,
    chunk: int | None = None,
) -> Iterator[list[Enrollment]]:
    """Active enrollments of a series in chunks, each with its ledger.

    ``everything`` false: only those that need a look now (never planned, or their
    wake-up time has come), found through the indexes. ``shard`` (remainders, n): only
    the enrollments whose id modulo n is one of the remainders (`Shard`).
    """
    base = (
        sa.select(
            enrollments.c.id,
            enrollments.c.subscriber_id,
            enrollments.c.enrolled_at,
            enrollments.c.start_part,
            enrollments.c.next_due_at,
            enrollments.c.moved_to,
            enrollments.c.moved_at,
            enrollments.c.revision,
            subscribers.c.email,
            subscribers.c.name,
            subscribers.c.timezone,
            _first_name(),
        )
        .join(subscribers, subscribers.c.id == enrollments.c.subscriber_id)
        .where(*_active(series, shard))
        .limit(chunk or CHUNK)
    )
    # Each query pages in the order of the index that serves it, so a run with
    # nothing to do reads nothing: (series, id), (series, plan_version, id), and
    # (series, next_due_at, id).
    by_id = base.order_by(enrollments.c.id)
    pages: list[tuple[Any, Callable[[Any], Any]]] = (
        [(by_id, lambda last: enrollments.c.id > (last.id if last else 0))]
        if everything
        else [
            (
                by_id.where(enrollments.c.plan_version.is_(None)),
                lambda last: enrollments.c.id > (last.id if last else 0),
            ),
            (
                base.where(enrollments.c.next_due_at <= now).order_by(
                    enrollments.c.next_due_at, enrollments.c.id
                ),
                lambda last: (
                    sa.true()
                    if last is None
                    else sa.tuple_(enrollments.c.next_due_at, enrollments.c.id)
                    > sa.tuple_(sa.literal(last.next_due_at, UTCDateTime()), sa.literal(last.id))
                ),
            ),
        ]
    )
    seen = IdSet()  # a bit per id: a million planned take 125 KB, not a 60 MB set
    for query, after in pages:
        last = None
        while True:
            # A short read per chunk: the caller writes between chunks.
            with store.connect() as conn:
                rows = conn.execute(query.where(after(last))).all()
                if not rows:
                    break
                last = rows[-1]
                # Both queries may find an enrollment; a full scan finds each once.
                fresh = rows if everything else [r for r in rows if seen.add(r.id)]
                chunk_enrollments = _with_ledger(conn, series, fresh) if fresh else []
            if chunk_enrollments:
                yield chunk_enrollments


def _with_ledger(conn: Connection, series: str, rows: Sequence[Any]) -> list[Enrollment]:
    ledgers: dict[int, dict[str, LedgerEntry]] = {}
    query = sa.select(
        deliveries.c.subscriber_id,
        deliveries.c.article,
        deliveries.c.state,
        deliveries.c.attempts,
        deliveries.c.updated_at,
        deliveries.c.sent_at,
        deliveries.c.claimed_until,
    ).where(
        deliveries.c.series == series,
        bulk.among(conn, deliveries.c.subscriber_id, [r.subscriber_id for r in rows]),
    )
    for d in conn.execute(query):
        ledgers.setdefault(d.subscriber_id, {})[d.article] = LedgerEntry(
            d.state, d.attempts, d.updated_at, d.sent_at, d.claimed_until
        )
    # Rows unpacked by position, in the order of iter_enrollments' select: a named
    # attribute of a Row costs a lookup each, 12 per reader of a large send.
    return [
        Enrollment(
            id_,
            subscriber_id,
            email,
            name,
            timezone,
            series,
            enrolled_at,
            start_part,
            ledgers.get(subscriber_id, {}),
            first_name if isinstance(first_name, str) else "",
            moved_to,
            moved_at,
            revision,
        )
        for (
            id_,
            subscriber_id,
            enrolled_at,
            start_part,
            _next_due_at,
            moved_to,
            moved_at,
            revision,
            email,
            name,
            timezone,
            first_name,
        ) in rows
    ]


def _first_name() -> sa.Label[Any]:
    """The subscriber's ``first_name`` attribute (a CSV column kept as an attribute),
    read inside the database (JSON_EXTRACT on SQLite, ->> on PostgreSQL); NULL when
    absent. The greeting uses it instead of the first word of the name."""
    value: sa.Label[Any] = (
        subscribers.c.attributes[FIRST_NAME_ATTRIBUTE].as_string().label("first_name")
    )
    return value


def save_bookmarks(
    conn: Connection, rows: Sequence[tuple[int, int, datetime | None, str, datetime | None]]
) -> None:
    """(enrollment id, revision read, next wake-up, plan version, completed at) for each
    planned enrollment: its bookmark, written only where ``enrollments.revision`` still
    holds the revision the run read with the enrollment. An enrollment changed since
    (moved, paused, resubscribed…: `schema.replanned`) keeps what the change wrote, and
    the next run plans it with that change: a bookmark written over it would undo it."""
    if not rows:
        return
    # One statement for the batch, its rows as a JSON array (SQLite) or as arrays
    # (PostgreSQL): see sqlite_bulk and bulk.
    # A batch's readers mostly share their next wake-up: each time is converted once.
    # Keyed with the offset too: Python takes two times of one zone for equal when their
    # clocks read alike, the hour a DST change repeats included (``fold``).
    times: dict[tuple[datetime, timedelta | None], Any] = {}

    def in_db(moment: datetime | None) -> Any:
        if moment is None:
            return None
        key = (moment, moment.utcoffset())
        if key not in times:
            times[key] = _in_db(conn, moment)
        return times[key]

    in_db_rows = [
        (i, revision, in_db(wake), version, in_db(done))
        for i, revision, wake, version, done in rows
    ]
    if conn.dialect.name == "sqlite":
        sqlite_bulk.save_bookmarks(conn, in_db_rows)
    else:
        bulk.save_bookmarks(conn, in_db_rows)


def active_readers(conn: Connection, due: Sequence[Due]) -> set[int]:
    """The subscriber ids of ``due`` (deliveries of one series) still to be written to
    as planned: active, with an enrollment neither paused nor unsubscribed, and not
    changed since the planner read it (its ``revision``: moved by an editor, paused and
    resumed, given a new time zone…); a changed reader's next part is the one a new
    plan finds, made by a later run (the change left them unplanned)."""
    if not due:
        return set()
    series = due[0].enrollment.series
    planned = {d.enrollment.subscriber_id: d.enrollment.revision for d in due}
    if conn.dialect.name == "sqlite":
        found = sqlite_bulk.active_subscribers(conn, series, list(planned))
        return {reader for reader, revision in found.items() if revision == planned[reader]}
    # By primary key, both tables: PostgreSQL's planner would otherwise read them
    # whole to join them, for every batch. FOR KEY SHARE holds each enrollment read
    # here until the claims are in: a move or a pause (`steering`, which lock the
    # enrollment FOR UPDATE before reading its deliveries) waits for them and then
    # finds them, and one already under way is waited for and seen by this read (READ
    # COMMITTED reads the row's newest version after the wait). Bookmarks, plain
    # UPDATEs of columns no key holds, do not wait for it.
    # (https://www.postgresql.org/docs/current/explicit-locking.html#LOCKING-ROWS)
    rows = conn.execute(
        sa.select(enrollments.c.subscriber_id, enrollments.c.revision)
        .join(subscribers, subscribers.c.id == enrollments.c.subscriber_id)
        .where(
            enrollments.c.series == series,
            bulk.among(conn, enrollments.c.id, [d.enrollment.id for d in due]),
            bulk.among(conn, subscribers.c.id, list(planned)),
            subscribers.c.status == "active",
            enrollments.c.paused.is_(False),
            enrollments.c.unsubscribed_at.is_(None),
        )
        # read=True: FOR KEY SHARE (key_share alone renders FOR NO KEY UPDATE, which
        # conflicts with another run's bookmark of the same reader: a deadlock between
        # its recording and this claim, which waits for that recording's deliveries).
        .with_for_update(read=True, key_share=True, of=enrollments)
    )
    return {reader for reader, revision in rows if revision == planned[reader]}


def departed(conn: Connection, series: str, readers: Mapping[int, int]) -> set[int]:
    """Those of ``readers`` (subscriber id: id of their enrollment in ``series``; readers
    this run has claimed) who are no longer to be written to: unsubscribed (from
    everything or from ``series``), bounced or complained, paused, or erased. A read,
    for the gate right before each attempt: a claim's own check (`active_readers`) is
    over once the claim is in, and a reader may leave between the claim and the
    request. A move is not looked for: it is refused while a delivery of the reader is
    claimed (`steering.move`)."""
    if not readers:
        return set()
    if conn.dialect.name == "sqlite":
        return sqlite_bulk.departed(conn, series, list(readers))
    return bulk.departed(conn, series, readers)


def _in_db(conn: Connection, moment: datetime | None) -> Any:
    return None if moment is None else to_db(conn.dialect, moment)


def claim(
    conn: Connection, due: Sequence[Due], *, token: str, until: datetime, now: datetime
) -> list[Claim]:
    """Claim these deliveries for this run, as one provider request: each claimed row
    records that request's key (``batch_key`` of the claimed delivery keys). Only
    readers still to be written to (`active_readers`, read in the caller's write
    transaction: a reader who left before it began is left out) are claimed. Returns
    the ones it got."""
    if not due:
        return []
    active = active_readers(conn, due)
    series = due[0].enrollment.series
    wanted = [d for d in due if d.enrollment.subscriber_id in active]
    # What the planner saw decides between inserting and taking back a failed row. If
    # another run got there since, the insert conflicts, or the failed row is no
    # longer failed, and this run simply does not get that delivery.
    fresh = [d for d in wanted if d.article not in d.enrollment.ledger]
    retry = [
        d
        for d in wanted
        if (seen := d.enrollment.ledger.get(d.article)) is not None and seen.state == "failed"
    ]
    by_key = {(d.enrollment.subscriber_id, d.article): d for d in wanted}
    claims: list[Claim] = []
    if fresh:
        db_now, db_until = to_db(conn.dialect, now), to_db(conn.dialect, until)
        keys = delivery_keys(len(fresh))
        # The request's key as it will be if every insert succeeds and nothing is taken
        # back (the usual case): then no second write of these rows is needed below.
        hoped = None if retry else batch_key(keys)
        inserted: Sequence[Any]
        rows = [
            (d.enrollment.subscriber_id, d.article, d.part, key)
            for d, key in zip(fresh, keys, strict=True)
        ]
        if conn.dialect.name == "sqlite":
            inserted = sqlite_bulk.insert_claims(
                conn, series, rows, token=token, until=db_until, now=db_now, batch=hoped
            )
        else:
            # In one order in every run: two runs inserting the same rows wait for each
            # other in turn, never each for the other (SQLite has one writer at a time).
            inserted = bulk.insert_claims(
                conn, series, sorted(rows), token=token, until=db_until, now=db_now, batch=hoped
            )
        # Rows unpacked by position (id, subscriber_id, article, delivery_key): a named
        # attribute of a Row is a lookup each.
        for id_, subscriber_id, article, key in inserted:
            d = by_key[(subscriber_id, article)]
            claims.append(Claim(id_, key, d.enrollment, d.article, d.part, 1, True))
        if len(inserted) == len(fresh) and hoped is not None:
            return claims
    if retry:
        conn.execute(
            deliveries.update()
            .where(
                deliveries.c.subscriber_id == sa.bindparam("_sid"),
                deliveries.c.series == series,
                deliveries.c.article == sa.bindparam("_article"),
                deliveries.c.state == "failed",
            )
            .values(
                part=sa.bindparam("_part"),
                state="claimed",
                claim_token=token,
                claimed_until=until,
                attempts=deliveries.c.attempts + 1,
                updated_at=now,
                attempted_at=now,
            ),
            [
                {"_sid": d.enrollment.subscriber_id, "_article": d.article, "_part": d.part}
                for d in retry
            ],
        )
        owned = conn.execute(
            sa.select(
                deliveries.c.id,
                deliveries.c.subscriber_id,
                deliveries.c.article,
                deliveries.c.delivery_key,
                deliveries.c.attempts,
            ).where(
                deliveries.c.series == series,
                bulk.among(
                    conn, deliveries.c.subscriber_id, [d.enrollment.subscriber_id for d in retry]
                ),
                deliveries.c.claim_token == token,
                deliveries.c.state == "claimed",
            )
        )
        for row in owned:
            d = by_key[(row.subscriber_id, row.article)]
            claims.append(
                Claim(
                    row.id, row.delivery_key, d.enrollment, d.article, d.part, row.attempts, False
                )
            )
    if claims:
        conn.execute(
            deliveries.update()
            .where(bulk.among(conn, deliveries.c.id, [c.id for c in claims]))
            .values(batch=batch_key(c.key for c in claims))
        )
    return claims


def delivery_keys(count: int) -> list[str]:
    """``count`` new delivery keys: 128 random bits each, as 32 hex digits (one read
    of the system's random source for all)."""
    bits = os.urandom(16 * count)
    return [bits[i : i + 16].hex() for i in range(0, 16 * count, 16)]


def batch_key(delivery_keys: Iterable[str]) -> str:
    """A request's idempotency key, from the deliveries in it: the same deliveries
    always give the same key, any other set another one."""
    digest = hashlib.sha256("\n".join(sorted(delivery_keys)).encode()).hexdigest()
    return f"series-{digest[:48]}"


def _dialect(conn: Connection) -> Any:
    """The dialect module with ON CONFLICT inserts for ``conn``'s database; PostgreSQL's
    is imported only when it is the database (a SQLite run starts faster without it)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql
    return sqlite


def release(conn: Connection, claims: Sequence[Claim], *, token: str) -> None:
    """Give claims back untouched (nothing was sent): as if this run never took them."""
    new = [c.id for c in claims if c.new]
    old = [c.id for c in claims if not c.new]
    if new:
        conn.execute(
            deliveries.delete().where(
                bulk.among(conn, deliveries.c.id, new), deliveries.c.claim_token == token
            )
        )
    if old:
        conn.execute(
            deliveries.update()
            .where(bulk.among(conn, deliveries.c.id, old), deliveries.c.claim_token == token)
            .values(
                state="failed",
                claim_token=None,
                claimed_until=None,
                attempts=deliveries.c.attempts - 1,
            )
        )


def _holding(token: str, after: datetime) -> tuple[Any, ...]:
    """The conditions of a claim this run (``token``) holds with a lease lasting past
    ``after``."""
    return (
        deliveries.c.claim_token == token,
        deliveries.c.state == "claimed",
        deliveries.c.claimed_until > after,
    )


def _held_by_id(conn: Connection, ids: Sequence[int], *, token: str, after: datetime) -> list[int]:
    """PostgreSQL: those of ``ids`` this run holds with a lease lasting past ``after``,
    found by id alone, locked as an UPDATE locks them, and judged here. Asked for
    claimed rows, PostgreSQL looks them up in the index of open deliveries (`OPEN`),
    which keeps an entry for every version a claim had until a vacuum: each request
    then read an entry for every delivery of the run so far (97,500 at the end of a
    100,000-message send). SQLite changes rows in place, so there that index holds
    only the open ones, and `_holding` is asked in SQL."""
    query = (
        sa.select(
            deliveries.c.id,
            deliveries.c.claim_token,
            deliveries.c.state,
            deliveries.c.claimed_until,
        )
        .where(bulk.among(conn, deliveries.c.id, ids))
        .with_for_update(key_share=True)
    )
    return [
        row.id
        for row in conn.execute(query)
        if row.claim_token == token
        and row.state == "claimed"
        and row.claimed_until is not None
        and row.claimed_until > after
    ]


def extend_claims(
    conn: Connection,
    ids: Sequence[int],
    *,
    token: str,
    until: datetime,
    now: datetime,
    batch: str | None = None,
) -> int:
    """Right before a request goes to the provider: renew this run's lease on the
    claims ``ids`` until ``until`` and, with ``batch``, record the key the request goes
    under. Only claims this run still holds, with a lease not yet over at ``now``, are
    renewed; returns how many were. Fewer than ``len(ids)``: another run may own the
    rest, and the request must not be sent."""
    if not ids:
        return 0
    values: dict[str, Any] = {"claimed_until": until}
    if batch is not None:
        values["batch"] = batch
    if conn.dialect.name == "sqlite":
        # The caller's transaction already holds the file's write lock.
        result = conn.execute(
            deliveries.update()
            .where(deliveries.c.id.in_(ids), *_holding(token, now))
            .values(**values)
        )
        return int(result.rowcount or 0)
    held = _held_by_id(conn, ids, token=token, after=now)
    if held:
        conn.execute(
            deliveries.update().where(bulk.among(conn, deliveries.c.id, held)).values(**values)
        )
    return len(held)


def held_claims(
    conn: Connection, ids: Sequence[int], *, token: str, until: datetime, batch: str
) -> int:
    """How many of the claims ``ids`` this run holds with a lease lasting past ``until``,
    already recorded under the request key ``batch``: a read, for the gate to skip the
    write of `extend_claims` when nothing about them needs to change."""
    if not ids:
        return 0
    # The rows are found by id alone and judged by the count's FILTER: asked for claimed
    # rows, PostgreSQL would read the index of open deliveries (see `_held_by_id`). One
    # row comes back, not one per claim, on the gate's path, while the provider waits:
    # the gate took 7.7 ms a request with the rows judged here and 5.2 ms now
    # (PostgreSQL, 100,000 messages, medians).
    held = sa.func.count().filter(sa.and_(*_holding(token, until), deliveries.c.batch == batch))
    query = sa.select(held).select_from(deliveries).where(bulk.among(conn, deliveries.c.id, ids))
    return int(conn.execute(query).scalar_one())


def claimed_ids(conn: Connection, ids: Sequence[int], *, token: str) -> set[int]:
    """Those of the ledger rows ``ids`` still claimed by this run (``token``): the
    others were taken over, or removed by an erasure."""
    if not ids:
        return set()
    return set(
        conn.scalars(
            sa.select(deliveries.c.id).where(
                bulk.among(conn, deliveries.c.id, ids), deliveries.c.claim_token == token
            )
        )
    )


def record(
    conn: Connection,
    outcomes: Sequence[tuple[Claim, str, str | None, str | None]],
    *,
    token: str,
    now: datetime,
    sent_at: datetime,
) -> None:
    """(claim, state, provider message id, error) for each delivery of a batch.
    ``sent_at`` is the run's time, which the schedule counts from; ``now`` the clock."""
    if not outcomes:
        return
    db_now = to_db(conn.dialect, now)  # values go in the database's own form
    db_sent = to_db(conn.dialect, sent_at)
    if conn.dialect.name == "sqlite":
        sqlite_bulk.record_outcomes(
            conn,
            [(c.id, state, message_id, error) for c, state, message_id, error in outcomes],
            token=token,
            now=db_now,
            sent_at=db_sent,
        )
    else:
        bulk.record(
            conn,
            [
                (c.id, state, message_id, error, db_sent if state == "sent" else None)
                for c, state, message_id, error in outcomes
            ],
            token=token,
            now=db_now,
        )


def mark_subscriber(
    conn: Connection, subscriber_id: int, status: str, *, actor: str, reason: str, now: datetime
) -> bool:
    """A provider said the address is invalid, inactive or suppressed: stop writing to
    it. Only an active subscriber changes (audited); True if this one did."""
    changed = conn.execute(
        subscribers.update()
        .where(subscribers.c.id == subscriber_id, subscribers.c.status == "active")
        .values(status=status, updated_at=now)
    )
    if not changed.rowcount:
        return False
    record_status(conn, subscriber_id, "active", status, actor=actor, now=now, reason=reason)
    return True


def record_status(
    conn: Connection,
    subscriber_id: int | None,
    old: str | None,
    new: str,
    *,
    actor: str,
    now: datetime,
    series: str | None = None,
    reason: str = "",
    via: tuple[str, str] | None = None,
    ours: bool = False,
) -> None:
    """Audit one status change: who or what changed it, when, and why; ``via``: the
    (series, article slug) of the email whose link asked for it, when known.

    The reason is kept after the person is erased. By default it is taken for words
    series did not write (a provider's bounce text, what a person typed), which may
    name anyone: every address in it becomes ``[address]``. ``ours``: the reason is
    text series composed from its own records about this subscriber (part numbers,
    times, provider message ids, which look like addresses: an outbox file is named
    after the reader, Mailgun's ids are ``<…@domain>``); it is stored as written, and
    erasing the subscriber scrubs it with their other rows (``erasure.scrub_mentions``)."""
    values: dict[str, Any] = {
        "subscriber_id": subscriber_id,
        "series": series,
        "old_status": old,
        "new_status": new,
        "actor": actor,
        "reason": reason if ours else scrub_addresses(reason),
        "created_at": now,
    }
    if via is not None:  # only then: a database left at 0004 (see open_store) has no such columns
        values.update(via_series=via[0], via_article=via[1])
    conn.execute(status_changes.insert().values(**values))


def expire_claims(conn: Connection, now: datetime) -> int:
    """Claims whose lease ended belong to runs that stopped: their outcome is unknown.
    Their time is set to now, so that "not found at the provider" is only believed
    once the provider has had time to list anything sent just before the stop."""
    result = conn.execute(
        deliveries.update()
        .where(OPEN, deliveries.c.state == "claimed", deliveries.c.claimed_until < now)
        .values(state="unknown", claim_token=None, claimed_until=None, updated_at=now)
    )
    return int(result.rowcount or 0)


def unknown_deliveries(conn: Connection, series: Sequence[str]) -> list[Any]:
    """Deliveries whose outcome is unknown, with what it takes to look them up or to
    repeat their request: recipient, article (and the part it was sent as), batch tag,
    when they were handed over, and the reader's start part and enrollment id."""
    return list(
        conn.execute(
            sa.select(
                deliveries.c.id,
                deliveries.c.delivery_key,
                deliveries.c.updated_at,
                deliveries.c.attempted_at,
                deliveries.c.batch,
                deliveries.c.subscriber_id,
                deliveries.c.series,
                deliveries.c.article,
                deliveries.c.part,
                subscribers.c.email,
                subscribers.c.name,
                _first_name(),
                subscribers.c.status,
                subscribers.c.timezone,
                enrollments.c.start_part,
                enrollments.c.paused,
                enrollments.c.unsubscribed_at,
                enrollments.c.id.label("enrollment_id"),
            )
            .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
            .join(
                enrollments,
                sa.and_(
                    enrollments.c.subscriber_id == deliveries.c.subscriber_id,
                    enrollments.c.series == deliveries.c.series,
                ),
            )
            .where(OPEN, deliveries.c.state == "unknown", deliveries.c.series.in_(series))
            .order_by(deliveries.c.id)
        )
    )


def resolve_unknown(
    conn: Connection, delivery_id: int, *, message_id: str | None, sent_at: datetime | None
) -> bool:
    """A lookup settled it: sent (with the provider's id), or not there (retry later).
    Returns whether the delivery was still unknown (see `decide_unknown`)."""
    return decide_unknown(
        conn,
        delivery_id,
        sent=message_id is not None,
        message_id=message_id,
        sent_at=sent_at,
        error=None
        if message_id is not None
        else "not found at the provider after an interrupted send",
    )


def decide_unknown(
    conn: Connection,
    delivery_id: int,
    *,
    sent: bool,
    sent_at: datetime | None,
    message_id: str | None = None,
    error: str | None = None,
    now: datetime | None = None,
) -> bool:
    """Settle one unknown delivery as sent or failed (a later run sends it again).
    Returns whether it was still unknown: False when another run or a person settled it
    meanwhile (it is then left as they did)."""
    values: dict[str, Any] = (
        {"state": "sent", "provider_message_id": message_id, "sent_at": sent_at}
        if sent
        else {"state": "failed", "sent_at": None}
    )
    if error is not None:
        values["last_error"] = error
    if now is not None:
        values["updated_at"] = now
    changed = conn.execute(
        deliveries.update()
        .where(deliveries.c.id == delivery_id, deliveries.c.state == "unknown")
        .values(**values)
    ).rowcount
    if not changed:
        return False
    replan_deliveries(conn, [delivery_id])
    return True


def retry_failed(
    conn: Connection,
    series: str,
    *,
    article: str | None = None,
    email: str | None = None,
    now: datetime,
) -> int:
    """Failed deliveries of ``series`` (of one article, to one address) get a fresh
    count of attempts, so that the next run tries each again at once, also one that
    gave up (a person fixed the cause). Their last error is kept, marked as retried by
    hand. Returns how many."""
    where = [deliveries.c.series == series, deliveries.c.state == "failed"]
    if article is not None:
        where.append(deliveries.c.article == article)
    if email is not None:
        who = sa.select(subscribers.c.id).where(subscribers.c.email == email)
        where.append(deliveries.c.subscriber_id.in_(who.scalar_subquery()))
    ids = list(conn.scalars(sa.select(deliveries.c.id).where(*where)))
    if ids:
        conn.execute(
            deliveries.update()
            .where(deliveries.c.id.in_(ids))
            .values(
                attempts=0,
                updated_at=now,
                last_error="retried by hand after: "
                + sa.func.coalesce(deliveries.c.last_error, ""),
            )
        )
        replan_deliveries(conn, ids)
    return len(ids)


def replan_deliveries(conn: Connection, delivery_ids: Sequence[int]) -> None:
    """The enrollments these deliveries belong to have a new next step: plan them
    afresh on the next run."""
    owner = sa.select(deliveries.c.id).where(
        deliveries.c.id.in_(delivery_ids),
        deliveries.c.subscriber_id == enrollments.c.subscriber_id,
        deliveries.c.series == enrollments.c.series,
    )
    conn.execute(enrollments.update().where(owner.exists()).values(**replanned()))


def link_signer(conn: Connection) -> Signer:
    """What signs unsubscribe links: SERIES_SECRET_KEY, else the key kept here; what
    verifies them: also the previous keys (``linkkeys.accepted_keys``)."""
    from .linkkeys import accepted_keys

    return Signer(*accepted_keys(conn))


def claim_unknown(
    conn: Connection, ids: Sequence[int], batch: str, *, token: str, until: datetime, now: datetime
) -> bool:
    """Claim every delivery of one interrupted request to repeat it; all or nothing
    (False: another run has some of them, or a recipient can no longer be written to:
    left, paused or bounced since the request was read)."""
    writable = conn.scalar(
        sa.select(sa.func.count())
        .select_from(deliveries)
        .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
        .join(
            enrollments,
            sa.and_(
                enrollments.c.subscriber_id == deliveries.c.subscriber_id,
                enrollments.c.series == deliveries.c.series,
            ),
        )
        .where(
            deliveries.c.id.in_(ids),
            subscribers.c.status == "active",
            enrollments.c.paused.is_(False),
            enrollments.c.unsubscribed_at.is_(None),
        )
    )
    if writable != len(ids):
        return False
    taken = conn.execute(
        deliveries.update()
        .where(
            deliveries.c.id.in_(ids), deliveries.c.state == "unknown", deliveries.c.batch == batch
        )
        .values(state="claimed", claim_token=token, claimed_until=until, updated_at=now)
    ).rowcount
    if taken == len(ids):
        return True
    unclaim_unknown(conn, ids, token=token)
    return False


def unclaim_unknown(conn: Connection, ids: Sequence[int], *, token: str) -> int:
    """Give back the claims ``claim_unknown`` took (the request was not repeated);
    returns how many the ledger still had (an erasure since removes a reader's)."""
    return conn.execute(
        deliveries.update()
        .where(deliveries.c.id.in_(ids), deliveries.c.claim_token == token)
        .values(state="unknown", claim_token=None, claimed_until=None)
    ).rowcount


def record_replay(
    conn: Connection,
    outcomes: Sequence[tuple[int, str, Any]],
    *,
    token: str,
    now: datetime,
    sent_at: datetime,
) -> None:
    """(delivery id, state, SendResult) for a repeated request. The enrollments are
    planned afresh next time, as after any lookup."""
    for delivery_id, state, result in outcomes:
        conn.execute(
            deliveries.update()
            .where(deliveries.c.id == delivery_id, deliveries.c.claim_token == token)
            .values(
                state=state,
                provider_message_id=result.message_id,
                last_error=result.error,
                sent_at=sent_at if state == "sent" else None,
                claim_token=None,
                claimed_until=None,
                updated_at=now,
            )
        )
    replan_deliveries(conn, [delivery_id for delivery_id, _, _ in outcomes])
