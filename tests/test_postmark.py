"""Contract tests: PostmarkProvider against a fake Postmark speaking real HTTP on 127.0.0.1."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.config import Address, load_config
from pipeline.providers import PROVIDER_URL_ENV, get_provider
from pipeline.providers.base import Message, Pending, ProviderError
from pipeline.providers.http import retry_after
from pipeline.providers.postmark import TOKEN_ENV, PostmarkProvider

from .conftest import FIXTURES
from .fake_postmark import BATCH_PATH, SEARCH_PATH, FakePostmark, FakePostmarkProcess
from .helpers import closed_port

TOKEN = "server-token-4f1c9a7e-not-a-real-one"
SENDER = Address("editor@blog.example", "Demo Editor")
UNSUBSCRIBE = "<https://blog.example/unsubscribe/tok123>"
INACTIVE = "gone@example.com"
INVALID = "broken@example.com"


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


@pytest.fixture
def fake() -> Iterator[FakePostmark]:
    with FakePostmark(token=TOKEN, inactive={INACTIVE}, invalid={INVALID}) as server:
        yield server


@pytest.fixture
def provider(fake: FakePostmark) -> Iterator[PostmarkProvider]:
    provider = PostmarkProvider(base_url=fake.url, message_stream="broadcast", timeout=10)
    yield provider
    provider.close()


def pending(key: str) -> Pending:
    return Pending(key, "ann@example.com", datetime(2026, 1, 1, tzinfo=UTC))


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
        tag="demo-part-1",
    )


def send_error(provider: PostmarkProvider, messages: list[Message] | None = None) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        provider.send(messages or [message()], batch_key="b")
    return caught.value


# -- the request --------------------------------------------------------------


def test_batch_request_has_postmark_shape(fake: FakePostmark, provider: PostmarkProvider) -> None:
    """One batch is one POST /email/batch with the token, JSON headers and Postmark's fields."""
    provider.send([message()], batch_key="b")

    [request] = fake.requests
    assert (request.method, request.path) == ("POST", BATCH_PATH)
    assert request.header("X-Postmark-Server-Token") == TOKEN
    assert request.header("Accept") == "application/json"
    assert request.header("Content-Type") == "application/json"
    assert request.body == [
        {
            "From": '"Demo Editor" <editor@blog.example>',
            "To": '"Ann Reader" <ann@example.com>',
            "Subject": "Part 1: Getting started",
            "HtmlBody": "<p>Hello Ann</p>",
            "TextBody": "Hello Ann",
            "ReplyTo": "editor@blog.example",
            "Headers": [
                {"Name": "List-Unsubscribe", "Value": UNSUBSCRIBE},
                {"Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click"},
            ],
            "Tag": "demo-part-1",
            "Metadata": {"delivery_key": "key-1"},
            "MessageStream": "broadcast",
        }
    ]


