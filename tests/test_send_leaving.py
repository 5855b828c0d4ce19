"""A reader who leaves after the run claimed their delivery, before it goes to the
provider, does not get it: unsubscribed (from everything or from the series), paused,
bounced or erased between the claim and the request (DESIGN: never after
unsubscribing). The request goes to the others; the one who left is given back, so
their ledger has no delivery of it, and counted skipped. On both databases, and
whether the reader leaves before the request's first attempt or during a backoff
before a retry."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from pipeline.config import load_config
from pipeline.providers import PROVIDER_URL_ENV, get_provider
from pipeline.providers.resend import KEY_ENV
from pipeline.send import RETRIES, SendOptions, SendReport, send_due
from pipeline.steering import set_paused
from pipeline.store import Store, ledger, open_store
from pipeline.store.schema import deliveries, subscribers
from pipeline.subscribers import remove, unsubscribe

from .conftest import POSTMARK_TOKEN
from .fake_http import Reply, Request
from .fake_postmark import BATCH_PATH, FakePostmark
from .fake_resend import BATCH_PATH as RESEND_BATCH
from .fake_resend import DEFAULT_KEY, SERVER_TEXT, FakeResend, error
from .helpers import ENROLLED_AT, configure, delivery_states, enroll_examples, run

MONDAY = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
LEAVER = "x@example.com"

pytestmark = pytest.mark.usefixtures("each_database")


def _bounce(store: Store, email: str, now: datetime) -> None:
    with store.begin() as conn:
        reader = conn.execute(
            sa.select(subscribers.c.id).where(subscribers.c.email == email)
        ).scalar_one()
        ledger.mark_subscriber(conn, reader, "bounced", actor="webhook", reason="hard", now=now)


LEAVING: Mapping[str, Callable[[Store, str, datetime], object]] = {
    "unsubscribed": lambda store, email, now: unsubscribe(store, email, now=now),
    "unsubscribed from the series": lambda store, email, now: unsubscribe(
        store, email, now=now, series="attachment"
    ),
    "paused": lambda store, email, now: set_paused(store, email, paused=True, now=now),
    "bounced": _bounce,
    "erased": lambda store, email, now: remove(store, email, now=now),
}


class LeavingPostmark(FakePostmark):
    """The fake Postmark, with LEAVER leaving at a chosen moment: while the request
    before theirs is on its way, once their delivery is claimed (``before_retry``
    False), or when their own request first arrives, which is then answered 503 and
    retried (True)."""

    def __init__(self, root: Path, leave: Callable[[Store, str, datetime], object], **kw: Any):
        super().__init__(**kw)
        self.root = root
        self.leave = leave
        self.before_retry = False
        self.left = threading.Event()

    def respond(
        self, method: str, target: str, headers: Mapping[str, str], raw: bytes
    ) -> tuple[Any, float]:
        if target.startswith(BATCH_PATH) and not self.left.is_set():
            theirs = any(parseaddr(m["To"])[1] == LEAVER for m in orjson.loads(raw))
            with open_store(self.root) as store:
                if theirs == self.before_retry and (theirs or _claimed(store)):
                    self.leave(store, LEAVER, MONDAY)
                    self.left.set()
                    if theirs:
                        self.fail_next("503", retry_after="1")
        return super().respond(method, target, headers, raw)


def _claimed(store: Store) -> bool:
    """Whether LEAVER's delivery is claimed, waiting up to a second for it: the run
    claims the next request while the one before is on its way."""
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:
        with store.connect() as conn:
            claimed = conn.execute(
                sa.select(sa.func.count())
                .select_from(deliveries.join(subscribers))
                .where(subscribers.c.email == LEAVER, deliveries.c.state == "claimed")
            ).scalar_one()
        if claimed:
            return True
        time.sleep(0.01)
    return False


def send_while_leaving(
    root: Path, monkeypatch: pytest.MonkeyPatch, how: str, *, before_retry: bool
) -> tuple[list[str], SendReport, dict[str, int], bool]:
    """Readers a1, a2, x, a3 (x leaves as ``how`` says), two per Postmark request: the
    addresses the provider accepted, the report, the ledger's states, and whether x
    left during the run."""
    configure(root, 'provider = "postmark"', "[tool.series.postmark]\nbatch_size = 2")
    csv = root / "readers.csv"
    names = ["a1", "a2", "x", "a3"]
    csv.write_text(
        "email,series\n" + "".join(f"{n}@example.com,attachment\n" for n in names),
        encoding="utf-8",
    )
    code, out, err = run(root, "subscribers", "import", str(csv), "--now", ENROLLED_AT)
    assert code == 0, out + err
    fake = LeavingPostmark(root, LEAVING[how], token=POSTMARK_TOKEN)
    fake.before_retry = before_retry
    with fake:
        monkeypatch.setenv("POSTMARK_SERVER_TOKEN", POSTMARK_TOKEN)
        monkeypatch.setenv("SERIES_PROVIDER_URL", fake.url)
        report = _send(root, "postmark")
        accepted = [parseaddr(record["to"])[1] for record in fake.accepted]
    with open_store(root) as store, store.connect() as conn:
        states = delivery_states(conn)
    return accepted, report, states, fake.left.is_set()


@pytest.mark.parametrize("how", list(LEAVING))
@pytest.mark.parametrize("before_retry", [False, True], ids=["claimed", "in-backoff"])
def test_a_reader_who_leaves_after_the_claim_is_not_sent_the_part(
    example_copy: Path, monkeypatch: pytest.MonkeyPatch, how: str, before_retry: bool
) -> None:
    accepted, report, states, left = send_while_leaving(
        example_copy, monkeypatch, how, before_retry=before_retry
    )
    assert left, "x never left: the test did not test anything"
    # x's request went to a3 alone.
    assert sorted(accepted) == ["a1@example.com", "a2@example.com", "a3@example.com"], accepted
    # x's claim was given back: no delivery of theirs, nothing claimed or unknown.
    assert states == {"sent": 3}, states
    assert (report.sent, report.skipped, report.failed, report.unknown) == (3, 1, 0, 0), report


class LeavingResend(FakeResend):
    """The fake Resend; while ``leaving`` is set, the next batch request makes that
    reader leave (as ``how`` says) and is answered 503 (to be retried)."""

    def __init__(self, root: Path, how: str, status: int = 503) -> None:
        super().__init__()
        self.root = root
        self.leave = LEAVING[how]
        self.status = status  # 504: a gateway gave up, the request may have gone through
        self.leaving: str | None = None

    def handle(self, request: Request) -> Reply:
        reader, self.leaving = self.leaving, None
        if reader is not None and request.path == RESEND_BATCH:
            with open_store(self.root) as store:
                self.leave(store, reader, MONDAY)
            return error(self.status, "internal_server_error", SERVER_TEXT)
        return super().handle(request)


def _send(root: Path, provider_name: str) -> SendReport:
    """One `send_due` at MONDAY through ``provider_name`` (its URL and key set), backoffs
    not waited out."""
    config = load_config(root)
    provider = get_provider(provider_name, config)
    try:
        with open_store(root) as store:
            return send_due(config, store, provider, SendOptions(now=MONDAY, sleep=lambda _: None))
    finally:
        provider.close()


@pytest.mark.parametrize("how", ["unsubscribed", "erased"])
def test_an_interrupted_request_is_repeated_without_a_reader_who_left_meanwhile(
    example_copy: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A first run's request never reaches Resend, but the run cannot know (the
    connection drops): its six deliveries are unknown. The next run repeats it under
    its key; the first repeat is answered 503, and meanwhile one reader leaves. The
    retry goes under the same key without them: the five others get their part, the
    one who left stays unknown (or has no delivery once erased). No line of the report
    names the reader (an erased address must not reach the logs)."""
    root = enroll_examples(example_copy)
    with LeavingResend(root, how) as fake:
        monkeypatch.setenv(PROVIDER_URL_ENV, fake.url)
        monkeypatch.setenv(KEY_ENV, DEFAULT_KEY)
        fake.fail_next(RESEND_BATCH, "drop-before", times=RETRIES + 1)
        first = _send(root, "resend")
        assert (first.sent, first.unknown) == (0, 6), first
        fake.leaving = "asa.berg@example.com"
        second = _send(root, "resend")
        requests = fake.batch_requests()[RETRIES + 1 :]
        accepted = [address for email in fake.accepted for address in email["to"]]
    assert fake.leaving is None, "nobody left: the test did not test anything"
    assert [len(r.json) for r in requests] == [6, 5]
    assert len({r.header("Idempotency-Key") for r in requests}) == 1
    assert len(accepted) == 5 and not any("asa.berg" in a for a in accepted), accepted
    with open_store(root) as store, store.connect() as conn:
        states = delivery_states(conn)
    kept = 0 if how == "erased" else 1
    assert states == {"sent": 5, **({"unknown": 1} if kept else {})}, states
    assert (second.resolved, second.unknown) == (5, kept), second
    assert not any("berg" in p.lower() for p in second.problems), list(second.problems)


