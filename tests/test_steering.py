"""Editors steer readers: pause and resume, move, a paused series, `subscribers show`.

Everything runs through the real CLI on the example workspace (parts 4 and 5
published for these tests), sending through the outbox, on a temporary SQLite file
and on a real PostgreSQL server. What a reader got is read from the .eml files in
outbox/, which is what the world receives.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline.store import open_store
from pipeline.store.schema import deliveries, enrollments, status_changes, subscribers

from .helpers import ENROLLED_AT, run

ANN = "ann@example.com"
BEA = "bea@example.com"
MONDAY = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)  # parts: 1 now, 2 after 4 days, 3 after 5
WINDOW = "send_window:\n  days: [mon, tue, wed, thu, fri]\n  start: '09:00'\n  end: '17:00'\n"


class Workspace:
    """The example workspace on one database, driven through the CLI."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.env = {"SERIES_DATABASE_URL": url}
        self.url = url

    def run(self, *args: str) -> tuple[int, str, str]:
        return run(self.root, *args, env=self.env)

    def ok(self, *args: str) -> str:
        code, out, err = self.run(*args)
        assert code == 0, out + err
        return out

    def send(self, when: datetime) -> str:
        return self.ok("send", "--now", when.isoformat())

    def add(self, email: str, timezone: str = "Europe/Stockholm", at: str = ENROLLED_AT) -> None:
        self.ok(
            "subscribers",
            "add",
            email,
            "--series",
            "attachment",
            "--timezone",
            timezone,
            "--now",
            at,
        )

    def parts_received(self, email: str) -> list[int]:
        """The part numbers of the .eml files in outbox/ addressed to EMAIL, by time."""
        found = sorted(
            (p.stat().st_mtime_ns, int(m.group(1)))
            for p in (self.root / "outbox").glob(f"attachment-part*-{email}-*.eml")
            if (m := re.match(r"attachment-part(\d+)-", p.name))
        )
        return [part for _, part in found]

    def states(self, email: str) -> dict[str, str]:
        with open_store(self.root, self.url) as store, store.connect() as conn:
            return dict(
                conn.execute(
                    sa.select(deliveries.c.article, deliveries.c.state)
                    .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
                    .where(subscribers.c.email == email)
                ).all()
            )

    def series_yml(self, extra: str) -> None:
        path = self.root / "series" / "attachment" / "series.yml"
        path.write_text(path.read_text(encoding="utf-8") + extra, encoding="utf-8")


@pytest.fixture
def ws(example_copy: Path, database_url: str) -> Workspace:
    """The example with all five parts published before the tests' dates."""
    folder = example_copy / "series" / "attachment"
    avoidant = folder / "04-avoidant.md"
    avoidant.write_text(
        avoidant.read_text().replace("draft: true", "published: 2026-10-20"), encoding="utf-8"
    )
    last = folder / "05-disorganized.md"
    last.write_text(last.read_text().replace("2027-03-15", "2026-11-01"), encoding="utf-8")
    return Workspace(example_copy, database_url)


def test_pause_across_a_send_window_then_resume_after_it_closed(ws: Workspace) -> None:
    """A reader paused over the day their part came due gets nothing that day; resumed
    after the window closed, the part is held until the window opens, then one part,
    then the normal delay from that email."""
    ws.series_yml(WINDOW)
    ws.add(ANN)
    ws.add(BEA)
    ws.send(MONDAY)
    assert ws.ok("subscribers", "pause", ANN, "--series", "attachment") == (
        f"paused {ANN} in attachment: nothing is sent until resumed\n"
    )
    friday = MONDAY + timedelta(days=4)  # part 2 is due for both at 10:00 UTC
    ws.send(friday)
    assert ws.parts_received(BEA) == [1, 2]
    assert ws.parts_received(ANN) == [1]
    evening = friday.replace(hour=17)  # 18:00 in Stockholm: the window has closed
    assert ws.ok("subscribers", "resume", ANN, "--now", evening.isoformat()) == (
        f"resumed {ANN} in attachment\n"
    )
    plan = ws.ok("send", "--dry-run", "--now", evening.isoformat())
    assert re.search(rf"{ANN}\s+attachment\s+2 .*held until Mon 09:00 \(send window\)", plan)
    ws.send(evening)
    ws.send(evening + timedelta(days=1))  # Saturday: outside the window too
    assert ws.parts_received(ANN) == [1]
    monday = datetime(2026, 12, 7, 8, 5, tzinfo=UTC)  # 09:05 in Stockholm
    ws.send(monday)
    ws.send(monday + timedelta(minutes=30))
    assert ws.parts_received(ANN) == [1, 2]  # one part per run, and no burst
    # Part 3 (delay 5 days) counts from that email: Saturday the 12th, so Monday 09:00.
    ws.send(datetime(2026, 12, 11, 15, 0, tzinfo=UTC))
    assert ws.parts_received(ANN) == [1, 2]
    ws.send(datetime(2026, 12, 14, 8, 0, tzinfo=UTC))
    assert ws.parts_received(ANN) == [1, 2, 3]


