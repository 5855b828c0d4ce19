"""The signup form under abuse and from other sites, over real HTTP on 127.0.0.1: the
honeypot, the per-address and per-IP limits, body size, CORS, `next`, hostile bodies."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from pipeline.store.schema import signups

from .conftest import BuildWorkspace
from .signup_site import (
    ANN,
    ORIGIN,
    SIGNUP,
    START,
    Clock,
    SignupSite,
    build,
    configured,
    confirm,
    heading,
    open_site,
    serve,
)


@pytest.fixture
def site(workspace: BuildWorkspace, monkeypatch: pytest.MonkeyPatch) -> Iterator[SignupSite]:
    yield from open_site(workspace, monkeypatch)


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
        ("https://blog.example/thanks/?from=form", True),
        ("http://blog.example/thanks/", False),  # a downgrade from https
        ("https://blog.example:8443/thanks/", False),  # another port
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