@pytest.mark.parametrize("how", ["unsubscribed", "erased"])
def test_a_request_that_may_have_gone_is_repeated_under_its_key_without_who_left(
    example_copy: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Resend's first answer is a gateway's 504 (it may have gone through; here it did
    not), and meanwhile one of the six readers leaves. The request is repeated under
    the same idempotency key without them, so the five others get their part now; the
    one who left stays unknown (the first attempt may have reached them), or has no
    delivery once erased."""
    root = enroll_examples(example_copy)
    with LeavingResend(root, how, status=504) as fake:
        monkeypatch.setenv(PROVIDER_URL_ENV, fake.url)
        monkeypatch.setenv(KEY_ENV, DEFAULT_KEY)
        fake.leaving = "asa.berg@example.com"
        report = _send(root, "resend")
        requests = fake.batch_requests()
        accepted = [address for email in fake.accepted for address in email["to"]]
    assert fake.leaving is None, "nobody left: the test did not test anything"
    first, second = requests
    assert first.header("Idempotency-Key") == second.header("Idempotency-Key")
    assert len(first.json) == 6 and len(second.json) == 5
    assert len(accepted) == 5 and not any("asa.berg" in a for a in accepted), accepted
    with open_store(root) as store, store.connect() as conn:
        states = delivery_states(conn)
    if how == "erased":
        assert states == {"sent": 5} and (report.sent, report.unknown) == (5, 0), report
    else:
        assert states == {"sent": 5, "unknown": 1} and (report.sent, report.unknown) == (5, 1)


def test_an_interrupted_request_is_repeated_without_a_reader_who_left_between_runs(
    example_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, but the reader unsubscribes between the two runs: the next run repeats
    the request under its key to the five others, and says that the sixth stays
    unknown."""
    root = enroll_examples(example_copy)
    with LeavingResend(root, "unsubscribed") as fake:
        monkeypatch.setenv(PROVIDER_URL_ENV, fake.url)
        monkeypatch.setenv(KEY_ENV, DEFAULT_KEY)
        fake.fail_next(RESEND_BATCH, "drop-before", times=RETRIES + 1)
        assert _send(root, "resend").unknown == 6
        code, out, err = run(root, "subscribers", "unsubscribe", "asa.berg@example.com")
        assert code == 0, out + err
        second = _send(root, "resend")
        requests = fake.batch_requests()[RETRIES + 1 :]
        accepted = [address for email in fake.accepted for address in email["to"]]
    assert [len(r.json) for r in requests] == [5]
    assert len(accepted) == 5 and not any("asa.berg" in a for a in accepted), accepted
    assert (second.resolved, second.unknown) == (5, 1), second
    assert (
        "1 deliveries of an interrupted request stay unknown: asa.berg@example.com has "
        "left or paused since" in list(second.problems)
    )
