"""The signup form and its double opt-in over real HTTP on 127.0.0.1, against a real
SQLite state; confirmation emails are read as the raw .eml files the outbox writes."""

from __future__ import annotations

import email
import email.policy
import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from pipeline.store.schema import enrollments, signups, status_changes, subscribers, suppressions
from pipeline.subscribers import find, remove, unsubscribe
from pipeline.tokens import SECRET_ENV

from .conftest import BuildWorkspace
from .fake_postmark import FakePostmark
from .helpers import run
from .signup_site import ANN, SIGNUP, START, Clock, SignupSite, build, serve

ORIGIN = "https://blog.example"


@pytest.fixture
def site(workspace: BuildWorkspace, monkeypatch: pytest.MonkeyPatch) -> Iterator[SignupSite]:
    monkeypatch.delenv("SERIES_DATABASE_URL", raising=False)
    monkeypatch.delenv(SECRET_ENV, raising=False)
    yield from serve(build(workspace), Clock())


def configured(
    workspace: BuildWorkspace, monkeypatch: pytest.MonkeyPatch, extra: str
) -> Iterator[SignupSite]:
    monkeypatch.delenv("SERIES_DATABASE_URL", raising=False)
    yield from serve(build(workspace, SIGNUP + extra), Clock())


def confirm(site: SignupSite, token: str, **headers: str) -> tuple[int, str]:
    response = site.post(f"/confirm/{token}", data={"confirm": "yes"}, headers=headers)
    return response.status_code, response.text


def heading(html: str) -> str:
    return html.split("<h1>", 1)[1].split("</h1>", 1)[0]


# -- the form ---------------------------------------------------------------------


def test_form_offers_published_series_with_a_hidden_honeypot(site: SignupSite) -> None:
    """GET /subscribe: email, optional name, a choice of the published series, a honeypot."""
    page = site.get("/subscribe")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    html = page.text
    assert '<input type="email" id="email" name="email"' in html and "required" in html
    assert '<label for="name">Name<span class="hint"> (optional)</span></label>' in html
    assert 'value="demo" checked> Demo Series' in html and 'value="other"> Another Story' in html
    assert "Coming Later" not in html and 'value="later"' not in html  # nothing published yet
    trap = html.split('<div class="trap" aria-hidden="true">', 1)[1].split("</div>", 1)[0]
    assert 'name="website" tabindex="-1" autocomplete="off"' in trap
    assert ".trap{position:absolute;left:-10000px" in html
    assert "<script" not in html


def test_form_preselects_and_refuses_unknown_series(site: SignupSite) -> None:
    """?series=SLUG picks that series; an unknown one is a 404 that says so."""
    assert 'value="other" checked>' in site.get("/subscribe?series=other").text
    missing = site.get("/subscribe?series=nope")
    assert missing.status_code == 404
    assert "There is no series &#x27;nope&#x27; to join here" in missing.text


