"""A reader whose address the provider refuses (a bounce) is marked bounced from that
answer on: no later request of the same run goes to them, in another series either,
on both databases and however the run streams its requests (PostgreSQL records each
answer beside the send loop). And a run whose token the provider starts refusing midway
leaves nothing claimed."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline.config import load_config
from pipeline.providers import ProviderError, get_provider
from pipeline.send import SendOptions, SendReport, send_due
from pipeline.store import ledger, open_store
from pipeline.store.schema import deliveries

from .conftest import POSTMARK_TOKEN
from .fake_postmark import FakePostmark
from .helpers import ENROLLED_AT, configure, delivery_states, run

MONDAY = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)

pytestmark = pytest.mark.usefixtures("each_database")


def send_two_series(
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    readers: dict[str, list[str]],
    limit: int | None,
    batch_size: int = 1,
) -> tuple[list[str], SendReport, int]:
    """One send through the fake Postmark, ``batch_size`` readers per request, of two
    series (the example's, and a copy named "second") to READERS (series -> names, each
    NAME@example.com); Postmark refuses s@example.com. Returns the addresses of the
    requests in order, the report, and how many deliveries are left claimed. Checks
    that every delivery sent records the key of the request it went in."""
    shutil.copytree(root / "series" / "attachment", root / "series" / "second")
    settings = f"[tool.series.postmark]\nbatch_size = {batch_size}"
    configure(root, 'provider = "postmark"', settings)
    for series, names in readers.items():
        csv = root / f"{series}.csv"
        csv.write_text(
            "email,series\n" + "".join(f"{n}@example.com,{series}\n" for n in names),
            encoding="utf-8",
        )
        code, out, err = run(root, "subscribers", "import", str(csv), "--now", ENROLLED_AT)
        assert code == 0, out + err
    with FakePostmark(token=POSTMARK_TOKEN, invalid={"s@example.com"}) as fake:
        monkeypatch.setenv("POSTMARK_SERVER_TOKEN", POSTMARK_TOKEN)
        monkeypatch.setenv("SERIES_PROVIDER_URL", fake.url)
        config = load_config(root)
        provider = get_provider("postmark", config)
        try:
            with open_store(root) as store:
                report = send_due(config, store, provider, SendOptions(now=MONDAY, limit=limit))
                with store.connect() as conn:
                    left = conn.execute(
                        sa.select(sa.func.count())
                        .select_from(deliveries)
                        .where(deliveries.c.state == "claimed")
                    ).scalar_one()
                    recorded = dict(
                        conn.execute(
                            sa.select(deliveries.c.delivery_key, deliveries.c.batch).where(
                                deliveries.c.state == "sent"
                            )
                        ).all()
                    )
        finally:
            provider.close()
        requests = [r.body for r in fake.batch_requests()]
    tried = [parseaddr(m["To"])[1] for body in requests for m in body]
    for body in requests:
        keys = [m["Metadata"]["delivery_key"] for m in body]
        sent = [key for key in keys if key in recorded]
        assert {recorded[key] for key in sent} <= {ledger.batch_key(keys)}, body
    return tried, report, left


@pytest.mark.parametrize("limit", [None, 10])
def test_a_reader_bounced_by_an_answer_gets_no_later_request_of_the_run(
    example_copy: Path, monkeypatch: pytest.MonkeyPatch, limit: int | None
) -> None:
    """One reader per request: a1, a2, s of one series, then a1, s of a second. The
    provider refuses s's address (Postmark 300, "Error parsing 'To'"), which bounces
    s: the second series' part never goes to s."""
    readers = {"attachment": ["a1", "a2", "s"], "second": ["a1", "s"]}
    tried, report, left = send_two_series(example_copy, monkeypatch, readers, limit)
    assert tried.count("s@example.com") == 1, tried
    assert sorted(tried) == sorted(
        ["a1@example.com", "a2@example.com", "s@example.com", "a1@example.com"]
    ), tried
    assert report.failed == 1 and left == 0


@pytest.mark.parametrize("limit", [None, 10])
def test_a_reader_bounced_by_the_answer_just_before_is_left_out_of_the_next_request(
    example_copy: Path, monkeypatch: pytest.MonkeyPatch, limit: int | None
) -> None:
    """s is the last request of one series and the first of the next, which may be
    claimed and built while the bouncing request is on its way: s is given back from
    it before it goes, and nothing is left claimed."""
    readers = {"attachment": ["a1", "s"], "second": ["s", "a2"]}
    tried, report, left = send_two_series(example_copy, monkeypatch, readers, limit)
    assert tried.count("s@example.com") == 1, tried
    assert sorted(set(tried)) == ["a1@example.com", "a2@example.com", "s@example.com"]
    assert report.failed == 1 and left == 0


def test_a_request_that_loses_a_bounced_reader_records_its_new_key(
    example_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two readers per request, with --limit (one stream for both series): s is in the
    first request and in the next, claimed while the first was on its way. The first
    answer bounces s, who leaves the next request: a2's delivery records the key of the
    request it went in (the key a later run repeats it under), not the one it was
    claimed under with s."""
    readers = {"attachment": ["a1", "s"], "second": ["s", "a2"]}
    tried, report, left = send_two_series(example_copy, monkeypatch, readers, 10, batch_size=2)
    assert tried.count("s@example.com") == 1, tried
    assert sorted(tried) == ["a1@example.com", "a2@example.com", "s@example.com"], tried
    assert report.failed == 1 and left == 0


def test_a_token_refused_mid_run_leaves_nothing_claimed(
    example_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Postmark refuses the server token from the third request on (one reader each):
    the run stops with the refusal, and what it had claimed but not sent, on PostgreSQL
    also the request claimed ahead while the refused one was built, is given back
    rather than left claimed for a lease. The next run sends the rest, once each.
    (160 readers: a PostgreSQL run sends its readers in 16 shares by enrollment id, and
    claims ahead only within one.)"""
    configure(example_copy, 'provider = "postmark"', "[tool.series.postmark]\nbatch_size = 1")
    names = [f"r{i:03}" for i in range(160)]
    csv = example_copy / "readers.csv"
    rows = "".join(f"{n}@example.com,attachment\n" for n in names)
    csv.write_text("email,series\n" + rows, encoding="utf-8")
    code, out, err = run(example_copy, "subscribers", "import", str(csv), "--now", ENROLLED_AT)
    assert code == 0, out + err
    monkeypatch.setenv("POSTMARK_SERVER_TOKEN", POSTMARK_TOKEN)
    with FakePostmark(token=POSTMARK_TOKEN) as fake:
        monkeypatch.setenv("SERIES_PROVIDER_URL", fake.url)
        config = load_config(example_copy)
        provider = get_provider("postmark", config)
        real_send = provider.send

        def send(*args: Any, **kwargs: Any) -> Any:
            if len(fake.batch_requests()) == 2:
                fake.token = "revoked"
            return real_send(*args, **kwargs)

        monkeypatch.setattr(provider, "send", send)
        try:
            with open_store(example_copy) as store:
                with pytest.raises(ProviderError, match="refused the server token"):
                    send_due(config, store, provider, SendOptions(now=MONDAY))
                with store.connect() as conn:
                    states = delivery_states(conn)
        finally:
            provider.close()
        assert states == {"sent": 2}, states
        fake.token = POSTMARK_TOKEN
        code, out, err = run(example_copy, "send", "--now", MONDAY.isoformat())
        assert code == 0 and out.startswith("sent 158, failed 0"), out + err
        accepted = [parseaddr(record["to"])[1] for record in fake.accepted]
    assert sorted(accepted) == [f"{n}@example.com" for n in names]
