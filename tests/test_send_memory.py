"""A long list is planned, sent and shown one chunk at a time (issue 16: memory bounded
by the batch, not the list): what readers receive and what a dry run prints are the
same as when everything fitted in one chunk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline.send.run import Planned, PlannedRows
from pipeline.store import ledger, open_store
from pipeline.store.schema import deliveries, subscribers

from .helpers import import_readers, run

MONDAY = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


def sent_per_reader(root: Path) -> Counter[str]:
    with open_store(root) as store, store.connect() as conn:
        rows = conn.execute(
            sa.select(subscribers.c.email)
            .join(deliveries, deliveries.c.subscriber_id == subscribers.c.id)
            .where(deliveries.c.state == "sent")
        ).scalars()
        return Counter(rows)


def test_planned_rows_spill_to_files_and_read_back_sorted_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(PlannedRows, "SPILL", 3)
    rows = PlannedRows()
    base = datetime(2026, 12, 1, tzinfo=UTC)
    kinds = ["scheduled", "due", "waiting", "held", "due", "scheduled", "gave_up"]
    made = [
        Planned(f"r{i}@example.com", "s", 1, "T", base + timedelta(hours=7 - i), kind, "why")
        for i, kind in enumerate(kinds * 2)
    ]
    for row in made:
        rows.append(row)
    expected = sorted(made, key=PlannedRows.key)
    assert len(rows) == len(made)
    assert list(rows) == expected
    assert list(rows) == expected  # a table reads it twice: widths, then lines


def test_a_send_longer_than_a_chunk_reaches_each_reader_once(
    example_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of 7 enrollments, sent in groups of at least 10, over 40 readers: every
    reader gets part 1 exactly once,
    and the next run, with the chunks that sent woken again, sends nothing more."""
    import pipeline.send

    emails = import_readers(example_copy, 40)
    monkeypatch.setattr(ledger, "CHUNK", 7)
    monkeypatch.setattr(pipeline.send, "SEND_GROUP", 10)
    code, out, err = run(example_copy, "send", "--now", MONDAY.isoformat())
    assert code == 0, out + err
    assert out.startswith("sent 40, failed 0")
    assert sent_per_reader(example_copy) == Counter({e: 1 for e in emails})
    code, out, err = run(example_copy, "send", "--now", (MONDAY + timedelta(hours=1)).isoformat())
    assert out.startswith("sent 0,"), out + err


