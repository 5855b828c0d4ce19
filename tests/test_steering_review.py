"""What a review of pause, resume, move and show found, each kept as a test.

Through the real CLI (click's runner: the bytes a terminal would get) on the example
workspace, on a temporary SQLite file and on a real PostgreSQL server.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline import output
from pipeline.store import open_store
from pipeline.store.schema import metadata, status_changes, subscribers

from .fake_postmark import FakePostmark
from .helpers import configure
from .test_steering import ANN, BEA, MONDAY, Workspace

CAT = "cat@example.com"
# What a terminal acts on (redact._TERMINAL_CONTROL), line feeds aside: they end lines.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
HOSTILE = "Ann\u202eevil\x1b]0;owned\x07\x1b[31m"


@pytest.fixture
def ws(example_copy: Path, database_url: str) -> Workspace:
    """The example with all five parts published before the tests' dates (as in
    test_steering)."""
    folder = example_copy / "series" / "attachment"
    avoidant = folder / "04-avoidant.md"
    avoidant.write_text(
        avoidant.read_text().replace("draft: true", "published: 2026-10-20"), encoding="utf-8"
    )
    last = folder / "05-disorganized.md"
    last.write_text(last.read_text().replace("2027-03-15", "2026-11-01"), encoding="utf-8")
    return Workspace(example_copy, database_url)


def _store_values(ws: Workspace, email: str, **values: str) -> None:
    """Write hostile values straight into a subscriber row (data from an older version
    or another tool need not have been cleaned)."""
    with open_store(ws.root, ws.url) as store, store.begin() as conn:
        conn.execute(subscribers.update().where(subscribers.c.email == email).values(**values))


def _audit(ws: Workspace) -> list[tuple[str | None, str | None]]:
    with open_store(ws.root, ws.url) as store, store.connect() as conn:
        return [
            (r.new_status, r.reason)
            for r in conn.execute(sa.select(status_changes).order_by(status_changes.c.id))
        ]


def _enrollment_line(out: str) -> str:
    lines = out.splitlines()
    return lines[lines.index("enrollments:") + 3]


def test_show_status_import_and_errors_print_no_control_character(ws: Workspace) -> None:
    """show's lines, the status heading, import problem lines and error lines show a
    stored name's, source's or title's control characters as escapes: no raw ESC, BEL,
    bidi override, and no line break that would fake a line of its own."""
    ws.add(ANN)
    _store_values(
        ws,
        ANN,
        name=f"{HOSTILE}\nstatus: complained",
        source="import:list\x1b[2J\r\n.csv",
        timezone="Europe/Stockholm\x1b[8m",
    )
    ws.send(MONDAY)
    code, out, err = ws.run("subscribers", "show", ANN)
    assert code == 0, err
    assert not RAW_CONTROL.search(out), out
    assert [line for line in out.splitlines() if line.startswith("status:")] == ["status: active"]
    assert "name: Ann\\u202eevil\\x1b]0;owned\\x07\\x1b[31m\\nstatus: complained" in out
    assert "source import:list\\x1b[2J\\r\\n.csv" in out
    # The series title in `status`'s heading: content refuses C0 controls in a title,
    # not a bidi override, which reverses how the rest of the line reads.
    yml = ws.root / "series" / "attachment" / "series.yml"
    title = 'title: "Attachment \\u202estyles"'
    text = re.sub(r"(?m)^title:.*$", lambda _: title, yml.read_text(encoding="utf-8"))
    yml.write_text(text, encoding="utf-8")
    code, out, err = ws.run("status", "--now", MONDAY.isoformat())
    assert code == 0, out + err
    assert not RAW_CONTROL.search(out + err)
    assert out.splitlines()[0].startswith("Attachment \\u202estyles (attachment)")
    # A CSV row's problem quoting its cell.
    csv = ws.root / "subscribers" / "hostile.csv"
    csv.write_text("email,name,timezone\nbea@example.com,Bea,Europe/\x1b[31mNowhere\x07\n")
    code, out, err = ws.run("subscribers", "import", str(csv), "--now", MONDAY.isoformat())
    assert code == 1
    assert "\\x1b[31mNowhere\\x07" in err and not RAW_CONTROL.search(out + err)
    # An error line naming what the editor typed.
    code, out, err = ws.run("subscribers", "pause", "evil\x1b]0;t\x07\u202e@example.com")
    assert code == 1 and err.startswith("Error: ") and not RAW_CONTROL.search(err), err


def _eml(ws: Workspace, part: int) -> list[str]:
    return sorted(p.name for p in (ws.root / "outbox").glob(f"attachment-part{part}-{ANN}-*.eml"))


def test_move_resend_audit_keeps_provider_ids_in_part_order_until_erased(ws: Workspace) -> None:
    """--resend lists the parts to send again by part, its audit entry keeps each
    earlier delivery's provider id (an outbox file named after the reader) with times
    in the workspace's timezone; after `remove` the address is in no row at all."""
    ws.add(ANN)
    ws.send(MONDAY)  # part 1
    ws.ok("subscribers", "move", ANN, "--series", "attachment", "--to-part", "3",
          "--now", (MONDAY + timedelta(hours=1)).isoformat())  # fmt: skip
    ws.send(MONDAY + timedelta(hours=2))  # part 3
    ws.ok("subscribers", "move", ANN, "--series", "attachment", "--to-part", "2",
          "--now", (MONDAY + timedelta(days=1)).isoformat())  # fmt: skip
    ws.send(MONDAY + timedelta(days=1, hours=1))  # part 2 (the ledger now holds 1, 3, 2)
    assert ws.parts_received(ANN) == [1, 3, 2]
    later = MONDAY + timedelta(days=2)
    out = ws.ok("subscribers", "move", ANN, "--series", "attachment", "--to-part", "1",
                "--resend", "--now", later.isoformat())  # fmt: skip
    assert out == f"moved {ANN} in attachment to part 1; to be sent again: part 1, 2, 3\n"
    (reason,) = [r for s, r in _audit(ws) if s == "moved" and r and "send again" in r]
    ids = [_eml(ws, part)[0] for part in (1, 2, 3)]
    assert reason == (
        "to part 1 'attachment-theory'; to send again (earlier deliveries: "
        f"part 1 'attachment-theory' sent 2026-11-30T11:00+01:00, provider id {ids[0]}; "
        f"part 2 'secure' sent 2026-12-01T12:00+01:00, provider id {ids[1]}; "
        f"part 3 'anxious' sent 2026-11-30T13:00+01:00, provider id {ids[2]})"
    )
    show = ws.ok("subscribers", "show", ANN)
    assert ids[2] in show
    # The texts series did not write stay scrubbed: a bounce reason naming someone.
    ws.add(BEA)
    with open_store(ws.root, ws.url) as store, store.begin() as conn:
        from pipeline.store.ledger import mark_subscriber

        bea = conn.execute(sa.select(subscribers.c.id).where(subscribers.c.email == BEA)).scalar()
        mark_subscriber(conn, bea, "bounced", actor="provider:postmark",
                        reason=f"{ANN} and {BEA}: mailbox full", now=later)  # fmt: skip
    assert ("bounced", "[address] and [address]: mailbox full") in _audit(ws)
    ws.ok("subscribers", "remove", ANN)
    with open_store(ws.root, ws.url) as store, store.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(sa.select(table)):
                assert ANN not in str(tuple(row)).lower(), (table.name, row)
    if ws.url.startswith("sqlite"):
        db = Path(ws.url.removeprefix("sqlite:///"))
        for path in (db, db.with_name(db.name + "-wal")):
            if path.exists():
                assert ANN.encode() not in path.read_bytes(), path


