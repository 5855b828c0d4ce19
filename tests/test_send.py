"""`series send` and `series status` end to end, with the outbox provider and real state."""

from __future__ import annotations

import email
import email.policy
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline.loader import BUILTIN_DIR
from pipeline.store import open_store
from pipeline.store.schema import deliveries, subscribers

from .conftest import FIXTURES, ROOT
from .helpers import enroll_examples, import_command, run, send_at

# A Monday; the example's parts 1–3 are out, 4 is a draft, 5 is dated 2027-03-15.
MONDAY = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


send = send_at


def outbox(root: Path) -> list[EmailMessage]:
    messages = []
    for path in sorted((root / "outbox").glob("*.eml")):
        parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        messages.append(parsed)
    return messages


def received(root: Path) -> dict[str, list[int]]:
    """Parts each address received, in the order they were sent, from the ledger."""
    with open_store(root) as store, store.connect() as conn:
        rows = conn.execute(
            sa.select(subscribers.c.email, deliveries.c.part)
            .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
            .where(deliveries.c.state == "sent")
            .order_by(deliveries.c.sent_at, deliveries.c.part)
        ).all()
    parts: dict[str, list[int]] = {}
    for address, number in rows:
        parts.setdefault(address, []).append(number)
    return parts


@pytest.fixture
def enrolled(example_copy: Path) -> Path:
    """The example workspace with its six example subscribers imported."""
    return enroll_examples(example_copy)


