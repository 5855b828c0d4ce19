"""One reader's message that cannot be built never stops a run (issue 9, point 4).

Whatever goes wrong while one reader's email is made in the send loop (here an error
raised for that reader alone, as a template might on their data), that delivery alone
is failed with its reason on one line, everyone else gets their part, the run exits 1,
`series status` lists it, and later runs retry it with the usual backoff. (Names and
addresses no header can carry are refused inside each provider adapter the same way:
tests/test_hostile_data.py.)
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline.send.compose import Composer
from pipeline.store import open_store
from pipeline.store.schema import deliveries, subscribers

from .helpers import configure, enroll_examples, run

MONDAY = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
PRIYA = "priya.nair@example.com"
EVERYONE = {
    "asa.berg@example.com",
    "daniel.okafor@example.com",
    "yuki.tanaka@example.com",
    PRIYA,
    "marcus.reyes@example.com",
    "eleanor.hughes@example.com",
}
REASON = "not sent: the template blew up"


@pytest.fixture(params=["outbox", "postmark"])
def provider(request: pytest.FixtureRequest, example_copy: Path) -> tuple[str, Any]:
    if request.param == "postmark":
        configure(example_copy, 'provider = "postmark"')
        return "postmark", request.getfixturevalue("postmark")
    return "outbox", None


@pytest.fixture
def broken_for_priya(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """Building Priya's message raises, with a two-line text, while ``["on"]`` is true;
    everyone else's works."""
    broken = {"on": True}
    build = Composer.for_claim

    def for_claim(self: Composer, series: Any, claim: Any, issued: datetime) -> Any:
        if broken["on"] and claim.enrollment.email == PRIYA:
            raise RuntimeError("the template blew up\nwith details on a second line")
        return build(self, series, claim, issued)

    monkeypatch.setattr(Composer, "for_claim", for_claim)
    return broken


def received(root: Path, provider: str, fake: Any) -> Counter[str]:
    """Who the provider got a message for, and how many."""
    if provider == "postmark":
        return Counter(parseaddr(m["to"])[1] for m in fake.accepted)
    files = (root / "outbox").glob("*.eml")
    return Counter(path.name.split("-", 2)[2].rsplit("-", 1)[0] for path in files)


def delivery(root: Path, email: str) -> tuple[str, int, str | None]:
    with open_store(root) as store, store.connect() as conn:
        row = conn.execute(
            sa.select(deliveries.c.state, deliveries.c.attempts, deliveries.c.last_error)
            .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
            .where(subscribers.c.email == email)
        ).one()
    return row.state, row.attempts, row.last_error


def test_an_error_building_one_message_fails_that_delivery_alone(
    example_copy: Path, provider: tuple[str, Any], broken_for_priya: dict[str, bool]
) -> None:
    """The other five readers get their part; Priya's delivery is failed with the first
    line of the error; one line says so; exit 1; `series status` lists it."""
    name, fake = provider
    root = enroll_examples(example_copy)

    code, out, err = run(root, "send", "--now", MONDAY.isoformat())

    assert (code, out) == (1, "sent 5, failed 1, retried 0, unknown 0, skipped 0\n")
    assert f"{PRIYA}: part 1 of attachment failed: {REASON}" in err.splitlines()
    assert received(root, name, fake) == Counter(EVERYONE - {PRIYA})
    assert delivery(root, PRIYA) == ("failed", 1, REASON)
    _, status, _ = run(root, "status", "--now", MONDAY.isoformat())
    assert re.search(rf"^{PRIYA}\s+1\s+1\s+{REASON}", status, re.M)


def test_a_message_that_could_not_be_built_is_retried_like_any_failure(
    example_copy: Path, provider: tuple[str, Any], broken_for_priya: dict[str, bool]
) -> None:
    """Fifteen minutes later (the first retry's delay), once what broke it is fixed, the
    next run sends Priya's part as attempt 2, and nobody gets anything twice."""
    name, fake = provider
    root = enroll_examples(example_copy)
    run(root, "send", "--now", MONDAY.isoformat())
    broken_for_priya["on"] = False

    code, out, _ = run(root, "send", "--now", (MONDAY + timedelta(minutes=20)).isoformat())

    assert (code, out) == (0, "sent 1, failed 0, retried 0, unknown 0, skipped 0\n")
    assert delivery(root, PRIYA)[:2] == ("sent", 2)
    assert received(root, name, fake) == Counter(EVERYONE)