def test_resume_after_weeks_sends_one_part_then_normal_delays(ws: Workspace) -> None:
    """Paused for seven weeks with three parts missed: on resume the next part is due at
    once, the run after that sends nothing, and the following part waits its delay."""
    ws.add(ANN)
    ws.send(MONDAY)
    ws.ok("subscribers", "pause", ANN, "--now", (MONDAY + timedelta(hours=1)).isoformat())
    for week in range(1, 8):
        ws.send(MONDAY + timedelta(weeks=week))
    assert ws.parts_received(ANN) == [1]
    back = datetime(2027, 1, 20, 10, 0, tzinfo=UTC)
    ws.ok("subscribers", "resume", ANN, "--series", "attachment", "--now", back.isoformat())
    ws.send(back)
    ws.send(back + timedelta(hours=1))
    ws.send(back + timedelta(days=4, hours=23))
    assert ws.parts_received(ANN) == [1, 2]
    ws.send(back + timedelta(days=5))
    assert ws.parts_received(ANN) == [1, 2, 3]
    again = ws.run("subscribers", "resume", ANN)
    assert again == (0, f"{ANN} was not paused in attachment\n", "")
    with open_store(ws.root, ws.url) as store, store.connect() as conn:
        audit = conn.execute(
            sa.select(status_changes.c.new_status, status_changes.c.series, status_changes.c.actor)
            .where(status_changes.c.new_status.in_(("paused", "resumed")))
            .order_by(status_changes.c.id)
        ).all()
    assert [tuple(a) for a in audit] == [
        ("paused", "attachment", "cli"),
        ("resumed", "attachment", "cli"),
    ]


def test_pause_errors_are_one_line(ws: Workspace) -> None:
    """An unknown address, series or enrollment is one error line and exit 1."""
    ws.add(ANN)
    assert ws.run("subscribers", "pause", "nobody@example.com") == (
        1,
        "",
        "Error: no subscriber nobody@example.com\n",
    )
    code, _, err = ws.run("subscribers", "pause", ANN, "--series", "knitting")
    assert (code, err) == (
        1,
        "Error: unknown series 'knitting' (series in this workspace: attachment)\n",
    )
    ws.ok("subscribers", "add", BEA)
    assert ws.run("subscribers", "resume", BEA) == (
        1,
        "",
        f"Error: {BEA} is enrolled in no series\n",
    )


def test_move_ahead_skips_parts_and_status_counts_them_apart(ws: Workspace) -> None:
    """Moved from part 1 to part 4: part 4 is due at once, parts 2 and 3 are skipped
    (never sent, counted in SKIPPED, not in SENT), and the reader goes on with part 5."""
    ws.add(ANN)
    ws.add(BEA)
    ws.send(MONDAY)
    moved_at = MONDAY + timedelta(hours=2)
    out = ws.ok(
        "subscribers", "move", ANN, "--series", "attachment", "--to-part", "4",
        "--now", moved_at.isoformat(),
    )  # fmt: skip
    assert out == f"moved {ANN} in attachment to part 4; skipped (not sent): part 2, 3\n"
    ws.send(moved_at)
    assert ws.parts_received(ANN) == [1, 4]
    for day in range(1, 30):
        ws.send(moved_at + timedelta(days=day))
    assert ws.parts_received(ANN) == [1, 4, 5]
    assert ws.states(ANN) == {
        "attachment-theory": "sent",
        "secure": "skipped",
        "anxious": "skipped",
        "avoidant": "sent",
        "disorganized": "sent",
    }
    when = (moved_at + timedelta(days=30)).isoformat()
    (status,) = json.loads(ws.ok("status", "--now", when, "--format", "json"))
    parts = {p["article"]: (p["sent"], p["skipped"]) for p in status["parts"]}
    assert parts["secure"] == (1, 1)  # Bea's, Ann's
    assert parts["avoidant"] == (2, 0)
    check = ws.ok("check", "--now", when)
    assert "warning" not in check  # skipped parts are not parts the reader misses
    table = ws.ok("status", "--now", when).splitlines()
    assert table[1].split()[4:6] == ["SENT", "SKIPPED"]
    assert table[4].split()[-10:-8] == ["1", "1"]  # part 2: sent, skipped


