"""Resend, SendGrid and Mailgun keep the guarantees Postmark keeps (DESIGN §7).

The real `series send` runs as subprocesses against each provider's fake, which runs
in a thread of this process and records every message it accepts, with its state in
SQLite and on a real PostgreSQL. Two runs started together must send each reader's
part once. Runs killed with SIGKILL at random moments while the provider loses
answers, fails and rate-limits, followed by runs until nothing is left, must leave
every reader with parts 1, 2 and 3 exactly once and in order, as the provider saw
them, and a ledger that says `sent` for each.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline.store import open_store
from pipeline.store.schema import deliveries, subscribers

from . import fake_mailgun, fake_resend, fake_sendgrid
from .fake_http import DROP_AFTER, DROP_BEFORE, FakeServer, Fault, Reply, Request
from .fake_mailgun import FakeMailgun
from .fake_resend import FakeResend
from .fake_sendgrid import FakeSendGrid
from .helpers import ENROLLED_AT, configure, run

KEY = "guarantees-test-key"
DOMAIN = "mg.steadyground.example"
MONDAY = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
READERS = 120
# When each round of runs starts. Part 1 is due at once, part 2 four days after it was
# sent, part 3 five days after part 2 (part 4 is a draft, part 5 is published only in
# 2027): each round starts late enough for the parts the last round sent to be due.
ROUNDS = (timedelta(0), timedelta(days=4, hours=4), timedelta(days=9, hours=8))
# Days to finish on, for readers whom a failure held back a step.
LATER_DAYS = (20, 30, 40)
KILLS_PER_ROUND = 2
# Sending processes per run, set in the config: the default is one per core (up to four),
# and a fixed number keeps the test the same on every machine.
WORKERS = 2
STEP = timedelta(minutes=20)  # longer than a lease (15 minutes) and the settle time (10)
# Seconds between accepting a send and answering it: a kill often falls in between.
LATENCY = 0.03
# What SendGrid's Email Activity API answers (twilio.com/docs/sendgrid/api-reference/
# email-activity, "Rate limits"); more in a minute get 429.
SENDGRID_SEARCHES_A_MINUTE = 6


class WorldClock:
    """The time the fake provider lives in: the moment the current run was told it is,
    moving on with real time (Mailgun files its events under it)."""

    def __init__(self) -> None:
        self.set(MONDAY)

    def set(self, moment: datetime) -> None:
        self._base = moment.timestamp()
        self._since = time.monotonic()

    def __call__(self) -> float:
        return self._base + time.monotonic() - self._since


class Rendezvous:
    """The first ``parties`` callers wait for each other (at most ``timeout`` seconds);
    later callers pass at once."""

    def __init__(self, parties: int, timeout: float = 10.0) -> None:
        self.left = parties
        self.timeout = timeout
        self.arrived = threading.Condition()

    def wait(self) -> None:
        with self.arrived:
            self.left -= 1
            self.arrived.notify_all()
            # A timeout means the other run never sent: the test's assertions say so.
            self.arrived.wait_for(lambda: self.left <= 0, self.timeout)


class Paced(FakeServer):
    """A fake whose sends (its POSTs) are answered ``latency`` seconds after they were
    accepted, and whose first sends wait for each other when ``together`` is set: with
    one more party than a run has workers, a second run is certainly sending too."""

    latency = 0.0
    together: Rendezvous | None = None

    def handle(self, request: Request) -> Reply:
        if request.method != "POST":
            return super().handle(request)
        if self.together is not None:
            self.together.wait()
        reply = super().handle(request)
        time.sleep(self.latency)
        return reply


class PacedResend(Paced, FakeResend):
    pass


class PacedSendGrid(Paced, FakeSendGrid):
    pass


class PacedMailgun(Paced, FakeMailgun):
    pass


@dataclass(frozen=True)
class Accepted:
    """One message the provider accepted: to whom, which part, and the ids it may be
    known by in the ledger."""

    to: str
    part: int
    ids: frozenset[str]


@dataclass(frozen=True)
class Setup:
    """What differs between providers: their fake, key, config and records."""

    name: str
    key_env: str
    tables: str
    send_path: str
    start: Callable[[WorldClock], Paced]
    accepted: Callable[[Any], list[Accepted]]
    # Requests that show a lost answer was settled: a repeated idempotency key, or a
    # lookup in the provider's log.
    settled: Callable[[Any], int]
    server_error: Reply
    rate_limited: Reply


def _part(tag: str) -> int:
    return int(tag.rsplit("part", 1)[1])


def _resend_accepted(fake: FakeResend) -> list[Accepted]:
    found = []
    for email in fake.accepted:
        tags = {tag["name"]: tag["value"] for tag in email["tags"]}
        (to,) = email["to"]
        part = _part(tags["series_part"])
        found.append(Accepted(parseaddr(to)[1].lower(), part, frozenset({email["id"]})))
    return found


def _resend_settled(fake: FakeResend) -> int:
    keys = Counter(r.header("Idempotency-Key") for r in fake.batch_requests())
    return sum(count - 1 for count in keys.values())


def _sendgrid_accepted(fake: FakeSendGrid) -> list[Accepted]:
    found = []
    for copy in fake.delivered:
        (category,) = copy.categories  # a request never mixes parts
        ids = frozenset({copy.message_id, copy.msg_id})  # the request's, the recipient's
        found.append(Accepted(copy.to, _part(category), ids))
    return found


def _mailgun_accepted(fake: FakeMailgun) -> list[Accepted]:
    return [
        Accepted(copy.to.lower(), _part(copy.tags[0]), frozenset({copy.message_id}))
        for copy in fake.delivered
    ]


SETUPS = {
    "resend": Setup(
        name="resend",
        key_env="RESEND_API_KEY",
        tables="[tool.series.resend]\nbatch_size = 10",
        send_path=fake_resend.BATCH_PATH,
        start=lambda clock: PacedResend(key=KEY),
        accepted=_resend_accepted,
        settled=_resend_settled,
        server_error=fake_resend.error(500, "internal_server_error", fake_resend.SERVER_TEXT),
        rate_limited=fake_resend.error(
            429, "rate_limit_exceeded", fake_resend.RATE_TEXT, {"retry-after": "1"}
        ),
    ),
    "sendgrid": Setup(
        name="sendgrid",
        key_env="SENDGRID_API_KEY",
        tables="[tool.series.sendgrid]\nbatch_size = 10",
        send_path=fake_sendgrid.SEND_PATH,
        # The Email Activity add-on is there: lost answers can be looked up.
        start=lambda clock: PacedSendGrid(key=KEY, activity=True, clock=clock),
        accepted=_sendgrid_accepted,
        settled=lambda fake: len(fake.requests_to(fake_sendgrid.ACTIVITY_PATH, "GET")),
        server_error=fake_sendgrid.server_error(500),
        rate_limited=fake_sendgrid.rate_limited(reset_in=1),
    ),
    "mailgun": Setup(
        name="mailgun",
        key_env="MAILGUN_API_KEY",
        tables=f'[tool.series.mailgun]\ndomain = "{DOMAIN}"\nbatch_size = 10',
        send_path=f"/v3/{DOMAIN}/messages",
        start=lambda clock: PacedMailgun(key=KEY, domain=DOMAIN, clock=clock),
        accepted=_mailgun_accepted,
        settled=lambda fake: len(fake.requests_to(f"/v3/{DOMAIN}/events", "GET")),
        server_error=fake_mailgun.server_error(500),
        rate_limited=fake_mailgun.too_many(retry_after="1"),
    ),
}


@pytest.fixture(params=sorted(SETUPS))
def setup(request: pytest.FixtureRequest) -> Setup:
    return SETUPS[request.param]


@dataclass
class Harness:
    """The example workspace with READERS readers, the provider's fake, and the
    environment a `series send` subprocess needs to reach it."""

    root: Path
    setup: Setup
    fake: Paced
    clock: WorldClock
    env: dict[str, str]

    def command(self, when: datetime) -> list[str]:
        return [
            sys.executable,
            "-m",
            "pipeline",
            "send",
            "--provider",
            self.setup.name,
            "--now",
            when.isoformat(),
        ]

    def start(self, when: datetime) -> subprocess.Popen[str]:
        self.clock.set(when)
        return subprocess.Popen(
            self.command(when),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a kill takes the run and its workers at once
        )

    def send(self, when: datetime) -> str:
        """One run to completion: its stdout (a traceback fails the test)."""
        out, err = self.start(when).communicate(timeout=300)
        assert "Traceback" not in err, err
        return out

    def sends_seen(self) -> int:
        return len(self.fake.requests_to(self.setup.send_path, "POST"))

    def accepted(self) -> list[Accepted]:
        """What the provider accepted, in order (read once every run has ended)."""
        return self.setup.accepted(self.fake)

    def ledger(self) -> list[tuple[str, int, str, str | None]]:
        """(email, part, state, provider message id) of every delivery."""
        with open_store(self.root) as store, store.connect() as conn:
            rows = conn.execute(
                sa.select(
                    subscribers.c.email,
                    deliveries.c.part,
                    deliveries.c.state,
                    deliveries.c.provider_message_id,
                ).join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
            ).all()
        return [(email, part, state, message_id) for email, part, state, message_id in rows]


@pytest.fixture
def harness(
    example_copy: Path, tmp_path: Path, setup: Setup, each_database: str
) -> Iterator[Harness]:
    """The example with READERS readers, its state in SQLite or on the real PostgreSQL
    (where an answer is recorded in a thread beside the send loop, and the list is
    sent in shares), and the provider's fake started."""
    configure(example_copy, f"workers = {WORKERS}", setup.tables)
    readers = tmp_path / "readers.csv"
    readers.write_text(
        "email,series\n" + "".join(f"r{i:03d}@example.com,attachment\n" for i in range(READERS)),
        encoding="utf-8",
    )
    code, out, err = run(example_copy, "subscribers", "import", str(readers), "--now", ENROLLED_AT)
    assert code == 0, out + err
    clock = WorldClock()
    with setup.start(clock) as fake:
        env = {
            **os.environ,
            "SERIES_WORKSPACE": str(example_copy),
            "SERIES_PROVIDER_URL": fake.url,
            setup.key_env: KEY,
        }
        if each_database.startswith("sqlite"):
            env.pop("SERIES_DATABASE_URL", None)
        else:
            env["SERIES_DATABASE_URL"] = each_database
        yield Harness(example_copy, setup, fake, clock, env)


