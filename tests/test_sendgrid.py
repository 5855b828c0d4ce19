"""SendGridProvider against a fake SendGrid speaking real HTTP on 127.0.0.1: the contract
of each request and answer, then `series send --provider sendgrid` end to end."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline.config import Address, load_config
from pipeline.providers import PROVIDER_URL_ENV, get_provider
from pipeline.providers.base import Merge, Message, Pending, ProviderError
from pipeline.providers.sendgrid import (
    KEY_ENV,
    MANAGED_UNSUBSCRIBE,
    REGION_URLS,
    SendGridProvider,
    substitution_tag,
)
from pipeline.render import CompiledEmail, Personal, _Filled
from pipeline.store import open_store
from pipeline.store.schema import deliveries, subscribers

from .conftest import FIXTURES
from .fake_http import DROP_AFTER, DROP_BEFORE, Reply, Request
from .fake_sendgrid import (
    ACTIVITY_PATH,
    BAD_KEY_TEXT,
    SEND_PATH,
    SUPPRESSION_PREFIX,
    UNSUBSCRIBE_BASE,
    FakeSendGrid,
    forbidden,
    rate_limited,
    server_error,
    too_large,
)
from .helpers import closed_port, configure, enroll_examples, run

KEY = "SG.test-key-7d2e91.not-a-real-one"
SENDER = Address("editor@blog.example", "Demo Editor")
INVALID = "broken@example.com"
MONDAY = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
HTML = (
    '<p>Hello %%series:name%%,</p><p><a href="%%series:unsubscribe_url%%">Unsubscribe</a>'
    " from %%series:email%%</p>"
)
TEXT = "Hello %%series:name%%,\nUnsubscribe: %%series:unsubscribe_url%%\n"


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture
def fake() -> Iterator[FakeSendGrid]:
    with FakeSendGrid(key=KEY, invalid={INVALID}) as server:
        yield server


@pytest.fixture
def provider(fake: FakeSendGrid) -> Iterator[SendGridProvider]:
    provider = SendGridProvider(base_url=fake.url, timeout=10)
    yield provider
    provider.close()


def compiled(subject: str = "Part 1: Getting started") -> CompiledEmail:
    """A part compiled once, its personal fields left open, as the renderer leaves it."""
    return CompiledEmail("demo", 1, subject, "", _Filled.split(HTML), _Filled.split(TEXT))


TEMPLATE = compiled()


def message(
    key: str = "key-1",
    to: str = "ann@example.com",
    name: str = "Ann Reader",
    *,
    template: CompiledEmail = TEMPLATE,
    managed: str | None = None,
) -> Message:
    """A message as the send loop builds it: its own link and headers unless the
    provider manages unsubscribes."""
    url = managed or f"https://blog.example/unsubscribe/{key}"
    rendered = template.personalise(Personal(name, to, url))
    headers = {}
    if managed is None:
        headers = {
            "List-Unsubscribe": f"<{url}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }
    return Message(
        key=key,
        sender=SENDER,
        to=Address(to, name),
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
        reply_to="editor@blog.example",
        headers=headers,
        tag="demo-part1",
        merge=Merge(template, {"name": name, "email": to, "unsubscribe_url": url}),
    )


def send_error(provider: SendGridProvider, messages: list[Message] | None = None) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        provider.send(messages or [message()], batch_key="b")
    return caught.value


def pending(key: str) -> Pending:
    return Pending(key, "ann@example.com", datetime(2026, 1, 1, tzinfo=UTC))


# -- the request --------------------------------------------------------------


def test_batch_is_one_request_in_sendgrid_shape(
    fake: FakeSendGrid, provider: SendGridProvider
) -> None:
    """A batch is one POST /v3/mail/send: Bearer key, one body with tags, one
    personalization per reader with its own substitutions, headers and delivery key."""
    provider.send([message("k1"), message("k2", "bo@example.com", "Bo")], batch_key="b")

    [request] = fake.requests
    assert (request.method, request.path) == ("POST", SEND_PATH)
    assert request.header("Authorization") == f"Bearer {KEY}"
    assert request.header("Content-Type") == "application/json"
    name_h, name_t = substitution_tag("name", True), substitution_tag("name", False)
    url_h, url_t = (
        substitution_tag("unsubscribe_url", True),
        substitution_tag("unsubscribe_url", False),
    )
    email_h, email_t = substitution_tag("email", True), substitution_tag("email", False)
    assert name_h != name_t and url_h != url_t
    assert request.json == {
        "from": {"email": "editor@blog.example", "name": "Demo Editor"},
        "reply_to": {"email": "editor@blog.example"},
        "subject": "Part 1: Getting started",
        "categories": ["demo-part1"],
        "content": [
            {"type": "text/plain", "value": f"Hello {name_t},\nUnsubscribe: {url_t}\n"},
            {
                "type": "text/html",
                "value": f'<p>Hello {name_h},</p><p><a href="{url_h}">Unsubscribe</a>'
                f" from {email_h}</p>",
            },
        ],
        "personalizations": [
            {
                "to": [{"email": to, "name": name}],
                "subject": "Part 1: Getting started",
                "custom_args": {"delivery_key": key},
                "headers": {
                    "List-Unsubscribe": f"<https://blog.example/unsubscribe/{key}>",
                    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                },
                "substitutions": {
                    name_h: name,
                    name_t: name,
                    email_h: to,
                    email_t: to,
                    url_h: f"https://blog.example/unsubscribe/{key}",
                    url_t: f"https://blog.example/unsubscribe/{key}",
                },
            }
            for key, to, name in [
                ("k1", "ann@example.com", "Ann Reader"),
                ("k2", "bo@example.com", "Bo"),
            ]
        ],
    }


def test_each_reader_gets_only_their_own_name_and_link(
    fake: FakeSendGrid, provider: SendGridProvider
) -> None:
    """After SendGrid's substitutions each reader's copy has their own name (escaped in
    HTML, raw in text) and unsubscribe link, and nobody else's."""
    readers = [
        ("k-ann", "ann@example.com", "Ann Reader"),
        ("k-zoe", "zoe@example.com", "Zoë <O'Hara> & Co"),
        ("k-bo", "bo@example.com", "Bo"),
    ]
    provider.send([message(k, to, name) for k, to, name in readers], batch_key="b")

    assert [d.to for d in fake.delivered] == [to for _, to, _ in readers]
    for (key, to, name), copy in zip(readers, fake.delivered, strict=True):
        link = f"https://blog.example/unsubscribe/{key}"
        assert copy.headers["List-Unsubscribe"] == f"<{link}>"
        assert copy.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert copy.custom_args == {"delivery_key": key}
        assert copy.text == f"Hello {name},\nUnsubscribe: {link}\n"
        assert re.findall(r'href="([^"]*)"', copy.html) == [link]
        assert f"from {to}</p>" in copy.html
        others = [k for k, _, _ in readers if k != key]
        assert not any(other in copy.html + copy.text for other in others)
        assert "%series." not in copy.html + copy.text
    zoe = fake.delivered[1]
    assert "Hello Zoë &lt;O&#39;Hara&gt; &amp; Co,</p>" in zoe.html
    assert zoe.text.startswith("Hello Zoë <O'Hara> & Co,")


