"""The unsubscribe web app over real HTTP on 127.0.0.1, against a real SQLite state.

Subscribers are made with the library's own functions; requests are made with
`requests`, as a mailbox provider or a browser would send them.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from click.testing import CliRunner
from werkzeug.serving import make_server

from pipeline.cli import cli
from pipeline.config import load_config
from pipeline.content import load_series
from pipeline.store import Store, open_store
from pipeline.store.ledger import setting
from pipeline.store.schema import enrollments, status_changes, subscribers, suppressions
from pipeline.subscribers import Catalog, add_subscriber, find, remove
from pipeline.tokens import SECRET_ENV, TEST_SUBSCRIBER, Signer
from pipeline.web import UnsubscribeApp, app_from_environment, make_app

from .conftest import FIXTURES, BuildWorkspace
from .databases import database_at_0004

CREATED = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
ISSUED = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)
CLICKED = datetime(2026, 1, 12, 18, 30, tzinfo=UTC)
ONE_CLICK = {"List-Unsubscribe": "One-Click"}
ANN = "ann@example.com"


@dataclass
class Site:
    """A running app and what the tests need to talk to it and to look behind it."""

    root: Path
    store: Store
    signer: Signer
    catalog: Catalog
    url: str

    def link(self, who: int, series: str | None = "demo", issued: datetime = ISSUED) -> str:
        """The unsubscribe URL an email made at ``issued`` would carry."""
        return f"{self.url}/u/{self.signer.token(who, series, issued=issued)}"

    def add(self, email: str, series: str, *, now: datetime = CREATED, **options: Any) -> int:
        add_subscriber(self.store, self.catalog, email, now=now, series=series, **options)
        return find(self.store, email).id


def build_workspace(workspace: BuildWorkspace) -> Path:
    """The demo workspace plus a second series, "Another Story" (slug other)."""
    root = workspace()
    other = root / "series" / "other"
    other.mkdir()
    (other / "series.yml").write_text("title: Another Story\ncadence_days: 7\n", encoding="utf-8")
    shutil.copy(FIXTURES / "articles" / "valid_article.md", other / "01-valid.md")
    return root


@contextmanager
def serving(app: UnsubscribeApp) -> Iterator[str]:
    """Serve the app with werkzeug's threaded HTTP server on a free port; yield its URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture
