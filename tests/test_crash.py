"""Crash test: `series send` killed with SIGKILL at random moments while Postmark misbehaves.

The fake Postmark runs in its own process and records every message it accepts.
Runs are killed mid-flight again and again; then runs continue until nothing is
due. Whatever happened, each reader must have each part at most once, in order,
and every part that came due must have arrived.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline.store import open_store
from pipeline.store.schema import deliveries

from .fake_postmark import FakePostmarkProcess
from .helpers import import_command

# On SQLite and on PostgreSQL (SERIES_DATABASE_URL, passed on to every run).
pytestmark = pytest.mark.usefixtures("each_database")

TOKEN = "crash-test-token"
MONDAY = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
READERS = 120
# Days on which runs happen: part 1 at once, part 2 after 4 days, part 3 after 5 more.
RUN_DAYS = (0, 4, 9, 10)
KILLS_PER_DAY = 3


def test_kill_9_at_random_moments(example_copy: Path, tmp_path: Path) -> None:
    """No duplicate, nothing out of order, and nothing lost, across SIGKILLs and faults."""
    rng = random.Random(20261128)
    config = example_copy / "pyproject.toml"
    config.write_text(
        config.read_text() + "\n[tool.series.postmark]\nbatch_size = 10\n", encoding="utf-8"
    )
    readers = tmp_path / "readers.csv"
    readers.write_text(
        "email,series\n" + "".join(f"r{i:03d}@example.com,attachment\n" for i in range(READERS)),
        encoding="utf-8",
    )
    faults = {"500": 0.08, "429": 0.05, "drop-after": 0.08, "drop-before": 0.05}
    with FakePostmarkProcess(
        tmp_path / "postmark.jsonl", token=TOKEN, faults=faults, seed=7, retry_after="0"
    ) as fake:
        env = {
            **os.environ,
            "SERIES_WORKSPACE": str(example_copy),
            "SERIES_PROVIDER_URL": fake.url,
            "POSTMARK_SERVER_TOKEN": TOKEN,
        }
        subprocess.run(
            import_command(str(readers)),
            env=env,
            check=True,
            capture_output=True,
        )
        kills = 0
        for day in RUN_DAYS:
            when = MONDAY + timedelta(days=day)
            for attempt in range(KILLS_PER_DAY):
                # Each retry is 20 minutes later, so the killed run's 15-minute leases end.
                moment = when + timedelta(minutes=20 * attempt)
                kills += _run_and_kill(env, moment, fake, rng)
            _run_until_quiet(env, when + timedelta(minutes=20 * KILLS_PER_DAY))
        fake.set_faults(clear=True)
        _run_until_quiet(env, MONDAY + timedelta(days=30))
        accepted = fake.accepted

    assert kills >= 4, "the test killed too few runs to prove anything"
    parts_by_reader: dict[str, list[int]] = defaultdict(list)
    for message in sorted(accepted, key=lambda m: m["seq"]):
        parts_by_reader[message["to"]].append(int(message["tag"].rsplit("part", 1)[1]))
    assert len(parts_by_reader) == READERS
    for reader, parts in parts_by_reader.items():
        # Parts 1–3 are published (4 is a draft): each exactly once, in order.
        assert parts == [1, 2, 3], f"{reader} received parts {parts}"
    with open_store(example_copy) as store, store.connect() as conn:
        rows = conn.execute(sa.select(deliveries.c.state, deliveries.c.provider_message_id)).all()
    assert {state for state, _ in rows} == {"sent"}
    assert {message_id for _, message_id in rows} == {m["message_id"] for m in accepted}


def _run_and_kill(
    env: dict[str, str], when: datetime, fake: FakePostmarkProcess, rng: random.Random
) -> int:
    """Start a send and SIGKILL it, workers and all, a moment after its k-th request
    reached Postmark (k random from 1 to 4); 1 if it was still running then."""
    target = fake.stats().get("requests", 0) + rng.randint(1, 4)
    pause = rng.uniform(0, 0.05)
    process = subprocess.Popen(
        _send(when),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the workers die with it
    )
    deadline = time.monotonic() + 120
    while process.poll() is None and fake.stats().get("requests", 0) < target:
        assert time.monotonic() < deadline, "a run hung"
        time.sleep(0.005)
    time.sleep(pause)
    if process.poll() is not None:
        return 0
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    return 1


def _run_until_quiet(env: dict[str, str], when: datetime) -> None:
    """Run to completion, later and later, until a run finds nothing left to do."""
    for step in range(12):
        moment = when + timedelta(minutes=20 * step)
        result = subprocess.run(
            _send(moment), env=env, capture_output=True, text=True, timeout=300, check=False
        )
        summary = result.stdout.splitlines()[0] if result.stdout else result.stderr
        if summary.startswith("sent 0, failed 0, retried 0, unknown 0,") and "resolved" not in (
            result.stdout
        ):
            return
    raise AssertionError(f"runs at {when} never settled: {result.stdout} {result.stderr}")


def _send(when: datetime) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline",
        "send",
        "--now",
        when.isoformat(),
        "--provider",
        "postmark",
    ]