def test_provider_managed_unsubscribes(fake: FakeSendGrid) -> None:
    """With manage_unsubscribes, subscription tracking fills its tag with each reader's
    own link and adds both List-Unsubscribe headers; we send none of ours."""
    provider = SendGridProvider(base_url=fake.url, manage_unsubscribes=True, timeout=10)
    assert provider.managed_unsubscribe == MANAGED_UNSUBSCRIBE
    try:
        provider.send(
            [
                message("k1", managed=MANAGED_UNSUBSCRIBE),
                message("k2", "bo@example.com", "Bo", managed=MANAGED_UNSUBSCRIBE),
            ],
            batch_key="b",
        )
    finally:
        provider.close()

    body = fake.sends()[0].json
    assert body["tracking_settings"] == {
        "subscription_tracking": {"enable": True, "substitution_tag": MANAGED_UNSUBSCRIBE}
    }
    assert f'href="{MANAGED_UNSUBSCRIBE}"' in body["content"][1]["value"]
    for item in body["personalizations"]:
        assert "headers" not in item
        assert not any("unsubscribe" in tag for tag in item["substitutions"])
    links = []
    for copy in fake.delivered:
        [link] = re.findall(r'href="([^"]*)"', copy.html)
        assert link.startswith(UNSUBSCRIBE_BASE) and link in copy.text
        assert copy.headers == {
            "List-Unsubscribe": f"<{link}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }
        links.append(link)
    assert len(set(links)) == 2


def test_results_carry_the_request_message_id(
    fake: FakeSendGrid, provider: SendGridProvider
) -> None:
    """202 with an empty body: every message is sent, with the X-Message-Id of its request."""
    results = provider.send([message("k1"), message("k2", "bo@example.com")], batch_key="b")

    [message_id] = {d.message_id for d in fake.delivered}
    assert [(r.key, r.outcome, r.message_id) for r in results] == [
        ("k1", "sent", message_id),
        ("k2", "sent", message_id),
    ]
    assert provider.shared_body and not provider.idempotent


def test_two_templates_in_one_batch_go_in_two_requests(
    fake: FakeSendGrid, provider: SendGridProvider
) -> None:
    """Messages of different templates never share a body: one request each, results in
    the order given."""
    other = compiled("Part 2: Going on")
    batch = [
        message("k1"),
        message("k2", "bo@example.com", template=other),
        message("k3", "cy@example.com"),
    ]

    results = provider.send(batch, batch_key="b")

    assert [r.key for r in results] == ["k1", "k2", "k3"]
    assert all(r.outcome == "sent" for r in results)
    sends = fake.sends()
    assert [[p["to"][0]["email"] for p in s.json["personalizations"]] for s in sends] == [
        ["ann@example.com", "cy@example.com"],
        ["bo@example.com"],
    ]
    assert [d.subject for d in fake.delivered_to("bo@example.com")] == ["Part 2: Going on"]


def test_more_than_a_thousand_messages_are_split(
    fake: FakeSendGrid, provider: SendGridProvider
) -> None:
    """SendGrid takes at most 1000 personalizations: 1001 messages go in two requests."""
    batch = [message(f"k{i}", f"reader{i}@example.com") for i in range(1001)]

    results = provider.send(batch, batch_key="b")

    assert [len(s.json["personalizations"]) for s in fake.sends()] == [1000, 1]
    assert Counter(r.outcome for r in results) == Counter({"sent": 1001})
    assert SendGridProvider(base_url=fake.url, batch_size=5000).batch_size == 1000


# -- refused addresses and whole-request failures ------------------------------


def test_refused_address_bounces_and_the_rest_is_sent_once(
    fake: FakeSendGrid, provider: SendGridProvider
) -> None:
    """A 400 naming one reader's address: that reader fails as bounced, the others go in a
    second request, each exactly once."""
    batch = [message("k1"), message("k-bad", INVALID), message("k3", "cy@example.com")]

    results = provider.send(batch, batch_key="b")

    ok1, bad, ok3 = results
    assert (ok1.outcome, ok3.outcome) == ("sent", "sent")
    assert (bad.outcome, bad.subscriber_status) == ("failed", "bounced")
    assert (
        bad.error == "400: Does not contain a valid address. (field personalizations.1.to.0.email)"
    )
    assert [len(s.json["personalizations"]) for s in fake.sends()] == [3, 2]
    assert [d.to for d in fake.delivered] == ["ann@example.com", "cy@example.com"]


def test_invalid_request_fails_whole_and_is_not_retried(
    fake: FakeSendGrid, provider: SendGridProvider
) -> None:
    """A 400 about the request itself (its content) fails it all, naming the field, and
    marks no reader."""
    empty = message().replace(merge=None, html="", text="")

    error = send_error(provider, [empty])

    assert not (error.retryable or error.maybe_sent or error.auth)
    assert str(error) == (
        "SendGrid rejected the request (400): The content value must be a string at least "
        "one character in length. (field content.0.value); The content value must be a "
        "string at least one character in length. (field content.1.value)"
    )
    assert fake.delivered == []


def test_a_sender_that_cannot_be_sent_from_fails_before_any_request(
    fake: FakeSendGrid, provider: SendGridProvider
) -> None:
    """A sender address series cannot send from fails the message locally, nobody bounced."""
    bad_sender = message().replace(sender=Address("not-an-address"))

    [result] = provider.send([bad_sender], batch_key="b")

    assert (result.outcome, result.subscriber_status) == ("failed", None)
    assert result.error == "not sent: 'not-an-address' is not an email address"
    assert fake.sends() == []


def test_bad_key_stops_the_run_and_hides_the_key(
    fake: FakeSendGrid, provider: SendGridProvider
) -> None:
    """401 is an auth error naming the variable, with SendGrid's words and never the key."""
    fake.key = "some-other-key"

    error = send_error(provider)

    assert error.auth and not error.retryable and not error.maybe_sent
    assert str(error) == f"SendGrid refused the API key (401: {BAD_KEY_TEXT}); check {KEY_ENV}"
    assert KEY not in f"{error} {error!r} {error.args}"
    assert error.__cause__ is None and error.__context__ is None


def test_forbidden_is_an_auth_error(fake: FakeSendGrid, provider: SendGridProvider) -> None:
    """403 (a key without mail access, an unverified sender) stops the run, saying why."""
    fake.fail_next(SEND_PATH, forbidden("The from address does not match a verified Sender"))

    error = send_error(provider)

    assert error.auth and not error.retryable
    assert "403: The from address does not match a verified Sender" in str(error)


def test_key_echoed_by_sendgrid_is_blanked(fake: FakeSendGrid, provider: SendGridProvider) -> None:
    """Should SendGrid ever quote the key in an error, it is blanked in our error text."""
    fake.fail_next(
        SEND_PATH, Reply(400, {"errors": [{"message": f"bad key {KEY}", "field": None}]})
    )

    error = send_error(provider)

    assert KEY not in str(error) and "bad key ***" in str(error)


def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without SENDGRID_API_KEY the provider refuses to start, naming the variable."""
    monkeypatch.delenv(KEY_ENV)

    with pytest.raises(ProviderError) as caught:
        SendGridProvider(base_url="http://127.0.0.1:9")

    assert caught.value.auth
    assert str(caught.value) == (
        f"the sendgrid provider needs an API key: set the {KEY_ENV} environment variable"
    )


def test_too_large_request_is_sent_in_halves(fake: FakeSendGrid) -> None:
    """413: the batch is split in halves that fit, and everyone is sent once."""
    provider = SendGridProvider(base_url=fake.url, timeout=10)
    provider.send([message(f"m{i}", f"s{i}@example.com") for i in range(2)], batch_key="a")
    fake.max_bytes = len(fake.sends()[0].raw) + 20  # two personalizations fit, four do not
    fake.requests.clear()
    fake.delivered.clear()
    batch = [message(f"k{i}", f"r{i}@example.com") for i in range(4)]
    try:
        results = provider.send(batch, batch_key="b")
    finally:
        provider.close()

    assert [len(s.json["personalizations"]) for s in fake.sends()] == [4, 2, 2]
    assert [r.outcome for r in results] == ["sent"] * 4
    assert sorted(d.to for d in fake.delivered) == [f"r{i}@example.com" for i in range(4)]


def test_a_message_too_large_alone_fails_alone(
    fake: FakeSendGrid, provider: SendGridProvider
) -> None:
    """413 for a single message: that message fails (not retried as is); no exception."""
    fake.fail_next(SEND_PATH, too_large(), times=3)

    results = provider.send([message("k1"), message("k2", "bo@example.com")], batch_key="b")

    assert [(r.outcome, r.subscriber_status) for r in results] == [("failed", None)] * 2
    assert all("413" in (r.error or "") for r in results)
    assert len(fake.sends()) == 3


def test_failure_after_a_half_was_sent_is_not_raised(fake: FakeSendGrid) -> None:
    """Once one half is accepted, a 500 for the other half becomes results (failed, for a
    later run), never an exception that would make the send loop resend the first half."""

    class SecondHalfFails(FakeSendGrid):
        def handle(self, request: Request) -> Reply:
            if request.path == SEND_PATH and len(self.sends()) == 3:
                return server_error(500)
            return super().handle(request)

    with SecondHalfFails(key=KEY) as server:
        server.fail_next(SEND_PATH, too_large())
        provider = SendGridProvider(base_url=server.url, timeout=10)
        try:
            results = provider.send([message("k1"), message("k2", "bo@example.com")], batch_key="b")
        finally:
            provider.close()
        delivered = [d.to for d in server.delivered]

    assert [r.outcome for r in results] == ["sent", "failed"]
    assert "500" in (results[1].error or "")
    assert delivered == ["ann@example.com"]


def test_rate_limit_waits_until_the_reset_time(
    fake: FakeSendGrid, provider: SendGridProvider
) -> None:
    """429 is retryable after X-RateLimit-Reset (epoch seconds) and nothing was sent."""
    fake.fail_next(SEND_PATH, rate_limited(reset_in=30))

    error = send_error(provider)

    assert error.retryable and not error.maybe_sent and not error.auth
    assert error.retry_after is not None and 27 <= error.retry_after <= 31
    assert fake.delivered == []


@pytest.mark.parametrize(
    ("status", "maybe_sent"), [(500, False), (502, True), (503, False), (504, True)]
)
def test_server_errors_are_retryable(
    fake: FakeSendGrid, provider: SendGridProvider, status: int, maybe_sent: bool
) -> None:
    """5xx is retryable and gives no wait; behind a gateway's 502/504 SendGrid may have
    taken the request, so that outcome is unknown (looked up, never re-sent blindly)."""
    fake.fail_next(SEND_PATH, server_error(status))

    error = send_error(provider)

    assert (error.retryable, error.maybe_sent, error.auth, error.retry_after) == (
        True,
        maybe_sent,
        False,
        None,
    )
    assert str(error) == f"SendGrid answered {status} to {SEND_PATH}; will retry"


@pytest.mark.parametrize(("fault", "delivered"), [(DROP_BEFORE, 0), (DROP_AFTER, 1)])
def test_dropped_connection_may_have_sent(
    fake: FakeSendGrid, provider: SendGridProvider, fault: str, delivered: int
) -> None:
    """A connection closed unanswered is maybe_sent, whether SendGrid took it or not."""
    fake.fail_next(SEND_PATH, fault)

    error = send_error(provider)

    assert error.retryable and error.maybe_sent
    assert len(fake.delivered) == delivered


def test_nobody_listening_sent_nothing() -> None:
    """A refused connection is retryable and certainly sent nothing."""
    provider = SendGridProvider(base_url=f"http://127.0.0.1:{closed_port()}", timeout=10)
    try:
        error = send_error(provider)
    finally:
        provider.close()

    assert error.retryable and not error.maybe_sent


def test_region_picks_the_base_url(fake: FakeSendGrid) -> None:
    """Without an override, "eu" talks to api.eu.sendgrid.com; an unknown region is refused."""
    assert SendGridProvider(base_url=None, region="eu").http.base_url == REGION_URLS["eu"]
    assert SendGridProvider(base_url=None).http.base_url == "https://api.sendgrid.com"
    with pytest.raises(ProviderError, match="unknown SendGrid region 'mars'"):
        SendGridProvider(base_url=None, region="mars")


def test_provider_url_override_reaches_the_fake(
    fake: FakeSendGrid, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry builds the provider from config, and SERIES_PROVIDER_URL points it here."""
    shutil.copy(FIXTURES / "config" / "config_valid.toml", tmp_path / "series.toml")
    monkeypatch.setenv(PROVIDER_URL_ENV, fake.url)

    provider = get_provider("sendgrid", load_config(tmp_path))
    try:
        [result] = provider.send([message()], batch_key="b")
    finally:
        provider.close()

    assert result.outcome == "sent"
    assert [d.custom_args["delivery_key"] for d in fake.delivered] == ["key-1"]


# -- lookup -------------------------------------------------------------------


def test_lookup_finds_messages_by_delivery_key(
    fake: FakeSendGrid, provider: SendGridProvider
) -> None:
    """lookup asks the Email Activity API once per key and returns msg_id, or None."""
    fake.fail_next(SEND_PATH, DROP_AFTER)
    send_error(provider, [message("k-lost")])
    [copy] = fake.delivered

    found = provider.lookup([pending("k-lost"), pending("k-never")])

    assert found == {"k-lost": copy.msg_id, "k-never": None}
    searches = fake.requests_to(ACTIVITY_PATH)
    assert [(r.method, r.query) for r in searches] == [
        ("GET", {"query": ["unique_args['delivery_key']=\"k-lost\""], "limit": ["1"]}),
        ("GET", {"query": ["unique_args['delivery_key']=\"k-never\""], "limit": ["1"]}),
    ]
    assert searches[0].header("Authorization") == f"Bearer {KEY}"


def test_lookup_without_the_activity_add_on(fake: FakeSendGrid, provider: SendGridProvider) -> None:
    """403 from the Email Activity API (no paid add-on) is one clear line, not an auth stop."""
    fake.activity = False

    with pytest.raises(ProviderError) as caught:
        provider.lookup([pending("k")])

    error = caught.value
    assert not error.auth and not error.retryable
    assert str(error).startswith("SendGrid's Email Activity API answered 403: it is a paid add-on")
    assert "\n" not in str(error) and KEY not in str(error)


def test_lookup_rate_limited(fake: FakeSendGrid, provider: SendGridProvider) -> None:
    """429 from the Email Activity API (6 a minute) says so, with the reset time."""
    fake.fail_next(ACTIVITY_PATH, rate_limited(reset_in=60))

    with pytest.raises(ProviderError) as caught:
        provider.lookup([pending("k")])

    assert caught.value.retryable and not caught.value.auth
    assert "rate limited (429" in str(caught.value)
    assert caught.value.retry_after is not None and caught.value.retry_after > 50


def test_lookup_with_a_bad_key_stops(fake: FakeSendGrid, provider: SendGridProvider) -> None:
    """401 during lookup is an auth error (the run stops)."""
    fake.key = "another"

    with pytest.raises(ProviderError) as caught:
        provider.lookup([pending("k")])

    assert caught.value.auth


# -- suppressions -------------------------------------------------------------


def test_suppressions_read_every_page_of_four_lists(fake: FakeSendGrid) -> None:
    """Each list is read page by page (limit/offset) until a short page; bounces and invalid
    addresses are bounced, spam reports complained, unsubscribes unsubscribed."""
    fake.suppress(
        "bounces",
        [
            {
                "created": 1,
                "email": f"b{i}@example.com",
                "reason": "550 no such user",
                "status": "5.1.1",
            }
            for i in range(1003)
        ],
    )
    fake.suppress(
        "invalid_emails",
        [
            {
                "created": 1,
                "email": "bad@x",
                "reason": "Mail domain mentioned in email address is unknown",
            }
        ],
    )
    fake.suppress("spam_reports", [{"created": 1, "email": "spam@example.com", "ip": "10.0.0.1"}])
    fake.suppress("unsubscribes", [{"created": 1, "email": "gone@example.com"}])
    provider = SendGridProvider(base_url=fake.url, timeout=10)
    try:
        entries = list(provider.suppressions())
    finally:
        provider.close()

    assert len(entries) == 1006
    assert Counter(e.status for e in entries) == Counter(
        {"bounced": 1004, "complained": 1, "unsubscribed": 1}
    )
    assert entries[0].reason == "SendGrid bounces: 550 no such user"
    by_email = {e.email: e for e in entries}
    assert by_email["bad@x"].reason.startswith("SendGrid invalid emails: Mail domain")
    assert (by_email["spam@example.com"].status, by_email["spam@example.com"].reason) == (
        "complained",
        "SendGrid spam reports",
    )
    assert by_email["gone@example.com"].status == "unsubscribed"
    pages = [
        (r.path.removeprefix(SUPPRESSION_PREFIX), r.query["offset"][0], r.query["limit"][0])
        for r in fake.requests
    ]
    assert pages == [
        ("bounces", "0", "500"),
        ("bounces", "500", "500"),
        ("bounces", "1000", "500"),
        ("invalid_emails", "0", "500"),
        ("spam_reports", "0", "500"),
        ("unsubscribes", "0", "500"),
    ]


def test_suppression_errors_are_one_line(fake: FakeSendGrid, provider: SendGridProvider) -> None:
    """A failing list read raises one clear ProviderError: retryable for 503, auth for 401."""
    fake.fail_next(SUPPRESSION_PREFIX, server_error(503))
    with pytest.raises(ProviderError) as caught:
        list(provider.suppressions())
    assert caught.value.retryable
    assert str(caught.value) == "SendGrid answered 503 to /v3/suppression/bounces; will retry"

    fake.key = "another"
    with pytest.raises(ProviderError) as caught:
        list(provider.suppressions())
    assert caught.value.auth and KEY_ENV in str(caught.value)


# -- `series send --provider sendgrid` end to end ------------------------------


@pytest.fixture
def sendgrid(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSendGrid]:
    with FakeSendGrid(key=KEY) as server:
        monkeypatch.setenv(PROVIDER_URL_ENV, server.url)
        yield server


@pytest.fixture
def example(example_copy: Path) -> Path:
    """The example workspace with its six subscribers imported."""
    return enroll_examples(example_copy)


def send(root: Path, when: datetime) -> tuple[int, str, str]:
    return run(root, "send", "--provider", "sendgrid", "--now", when.isoformat())


def ledger_states(root: Path) -> Counter[str]:
    with open_store(root) as store, store.connect() as conn:
        return Counter(conn.scalars(sa.select(deliveries.c.state)))


def test_everyone_gets_part_one_once_with_their_own_link(
    example: Path, sendgrid: FakeSendGrid
) -> None:
    """Six readers, two reader variants: two requests; each reader gets their part once,
    with their own name and unsubscribe link and nobody else's."""
    code, out, _ = send(example, MONDAY)
    assert (code, out) == (0, "sent 6, failed 0, retried 0, unknown 0, skipped 0\n")
    assert send(example, MONDAY + timedelta(minutes=5))[1].startswith("sent 0,")

    assert len(sendgrid.sends()) == 2  # Yuki starts at part 2: another body
    with open_store(example) as store, store.connect() as conn:
        names = dict(conn.execute(sa.select(subscribers.c.email, subscribers.c.name)).all())
    assert Counter(d.to for d in sendgrid.delivered) == Counter({email: 1 for email in names})
    links = {d.to: d.headers["List-Unsubscribe"].strip("<>") for d in sendgrid.delivered}
    assert len(set(links.values())) == 6
    for copy in sendgrid.delivered:
        assert links[copy.to] in copy.html and links[copy.to] in copy.text
        assert not any(link in copy.html for to, link in links.items() if to != copy.to)
        assert names[copy.to].split()[0] in copy.text
        assert "%series." not in copy.html + copy.text
    assert ledger_states(example) == Counter({"sent": 6})


def test_lost_answer_is_resolved_by_lookup_without_resending(
    example: Path, sendgrid: FakeSendGrid
) -> None:
    """The answers are lost after SendGrid took the batches: the deliveries are unknown, and
    the next run finds them in the Email Activity feed and records them sent, once."""
    sendgrid.fail_next(SEND_PATH, DROP_AFTER, times=2)
    assert send(example, MONDAY)[1] == "sent 0, failed 0, retried 0, unknown 6, skipped 0\n"
    assert ledger_states(example) == Counter({"unknown": 6})

    _, out, _ = send(example, MONDAY + timedelta(minutes=20))

    assert out.splitlines() == [
        "sent 0, failed 0, retried 0, unknown 0, skipped 0",
        "resolved 6 delivery(ies) left unknown by an earlier run",
    ]
    assert ledger_states(example) == Counter({"sent": 6})
    assert len(sendgrid.delivered) == 6 and len(sendgrid.sends()) == 2
    assert len(sendgrid.requests_to(ACTIVITY_PATH)) == 6
    with open_store(example) as store, store.connect() as conn:
        ids = set(conn.scalars(sa.select(deliveries.c.provider_message_id)))
    assert ids == {d.msg_id for d in sendgrid.delivered}


def test_lost_answer_without_the_activity_add_on_stays_unknown(
    example: Path, sendgrid: FakeSendGrid
) -> None:
    """Without the Email Activity add-on the unknown deliveries are reported, never resent."""
    sendgrid.activity = False
    sendgrid.fail_next(SEND_PATH, DROP_AFTER, times=2)
    send(example, MONDAY)

    _, out, err = send(example, MONDAY + timedelta(hours=1))

    assert out.startswith("sent 0, failed 0, retried 0, unknown 6,")
    assert "could not check 6 unknown deliveries: SendGrid's Email Activity API answered 403" in err
    assert ledger_states(example) == Counter({"unknown": 6})
    assert len(sendgrid.delivered) == 6 and len(sendgrid.sends()) == 2


def test_refused_address_marks_the_subscriber_bounced(
    example: Path, sendgrid: FakeSendGrid
) -> None:
    """An address SendGrid refuses marks that subscriber bounced; the others are sent."""
    sendgrid.invalid.add("daniel.okafor@example.com")

    code, out, err = send(example, MONDAY)

    assert (code, out) == (1, "sent 5, failed 1, retried 0, unknown 0, skipped 0\n")
    assert "daniel.okafor@example.com: part 1 of attachment failed: 400: Does not contain" in err
    with open_store(example) as store, store.connect() as conn:
        status = conn.scalar(
            sa.select(subscribers.c.status).where(
                subscribers.c.email == "daniel.okafor@example.com"
            )
        )
    assert status == "bounced"
    assert sendgrid.delivered_to("daniel.okafor@example.com") == []


def test_provider_managed_unsubscribes_end_to_end(example: Path, sendgrid: FakeSendGrid) -> None:
    """unsubscribe = "provider": SendGrid's own link and headers, none of ours."""
    configure(example, 'provider = "sendgrid"\nunsubscribe = "provider"')

    assert send(example, MONDAY)[1].startswith("sent 6,")

    for request in sendgrid.sends():
        assert request.json["tracking_settings"]["subscription_tracking"]["enable"] is True
        assert all("headers" not in p for p in request.json["personalizations"])
    for copy in sendgrid.delivered:
        link = copy.headers["List-Unsubscribe"].strip("<>")
        assert link.startswith(UNSUBSCRIBE_BASE) and link in copy.html
        assert "steadyground.example/u/" not in copy.html


@pytest.mark.parametrize(
    ("name", "sent"),
    [
        (
            "=?utf-8?q?Maya=2C_attacker=40evil=2Eexample?=",
            "=?utf-8?b?PT91dGYtOD9xP01heWE9MkNfYXR0YWNrZXI9NDBldmlsPTJFZXhhbXBsZT89?=",
        ),
        ("Smith, Maya; Coach", '"Smith, Maya; Coach"'),
        ("Demo Editor", "Demo Editor"),
    ],
)
def test_from_name_is_one_phrase(
    fake: FakeSendGrid, provider: SendGridProvider, name: str, sent: str
) -> None:
    """The sender's name goes as one phrase, like the readers' names: quoted or encoded."""

    provider.send([message().replace(sender=Address(SENDER.email, name))], batch_key="b")

    [request] = fake.requests
    assert request.json["from"] == {"email": SENDER.email, "name": sent}
