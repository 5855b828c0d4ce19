"""The nothing-due run (issue 16): the hourly `series send` that finds every reader
waiting. Its cost must not grow with the list: the database is only probed through
its indexes, and nothing a send needs only when something is due is loaded."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from .helpers import ENROLLED_AT, import_readers, run, subprocess_env

ENROLLED = datetime.fromisoformat(ENROLLED_AT)
# Before part 1 of anyone's is due: the first run bookmarks everyone, later runs are idle.
BEFORE = (ENROLLED - timedelta(hours=1)).astimezone(UTC).isoformat()
TABLES = ("enrollments", "subscribers", "deliveries")


def idle_workspace(root: Path) -> Path:
    import_readers(root, 30)
    code, out, err = run(root, "send", "--now", BEFORE)
    assert code == 0 and out.startswith("sent 0,"), out + err
    return root


def test_a_nothing_due_run_reads_the_list_only_through_indexes(example_copy: Path) -> None:
    """Every statement of a nothing-due run, asked EXPLAIN QUERY PLAN on the same
    database: no table of readers, enrollments or deliveries is scanned."""
    root = idle_workspace(example_copy)
    statements: list[tuple[str, object]] = []

    def note(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if not executemany and not statement.startswith(("BEGIN", "PRAGMA", "COMMIT")):
            statements.append((statement, parameters))

    event.listen(Engine, "before_cursor_execute", note)
    try:
        code, out, err = run(root, "send", "--now", BEFORE)
    finally:
        event.remove(Engine, "before_cursor_execute", note)
    assert code == 0 and out.startswith("sent 0,"), out + err
    assert any("FROM enrollments" in s for s, _ in statements)
    db = sqlite3.connect(root / "subscribers" / "state.db")
    try:
        for statement, parameters in statements:
            plan = db.execute(f"EXPLAIN QUERY PLAN {statement}", parameters).fetchall()  # type: ignore[arg-type]
            steps = [row[3] for row in plan]
            scans = [s for s in steps if s.startswith("SCAN ") and s.split()[1] in TABLES]
            assert not scans, (statement, steps)
    finally:
        db.close()


def test_a_nothing_due_run_loads_neither_the_renderer_nor_other_databases(
    example_copy: Path,
) -> None:
    """The modules a real nothing-due `series send` imports (a fresh process, as the
    hourly job runs it): no renderer, no templates, no Alembic (the schema is current),
    no PostgreSQL dialect on SQLite."""
    root = idle_workspace(example_copy)
    script = (
        "import json, sys\n"
        "from pipeline.cli import cli\n"
        "try:\n"
        f"    cli(['send', '--now', {BEFORE!r}], prog_name='series')\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=subprocess_env(root),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    out = done.stdout.splitlines()
    assert out[0].startswith("sent 0,"), done.stdout + done.stderr
    modules = set(json.loads(out[-1]))
    unwanted = {
        "pipeline.render",
        "jinja2",
        "markdown_it",
        "alembic",
        "sqlalchemy.dialects.postgresql",
        "psycopg",
    }
    assert not unwanted & modules, sorted(unwanted & modules)
    assert sa.__name__ in modules
