"""Editing a series after readers started, end to end through the real CLI: parts
inserted, renumbered, renamed, removed and swapped between runs of `series send`,
with `series check` and `series send --dry-run` warning before anything goes out.

The example series with all five parts out; its six readers (Yuki starts at part 2).
"""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline.store import open_store
from pipeline.store.migrate import HEAD
from pipeline.store.schema import deliveries, subscribers

from .databases import database_at_0004
from .helpers import enroll_examples, run, send_at

MONDAY = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
ASA = "asa.berg@example.com"
LATE = "late@example.com"
NEW_PART = """---
title: Earned security
part: {part}
published: 2026-11-01
url: https://steadyground.example/attachment/earned-security/
summary: How people move toward security later in life.
---

Security can be learnt, at any age.
"""


def day(days: float) -> datetime:
    return MONDAY + timedelta(days=days)


def series_dir(root: Path) -> Path:
    return root / "series" / "attachment"


def insert_part(root: Path, at: int, slug: str = "earned-security") -> None:
    """What an editor does: a new article as part AT, the files and `part:` of the parts
    from AT on renumbered one up."""
    for path in sorted(series_dir(root).glob("*.md"), reverse=True):
        number = int(path.name[:2])
        if number >= at:
            _renumber(path, number, number + 1)
    (series_dir(root) / f"{at:02d}-{slug}.md").write_text(
        NEW_PART.format(part=at), encoding="utf-8"
    )


def _renumber(path: Path, old: int, new: int) -> Path:
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace(f"\npart: {old}\n", f"\npart: {new}\n", 1), encoding="utf-8")
    return path.rename(path.with_name(f"{new:02d}{path.name[2:]}"))


def history(root: Path) -> dict[str, list[tuple[str, int]]]:
    """(article, part it was sent as) each address received, in the order sent."""
    with open_store(root) as store, store.connect() as conn:
        rows = conn.execute(
            sa.select(subscribers.c.email, deliveries.c.article, deliveries.c.part)
            .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
            .where(deliveries.c.state == "sent")
            .order_by(deliveries.c.sent_at, deliveries.c.id)
        ).all()
    found: dict[str, list[tuple[str, int]]] = {}
    for address, article, part in rows:
        found.setdefault(address, []).append((article, part))
    return found


def last_email_to(root: Path, address: str) -> EmailMessage:
    paths = sorted((root / "outbox").glob("*.eml"), key=lambda p: p.stat().st_mtime_ns)
    for path in reversed(paths):
        parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        if parsed["To"].addresses[0].addr_spec == address:
            return parsed
    raise AssertionError(f"no email to {address}")