def site(workspace: BuildWorkspace, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    monkeypatch.delenv("SERIES_DATABASE_URL", raising=False)
    monkeypatch.delenv(SECRET_ENV, raising=False)
    root = build_workspace(workspace)
    config = load_config(root)
    series_list, _ = load_series(config)
    with open_store(root) as store:
        with store.connect() as conn:
            signer = Signer(bytes.fromhex(setting(conn, "link_signing_key")))
        app = make_app(config, store, clock=lambda: CLICKED)
        with serving(app) as url:
            yield Site(root, store, signer, Catalog.of(series_list), url)


@pytest.fixture
def ann(site: Site) -> int:
    """Ann reads both series."""
    site.add(ANN, "demo")
    return site.add(ANN, "other")


def snapshot(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every row that an unsubscribe could touch, in a fixed order."""
    tables = (subscribers, enrollments, status_changes, suppressions)
    with store.connect() as conn:
        return {
            table.name: [
                tuple(row)
                for row in conn.execute(sa.select(table).order_by(*table.primary_key.columns))
            ]
            for table in tables
        }


def left(store: Store, subscriber_id: int) -> dict[str, datetime | None]:
    """Each series the subscriber is enrolled in, and when they left it (None: still in)."""
    with store.connect() as conn:
        rows = conn.execute(
            sa.select(enrollments.c.series, enrollments.c.unsubscribed_at).where(
                enrollments.c.subscriber_id == subscriber_id
            )
        )
        return {row.series: row.unsubscribed_at for row in rows}


def status(store: Store, subscriber_id: int) -> str:
    with store.connect() as conn:
        return str(
            conn.execute(
                sa.select(subscribers.c.status).where(subscribers.c.id == subscriber_id)
            ).scalar_one()
        )


def audit(store: Store, subscriber_id: int) -> list[tuple[Any, ...]]:
    """(series, old, new, actor, when) of each status change, oldest first."""
    with store.connect() as conn:
        rows = conn.execute(
            sa.select(
                status_changes.c.series,
                status_changes.c.old_status,
                status_changes.c.new_status,
                status_changes.c.actor,
                status_changes.c.created_at,
            )
            .where(status_changes.c.subscriber_id == subscriber_id)
            .order_by(status_changes.c.id)
        )
        return [tuple(row) for row in rows]


def post(url: str, **kwargs: Any) -> requests.Response:
    return requests.post(url, allow_redirects=False, timeout=10, **kwargs)


def get(url: str) -> requests.Response:
    return requests.get(url, allow_redirects=False, timeout=10)


# -- reading the page ------------------------------------------------------------


def test_healthz(site: Site) -> None:
    """GET /healthz answers 200 ok."""
    answer = get(f"{site.url}/healthz")
    assert (answer.status_code, answer.text) == (200, "ok\n")


def test_get_shows_both_choices_and_changes_nothing(site: Site, ann: int) -> None:
    """The page names the series and offers both buttons; the GET itself changes nothing."""
    before = snapshot(site.store)
    answer = get(site.link(ann))
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/html")
    page = answer.text
    assert "<h1>Unsubscribe from Demo Series?</h1>" in page
    assert (
        'name="scope" value="series"' in page and ">Unsubscribe from Demo Series</button>" in page
    )
    assert 'name="scope" value="all"' in page
    assert ">Unsubscribe from everything from Demo Blog</button>" in page
    assert '<form method="post">' in page and '<html lang="en">' in page
    assert snapshot(site.store) == before


def test_head_and_repeated_gets_change_nothing(site: Site, ann: int) -> None:
    """Link scanners may fetch a link many times, with HEAD or GET: nothing changes."""
    before = snapshot(site.store)
    link = site.link(ann)
    assert requests.head(link, timeout=10).status_code == 200
    for _ in range(3):
        assert get(link).status_code == 200
    assert snapshot(site.store) == before


def test_pages_keep_the_token_to_themselves(site: Site, ann: int) -> None:
    """No Referer leaves the page, nothing is cached or indexed, nothing loads from elsewhere."""
    headers = get(site.link(ann)).headers
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Cache-Control"] == "no-store"
    assert "noindex" in headers["X-Robots-Tag"]
    assert "default-src 'none'" in headers["Content-Security-Policy"]


def test_site_name_and_title_are_escaped(site: Site, workspace: BuildWorkspace) -> None:
    """A series title with markup in it is shown as text, not as HTML."""
    (site.root / "series" / "other" / "series.yml").write_text(
        'title: "<b>Bold</b> & Co"\ncadence_days: 7\n', encoding="utf-8"
    )
    config = load_config(site.root)
    person = site.add("bo@example.com", "other")
    with serving(make_app(config, site.store)) as url:
        page = get(site.link(person, "other").replace(site.url, url)).text
    assert "&lt;b&gt;Bold&lt;/b&gt; &amp; Co" in page and "<b>Bold</b>" not in page


# -- one-click (RFC 8058) --------------------------------------------------------


def test_one_click_urlencoded_leaves_only_that_series(site: Site, ann: int) -> None:
    """A urlencoded one-click POST unsubscribes from the token's series only: 200, no redirect."""
    answer = post(site.link(ann), data=ONE_CLICK)
    assert answer.status_code == 200
    assert "Location" not in answer.headers
    assert answer.headers["Content-Type"].startswith("text/plain")
    assert answer.text.startswith("You are unsubscribed from Demo Series.")
    assert left(site.store, ann) == {"demo": CLICKED, "other": None}
    assert status(site.store, ann) == "active"


def test_one_click_multipart(site: Site, ann: int) -> None:
    """A multipart/form-data one-click POST works the same way."""
    answer = post(site.link(ann, "other"), files={"List-Unsubscribe": (None, "One-Click")})
    assert answer.request.headers["Content-Type"].startswith("multipart/form-data")
    assert answer.status_code == 200 and "Location" not in answer.headers
    assert left(site.store, ann) == {"demo": None, "other": CLICKED}


def test_one_click_without_content_type(site: Site, ann: int) -> None:
    """The RFC 8058 body is understood even when the sender omits the content type."""
    answer = post(site.link(ann), data=b"List-Unsubscribe=One-Click", headers={"Content-Type": ""})
    assert answer.status_code == 200
    assert left(site.store, ann)["demo"] == CLICKED


def test_one_click_writes_an_audit_entry(site: Site, ann: int) -> None:
    """The change is audited: that series, active → unsubscribed, by web:one-click, at the click."""
    post(site.link(ann), data=ONE_CLICK)
    assert audit(site.store, ann)[-1] == (
        "demo",
        "active",
        "unsubscribed",
        "web:one-click",
        CLICKED,
    )


def test_one_click_without_series_leaves_everything(site: Site, ann: int) -> None:
    """A token that names no series unsubscribes from every series."""
    answer = post(site.link(ann, None), data=ONE_CLICK)
    assert answer.status_code == 200
    assert status(site.store, ann) == "unsubscribed"
    assert audit(site.store, ann)[-1] == (None, "active", "unsubscribed", "web:one-click", CLICKED)


def test_one_click_twice_is_answered_and_recorded_once(site: Site, ann: int) -> None:
    """A repeated one-click (a provider retrying) answers 200 and adds no second audit entry."""
    link = site.link(ann)
    post(link, data=ONE_CLICK)
    after_first = snapshot(site.store)
    again = post(link, data=ONE_CLICK)
    assert again.status_code == 200
    assert again.text.startswith("You had already unsubscribed from Demo Series.")
    assert snapshot(site.store) == after_first


def test_old_unsubscribe_path_works_too(site: Site, ann: int) -> None:
    """Links made with the older default, /unsubscribe/<token>, are served the same way."""
    link = site.link(ann).replace("/u/", "/unsubscribe/")
    assert get(link).status_code == 200
    assert post(link, data=ONE_CLICK).status_code == 200
    assert left(site.store, ann)["demo"] == CLICKED


# -- the page's form -------------------------------------------------------------


def test_page_scope_all_leaves_everything(site: Site, ann: int) -> None:
    """The page's "everything" button unsubscribes from all series, audited as web:page."""
    answer = post(site.link(ann), data={"scope": "all"})
    assert answer.status_code == 200 and "Location" not in answer.headers
    assert "<h1>You are unsubscribed</h1>" in answer.text
    assert status(site.store, ann) == "unsubscribed"
    assert left(site.store, ann) == {"demo": None, "other": None}
    assert audit(site.store, ann)[-1] == (None, "active", "unsubscribed", "web:page", CLICKED)


def test_page_scope_series_leaves_that_series_and_offers_the_rest(site: Site, ann: int) -> None:
    """The series button leaves that series only; the answer still offers "everything"."""
    answer = post(site.link(ann), data={"scope": "series"})
    assert answer.status_code == 200
    assert "<h1>You are unsubscribed from Demo Series</h1>" in answer.text
    assert 'value="all"' in answer.text and 'value="series"' not in answer.text
    assert left(site.store, ann) == {"demo": CLICKED, "other": None}
    assert audit(site.store, ann)[-1] == ("demo", "active", "unsubscribed", "web:page", CLICKED)


def test_page_after_leaving_a_series_says_so(site: Site, ann: int) -> None:
    """Opening the link again after leaving the series says so and offers only "everything"."""
    link = site.link(ann)
    post(link, data=ONE_CLICK)
    page = get(link).text
    assert "<h1>You are not getting Demo Series</h1>" in page
    assert 'value="all"' in page and 'value="series"' not in page


def test_page_after_leaving_everything_offers_nothing(site: Site, ann: int) -> None:
    """Once unsubscribed from everything, the page says so and has no buttons."""
    link = site.link(ann)
    post(link, data={"scope": "all"})
    page = get(link).text
    assert "<h1>You are already unsubscribed</h1>" in page and "<button" not in page


# -- refused requests: nothing changes -------------------------------------------


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (None, {}),
        (b"", {"Content-Type": "application/x-www-form-urlencoded"}),
        ({"List-Unsubscribe": "Maybe"}, {}),
        ({"scope": "everything"}, {}),
        ({"unsubscribe": "yes"}, {}),
    ],
    ids=["no-body", "empty-form", "wrong-one-click-value", "unknown-scope", "unknown-field"],
)
def test_post_without_a_known_body_is_refused(
    site: Site, ann: int, body: Any, headers: dict[str, str]
) -> None:
    """A POST with no body or an unknown one answers 400 and changes nothing."""
    before = snapshot(site.store)
    answer = post(site.link(ann), data=body, headers=headers)
    assert answer.status_code == 400
    assert snapshot(site.store) == before