def test_two_runs_at_once(harness: Harness) -> None:
    """Two `series send` processes sending at the same time: each part 1 accepted once."""
    harness.fake.together = Rendezvous(WORKERS + 1)
    processes = [harness.start(MONDAY) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in processes]

    assert [p.returncode for p in processes] == [0, 0], outputs
    sent = [_count(out, "sent") for out, _ in outputs]
    assert sum(sent) == READERS and min(sent) > 0, outputs  # both sent: they overlapped
    accepted = harness.accepted()
    assert Counter((a.to, a.part) for a in accepted) == {
        (f"r{i:03d}@example.com", 1): 1 for i in range(READERS)
    }
    ledger = harness.ledger()
    assert Counter(state for _, _, state, _ in ledger) == {"sent": READERS}
    _assert_ids_match(ledger, accepted)


def test_kill_9_at_random_moments(harness: Harness) -> None:
    """Across SIGKILLs, lost answers, 5xx and 429: parts 1–3 once each, in order, all sent."""
    rng = random.Random(20261130)
    fake, send_path = harness.fake, harness.setup.send_path
    fake.latency = LATENCY
    # The faults of each round, taken by its first sends in order, wherever they land.
    faults: list[list[Fault]] = [
        [DROP_AFTER, harness.setup.server_error, harness.setup.rate_limited, DROP_BEFORE],
        [DROP_AFTER, DROP_BEFORE],
        [DROP_AFTER],
    ]
    kills = 0
    for start, round_faults in zip(ROUNDS, faults, strict=True):
        when = MONDAY + start
        for fault in round_faults:
            fake.fail_next(send_path, fault)
        for attempt in range(KILLS_PER_ROUND):
            kills += _run_and_kill(harness, when + STEP * attempt, rng)
        _run_until_quiet(harness, when + STEP * KILLS_PER_ROUND)
    fake.latency = 0.0
    for day in LATER_DAYS:
        if _complete(harness):
            break
        _run_until_quiet(harness, MONDAY + timedelta(days=day))

    assert kills >= 4, "the test killed too few runs to prove anything"
    assert harness.setup.settled(fake) > 0, "no lost answer was ever settled"
    accepted = harness.accepted()
    parts: dict[str, list[int]] = defaultdict(list)
    for message in accepted:  # in the order the provider accepted them
        parts[message.to].append(message.part)
    assert sorted(parts) == [f"r{i:03d}@example.com" for i in range(READERS)]
    wrong = {reader: got for reader, got in parts.items() if got != [1, 2, 3]}
    assert wrong == {}, "readers who did not get parts 1, 2, 3 once each, in order"
    ledger = harness.ledger()
    assert Counter(state for _, _, state, _ in ledger) == {"sent": 3 * READERS}
    _assert_ids_match(ledger, accepted)


