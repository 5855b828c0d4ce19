"""PostgreSQL, several `series send` at once: a share of the list another run has
planned and sent for the current content is not planned again by the run that reaches
it after; a share without that run's word for it (it stopped or died halfway, or the
content has changed since) is planned whole."""

from __future__ import annotations

import os
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pipeline.config import load_config
from pipeline.content import load_series
from pipeline.plan import fingerprint
from pipeline.send.planning import SHARES, _share_marker
from pipeline.store import ledger, open_store
from pipeline.store.schema import deliveries, enrollments

from .conftest import POSTMARK_TOKEN
from .fake_postmark import FakePostmark
from .helpers import configure, import_readers, run

MONDAY = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
HELD = 3  # the share the other run holds


def the_other_run_did_its_share(root: Path, marker: str | None) -> set[int]:
    """What a run that planned share HELD for the current content leaves: each of its
    enrollments bookmarked for later, and (``marker``) its word for the share. Returns
    those enrollments' ids."""
    config = load_config(root)
    (series,), _ = load_series(config)
    version = fingerprint(series)
    with open_store(root) as store, store.begin() as conn:
        ids = set(
            conn.scalars(sa.select(enrollments.c.id).where(enrollments.c.id % SHARES == HELD))
        )
        conn.execute(
            enrollments.update()
            .where(enrollments.c.id.in_(ids))
            .values(plan_version=version, next_due_at=MONDAY + timedelta(days=30))
        )
        if marker is not None:
            ledger.set_setting(conn, _share_marker(series, HELD), marker.format(version=version))
    return ids


@contextmanager
def share_held_elsewhere() -> Iterator[Connection]:
    """Another session holding share HELD's advisory lock for the ``with`` block (it
    may let go earlier through the connection it yields)."""
    engine = sa.create_engine(os.environ["SERIES_DATABASE_URL"])
    key = zlib.crc32(b"attachment") & 0x7FFFFFFF
    try:
        with engine.connect() as other:
            assert other.execute(sa.select(sa.func.pg_try_advisory_lock(key, HELD))).scalar()
            other.commit()
            yield other
    finally:
        engine.dispose()


def send_while_share_is_held(root: Path) -> tuple[int, str, str]:
    """`series send` (the first after an import: a full plan) while another session holds
    share HELD for a second."""
    key = zlib.crc32(b"attachment") & 0x7FFFFFFF
    with share_held_elsewhere() as other:

        def let_go() -> None:
            other.execute(sa.select(sa.func.pg_advisory_unlock(key, HELD)))
            other.commit()

        timer = threading.Timer(1.0, let_go)
        timer.start()
        result = run(root, "send", "--now", MONDAY.isoformat())
        timer.join()
    return result


def sent_to(root: Path) -> set[int]:
    with open_store(root) as store, store.connect() as conn:
        return set(
            conn.scalars(
                sa.select(enrollments.c.id).join(
                    deliveries, deliveries.c.subscriber_id == enrollments.c.subscriber_id
                )
            )
        )


def test_a_share_another_run_has_planned_for_this_content_is_not_planned_again(
    postgres_workspace: Path,
) -> None:
    import_readers(postgres_workspace, 48)
    done = the_other_run_did_its_share(postgres_workspace, "{version}")
    code, out, err = send_while_share_is_held(postgres_workspace)
    assert code == 0, out + err
    assert out.startswith(f"sent {48 - len(done)}, failed 0"), out + err
    assert done and not (sent_to(postgres_workspace) & done)


@pytest.mark.parametrize("marker", [None, "an-older-version"])
def test_a_share_without_a_marker_for_this_content_is_planned_whole(
    postgres_workspace: Path, marker: str | None
) -> None:
    """No word from the run that held it (it stopped or died), or a word for other
    content: every enrollment of the share is planned, whatever its bookmark says."""
    import_readers(postgres_workspace, 48)
    done = the_other_run_did_its_share(postgres_workspace, marker)
    code, out, err = send_while_share_is_held(postgres_workspace)
    assert code == 0, out + err
    assert out.startswith("sent 48, failed 0"), out + err
    assert done <= sent_to(postgres_workspace)