def test_show_gives_no_due_time_to_readers_who_get_nothing(ws: Workspace) -> None:
    """show's NEXT says "paused: nothing is sent until resumed", "unsubscribed: nothing
    is sent", "series paused", "completed" instead of a due time, as the dry run does."""
    for email in (ANN, BEA, CAT):
        ws.add(email)
    ws.send(MONDAY)
    ws.ok("subscribers", "pause", ANN, "--now", MONDAY.isoformat())
    ws.ok("subscribers", "unsubscribe", BEA, "--series", "attachment",
          "--now", MONDAY.isoformat())  # fmt: skip
    ws.ok("subscribers", "unsubscribe", CAT, "--now", MONDAY.isoformat())
    later = (MONDAY + timedelta(days=10)).isoformat()
    expected = {
        ANN: ("paused", "paused: nothing is sent until resumed"),
        BEA: ("unsubscribed", "unsubscribed: nothing is sent"),
        CAT: ("unsubscribed", "unsubscribed: nothing is sent"),
    }
    for email, (state, next_text) in expected.items():
        line = _enrollment_line(ws.ok("subscribers", "show", email, "--now", later))
        assert f"  {state}  {next_text}  " in line, line
        assert "due" not in line and "held" not in line, line
    ws.ok("subscribers", "resume", ANN, "--now", MONDAY.isoformat())
    ws.series_yml("paused: true\n")
    line = _enrollment_line(ws.ok("subscribers", "show", ANN, "--now", later))
    assert "series paused  part 2: series paused: nothing is sent until paused: true" in line
    dry = ws.ok("send", "--dry-run", "--now", later)
    assert "series paused" in dry


