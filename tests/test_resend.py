"""ResendProvider against a fake Resend speaking real HTTP on 127.0.0.1: the contract
(request shape, every documented error class, idempotency keys, rate-limit headers,
suppression paging), then `series send` through it end to end."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline.config import Address, load_config
from pipeline.providers import PROVIDER_URL_ENV, get_provider
from pipeline.providers.base import Message, Pending, ProviderError
from pipeline.providers.resend import KEY_ENV, ResendProvider
from pipeline.send import RETRIES, SendOptions, send_due
from pipeline.store import open_store
from pipeline.store.schema import deliveries

from .conftest import FIXTURES
from .fake_http import Reply
from .fake_resend import (
    BATCH_PATH,
    MONTHLY_QUOTA_TEXT,
    QUOTA_TEXT,
    RATE_TEXT,
    SERVER_TEXT,
    SUPPRESSIONS_PATH,
    FakeResend,
    error,
)
from .helpers import closed_port, enroll_examples, flags, run

KEY = "re_4f1c9a7e_not_a_real_key"
SENDER = Address("editor@blog.example", "Demo Editor")
UNSUBSCRIBE = "<https://blog.example/unsubscribe/tok123>"
INVALID = "broken@example.com"
MONDAY = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture
def fake() -> Iterator[FakeResend]:
    with FakeResend(key=KEY, invalid={INVALID}) as server:
        yield server


@pytest.fixture
def provider(fake: FakeResend) -> Iterator[ResendProvider]:
    provider = ResendProvider(base_url=fake.url, timeout=10)
    yield provider
    provider.close()


def message(key: str = "key-1", to: str = "ann@example.com", name: str = "Ann Reader") -> Message:
    return Message(
        key=key,
        sender=SENDER,
        to=Address(to, name),
        subject="Part 1: Getting started",
        html="<p>Hello Ann</p>",
        text="Hello Ann",
        reply_to="editor@blog.example",
        headers={
            "List-Unsubscribe": UNSUBSCRIBE,
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
        tag="demo-part1",
    )


def send_error(
    provider: ResendProvider, messages: list[Message] | None = None, key: str = "b"
) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        provider.send(messages or [message()], batch_key=key)
    return caught.value


# -- the request --------------------------------------------------------------


def test_batch_request_has_resend_shape(fake: FakeResend, provider: ResendProvider) -> None:
    """One batch is one POST /emails/batch: bearer key, idempotency key, Resend's fields."""
    provider.send([message()], batch_key="series-abc")

    [request] = fake.requests
    assert (request.method, request.path) == ("POST", BATCH_PATH)
    assert request.header("Authorization") == f"Bearer {KEY}"
    assert request.header("Idempotency-Key") == "series-abc"
    assert request.header("x-batch-validation") == "permissive"
    assert request.header("Content-Type") == "application/json"
    assert request.json == [
        {
            "from": '"Demo Editor" <editor@blog.example>',
            "to": ['"Ann Reader" <ann@example.com>'],
            "subject": "Part 1: Getting started",
            "html": "<p>Hello Ann</p>",
            "text": "Hello Ann",
            "reply_to": "editor@blog.example",
            "headers": {
                "List-Unsubscribe": UNSUBSCRIBE,
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            },
            "tags": [
                {"name": "delivery_key", "value": "key-1"},
                {"name": "series_part", "value": "demo-part1"},
            ],
        }
    ]


def test_each_recipient_keeps_its_own_headers(fake: FakeResend, provider: ResendProvider) -> None:
    """Every email of a batch carries its own reader's List-Unsubscribe link."""
    ann = message("k-ann")
    bob = message("k-bob", to="bob@example.com", name="Bob").replace(
        headers={"List-Unsubscribe": "<https://blog.example/u/bob>"}
    )

    provider.send([ann, bob], batch_key="b")

    assert [e["headers"].get("List-Unsubscribe") for e in fake.accepted] == [
        UNSUBSCRIBE,
        "<https://blog.example/u/bob>",
    ]


def test_tags_keep_to_resend_characters(fake: FakeResend, provider: ResendProvider) -> None:
    """A message tag outside Resend's tag characters is made valid, not refused."""
    odd = message().replace(tag="déjà vu/part 1" + "x" * 300)

    [result] = provider.send([odd], batch_key="b")

    assert result.outcome == "sent"
    [tag] = [t["value"] for t in fake.accepted[0]["tags"] if t["name"] == "series_part"]
    assert tag.startswith("d_j__vu_part_1x") and len(tag) == 256