@pytest.mark.parametrize("setup", ["sendgrid"], indirect=True)
def test_sendgrid_settles_more_lost_answers_than_six_searches_a_minute(harness: Harness) -> None:
    """Ten deliveries whose answer was lost are all settled by runs 20 minutes apart."""
    fake = harness.fake
    assert isinstance(fake, FakeSendGrid)
    fake.activity_limit = SENDGRID_SEARCHES_A_MINUTE
    fake.fail_next(fake_sendgrid.SEND_PATH, DROP_AFTER)  # a batch of 10: accepted, unanswered

    outputs = [harness.send(MONDAY + STEP * step) for step in range(3)]

    assert _count(outputs[0], "unknown") == 10
    accepted = harness.accepted()
    assert Counter(a.to for a in accepted) == {f"r{i:03d}@example.com": 1 for i in range(READERS)}
    ledger = harness.ledger()
    assert Counter(state for _, _, state, _ in ledger) == {"sent": READERS}, outputs
    _assert_ids_match(ledger, accepted)


def _run_and_kill(harness: Harness, when: datetime, rng: random.Random) -> int:
    """Start a send and SIGKILL it, workers and all, a moment after its k-th send
    reached the provider (k random); 1 if it was still running then."""
    sends = harness.sends_seen() + rng.randint(1, 4)
    pause = rng.uniform(0, 2 * LATENCY)
    process = harness.start(when)
    deadline = time.monotonic() + 60
    while process.poll() is None and harness.sends_seen() < sends:
        assert time.monotonic() < deadline, "a run hung"
        time.sleep(0.002)
    time.sleep(pause)
    if process.poll() is not None:
        process.communicate()
        return 0
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)
    return 1


