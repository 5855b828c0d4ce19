"""`series status` shows where readers drop off: per article, the readers who
unsubscribed, bounced or complained right after it, and how many completed.

Real parts end to end: emails sent through the outbox, their unsubscribe links
taken from the .eml files and used against the web app served on 127.0.0.1, bounces
and complaints read from the fake Postmark's suppression list by `subscribers sync`,
on a temporary SQLite file and on a real PostgreSQL server.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import load_config
from pipeline.store import open_store
from pipeline.store.ledger import link_signer
from pipeline.subscribers import find
from pipeline.tokens import SECRET_ENV
from pipeline.web import make_app

from .fake_postmark import FakePostmark
from .test_steering import Workspace
from .test_steering import ws as ws
from .test_web import serving

ONE_CLICK = {"List-Unsubscribe": "One-Click"}
# Sends before the real clock: leaves without a link (the CLI, the provider sync, the
# web pages) are recorded at the real time, and count against what was sent before.
ENROLLED = "2026-11-02T08:00:00+00:00"
MONDAY = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
READERS = ("ann", "bea", "cat", "dan", "eve", "fay")


def link(root: Path, email: str, part: int) -> str:
    """The path of the unsubscribe link in the .eml of PART sent to EMAIL."""
    (eml,) = (root / "outbox").glob(f"attachment-part{part}-{email}-*.eml")
    found = re.search(r"^List-Unsubscribe: <https://[^/]+(/u/[^>]+)>$", eml.read_text(), re.M)
    assert found is not None
    return found.group(1)


@pytest.fixture
def site(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The unsubscribe pages of the workspace, on its database, served on 127.0.0.1."""
    monkeypatch.delenv(SECRET_ENV, raising=False)
    with (
        open_store(ws.root, ws.url) as store,
        serving(make_app(load_config(ws.root), store)) as url,
    ):
        yield url


def test_drop_off_counts_web_unsubscribes_and_provider_bounces(
    ws: Workspace,
    site: str,
    postmark: FakePostmark,
) -> None:
    """An unsubscribe counts against the part whose email it came from (part 2, though
    part 3 went out since), as a one-click request or the page's "all" button; a link
    made before links named their article, and a bounce or complaint synced from the
    provider, count against the last part sent; a reader who left before any part is
    counted apart; one reader completed the series."""
    emails = {name: f"{name}@example.com" for name in READERS}
    for name in READERS[:5]:
        ws.add(emails[name], at=ENROLLED)
    ws.add("gus@example.com", at=ENROLLED)  # he goes on to the end
    ws.send(MONDAY)
    ws.send(MONDAY + timedelta(days=4))
    ws.send(MONDAY + timedelta(days=9))
    ws.add(emails["fay"])  # she bounces before her first part
    for name in READERS[:5]:
        assert ws.parts_received(emails[name]) == [1, 2, 3]

    answer = requests.post(site + link(ws.root, emails["ann"], 2), data=ONE_CLICK, timeout=10)
    assert answer.status_code == 200
    page = requests.post(site + link(ws.root, emails["bea"], 3), data={"scope": "all"}, timeout=10)
    assert page.status_code == 200
    with open_store(ws.root, ws.url) as store, store.connect() as conn:
        signer = link_signer(conn)
        cat = find(store, emails["cat"]).id
    old_v2 = _as_version_2(signer, cat, MONDAY + timedelta(days=9))
    answer = requests.post(f"{site}/u/{old_v2}", data=ONE_CLICK, timeout=10)
    assert answer.status_code == 200
    postmark.suppress(
        {emails["dan"]: "HardBounce", emails["eve"]: "SpamComplaint", emails["fay"]: "HardBounce"}
    )
    code, out, err = ws.run("subscribers", "sync", "--provider", "postmark")
    assert code == 0, out + err
    later = MONDAY + timedelta(days=9)
    for day in range(1, 9):
        ws.send(later + timedelta(days=day))
    assert ws.parts_received("gus@example.com") == [1, 2, 3, 4, 5]

    (status,) = json.loads(ws.ok("status", "--format", "json", "--now", later.isoformat()))
    left = {
        p["article"]: (p["unsubscribed"], p["bounced"], p["complained"]) for p in status["parts"]
    }
    assert left == {
        "attachment-theory": (0, 0, 0),
        "secure": (1, 0, 0),  # Ann, from part 2's email
        "anxious": (2, 1, 1),  # Bea (part 3's email), Cat (old link); Dan; Eve
        "avoidant": (0, 0, 0),
        "disorganized": (0, 0, 0),
    }
    assert status["left_before_first_part"] == {"unsubscribed": 0, "bounced": 1, "complained": 0}
    assert status["completed"] == 1

    table = ws.ok("status", "--now", later.isoformat()).splitlines()
    start = table.index("where readers left, counted at the last part they were sent:")
    assert [line.split() for line in table[start + 1 : start + 9]] == [
        ["PART", "ARTICLE", "RECEIVED", "UNSUBSCRIBED", "BOUNCED", "COMPLAINED"],
        ["----", "-----------------", "--------", "------------", "-------", "----------"],
        ["-", "(before", "part", "1)", "-", "0", "1", "0"],
        ["1", "attachment-theory", "6", "0", "0", "0"],
        ["2", "secure", "6", "1", "0", "0"],
        ["3", "anxious", "6", "2", "1", "1"],
        ["4", "avoidant", "1", "0", "0", "0"],
        ["5", "disorganized", "1", "0", "0", "0"],
    ]
    assert table[start + 9] == "completed the series (received the last part): 1"

    raw = ws.ok("status", "--format", "csv", "--now", later.isoformat())
    rows = list(csv.DictReader(io.StringIO(raw, newline="")))
    assert [(r["part"], r["article"], r["unsubscribed"], r["bounced"]) for r in rows] == [
        ("1", "attachment-theory", "0", "0"),
        ("2", "secure", "1", "0"),
        ("3", "anxious", "2", "1"),
        ("4", "avoidant", "0", "0"),
        ("5", "disorganized", "0", "0"),
        ("", "", "0", "1"),
    ]
    assert rows[-1]["state"] == "left before part 1"
    result = CliRunner().invoke(
        cli,
        ["--workspace", str(ws.root), "status", "--format", "csv", "--now", later.isoformat()],
        env=ws.env,
    )
    assert result.stdout_bytes.count(b"\r\n") == 7 and b"\n" not in result.stdout_bytes.replace(
        b"\r\n", b""
    )


def _as_version_2(signer: object, subscriber_id: int, issued: datetime) -> str:
    """A link as emails made before tokens named their article carried it."""
    from pipeline.tokens import b64

    payload = f"2.{subscriber_id}.{int(issued.timestamp())}.attachment".encode()
    return f"{b64(payload)}.{b64(signer._mac(payload))}"  # type: ignore[attr-defined]


def test_series_only_unsubscribe_counts_in_that_series_at_the_article(ws: Workspace) -> None:
    """`subscribers unsubscribe --series` has no email behind it: it counts against the
    last part sent before it, in that series."""
    ws.add("ann@example.com", at=ENROLLED)
    ws.send(MONDAY)
    ws.send(MONDAY + timedelta(days=4))
    assert datetime.now(UTC) > MONDAY + timedelta(days=4)  # recorded at the real time
    ws.ok("subscribers", "unsubscribe", "ann@example.com", "--series", "attachment")
    (status,) = json.loads(ws.ok("status", "--format", "json", "--now", MONDAY.isoformat()))
    assert [p["unsubscribed"] for p in status["parts"]] == [0, 1, 0, 0, 0]
    assert status["enrollments"]["unsubscribed"] == 1