def test_first_run_sends_part_one_to_everyone(enrolled: Path) -> None:
    """Each subscriber gets their first part as a complete message with one-click unsubscribe."""
    code, out, _ = send(enrolled, MONDAY)
    assert (code, out) == (0, "sent 6, failed 0, retried 0, unknown 0, skipped 0\n")
    messages = outbox(enrolled)
    assert len(messages) == 6
    by_to = {m["To"].addresses[0].addr_spec: m for m in messages}
    asa = by_to["asa.berg@example.com"]
    assert asa["Subject"] == "What attachment styles are (Attachment Styles, part 1 of 5)"
    assert str(asa["To"]) == "Åsa Berg <asa.berg@example.com>"
    assert asa["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe = asa["List-Unsubscribe"].strip("<>")
    assert unsubscribe.startswith("https://steadyground.example/u/")
    html = asa.get_body(preferencelist=("html",))
    assert html is not None
    assert f'href="{unsubscribe}"' in html.get_content()
    assert "Hi Åsa," in html.get_content()  # by first name
    assert "New here?" not in html.get_content()
    # Yuki starts at part 2, so her email points her to part 1.
    yuki = by_to["yuki.tanaka@example.com"]
    assert yuki["Subject"].startswith("Secure attachment")
    yuki_text = yuki.get_body(preferencelist=("plain",))
    assert yuki_text is not None
    assert "New here? Start with part 1: What attachment styles are" in yuki_text.get_content()
    # Every unsubscribe link is personal.
    assert len({m["List-Unsubscribe"] for m in messages}) == 6


def test_never_twice_and_in_order_over_weeks(enrolled: Path) -> None:
    """Daily runs over five weeks: parts 1–3 arrive once each, in order, then readers wait."""
    day = MONDAY
    for _ in range(35):
        assert send(enrolled, day)[0] == 0
        day += timedelta(days=1)
    parts = received(enrolled)
    assert parts["asa.berg@example.com"] == [1, 2, 3]
    assert parts["yuki.tanaka@example.com"] == [2, 3]
    assert len(outbox(enrolled)) == 5 * 3 + 2
    _, out, _ = run(enrolled, "send", "--dry-run", "--now", day.isoformat())
    assert "waiting: part 4 is a draft" in out


def test_delay_between_parts(enrolled: Path) -> None:
    """Part 2 waits cadence_days (4) after part 1; part 3 its own delay_days (5)."""
    send(enrolled, MONDAY)
    assert send(enrolled, MONDAY + timedelta(days=3, hours=23))[1].startswith("sent 0,")
    assert send(enrolled, MONDAY + timedelta(days=4))[1].startswith("sent 5,")
    # Yuki started at part 2 on Monday, so her part 3 was due on day 5.
    assert send(enrolled, MONDAY + timedelta(days=8, hours=23))[1].startswith("sent 1,")
    assert send(enrolled, MONDAY + timedelta(days=9))[1].startswith("sent 5,")


def test_publishing_a_part_reaches_waiting_readers(enrolled: Path) -> None:
    """When the draft part 4 is published, readers waiting at it get it on the next run."""
    day = MONDAY
    for _ in range(12):
        send(enrolled, day)
        day += timedelta(days=1)
    assert send(enrolled, day)[1].startswith("sent 0,")
    draft = enrolled / "series/attachment/04-avoidant.md"
    draft.write_text(
        draft.read_text().replace("draft: true", "published: 2026-12-01"), encoding="utf-8"
    )
    # Yuki (who started at part 2) finished part 3 first, so part 4 is due for her now;
    # the others get it 4 days after their part 3, the next day.
    assert send(enrolled, day)[1].startswith("sent 1,")
    assert send(enrolled, day + timedelta(days=1))[1].startswith("sent 5,")
    assert all(parts[-1] == 4 for parts in received(enrolled).values())


def test_unsubscribed_between_runs_gets_nothing_more(enrolled: Path) -> None:
    """Someone who unsubscribes after part 1 never gets part 2, from one series or all."""
    send(enrolled, MONDAY)
    run(enrolled, "subscribers", "unsubscribe", "asa.berg@example.com", "--series", "attachment")
    run(enrolled, "subscribers", "unsubscribe", "daniel.okafor@example.com")
    for days in range(1, 20):
        send(enrolled, MONDAY + timedelta(days=days))
    parts = received(enrolled)
    assert parts["asa.berg@example.com"] == [1]
    assert parts["daniel.okafor@example.com"] == [1]
    assert parts["eleanor.hughes@example.com"] == [1, 2, 3]


def test_dry_run_writes_nothing(enrolled: Path) -> None:
    """--dry-run leaves the database byte for byte unchanged and sends nothing."""
    send(enrolled, MONDAY)
    database = enrolled / "subscribers" / "state.db"
    _checkpoint(database)
    before = database.read_bytes()
    code, out, err = run(
        enrolled, "send", "--dry-run", "--now", (MONDAY + timedelta(days=4)).isoformat()
    )
    assert code == 0
    _checkpoint(database)
    assert database.read_bytes() == before
    assert len(outbox(enrolled)) == 6
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["EMAIL", "SERIES", "PART", "TITLE", "DUE"]
    assert lines[0].split()[5:] == ["(Europe/Stockholm)", "WHY"]
    asa = next(line for line in lines if line.startswith("asa.berg@example.com"))
    assert "Secure attachment" in asa and "now" in asa and "4 days after part 1" in asa
    assert "dry run: would send 5 email(s) now; 1 waiting or scheduled" in err


def _checkpoint(database: Path) -> None:
    """Fold SQLite's write-ahead log into the file so its bytes are the whole state."""
    engine = sa.create_engine(f"sqlite:///{database}")
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()


def test_dry_run_json(enrolled: Path) -> None:
    """--format json gives machines the same plan: who, what, when and why."""
    code, out, _ = run(
        enrolled, "send", "--dry-run", "--format", "json", "--now", MONDAY.isoformat()
    )
    assert code == 0
    plan = json.loads(out)
    assert len(plan) == 6
    yuki = next(p for p in plan if p["email"] == "yuki.tanaka@example.com")
    assert yuki == {
        "email": "yuki.tanaka@example.com",
        "series": "attachment",
        "part": 2,
        "title": "Secure attachment",
        "due_at": yuki["due_at"],
        "status": "due",
        "why": "first part (starting at part 2)",
    }


def test_limit_holds_the_rest_for_the_next_run(enrolled: Path) -> None:
    """--limit N sends N now; the others go in the next run, still once each."""
    assert send(enrolled, MONDAY, "--limit", "2")[1].startswith(
        "sent 2, failed 0, retried 0, unknown 0, skipped 4"
    )
    assert send(enrolled, MONDAY)[1].startswith("sent 4,")
    assert len(outbox(enrolled)) == 6


def test_template_error_stops_the_run_before_anything_is_sent(enrolled: Path) -> None:
    """A broken template stops the run with one error line: no message, no ledger row."""
    shutil.copy(
        FIXTURES / "templates" / "template_with_undefined_variable.mjml.j2",
        enrolled / "templates" / "email.mjml.j2",
    )
    code, _, err = send(enrolled, MONDAY)
    assert code == 1
    assert err == (
        "Error: templates/email.mjml.j2:5: template could not render: "
        "'dict object' has no attribute 'subtitle'\n"
    )
    assert not (enrolled / "outbox").exists()
    assert received(enrolled) == {}


def test_status_table(enrolled: Path) -> None:
    """`series status` shows sent, held, scheduled and waiting per part, and enrollment counts."""
    send(enrolled, MONDAY)
    run(enrolled, "subscribers", "unsubscribe", "daniel.okafor@example.com")
    code, out, _ = run(enrolled, "status", "--now", MONDAY.isoformat())
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "Attachment Styles (attachment), 5 part(s)"
    header = lines[1].split()
    assert header[:4] == ["PART", "ARTICLE", "TITLE", "STATE"]
    part1 = lines[3].split()
    # sent, skipped, due now, held, scheduled, waiting, paused, failed, unknown
    assert part1[0] == "1" and part1[-10:-1] == ["5", "0", "0", "0", "0", "0", "0", "0", "0"]
    part2 = lines[4]
    assert header[-3:] == ["NEXT", "DUE", "(Europe/Stockholm)"]  # the workspace's zone
    assert "2026-12-04 11:00" in part2  # next due: 4 days after part 1 (10:00 UTC)
    assert lines[-1] == (
        "enrollments: 5 active, 0 completed, 0 paused, 1 unsubscribed, 0 bounced or complained"
    )


def test_unknown_provider_is_one_line(enrolled: Path) -> None:
    """An unknown --provider names the valid ones and exits 1."""
    code, _, err = send(enrolled, MONDAY, "--provider", "carrier-pigeon")
    assert (code, err) == (
        1,
        "Error: unknown provider 'carrier-pigeon' "
        "(one of: mailgun, outbox, postmark, resend, sendgrid)\n",
    )


def test_timezone_change_replans(enrolled: Path) -> None:
    """Changing a subscriber's timezone makes the next run plan them again in that zone."""
    config = enrolled / "pyproject.toml"
    config.write_text(
        config.read_text()
        + '\n[tool.series.send_window]\ndays = ["mon", "tue", "wed", "thu", "fri"]\n'
        'start = "09:00"\nend = "10:00"\n',
        encoding="utf-8",
    )
    monday_8utc = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)  # 09:00 in Stockholm
    send(enrolled, monday_8utc)
    assert "asa.berg@example.com" in received(enrolled)
    assert "marcus.reyes@example.com" not in received(enrolled)  # 00:00 in Los Angeles
    run(enrolled, "subscribers", "add", "marcus.reyes@example.com", "--timezone", "Europe/Paris")
    assert send(enrolled, monday_8utc)[1].startswith("sent 1,")  # 09:00 in Paris


