"""Stopping `series send` (issue 9, point 3): SIGTERM ends the run after the batch in
flight, recorded, with one line and no traceback, workers and all; a SIGKILL of the
parent leaves no worker process sending on its own.

The real CLI runs as a subprocess against the fake Postmark on 127.0.0.1, which takes
its time to answer each batch so that the signal lands mid-run; on SQLite and on
PostgreSQL, where the last answer is recorded while the next request is out.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline.store import open_store
from pipeline.store.schema import deliveries

from .conftest import POSTMARK_TOKEN
from .fake_postmark import SEARCH_PATH, FakePostmark
from .helpers import configure, import_readers, subprocess_env

# On SQLite and on PostgreSQL (SERIES_DATABASE_URL, passed on to every run).
pytestmark = pytest.mark.usefixtures("each_database")

MONDAY = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
BATCH = 5


@pytest.fixture
def slow_postmark() -> Iterator[FakePostmark]:
    """The fake Postmark, answering each batch half a second after taking it."""
    with FakePostmark(token=POSTMARK_TOKEN) as fake:
        fake.fail_next("slow", times=10_000, delay=0.5)
        yield fake


def workspace(root: Path, readers: int, workers: int) -> Path:
    configure(
        root,
        f'provider = "postmark"\nworkers = {workers}',
        f"[tool.series.postmark]\nbatch_size = {BATCH}",
    )
    import_readers(root, readers)
    return root


def start(root: Path, fake: FakePostmark, when: datetime) -> subprocess.Popen[str]:
    env = subprocess_env(root, SERIES_PROVIDER_URL=fake.url, POSTMARK_SERVER_TOKEN=POSTMARK_TOKEN)
    if "SERIES_DATABASE_URL" in os.environ:  # each_database's PostgreSQL
        env["SERIES_DATABASE_URL"] = os.environ["SERIES_DATABASE_URL"]
    command = [sys.executable, "-m", "pipeline", "send", "--now", when.isoformat()]
    return subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for_batches(fake: FakePostmark, count: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while len(fake.batch_requests()) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run never sent"
        time.sleep(0.01)


def per_reader(fake: FakePostmark) -> Counter[str]:
    return Counter(parseaddr(m["to"])[1] for m in fake.accepted)


def ledger_states(root: Path) -> Counter[str]:
    with open_store(root) as store, store.connect() as conn:
        return Counter(conn.scalars(sa.select(deliveries.c.state)))


def finish(root: Path, fake: FakePostmark, when: datetime) -> None:
    """A later run, answered at once: it must send whatever is left."""
    fake.clear_faults()
    _, err = start(root, fake, when).communicate(timeout=120)
    assert "Traceback" not in err, err


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped has stopped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_the_run_after_the_batch_in_flight(
    example_copy: Path, slow_postmark: FakePostmark, workers: int, stop: signal.Signals
) -> None:
    """SIGTERM or SIGINT (`kill -INT`, or Ctrl-C reaching the parent alone) to `series
    send`, with or without worker processes: the batches in flight are recorded, the
    next ones given back, one line names the signal (not the SIGTERM the run passes on
    to its workers), the exit code is 1; nothing is left claimed, and the next run
    sends the rest, once."""
    root = workspace(example_copy, readers=40, workers=workers)
    process = start(root, slow_postmark, MONDAY)
    wait_for_batches(slow_postmark, 2, process)

    process.send_signal(stop)
    out, err = process.communicate(timeout=60)

    assert process.returncode == 1, (out, err)
    assert "Traceback" not in err
    sent = len(slow_postmark.accepted)
    assert 0 < sent < 40
    assert err.splitlines()[-1] == (
        f"stopped by {stop.name} after {sent} deliveries; the rest are sent by the next run"
    )
    assert out.startswith(f"sent {sent}, failed 0, retried 0, unknown 0,")
    assert ledger_states(root) == Counter({"sent": sent})
    finish(root, slow_postmark, MONDAY + timedelta(minutes=1))
    assert per_reader(slow_postmark) == {f"r{i:03d}@example.com": 1 for i in range(40)}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_the_parent_leaves_no_worker_sending(
    example_copy: Path, slow_postmark: FakePostmark
) -> None:
    """SIGKILL to the parent of two sending workers: they stop within seconds, after at
    most their batch in flight, instead of sending the rest of their share on their own;
    a later run sends what is left, and nobody gets a part twice."""
    root = workspace(example_copy, readers=80, workers=2)
    process = start(root, slow_postmark, MONDAY)
    wait_for_batches(slow_postmark, 2, process)
    workers = children_of(process.pid)
    assert len(workers) == 2

    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)

    assert not any(alive(pid) for pid in workers), "workers went on after their parent died"
    sent = len(slow_postmark.accepted)
    time.sleep(1)
    assert len(slow_postmark.accepted) == sent < 80
    finish(root, slow_postmark, MONDAY + timedelta(minutes=20))
    assert per_reader(slow_postmark) == {f"r{i:03d}@example.com": 1 for i in range(80)}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_to_the_workers_alone_is_reported_as_a_stop(
    example_copy: Path, slow_postmark: FakePostmark
) -> None:
    """Workers stopped by SIGTERM (not the parent): exit 1 and a "stopped by" line."""
    root = workspace(example_copy, readers=60, workers=2)
    process = start(root, slow_postmark, MONDAY)
    wait_for_batches(slow_postmark, 2, process)
    workers = children_of(process.pid)
    assert len(workers) == 2

    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    out, err = process.communicate(timeout=60)

    assert sum(per_reader(slow_postmark).values()) < 60  # the workers did stop early
    assert process.returncode == 1, (out, err)
    assert "stopped by SIGTERM after " in err, err
    assert "the rest are sent by the next run" in err


def test_the_stop_line_counts_only_what_this_run_handed_over(example_copy: Path) -> None:
    """A run that finds deliveries an earlier run left unknown, cannot settle them (the
    provider's message search fails) and is then stopped by SIGTERM: its last line
    counts the deliveries it handed to the provider itself, not the earlier run's
    unknown ones, which the summary's `unknown` and a problem line report."""
    root = workspace(example_copy, readers=40, workers=1)
    with FakePostmark(token=POSTMARK_TOKEN) as fake:
        fake.fail_next("drop-before")  # the first request's answer never comes back
        out, err = start(root, fake, MONDAY).communicate(timeout=120)
        assert out.startswith("sent 35, failed 0, retried 0, unknown 5,"), (out, err)
        assert ledger_states(root) == Counter({"sent": 35, "unknown": 5})

        fake.fail_next("500", times=100, path=SEARCH_PATH)
        fake.fail_next("slow", times=10_000, delay=0.5)
        accepted = len(fake.accepted)
        process = start(root, fake, MONDAY + timedelta(days=7))
        wait_for_batches(fake, 8 + 2, process)  # run 1 made 8 requests
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)

    sent = len(fake.accepted) - accepted
    assert 0 < sent < 35
    assert process.returncode == 1, (out, err)
    assert "could not check 5 unknown deliveries" in err, err
    assert out.startswith(f"sent {sent}, failed 0, retried 0, unknown 5,"), out
    assert err.splitlines()[-1] == (
        f"stopped by SIGTERM after {sent} deliveries; the rest are sent by the next run"
    )