def test_forged_token_is_refused(site: Site, ann: int) -> None:
    """A token signed with another key: 400 "not valid" for GET and POST; nothing changes."""
    before = snapshot(site.store)
    forged = Signer(b"guessed key").token(ann, "demo", issued=ISSUED)
    page = get(f"{site.url}/u/{forged}")
    assert page.status_code == 400 and "<h1>This link is not valid</h1>" in page.text
    one_click = post(f"{site.url}/u/{forged}", data=ONE_CLICK)
    assert one_click.status_code == 400 and one_click.text.startswith("This link is not valid.")
    assert post(f"{site.url}/u/{forged}", data={"scope": "all"}).status_code == 400
    assert snapshot(site.store) == before


def test_tampered_token_is_refused(site: Site, ann: int) -> None:
    """Someone else's id spliced into a genuine token: 400, and neither person changes."""
    bob = site.add("bob@example.com", "demo")
    before = snapshot(site.store)
    payload_part, mac_part = site.signer.token(ann, "demo", issued=ISSUED).split(".")
    bob_payload, _ = site.signer.token(bob, "demo", issued=ISSUED).split(".")
    for token in (f"{bob_payload}.{mac_part}", f"{payload_part}.{mac_part[:-2]}AA", "x" * 40):
        assert post(f"{site.url}/u/{token}", data=ONE_CLICK).status_code == 400
        assert get(f"{site.url}/u/{token}").status_code == 400
    assert snapshot(site.store) == before