def text_of(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


def check(root: Path) -> list[str]:
    code, out, _ = run(root, "check", "--now", MONDAY.isoformat())
    assert code == 0, out
    return out.splitlines()


def warned(root: Path, warning: str) -> str:
    """Assert that `series check` and then `series send --dry-run` (on stderr) both print
    ``warning``; returns the dry run's plan."""
    assert warning in check(root)
    code, out, err = run(root, "send", "--dry-run", "--now", day(9).isoformat())
    assert code == 0
    assert warning in err.splitlines()
    return out


@pytest.fixture
def five_parts(example_copy: Path) -> Path:
    """The example workspace with all five parts published, its readers enrolled."""
    for name, old in (("04-avoidant.md", "draft: true"), ("05-disorganized.md", "2027-03-15")):
        path = series_dir(example_copy) / name
        new = "published: 2026-11-01" if old.startswith("draft") else "2026-11-01"
        path.write_text(path.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
    return enroll_examples(example_copy)


@pytest.fixture
def two_parts_in(five_parts: Path) -> Path:
    """Two runs in: five readers have parts 1 and 2, Yuki (from part 2) has part 2, and a
    late reader who joined on day 3 has part 1."""
    assert send_at(five_parts, day(0))[1].startswith("sent 6,")
    code, _, _ = run(
        five_parts,
        "subscribers",
        "add",
        LATE,
        "--series",
        "attachment",
        "--now",
        day(3).isoformat(),
    )
    assert code == 0
    assert send_at(five_parts, day(4))[1].startswith("sent 6,")
    assert history(five_parts)[ASA] == [("attachment-theory", 1), ("secure", 2)]
    assert history(five_parts)[LATE] == [("attachment-theory", 1)]
    return five_parts


def test_issue_example_inserted_part_is_skipped_and_nothing_is_sent_twice(
    two_parts_in: Path,
) -> None:
    """The issue's case: after parts 1 and 2, a new part 2 is inserted and the old 2→3,
    3→4… renumbered (files and `part:`). Check and the dry run warn first; the next run
    sends the old part 3, now "Part 4 of 6", and never the old part 2 again."""
    root = two_parts_in
    insert_part(root, 2)

    plan = warned(
        root,
        "series/attachment/02-earned-security.md: warning: 6 readers already received later "
        "parts but not this one (part 2): they will skip it, as an article inserted before a "
        'reader\'s position is skipped (see README, "Editing a series after readers started")',
    )
    asa_line = next(line for line in plan.splitlines() if line.startswith(ASA))
    assert asa_line.split()[2:4] == ["4", "Anxious"]

    assert send_at(root, day(9))[1].startswith("sent 7,")
    assert history(root)[ASA] == [("attachment-theory", 1), ("secure", 2), ("anxious", 4)]
    message = last_email_to(root, ASA)
    assert message["Subject"] == "Anxious attachment (Attachment Styles, part 4 of 6)"
    text = text_of(message)
    assert "Attachment Styles · part 4 of 6" in text
    assert "Next: part 5, Avoidant attachment" in text
    assert "2. Earned security\n" in text  # out, and not in their inbox
    assert "3. Secure attachment (in your inbox)" in text
    for address, received in history(root).items():
        articles = [article for article, _ in received]
        assert len(articles) == len(set(articles)), f"{address} got an article twice"
        if address != LATE:
            assert "earned-security" not in articles


def test_reader_before_the_insertion_gets_the_new_part(two_parts_in: Path) -> None:
    """A reader who had only part 1 when part 2 was inserted gets the new part 2 next, and
    the old part 2 after it: everything, in the new order."""
    root = two_parts_in
    insert_part(root, 2)

    send_at(root, day(9))
    assert history(root)[LATE] == [("attachment-theory", 1), ("earned-security", 2)]
    assert last_email_to(root, LATE)["Subject"] == (
        "Earned security (Attachment Styles, part 2 of 6)"
    )
    send_at(root, day(13))
    assert history(root)[LATE][-1] == ("secure", 3)


def test_renamed_file_keeps_its_identity_with_slug(two_parts_in: Path) -> None:
    """A file renamed with `slug:` set to its old name is the same article: check says
    nothing and no one gets it again."""
    root = two_parts_in
    old = series_dir(root) / "02-secure.md"
    text = old.read_text(encoding="utf-8").replace("\npart: 2\n", "\npart: 2\nslug: secure\n")
    (series_dir(root) / "02-secure-attachment.md").write_text(text, encoding="utf-8")
    old.unlink()

    assert not [line for line in check(root) if "warning" in line]
    send_at(root, day(9))
    assert history(root)[ASA][-1] == ("anxious", 3)
    assert [a for a, _ in history(root)[LATE]] == ["attachment-theory", "secure"]


def test_renamed_file_without_slug_is_warned_about(two_parts_in: Path) -> None:
    """A file renamed without `slug:` is a new article to the ledger: check and the dry
    run say the old one is gone, how many readers had it, and how to keep its identity."""
    root = two_parts_in
    old = series_dir(root) / "02-secure.md"
    old.rename(series_dir(root) / "02-secure-attachment.md")

    warned(
        root,
        "series/attachment: warning: 'secure' was sent to 6 readers and is gone: renamed? set "
        "`slug: secure` on the new file (series/attachment/02-secure-attachment.md?); "
        "removed: nothing to do, it is skipped",
    )


def test_removed_part_is_skipped(two_parts_in: Path) -> None:
    """Part 3 removed (and 4→3, 5→4 renumbered) before anyone got it: readers at part 2
    go on with the old part 4, "part 3 of 4"; check has nothing to say."""
    root = two_parts_in
    (series_dir(root) / "03-anxious.md").unlink()
    _renumber(series_dir(root) / "04-avoidant.md", 4, 3)
    _renumber(series_dir(root) / "05-disorganized.md", 5, 4)

    assert not [line for line in check(root) if "warning" in line]
    send_at(root, day(9))
    assert history(root)[ASA][-1] == ("avoidant", 3)
    assert last_email_to(root, ASA)["Subject"] == (
        "Avoidant attachment (Attachment Styles, part 3 of 4)"
    )
    assert not any("anxious" in [a for a, _ in got] for got in history(root).values())


def test_swapped_parts_are_warned_about_and_the_one_behind_is_skipped(
    two_parts_in: Path,
) -> None:
    """Parts 2 and 3 swapped: the readers who had the old part 2 are now past the new
    part 2 without it. Check says how many will skip it; they go on with part 4."""
    root = two_parts_in
    secure = _renumber(series_dir(root) / "02-secure.md", 2, 9)
    _renumber(series_dir(root) / "03-anxious.md", 3, 2)
    _renumber(secure, 9, 3)

    warned(
        root,
        "series/attachment/02-anxious.md: warning: 6 readers already received later parts but "
        "not this one (part 2): they will skip it, as an article inserted before a reader's "
        'position is skipped (see README, "Editing a series after readers started")',
    )
    send_at(root, day(9))
    assert history(root)[ASA][-1] == ("avoidant", 4)
    assert [a for a, _ in history(root)[LATE]] == ["attachment-theory", "anxious"]


def test_check_reads_an_old_database_without_changing_it(example_copy: Path) -> None:
    """`series check` with a database at schema 0004 says so in one line and leaves it as
    it is; once upgraded, a part no article had then is reported as a placeholder."""
    database = example_copy / "subscribers" / "state.db"
    database_at_0004(f"sqlite:///{database}")

    lines = check(example_copy)
    assert (
        "subscribers/state.db: warning: the state database is at schema revision 0004 (this "
        f"version: {HEAD}); upgrading it (`series db upgrade`, or any command that opens it "
        "except `check`, `preview`, `test-send` and `send --dry-run`) matches each delivery "
        "to the article that has its part number then, so upgrade before renumbering, "
        "inserting or renaming parts"
    ) in lines
    engine = sa.create_engine(f"sqlite:///{database}")
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT version_num FROM alembic_version")) == "0004"
    engine.dispose()

    assert run(example_copy, "db", "upgrade")[0] == 0
    assert (
        "series/attachment: warning: 'part-7' was sent to 1 reader as part 7 before articles "
        "had identities, and no article had that part when the database was upgraded: if one "
        "of today's articles is it, set `slug: part-7` on that file so they do not get it again"
    ) in check(example_copy)


def test_check_never_creates_the_database(example_copy: Path) -> None:
    """Without a state database, check reads none and creates none."""
    check(example_copy)
    assert not (example_copy / "subscribers" / "state.db").exists()


def test_a_new_part_1_does_not_call_long_time_readers_new(two_parts_in: Path) -> None:
    """An editor puts a new part 1 before the old one: readers who started at the
    beginning (and have the old parts 1 and 2, now 2 and 3) are not told "New here?
    Start with part 1"; Yuki, enrolled to start at part 2, still is (issue 15 review)."""
    root = two_parts_in
    insert_part(root, 1)
    send_at(root, day(9))
    asa = last_email_to(root, ASA)
    assert history(root)[ASA][-1] == ("anxious", 4)
    assert "New here?" not in text_of(asa)
    html = asa.get_body(preferencelist=("html",))
    assert html is not None and "New here?" not in str(html.get_content())
    yuki = last_email_to(root, "yuki.tanaka@example.com")
    assert "New here? Start with part 1: Earned security" in text_of(yuki)