def test_sigterm_during_the_lookup_of_unknown_deliveries_stops_between_lookups(
    example_copy: Path,
) -> None:
    """A run looking up, one request each, the 20 deliveries an earlier run left unknown
    at a provider that takes a second per search: SIGTERM stops it after the lookup in
    flight, not after all 20. The line says so, and the deliveries it did not check
    stay unknown for a later run; nothing is sent."""
    root = workspace(example_copy, readers=40, workers=1)
    with FakePostmark(token=POSTMARK_TOKEN) as fake:
        fake.fail_next("drop-before", times=4)  # 4 requests of 5 lost: 20 unknown
        out, err = start(root, fake, MONDAY).communicate(timeout=120)
        assert out.startswith("sent 20, failed 0, retried 0, unknown 20,"), (out, err)

        fake.fail_next("slow", times=100, delay=1.0, path=SEARCH_PATH)
        accepted = len(fake.accepted)
        process = start(root, fake, MONDAY + timedelta(days=1))
        deadline = time.monotonic() + 60
        while not any(r.path == SEARCH_PATH for r in fake.requests):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.01)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
        took = time.monotonic() - signalled
        searches = sum(1 for r in fake.requests if r.path == SEARCH_PATH)

    assert took < 5, (took, searches)  # before: 20 searches of a second each
    assert searches < 5
    assert process.returncode == 1, (out, err)
    assert len(fake.accepted) == accepted  # nothing went out in the stopped run
    assert err.splitlines()[-1] == (
        "stopped by SIGTERM after 0 deliveries; the rest are sent by the next run"
    )
    assert "of 20 unknown deliveries; the rest wait for a later run" in err, err
    # Those it looked up were never accepted: failed, for a later run to send again.
    states = ledger_states(root)
    assert states == Counter({"sent": 20, "failed": searches, "unknown": 20 - searches})
    assert f"checked {searches} of 20 unknown deliveries" in err, err