def test_other_methods_are_not_allowed(site: Site, ann: int) -> None:
    """PUT or DELETE on a link answers 405 and changes nothing."""
    before = snapshot(site.store)
    assert requests.put(site.link(ann), data=ONE_CLICK, timeout=10).status_code == 405
    assert requests.delete(site.link(ann), timeout=10).status_code == 405
    assert snapshot(site.store) == before


def test_unknown_path_is_404(site: Site) -> None:
    """Paths other than the links and /healthz are not found."""
    assert get(f"{site.url}/admin").status_code == 404


# -- replays, erasure, test sends ------------------------------------------------


def test_link_from_before_a_resubscribe_changes_nothing(site: Site, ann: int) -> None:
    """After `subscribers add --resubscribe`, an older email's link leaves them subscribed."""
    old_link = site.link(ann)
    post(site.link(ann, None), data=ONE_CLICK)
    site.add(ANN, "demo", now=ISSUED + timedelta(days=3), resubscribe=True)
    assert status(site.store, ann) == "active"
    before = snapshot(site.store)
    one_click = post(old_link, data=ONE_CLICK)
    assert one_click.status_code == 200
    assert one_click.text.startswith("This link is from an older email.")
    page = get(old_link)
    assert "<h1>This link is from an older email</h1>" in page.text and "<button" not in page.text
    assert post(old_link, data={"scope": "all"}).status_code == 200
    assert snapshot(site.store) == before
    fresh = site.link(ann, issued=ISSUED + timedelta(days=4))
    assert post(fresh, data=ONE_CLICK).status_code == 200
    assert left(site.store, ann)["demo"] == CLICKED