def test_provider_url_override_reaches_the_fake(
    fake: FakeResend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SERIES_PROVIDER_URL sends the registry's resend provider (and its batch size) to the fake."""
    shutil.copy(FIXTURES / "config" / "config_valid.toml", tmp_path / "series.toml")
    with (tmp_path / "series.toml").open("a", encoding="utf-8") as config:
        config.write("\n[resend]\nbatch_size = 20\n")
    monkeypatch.setenv(PROVIDER_URL_ENV, fake.url)

    provider = get_provider("resend", load_config(tmp_path))
    try:
        [result] = provider.send([message()], batch_key="b")
    finally:
        provider.close()

    assert provider.batch_size == 20
    assert (result.outcome, result.message_id) == ("sent", fake.accepted[0]["id"])


def test_provider_facts_for_the_send_loop() -> None:
    """Idempotent for 24 hours, at most 100 emails per batch, no managed unsubscribes."""
    provider = ResendProvider(base_url="http://127.0.0.1:9", batch_size=500)

    assert (provider.idempotent, provider.idempotency_window) == (True, 86400)
    assert provider.batch_size == 100
    assert provider.managed_unsubscribe is None
    with pytest.raises(ProviderError, match="cannot look up"):
        provider.lookup([Pending("k", "ann@example.com", MONDAY)])


# -- per-message results ------------------------------------------------------


def test_ids_map_to_messages_in_order(fake: FakeResend, provider: ResendProvider) -> None:
    """The reply's ids become each message's message_id, in request order."""
    results = provider.send(
        [message(f"k{i}", to=f"r{i}@example.com") for i in range(3)], batch_key="b"
    )

    assert [(r.key, r.outcome) for r in results] == [(f"k{i}", "sent") for i in range(3)]
    assert [r.message_id for r in results] == [e["id"] for e in fake.accepted]
    assert [e["to"] for e in fake.accepted] == [
        [f'"Ann Reader" <r{i}@example.com>'] for i in range(3)
    ]


def test_invalid_recipient_fails_alone_and_bounces(
    fake: FakeResend, provider: ResendProvider
) -> None:
    """Permissive validation: a bad `to` fails that message (bounced); the rest are sent."""
    results = provider.send(
        [message("k-a", to="a@example.com"), message("k-bad", to=INVALID), message("k-c")],
        batch_key="b",
    )

    first, bad, last = results
    assert (first.outcome, last.outcome) == ("sent", "sent")
    assert [first.message_id, last.message_id] == [e["id"] for e in fake.accepted]
    assert (bad.outcome, bad.subscriber_status, bad.message_id) == ("failed", "bounced", None)
    assert bad.error is not None and "`to`" in bad.error


def test_item_error_about_the_sender_keeps_the_subscriber(
    fake: FakeResend, provider: ResendProvider
) -> None:
    """An invalid reply_to fails the message before any request, without blaming the
    recipient."""
    [result] = provider.send([message().replace(reply_to="not an address")], batch_key="b")

    assert (result.outcome, result.subscriber_status) == ("failed", None)
    assert result.error == "not sent: 'not an address' is not an email address"
    assert fake.batch_requests() == []


def test_reply_that_does_not_match_is_unknown(fake: FakeResend, provider: ResendProvider) -> None:
    """A 200 with fewer ids than emails leaves the batch's outcome unknown, not retried."""
    fake.fail_next(BATCH_PATH, Reply(200, {"data": [{"id": "only-one"}]}))

    error_ = send_error(provider, [message("k1"), message("k2")])

    assert flags(error_) == (False, True, False)


# -- whole-request failures ---------------------------------------------------


def test_invalid_key_stops_the_run_and_hides_the_key(
    fake: FakeResend, provider: ResendProvider
) -> None:
    """403 invalid_api_key is an auth error naming the variable, never the key."""
    fake.key = "re_some_other_key"

    error_ = send_error(provider)

    assert flags(error_) == (False, False, True)
    assert str(error_) == (
        "Resend refused the batch (403 invalid_api_key: API key is invalid.); check RESEND_API_KEY"
    )
    assert KEY not in f"{error_} {error_!r} {error_.args}"
    assert error_.__cause__ is None and error_.__context__ is None


def test_key_echoed_by_the_server_is_scrubbed(fake: FakeResend, provider: ResendProvider) -> None:
    """Text from Resend that happens to contain the key reaches nobody with the key in it."""
    fake.fail_next(BATCH_PATH, error(422, "validation_error", f"key {KEY} cannot send this"))

    error_ = send_error(provider)

    assert KEY not in str(error_)
    assert "key *** cannot send this" in str(error_)


def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without RESEND_API_KEY the provider refuses to start, naming the variable."""
    monkeypatch.delenv(KEY_ENV)

    with pytest.raises(ProviderError) as caught:
        ResendProvider(base_url="http://127.0.0.1:9")

    assert caught.value.auth
    assert str(caught.value) == (
        "the resend provider needs an API key: set the RESEND_API_KEY environment variable"
    )


def test_unverified_domain_stops_the_run(fake: FakeResend, provider: ResendProvider) -> None:
    """403 validation_error (an unverified sending domain) stops the run, in Resend's words."""
    text = "The blog.example domain is not verified. Please, add and verify your domain."
    fake.fail_next(BATCH_PATH, error(403, "validation_error", text))

    error_ = send_error(provider)

    assert error_.auth
    assert str(error_) == f"Resend refused the batch (403 validation_error: {text})"


def test_oversized_batch_is_final(fake: FakeResend, provider: ResendProvider) -> None:
    """More than 100 emails is a 422 for the whole batch: not retried, nothing sent."""
    provider.batch_size = 101  # only to prove what the fake (and Resend) would say
    error_ = send_error(provider, [message(f"k{i}") for i in range(101)])

    assert flags(error_) == (False, False, False)
    assert "422 validation_error" in str(error_)
    assert fake.accepted == []


def test_validation_error_is_final(fake: FakeResend, provider: ResendProvider) -> None:
    """400 validation_error fails the batch without a retry."""
    fake.fail_next(BATCH_PATH, error(400, "validation_error", "We found an error."))

    error_ = send_error(provider)

    assert flags(error_) == (False, False, False)
    assert str(error_) == "Resend rejected the batch (400 validation_error: We found an error.)"


def test_same_key_other_body_is_unknown_not_resent(
    fake: FakeResend, provider: ResendProvider
) -> None:
    """409 invalid_idempotent_request: maybe sent, never retried blindly; nothing new sent."""
    provider.send([message("k1")], batch_key="series-1")

    error_ = send_error(provider, [message("k2", to="bob@example.com")], key="series-1")

    assert flags(error_) == (False, True, False)
    assert "invalid_idempotent_request" in str(error_)
    assert [e["tags"][0]["value"] for e in fake.accepted] == ["k1"]


def test_same_key_while_in_progress_is_retryable(fake: FakeResend) -> None:
    """A repeat that meets the first request still processing gets 409 concurrent_… (retry);
    once the first is done, the repeat gets its answer and the email went out once."""
    fake.processing = 1.0
    provider = ResendProvider(base_url=fake.url, timeout=0.3)
    try:
        timed_out = send_error(provider)
        concurrent = send_error(provider)
        fake.processing = 0.0
        for _ in range(50):  # the first request finishes within about a second
            try:
                [result] = provider.send([message()], batch_key="b")
                break
            except ProviderError as exc:
                assert "concurrent_idempotent_requests" in str(exc)
                time.sleep(0.1)
    finally:
        provider.close()

    assert flags(timed_out) == (True, True, False)
    assert flags(concurrent) == (True, True, False)
    assert "concurrent_idempotent_requests" in str(concurrent)
    [accepted] = fake.accepted
    assert (result.outcome, result.message_id) == ("sent", accepted["id"])


@pytest.mark.parametrize(
    ("headers", "wait"),
    [({"retry-after": "3", "ratelimit-reset": "9"}, 3.0), ({"ratelimit-reset": "2"}, 2.0)],
)
def test_rate_limit_is_retryable_after_the_hint(
    fake: FakeResend, provider: ResendProvider, headers: dict[str, str], wait: float
) -> None:
    """429 rate_limit_exceeded: retry after retry-after, else after ratelimit-reset."""
    fake.fail_next(BATCH_PATH, error(429, "rate_limit_exceeded", RATE_TEXT, headers))

    error_ = send_error(provider)

    assert flags(error_) == (True, False, False)
    assert error_.retry_after == wait
    assert fake.accepted == []


@pytest.mark.parametrize(
    ("name", "text", "period"),
    [
        ("daily_quota_exceeded", QUOTA_TEXT, "daily"),
        ("monthly_quota_exceeded", MONTHLY_QUOTA_TEXT, "monthly"),
    ],
)
def test_used_up_quota_stops_the_run(
    fake: FakeResend, provider: ResendProvider, name: str, text: str, period: str
) -> None:
    """A 429 for an exhausted quota stops the run: waiting seconds would not help."""
    fake.fail_next(BATCH_PATH, error(429, name, text, {"retry-after": "1"}))

    error_ = send_error(provider)

    assert flags(error_) == (False, False, True)
    assert str(error_).startswith(f"Resend's {period} sending quota is used up (429 {name}: ")


@pytest.mark.parametrize(("status", "maybe_sent"), [(500, False), (502, True), (503, False)])
def test_server_errors_are_retryable(
    fake: FakeResend, provider: ResendProvider, status: int, maybe_sent: bool
) -> None:
    """5xx is retryable; a gateway's 502 may hide a request Resend took (so it is retried
    under the same key, never as a new request)."""
    fake.fail_next(BATCH_PATH, error(status, "application_error", SERVER_TEXT))

    assert flags(send_error(provider)) == (True, maybe_sent, False)


@pytest.mark.parametrize("status", [401, 403])
def test_unauthorised_statuses_are_auth_errors(
    fake: FakeResend, provider: ResendProvider, status: int
) -> None:
    """401 and 403, whatever their name, stop the run."""
    fake.fail_next(BATCH_PATH, error(status, "missing_api_key", "Missing API key."))

    assert send_error(provider).auth


def test_dropped_answer_is_replayed_under_the_same_key(
    fake: FakeResend, provider: ResendProvider
) -> None:
    """Accepted, then the connection drops: maybe sent and retryable; the repeat under the
    same key gets the stored answer, and each email was accepted exactly once."""
    fake.fail_next(BATCH_PATH, "drop-after")
    messages = [message("k1"), message("k2", to="bob@example.com")]

    dropped = send_error(provider, messages, key="series-x")
    results = provider.send(messages, batch_key="series-x")

    assert flags(dropped) == (True, True, False)
    assert [r.outcome for r in results] == ["sent", "sent"]
    assert [r.message_id for r in results] == [e["id"] for e in fake.accepted]
    assert len(fake.batch_requests()) == 2


def test_nobody_listening_sent_nothing() -> None:
    """A refused connection is retryable and certainly sent nothing."""
    provider = ResendProvider(base_url=f"http://127.0.0.1:{closed_port()}", timeout=10)
    try:
        error_ = send_error(provider)
    finally:
        provider.close()

    assert flags(error_) == (True, False, False)


# -- rate-limit headers ---------------------------------------------------------


def test_no_request_left_waits_for_the_reset() -> None:
    """ratelimit-remaining: 0 on a success holds the next request until ratelimit-reset."""
    clock = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    with FakeResend(key=KEY, rate_limit=1, window=1.0, clock=lambda: clock[0]) as fake:
        provider = ResendProvider(base_url=fake.url, sleep=sleep, monotonic=lambda: clock[0])
        try:
            provider.send([message("k1")], batch_key="b1")
            provider.send([message("k2")], batch_key="b2")
        finally:
            provider.close()

    assert slept == [1.0]
    assert len(fake.accepted) == 2 and len(fake.requests) == 2  # no 429 on the way


def test_requests_left_mean_no_wait(fake: FakeResend) -> None:
    """While the window has requests left, nothing waits."""
    slept: list[float] = []
    provider = ResendProvider(base_url=fake.url, sleep=slept.append)
    try:
        for n in range(3):
            provider.send([message(f"k{n}")], batch_key=f"b{n}")
    finally:
        provider.close()

    assert slept == []


# -- suppressions ---------------------------------------------------------------


def test_suppressions_are_paged_and_mapped(fake: FakeResend, provider: ResendProvider) -> None:
    """All pages are read with limit/after; bounce, complaint and manual become statuses."""
    origins = ["bounce", "complaint", "manual"]
    for n in range(250):
        fake.suppress(f"r{n}@example.com", origins[n % 3])

    entries = list(provider.suppressions())

    assert [e.email for e in entries] == [f"r{n}@example.com" for n in range(250)]
    assert Counter(e.status for e in entries) == {
        "bounced": 84,
        "complained": 83,
        "unsubscribed": 83,
    }
    assert entries[1].reason == "Resend suppression: complaint (since 2026-10-07T08:12:03Z)"
    pages = fake.requests_to(SUPPRESSIONS_PATH, "GET")
    assert [p.query for p in pages] == [
        {"limit": ["100"]},
        {"limit": ["100"], "after": [fake.suppressed[99]["id"]]},
        {"limit": ["100"], "after": [fake.suppressed[199]["id"]]},
    ]
    assert pages[0].header("Authorization") == f"Bearer {KEY}"


def test_empty_suppression_list(fake: FakeResend, provider: ResendProvider) -> None:
    """No suppressions: one request, nothing listed."""
    assert list(provider.suppressions()) == []
    assert len(fake.requests) == 1


def test_rate_limited_page_is_asked_again(fake: FakeResend) -> None:
    """A 429 on a page waits retry-after and asks for the same page again."""
    fake.suppress("gone@example.com", "bounce")
    fake.fail_next(
        SUPPRESSIONS_PATH, error(429, "rate_limit_exceeded", RATE_TEXT, {"retry-after": "2"})
    )
    slept: list[float] = []
    provider = ResendProvider(base_url=fake.url, sleep=slept.append)
    try:
        [entry] = provider.suppressions()
    finally:
        provider.close()

    assert (entry.email, entry.status, slept) == ("gone@example.com", "bounced", [2.0])


def test_suppression_errors_are_one_line(fake: FakeResend) -> None:
    """A failing list raises one clear line: a server that keeps failing, a bad key."""
    fake.fail_next(SUPPRESSIONS_PATH, error(500, "application_error", SERVER_TEXT), times=4)
    provider = ResendProvider(base_url=fake.url, sleep=lambda _: None)
    try:
        with pytest.raises(ProviderError) as failing:
            list(provider.suppressions())
        fake.key = "re_other"
        with pytest.raises(ProviderError) as refused:
            list(provider.suppressions())
    finally:
        provider.close()

    assert str(failing.value) == (
        "Resend failed on the suppression list (500 application_error: "
        "An unexpected error occurred.); will retry"
    )
    assert refused.value.auth and "\n" not in str(refused.value)


def test_sending_only_key_cannot_read_suppressions(
    fake: FakeResend, provider: ResendProvider
) -> None:
    """401 restricted_api_key on the list says a full-access key is needed; not a send stop."""
    fake.sending_only = True

    with pytest.raises(ProviderError) as caught:
        list(provider.suppressions())

    assert not caught.value.auth
    assert "full-access key" in str(caught.value) and KEY_ENV in str(caught.value)
    [result] = provider.send([message()], batch_key="b")  # sending still works
    assert result.outcome == "sent"


# -- `series send` through Resend ---------------------------------------------


@pytest.fixture
def resend(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeResend]:
    with FakeResend(key=KEY) as server:
        monkeypatch.setenv(PROVIDER_URL_ENV, server.url)
        yield server


@pytest.fixture
def example(example_copy: Path) -> Path:
    """The example workspace with its six subscribers imported."""
    return enroll_examples(example_copy)


def send(root: Path, when: datetime) -> tuple[int, str, str]:
    return run(root, "send", "--provider", "resend", "--now", when.isoformat())


def ledger(root: Path) -> list[tuple[str, str | None]]:
    with open_store(root) as store, store.connect() as conn:
        rows = conn.execute(sa.select(deliveries.c.state, deliveries.c.provider_message_id))
        return [(row.state, row.provider_message_id) for row in rows]


def recipients(fake: FakeResend) -> Counter[str]:
    return Counter(address for e in fake.accepted for address in e["to"])


def test_series_send_reaches_everyone_once(example: Path, resend: FakeResend) -> None:
    """Every reader gets their first part once, with their own unsubscribe headers."""
    code, out, _ = send(example, MONDAY)

    assert (code, out) == (0, "sent 6, failed 0, retried 0, unknown 0, skipped 0\n")
    assert len(recipients(resend)) == 6 and set(recipients(resend).values()) == {1}
    unsubscribe = [e["headers"]["List-Unsubscribe"] for e in resend.accepted]
    assert len(set(unsubscribe)) == 6
    assert {e["headers"]["List-Unsubscribe-Post"] for e in resend.accepted} == {
        "List-Unsubscribe=One-Click"
    }
    assert sorted(ledger(example)) == sorted(("sent", e["id"]) for e in resend.accepted)
    assert send(example, MONDAY)[1].startswith("sent 0,")  # nothing twice
    assert len(resend.accepted) == 6


def test_lost_answer_is_retried_in_the_same_run(example: Path, resend: FakeResend) -> None:
    """The answer to an accepted batch is lost once: the run repeats it under the same key
    and gets the stored answer; each reader's email was accepted exactly once."""
    resend.fail_next(BATCH_PATH, "drop-after")

    code, out, _ = send(example, MONDAY)

    assert (code, out) == (0, "sent 6, failed 0, retried 1, unknown 0, skipped 0\n")
    first, second = resend.batch_requests()
    assert first.header("Idempotency-Key") == second.header("Idempotency-Key")
    assert len(resend.accepted) == 6 and set(recipients(resend).values()) == {1}
    assert sorted(ledger(example)) == sorted(("sent", e["id"]) for e in resend.accepted)


def test_quota_stops_series_send_with_one_line(example: Path, resend: FakeResend) -> None:
    """An exhausted daily quota: one line, exit 1, no delivery marked."""
    resend.fail_next(BATCH_PATH, error(429, "daily_quota_exceeded", QUOTA_TEXT))

    code, out, err = send(example, MONDAY)

    assert (code, out) == (1, "")
    synced, stopped = err.splitlines()
    assert synced == "synced 0 suppression(s) from resend: no subscriber changed"
    assert stopped.startswith("Error: Resend's daily sending quota is used up (429 ")
    assert ledger(example) == []


def lose_every_answer(root: Path, fake: FakeResend) -> None:
    """A first run where Resend accepts the batch but no attempt's answer arrives: the
    loop retries under the same key until it gives up, leaving the deliveries unknown."""
    fake.fail_next(BATCH_PATH, "drop-after", times=RETRIES + 1)
    config = load_config(root)
    provider = get_provider("resend", config)
    slept: list[float] = []
    try:
        with open_store(root) as store:
            report = send_due(config, store, provider, SendOptions(now=MONDAY, sleep=slept.append))
    finally:
        provider.close()
    assert (report.sent, report.unknown, report.retried, len(slept)) == (0, 6, RETRIES, RETRIES)
    assert [state for state, _ in ledger(root)] == ["unknown"] * 6
    assert len({r.header("Idempotency-Key") for r in fake.batch_requests()}) == 1
    assert len(fake.accepted) == 6  # the first attempt went out; the repeats were answered


def test_crash_between_accepted_and_recorded_never_duplicates(
    example: Path, resend: FakeResend
) -> None:
    """After answers lost on every attempt, a later `series send` repeats the batch under
    the same key and nobody receives the part a second time."""
    lose_every_answer(example, resend)

    send(example, MONDAY + timedelta(minutes=20))

    assert len(resend.batch_requests()) == RETRIES + 2
    assert len(resend.accepted) == 6 and set(recipients(resend).values()) == {1}
    assert {state for state, _ in ledger(example)} <= {"sent", "unknown"}


def test_crash_between_accepted_and_recorded_is_settled_by_the_next_run(
    example: Path, resend: FakeResend
) -> None:
    """After answers lost on every attempt, a later `series send` repeats the batch under
    the same key, Resend answers from the first request, and the ledger ends `sent`."""
    lose_every_answer(example, resend)

    code, out, _ = send(example, MONDAY + timedelta(minutes=20))

    assert code == 0
    assert out.splitlines()[-1] == "resolved 6 delivery(ies) left unknown by an earlier run"
    assert len({r.header("Idempotency-Key") for r in resend.batch_requests()}) == 1
    assert len(resend.accepted) == 6 and set(recipients(resend).values()) == {1}
    assert sorted(ledger(example)) == sorted(("sent", e["id"]) for e in resend.accepted)


def test_an_erased_member_never_makes_the_others_a_new_request(
    example: Path, resend: FakeResend
) -> None:
    """One reader of an interrupted batch is erased: the other five are repeated under the
    recorded key, whose body no longer matches (409), so they stay unknown: never a second
    copy under a new key."""
    lose_every_answer(example, resend)
    assert run(example, "subscribers", "remove", "daniel.okafor@example.com")[0] == 0

    _, out, _ = send(example, MONDAY + timedelta(minutes=20))

    assert out.startswith("sent 0, failed 0, retried 0, unknown 5,")
    with open_store(example) as store, store.connect() as conn:
        errors = conn.scalars(sa.select(deliveries.c.last_error)).all()
    assert len(errors) == 5 and all("invalid_idempotent_request" in (e or "") for e in errors)
    assert len({r.header("Idempotency-Key") for r in resend.batch_requests()}) == 1
    assert len(resend.accepted) == 6 and set(recipients(resend).values()) == {1}
    assert [state for state, _ in ledger(example)] == ["unknown"] * 5


def test_a_reader_who_left_is_left_out_of_the_repeat(example: Path, resend: FakeResend) -> None:
    """One reader of an interrupted batch unsubscribes: the batch is repeated under its
    key without them (it must not reach them now). Here the first batch had arrived, so
    Resend refuses the changed body: nothing is sent twice, the five stay unknown, and
    so does the one who left (one line says so)."""
    lose_every_answer(example, resend)
    run(example, "subscribers", "unsubscribe", "daniel.okafor@example.com")
    requests_before = len(resend.batch_requests())

    _, out, err = send(example, MONDAY + timedelta(minutes=20))

    assert out.startswith("sent 0, failed 0, retried 0, unknown 6,")
    assert (
        "1 deliveries of an interrupted request stay unknown: daniel.okafor@example.com has "
        "left or paused since"
    ) in err.splitlines()
    repeat = resend.batch_requests()[requests_before:]
    assert [len(r.json) for r in repeat] == [5]
    assert len(resend.accepted) == 6 and set(recipients(resend).values()) == {1}
    with open_store(example) as store, store.connect() as conn:
        errors = conn.scalars(sa.select(deliveries.c.last_error)).all()
    assert sum("invalid_idempotent_request" in (e or "") for e in errors) == 5


def test_a_quota_after_a_lost_answer_leaves_the_batch_unknown(
    example: Path, resend: FakeResend
) -> None:
    """The answer to an accepted batch is lost, then the retry meets an exhausted quota: the
    run stops, but the batch is recorded unknown (never given back to be sent under a new
    key), and the next day's run settles it without a second copy."""
    resend.fail_next(BATCH_PATH, "drop-after")
    resend.fail_next(BATCH_PATH, error(429, "daily_quota_exceeded", QUOTA_TEXT))

    code, out, err = send(example, MONDAY)

    assert (code, out) == (1, "")
    assert err.splitlines()[-1].startswith("Error: Resend's daily sending quota is used up")
    assert [state for state, _ in ledger(example)] == ["unknown"] * 6

    code, out, _ = send(example, MONDAY + timedelta(hours=20))

    assert code == 0 and "resolved 6 delivery(ies)" in out
    assert len({r.header("Idempotency-Key") for r in resend.batch_requests()}) == 1
    assert len(resend.accepted) == 6 and set(recipients(resend).values()) == {1}


def test_a_part_gone_from_the_workspace_is_one_line_not_a_crash(
    example: Path, resend: FakeResend
) -> None:
    """The article of an interrupted batch was removed: its deliveries stay unknown with
    one line naming it, and the run goes on without a traceback."""
    lose_every_answer(example, resend)
    (example / "series" / "attachment" / "01-attachment-theory.md").unlink()

    _, out, err = send(example, MONDAY + timedelta(minutes=20))

    assert "Traceback" not in err
    assert (
        "6 deliveries of an interrupted request stay unknown: 'attachment-theory' (sent as "
        "part 1) of attachment is no longer in the workspace"
    ) in err
    assert ", unknown 6," in out
    assert len({r.header("Idempotency-Key") for r in resend.batch_requests()}) == 2