def test_provider_url_override_reaches_the_fake(
    fake: FakePostmark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SERIES_PROVIDER_URL sends the configured provider (and its stream) to the fake."""
    shutil.copy(FIXTURES / "config" / "config_valid.toml", tmp_path / "series.toml")
    with (tmp_path / "series.toml").open("a", encoding="utf-8") as config:
        config.write('\n[postmark]\nmessage_stream = "outbound"\n')
    monkeypatch.setenv(PROVIDER_URL_ENV, fake.url)

    provider = get_provider("postmark", load_config(tmp_path))
    try:
        [result] = provider.send([message()], batch_key="b")
    finally:
        provider.close()

    assert result.outcome == "sent"
    assert fake.requests[0].body[0]["MessageStream"] == "outbound"
    assert [record["delivery_key"] for record in fake.accepted] == ["key-1"]


# -- per-message results ------------------------------------------------------


def test_batch_results_follow_request_order(fake: FakePostmark, provider: PostmarkProvider) -> None:
    """Accepted, 406 and 300 items get their own results in request order; one is recorded."""
    results = provider.send(
        [message("k-ok"), message("k-inactive", to=INACTIVE), message("k-invalid", to=INVALID)],
        batch_key="b",
    )

    assert [r.key for r in results] == ["k-ok", "k-inactive", "k-invalid"]
    sent, inactive, invalid = results
    [record] = fake.accepted
    assert (sent.outcome, sent.message_id) == ("sent", record["message_id"])
    assert record["delivery_key"] == "k-ok"
    assert (inactive.outcome, inactive.message_id) == ("failed", None)
    assert inactive.error is not None and inactive.error.startswith("406")
    assert (invalid.outcome, invalid.subscriber_status) == ("failed", "bounced")
    assert invalid.error is not None and invalid.error.startswith("300")


def test_inactive_recipient_is_a_bounce_not_a_complaint(provider: PostmarkProvider) -> None:
    """406 is a bounce: its text always mentions "a spam complaint", so it proves none."""
    [result] = provider.send([message(to=INACTIVE)], batch_key="b")

    assert "spam complaint" in (result.error or "")  # the real wording reached the adapter
    assert result.subscriber_status == "bounced"


def test_invalid_request_not_about_the_recipient_keeps_the_subscriber(
    fake: FakePostmark, provider: PostmarkProvider
) -> None:
    """A sender that cannot be sent from fails the message before any request, without
    bouncing the subscriber."""
    no_sender = message().replace(sender=Address(""))

    [result] = provider.send([no_sender], batch_key="b")

    assert (result.outcome, result.subscriber_status) == ("failed", None)
    assert result.error == "not sent: '' is not an email address"
    assert fake.batch_requests() == []


# -- whole-request failures ---------------------------------------------------


def test_bad_token_is_an_auth_error_that_hides_the_token(
    fake: FakePostmark, provider: PostmarkProvider
) -> None:
    """401 stops the run (auth) and the token never appears in what is reported."""
    fake.token = "some-other-token"

    error = send_error(provider)

    assert error.auth and not error.retryable and not error.maybe_sent
    assert TOKEN_ENV in str(error)
    assert TOKEN not in f"{error} {error!r} {error.args}"
    assert error.__cause__ is None and error.__context__ is None  # no chained detail


def test_missing_token_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without POSTMARK_SERVER_TOKEN the provider refuses to start, naming the variable."""
    monkeypatch.delenv(TOKEN_ENV)

    with pytest.raises(ProviderError) as caught:
        PostmarkProvider(base_url="http://127.0.0.1:9", message_stream="broadcast")

    assert caught.value.auth
    assert TOKEN_ENV in str(caught.value)


def test_invalid_batch_is_final(fake: FakePostmark, provider: PostmarkProvider) -> None:
    """422 for the whole batch is not retried and nothing was sent."""
    fake.fail_next("422", error_code=300)

    error = send_error(provider)

    assert not (error.retryable or error.maybe_sent or error.auth)
    assert "422" in str(error)
    assert fake.accepted == []


def test_token_error_code_in_a_422_is_an_auth_error(
    fake: FakePostmark, provider: PostmarkProvider
) -> None:
    """A 422 carrying ErrorCode 10 (bad token) is treated like a 401."""
    fake.fail_next("422", error_code=10)

    assert send_error(provider).auth


def test_oversized_batch_is_refused(fake: FakePostmark, provider: PostmarkProvider) -> None:
    """More than 500 messages is a 422 (ErrorCode 410) for the whole batch, not retried."""
    error = send_error(provider, [message(f"k{i}") for i in range(501)])

    assert not error.retryable and "410" in str(error)
    assert fake.accepted == []


def test_rate_limit_honours_retry_after(fake: FakePostmark, provider: PostmarkProvider) -> None:
    """429 with Retry-After: 7 is retryable after 7 s, and nothing was sent."""
    fake.fail_next("429", retry_after="7")

    error = send_error(provider)

    assert (error.retryable, error.retry_after, error.maybe_sent) == (True, 7.0, False)
    assert fake.accepted == []


@pytest.mark.parametrize("kind", ["429", "500", "503"])
def test_transient_statuses_are_retryable(
    fake: FakePostmark, provider: PostmarkProvider, kind: str
) -> None:
    """429 without Retry-After, 500 and 503 are retryable, with no hint of when."""
    fake.fail_next(kind)

    error = send_error(provider)

    assert (error.retryable, error.maybe_sent, error.auth, error.retry_after) == (
        True,
        False,
        False,
        None,
    )


@pytest.mark.parametrize(("kind", "recorded"), [("drop-before", 0), ("drop-after", 1)])
def test_dropped_connection_may_have_sent(
    fake: FakePostmark, provider: PostmarkProvider, kind: str, recorded: int
) -> None:
    """A connection closed unanswered is maybe_sent, processed or not: both look the same."""
    fake.fail_next(kind)

    error = send_error(provider)

    assert error.retryable and error.maybe_sent
    assert len(fake.accepted) == recorded


def test_nobody_listening_sent_nothing() -> None:
    """A refused connection is retryable and certainly sent nothing."""
    provider = PostmarkProvider(
        base_url=f"http://127.0.0.1:{closed_port()}", message_stream="broadcast", timeout=10
    )
    try:
        error = send_error(provider)
    finally:
        provider.close()

    assert error.retryable and not error.maybe_sent


def test_timeout_may_have_sent(fake: FakePostmark) -> None:
    """An answer later than the timeout leaves the (accepted) batch maybe_sent."""
    fake.fail_next("slow", delay=5)
    provider = PostmarkProvider(base_url=fake.url, message_stream="broadcast", timeout=0.3)
    try:
        error = send_error(provider)
    finally:
        provider.close()

    assert error.retryable and error.maybe_sent
    assert [record["delivery_key"] for record in fake.accepted] == ["key-1"]


def test_provider_recovers_after_a_drop(fake: FakePostmark, provider: PostmarkProvider) -> None:
    """After a dropped connection the same provider sends the next batch normally."""
    fake.fail_next("drop-after")
    send_error(provider)

    [result] = provider.send([message("key-2")], batch_key="b")

    assert result.outcome == "sent"


# -- lookup -------------------------------------------------------------------


def test_lookup_finds_messages_by_delivery_key(
    fake: FakePostmark, provider: PostmarkProvider
) -> None:
    """lookup finds a MessageID by metadata_delivery_key, and None for an unknown key."""
    fake.fail_next("drop-after")
    send_error(provider, [message("k-lost")])
    [record] = fake.accepted

    found = provider.lookup([pending("k-lost"), pending("k-never")])

    assert found == {"k-lost": record["message_id"], "k-never": None}
    searches = [r for r in fake.requests if r.path == SEARCH_PATH]
    assert [(r.method, r.query.get("metadata_delivery_key")) for r in searches] == [
        ("GET", ["k-lost"]),
        ("GET", ["k-never"]),
    ]
    assert searches[0].header("X-Postmark-Server-Token") == TOKEN
    assert {"count", "offset"} <= searches[0].query.keys()


def test_lookup_failures_are_reported(fake: FakePostmark, provider: PostmarkProvider) -> None:
    """A failing search raises ProviderError: retryable for 503, auth for 401."""
    fake.fail_next("503", path=SEARCH_PATH)
    with pytest.raises(ProviderError) as caught:
        provider.lookup([pending("k")])
    assert caught.value.retryable

    fake.token = "some-other-token"
    with pytest.raises(ProviderError) as caught:
        provider.lookup([pending("k")])
    assert caught.value.auth


# -- helpers and the fake's process mode --------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("7", 7.0), (" 12 ", 12.0), ("", None), (None, None), ("soon", None)],
)
def test_retry_after_parses_seconds(header: str | None, seconds: float | None) -> None:
    """Retry-After in seconds is read as a number; anything unreadable gives no hint."""
    assert retry_after(header) == seconds