def test_link_from_before_rejoining_a_series_changes_nothing(site: Site, ann: int) -> None:
    """Re-enrolling in one series is audited, and that series' older links no longer work."""
    old_demo, old_other = site.link(ann, "demo"), site.link(ann, "other")
    post(old_demo, data=ONE_CLICK)
    rejoined = ISSUED + timedelta(days=3)
    site.add(ANN, "demo", now=rejoined, resubscribe=True)
    assert audit(site.store, ann)[-1] == ("demo", "unsubscribed", "active", "cli", rejoined)
    before = snapshot(site.store)
    answer = post(old_demo, data=ONE_CLICK)
    assert answer.status_code == 200 and "older email" in answer.text
    assert snapshot(site.store) == before
    # The other series was not re-joined: its link from the same email still works.
    assert post(old_other, data=ONE_CLICK).status_code == 200
    assert left(site.store, ann) == {"demo": None, "other": CLICKED}


def test_email_made_in_the_second_of_a_resubscribe_still_works(site: Site, ann: int) -> None:
    """Tokens carry whole seconds: an email made just after rejoining, same second, unsubscribes."""
    post(site.link(ann), data=ONE_CLICK)
    rejoined = ISSUED + timedelta(days=3, microseconds=400_000)
    site.add(ANN, "demo", now=rejoined, resubscribe=True)
    link = site.link(ann, issued=rejoined + timedelta(microseconds=300_000))
    assert post(link, data=ONE_CLICK).status_code == 200
    assert left(site.store, ann)["demo"] == CLICKED


def test_erased_subscriber_has_nothing_left(site: Site, ann: int) -> None:
    """After `subscribers remove`, the link says nothing is left, and nothing is recreated."""
    link = site.link(ann)
    remove(site.store, ANN, now=ISSUED + timedelta(days=1))
    before = snapshot(site.store)
    page = get(link)
    assert page.status_code == 200 and "<h1>Nothing left to unsubscribe</h1>" in page.text
    assert "<button" not in page.text
    assert post(link, data=ONE_CLICK).status_code == 200
    assert post(link, data={"scope": "all"}).status_code == 200
    assert snapshot(site.store) == before


def test_test_send_link_changes_nothing(site: Site, ann: int) -> None:
    """A link from a test send (subscriber 0) says it was a test email and changes nothing."""
    before = snapshot(site.store)
    link = site.link(TEST_SUBSCRIBER)
    page = get(link)
    assert page.status_code == 200 and "<h1>This link came from a test email</h1>" in page.text
    answer = post(link, data=ONE_CLICK)
    assert answer.status_code == 200 and answer.text.startswith("This link came from a test email")
    assert snapshot(site.store) == before


def test_bounced_address_keeps_its_status(site: Site, ann: int) -> None:
    """Leaving everything does not turn a bounced address into an unsubscribed one."""
    with site.store.begin() as conn:
        conn.execute(subscribers.update().where(subscribers.c.id == ann).values(status="bounced"))
    before = snapshot(site.store)
    answer = post(site.link(ann), data={"scope": "all"})
    assert "<h1>You are already unsubscribed</h1>" in answer.text
    assert snapshot(site.store) == before


# -- keys, loading, serving ------------------------------------------------------