def test_pause_is_refused_where_nothing_is_sent(ws: Workspace) -> None:
    """Pausing someone unsubscribed (from everything or from that series) is refused,
    with no audit entry; among other series their unsubscribed one is left alone;
    resuming a reader who was never paused says so."""
    ws.add(ANN)
    ws.add(BEA)
    ws.ok("subscribers", "unsubscribe", ANN, "--now", MONDAY.isoformat())
    ws.ok("subscribers", "unsubscribe", BEA, "--series", "attachment",
          "--now", MONDAY.isoformat())  # fmt: skip
    before = _audit(ws)
    assert ws.run("subscribers", "pause", ANN) == (
        1, "", f"Error: {ANN} is unsubscribed: nothing is sent to them, so there is nothing "
        "to pause\n",
    )  # fmt: skip
    for args in ((), ("--series", "attachment")):
        assert ws.run("subscribers", "pause", BEA, *args) == (
            1, "", f"Error: {BEA} is unsubscribed from attachment: nothing is sent to them, "
            "so there is nothing to pause\n",
        )  # fmt: skip
    assert _audit(ws) == before
    ws.add(CAT)
    assert ws.ok("subscribers", "resume", CAT) == f"{CAT} was not paused in attachment\n"


def test_unsubscribe_now_is_the_audit_time(ws: Workspace) -> None:
    """`subscribers unsubscribe --now` records the change at that time, as pause does."""
    ws.add(ANN)
    ws.ok("subscribers", "unsubscribe", ANN, "--now", "2026-12-24T18:30")
    show = ws.ok("subscribers", "show", ANN)
    assert re.search(r"(?m)^2026-12-24 18:30 +\(all\) +active -> unsubscribed +cli ", show)


def test_move_to_an_unpublished_or_draft_part_says_they_wait(ws: Workspace) -> None:
    """Moved to a part not yet out, the reader waits there: the command says so, in
    the dry run's words, and nothing goes out before it is published."""
    ws.add(ANN)
    ws.send(MONDAY)
    folder = ws.root / "series" / "attachment"
    last = folder / "05-disorganized.md"
    last.write_text(last.read_text().replace("2026-11-01", "2027-03-15"), encoding="utf-8")
    out = ws.ok("subscribers", "move", ANN, "--series", "attachment", "--to-part", "5",
                "--now", MONDAY.isoformat())  # fmt: skip
    assert out == (
        f"moved {ANN} in attachment to part 5; skipped (not sent): part 2, 3, 4; waiting: "
        "part 5 not published until 2027-03-15: they wait until it is published\n"
    )
    ws.send(MONDAY + timedelta(hours=1))
    assert ws.parts_received(ANN) == [1]
    avoidant = folder / "04-avoidant.md"
    avoidant.write_text(
        avoidant.read_text().replace("published: 2026-10-20", "draft: true"), encoding="utf-8"
    )
    out = ws.ok("subscribers", "move", ANN, "--series", "attachment", "--to-part", "4",
                "--now", MONDAY.isoformat())  # fmt: skip
    assert out.endswith("waiting: part 4 is a draft: they wait until it is published\n"), out


