"""The ledger's batch writes (claim, record, bookmarks) give the same rows on SQLite and
on PostgreSQL, where they are one statement per batch with the rows bound as arrays
(pipeline/store/bulk.py); and a send on PostgreSQL gathers the statistics of a list
imported a moment ago before it looks the list up batch by batch."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from pipeline.importer import import_csv
from pipeline.store import Store, bulk, ledger, open_store
from pipeline.store.ledger import Due
from pipeline.store.schema import deliveries, enrollments, subscribers
from pipeline.subscribers import Catalog

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
CATALOG = Catalog({"attachment": (1, 2, 3, 4, 5)})
SERIES = "attachment"
ARTICLE = "01-secure-base"


@pytest.fixture
def store(database_url: str, tmp_path: Path) -> Iterator[Store]:
    with open_store(tmp_path, database_url) as opened:
        yield opened


def import_list(store: Store, tmp_path: Path, count: int) -> None:
    path = tmp_path / "readers.csv"
    rows = "".join(f"r{i:05d}@example.com,Reader {i},{SERIES}\n" for i in range(count))
    path.write_text("email,name,series\n" + rows, encoding="utf-8")
    report = import_csv(store, path, CATALOG, now=NOW, zone=UTC, display="readers.csv")
    assert report.imported == count


def due_now(store: Store) -> list[Due]:
    return [
        Due(enrollment, ARTICLE, 1)
        for chunk in ledger.iter_enrollments(store, SERIES, now=NOW, everything=True)
        for enrollment in chunk
    ]


def by_first(store: Store, *columns: sa.ColumnElement[object]) -> dict[object, tuple[object, ...]]:
    """Every row of ``columns``, keyed by the first of them."""
    with store.connect() as conn:
        return {row[0]: tuple(row)[1:] for row in conn.execute(sa.select(*columns))}


def ledger_rows(store: Store) -> dict[object, tuple[object, ...]]:
    return by_first(
        store,
        deliveries.c.subscriber_id,
        deliveries.c.state,
        deliveries.c.attempts,
        deliveries.c.provider_message_id,
        deliveries.c.last_error,
        deliveries.c.sent_at,
        deliveries.c.claim_token,
        deliveries.c.claimed_until,
        deliveries.c.batch,
        deliveries.c.part,
    )


def test_a_batch_is_claimed_recorded_and_bookmarked_alike_on_both_databases(
    store: Store, tmp_path: Path
) -> None:
    """Another run already claimed one delivery: this run gets the others, all under one
    request key; its outcomes (sent with the provider's id, failed with an error, unknown)
    land on its own rows only; bookmarks with and without times are written as given."""
    import_list(store, tmp_path, 7)
    due = due_now(store)
    until = NOW + timedelta(minutes=15)
    with store.begin() as conn:
        other = ledger.claim(conn, due[:1], token="other-run", until=until, now=NOW)
    with store.begin() as conn:
        claims = ledger.claim(conn, due, token="this-run", until=until, now=NOW)
    assert len(other) == 1
    assert sorted(c.enrollment.subscriber_id for c in claims) == sorted(
        d.enrollment.subscriber_id for d in due[1:]
    )
    assert all(c.new and c.attempts == 1 and c.part == 1 for c in claims)
    key = ledger.batch_key(c.key for c in claims)
    rows = ledger_rows(store)
    for c in claims:
        assert rows[c.enrollment.subscriber_id] == (
            "claimed",
            1,
            None,
            None,
            None,
            "this-run",
            until,
            key,
            1,
        )

    sent_at = NOW + timedelta(seconds=5)
    outcomes = [
        (claims[0], "sent", "pm-1", None),
        (claims[1], "failed", None, "422 inactive recipient"),
        (claims[2], "unknown", None, "timed out"),
        *[(c, "sent", f"pm-{i}", None) for i, c in enumerate(claims[3:], start=3)],
    ]
    with store.begin() as conn:
        # The other run's claim is not this run's to record: it stays as it was.
        ledger.record(
            conn,
            [*outcomes, (other[0], "sent", "stolen", None)],
            token="this-run",
            now=NOW,
            sent_at=sent_at,
        )
    rows = ledger_rows(store)
    by_claim = {c.enrollment.subscriber_id: (state, mid, err) for c, state, mid, err in outcomes}
    for subscriber_id, (state, message_id, error) in by_claim.items():
        assert rows[subscriber_id][:7] == (
            state,
            1,
            message_id,
            error,
            sent_at if state == "sent" else None,
            None,
            None,
        )
    assert rows[other[0].enrollment.subscriber_id][:6] == (
        "claimed",
        1,
        None,
        None,
        None,
        "other-run",
    )

    wake = NOW + timedelta(days=4)
    with store.begin() as conn:
        ledger.save_bookmarks(
            conn,
            [
                (due[0].enrollment.id, 0, wake, "v1", None),
                (due[1].enrollment.id, 0, None, "v1", NOW),
                (due[2].enrollment.id, 0, None, "v2", None),
            ],
        )
    marks = by_first(
        store,
        enrollments.c.id,
        enrollments.c.next_due_at,
        enrollments.c.plan_version,
        enrollments.c.completed_at,
    )
    assert marks[due[0].enrollment.id] == (wake, "v1", None)
    assert marks[due[1].enrollment.id] == (None, "v1", NOW)
    assert marks[due[2].enrollment.id] == (None, "v2", None)
    assert marks[due[3].enrollment.id] == (None, None, None)


def test_a_batch_with_no_message_ids_errors_or_times_is_recorded(
    store: Store, tmp_path: Path
) -> None:
    """Every outcome unknown without a word (columns of nothing but NULLs, which
    PostgreSQL must still read as text and timestamps), every bookmark without times."""
    import_list(store, tmp_path, 3)
    due = due_now(store)
    with store.begin() as conn:
        claims = ledger.claim(conn, due, token="t", until=NOW + timedelta(minutes=15), now=NOW)
        ledger.record(
            conn, [(c, "unknown", None, None) for c in claims], token="t", now=NOW, sent_at=NOW
        )
        ledger.save_bookmarks(conn, [(d.enrollment.id, 0, None, "v", None) for d in due])
    assert {r[:7] for r in ledger_rows(store).values()} == {
        ("unknown", 1, None, None, None, None, None)
    }


def test_a_long_batch_of_ids_is_one_parameter_on_postgresql(store: Store, tmp_path: Path) -> None:
    """`bulk.among`: the same rows as IN (…) on both databases, however many ids."""
    import_list(store, tmp_path, 5)
    with store.connect() as conn:
        ids = list(conn.scalars(sa.select(enrollments.c.id)))
        wanted = [*ids[:3], 10**6, *range(2 * 10**6, 2 * 10**6 + 5000)]
        found = set(
            conn.scalars(
                sa.select(enrollments.c.id).where(bulk.among(conn, enrollments.c.id, wanted))
            )
        )
        compiled = str(
            sa.select(enrollments.c.id)
            .where(bulk.among(conn, enrollments.c.id, wanted))
            .compile(dialect=conn.dialect)
        )
    assert found == set(ids[:3])
    if store.dialect == "postgresql":
        assert "ANY" in compiled and compiled.count("%(") == 1


def test_a_send_on_postgresql_first_gathers_the_statistics_of_a_new_list(
    postgres_database_url: str, tmp_path: Path
) -> None:
    """A list imported a moment ago has no statistics (autovacuum gets to it up to a
    minute later): the first look before a send ANALYZEs it, the next finds nothing to
    do. Without them PostgreSQL read the whole enrollment table for every batch."""
    with open_store(tmp_path, postgres_database_url) as store:
        with store.begin() as conn:
            for table in ("subscribers", "enrollments"):
                conn.exec_driver_sql(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        import_list(store, tmp_path, 1500)
    with open_store(tmp_path, postgres_database_url) as store:  # counts flushed at close
        with store.begin() as conn:
            assert bulk.refresh_statistics(conn) == ["enrollments", "subscribers"]
        with store.begin() as conn:
            assert bulk.refresh_statistics(conn) == []
            analysed = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_user_tables WHERE last_analyze IS NOT NULL "
                "AND relname IN ('subscribers', 'enrollments')"
            ).scalar()
    assert analysed == 2


def test_statistics_are_a_postgresql_matter(tmp_path: Path) -> None:
    with open_store(tmp_path) as store, store.begin() as conn:
        assert bulk.refresh_statistics(conn) == []


def test_a_table_another_session_is_analysing_does_not_stop_a_send(
    postgres_database_url: str, tmp_path: Path
) -> None:
    """Another session holds the lock ANALYZE needs (as a long autovacuum does): the run
    waits 2 s at most, then goes on with the statistics as they are."""
    import time

    from pipeline.send import _refresh_statistics

    with open_store(tmp_path, postgres_database_url) as store:
        with store.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE enrollments SET (autovacuum_enabled = false)")
        import_list(store, tmp_path, 1500)
    other = sa.create_engine(postgres_database_url)
    try:
        with other.begin() as conn, open_store(tmp_path, postgres_database_url) as store:
            conn.exec_driver_sql("LOCK TABLE enrollments IN SHARE UPDATE EXCLUSIVE MODE")
            started = time.monotonic()
            _refresh_statistics(store)
            assert 1.5 < time.monotonic() - started < 10
            with store.connect() as reader:
                assert reader.scalar(sa.select(sa.func.count()).select_from(enrollments)) == 1500
    finally:
        other.dispose()


def test_a_reader_erased_between_the_active_read_and_the_insert_is_left_out(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the claim reads who is active and inserts in two statements, and
    another session's erasure may commit in between: the insert joins `subscribers`, so
    such a reader gets no row (the foreign key stopped the whole batch) and the others
    are claimed. SQLite's write lock keeps the two together; the join does no harm."""
    import_list(store, tmp_path, 3)
    due = due_now(store)
    gone = due[1].enrollment
    real = ledger.active_readers

    def then_erased(conn: sa.Connection, items: list[Due]) -> set[int]:
        active = real(conn, items)
        conn.execute(sa.delete(subscribers).where(subscribers.c.id == gone.subscriber_id))
        return active

    monkeypatch.setattr(ledger, "active_readers", then_erased)
    with store.begin() as conn:
        claims = ledger.claim(conn, due, token="run", until=NOW + timedelta(minutes=15), now=NOW)
    kept = {d.enrollment.subscriber_id for d in due} - {gone.subscriber_id}
    assert {c.enrollment.subscriber_id for c in claims} == kept
    assert set(ledger_rows(store)) == kept


def test_a_reader_whose_erasure_commits_while_the_claim_runs_is_left_out(
    postgres_database_url: str, tmp_path: Path
) -> None:
    """PostgreSQL: another session has erased a reader, not yet committed, when the
    claim reads who is active, and commits while the claim is under way. The claim
    leaves that reader out and claims the others. (Its insert's foreign key used to
    wait for the erasure, then stop the whole batch with an IntegrityError.)"""
    with open_store(tmp_path, postgres_database_url) as store:
        import_list(store, tmp_path, 3)
        due = due_now(store)
        gone = due[1].enrollment.subscriber_id
        other = sa.create_engine(postgres_database_url)
        try:
            with other.connect() as eraser:
                erasure = eraser.begin()
                # As `subscribers.erase` does, in its own transaction.
                eraser.execute(sa.delete(enrollments).where(enrollments.c.subscriber_id == gone))
                eraser.execute(sa.delete(subscribers).where(subscribers.c.id == gone))
                committer = threading.Timer(1.0, erasure.commit)
                committer.start()
                try:
                    with store.begin() as conn:
                        until = NOW + timedelta(minutes=15)
                        claims = ledger.claim(conn, due, token="run", until=until, now=NOW)
                finally:
                    committer.join()
        finally:
            other.dispose()
        kept = {d.enrollment.subscriber_id for d in due} - {gone}
        assert {c.enrollment.subscriber_id for c in claims} == kept
        assert set(ledger_rows(store)) == kept


def test_bookmarks_in_the_hour_a_dst_change_repeats_keep_their_own_instants(
    store: Store, tmp_path: Path
) -> None:
    """A batch converts each wake-up time once. 01:30 in New York on 1 November 2026
    happens twice (EDT, then EST an hour later, ``fold=1``), and Python takes the two for
    equal: each reader still gets their own instant."""
    import_list(store, tmp_path, 2)
    first, second = (d.enrollment.id for d in due_now(store))
    zone = ZoneInfo("America/New_York")
    edt = datetime(2026, 11, 1, 1, 30, tzinfo=zone)
    est = datetime(2026, 11, 1, 1, 30, tzinfo=zone, fold=1)
    with store.begin() as conn:
        ledger.save_bookmarks(conn, [(first, 0, edt, "v", None), (second, 0, est, "v", None)])
    with store.connect() as conn:
        wake = dict(conn.execute(sa.select(enrollments.c.id, enrollments.c.next_due_at)).all())
    assert wake == {
        first: datetime(2026, 11, 1, 5, 30, tzinfo=UTC),
        second: datetime(2026, 11, 1, 6, 30, tzinfo=UTC),
    }


@pytest.mark.parametrize("length", [59, 60, 100])
def test_the_plan_marker_of_a_series_with_a_long_slug_is_kept_whole(
    store: Store, length: int
) -> None:
    """A series' slug is its folder's name, up to 100 characters; its plan marker lives
    in a settings key of 64. PostgreSQL refused a marker key of 65 or more ("value too
    long"), so a send of such a series failed after every message had gone. Each slug
    keeps a marker of its own, read back as written."""
    slugs = ["s" * length, "s" * (length - 1) + "t"]
    with store.begin() as conn:
        for number, slug in enumerate(slugs):
            ledger.set_plan_marker(conn, slug, f"version-{number}")
    with store.connect() as conn:
        assert [ledger.plan_marker(conn, slug) for slug in slugs] == ["version-0", "version-1"]


def test_each_statement_of_a_request_reads_its_own_rows_however_long_the_list(
    postgres_database_url: str, tmp_path: Path
) -> None:
    """The send loop's statements for one request of 500 readers (the claim, the gate's
    read of who left and of the leases, the renewal of the leases, the record, the
    bookmarks) read the rows of those readers, not the list's: 20,000 readers enrolled
    in two series, 19,500 of them sent part 1 by an earlier run (claimed, then recorded,
    and not vacuumed since), the statistics gathered after it, as a later run finds them.
    (In the first run to a new list, the deliveries table grows from nothing: until it
    holds some 30,000 rows, PostgreSQL judges reading it whole cheaper than 500 lookups
    for the lease read and the record.)

    Left to themselves, PostgreSQL's planner read whole tables or indexes for every
    request: the claim's insert every subscriber (a join to the request's arrays alone;
    at 40,000 readers, 2.6 s of a send against 1.6), the gate's read of who left both
    tables (31 ms a request at 30,000) or the whole series through its index (5 ms), and
    the lease read and renewal an entry of the open-deliveries index for each claim the
    run had made (5.5 ms a request at the end of a 100,000-message send). Counted by
    PostgreSQL itself (pg_stat_user_tables and pg_stat_user_indexes: rows read by
    sequential scans, and index entries read), flushed after each statement."""
    count, request = 20_000, 500
    with open_store(tmp_path, postgres_database_url) as store:
        with store.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE deliveries SET (autovacuum_enabled = false)")
            conn.exec_driver_sql(
                "INSERT INTO subscribers (email, name, status, created_at, updated_at, source, "
                "attributes) SELECT 'r' || g || '@example.com', '', "
                "CASE WHEN g %% 7 = 0 THEN 'bounced' ELSE 'active' END, now(), now(), 'csv', '{}' "
                "FROM generate_series(1, %(count)s) AS g",
                {"count": count},
            )
            for series in (SERIES, "other"):
                conn.exec_driver_sql(
                    "INSERT INTO enrollments (subscriber_id, series, enrolled_at, paused) "
                    "SELECT id, %(series)s, now(), id %% 11 = 0 FROM subscribers ORDER BY id",
                    {"series": series},
                )
            first = conn.scalar(sa.select(sa.func.min(subscribers.c.id)))
            asked = range(first + count // 2, first + count // 2 + request)
            conn.exec_driver_sql(
                "INSERT INTO deliveries (subscriber_id, series, article, part, state, "
                "claim_token, claimed_until, created_at, updated_at) SELECT id, %(series)s, "
                "%(article)s, 1, 'claimed', 'earlier', %(until)s, now(), now() "
                "FROM subscribers WHERE id < %(start)s OR id > %(stop)s ORDER BY id",
                {
                    "series": SERIES,
                    "article": ARTICLE,
                    "until": NOW + timedelta(minutes=15),
                    "start": asked[0],
                    "stop": asked[-1],
                },
            )
        with store.begin() as conn:
            conn.exec_driver_sql(
                "UPDATE deliveries SET state = 'sent', sent_at = now(), claim_token = NULL, "
                "claimed_until = NULL"
            )
        with store.begin() as conn:
            # Nothing claimed, as far as the planner knows.
            conn.exec_driver_sql("ANALYZE subscribers, enrollments, deliveries")
        due = [d for d in due_now(store) if d.enrollment.subscriber_id in asked]
        _alone(store)
        until = NOW + timedelta(minutes=15)
        read: dict[str, dict[str, int]] = {}

        def measure(name: str, work: Callable[[sa.Connection], T]) -> T:
            before = _reads(store)
            with store.begin() as conn:
                conn.exec_driver_sql("SELECT pg_stat_force_next_flush()")  # at its end
                result = work(conn)
            after = _reads(store)
            read[name] = {t: n - before.get(t, 0) for t, n in after.items()}
            return result

        claims = measure(
            "claim", lambda conn: ledger.claim(conn, due, token="run", until=until, now=NOW)
        )
        ids = [c.id for c in claims]
        key = ledger.batch_key(c.key for c in claims)
        with store.begin() as conn:
            conn.execute(sa.delete(subscribers).where(subscribers.c.id == asked[0]))
        readers = {c.enrollment.subscriber_id: c.enrollment.id for c in claims}
        gone = measure("gate", lambda conn: ledger.departed(conn, SERIES, readers))
        held = measure(
            "leases",
            lambda conn: ledger.held_claims(conn, ids, token="run", until=NOW, batch=key),
        )
        later = until + timedelta(minutes=5)
        renewed = measure(
            "renewal",
            lambda conn: ledger.extend_claims(
                conn, ids, token="run", until=later, now=NOW, batch=key
            ),
        )
        outcomes = [(c, "sent", f"pm-{i}", None) for i, c in enumerate(claims)]
        measure(
            "record",
            lambda conn: ledger.record(conn, outcomes, token="run", now=NOW, sent_at=NOW),
        )
        wake = NOW + timedelta(days=4)
        marks = [(c.enrollment.id, 0, wake, "v1", None) for c in claims]
        measure("bookmarks", lambda conn: ledger.save_bookmarks(conn, marks))
    active = {i for i in asked if (i - first + 1) % 7 and (i - first + 1) % 11}
    assert {c.enrollment.subscriber_id for c in claims} == active
    assert gone == {asked[0]} and held == renewed == len(claims) - 1
    # Each row is looked up a few times (the claim's read, its insert, the foreign key's
    # check; older versions of a row): four times the request is still far from the list.
    assert all(n <= 4 * request for rows in read.values() for n in rows.values()), read


T = TypeVar("T")


def _alone(store: Store) -> None:
    """Close the store's connections and wait until their sessions have ended (a session
    hands over its statistics as it ends): from here on, one session does everything."""
    store.engine.dispose()
    deadline = time.monotonic() + 10
    with store.connect() as conn:
        while time.monotonic() < deadline:
            others = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).scalar()
            if not others:
                return
            time.sleep(0.05)
    raise AssertionError("the store's other sessions did not end")


def _reads(store: Store) -> dict[str, int]:
    """Rows of subscribers, enrollments and deliveries read so far by sequential scans,
    and entries read from their indexes (the statistics of finished statements)."""
    with store.connect() as conn:
        conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
        rows = conn.exec_driver_sql(
            "SELECT t.relname, t.seq_tup_read + coalesce(sum(i.idx_tup_read), 0) "
            "FROM pg_stat_user_tables AS t "
            "LEFT JOIN pg_stat_user_indexes AS i ON i.relid = t.relid "
            "WHERE t.relname IN ('subscribers', 'enrollments', 'deliveries') "
            "GROUP BY t.relname, t.seq_tup_read"
        )
        return {table: int(n) for table, n in rows}


def test_the_gate_counts_only_the_claims_this_run_holds_under_the_request_key(
    store: Store, tmp_path: Path
) -> None:
    """`held_claims` (the gate's read, one count on both databases) counts a claim only
    when it is this run's, still claimed, with a lease lasting past the time asked and
    recorded under the request's key: any other claim sends the gate to the renewal,
    which finds the lost ones."""
    import_list(store, tmp_path, 6)
    until = NOW + timedelta(minutes=10)
    with store.begin() as conn:
        claims = ledger.claim(conn, due_now(store), token="run", until=until, now=NOW)
    ids = [c.id for c in claims]
    key = ledger.batch_key(c.key for c in claims)
    changes = [
        {"claim_token": "another-run"},
        {"claimed_until": NOW + timedelta(minutes=1)},  # runs out before the time asked
        {"claimed_until": None},
        {"state": "sent", "claim_token": None, "claimed_until": None},
        {"batch": "another-request"},
    ]
    with store.begin() as conn:
        for row_id, change in zip(ids, changes, strict=False):
            conn.execute(sa.update(deliveries).where(deliveries.c.id == row_id).values(**change))
    asked = NOW + timedelta(minutes=5)
    with store.connect() as conn:
        assert ledger.held_claims(conn, ids, token="run", until=asked, batch=key) == 1
        assert ledger.held_claims(conn, ids[5:], token="run", until=asked, batch=key) == 1
        assert ledger.held_claims(conn, ids[5:], token="run", until=until, batch=key) == 0
        assert ledger.held_claims(conn, ids, token="other", until=asked, batch=key) == 0
        assert ledger.held_claims(conn, [], token="run", until=asked, batch=key) == 0
