"""PostgreSQL: a run plans the next part of the list while the last requests of the
part before are on their way, one part ahead at most. A part is marked planned and its
shares let go only once every delivery of it is recorded; a run stopped, or failing
to plan, sends nothing of the part it planned ahead and leaves it unmarked, and the
next run sends everyone once."""

from __future__ import annotations

import os
import threading
import time
import zlib
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pipeline.config import load_config
from pipeline.providers import get_provider
from pipeline.send import SendOptions, send_due
from pipeline.send.planning import SHARES
from pipeline.send.run import Stop
from pipeline.store import StoreError, open_store
from pipeline.store.schema import deliveries, enrollments, settings, subscribers

from .conftest import POSTMARK_TOKEN
from .fake_postmark import BATCH_PATH, FakePostmark
from .helpers import configure, import_readers, run

MONDAY = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
KEY = zlib.crc32(b"attachment") & 0x7FFFFFFF
READERS = 48
GROUP = 12  # a send group: 4 parts of 4 shares for 48 readers


@pytest.fixture
def workspace(postgres_workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """48 readers, sent through the fake Postmark two per request, in parts of 12."""
    import pipeline.send

    monkeypatch.setattr(pipeline.send, "SEND_GROUP", GROUP)
    settings = 'provider = "postmark"\nworkers = 1'  # one process: its threads are seen
    configure(postgres_workspace, settings, "[tool.series.postmark]\nbatch_size = 2")
    import_readers(postgres_workspace, READERS)
    monkeypatch.setenv("POSTMARK_SERVER_TOKEN", POSTMARK_TOKEN)
    return postgres_workspace


def test_the_next_part_is_planned_while_the_part_before_is_sent_one_ahead_at_most(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each request takes 50 ms. The planning of part k+1 starts (in a thread other
    than the send loop's) before part k's last answer is in; the planning of part k+2
    only once part k is sent: the run holds one part ahead, not the list."""
    import pipeline.send

    events: list[tuple[str, int, float]] = []
    planners: set[int] = set()
    real_plan, real_deliver = pipeline.send.plan_chunks, pipeline.send._deliver_group

    def plan_chunks(*args: Any, **kwargs: Any) -> Any:
        planners.add(threading.get_ident())
        events.append(("plan", len([e for e in events if e[0] == "plan"]), time.monotonic()))
        return real_plan(*args, **kwargs)

    def deliver_group(*args: Any) -> None:
        part = len([e for e in events if e[0] == "sending"])
        events.append(("sending", part, time.monotonic()))
        real_deliver(*args)
        events.append(("sent", part, time.monotonic()))

    monkeypatch.setattr(pipeline.send, "plan_chunks", plan_chunks)
    monkeypatch.setattr(pipeline.send, "_deliver_group", deliver_group)
    with FakePostmark(token=POSTMARK_TOKEN) as fake:
        fake.fail_randomly({"slow": 1.0}, delay=0.05)
        monkeypatch.setenv("SERIES_PROVIDER_URL", fake.url)
        code, out, err = run(workspace, "send", "--now", MONDAY.isoformat())
    assert code == 0 and out.startswith(f"sent {READERS}, failed 0"), out + err
    at = {(kind, part): moment for kind, part, moment in events}
    assert [k for k, _, _ in events if k == "plan"] == ["plan"] * 4, events
    for part in range(3):
        assert at[("plan", part + 1)] < at[("sent", part)], events
    for part in range(2):
        assert at[("plan", part + 2)] > at[("sent", part)], events
    assert threading.get_ident() not in planners
    assert [t.name for t in threading.enumerate() if t.name.startswith("series-")] == []


class WatchingPostmark(FakePostmark):
    """The fake Postmark, which at each batch request looks at the database from its
    own session: which shares are marked planned while one of their deliveries is still
    claimed (``early``), and which shares of the request's readers another session can
    lock (``free``: the run had let go of them)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.engine = sa.create_engine(os.environ["SERIES_DATABASE_URL"])
        self.early: set[int] = set()
        self.free: set[int] = set()
        self.looked = 0

    def respond(
        self, method: str, target: str, headers: Mapping[str, str], raw: bytes
    ) -> tuple[Any, float]:
        if target.startswith(BATCH_PATH):
            with self.engine.connect() as conn:
                self.look(conn, raw)
        return super().respond(method, target, headers, raw)

    def look(self, conn: Connection, raw: bytes) -> None:
        self.looked += 1
        marked = {
            int(key.rsplit(":", 1)[1].split("/")[0])
            for key in conn.scalars(
                sa.select(settings.c.key).where(settings.c.key.like("plan-share:%"))
            )
        }
        claimed = conn.scalars(
            sa.select(enrollments.c.id)
            .join(deliveries, deliveries.c.subscriber_id == enrollments.c.subscriber_id)
            .where(deliveries.c.state == "claimed")
        )
        self.early |= marked & {i % SHARES for i in claimed}
        addresses = [parseaddr(m["To"])[1] for m in orjson.loads(raw)]
        ids = conn.scalars(
            sa.select(enrollments.c.id)
            .join(subscribers, subscribers.c.id == enrollments.c.subscriber_id)
            .where(subscribers.c.email.in_(addresses))
        ).all()
        for share in {i % SHARES for i in ids}:
            if conn.execute(sa.select(sa.func.pg_try_advisory_lock(KEY, share))).scalar():
                self.free.add(share)
                conn.execute(sa.select(sa.func.pg_advisory_unlock(KEY, share)))
        conn.commit()

    def close(self) -> None:
        super().close()
        self.engine.dispose()


def test_a_part_is_marked_and_let_go_only_once_its_deliveries_are_recorded(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At every request, seen from another session: no share is marked planned while a
    delivery of it is claimed, and the shares of the request's readers are still this
    run's. After the run every share is marked and free."""
    with WatchingPostmark(token=POSTMARK_TOKEN) as fake:
        fake.fail_randomly({"slow": 1.0}, delay=0.02)
        monkeypatch.setenv("SERIES_PROVIDER_URL", fake.url)
        code, out, err = run(workspace, "send", "--now", MONDAY.isoformat())
        early, free, looked = fake.early, fake.free, fake.looked
    assert code == 0 and out.startswith(f"sent {READERS}, failed 0"), out + err
    assert looked == READERS // 2
    assert early == set() and free == set(), (early, free)
    with open_store(workspace) as store, store.connect() as conn:
        marks = conn.scalar(sa.select(sa.func.count()).where(settings.c.key.like("plan-share:%")))
        assert marks == SHARES
        for share in range(SHARES):
            assert conn.execute(sa.select(sa.func.pg_try_advisory_lock(KEY, share))).scalar()
            conn.execute(sa.select(sa.func.pg_advisory_unlock(KEY, share)))


def _send(root: Path, options: SendOptions) -> Any:
    config = load_config(root)
    provider = get_provider("postmark", config)
    try:
        with open_store(root) as store:
            return send_due(config, store, provider, options)
    finally:
        provider.close()


def _ledger(root: Path) -> tuple[dict[str, int], int]:
    """The deliveries by state, and how many shares are marked planned."""
    with open_store(root) as store, store.connect() as conn:
        states = dict(
            conn.execute(
                sa.select(deliveries.c.state, sa.func.count()).group_by(deliveries.c.state)
            ).all()
        )
        marks = conn.scalar(sa.select(sa.func.count()).where(settings.c.key.like("plan-share:%")))
    return states, int(marks or 0)


def test_a_run_stopped_in_its_first_part_sends_nothing_of_the_part_planned_ahead(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGTERM comes with the first request, while the second part is being planned:
    the run ends after that request, recorded; nothing of the second part is claimed or
    sent, no share is marked, and the next run sends the other 46 readers once each."""
    stop = Stop()
    with FakePostmark(token=POSTMARK_TOKEN) as fake:
        monkeypatch.setenv("SERIES_PROVIDER_URL", fake.url)
        real = fake.respond

        def respond(*args: Any) -> Any:
            stop.reason = "SIGTERM"
            time.sleep(0.2)  # the part ahead is planned meanwhile
            return real(*args)

        monkeypatch.setattr(fake, "respond", respond)
        report = _send(workspace, SendOptions(now=MONDAY, provider_name="postmark", stop=stop))
        assert report.stopped == "SIGTERM" and report.sent == 2, report
        assert _ledger(workspace) == ({"sent": 2}, 0)
        monkeypatch.setattr(fake, "respond", real)
        code, out, err = run(workspace, "send", "--now", MONDAY.isoformat())
        assert code == 0 and out.startswith(f"sent {READERS - 2}, failed 0"), out + err
        accepted = [record["to"] for record in fake.accepted]
    assert len(accepted) == READERS and len(set(accepted)) == READERS
    assert _ledger(workspace) == ({"sent": READERS}, SHARES)


def test_a_part_that_cannot_be_planned_stops_the_run_after_the_part_before_is_recorded(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database fails while the second part is planned ahead: the first part's
    requests are all answered and recorded first, the run then stops with the error in
    one line, nothing is left claimed, and only the first part's shares are marked."""
    from pipeline.store import ledger

    real = ledger.iter_enrollments
    parts: list[int] = []

    def iter_enrollments(*args: Any, **kwargs: Any) -> Any:
        parts.append(1)
        if len(parts) == 2:
            raise StoreError("the database went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(ledger, "iter_enrollments", iter_enrollments)
    with FakePostmark(token=POSTMARK_TOKEN) as fake:
        fake.fail_randomly({"slow": 1.0}, delay=0.05)
        monkeypatch.setenv("SERIES_PROVIDER_URL", fake.url)
        code, out, err = run(workspace, "send", "--now", MONDAY.isoformat())
        accepted = len(fake.accepted)
    assert code != 0 and "the database went away" in err, out + err
    assert "Traceback" not in err
    states, marks = _ledger(workspace)
    assert states == {"sent": accepted} and marks == SHARES // 4, (states, marks, accepted)
    assert accepted == GROUP  # the first part: 4 shares of 3 readers
