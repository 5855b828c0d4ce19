"""`series send` through Postmark, against a real HTTP server on 127.0.0.1 playing Postmark.

Covers what only a provider can do to a run: reject an address, reject the token,
fail transiently, or accept a batch without the answer arriving.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline.config import load_config
from pipeline.providers import get_provider
from pipeline.send import SendOptions, send_due
from pipeline.store import open_store
from pipeline.store.schema import deliveries, status_changes, subscribers

from .conftest import POSTMARK_TOKEN as TOKEN
from .fake_postmark import FakePostmark, FakePostmarkProcess
from .helpers import import_command, run

MONDAY = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


@pytest.fixture
def workspace(postmark_example: Path) -> Path:
    return postmark_example


def send(root: Path, when: datetime) -> tuple[int, str, str]:
    return run(root, "send", "--now", when.isoformat())


def ledger_states(root: Path) -> Counter[str]:
    with open_store(root) as store, store.connect() as conn:
        return Counter(conn.scalars(sa.select(deliveries.c.state)))


def test_batch_goes_to_the_broadcast_stream(workspace: Path, postmark: FakePostmark) -> None:
    """One batch request carries every message, on the broadcast stream, each with its key."""
    assert send(workspace, MONDAY)[1] == "sent 6, failed 0, retried 0, unknown 0, skipped 0\n"
    (request,) = postmark.batch_requests()
    assert {m["MessageStream"] for m in request.body} == {"broadcast"}
    assert len({m["Metadata"]["delivery_key"] for m in request.body}) == 6
    with open_store(workspace) as store, store.connect() as conn:
        ids = set(conn.scalars(sa.select(deliveries.c.provider_message_id)))
    assert ids == {m["message_id"] for m in postmark.accepted}


def test_inactive_recipient_is_marked_and_the_run_goes_on(
    workspace: Path, postmark: FakePostmark
) -> None:
    """A 406 marks that subscriber bounced (audited); the others are sent; exit code 1."""
    postmark.inactive.add("daniel.okafor@example.com")
    code, out, err = send(workspace, MONDAY)
    assert code == 1
    assert out == "sent 5, failed 1, retried 0, unknown 0, skipped 0\n"
    assert err.splitlines()[1].startswith(
        "daniel.okafor@example.com: part 1 of attachment failed: 406: "
    )
    with open_store(workspace) as store, store.connect() as conn:
        status = conn.execute(
            sa.select(subscribers.c.status).where(
                subscribers.c.email == "daniel.okafor@example.com"
            )
        ).scalar()
        audit = conn.execute(sa.select(status_changes.c.new_status, status_changes.c.actor)).all()
    assert status == "bounced"
    assert ("bounced", "provider:postmark") in [tuple(row) for row in audit]
    # Nothing more goes to the bounced address.
    for days in (4, 9, 14):
        send(workspace, MONDAY + timedelta(days=days))
    to_daniel = [m for m in postmark.accepted if "daniel.okafor" in m["to"]]
    assert to_daniel == []


def test_bad_token_stops_the_run_before_anyone_is_marked(
    workspace: Path, postmark: FakePostmark
) -> None:
    """401: one clear line, exit 1, no delivery marked failed, no subscriber touched."""
    postmark.token = "a-different-token"
    code, out, err = send(workspace, MONDAY)
    assert (code, out) == (1, "")
    assert err == ("Error: Postmark refused the server token (401); check POSTMARK_SERVER_TOKEN\n")
    assert ledger_states(workspace) == Counter()
    postmark.token = TOKEN
    assert send(workspace, MONDAY)[1].startswith("sent 6,")


def test_transient_errors_are_retried(workspace: Path, postmark: FakePostmark) -> None:
    """429 (with Retry-After) and 500 are retried in the same run; all six arrive once."""
    postmark.fail_next("429", times=1, retry_after=0)
    postmark.fail_next("500", times=1)
    code, out, _ = send(workspace, MONDAY)
    assert (code, out) == (0, "sent 6, failed 0, retried 2, unknown 0, skipped 0\n")
    assert len(postmark.accepted) == 6


def test_answer_lost_after_acceptance_is_resolved_without_resending(
    workspace: Path, postmark: FakePostmark
) -> None:
    """The connection drops after Postmark accepted the batch: the deliveries are unknown,
    and the next run finds them by their metadata and records them as sent, once."""
    postmark.fail_next("drop-after", times=1)
    assert send(workspace, MONDAY)[1] == "sent 0, failed 0, retried 0, unknown 6, skipped 0\n"
    assert ledger_states(workspace) == Counter({"unknown": 6})
    _, out, _ = send(workspace, MONDAY + timedelta(minutes=20))
    assert out.splitlines() == [
        "sent 0, failed 0, retried 0, unknown 0, skipped 0",
        "resolved 6 delivery(ies) left unknown by an earlier run",
    ]
    assert ledger_states(workspace) == Counter({"sent": 6})
    assert len(postmark.accepted) == 6
    searches = [r for r in postmark.requests if r.path == "/messages/outbound"]
    assert len(searches) == 6


def test_batch_lost_before_acceptance_is_sent_again(
    workspace: Path, postmark: FakePostmark
) -> None:
    """The connection drops before Postmark took the batch: after checking, it is resent."""
    postmark.fail_next("drop-before", times=1)
    assert send(workspace, MONDAY)[1].startswith("sent 0, failed 0, retried 0, unknown 6")
    # Too soon to conclude: a search that finds nothing might just be early. The run
    # says so, instead of leaving six unknown without a word.
    code, out, err = send(workspace, MONDAY + timedelta(minutes=5))
    assert (code, out) == (0, "sent 0, failed 0, retried 0, unknown 6, skipped 0\n")
    assert err.splitlines()[-1] == (
        "6 unknown deliveries were interrupted less than 10 minutes ago, too soon to take "
        'postmark\'s "not found" as final: a later run looks them up again'
    )
    send(workspace, MONDAY + timedelta(minutes=20))  # not found: marked for a retry
    send(workspace, MONDAY + timedelta(hours=1))
    assert ledger_states(workspace) == Counter({"sent": 6})
    assert Counter(m["to"] for m in postmark.accepted).most_common(1)[0][1] == 1
    assert len(postmark.accepted) == 6


def test_not_found_after_postmarks_memory_proves_nothing(
    workspace: Path, postmark: FakePostmark
) -> None:
    """Unknown for over a week: Postmark may have forgotten the message, so a search that
    finds nothing leaves it unknown for a person to decide; nothing is sent again."""
    postmark.fail_next("drop-before", times=1)
    send(workspace, MONDAY)

    _, out, err = send(workspace, MONDAY + timedelta(days=8))

    assert out.startswith("sent 0, failed 0, retried 0, unknown 6")
    assert "6 unknown deliveries are older than postmark keeps its log" in err
    assert ledger_states(workspace) == Counter({"unknown": 6})
    assert postmark.accepted == []


def test_a_claim_left_over_a_week_ago_is_not_said_to_be_too_recent(
    workspace: Path, postmark: FakePostmark
) -> None:
    """A run killed while its batch was on its way, the claims expiring only when the next
    run comes 8 days later: "not found" proves nothing (older than Postmark's log), and
    that run says so at once, not that they are too recent and a later run looks them
    up again (it would only say, ten minutes on, that a person must decide them)."""
    postmark.fail_next("drop-before", times=1)
    send(workspace, MONDAY)
    with open_store(workspace) as store, store.begin() as conn:  # as a killed run leaves them
        conn.execute(
            deliveries.update().values(
                state="claimed", claimed_until=MONDAY + timedelta(minutes=15)
            )
        )

    _, out, err = send(workspace, MONDAY + timedelta(days=8))

    assert out.startswith("sent 0, failed 0, retried 0, unknown 6")
    assert "too soon" not in err, err
    assert err.splitlines()[-1] == (
        "6 unknown deliveries are older than postmark keeps its log: decide them with "
        "`series resolve` (see `series status`)"
    )
    assert ledger_states(workspace) == Counter({"unknown": 6})
    assert postmark.accepted == []


def test_rate_limit_paces_batches(workspace: Path, postmark: FakePostmark) -> None:
    """With rate_limit = 2 and batches of 2, six messages go one per request, and take
    at least 3.5 s: no window of a second or more holds more than two a second."""
    config_file = workspace / "pyproject.toml"
    text = config_file.read_text().replace(
        'provider = "postmark"', 'provider = "postmark"\nrate_limit = 2'
    )
    config_file.write_text(text + "\n[tool.series.postmark]\nbatch_size = 2\n", encoding="utf-8")
    config = load_config(workspace)
    clock = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    provider = get_provider("postmark", config)
    with open_store(workspace) as store:
        report = send_due(
            config,
            store,
            provider,
            SendOptions(now=MONDAY, sleep=sleep, monotonic=lambda: clock[0]),
        )
    assert report.sent == 6
    # Batches shrink to one message (a tenth of a second's share, at least one), and no
    # window of a second or more may hold more than 2 a second: at best the messages
    # go at 0, 0, 1.5, 2, 3 and 3.5 s (batches of 2 at 0, 1 and 2 s, as before, put 4
    # in a window of 1.0x s). Each request's answer moves its booking to when it came,
    # and this fake clock also moves while the next batch waits: up to 1.5 s a message.
    assert [len(r.body) for r in postmark.batch_requests()] == [1] * 6
    assert 3.5 <= sum(slept) <= 6.0, slept


@pytest.mark.parametrize("runs", [2])
def test_two_runs_at_once_through_postmark(
    example_copy: Path, database_url: str, tmp_path: Path, runs: int
) -> None:
    """Two `series send` processes started together: Postmark receives each delivery once."""
    state = tmp_path / "postmark.jsonl"
    readers = tmp_path / "readers.csv"
    readers.write_text(
        "email,series\n" + "".join(f"reader{i}@example.com,attachment\n" for i in range(400)),
        encoding="utf-8",
    )
    with FakePostmarkProcess(state, token=TOKEN) as fake:
        env = {
            **os.environ,
            "SERIES_WORKSPACE": str(example_copy),
            "SERIES_DATABASE_URL": database_url,
            "SERIES_PROVIDER_URL": fake.url,
            "POSTMARK_SERVER_TOKEN": TOKEN,
        }
        subprocess.run(
            import_command(str(readers)),
            env=env,
            check=True,
            capture_output=True,
        )
        command = [
            sys.executable,
            "-m",
            "pipeline",
            "send",
            "--provider",
            "postmark",
            "--now",
            MONDAY.isoformat(),
        ]
        processes = [
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
            for _ in range(runs)
        ]
        outputs = [p.communicate(timeout=300)[0] for p in processes]
        assert [p.returncode for p in processes] == [0] * runs, outputs
        accepted = fake.accepted
    keys = Counter(m["delivery_key"] for m in accepted)
    recipients = Counter(m["to"] for m in accepted)
    assert len(keys) == 400 and max(keys.values()) == 1
    assert len(recipients) == 400 and max(recipients.values()) == 1
    assert sum(int(out.split(",")[0].split()[1]) for out in outputs) == 400


def test_provider_managed_unsubscribes_use_postmarks_placeholder(
    workspace: Path, postmark: FakePostmark
) -> None:
    """unsubscribe = "provider": the body links to {{{ pm:unsubscribe }}} and the messages
    carry no List-Unsubscribe of ours (Postmark adds its own on broadcast streams)."""
    config_file = workspace / "pyproject.toml"
    config_file.write_text(
        config_file.read_text().replace(
            'provider = "postmark"', 'provider = "postmark"\nunsubscribe = "provider"'
        ),
        encoding="utf-8",
    )

    assert send(workspace, MONDAY)[1] == "sent 6, failed 0, retried 0, unknown 0, skipped 0\n"

    [request] = postmark.batch_requests()
    for message in request.body:
        assert message["MessageStream"] == "broadcast"
        assert message["Headers"] == []
        assert 'href="{{{ pm:unsubscribe }}}"' in message["HtmlBody"]
        assert "Unsubscribe: {{{ pm:unsubscribe }}}\n" in message["TextBody"]
        assert "steadyground.example/u/" not in message["HtmlBody"] + message["TextBody"]


def test_provider_managed_unsubscribes_need_a_provider_that_offers_them(
    workspace: Path, postmark: FakePostmark
) -> None:
    """unsubscribe = "provider" and --provider outbox: one line naming the fix; nothing sent.
    (With provider = "outbox" in the config itself, loading the config already says so.)"""
    config_file = workspace / "pyproject.toml"
    config_file.write_text(
        config_file.read_text().replace(
            'provider = "postmark"', 'provider = "postmark"\nunsubscribe = "provider"'
        ),
        encoding="utf-8",
    )

    code, out, err = run(workspace, "send", "--now", MONDAY.isoformat(), "--provider", "outbox")

    assert (code, out) == (1, "")
    assert err == (
        'Error: pyproject.toml: unsubscribe = "provider", but outbox does not manage '
        'unsubscribes for series\' emails; use unsubscribe = "self-hosted" and run '
        "`series serve`\n"
    )
    assert postmark.requests == []
    assert not (workspace / "outbox").exists()


def test_unknown_deliveries_another_run_settled_meanwhile_are_not_counted_again(
    workspace: Path, postmark: FakePostmark, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs look the same unknown deliveries up at once: the one that comes second
    to the ledger finds them settled and leaves them, and its report does not say it
    resolved them too (the other run's does)."""
    postmark.fail_next("drop-after", times=1)
    assert send(workspace, MONDAY)[1].startswith("sent 0, failed 0, retried 0, unknown 6")
    config = load_config(workspace)
    provider = get_provider("postmark", config)
    real_lookup = provider.lookup

    def lookup_while_another_run_settles(pending: Any) -> Any:
        found = real_lookup(pending)
        with open_store(workspace) as other, other.begin() as conn:
            conn.execute(
                deliveries.update()
                .where(deliveries.c.state == "unknown")
                .values(state="sent", provider_message_id="the-other-run")
            )
        return found

    monkeypatch.setattr(provider, "lookup", lookup_while_another_run_settles)
    with open_store(workspace) as store:
        report = send_due(config, store, provider, SendOptions(now=MONDAY + timedelta(minutes=20)))
        with store.connect() as conn:
            ids = Counter(conn.scalars(sa.select(deliveries.c.provider_message_id)))
    assert report.resolved == 0
    assert ids == Counter({"the-other-run": 6})
    assert len(postmark.accepted) == 6