def test_a_dry_run_longer_than_the_memory_buffer_prints_the_same_plan(
    example_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import_readers(example_copy, 25)
    args = ("send", "--dry-run", "--now", MONDAY.isoformat())
    whole = {fmt: run(example_copy, *args, "--format", fmt) for fmt in ("table", "json")}
    monkeypatch.setattr(PlannedRows, "SPILL", 4)
    monkeypatch.setattr(ledger, "CHUNK", 6)
    for fmt, (code, out, err) in whole.items():
        assert code == 0, out + err
        assert run(example_copy, *args, "--format", fmt) == (code, out, err)
    rows = json.loads(whole["json"][1])
    assert len(rows) == 25 and {r["status"] for r in rows} == {"due"}


def test_a_share_another_run_holds_is_sent_once_that_run_lets_go(
    postgres_workspace: Path,
) -> None:
    """PostgreSQL: a run finds one share of the series locked by another run; it sends
    every other share first, waits for that one and then plans it like the rest: every
    reader gets part 1 exactly once."""
    import os
    import zlib

    from pipeline.send.planning import SHARES

    emails = import_readers(postgres_workspace, 40)
    engine = sa.create_engine(os.environ["SERIES_DATABASE_URL"])
    key = zlib.crc32(b"attachment") & 0x7FFFFFFF
    with engine.connect() as other:
        assert other.execute(sa.select(sa.func.pg_try_advisory_lock(key, 3))).scalar()
        other.commit()
        timer = threading.Timer(
            1.5,
            lambda: (
                other.execute(sa.select(sa.func.pg_advisory_unlock(key, 3))),
                other.commit(),
            ),
        )
        timer.start()
        started = time.monotonic()
        code, out, err = run(postgres_workspace, "send", "--now", MONDAY.isoformat())
        timer.join()
    engine.dispose()
    assert code == 0, out + err
    assert out.startswith("sent 40, failed 0"), out + err
    assert time.monotonic() - started >= 1.5 and SHARES > 3
    assert sent_per_reader(postgres_workspace) == Counter({e: 1 for e in emails})


def test_two_runs_at_once_on_postgresql_send_each_reader_one_email(
    postgres_workspace: Path,
) -> None:
    """Two `series send` processes started together against one database (two machines'
    scheduled jobs): 60 readers, 60 .eml files, each reader once, both summaries adding
    up to 60."""
    import_readers(postgres_workspace, 60)
    command = [sys.executable, "-m", "pipeline", "send", "--now", MONDAY.isoformat()]
    env = {**os.environ, "SERIES_WORKSPACE": str(postgres_workspace)}
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    sent = sum(int(out.decode().split(",")[0].split()[1]) for out, _ in outputs)
    files = list((postgres_workspace / "outbox").glob("*.eml"))
    recipients = Counter(
        line.split(":", 1)[1].strip()
        for f in files
        for line in f.read_bytes().decode().splitlines()
        if line.startswith("To:")
    )
    assert sent == 60 and len(files) == 60
    assert len(recipients) == 60 and set(recipients.values()) == {1}


def add_enrollments(root: Path, count: int, *, next_due_at: datetime) -> None:
    """COUNT active readers of the attachment series, each planned before (a plan
    version) and woken at NEXT_DUE_AT: what a daily run finds when a part falls due."""
    from pipeline.store.schema import enrollments

    with open_store(root) as store, store.begin() as conn:
        conn.execute(
            subscribers.insert(),
            [
                {
                    "email": f"w{i:06d}@example.com",
                    "name": f"Reader {i}",
                    "created_at": MONDAY - timedelta(days=30),
                    "updated_at": MONDAY - timedelta(days=30),
                    "attributes": {},
                }
                for i in range(count)
            ],
        )
        ids = conn.execute(sa.select(subscribers.c.id).order_by(subscribers.c.id)).scalars()
        conn.execute(
            enrollments.insert(),
            [
                {
                    "subscriber_id": i,
                    "series": "attachment",
                    "enrolled_at": MONDAY - timedelta(days=30),
                    "next_due_at": next_due_at,
                    "plan_version": "earlier",
                }
                for i in ids
            ],
        )


def test_what_a_woken_run_remembers_stays_small_however_many_it_plans(example_copy: Path) -> None:
    """The enrollments a run has planned are remembered (two queries may find one
    twice), by id: 30,000 woken readers in chunks of 1,000 add no more than a few KB
    between the second chunk and the last (a set of ids grew by ~2 MB)."""
    import gc
    import tracemalloc

    add_enrollments(example_copy, 30_000, next_due_at=MONDAY - timedelta(hours=1))
    with open_store(example_copy) as store:
        chunks = ledger.iter_enrollments(
            store, "attachment", now=MONDAY, everything=False, chunk=1000
        )
        sizes = []
        count = 0
        tracemalloc.start()
        try:
            for chunk in chunks:
                count += len(chunk)
                del chunk
                gc.collect()
                sizes.append(tracemalloc.get_traced_memory()[0])
        finally:
            tracemalloc.stop()
    assert count == 30_000
    assert sizes[-1] - sizes[1] < 256 * 1024, sizes[-1] - sizes[1]


def test_an_id_set_holds_exactly_its_ids_in_a_bit_each_when_dense() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from pipeline.store.idset import IdSet

    @settings(deadline=None)
    @given(st.lists(st.integers(min_value=0, max_value=3 * IdSet.PAGE)), st.integers(0, 10**6))
    def same_as_a_set(ids: list[int], probe: int) -> None:
        found = IdSet(ids)
        assert len(found) == len(set(ids))
        assert found.add(probe) == (probe not in set(ids)) and probe in found
        assert not found.add(probe)
        found = IdSet(ids)
        assert all(i in found for i in ids)
        assert (probe in found) == (probe in set(ids))

    same_as_a_set()
    dense = IdSet(range(1, 200_001))
    assert len(dense) == 200_000 and 1 in dense and 200_000 in dense and 0 not in dense
    assert dense.nbytes() < 30_000  # 25 KB of bits, where a set takes ~12 MB
    with pytest.raises(ValueError):
        dense.add(-1)


def test_problem_lines_beyond_the_first_thousand_wait_in_a_file() -> None:
    """A run where every delivery fails has a line per delivery: 100,000 lines take
    less than 1 MB of memory (a list of them took ~12 MB), and read back whole, in
    order, line breaks and all, also after crossing from a worker process (pickle)."""
    import pickle
    import tracemalloc

    from pipeline.send.run import SendReport

    report = SendReport()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(100_000):
            report.problems.append(f"r{i:06d}@example.com: part 1 of attachment failed: 406")
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 1024 * 1024, grown
    lines = report.problems
    assert len(lines) == 100_000
    assert lines[0] == "r000000@example.com: part 1 of attachment failed: 406"
    assert lines[-1] == lines[99_999] == "r099999@example.com: part 1 of attachment failed: 406"
    assert list(lines)[54_321] == "r054321@example.com: part 1 of attachment failed: 406"
    lines.append("two\nlines")
    assert list(lines)[-1] == "two\nlines" and len(list(lines)) == 100_001
    assert pickle.loads(pickle.dumps(report)).problems == list(lines)
    other = SendReport()
    other.problems.append("one more")
    report.merge(other)
    assert list(report.problems)[-2:] == ["two\nlines", "one more"]
    assert SendReport().problems == [] and pickle.loads(pickle.dumps(SendReport())).problems == []


@pytest.mark.parametrize("workers", [1, 2])
def test_every_failed_delivery_is_reported_when_the_lines_outgrow_memory(
    example_copy: Path, postmark: object, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """40 readers, every one refused by Postmark (inactive recipient), with room in
    memory for 3 problem lines: each reader's line is printed once, with 1 and with 2
    worker processes (which send theirs to the parent in parts of 2)."""
    from pipeline.send import workers as worker_module
    from pipeline.send.run import ProblemLines

    from .fake_postmark import FakePostmark
    from .helpers import configure

    assert isinstance(postmark, FakePostmark)
    configure(
        example_copy,
        f'provider = "postmark"\nworkers = {workers}',
        "[tool.series.postmark]\nbatch_size = 10",
    )
    emails = import_readers(example_copy, 40)
    postmark.inactive.update(emails)
    monkeypatch.setattr(ProblemLines, "KEEP", 3)
    monkeypatch.setattr(worker_module, "PROBLEMS_AT_ONCE", 2)
    code, out, err = run(example_copy, "send", "--now", MONDAY.isoformat())
    assert code == 1
    assert out.startswith("sent 0, failed 40,"), out + err
    failed = Counter(
        line.split(":")[0]
        for line in err.splitlines()
        if ": part 1 of attachment failed: 406" in line
    )
    assert failed == Counter({e: 1 for e in emails}), err


class Item:
    """A planned delivery stand-in that counts how many exist."""

    alive = 0

    def __init__(self, due: int, order: int) -> None:
        self.due, self.order = due, order
        Item.alive += 1

    def __del__(self) -> None:
        Item.alive -= 1


def test_a_limited_run_holds_twice_the_limit_and_a_chunk_not_the_plan() -> None:
    """--limit N: the N due first (ties in plan order), as sorting the whole plan gives
    them, while never more than 2N items and two chunks exist; every other item is
    held back exactly once."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from pipeline.send.planning import earliest

    @settings(deadline=None, max_examples=300)
    @given(
        st.lists(st.lists(st.integers(0, 20), max_size=12), max_size=30),
        st.integers(0, 15),
    )
    def check(chunks: list[list[int]], limit: int) -> None:
        longest = max((len(c) for c in chunks), default=0)
        held: list[int] = []
        most = 0

        def planned() -> Iterator[list[Item]]:
            nonlocal most
            order = 0
            for chunk in chunks:
                items = []
                for due in chunk:
                    items.append(Item(due, order))
                    order += 1
                most = max(most, Item.alive)
                yield items
                del items

        start = Item.alive
        chosen = earliest(
            planned(),
            limit,
            key=lambda i: i.due,
            drop=lambda out: held.extend(i.order for i in out),
        )
        everything = [(due, n) for n, due in enumerate(d for c in chunks for d in c)]
        expected = sorted(everything, key=lambda pair: pair[0])
        assert [(i.due, i.order) for i in chosen] == expected[:limit]
        assert sorted(held) == sorted(n for _, n in expected[limit:])
        assert most - start <= 2 * limit + 2 * longest
        del chosen

    check()