def test_two_runs_at_once_send_each_part_once(
    enrolled: Path, database_url: str, tmp_path: Path
) -> None:
    """Two `series send` processes started together deliver every due part exactly once."""
    env = {**os.environ, "SERIES_DATABASE_URL": database_url, "SERIES_WORKSPACE": str(enrolled)}
    subprocess.run(
        import_command("subscribers/example.csv"),
        env=env,
        check=True,
        capture_output=True,
    )
    more = tmp_path / "more.csv"
    more.write_text(
        "email,series\n" + "".join(f"reader{i}@example.com,attachment\n" for i in range(300)),
        encoding="utf-8",
    )
    subprocess.run(
        import_command(str(more)),
        env=env,
        check=True,
        capture_output=True,
    )
    command = [sys.executable, "-m", "pipeline", "send", "--now", MONDAY.isoformat()]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    outputs = [first.communicate(timeout=300)[0], second.communicate(timeout=300)[0]]
    assert first.returncode == 0 and second.returncode == 0, outputs
    sent = [int(out.split(",")[0].split()[1]) for out in outputs]
    assert sum(sent) == 306
    keys = Counter(path.stem.rsplit("-", 1)[-1] for path in (enrolled / "outbox").glob("*.eml"))
    assert len(keys) == 306 and max(keys.values()) == 1
    addresses = Counter(
        path.name.split("-", 2)[2].rsplit("-", 1)[0] for path in (enrolled / "outbox").glob("*.eml")
    )
    assert len(addresses) == 306 and max(addresses.values()) == 1