def _run_until_quiet(harness: Harness, when: datetime) -> None:
    """Run to completion, STEP later each time, until a run finds nothing to do."""
    out = ""
    for step in range(12):
        out = harness.send(when + STEP * step)
        if out.startswith("sent 0, failed 0, retried 0, unknown 0,") and "resolved" not in out:
            return
    raise AssertionError(f"runs from {when} never settled: {out}")


def _complete(harness: Harness) -> bool:
    """Whether the ledger has every reader's parts 1–3 sent."""
    sent = [(email, part) for email, part, state, _ in harness.ledger() if state == "sent"]
    return len(set(sent)) == 3 * READERS


def _count(summary: str, what: str) -> int:
    """A number from the summary line, e.g. 'sent' in "sent 60, failed 0, …"."""
    for item in summary.splitlines()[0].split(", "):
        name, _, number = item.partition(" ")
        if name == what:
            return int(number)
    raise AssertionError(f"no {what!r} in {summary!r}")


def _assert_ids_match(
    ledger: list[tuple[str, int, str, str | None]], accepted: list[Accepted]
) -> None:
    """Each ledger row names the message the provider accepted for that reader and part."""
    ids = {(a.to, a.part): a.ids for a in accepted}
    unmatched = [
        (email, part, message_id)
        for email, part, _, message_id in ledger
        if message_id not in ids.get((email, part), frozenset())
    ]
    assert unmatched == []