def test_retry_after_parses_a_past_http_date() -> None:
    """A Retry-After date in the past means retry now, not a negative wait."""
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_fake_in_its_own_process_records_to_a_file(tmp_path: Path) -> None:
    """The fake in its own process files accepted messages (drops marked) and finds them."""
    state = tmp_path / "accepted.jsonl"
    with FakePostmarkProcess(state, token=TOKEN, first={"drop-after": 1}) as server:
        provider = PostmarkProvider(base_url=server.url, message_stream="broadcast", timeout=10)
        try:
            send_error(provider, [message("k-1")])
            [result] = provider.send([message("k-2")], batch_key="b")
            found = provider.lookup([pending("k-1"), pending("k-2")])
        finally:
            provider.close()
        stats = server.stats()

    records = server.accepted
    assert [(r["seq"], r["delivery_key"], r["fault"]) for r in records] == [
        (1, "k-1", "drop-after"),
        (2, "k-2", None),
    ]
    assert records[0]["headers"][1] == {
        "Name": "List-Unsubscribe-Post",
        "Value": "List-Unsubscribe=One-Click",
    }
    assert "HtmlBody" not in records[0]
    assert found == {"k-1": records[0]["message_id"], "k-2": result.message_id}
    assert (stats["requests"], stats["accepted"], stats["fault:drop-after"]) == (4, 2, 1)
