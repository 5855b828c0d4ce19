"""Defects a reviewer found in the signup form, each over real HTTP on 127.0.0.1: a
stranger's renewal changing what an earlier link confirms, JSON the parser cannot take,
erasing someone who only has a pending signup (and the request details of a consent),
confirmation links across a key rotation, a provider that is not usable, a typo losing
the blog form's hidden fields, and smaller ones."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest

from pipeline.store.schema import signups, status_changes, subscribers, suppressions
from pipeline.subscribers import find, remove, unsubscribe

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

OLD_KEY = "old signing key " * 3
NEW_KEY = "new signing key " * 3


@pytest.fixture
def site(workspace: BuildWorkspace, monkeypatch: pytest.MonkeyPatch) -> Iterator[SignupSite]:
    yield from open_site(workspace, monkeypatch)


def ask(site: SignupSite, name: str, agent: str, **extra: str) -> int:
    response = site.post(
        data={"email": ANN, "series": "demo", "name": name, **extra},
        headers={"User-Agent": agent, "Referer": f"https://blog.example/{agent}"},
    )
    return response.status_code


# -- 1. a renewal never changes what an earlier link confirms ------------------------


def test_a_strangers_signup_never_changes_what_the_first_link_confirms(site: SignupSite) -> None:
    """Ann asks (as "Ann"); 11 minutes later a stranger types her address as "Scam".
    Ann confirms her own link: she is "Ann", and the consent names her request only."""
    assert ask(site, "Ann", "AnnBrowser") == 200
    mine = site.token()
    site.clock.now = START + timedelta(minutes=11)
    assert ask(site, "Scam", "ScamBot") == 200
    theirs = site.token()
    page = site.get(f"/confirm/{mine}").text
    assert "Ann" in page and "Scam" not in page
    assert "Scam" in site.get(f"/confirm/{theirs}").text  # what that link would save
    assert confirm(site, mine, **{"User-Agent": "AnnBrowser"})[0] == 200
    assert find(site.store, ANN).name == "Ann"
    consent = json.loads(site.rows(status_changes)[-1].reason)
    assert consent["request_user_agent"] == "AnnBrowser"
    assert consent["page"] == "https://blog.example/AnnBrowser"
    assert consent["requested_at"] == START.isoformat()
    assert heading(confirm(site, theirs)[1]) == "This link was already used"
    assert find(site.store, ANN).name == "Ann"


def test_a_strangers_name_never_renames_a_returning_reader(site: SignupSite) -> None:
    """Ann (unsubscribed) asks again without a name; a stranger's later "Scam" request
    does not touch her stored name when she confirms her own link."""
    from pipeline.subscribers import add_subscriber

    add_subscriber(site.store, site.catalog, ANN, now=START, series="demo", name="Ann")
    unsubscribe(site.store, ANN, now=START)
    site.clock.now = START + timedelta(hours=1)
    assert ask(site, "", "AnnBrowser") == 200
    mine = site.token()
    site.clock.now = START + timedelta(hours=2)
    assert ask(site, "Scam", "ScamBot") == 200
    assert confirm(site, mine)[0] == 200
    ann = find(site.store, ANN)
    assert (ann.status, ann.name) == ("active", "Ann")


# -- 2. JSON the parser cannot take ------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 3000 + b"]" * 3000,
        b'{"email": ' + b"[" * 3000 + b"]" * 3000 + b"}",
        b'{"email": "ann@example.com", "series": "demo", "name": "\\ud800"}',
        b'{"email": 1' + b"0" * 5000 + b"}",
    ],
    ids=["nested", "nested-value", "lone-surrogate", "long-number"],
)
def test_json_the_parser_cannot_take_is_a_400(site: SignupSite, body: bytes) -> None:
    response = site.post(data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["ok"] is False
    assert site.rows(signups) == []


def test_a_json_field_that_is_not_a_string_is_named(site: SignupSite) -> None:
    for field in ("email", "name", "series"):
        body = {"email": ANN, "series": "demo", field: 5}
        response = site.post(json=body, headers={"Origin": ORIGIN})
        assert response.status_code == 400
        assert response.json() == {
            "ok": False,
            "field": field,
            "error": f"{field} must be a string",
        }
    assert site.rows(signups) == []


# -- 3 and 4. erasure ----------------------------------------------------------------------


def test_remove_erases_someone_who_only_has_a_pending_signup(site: SignupSite) -> None:
    """`subscribers remove` of an address with only a pending signup deletes it, keeps
    the hash (so `add` refuses), and the link no longer confirms."""
    assert ask(site, "Ann", "AnnBrowser") == 200
    token = site.token()
    code, out, err = run(site.root, "subscribers", "remove", ANN)
    assert code == 0, err
    assert out == f"erased {ANN}: pending signup deleted, address kept only as a hash\n"
    assert site.rows(signups) == [] and len(site.rows(suppressions)) == 1
    assert site.get(f"/confirm/{token}").status_code == 410
    status, page = confirm(site, token)
    assert status == 410 and heading(page) == "This link no longer works"
    assert site.rows(subscribers) == []
    code, _, err = run(site.root, "subscribers", "add", ANN)
    assert code == 1 and "erased" in err
    code, _, err = run(site.root, "subscribers", "remove", "nobody@example.com")
    assert code == 1 and "no subscriber nobody@example.com" in err


def test_erasure_drops_the_request_details_of_a_consent(site: SignupSite) -> None:
    """After `remove`, the consent audit row keeps times, series and form, and loses the
    IP addresses, user agents and page."""
    assert ask(site, "Ann", "AnnBrowser", form="blog-footer") == 200
    site.clock.now = START + timedelta(minutes=3)
    assert confirm(site, site.token(), **{"User-Agent": "AnnPhone"})[0] == 200
    remove(site.store, ANN, now=START + timedelta(hours=1))
    [consent] = [r for r in site.rows(status_changes) if r.actor == "web:signup"]
    record = json.loads(consent.reason)
    for gone in ("page", "request_ip", "request_user_agent", "confirm_ip", "confirm_user_agent"):
        assert gone not in record
    assert record["form"] == "blog-footer" and record["series"] == "demo"
    assert record["requested_at"] == START.isoformat()
    assert record["confirmed_at"] == (START + timedelta(minutes=3)).isoformat()
    text = repr([tuple(r) for r in site.rows(status_changes)])
    assert "AnnBrowser" not in text and "AnnPhone" not in text and "127.0.0.1" not in text


# -- 5. the signing key ------------------------------------------------------------------


def test_confirmation_links_survive_a_key_rotation(
    workspace: BuildWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signed with the old key, a link still confirms with SERIES_SECRET_KEY set to the
    new key and SERIES_PREVIOUS_SECRET_KEY to the old one."""
    monkeypatch.delenv("SERIES_DATABASE_URL", raising=False)
    monkeypatch.setenv("SERIES_SECRET_KEY", OLD_KEY)
    root = build(workspace)
    for site in serve(root, Clock()):
        assert ask(site, "Ann", "AnnBrowser") == 200
        token = site.token()
    monkeypatch.setenv("SERIES_SECRET_KEY", NEW_KEY)
    monkeypatch.setenv("SERIES_PREVIOUS_SECRET_KEY", OLD_KEY)
    for site in serve(root, Clock()):
        assert site.get(f"/confirm/{token}").status_code == 200
        assert confirm(site, token)[0] == 200
        assert find(site.store, ANN).status == "active"