def test_move_back_never_resends_without_resend(ws: Workspace) -> None:
    """Moved back, a reader gets only the parts from there that they lack (here the ones
    an earlier move skipped), never one they have; --resend sends those again."""
    ws.add(ANN)
    ws.send(MONDAY)
    ws.ok("subscribers", "move", ANN, "--series", "attachment", "--to-part", "4",
          "--now", MONDAY.isoformat())  # fmt: skip
    ws.send(MONDAY + timedelta(hours=1))
    assert ws.parts_received(ANN) == [1, 4]
    back = MONDAY + timedelta(days=1)
    out = ws.ok("subscribers", "move", ANN, "--series", "attachment", "--next", "secure",
                "--now", back.isoformat())  # fmt: skip
    assert out == f"moved {ANN} in attachment to part 2\n"
    for hours in range(0, 24 * 30, 12):
        ws.send(back + timedelta(hours=hours))
    assert ws.parts_received(ANN) == [1, 4, 2, 3, 5]  # part 4 is not sent again
    # Back to part 1, which they have: nothing to send, and the command says so.
    later = back + timedelta(days=31)
    out = ws.ok("subscribers", "move", ANN, "--series", "attachment", "--to-part", "1",
                "--now", later.isoformat())  # fmt: skip
    assert out == (
        f"moved {ANN} in attachment to part 1; they already have every part from 1 on, so "
        "nothing more is sent (--resend sends them again)\n"
    )
    ws.send(later + timedelta(hours=1))
    assert ws.parts_received(ANN) == [1, 4, 2, 3, 5]
    out = ws.ok("subscribers", "move", ANN, "--series", "attachment", "--to-part", "4",
                "--resend", "--now", later.isoformat())  # fmt: skip
    assert out == f"moved {ANN} in attachment to part 4; to be sent again: part 4, 5\n"
    ws.send(later + timedelta(hours=2))
    ws.send(later + timedelta(hours=3))
    assert ws.parts_received(ANN) == [1, 4, 2, 3, 5, 4]
    ws.send(later + timedelta(days=8))
    assert ws.parts_received(ANN) == [1, 4, 2, 3, 5, 4, 5]
    show = ws.ok("subscribers", "show", ANN)
    assert "to send again (earlier deliveries: part 4 'avoidant' sent 2026-11-30" in show


def test_move_refuses_unknown_parts_and_open_deliveries(ws: Workspace) -> None:
    """A part or slug the series lacks, or neither/both options, is one line; a reader
    with a delivery of unknown outcome is not moved until it is settled."""
    ws.add(ANN)
    code, _, err = ws.run("subscribers", "move", ANN, "--series", "attachment", "--to-part", "9")
    assert (code, err) == (1, "Error: series 'attachment' has no part 9 (parts: 1, 2, 3, 4, 5)\n")
    code, _, err = ws.run("subscribers", "move", ANN, "--series", "attachment", "--next", "nope")
    assert code == 1 and err.startswith("Error: series 'attachment' has no article 'nope'")
    code, _, err = ws.run("subscribers", "move", ANN, "--series", "attachment")
    assert (code, err) == (1, "Error: give either --to-part K or --next ARTICLE-SLUG\n")
    ws.send(MONDAY)
    with open_store(ws.root, ws.url) as store, store.begin() as conn:
        conn.execute(deliveries.update().values(state="unknown"))
    code, _, err = ws.run("subscribers", "move", ANN, "--series", "attachment", "--to-part", "3")
    assert code == 1
    assert err.startswith(f"Error: {ANN}: part 1 of attachment is being sent or its outcome")
    assert ws.states(ANN) == {"attachment-theory": "unknown"}


