"""A workspace with the signup form on, served over real HTTP on 127.0.0.1 (shared by the
signup tests): its app has a clock the tests move, its confirmation emails land in outbox/."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

from pipeline.config import load_config
from pipeline.content import load_series
from pipeline.store import Store, open_store
from pipeline.store.schema import enrollments, signups, status_changes, subscribers, suppressions
from pipeline.subscribers import Catalog, add_subscriber, find
from pipeline.web import make_app

from .conftest import FIXTURES, BuildWorkspace

START = datetime(2026, 2, 2, 10, 0, tzinfo=UTC)
SIGNUP = """
[signup]
enabled = true
allowed_origins = ["https://blog.example"]
per_ip_per_hour = 0
"""
TOKEN = re.compile(r"/confirm/([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)")
ANN = "ann@example.com"


@dataclass
class Clock:
    now: datetime = START

    def __call__(self) -> datetime:
        return self.now


@dataclass
class SignupSite:
    root: Path
    store: Store
    url: str
    clock: Clock
    catalog: Catalog
    seen: set[str] = field(default_factory=set)

    def post(self, path: str = "/subscribe", **kwargs: Any) -> requests.Response:
        return requests.post(f"{self.url}{path}", allow_redirects=False, timeout=10, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(f"{self.url}{path}", allow_redirects=False, timeout=10, **kwargs)

    def subscribe(
        self, address: str = ANN, series: str = "demo", **extra: str
    ) -> requests.Response:
        return self.post(data={"email": address, "series": series, "name": "", **extra})

    def new_emails(self) -> list[bytes]:
        """The raw bytes of confirmation emails written since the last call."""
        outbox = self.root / "outbox"
        names = sorted(p.name for p in outbox.glob("signup-*.eml")) if outbox.is_dir() else []
        fresh = [n for n in names if n not in self.seen]
        self.seen.update(fresh)
        return [(outbox / n).read_bytes() for n in fresh]

    def token(self) -> str:
        """The token of the one confirmation email written since the last look."""
        [raw] = self.new_emails()
        return token_in(raw)

    def add(self, address: str, series: str) -> int:
        add_subscriber(self.store, self.catalog, address, now=START, series=series)
        return find(self.store, address).id

    def rows(self, table: sa.Table) -> list[Any]:
        with self.store.connect() as conn:
            return list(conn.execute(sa.select(table).order_by(*table.primary_key.columns)))

    def snapshot(self) -> dict[str, list[Any]]:
        tables = (subscribers, enrollments, status_changes, suppressions, signups)
        return {t.name: [tuple(r) for r in self.rows(t)] for t in tables}


def token_in(raw: bytes) -> str:
    """The confirmation token in an email's text part (decoded from its transfer encoding)."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    text = message.get_body(("plain",))
    assert text is not None
    found = TOKEN.search(text.get_content())
    assert found, "no confirmation link in the email"
    return found.group(1)


def build(workspace: BuildWorkspace, extra: str = SIGNUP) -> Path:
    """The demo workspace, a second series "Another Story" (other), one not yet published
    (later), and the signup configuration ``extra``."""
    root = workspace()
    for slug, title, published in (
        ("other", "Another Story", "2026-01-05"),
        ("later", "Coming Later", "2030-01-01"),
    ):
        folder = root / "series" / slug
        folder.mkdir()
        (folder / "series.yml").write_text(f"title: {title}\ncadence_days: 7\n", encoding="utf-8")
        text = (FIXTURES / "articles" / "valid_article.md").read_text(encoding="utf-8")
        (folder / "01-valid.md").write_text(
            text.replace("published: 2026-01-05", f"published: {published}"), encoding="utf-8"
        )
    with (root / "series.toml").open("a", encoding="utf-8") as config:
        config.write(extra)
    return root


def serve(root: Path, clock: Clock) -> Iterator[SignupSite]:
    """make_app (what `series serve` runs) on werkzeug's threaded server, on a free port."""
    import threading

    from werkzeug.serving import make_server

    config = load_config(root)
    series_list, _ = load_series(config)
    with open_store(root) as store:
        app = make_app(config, store, clock=clock)
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
        thread.start()
        try:
            yield SignupSite(
                root,
                store,
                f"http://127.0.0.1:{server.server_port}",
                clock,
                Catalog.of(series_list),
            )
        finally:
            server.shutdown()
            thread.join(timeout=10)


ORIGIN = "https://blog.example"


def open_site(workspace: BuildWorkspace, monkeypatch: Any) -> Iterator[SignupSite]:
    """The `site` fixture of the signup tests: the workspace served with signup on."""
    monkeypatch.delenv("SERIES_DATABASE_URL", raising=False)
    monkeypatch.delenv("SERIES_SECRET_KEY", raising=False)
    yield from serve(build(workspace), Clock())


def configured(workspace: BuildWorkspace, monkeypatch: Any, extra: str) -> Iterator[SignupSite]:
    """The workspace served with ``extra`` lines added to its [signup] table."""
    monkeypatch.delenv("SERIES_DATABASE_URL", raising=False)
    yield from serve(build(workspace, SIGNUP + extra), Clock())


def confirm(site: SignupSite, token: str, **headers: str) -> tuple[int, str]:
    """POST the confirmation page's button: (status, page)."""
    response = site.post(f"/confirm/{token}", data={"confirm": "yes"}, headers=headers)
    return response.status_code, response.text


def heading(html: str) -> str:
    return html.split("<h1>", 1)[1].split("</h1>", 1)[0]
