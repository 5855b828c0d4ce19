"""MailgunProvider against a fake Mailgun speaking real HTTP on 127.0.0.1: the contract,
then `series send --provider mailgun` end to end."""

from __future__ import annotations

import base64
import json
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline.config import Address, load_config
from pipeline.providers import PROVIDER_URL_ENV, get_provider
from pipeline.providers.base import Merge, Message, Pending, ProviderError, Suppression
from pipeline.providers.mailgun import BASE_URLS, KEY_ENV, MailgunProvider
from pipeline.render import CompiledEmail, Personal, _Filled
from pipeline.store import open_store
from pipeline.store.schema import deliveries

from .conftest import FIXTURES
from .fake_http import DROP_AFTER, DROP_BEFORE, Reply
from .fake_mailgun import FakeMailgun, server_error, too_many
from .helpers import configure, enroll_examples, send_at

KEY = "key-3f9c1a7e5b-not-a-real-one"
DOMAIN = "mg.example.com"
MESSAGES = f"/v3/{DOMAIN}/messages"
EVENTS = f"/v3/{DOMAIN}/events"
SENDER = Address("editor@blog.example", "Demo Editor")
ONE_CLICK = "List-Unsubscribe=One-Click"
TEMPLATE = CompiledEmail(
    series="demo",
    part=1,
    subject="Part 1: Getting started",
    preheader="",
    html=_Filled.split(
        '<p>Hello %%series:name%%</p><a href="%%series:unsubscribe_url%%">Unsubscribe</a>'
    ),
    text=_Filled.split("Hello %%series:name%%\nUnsubscribe: %%series:unsubscribe_url%%\n"),
)
OTHER_TEMPLATE = replace(TEMPLATE, part=2, subject="Part 2: Going further")
MONDAY = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture
def fake() -> Iterator[FakeMailgun]:
    with FakeMailgun(key=KEY, domain=DOMAIN) as server:
        yield server


@pytest.fixture
def provider(fake: FakeMailgun) -> Iterator[MailgunProvider]:
    provider = MailgunProvider(base_url=fake.url, domain=DOMAIN, timeout=10)
    yield provider
    provider.close()


def link(email: str) -> str:
    return f"https://blog.example/unsubscribe/{email.split('@')[0]}?s=demo&t=1"


