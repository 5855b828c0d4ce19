"""The signup form and its double opt-in over real HTTP on 127.0.0.1, against a real
SQLite state; confirmation emails are read as the raw .eml files the outbox writes."""

from __future__ import annotations

import email
import email.policy
import json
from collections.abc import Iterator
from datetime import timedelta

import pytest

from pipeline.store.schema import enrollments, signups, status_changes, subscribers
from pipeline.subscribers import find
from pipeline.tokens import SECRET_ENV

from .conftest import BuildWorkspace
from .helpers import run
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
    assert '<html lang="en" xml:lang="en"' in html  # the workspace's language
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
