"""`--now` without an offset and the times tables print share one zone: the workspace's."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from .helpers import enroll_examples, run, send_at

# The example workspace is in Europe/Stockholm (UTC+1 in December). Part 1 goes out on
# Monday at 10:00 UTC; part 2 is due four days later, 10:00 UTC = 11:00 in Stockholm.
MONDAY = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


@pytest.fixture
def part1_sent(example_copy: Path) -> Path:
    enroll_examples(example_copy)
    code, out, err = send_at(example_copy, MONDAY)
    assert code == 0 and out.startswith("sent 6,"), out + err
    return example_copy


def _plan(root: Path, now: str) -> tuple[list[str], str]:
    code, out, err = run(root, "send", "--dry-run", "--now", now)
    assert code == 0, err
    return out.splitlines(), err


def test_now_without_offset_is_the_workspaces_time_as_in_the_table(part1_sent: Path) -> None:
    """At 10:30 Stockholm time the table shows part 2 due at 11:00, in the zone its header
    names, and nothing goes now; at 11:00 (or 10:00Z, the same moment) it is due."""
    lines, err = _plan(part1_sent, "2026-12-04T10:30")
    assert "DUE (Europe/Stockholm)" in lines[0]
    part2 = [line for line in lines if "Secure attachment" in line]
    assert len(part2) == 5 and all("2026-12-04 11:00" in line for line in part2)
    assert "would send 0 email(s) now" in err
    for moment in ("2026-12-04T11:00", "2026-12-04T10:00Z", "2026-12-04T05:00-05:00"):
        assert "would send 5 email(s) now" in _plan(part1_sent, moment)[1], moment


def test_status_prints_times_in_the_workspaces_zone(part1_sent: Path) -> None:
    """`series status` names the zone of its NEXT DUE column and prints times in it."""
    code, out, _ = run(part1_sent, "status", "--now", "2026-12-01T12:00")
    assert code == 0
    header, _, _, part2 = out.splitlines()[1:5]
    assert header.endswith("NEXT DUE (Europe/Stockholm)")
    assert part2.endswith("2026-12-04 11:00")


def test_now_help_states_the_rule() -> None:
    """--help says how a --now without an offset is read."""
    for command in ("send", "status", "check", "preview"):
        code, out, _ = run(Path("."), command, "--help")
        assert code == 0
        assert "Without an offset" in out and "workspace's timezone" in " ".join(out.split())