def test_example_main_job_works_from_the_repository(tmp_path: Path) -> None:
    """The README's main job runs on a copy of the repository's example workspace."""
    root = tmp_path / "repo"
    shutil.copytree(
        ROOT,
        root,
        ignore=shutil.ignore_patterns(".git", ".venv", "outbox", "build", "*.db*", ".series-cache"),
    )
    assert run(root, "subscribers", "import", "subscribers/example.csv")[0] == 0
    code, out, _ = run(root, "send")
    assert code == 0 and out.startswith("sent 6,")
    assert len(list((root / "outbox").glob("*.eml"))) == 6


def test_dry_run_before_any_state_creates_nothing(example_copy: Path) -> None:
    """A dry run in a workspace with no state yet says so and creates no database file."""
    code, out, err = run(example_copy, "send", "--dry-run")
    assert (code, out) == (0, "")
    assert err == "dry run: no subscribers yet (nothing to plan); nothing was written\n"
    assert not (example_copy / "subscribers" / "state.db").exists()


def test_readers_held_back_by_limit_are_not_forgotten(enrolled: Path) -> None:
    """After a part is published, a run cut short by --limit leaves the rest due: the next
    runs send to them (the full re-plan's bookmarks include the due ones)."""
    day = MONDAY
    for _ in range(14):
        send(enrolled, day)
        day += timedelta(days=1)
    draft = enrolled / "series/attachment/04-avoidant.md"
    draft.write_text(
        draft.read_text().replace("draft: true", "published: 2026-12-01"), encoding="utf-8"
    )
    assert send(enrolled, day, "--limit", "1")[1].startswith("sent 1,")
    assert send(enrolled, day + timedelta(hours=1))[1].startswith("sent 5,")
    assert all(parts[-1] == 4 for parts in received(enrolled).values())


def test_template_error_in_a_later_starting_readers_email_stops_everything(
    enrolled: Path,
) -> None:
    """A template error that shows only for readers who started at part 2 still stops the
    run before anyone's email goes out."""
    template = enrolled / "templates" / "partials" / "continue.mjml.j2"
    template.parent.mkdir(parents=True, exist_ok=True)
    template.write_text(
        '{% if continue.toc[0].state == "available" %}{{ missing_variable }}{% endif %}\n'
        + (BUILTIN_DIR / "partials" / "continue.mjml.j2").read_text(),
        encoding="utf-8",
    )
    code, _, err = send(enrolled, MONDAY)
    assert code == 1
    assert "missing_variable" in err
    assert not (enrolled / "outbox").exists()


def _broken_unsubscribe_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the configuration carry an unsubscribe URL no header can hold, as a value
    `series check` does not catch would."""
    import dataclasses

    import pipeline.cli

    real = pipeline.cli.load_config

    def load(root: Path) -> object:
        config = real(root)
        return dataclasses.replace(config, unsubscribe_url=config.unsubscribe_url + "\r\n")

    monkeypatch.setattr(pipeline.cli, "load_config", load)


def test_a_problem_of_every_reader_stops_the_run_and_marks_nobody(
    enrolled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message no reader's can be built from stops the run; fixed, everyone goes on."""
    with monkeypatch.context() as patch:
        _broken_unsubscribe_url(patch)
        for hours in (0, 1, 2, 4, 8, 16, 32, 48):
            code, out, err = send(enrolled, MONDAY + timedelta(hours=hours))
            assert code == 1, out + err
        assert err == (
            "Error: attachment/1 (attachment-theory) cannot be sent to anyone: the "
            "List-Unsubscribe header cannot be written: it contains a line break (U+000D); "
            "nothing was sent (fix it, then run again)\n"
        )
    assert received(enrolled) == {}

    code, out, err = send(enrolled, MONDAY + timedelta(days=3))
    assert out.startswith("sent 6,"), out + err