def test_form_with_one_series_offered_needs_no_choice(
    workspace: BuildWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """signup.series limits the offer; with one series the page names it."""
    for site in configured(workspace, monkeypatch, 'series = ["other"]\n'):
        html = site.get("/subscribe").text
        assert heading(html) == "Subscribe to Another Story"
        assert '<input type="hidden" name="series" value="other">' in html
        assert site.post(data={"email": ANN}).status_code == 200  # series implied
        assert site.subscribe("bo@example.com", "demo").status_code == 400


def test_signup_off_by_default(workspace: BuildWorkspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without [signup] enabled = true, /subscribe and /confirm are not there."""
    monkeypatch.delenv("SERIES_DATABASE_URL", raising=False)
    for site in serve(build(workspace, ""), Clock()):
        assert site.get("/subscribe").status_code == 404
        assert site.subscribe().status_code == 404
        assert site.get("/confirm/abc.def").status_code == 404
        assert not (site.root / "outbox").exists()


# -- POST /subscribe ----------------------------------------------------------------


def test_form_post_sends_a_confirmation_and_stores_a_pending_signup(site: SignupSite) -> None:
    """A post answers "check your inbox", mails a confirmation, and stores only a signup."""
    response = site.post(
        data={"email": " Ann@Example.COM ", "name": "Ann", "series": "other", "website": ""},
        headers={"User-Agent": "TestBrowser/1.0", "Referer": "https://blog.example/post/"},
    )
    assert response.status_code == 200 and heading(response.text) == "Check your inbox"
    assert "confirm your subscription to Another Story" in response.text
    [raw] = site.new_emails()
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["To"] == "ann@example.com"
    assert message["Subject"] == "Please confirm your subscription to Another Story"
    assert b'From: "Demo Editor" <editor@blog.example>' in raw
    assert b"List-Unsubscribe" not in raw  # transactional, asked for by the person
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    for part in (text, html):
        assert "Another Story" in part and "Demo Blog" in part
        assert "https://blog.example/confirm/" in part
        assert "this wasn't you, ignore this email" in part.replace("&#39;", "'")
        assert "48 hours" in part
        assert "Ann" not in part.replace("Another", "")  # the typed name is never mailed
    assert "Yes, subscribe me" in html
    assert site.rows(subscribers) == [] and site.rows(enrollments) == []
    [pending] = site.rows(signups)
    assert (pending.email, pending.name, pending.series) == ("ann@example.com", "Ann", "other")
    assert (pending.ip, pending.user_agent, pending.form) == (
        "127.0.0.1",
        "TestBrowser/1.0",
        "form",
    )
    assert pending.page == "https://blog.example/post/"
    assert pending.expires_at == START + timedelta(hours=48)


def test_pending_signups_are_listed_and_never_planned(site: SignupSite) -> None:
    """`subscribers list --status pending` shows the signup; a send plans nobody for it."""
    from datetime import UTC, datetime

    # The listing reads the real clock: sign up as of now, so the link has not expired.
    site.clock.now = datetime.now(UTC).replace(microsecond=0)
    site.subscribe(series="demo")
    code, out, _ = run(site.root, "subscribers", "list", "--status", "pending")
    assert code == 0
    [header, _, row] = out.splitlines()
    assert header.split() == ["EMAIL", "NAME", "STATUS", "TIMEZONE", "SERIES"]
    assert row.split()[:3] == ["ann@example.com", "pending", "demo:"]
    until = (site.clock.now + timedelta(hours=48)).strftime("%Y-%m-%d %H:%M UTC")
    assert f"link works until {until}" in row
    code, out, err = run(
        site.root, "subscribers", "list", "--status", "pending", "--series", "other"
    )
    assert (code, out, err) == (0, "", "no subscribers match\n")
    later = (site.clock.now + timedelta(days=1)).isoformat()
    code, out, _ = run(site.root, "send", "--dry-run", "--now", later)
    assert code == 0 and "ann@example.com" not in out
    code, out, _ = run(site.root, "send", "--now", later)
    assert code == 0 and not [
        p for p in (site.root / "outbox").glob("*.eml") if "signup" not in p.name
    ]


def test_the_answer_does_not_reveal_who_subscribes(site: SignupSite) -> None:
    """A reader already enrolled and a stranger get byte-for-byte the same answer."""
    site.add("known@example.com", "demo")
    known = site.subscribe("known@example.com")
    stranger = site.subscribe("stranger@example.com")
    assert (known.status_code, known.text) == (stranger.status_code, stranger.text)
    as_json = [
        site.post(json={"email": who, "series": "demo"}, headers={"Origin": ORIGIN})
        for who in ("known@example.com", "stranger@example.com")
    ]
    assert as_json[0].json() == as_json[1].json() and as_json[0].json()["ok"] is True


@pytest.mark.parametrize(
    ("address", "series", "field"),
    [
        ("not-an-address", "demo", "email"),
        ("", "demo", "email"),
        ("ann@localhost", "demo", "email"),
        ("ann@@example.com", "demo", "email"),
        ("josé@example.com", "demo", "email"),  # needs SMTPUTF8: series cannot send it
        ("ann@example.com", "nope", "series"),
        ("ann@example.com", "later", "series"),  # not published yet
    ],
)
def test_bad_input_is_a_400_and_nothing_is_stored(
    site: SignupSite, address: str, series: str, field: str
) -> None:
    """A bad address or a series not offered: 400 naming the field, no row, no email."""
    before = site.snapshot()
    form = site.subscribe(address, series)
    assert form.status_code == 400
    assert '<p class="error" role="alert" id="form-error">' in form.text
    if field == "email":
        assert 'aria-invalid="true" aria-describedby="form-error"' in form.text
    as_json = site.post(json={"email": address, "series": series}, headers={"Origin": ORIGIN})
    assert as_json.status_code == 400
    body = as_json.json()
    assert body["ok"] is False and body["field"] == field and body["error"]
    assert site.snapshot() == before and site.new_emails() == []


def test_an_idn_address_is_taken(site: SignupSite) -> None:
    """An internationalised domain is fine (it goes out in ASCII)."""
    assert site.subscribe("ann@bücher.example").status_code == 200
    [raw] = site.new_emails()
    assert b"To: ann@xn--bcher-kva.example" in raw


def test_hostile_name_is_stored_on_one_line_and_never_mailed(site: SignupSite) -> None:
    """A name with line breaks and an encoded-word is cleaned; the email never carries it."""
    name = "Ann\r\nBcc: victim@example.com =?utf-8?b?U3BhbQ==?= http://spam.example"
    assert site.post(data={"email": ANN, "series": "demo", "name": name}).status_code == 200
    [raw] = site.new_emails()
    assert b"spam.example" not in raw and b"Bcc" not in raw and b"U3BhbQ" not in raw
    [row] = site.rows(signups)
    assert "\n" not in row.name and "\r" not in row.name


# -- the confirmation link ------------------------------------------------------------


def test_get_shows_a_confirm_button_and_changes_nothing(site: SignupSite) -> None:
    """Mail scanners follow links: GET and HEAD, however often, confirm nothing."""
    site.subscribe()
    token = site.token()
    before = site.snapshot()
    for _ in range(2):
        page = site.get(f"/confirm/{token}")
        assert page.status_code == 200
        assert heading(page.text) == "Confirm your subscription to Demo Series"
        assert (
            '<button type="submit" name="confirm" value="yes" id="confirm">Confirm</button>'
            in page.text
        )
    assert site.get(f"/confirm/{token}").headers["Referrer-Policy"] == "no-referrer"
    import requests

    assert requests.head(f"{site.url}/confirm/{token}", timeout=10).status_code == 200
    assert site.snapshot() == before


def test_post_confirms_once_and_the_next_run_sends_part_1(site: SignupSite) -> None:
    """Confirming makes Ann active and enrolled as of that moment; `series send` sends part 1."""
    site.post(
        data={"email": ANN, "name": "Ann", "series": "demo", "form": "sidebar"},
        headers={"User-Agent": "Asker/1", "Referer": "https://blog.example/a/"},
    )
    token = site.token()
    site.clock.now = START + timedelta(hours=3)
    status, html = confirm(site, token, **{"User-Agent": "Confirmer/2"})
    assert status == 200 and heading(html) == "You are subscribed to Demo Series"
    ann = find(site.store, ANN)
    assert (ann.status, ann.name, [e.series for e in ann.enrollments]) == (
        "active",
        "Ann",
        ["demo"],
    )
    [enrolled] = site.rows(enrollments)
    assert enrolled.enrolled_at == START + timedelta(hours=3)
    [audit] = site.rows(status_changes)
    assert (audit.old_status, audit.new_status, audit.actor, audit.series) == (
        None,
        "active",
        "web:signup",
        "demo",
    )
    consent = json.loads(audit.reason)
    assert consent == {
        "consent": "double opt-in",
        "signup": 1,
        "series": "demo",
        "form": "sidebar",
        "page": "https://blog.example/a/",
        "requested_at": START.isoformat(),
        "request_ip": "127.0.0.1",
        "request_user_agent": "Asker/1",
        "confirmation_sent_at": START.isoformat(),
        "confirmed_at": (START + timedelta(hours=3)).isoformat(),
        "confirm_ip": "127.0.0.1",
        "confirm_user_agent": "Confirmer/2",
        "previously": "new",
    }
    code, out, _ = run(site.root, "subscribers", "list", "--status", "pending")
    assert out == ""
    # Monday 2026-02-02 13:00 in Stockholm is inside the send window.
    code, out, err = run(site.root, "send", "--now", "2026-02-02T13:30:00+00:00")
    assert code == 0, err
    [part] = [p for p in (site.root / "outbox").glob("*.eml") if not p.name.startswith("signup")]
    raw = part.read_bytes()
    assert b'To: "Ann" <ann@example.com>' in raw and b"List-Unsubscribe: <https://" in raw


def test_a_replayed_link_says_it_was_used(site: SignupSite) -> None:
    """The second POST (and any GET after) is a "link was already used" page; nothing changes."""
    site.subscribe()
    token = site.token()
    assert confirm(site, token)[0] == 200
    before = site.snapshot()
    status, html = confirm(site, token)
    assert status == 410 and heading(html) == "This link was already used"
    assert '<a href="../subscribe?series=demo" id="again">Sign up again</a>' in html
    assert heading(site.get(f"/confirm/{token}").text) == "This link was already used"
    assert site.snapshot() == before


def test_a_post_without_the_button_confirms_nothing(site: SignupSite) -> None:
    """Only the page's own button (confirm=yes) confirms."""
    site.subscribe()
    token = site.token()
    assert site.post(f"/confirm/{token}").status_code == 400
    assert site.rows(subscribers) == []


def test_forged_and_tampered_tokens_are_refused(site: SignupSite) -> None:
    """Made-up, altered, re-signed with another key or from an unsubscribe link: not valid."""
    import base64

    from pipeline.signup_tokens import ConfirmSigner
    from pipeline.tokens import Signer

    site.subscribe()
    token = site.token()
    payload, mac = token.split(".")
    raw = base64.urlsafe_b64decode(payload + "==").decode()
    other_series = raw.replace(".demo.", ".other.")
    later = raw.split(".")
    later[2] = str(int(later[2]) + 86400)
    forged = [
        "abc.def",
        "nonsense",
        f"{payload}.{mac[:-1]}A" if mac[-1] != "A" else f"{payload}.{mac[:-1]}B",
        f"{base64.urlsafe_b64encode(other_series.encode()).decode().rstrip('=')}.{mac}",
        f"{base64.urlsafe_b64encode('.'.join(later).encode()).decode().rstrip('=')}.{mac}",
        ConfirmSigner(b"another key").token(1, "demo", ANN, expires=START + timedelta(days=1)),
        Signer(b"another key").token(1, "demo", issued=START),
        f"{token}=",
        token + "." + mac,
    ]
    before = site.snapshot()
    for bad in forged:
        for response in (
            site.get(f"/confirm/{bad}"),
            site.post(f"/confirm/{bad}", data={"confirm": "yes"}),
        ):
            assert response.status_code == 400, bad
            assert heading(response.text) == "This link is not valid"
    assert site.snapshot() == before


def test_an_expired_link_says_so_and_offers_to_sign_up_again(site: SignupSite) -> None:
    """After 48 hours the link is expired (GET and POST); the signup is then purged."""
    site.subscribe(series="other")
    token = site.token()
    site.clock.now = START + timedelta(hours=48)
    for response in (
        site.get(f"/confirm/{token}"),
        site.post(f"/confirm/{token}", data={"confirm": "yes"}),
    ):
        assert response.status_code == 410
        assert heading(response.text) == "This link has expired"
        assert '<a href="../subscribe?series=other" id="again">Sign up again</a>' in response.text
    assert site.rows(subscribers) == []
    assert site.rows(signups) == []  # purged by the POST
    assert site.subscribe(series="other").status_code == 200 and len(site.new_emails()) == 1


def test_link_lifetime_is_configurable(
    workspace: BuildWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """signup.token_hours = 1: the email says one hour, and the link works that long."""
    for site in configured(workspace, monkeypatch, "token_hours = 1\n"):
        site.subscribe()
        [raw] = site.new_emails()
        assert b"1 hour." in raw
        from .signup_site import token_in

        token = token_in(raw)
        site.clock.now = START + timedelta(minutes=59)
        assert site.get(f"/confirm/{token}").status_code == 200
        site.clock.now = START + timedelta(minutes=60)
        assert site.get(f"/confirm/{token}").status_code == 410


# -- abuse --------------------------------------------------------------------------


def test_the_honeypot_gets_the_normal_answer_and_nothing_happens(site: SignupSite) -> None:
    """A bot filling in `website` is told "check your inbox"; nothing is stored or sent."""
    normal = site.subscribe("first@example.com")
    site.new_emails()
    before = site.snapshot()
    trapped = site.subscribe("bot@example.com", website="https://spam.example")
    assert (trapped.status_code, trapped.text.replace("bot@", "first@")) == (200, normal.text)
    as_json = site.post(
        json={"email": "bot@example.com", "series": "demo", "website": "x"},
        headers={"Origin": ORIGIN},
    )
    assert as_json.status_code == 200 and as_json.json()["ok"] is True
    assert site.snapshot() == before and site.new_emails() == []


def test_one_confirmation_email_per_address_per_10_minutes(site: SignupSite) -> None:
    """Asking again within 10 minutes (any series) sends nothing more; after, a new email."""
    site.subscribe()
    first = site.token()
    site.clock.now = START + timedelta(minutes=9, seconds=59)
    for series in ("demo", "other"):
        assert site.subscribe(series=series).status_code == 200
    assert site.new_emails() == []
    site.clock.now = START + timedelta(minutes=10)
    assert site.subscribe().status_code == 200
    second = site.token()
    assert second != first
    assert site.subscribe("other@example.com").status_code == 200  # other addresses are not held up
    assert len(site.new_emails()) == 1
    # The first link still works; then the second is used up with it.
    assert confirm(site, first)[0] == 200
    assert heading(confirm(site, second)[1]) == "This link was already used"


def test_per_ip_limit(workspace: BuildWorkspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """signup.per_ip_per_hour = 3: the fourth POST in an hour is a 429 with Retry-After."""
    monkeypatch.delenv("SERIES_DATABASE_URL", raising=False)
    for site in serve(
        build(workspace, SIGNUP.replace("per_ip_per_hour = 0", "per_ip_per_hour = 3")), Clock()
    ):
        for number in range(3):
            assert site.subscribe(f"reader{number}@example.com").status_code == 200
        before = site.snapshot()
        refused = site.subscribe("reader3@example.com")
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "3600"
        as_json = site.post(json={"email": "x@example.com", "series": "demo"})
        assert as_json.status_code == 429 and as_json.json()["ok"] is False
        assert site.snapshot() == before
        assert site.get("/subscribe").status_code == 200  # the page itself is not limited
        site.clock.now = START + timedelta(hours=1)
        assert site.subscribe("reader3@example.com").status_code == 200


def test_a_large_body_is_refused(site: SignupSite) -> None:
    """Bodies over 8 KB are a 413, form or JSON; nothing is stored."""
    big = "x" * 9000
    assert site.post(data={"email": ANN, "series": "demo", "name": big}).status_code == 413
    response = site.post(
        json={"email": ANN, "series": "demo", "name": big}, headers={"Origin": ORIGIN}
    )
    assert response.status_code == 413 and response.json()["ok"] is False
    assert site.rows(signups) == [] and site.new_emails() == []


def test_other_bodies_are_refused(site: SignupSite) -> None:
    """Plain text, a JSON array, broken JSON: 4xx, nothing stored."""
    assert (
        site.post(data=b"email=ann@example.com", headers={"Content-Type": "text/plain"}).status_code
        == 415
    )
    for body in (b"[1]", b"{", b'"x"'):
        response = site.post(data=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 400 and response.json()["ok"] is False
    assert site.rows(signups) == []


# -- JSON and CORS ------------------------------------------------------------------


def test_preflight_for_allowed_and_other_origins(site: SignupSite) -> None:
    """OPTIONS /subscribe: 204 with the CORS headers for an allowed origin, 403 otherwise."""
    import requests

    asked = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    allowed = requests.options(
        f"{site.url}/subscribe", headers={"Origin": ORIGIN, **asked}, timeout=10
    )
    assert allowed.status_code == 204
    assert allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert allowed.headers["Access-Control-Allow-Methods"] == "POST"
    assert allowed.headers["Access-Control-Allow-Headers"] == "Content-Type"
    assert allowed.headers["Vary"] == "Origin"
    other = requests.options(
        f"{site.url}/subscribe", headers={"Origin": "https://evil.example", **asked}, timeout=10
    )
    assert other.status_code == 403 and "Access-Control-Allow-Origin" not in other.headers


def test_json_signup_from_an_allowed_origin(site: SignupSite) -> None:
    """POST JSON with an allowed Origin: 200, CORS header, a confirmation email."""
    response = site.post(
        json={"email": ANN, "name": "Ann", "series": "other"}, headers={"Origin": ORIGIN}
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert response.headers["Content-Type"] == "application/json"
    assert "email is on its way" in response.json()["message"]
    assert response.json()["ok"] is True
    assert len(site.new_emails()) == 1
    assert site.rows(signups)[0].form == "json"


def test_json_from_another_origin_is_refused(site: SignupSite) -> None:
    """A page on a site not in allowed_origins cannot sign anyone up with JSON."""
    response = site.post(
        json={"email": ANN, "series": "demo"}, headers={"Origin": "https://evil.example"}
    )
    assert response.status_code == 403 and "Access-Control-Allow-Origin" not in response.headers
    assert site.rows(signups) == [] and site.new_emails() == []


def test_form_posts_from_any_page_work(site: SignupSite) -> None:
    """An embedded HTML form posts cross-site as a plain form: no CORS needed."""
    response = site.post(
        data={"email": ANN, "series": "demo"}, headers={"Origin": "https://someone-elses.example"}
    )
    assert response.status_code == 200 and len(site.new_emails()) == 1


# -- where to go next -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "followed"),
    [
        ("https://blog.example/thanks/", True),
        ("http://blog.example/thanks/?from=form", True),
        ("https://evil.example/", False),
        ("//evil.example/", False),
        ("https://blog.example.evil.example/", False),
        ("https://user@blog.example/", False),
        ("javascript:alert(1)", False),
        ("https://blog.example/\r\nSet-Cookie: x=1", False),
    ],
)
def test_next_goes_only_to_the_site(site: SignupSite, target: str, followed: bool) -> None:
    """A form's `next` is followed (303) only on site_url's host: no open redirect."""
    response = site.subscribe(next=target)
    if followed:
        assert response.status_code == 303 and response.headers["Location"] == target
    else:
        assert response.status_code == 200 and heading(response.text) == "Check your inbox"


def test_configured_next(workspace: BuildWorkspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """signup.next is where every form post goes after it is taken."""
    for site in configured(workspace, monkeypatch, 'next = "https://blog.example/thanks/"\n'):
        response = site.subscribe()
        assert (
            response.status_code == 303
            and response.headers["Location"] == "https://blog.example/thanks/"
        )
        assert site.subscribe("x@").status_code == 400  # a refusal is shown, not redirected


# -- people who come back -------------------------------------------------------------


def test_unsubscribed_reader_rejoins_only_through_the_link(site: SignupSite) -> None:
    """Unsubscribed from everything: a signup changes nothing until confirmed; then active,
    in the new series only (the series they had stay stopped)."""
    site.add(ANN, "demo")
    unsubscribe(site.store, ANN, now=START)
    site.clock.now = START + timedelta(hours=1)
    site.subscribe(series="other")
    token = site.token()
    assert find(site.store, ANN).status == "unsubscribed"
    site.clock.now = START + timedelta(hours=2)
    assert confirm(site, token)[0] == 200
    ann = find(site.store, ANN)
    assert ann.status == "active"
    assert {e.series: e.unsubscribed for e in ann.enrollments} == {"demo": True, "other": False}
    last = site.rows(status_changes)[-1]
    assert (last.old_status, last.new_status, last.series, last.actor) == (
        "unsubscribed",
        "active",
        None,
        "web:signup",
    )
    assert json.loads(last.reason)["previously"] == "unsubscribed"


def test_reader_who_left_a_series_rejoins_it_where_they_were(site: SignupSite) -> None:
    """Left one series: confirming it again re-enrolls them, progress kept."""
    site.add(ANN, "demo")
    unsubscribe(site.store, ANN, now=START, series="demo")
    site.subscribe(series="demo")
    site.clock.now = START + timedelta(minutes=5)
    assert heading(confirm(site, site.token())[1]) == "You are subscribed to Demo Series"
    [enrolled] = find(site.store, ANN).enrollments
    assert not enrolled.unsubscribed
    audit = site.rows(status_changes)[-1]
    assert (audit.old_status, audit.new_status, audit.series) == ("unsubscribed", "active", "demo")


@pytest.mark.parametrize("status", ["bounced", "complained"])
def test_bounced_or_complained_reader_rejoins_through_the_link(
    site: SignupSite, status: str
) -> None:
    """A bounced or complained address is active again only after confirming."""
    site.add(ANN, "demo")
    with site.store.begin() as conn:
        conn.execute(subscribers.update().values(status=status))
    site.subscribe(series="demo")
    token = site.token()
    assert find(site.store, ANN).status == status
    assert confirm(site, token)[0] == 200
    assert find(site.store, ANN).status == "active"
    assert json.loads(site.rows(status_changes)[-1].reason)["previously"] == status


def test_erased_address_signs_up_again_with_new_consent(site: SignupSite) -> None:
    """An erased address is refused by import and add, but may confirm a signup: the hash
    is dropped and a new subscriber made."""
    site.add(ANN, "demo")
    remove(site.store, ANN, now=START)
    assert len(site.rows(suppressions)) == 1
    code, _, err = run(site.root, "subscribers", "add", ANN)
    assert code == 1 and "erased" in err
    site.subscribe(series="demo")
    token = site.token()
    assert len(site.rows(suppressions)) == 1 and site.rows(subscribers) == []
    assert confirm(site, token)[0] == 200
    assert site.rows(suppressions) == []
    ann = find(site.store, ANN)
    assert ann.status == "active" and [e.series for e in ann.enrollments] == ["demo"]
    assert json.loads(site.rows(status_changes)[-1].reason)["previously"] == "erased"


def test_active_reader_joining_another_series_confirms_too(site: SignupSite) -> None:
    """Reading demo, Ann asks for other: not enrolled until she confirms."""
    site.add(ANN, "demo")
    site.subscribe(series="other")
    token = site.token()
    assert [e.series for e in find(site.store, ANN).enrollments] == ["demo"]
    assert confirm(site, token)[0] == 200
    assert [e.series for e in find(site.store, ANN).enrollments] == ["demo", "other"]
    audit = site.rows(status_changes)[-1]
    assert (audit.old_status, audit.new_status, audit.series) == ("active", "active", "other")


def test_reader_already_in_the_series_is_told_so(site: SignupSite) -> None:
    """Confirming a series one already gets changes nothing and says so."""
    site.add(ANN, "demo")
    site.subscribe(series="demo")
    token = site.token()
    before = site.snapshot()["status_changes"]
    status, html = confirm(site, token)
    assert status == 200 and heading(html) == "You already get Demo Series"
    assert site.snapshot()["status_changes"] == before


@pytest.fixture
def postmark_site(
    workspace: BuildWorkspace, monkeypatch: pytest.MonkeyPatch, postmark: FakePostmark
) -> Iterator[SignupSite]:
    """The signup form sending its confirmations through the fake Postmark on 127.0.0.1."""
    monkeypatch.delenv("SERIES_DATABASE_URL", raising=False)
    root = build(workspace)
    toml = root / "series.toml"
    toml.write_text('provider = "postmark"\n' + toml.read_text(encoding="utf-8"), encoding="utf-8")
    yield from serve(root, Clock())


def test_confirmation_goes_out_on_postmarks_transactional_stream(
    postmark_site: SignupSite, postmark: FakePostmark
) -> None:
    """Through Postmark: one message on the "outbound" stream, with no List-Unsubscribe."""
    assert postmark_site.subscribe().status_code == 200
    [request] = postmark.batch_requests()
    [sent] = request.body
    assert sent["MessageStream"] == "outbound" and sent["To"] == ANN
    assert sent["Subject"] == "Please confirm your subscription to Demo Series"
    assert not [h for h in sent.get("Headers", []) if h["Name"].startswith("List-Unsubscribe")]
    assert "https://blog.example/confirm/" in sent["TextBody"]


def test_provider_failure_is_a_503_and_the_person_may_ask_again(
    postmark_site: SignupSite, postmark: FakePostmark
) -> None:
    """When the confirmation cannot be handed over (Postmark 500), the answer says so (503)
    and asking again at once is not held up by the 10-minute limit."""
    postmark.fail_next("500")
    response = postmark_site.subscribe()
    assert response.status_code == 503 and "could not be sent" in response.text
    assert postmark_site.rows(signups) == []  # "Nothing was stored" holds
    assert postmark_site.subscribe().status_code == 200
    postmark.fail_next("503")  # a renewal that fails keeps the signup, and asking again works
    postmark_site.clock.now = START + timedelta(minutes=11)
    assert postmark_site.subscribe().status_code == 503
    [row] = postmark_site.rows(signups)
    assert row.last_sent_at is None
    assert postmark_site.subscribe().status_code == 200
    assert len(postmark.accepted) == 2


def test_suppressed_address_gets_the_same_answer(
    postmark_site: SignupSite, postmark: FakePostmark
) -> None:
    """An address the provider refuses (a past hard bounce) is told "check your inbox" like
    anyone else: the answer never tells whose address is suppressed."""
    normal = postmark_site.subscribe("fine@example.com")
    postmark.suppress({ANN: "HardBounce"})
    refused = postmark_site.subscribe(ANN)
    assert (refused.status_code, refused.text) == (normal.status_code, normal.text)


def test_workspace_can_override_the_confirmation_email(site: SignupSite) -> None:
    """templates/confirm.subject.j2 in the workspace replaces the built-in subject."""
    (site.root / "templates" / "confirm.subject.j2").write_text(
        "Bekräfta: {{ series.title }}\n", encoding="utf-8"
    )
    for served in serve(site.root, Clock()):
        served.subscribe()
        [raw] = served.new_emails()
        assert b"Subject: =?utf-8?" in raw
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert message["Subject"] == "Bekräfta: Demo Series"


def test_store_errors_are_a_503(site: SignupSite) -> None:
    """With the signups table gone (database trouble), the answer is a 503, not a traceback."""
    with site.store.begin() as conn:
        conn.execute(sa.text("DROP TABLE signups"))
    response = site.subscribe()
    assert response.status_code == 503 and "Nothing was stored" in response.text
    assert site.get("/confirm/abc.def").status_code == 400  # a forged link needs no database


# -- the real `series serve` -----------------------------------------------------------


def test_series_serve_end_to_end(
    workspace: BuildWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`series serve` as a process: form post, the emailed link (GET, then POST), and the
    next `series send` sends part 1; the secret key never shows."""
    import os
    import select
    import signal
    import socket
    import subprocess
    import sys

    import requests

    from .signup_site import token_in

    monkeypatch.delenv("SERIES_DATABASE_URL", raising=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    root = build(workspace, SIGNUP + f'confirm_url = "{url}/confirm/{{token}}"\n')
    secret = "serve-signup-secret-51c2"
    env = {**os.environ, SECRET_ENV: secret}
    env.pop("SERIES_DATABASE_URL", None)
    command = [sys.executable, "-m", "pipeline", "-w", str(root), "serve", "--port", str(port)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "series serve printed nothing within 30 s"
        line = proc.stdout.readline().decode()
        assert line == f"Serving unsubscribe pages and signup form on {url}/ (Ctrl-C to stop)\n"
        form = requests.get(f"{url}/subscribe", timeout=10)
        assert form.status_code == 200 and form.headers["Server"] == "series"
        posted = requests.post(
            f"{url}/subscribe",
            data={"email": ANN, "series": "demo"},
            timeout=10,
            allow_redirects=False,
        )
        assert posted.status_code == 200 and heading(posted.text) == "Check your inbox"
        [message] = sorted((root / "outbox").glob("signup-*.eml"))
        raw = message.read_bytes()
        assert secret.encode() not in raw
        link = f"{url}/confirm/{token_in(raw)}"
        assert heading(requests.get(link, timeout=10).text).startswith("Confirm your subscription")
        done = requests.post(link, data={"confirm": "yes"}, timeout=10)
        assert done.status_code == 200 and heading(done.text) == "You are subscribed to Demo Series"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0 and "Traceback" not in err.decode()
    assert secret not in line + out.decode() + err.decode()
    # Confirmed at the real clock: send just after, with the send window opened to every hour.
    from datetime import UTC, datetime

    toml = root / "series.toml"
    toml.write_text(
        toml.read_text(encoding="utf-8")
        .replace(
            'days = ["mon", "tue", "wed", "thu", "fri"]',
            'days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]',
        )
        .replace('start = "09:00"', 'start = "00:00"')
        .replace('end = "17:00"', 'end = "24:00"'),
        encoding="utf-8",
    )
    later = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    code, _, errors = run(root, "send", "--now", later)
    assert code == 0, errors
    parts = [p for p in (root / "outbox").glob("*.eml") if not p.name.startswith("signup")]
    assert (
        len(parts) == 1
        and b"Subject: A valid article (Demo Series, part 1 of 1)" in parts[0].read_bytes()
    )


# -- hostile input -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (
            '{"email": "ann@example.com", "series": "demo"}'.encode("utf-16"),
            "application/json",
            200,
        ),
        (b'\xef\xbb\xbf{"email": "ann@example.com", "series": "demo"}', "application/json", 200),
        (b'{"email": ["ann@example.com"], "series": "demo"}', "application/json", 400),
        (
            b'{"email": "ann@example.com\\r\\nBcc: x@example.com", "series": "demo"}',
            "application/json",
            400,
        ),
        # werkzeug keeps undecodable escapes as text: "%ff%fe@example.com" is a valid address.
        (b"email=%FF%FE%40example.com&series=demo", "application/x-www-form-urlencoded", 200),
        (b"email=ann%40example.com&series=demo%00", "application/x-www-form-urlencoded", 400),
        (b"\xff\xfe\x00garbage", "application/json", 400),
    ],
    ids=["utf-16", "bom", "list", "header-injection", "bad-utf8", "nul", "garbage"],
)
def test_hostile_bodies_never_break_the_server(
    site: SignupSite, body: bytes, content_type: str, expected: int
) -> None:
    """Odd encodings and values get a clear 200 or 4xx, never a 500; no header injection."""
    response = site.post(data=body, headers={"Content-Type": content_type, "Origin": ORIGIN})
    assert response.status_code == expected, response.text
    for raw in site.new_emails():
        assert b"Bcc" not in raw
    assert site.get("/subscribe").status_code == 200  # the server still answers


def test_forwarded_for_is_ignored_without_a_trusted_proxy(site: SignupSite) -> None:
    """X-Forwarded-For from anyone could be forged: without trusted_proxies it is ignored."""
    site.post(data={"email": ANN, "series": "demo"}, headers={"X-Forwarded-For": "203.0.113.9"})
    assert site.rows(signups)[-1].ip == "127.0.0.1"


def test_behind_one_trusted_proxy_the_forwarded_address_counts(
    workspace: BuildWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """trusted_proxies = 1: the last X-Forwarded-For entry is the reader's address, recorded
    and limited per address (two readers behind the proxy are not one)."""
    extra = "trusted_proxies = 1\n"
    monkeypatch.delenv("SERIES_DATABASE_URL", raising=False)
    root = build(workspace, SIGNUP.replace("per_ip_per_hour = 0", "per_ip_per_hour = 1") + extra)
    for site in serve(root, Clock()):
        first = {"X-Forwarded-For": "198.51.100.1, 203.0.113.9"}
        assert site.post(data={"email": ANN, "series": "demo"}, headers=first).status_code == 200
        assert site.rows(signups)[-1].ip == "203.0.113.9"
        again = site.post(data={"email": "b@example.com", "series": "demo"}, headers=first)
        assert again.status_code == 429
        other = {"X-Forwarded-For": "203.0.113.10"}
        assert (
            site.post(data={"email": "b@example.com", "series": "demo"}, headers=other).status_code
            == 200
        )


def test_erasing_a_subscriber_deletes_their_pending_signups(site: SignupSite) -> None:
    """`subscribers remove` leaves no pending signup holding the address."""
    site.add(ANN, "demo")
    site.subscribe(series="other")
    assert len(site.rows(signups)) == 1
    remove(site.store, ANN, now=START)
    assert site.rows(signups) == []


def test_a_form_does_not_rename_an_active_reader(site: SignupSite) -> None:
    """The name typed into a form replaces an active reader's name only when they had none."""
    from pipeline.subscribers import add_subscriber

    add_subscriber(site.store, site.catalog, ANN, now=START, series="demo", name="Ann")
    site.post(data={"email": ANN, "series": "other", "name": "Someone Else"})
    assert confirm(site, site.token())[0] == 200
    assert find(site.store, ANN).name == "Ann"
    site.add("bo@example.com", "demo")
    site.post(data={"email": "bo@example.com", "series": "other", "name": "Bo"})
    assert confirm(site, site.token())[0] == 200
    assert find(site.store, "bo@example.com").name == "Bo"