def message(
    key: str,
    email: str,
    name: str = "",
    *,
    template: CompiledEmail = TEMPLATE,
    managed: str | None = None,
) -> Message:
    """A message as the send loop builds it (see send._build)."""
    url = managed or link(email)
    headers = (
        {} if managed else {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": ONE_CLICK}
    )
    rendered = template.personalise(Personal(name, email, url))
    return Message(
        key=key,
        sender=SENDER,
        to=Address(email, name),
        subject=template.subject,
        html=rendered.html,
        text=rendered.text,
        reply_to="editor@blog.example",
        headers=headers,
        tag=f"demo-part{template.part}",
        merge=Merge(template, {"name": name or "there", "email": email, "unsubscribe_url": url}),
    )


ANN = message("k-ann", "ann@example.com", "Ann <&> O'Neil")
BOB = message("k-bob", "bob@example.com", "Bob")


def send_error(provider: MailgunProvider, messages: list[Message] | None = None) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        provider.send(messages or [ANN, BOB], batch_key="b")
    return caught.value


# -- the request --------------------------------------------------------------


def test_one_request_carries_the_batch_in_mailguns_shape(
    fake: FakeMailgun, provider: MailgunProvider
) -> None:
    """One POST to /v3/{domain}/messages with Basic api:<key> and Mailgun's form fields."""
    provider.send([ANN, BOB], batch_key="b")

    [request] = fake.requests
    assert (request.method, request.path) == ("POST", MESSAGES)
    credentials = base64.b64encode(f"api:{KEY}".encode()).decode()
    assert request.header("Authorization") == f"Basic {credentials}"
    form = request.form
    assert form["from"] == ['"Demo Editor" <editor@blog.example>']
    assert form["to"] == ['"Ann <&> O\'Neil" <ann@example.com>', '"Bob" <bob@example.com>']
    assert form["subject"] == ["Part 1: Getting started"]
    assert form["html"] == [
        '<p>Hello %recipient.name_html%</p><a href="%recipient.unsubscribe_url_html%">'
        "Unsubscribe</a>"
    ]
    assert form["text"] == [
        "Hello %recipient.name_text%\nUnsubscribe: %recipient.unsubscribe_url_text%\n"
    ]
    assert form["h:List-Unsubscribe"] == ["%recipient.header_0%"]
    assert form["h:List-Unsubscribe-Post"] == [ONE_CLICK]
    assert form["h:Reply-To"] == ["editor@blog.example"]
    assert form["v:delivery_key"] == ["%recipient.delivery_key%"]
    assert form["o:tag"] == ["demo-part1"]
    assert json.loads(form["recipient-variables"][0]) == {
        "ann@example.com": {
            "name_html": "Ann &lt;&amp;&gt; O&#39;Neil",
            "name_text": "Ann <&> O'Neil",
            "email_html": "ann@example.com",
            "email_text": "ann@example.com",
            "unsubscribe_url_html": link("ann@example.com").replace("&", "&amp;"),
            "unsubscribe_url_text": link("ann@example.com"),
            "header_0": f"<{link('ann@example.com')}>",
            "delivery_key": "k-ann",
        },
        "bob@example.com": {
            "name_html": "Bob",
            "name_text": "Bob",
            "email_html": "bob@example.com",
            "email_text": "bob@example.com",
            "unsubscribe_url_html": link("bob@example.com").replace("&", "&amp;"),
            "unsubscribe_url_text": link("bob@example.com"),
            "header_0": f"<{link('bob@example.com')}>",
            "delivery_key": "k-bob",
        },
    }


def test_each_recipient_sees_only_themself(fake: FakeMailgun, provider: MailgunProvider) -> None:
    """Each copy is what the send loop built for that reader: own To, name, link, key."""
    provider.send([ANN, BOB], batch_key="b")

    for sent in (ANN, BOB):
        [copy] = fake.copies_to(sent.to.email)
        assert (copy.html, copy.text) == (sent.html, sent.text)
        assert copy.to_header == f"{sent.to.name} <{sent.to.email}>"
        assert copy.headers == {**sent.headers, "Reply-To": "editor@blog.example"}
        assert copy.variables == {"delivery_key": sent.key}
    assert link("bob@example.com") not in fake.copies_to("ann@example.com")[0].text


def test_results_carry_the_request_id(fake: FakeMailgun, provider: MailgunProvider) -> None:
    """Every message of the request is sent under the id of Mailgun's reply."""
    results = provider.send([ANN, BOB], batch_key="b")

    ids = {copy.message_id for copy in fake.delivered}
    assert len(ids) == 1
    assert [(r.key, r.outcome, r.message_id) for r in results] == [
        ("k-ann", "sent", ids.pop()),
        ("k-bob", "sent", fake.delivered[0].message_id),
    ]
    assert not provider.idempotent


def test_shared_fields_go_into_the_body_as_they_are(
    fake: FakeMailgun, provider: MailgunProvider
) -> None:
    """A field the same for every recipient needs no recipient variable."""
    twin = message("k-bob", "bob@example.com", "Ann <&> O'Neil")

    provider.send([ANN, twin], batch_key="b")

    form = fake.requests[0].form
    assert form["html"][0].startswith("<p>Hello Ann &lt;&amp;&gt; O&#39;Neil</p>")
    assert "name_html" not in json.loads(form["recipient-variables"][0])["ann@example.com"]


@pytest.mark.parametrize("region", ["us", "eu"])
def test_region_picks_mailguns_base_url(region: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without SERIES_PROVIDER_URL, US domains use api.mailgun.net and EU api.eu.mailgun.net."""
    provider = MailgunProvider(base_url=None, domain=DOMAIN, region=region)
    try:
        assert provider.http.base_url == BASE_URLS[region]
    finally:
        provider.close()
    assert BASE_URLS == {"us": "https://api.mailgun.net", "eu": "https://api.eu.mailgun.net"}


def test_provider_url_override_and_config_reach_the_fake(
    fake: FakeMailgun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SERIES_PROVIDER_URL plus [mailgun] domain and batch_size from the config."""
    shutil.copy(FIXTURES / "config" / "config_valid.toml", tmp_path / "series.toml")
    with (tmp_path / "series.toml").open("a", encoding="utf-8") as config:
        config.write(f'\n[mailgun]\ndomain = "{DOMAIN}"\nregion = "eu"\nbatch_size = 1\n')
    monkeypatch.setenv(PROVIDER_URL_ENV, fake.url)

    provider = get_provider("mailgun", load_config(tmp_path))
    try:
        [result] = provider.send([ANN], batch_key="b")
    finally:
        provider.close()

    assert result.outcome == "sent" and provider.batch_size == 1
    assert [r.path for r in fake.requests] == [MESSAGES]


def test_managed_unsubscribes_let_mailgun_fill_link_and_headers(
    fake: FakeMailgun, provider: MailgunProvider
) -> None:
    """Managed mode: %unsubscribe_url% in the body and both one-click headers, per reader."""
    managed = MailgunProvider(base_url=fake.url, domain=DOMAIN, manage_unsubscribes=True)
    placeholder = managed.managed_unsubscribe
    assert placeholder == "%unsubscribe_url%" and provider.managed_unsubscribe is None
    ann = message("k-ann", "ann@example.com", "Ann", managed=placeholder)
    bob = message("k-bob", "bob@example.com", "Bob", managed=placeholder)
    try:
        managed.send([ann, bob], batch_key="b")
    finally:
        managed.close()

    form = fake.requests[0].form
    assert form["h:List-Unsubscribe"] == ["<%unsubscribe_url%>"]
    assert form["h:List-Unsubscribe-Post"] == [ONE_CLICK]
    assert '<a href="%unsubscribe_url%">' in form["html"][0]
    links = set()
    for address in ("ann@example.com", "bob@example.com"):
        [copy] = fake.copies_to(address)
        url = copy.headers["List-Unsubscribe"].strip("<>")
        assert url.startswith(f"https://email.{DOMAIN}/u/") and f'href="{url}"' in copy.html
        assert copy.headers["List-Unsubscribe-Post"] == ONE_CLICK
        links.add(url)
    assert len(links) == 2


def test_a_batch_mixing_templates_is_split(fake: FakeMailgun, provider: MailgunProvider) -> None:
    """Messages of two templates (or one address twice) never share a request."""
    second = message("k-ann-2", "ann@example.com", "Ann", template=OTHER_TEMPLATE)
    again = message("k-ann-3", "ann@example.com", "Ann")

    results = provider.send([ANN, second, BOB, again], batch_key="b")

    requests = fake.message_requests()
    assert [r.form["to"] for r in requests] == [
        [ANN.to.formatted(), BOB.to.formatted()],
        [again.to.formatted()],
        [second.to.formatted()],
    ]
    assert [r.outcome for r in results] == ["sent"] * 4
    assert len({r.message_id for r in results}) == 3
    assert results[0].message_id == results[2].message_id


# -- refused recipients -------------------------------------------------------


def test_a_named_invalid_recipient_fails_and_the_rest_go_again() -> None:
    """A 400 naming a recipient bounces that one; the others are sent in the same call."""
    with FakeMailgun(
        key=KEY, domain=DOMAIN, invalid={"bad@example.com"}, name_invalid=True
    ) as fake:
        provider = MailgunProvider(base_url=fake.url, domain=DOMAIN)
        bad = message("k-bad", "bad@example.com", "Bad")
        try:
            results = provider.send([ANN, bad, BOB], batch_key="b")
        finally:
            provider.close()

    sent, failed, also_sent = results
    assert (failed.outcome, failed.subscriber_status) == ("failed", "bounced")
    assert failed.error is not None and failed.error.startswith("400: 'to' parameter")
    assert (sent.outcome, also_sent.outcome) == ("sent", "sent")
    assert [len(r.form["to"]) for r in fake.message_requests()] == [3, 2]
    assert {c.to for c in fake.delivered} == {"ann@example.com", "bob@example.com"}


def test_an_unnamed_invalid_recipient_is_found_by_halving() -> None:
    """A 400 blaming 'to' without naming anyone: halves are sent until the bad one is alone."""
    readers = [message(f"k{i}", f"reader{i}@example.com") for i in range(6)]
    with FakeMailgun(key=KEY, domain=DOMAIN, invalid={"reader4@example.com"}) as fake:
        provider = MailgunProvider(base_url=fake.url, domain=DOMAIN)
        try:
            results = provider.send(readers, batch_key="b")
        finally:
            provider.close()

    assert [r.outcome for r in results] == ["sent"] * 4 + ["failed", "sent"]
    assert results[4].subscriber_status == "bounced"
    assert Counter(c.to for c in fake.delivered) == {
        f"reader{i}@example.com": 1 for i in (0, 1, 2, 3, 5)
    }


def test_a_request_error_not_about_recipients_is_final(
    fake: FakeMailgun, provider: MailgunProvider
) -> None:
    """Any other 400 fails the request, not retryable, nobody bounced, Mailgun's words shown."""
    fake.fail_next(MESSAGES, Reply(400, {"message": "from parameter is missing"}))

    error = send_error(provider, [ANN])

    assert not (error.retryable or error.auth or error.maybe_sent)
    assert str(error) == "Mailgun rejected the request (400): from parameter is missing"
    assert fake.delivered == []


def test_a_sender_that_cannot_be_sent_from_fails_each_message_before_any_request(
    fake: FakeMailgun, provider: MailgunProvider
) -> None:
    """A sender address series cannot send from fails its messages locally, nobody bounced."""
    results = provider.send([ANN.replace(sender=Address(""))], batch_key="b")

    assert [(r.outcome, r.subscriber_status, r.error) for r in results] == [
        ("failed", None, "not sent: '' is not an email address")
    ]
    assert fake.requests == []


def test_more_than_a_thousand_recipients_take_two_requests(
    fake: FakeMailgun, provider: MailgunProvider
) -> None:
    """Mailgun takes 1000 recipients per request: 1001 messages become two requests."""
    many = [message(f"k{i}", f"r{i}@example.com") for i in range(1001)]

    results = provider.send(many, batch_key="b")

    assert [len(r.form["to"]) for r in fake.message_requests()] == [1000, 1]
    assert Counter(r.outcome for r in results) == {"sent": 1001}


# -- whole-request failures ---------------------------------------------------


def test_bad_key_is_an_auth_error_that_hides_the_key(
    fake: FakeMailgun, provider: MailgunProvider
) -> None:
    """401 "Forbidden" stops the run, names the variable, and never shows the key."""
    fake.key = "some-other-key"

    error = send_error(provider)

    assert error.auth and not error.retryable and not error.maybe_sent
    assert str(error).startswith(f"Mailgun refused the API key (401 Forbidden); check {KEY_ENV}")
    credentials = base64.b64encode(f"api:{KEY}".encode()).decode()
    shown = f"{error} {error!r} {error.args}"
    assert KEY not in shown and credentials not in shown
    assert error.__cause__ is None and error.__context__ is None


def test_forbidden_is_an_auth_error(fake: FakeMailgun, provider: MailgunProvider) -> None:
    """403 (the key may not use this domain) stops the run too."""
    fake.fail_next(MESSAGES, Reply(403, {"message": "Domain mg.example.com is not allowed"}))

    error = send_error(provider)

    assert error.auth and "403" in str(error)


def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without MAILGUN_API_KEY the provider refuses to start, naming the variable."""
    monkeypatch.delenv(KEY_ENV)

    with pytest.raises(ProviderError) as caught:
        MailgunProvider(base_url=None, domain=DOMAIN)

    assert caught.value.auth and KEY_ENV in str(caught.value)


def test_missing_domain_says_where_to_set_it() -> None:
    """An empty domain is one line telling the editor what to write in the config."""
    with pytest.raises(ProviderError) as caught:
        MailgunProvider(base_url=None, domain="")

    assert str(caught.value) == (
        'the mailgun provider needs your sending domain: set domain = "mg.example.com" '
        "under [tool.series.mailgun] (or [mailgun] in series.toml)"
    )


def test_rate_limit_honours_retry_after(fake: FakeMailgun, provider: MailgunProvider) -> None:
    """429 with Retry-After: 7 is retryable after 7 s, and nothing was sent."""
    fake.fail_next(MESSAGES, too_many(retry_after="7"))

    error = send_error(provider)

    assert (error.retryable, error.retry_after, error.maybe_sent, error.auth) == (
        True,
        7.0,
        False,
        False,
    )
    assert fake.delivered == []


@pytest.mark.parametrize("reply", [too_many(), server_error(500), server_error(503)])
def test_transient_statuses_are_retryable(
    fake: FakeMailgun, provider: MailgunProvider, reply: Reply
) -> None:
    """429 without Retry-After, 500 and 503 are retryable with no hint of when."""
    fake.fail_next(MESSAGES, reply)

    error = send_error(provider)

    assert (error.retryable, error.maybe_sent, error.retry_after) == (True, False, None)
    assert str(reply.status) in str(error)


@pytest.mark.parametrize("status", [502, 504])
def test_gateway_errors_leave_the_outcome_unknown(
    fake: FakeMailgun, provider: MailgunProvider, status: int
) -> None:
    """Behind a gateway's 502/504 Mailgun may have queued the message: maybe sent."""
    fake.fail_next(MESSAGES, server_error(status))

    error = send_error(provider)

    assert (error.retryable, error.maybe_sent) == (True, True)


@pytest.mark.parametrize(("fault", "copies"), [(DROP_BEFORE, 0), (DROP_AFTER, 2)])
def test_dropped_connection_leaves_the_outcome_unknown(
    fake: FakeMailgun, provider: MailgunProvider, fault: str, copies: int
) -> None:
    """A connection closed unanswered may have been accepted: maybe_sent, never retried as
    if nothing happened (no idempotency key)."""
    fake.fail_next(MESSAGES, fault)

    error = send_error(provider)

    assert error.maybe_sent and not provider.idempotent
    assert len(fake.delivered) == copies
    assert len(fake.message_requests()) == 1


@pytest.mark.parametrize(
    ("fault", "outcome"), [(server_error(500), "failed"), (DROP_AFTER, "unknown")]
)
def test_a_later_request_failing_keeps_the_earlier_ones_sent(
    fake: FakeMailgun, provider: MailgunProvider, fault: Reply | str, outcome: str
) -> None:
    """When the second request of a batch fails, the first one's messages stay sent."""
    second = message("k-2", "ann@example.com", "Ann", template=OTHER_TEMPLATE)
    provider.send([BOB], batch_key="warm-up")  # the fault must hit the second request
    fake.requests.clear()
    fake.fail_next(MESSAGES, Reply(200, {"id": "<ignored>", "message": "Queued. Thank you."}))
    fake.fail_next(MESSAGES, fault)

    first, later = provider.send([ANN, second], batch_key="b")

    assert (first.outcome, first.message_id) == ("sent", "<ignored>")
    assert later.outcome == outcome and later.error is not None
    assert len(fake.message_requests()) == 2


# -- lookup and suppressions ----------------------------------------------------


def test_lookup_pages_through_accepted_events() -> None:
    """lookup follows paging.next (on its own base URL) and matches user-variables."""
    with FakeMailgun(key=KEY, domain=DOMAIN, page_size=1) as fake:
        provider = MailgunProvider(base_url=fake.url, domain=DOMAIN)
        try:
            for key in ("k-1", "k-2", "k-3"):
                provider.send([ANN.replace(key=key)], batch_key=key)
            since = datetime.now(UTC) - timedelta(minutes=1)
            found = provider.lookup(
                [Pending("k-3", "ann@example.com", since), Pending("k-9", "ann@example.com", since)]
            )
        finally:
            provider.close()

    assert found == {"k-3": fake.delivered[2].message_id, "k-9": None}
    searches = [r for r in fake.requests if r.path.startswith(EVENTS)]
    first = searches[0]
    assert first.path == EVENTS
    assert {k: v[0] for k, v in first.query.items()} == {
        "event": "accepted",
        "recipient": "ann@example.com",
        "begin": f"{(since - timedelta(minutes=10)).timestamp():.0f}",
        "ascending": "yes",
        "limit": "300",
    }
    assert all(r.path.startswith(f"{EVENTS}/") for r in searches[1:3])
    assert len(searches) == 3 + 4  # k-3 on the third page; k-9 reads to the empty fourth


def test_an_idn_reader_is_sent_and_looked_up_in_ascii(
    fake: FakeMailgun, provider: MailgunProvider
) -> None:
    """The stored address anna@bücher.example goes out as anna@xn--bcher-kva.example (its
    recipient variables keyed so), and the events search asks for that form."""
    anna = message("k-anna", "anna@bücher.example", "Anna")

    [result] = provider.send([anna], batch_key="b")
    since = datetime.now(UTC) - timedelta(minutes=1)
    found = provider.lookup([Pending("k-anna", "anna@bücher.example", since)])

    [request] = fake.message_requests()
    assert request.form["to"] == ['"Anna" <anna@xn--bcher-kva.example>']
    assert set(json.loads(request.form["recipient-variables"][0])) == {"anna@xn--bcher-kva.example"}
    assert found == {"k-anna": result.message_id}
    [search] = [r for r in fake.requests if r.path == EVENTS]
    assert search.query["recipient"] == ["anna@xn--bcher-kva.example"]


def test_lookup_failures_are_provider_errors(fake: FakeMailgun, provider: MailgunProvider) -> None:
    """A failing events search raises: retryable for 503, auth for 401."""
    pending = [Pending("k", "ann@example.com", MONDAY)]
    fake.fail_next(EVENTS, server_error(503))
    with pytest.raises(ProviderError) as caught:
        provider.lookup(pending)
    assert caught.value.retryable

    fake.key = "other"
    with pytest.raises(ProviderError) as caught:
        provider.lookup(pending)
    assert caught.value.auth


def test_suppressions_page_through_all_three_lists() -> None:
    """Bounces, complaints and unsubscribes, every page, each with its status."""
    with FakeMailgun(key=KEY, domain=DOMAIN, page_size=2) as fake:
        for n in range(3):
            fake.add_bounce(f"bounce{n}@example.com")
        fake.add_complaint("angry@example.com")
        fake.add_unsubscribe("left@example.com")
        fake.add_unsubscribe("tagged@example.com", tags=["demo-part1"])
        provider = MailgunProvider(base_url=fake.url, domain=DOMAIN)
        try:
            entries = list(provider.suppressions())
        finally:
            provider.close()

    assert entries == [
        Suppression("bounce0@example.com", "bounced", "Mailgun bounce (550 No such mailbox)"),
        Suppression("bounce1@example.com", "bounced", "Mailgun bounce (550 No such mailbox)"),
        Suppression("bounce2@example.com", "bounced", "Mailgun bounce (550 No such mailbox)"),
        Suppression("angry@example.com", "complained", "Mailgun spam complaint"),
        Suppression("left@example.com", "unsubscribed", "Mailgun unsubscribe"),
        Suppression("tagged@example.com", "unsubscribed", "Mailgun unsubscribe (tags: demo-part1)"),
    ]
    pages = Counter(r.path for r in fake.requests)
    assert pages == {
        f"/v3/{DOMAIN}/bounces": 3,  # 2 + 1 + the empty page
        f"/v3/{DOMAIN}/complaints": 2,
        f"/v3/{DOMAIN}/unsubscribes": 2,
    }


def test_suppression_errors_are_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown domain or a failing list is one line naming what failed; the key hidden."""
    with FakeMailgun(key=KEY, domain="mg.other.example") as fake:
        provider = MailgunProvider(base_url=fake.url, domain=DOMAIN)
        try:
            with pytest.raises(ProviderError) as caught:
                list(provider.suppressions())
            assert str(caught.value) == (
                "Mailgun answered 404 to the bounces list: Domain not found: mg.example.com"
            )
            fake.domain = DOMAIN
            fake.fail_next(f"/v3/{DOMAIN}/complaints", server_error(502))
            with pytest.raises(ProviderError) as caught:
                list(provider.suppressions())
        finally:
            provider.close()

    assert caught.value.retryable and "\n" not in str(caught.value)
    assert KEY not in str(caught.value)


# -- end to end: series send --provider mailgun ---------------------------------


@pytest.fixture
def mailgun(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeMailgun]:
    with FakeMailgun(key=KEY, domain=DOMAIN, clock=MONDAY.timestamp) as fake:
        monkeypatch.setenv(PROVIDER_URL_ENV, fake.url)
        yield fake


@pytest.fixture
def workspace(example_copy: Path) -> Path:
    """The example workspace with a Mailgun domain and the six example subscribers."""
    configure(example_copy, 'provider = "mailgun"', f'[tool.series.mailgun]\ndomain = "{DOMAIN}"')
    return enroll_examples(example_copy)


def send(root: Path, when: datetime) -> tuple[int, str, str]:
    return send_at(root, when)


def ledger_states(root: Path) -> Counter[str]:
    with open_store(root) as store, store.connect() as conn:
        return Counter(conn.scalars(sa.select(deliveries.c.state)))


def test_send_gives_everyone_their_part_once_with_their_own_link(
    workspace: Path, mailgun: FakeMailgun
) -> None:
    """`series send --provider mailgun`: one copy each, their own link in body and header."""
    code, out, _ = send(workspace, MONDAY)

    assert (code, out) == (0, "sent 6, failed 0, retried 0, unknown 0, skipped 0\n")
    assert Counter(c.to for c in mailgun.delivered) == Counter(
        {
            a: 1
            for a in (
                "asa.berg@example.com",
                "daniel.okafor@example.com",
                "yuki.tanaka@example.com",
                "priya.nair@example.com",
                "marcus.reyes@example.com",
                "eleanor.hughes@example.com",
            )
        }
    )
    links = set()
    for copy in mailgun.delivered:
        url = copy.headers["List-Unsubscribe"].strip("<>")
        assert url.startswith("https://steadyground.example/") and url in copy.text
        assert copy.headers["List-Unsubscribe-Post"] == ONE_CLICK
        assert copy.to_header.endswith(f"<{copy.to}>")
        links.add(url)
    assert len(links) == 6
    parts = Counter(c.tags[0] for c in mailgun.delivered)
    assert parts == {"attachment-part1": 5, "attachment-part2": 1}  # Yuki starts at part 2
    assert len(mailgun.message_requests()) == 2  # one request per part
    with open_store(workspace) as store, store.connect() as conn:
        ids = set(conn.scalars(sa.select(deliveries.c.provider_message_id)))
    assert ids == {c.message_id for c in mailgun.delivered}


def test_lost_answers_are_resolved_through_events_without_sending_twice(
    workspace: Path, mailgun: FakeMailgun
) -> None:
    """Mailgun accepts both requests but the answers are lost: the deliveries are unknown,
    and the next run finds them through the events API and sends nothing again."""
    mailgun.fail_next(MESSAGES, DROP_AFTER, times=2)

    assert send(workspace, MONDAY)[1] == "sent 0, failed 0, retried 0, unknown 6, skipped 0\n"
    assert ledger_states(workspace) == Counter({"unknown": 6})
    assert len(mailgun.delivered) == 6

    _, out, _ = send(workspace, MONDAY + timedelta(minutes=20))

    assert out.splitlines() == [
        "sent 0, failed 0, retried 0, unknown 0, skipped 0",
        "resolved 6 delivery(ies) left unknown by an earlier run",
    ]
    assert ledger_states(workspace) == Counter({"sent": 6})
    assert len(mailgun.delivered) == 6
    assert len(mailgun.message_requests()) == 2
    with open_store(workspace) as store, store.connect() as conn:
        ids = set(conn.scalars(sa.select(deliveries.c.provider_message_id)))
    assert ids == {c.message_id for c in mailgun.delivered}