def test_a_run_leaves_a_marker_for_each_share_it_went_through(postgres_workspace: Path) -> None:
    """One marker per share, for the content planned, after a full plan."""
    import_readers(postgres_workspace, 20)
    code, out, err = run(postgres_workspace, "send", "--now", MONDAY.isoformat())
    assert code == 0 and out.startswith("sent 20,"), out + err
    config = load_config(postgres_workspace)
    (series,), _ = load_series(config)
    with open_store(postgres_workspace) as store, store.connect() as conn:
        markers = {
            share: ledger.setting_or_none(conn, _share_marker(series, share))
            for share in range(SHARES)
        }
    assert set(markers.values()) == {fingerprint(series)}


def test_a_share_held_longer_than_the_wait_is_sent_beside_its_holder(
    postgres_workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another session keeps share HELD locked (a run stuck in a hung request): after
    SHARE_WAIT the run sends that share too, instead of waiting for it for good; the
    claims keep each reader to one email."""
    import time

    from pipeline.send import planning

    monkeypatch.setattr(planning, "SHARE_WAIT", 0.5)
    emails = import_readers(postgres_workspace, 48)
    with share_held_elsewhere():
        started = time.monotonic()
        code, out, err = run(postgres_workspace, "send", "--now", MONDAY.isoformat())
        took = time.monotonic() - started
    assert code == 0, out + err
    assert out.startswith(f"sent {len(emails)}, failed 0"), out + err
    assert took < 30


def test_shares_held_elsewhere_are_waited_for_once_for_all(
    postgres_workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another session holds six shares (a run stuck in a hung request holds every share
    it took together): the run waits SHARE_WAIT (here 1 s) once for all of them, then
    sends them beside their holder, not a second per share."""
    import time

    from pipeline.send import planning

    monkeypatch.setattr(planning, "SHARE_WAIT", 1.0)
    import_readers(postgres_workspace, 48)
    engine = sa.create_engine(os.environ["SERIES_DATABASE_URL"])
    key = zlib.crc32(b"attachment") & 0x7FFFFFFF
    try:
        with engine.connect() as other:
            for share in range(6):
                assert other.execute(sa.select(sa.func.pg_try_advisory_lock(key, share))).scalar()
            other.commit()
            started = time.monotonic()
            code, out, err = run(postgres_workspace, "send", "--now", MONDAY.isoformat())
            took = time.monotonic() - started
    finally:
        engine.dispose()
    assert code == 0 and out.startswith("sent 48, failed 0"), out + err
    assert 1.0 <= took < 4.0, took


def test_a_run_alone_takes_the_shares_in_parts_of_about_a_send_group(
    postgres_workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """48 readers and a send group of 12: 4 parts of 4 shares, each share in one of
    them (a part starts the stream of requests anew); one part when the group holds
    them all."""
    import pipeline.send
    from pipeline.send import planning

    parts: list[tuple[int, ...]] = []
    real_plan_chunks = planning.plan_chunks

    def plan_chunks(*args: Any, **kwargs: Any) -> Any:
        shard = args[2] if len(args) > 2 else kwargs["shard"]
        parts.append(shard[0])
        return real_plan_chunks(*args, **kwargs)

    monkeypatch.setattr(pipeline.send, "plan_chunks", plan_chunks)
    monkeypatch.setattr(pipeline.send, "SEND_GROUP", 12)
    import_readers(postgres_workspace, 48)
    code, out, err = run(postgres_workspace, "send", "--now", MONDAY.isoformat())
    assert code == 0 and out.startswith("sent 48, failed 0"), out + err
    assert [len(part) for part in parts] == [4, 4, 4, 4], parts
    assert sorted(share for part in parts for share in part) == list(range(SHARES))
    parts.clear()
    monkeypatch.setattr(pipeline.send, "SEND_GROUP", 20_000)
    code, out, err = run(postgres_workspace, "send", "--now", MONDAY.isoformat())
    assert code == 0 and out.startswith("sent 0, failed 0"), out + err
    assert [sorted(part) for part in parts] == [list(range(SHARES))]


def test_every_part_is_sent_through_the_same_threads_which_end_with_the_run(
    postgres_workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PostgreSQL run sends part after part of the list (a send group of 12, 48
    readers: 4 parts): one sending, one recording and one claiming thread, started
    once, serve them all, and none is left running after the run."""
    import importlib

    import pipeline.send

    deliver = importlib.import_module("pipeline.send.deliver")  # not the function
    recording = importlib.import_module("pipeline.send.recording")
    used: dict[str, set[int]] = {"send": set(), "record": set(), "claim": set()}
    real_send, real_record, real_take = deliver.send_batch, recording.record_outcomes, deliver._take

    def send_batch(*args: object, **kwargs: object) -> object:
        used["send"].add(threading.get_ident())
        return real_send(*args, **kwargs)

    def record(*args: object) -> object:
        used["record"].add(threading.get_ident())
        return real_record(*args)

    def take(*args: Any) -> object:
        if threading.current_thread() is not threading.main_thread():
            used["claim"].add(threading.get_ident())
        return real_take(*args)

    monkeypatch.setattr(deliver, "send_batch", send_batch)
    monkeypatch.setattr(recording, "record_outcomes", record)
    monkeypatch.setattr(deliver, "_take", take)
    monkeypatch.setattr(pipeline.send, "SEND_GROUP", 12)
    settings = 'provider = "postmark"\nworkers = 1'  # one process: its threads are seen
    configure(postgres_workspace, settings, "[tool.series.postmark]\nbatch_size = 2")
    import_readers(postgres_workspace, 48)
    with FakePostmark(token=POSTMARK_TOKEN) as fake:
        monkeypatch.setenv("POSTMARK_SERVER_TOKEN", POSTMARK_TOKEN)
        monkeypatch.setenv("SERIES_PROVIDER_URL", fake.url)
        code, out, err = run(postgres_workspace, "send", "--now", MONDAY.isoformat())
    assert code == 0 and out.startswith("sent 48, failed 0"), out + err
    assert len(fake.batch_requests()) == 24
    assert [len(ids) for ids in used.values()] == [1, 1, 1], used
    threads = set.union(*used.values())
    assert len(threads) == 3 and threading.get_ident() not in threads
    left = [t.name for t in threading.enumerate() if t.name.startswith("series-")]
    assert left == []


def test_a_claim_does_not_hold_back_another_runs_bookmark_of_the_same_reader(
    postgres_workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a run writes its claims, having read who may be written to, another run
    records a bookmark for one of those readers (its own answer came in): the claim's
    lock on the enrollment (FOR KEY SHARE) lets that UPDATE through at once. A lock
    that held it back (FOR NO KEY UPDATE) made two runs at once deadlock: the claim
    waits for the other run's recording, whose delivery it conflicts with."""
    from pipeline.store import bulk

    import_readers(postgres_workspace, 4)
    real_insert = bulk.insert_claims
    bookmarked: list[int] = []

    def insert_claims(conn: Connection, series: str, rows: Any, **kwargs: Any) -> Any:
        if not bookmarked:
            engine = sa.create_engine(os.environ["SERIES_DATABASE_URL"])
            try:
                with engine.begin() as other:
                    other.execute(sa.text("SET LOCAL lock_timeout = '2s'"))
                    done = other.execute(
                        enrollments.update()
                        .where(enrollments.c.subscriber_id == rows[0][0])
                        .values(next_due_at=MONDAY + timedelta(days=1))
                    )
                    bookmarked.append(done.rowcount)
            finally:
                engine.dispose()
        return real_insert(conn, series, rows, **kwargs)

    monkeypatch.setattr(bulk, "insert_claims", insert_claims)
    code, out, err = run(postgres_workspace, "send", "--now", MONDAY.isoformat())
    assert code == 0 and out.startswith("sent "), out + err
    assert bookmarked == [1]