def test_secret_key_from_environment(site: Site, ann: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """With SERIES_SECRET_KEY set, its tokens work and the stored key's tokens do not."""
    monkeypatch.setenv(SECRET_ENV, "correct horse battery staple")
    app = make_app(load_config(site.root), site.store, clock=lambda: CLICKED)
    with serving(app) as url:
        stored = site.link(ann).replace(site.url, url)
        assert post(stored, data=ONE_CLICK).status_code == 400
        token = Signer(b"correct horse battery staple").token(ann, "demo", issued=ISSUED)
        assert post(f"{url}/u/{token}", data=ONE_CLICK).status_code == 200
    assert left(site.store, ann)["demo"] == CLICKED


def test_app_from_environment_serves_the_workspace(
    site: Site, ann: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A WSGI server can load the app from SERIES_WORKSPACE alone."""
    monkeypatch.setenv("SERIES_WORKSPACE", str(site.root))
    app = app_from_environment()
    try:
        with serving(app) as url:
            assert get(f"{url}/healthz").status_code == 200
            page = get(site.link(ann, "other").replace(site.url, url))
            assert "<h1>Unsubscribe from Another Story?</h1>" in page.text
    finally:
        app.store.close()


def test_app_from_environment_serves_an_old_database_from_a_config_only_folder(
    example_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unsubscribe pages, deployed with the configuration only, start on a shared
    database at 0004 that they cannot upgrade: it stays at 0004 and they serve."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    database_at_0004(url)
    web = tmp_path / "web"
    web.mkdir()
    shutil.copy(example_copy / "pyproject.toml", web / "pyproject.toml")
    shutil.copytree(example_copy / "templates", web / "templates")
    monkeypatch.setenv("SERIES_DATABASE_URL", url)
    monkeypatch.setenv("SERIES_WORKSPACE", str(web))
    app = app_from_environment()
    try:
        with app.store.connect() as conn:
            assert conn.scalar(sa.text("SELECT version_num FROM alembic_version")) == "0004"
        assert "series 'attachment' has recorded deliveries" in (app.store.upgrade_refused or "")
        with serving(app) as served:
            assert get(f"{served}/healthz").status_code == 200
            # A link that names its email's article (schema 0008) still unsubscribes: the
            # article is not recorded where the schema has no place for it.
            token = app.signer.token(1, "attachment", issued=CLICKED, article="secure")
            answer = requests.post(f"{served}/u/{token}", data=ONE_CLICK, timeout=10)
            assert answer.status_code == 200 and answer.text.startswith("You are unsubscribed")
        with app.store.connect() as conn:
            left = conn.scalar(sa.select(sa.func.count()).select_from(status_changes))
        assert left == 1
    finally:
        app.store.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_series_serve_runs_until_stopped(site: Site, ann: int, stop: signal.Signals) -> None:
    """`series serve` prints its URL, answers, stops cleanly, and never shows the key."""
    secret = "serve-test-secret-3f9a"
    env = {**os.environ, SECRET_ENV: secret}
    env.pop("SERIES_DATABASE_URL", None)
    port = free_port()
    command = [sys.executable, "-m", "pipeline", "-w", str(site.root), "serve", "--port", str(port)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "series serve printed nothing within 30 s"
        line = proc.stdout.readline().decode()
        url = f"http://127.0.0.1:{port}"
        assert line == f"Serving unsubscribe pages on {url}/ (Ctrl-C to stop)\n"
        assert get(f"{url}/healthz").text == "ok\n"
        token = Signer(secret.encode()).token(ann, "demo", issued=ISSUED)
        assert post(f"{url}/u/{token}", data=ONE_CLICK).status_code == 200
        proc.send_signal(stop)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert out.decode() == "Stopped.\n" and "Traceback" not in err.decode()
    assert secret not in line + out.decode() + err.decode()
    assert left(site.store, ann)["demo"] is not None


def test_series_serve_on_a_busy_port_says_so(site: Site) -> None:
    """A port already in use is one error line and exit code 1, not a traceback."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(
            cli, ["-w", str(site.root), "serve", "--port", str(port)], catch_exceptions=False
        )
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: cannot listen on 127.0.0.1:{port}: ")
    assert len(result.stderr.splitlines()) == 1