def test_paused_series_holds_everyone_and_resumes_one_part_per_run(ws: Workspace) -> None:
    """`paused: true` in series.yml: dry run and status say "series paused", a send sends
    nothing; removed weeks later, each reader gets one part per run, then the delays."""
    ws.add(ANN)
    ws.add(BEA)
    ws.send(MONDAY)
    yml = ws.root / "series" / "attachment" / "series.yml"
    original = yml.read_text(encoding="utf-8")
    ws.series_yml("paused: true\n")
    friday = MONDAY + timedelta(days=4)
    code, out, err = ws.run("send", "--dry-run", "--now", friday.isoformat())
    assert code == 0
    assert "series/attachment/series.yml: series paused (paused: true)" in err
    assert re.search(rf"{ANN}\s+attachment\s+2\s+Secure attachment\s+-\s+series paused", out)
    assert err.splitlines()[-1] == (
        "dry run: would send 0 email(s) now; 0 waiting or scheduled; 2 held by a paused "
        "series; nothing was sent or written"
    )
    code, out, err = ws.run("send", "--now", friday.isoformat())
    assert (code, out) == (0, "sent 0, failed 0, retried 0, unknown 0, skipped 0\n")
    assert "series paused" in err
    status = ws.ok("status", "--now", friday.isoformat())
    assert status.splitlines()[0] == (
        "Attachment Styles (attachment), 5 part(s); series paused (paused: true in "
        "series/attachment/series.yml)"
    )
    (data,) = json.loads(ws.ok("status", "--now", friday.isoformat(), "--format", "json"))
    assert data["paused"] is True
    assert [p["paused"] for p in data["parts"]] == [0, 2, 0, 0, 0]
    assert [p["due_now"] for p in data["parts"]] == [0, 0, 0, 0, 0]
    for day in range(1, 40):
        ws.send(friday + timedelta(days=day))
    assert ws.parts_received(ANN) == [1]
    yml.write_text(original, encoding="utf-8")
    back = friday + timedelta(days=40)
    ws.send(back)
    ws.send(back + timedelta(hours=1))
    assert ws.parts_received(ANN) == [1, 2] and ws.parts_received(BEA) == [1, 2]
    ws.send(back + timedelta(days=5))
    assert ws.parts_received(ANN) == [1, 2, 3]


def test_show_tells_one_readers_story(ws: Workspace) -> None:
    """show: status, the enrollment with what comes next, each delivery (article, part
    then and now, state, provider id) and the audit, oldest first."""
    ws.add(ANN)
    ws.send(MONDAY)
    ws.ok("subscribers", "move", ANN, "--series", "attachment", "--to-part", "3",
          "--now", (MONDAY + timedelta(hours=1)).isoformat())  # fmt: skip
    ws.ok("subscribers", "pause", ANN, "--now", (MONDAY + timedelta(hours=2)).isoformat())
    out = ws.ok("subscribers", "show", ANN.upper(), "--now", MONDAY.isoformat())
    lines = out.splitlines()
    assert lines[:3] == [ANN, "name: -", "status: active"]
    enrollment = next(line for line in lines if line.startswith("attachment  2026-11-28"))
    assert "paused" in enrollment and "moved to part 3 on 2026-11-30 12:00" in enrollment
    delivered = [line.split() for line in lines if line.startswith("attachment  ")][1:]
    (eml,) = (ws.root / "outbox").glob(f"attachment-part1-{ANN}-*.eml")
    first = ["attachment", "attachment-theory", "1", "1", "sent", "2026-11-30", "11:00"]
    assert [*first, eml.name, "-"] in delivered
    assert delivered[1][:5] == ["attachment", "secure", "2", "2", "skipped"]
    changes = [line.split()[2:4] for line in lines[lines.index("status changes:") + 3 :]]
    assert changes == [["(all)", "active"], ["attachment", "moved"], ["attachment", "paused"]]
    assert ws.run("subscribers", "show", "nobody@example.com")[2] == (
        "Error: no subscriber nobody@example.com\n"
    )


def test_migration_0008_keeps_the_ledger_and_allows_skipped(ws: Workspace) -> None:
    """After the upgrade the ledger still refuses an unknown state, takes `skipped`, and
    enrollments start unmoved."""
    ws.add(ANN)
    ws.send(MONDAY)
    with open_store(ws.root, ws.url) as store:
        with store.connect() as conn:
            assert conn.execute(sa.select(enrollments.c.moved_to)).scalars().all() == [None]
        with pytest.raises(sa.exc.IntegrityError), store.begin() as conn:
            conn.execute(deliveries.update().values(state="bogus"))
        with store.begin() as conn:
            conn.execute(deliveries.update().values(state="skipped"))
    assert Counter(ws.states(ANN).values()) == {"skipped": 1}