def test_moving_a_reader_who_completed_the_series(ws: Workspace) -> None:
    """A reader who has every part, moved back: nothing more is sent without --resend;
    with it, the parts from there go out again in order, one per run."""
    ws.add(ANN)
    for day in range(0, 40, 1):
        ws.send(MONDAY + timedelta(days=day))
    assert ws.parts_received(ANN) == [1, 2, 3, 4, 5]
    later = MONDAY + timedelta(days=41)
    assert "completed: every part sent" in _enrollment_line(
        ws.ok("subscribers", "show", ANN, "--now", later.isoformat())
    )
    out = ws.ok("subscribers", "move", ANN, "--series", "attachment", "--to-part", "4",
                "--now", later.isoformat())  # fmt: skip
    assert "they already have every part from 4 on, so nothing more is sent" in out
    out = ws.ok("subscribers", "move", ANN, "--series", "attachment", "--to-part", "4",
                "--resend", "--now", later.isoformat())  # fmt: skip
    assert out.endswith("to be sent again: part 4, 5\n")
    for day in range(0, 20):
        ws.send(later + timedelta(days=day, hours=1))
    assert ws.parts_received(ANN) == [1, 2, 3, 4, 5, 4, 5]


def test_a_shared_send_time_names_the_later_part_as_previous(ws: Workspace) -> None:
    """Two deliveries sent at the same moment: the "why" names the later part, and
    show lists them by time, then part."""
    ws.add(ANN)
    ws.send(MONDAY)
    ws.ok("subscribers", "move", ANN, "--series", "attachment", "--to-part", "2",
          "--now", MONDAY.isoformat())  # fmt: skip
    ws.send(MONDAY + timedelta(hours=1))
    from pipeline.store.schema import deliveries

    with open_store(ws.root, ws.url) as store, store.begin() as conn:
        conn.execute(deliveries.update().values(sent_at=MONDAY))
    out = ws.ok("send", "--dry-run", "--now", (MONDAY + timedelta(days=20)).isoformat())
    (line,) = [line for line in out.splitlines() if line.startswith(ANN)]
    assert "after part 2" in line, line
    show = ws.ok("subscribers", "show", ANN).splitlines()
    rows = [line.split()[1] for line in show[show.index("deliveries:") + 3 :] if line.strip()]
    assert rows[:2] == ["attachment-theory", "secure"]


def test_tables_align_wide_characters_by_display_width() -> None:
    """A CJK title takes two columns per character: the next column still lines up."""
    table = output.format_table(("TITLE", "STATE"), [("愛着理論", "sent"), ("Secure", "sent")])
    header, _, first, second = table.splitlines()
    assert output.display_width(first[: first.index("sent")]) == second.index("sent")
    assert header.index("STATE") == second.index("sent")


@pytest.mark.parametrize("text,width", [("abc", 3), ("愛着", 4), ("e\u0301", 1)])
def test_display_width(text: str, width: int) -> None:
    """Wide characters count two, combining marks none."""
    assert output.display_width(text) == width


def test_a_bounce_at_send_time_counts_at_the_last_part_received(
    ws: Workspace, postmark: FakePostmark
) -> None:
    """A reader Postmark refuses as inactive while sending part 3 (no sync first) is
    marked bounced and counted against part 2, the last part they received; the audit
    keeps Postmark's words without the address in them."""
    configure(ws.root, 'provider = "postmark"')
    ws.add(ANN)
    ws.add(BEA)
    ws.send(MONDAY)
    ws.send(MONDAY + timedelta(days=4))
    postmark.inactive.add(BEA)
    code, out, err = ws.run(
        "send", "--skip-sync", "--now", (MONDAY + timedelta(days=9)).isoformat()
    )
    assert code == 1 and out.startswith("sent 1, failed 1"), out + err  # a reader failed
    (status,) = json.loads(ws.ok("status", "--format", "json", "--now", MONDAY.isoformat()))
    left = {p["article"]: (p["unsubscribed"], p["bounced"]) for p in status["parts"]}
    assert left["secure"] == (0, 1) and sum(b for _, b in left.values()) == 1
    (reason,) = [r for s, r in _audit(ws) if s == "bounced"]
    assert reason and BEA not in reason and "[address]" in reason, reason
    show = ws.ok("subscribers", "show", BEA)
    assert "bounced: nothing is sent" in _enrollment_line(show)