def test_a_confirmation_sent_counts_as_a_signed_link(
    workspace: BuildWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """serve sends a confirmation with the stored key; a send started later with another
    SERIES_SECRET_KEY refuses, and a serve with it still confirms that link (the
    database's own key stays accepted once it signed links: linkkeys.accepted_keys)
    instead of calling it "not valid"."""
    monkeypatch.delenv("SERIES_DATABASE_URL", raising=False)
    monkeypatch.delenv("SERIES_SECRET_KEY", raising=False)
    root = build(workspace)
    for site in serve(root, Clock()):
        assert ask(site, "Ann", "AnnBrowser") == 200
        token = site.token()
    monkeypatch.setenv("SERIES_SECRET_KEY", NEW_KEY)
    code, out, err = run(root, "send", "--dry-run", "--now", "2026-02-02T10:05:00+00:00")
    assert code == 1 and out == "" and "already sent" in err and err.count("\n") == 1
    for site in serve(root, Clock()):
        assert confirm(site, token)[0] == 200
        assert find(site.store, ANN).status == "active"


# -- 6. the provider -----------------------------------------------------------------------


def test_serve_refuses_to_start_when_the_provider_is_not_usable(
    workspace: BuildWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SERIES_DATABASE_URL", raising=False)
    monkeypatch.delenv("POSTMARK_SERVER_TOKEN", raising=False)
    root = build(workspace)
    toml = root / "series.toml"
    toml.write_text('provider = "postmark"\n' + toml.read_text(encoding="utf-8"), encoding="utf-8")
    code, out, err = run(root, "serve", "--port", "1")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "POSTMARK_SERVER_TOKEN" in err and "Traceback" not in err


# -- 7. a typo keeps the blog form's hidden fields -------------------------------------


def test_a_refusal_keeps_the_blog_forms_hidden_fields(site: SignupSite) -> None:
    response = site.post(
        data={
            "email": "ann@",
            "series": "demo",
            "form": "blog-footer",
            "next": "https://blog.example/thanks/",
        }
    )
    assert response.status_code == 400
    assert '<input type="hidden" name="form" value="blog-footer">' in response.text
    assert '<input type="hidden" name="next" value="https://blog.example/thanks/">' in response.text
    again = site.post(
        data={
            "email": ANN,
            "series": "demo",
            "form": "blog-footer",
            "next": "https://blog.example/thanks/",
        }
    )
    assert again.status_code == 303
    assert again.headers["Location"] == "https://blog.example/thanks/"
    assert [r.form for r in site.rows(signups)] == ["blog-footer"]


# -- smaller ones ---------------------------------------------------------------------------


def test_the_honeypot_answers_bad_input_as_a_person_would_get_it(site: SignupSite) -> None:
    trapped = site.post(data={"email": "not an address", "series": "demo", "website": "x"})
    normal = site.post(data={"email": "not an address", "series": "demo"})
    assert trapped.status_code == normal.status_code == 400
    assert trapped.text == normal.text
    assert site.rows(signups) == [] and site.new_emails() == []


def test_a_relative_next_goes_to_the_site(site: SignupSite) -> None:
    response = site.subscribe(next="/thanks/")
    assert response.status_code == 303
    assert response.headers["Location"] == "https://blog.example/thanks/"


def test_a_short_link_lifetime_keeps_the_10_minute_limit(
    workspace: BuildWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """token_hours = 0.1 (6 minutes): the link expires, but a second email still waits
    for the 10 minutes."""
    for site in configured(workspace, monkeypatch, "token_hours = 0.1\n"):
        assert site.subscribe().status_code == 200
        token = site.token()
        site.clock.now = START + timedelta(minutes=7)
        assert heading(site.get(f"/confirm/{token}").text) == "This link has expired"
        assert site.subscribe().status_code == 200
        assert site.new_emails() == []
        site.clock.now = START + timedelta(minutes=10)
        assert site.subscribe().status_code == 200
        assert len(site.new_emails()) == 1


def test_clear_reasons(site: SignupSite) -> None:
    no_series = site.post(json={"email": ANN, "series": ""}, headers={"Origin": ORIGIN})
    assert no_series.json()["error"] == "Please choose a series."
    long_local = "a" * 65 + "@example.com"
    response = site.post(json={"email": long_local, "series": "demo"}, headers={"Origin": ORIGIN})
    assert "65 characters" in response.json()["error"]
    form = site.get("/subscribe").text
    assert 'name="name" value="" autocomplete="name" maxlength="200"' in form
    assert "Nothing else is sent" in form
    assert "Nothing else is sent" in site.subscribe().text


def test_pages_speak_the_workspace_language(
    workspace: BuildWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SERIES_DATABASE_URL", raising=False)
    root = build(workspace)
    toml = root / "series.toml"
    toml.write_text('language = "sv"\n' + toml.read_text(encoding="utf-8"), encoding="utf-8")
    for site in serve(root, Clock()):
        assert '<html lang="sv">' in site.get("/subscribe").text


def test_a_link_when_signup_is_off_says_signup_is_closed(
    workspace: BuildWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SERIES_DATABASE_URL", raising=False)
    for site in serve(
        build(workspace, SIGNUP.replace("enabled = true", "enabled = false")), Clock()
    ):
        response = site.get("/confirm/abc.def")
        assert response.status_code == 404 and heading(response.text) == "Signup is closed"
