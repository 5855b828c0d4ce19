"""People who come back through the signup form (unsubscribed, left a series, bounced,
complained, erased, already reading), and the confirmation email through Postmark and
when it or the database fails; over real HTTP on 127.0.0.1."""

from __future__ import annotations

import email
import email.policy
import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from pipeline.store.schema import signups, status_changes, subscribers, suppressions
from pipeline.subscribers import find, remove, unsubscribe

from .conftest import BuildWorkspace
from .fake_postmark import FakePostmark
from .helpers import run
from .signup_site import (
    ANN,
    START,
    Clock,
    SignupSite,
    build,
    confirm,
    heading,
    open_site,
    serve,
)


@pytest.fixture
def site(workspace: BuildWorkspace, monkeypatch: pytest.MonkeyPatch) -> Iterator[SignupSite]:
    yield from open_site(workspace, monkeypatch)


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
    postmark.fail_next("503")  # a renewal that fails changes nothing; asking again works
    postmark_site.clock.now = START + timedelta(minutes=11)
    before = postmark_site.snapshot()
    response = postmark_site.post(data={"email": ANN, "series": "demo", "name": "Scam"})
    assert response.status_code == 503 and "Nothing was stored" in response.text
    assert postmark_site.snapshot() == before
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
