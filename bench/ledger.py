"""Benchmark: the send loop's three ledger writes per request, alone, on SQLite or
PostgreSQL.

N readers (default 20,000) imported into a fresh workspace; then, in requests of 500,
each reader's part 1 is claimed (`ledger.claim`), its outcome recorded
(`ledger.record`) and its bookmark saved (`ledger.save_bookmarks`), each in its own
transaction as the send loop does. Prints the CPU microseconds per message of each,
median of RUNS workspaces. With ``--against REV`` the same is measured with the code
of git revision REV (exported to a temporary folder) in a subprocess, alternating.

With ``--postgres`` each workspace keeps its state in a fresh database on a throwaway
PostgreSQL server (tests/databases.py), and the wall-clock microseconds are printed
too (the server's work is not this process's CPU), with the share of the bookmark
updates PostgreSQL made in place (HOT: no index entry written).

    python bench/ledger.py [--readers 20000] [--runs 3] [--against REV] [--postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AbstractContextManager, ExitStack, nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCH = 500


def measure(code: Path, readers: int, database: str | None = None) -> dict[str, float]:
    """CPU µs per message of claim, record and bookmarks, with the package at CODE, on
    SQLite or on DATABASE (a PostgreSQL URL: then also their wall-clock µs, and the
    share of bookmark updates made in place)."""
    sys.path.insert(0, str(code))
    from bench.send import Setup
    from pipeline.config import load_config
    from pipeline.content import load_series
    from pipeline.store import ledger, open_store
    from pipeline.store.ledger import Due

    with tempfile.TemporaryDirectory(prefix="series-bench-ledger-") as tmp:
        setup = Setup(Path(tmp), readers, code, workers=1, database=database)
        store = open_store(setup.workspace, database)
        now = datetime.now(UTC) + timedelta(days=1)
        series = load_series(load_config(setup.workspace))[0][0]
        first = series.articles[0]
        enrollments = [
            e
            for chunk in ledger.iter_enrollments(store, series.slug, now=now, everything=True)
            for e in chunk
        ]
        spent = {"claim": 0.0, "record": 0.0, "bookmarks": 0.0}
        wall = {"claim": 0.0, "record": 0.0, "bookmarks": 0.0}
        updates = in_place = 0
        for start in range(0, len(enrollments), BATCH):
            due = [Due(e, first.slug, first.part) for e in enrollments[start : start + BATCH]]
            began, began_wall = time.process_time(), time.perf_counter()
            with store.begin() as conn:
                claims = ledger.claim(
                    conn, due, token="bench", until=now + timedelta(minutes=15), now=now
                )
            claimed, claimed_wall = time.process_time(), time.perf_counter()
            outcomes = [(c, "sent", f"id-{c.id}", None) for c in claims]
            with store.begin() as conn:
                ledger.record(conn, outcomes, token="bench", now=now, sent_at=now)
            recorded, recorded_wall = time.process_time(), time.perf_counter()
            later = now + timedelta(days=3)
            # Code from before schema 0010 (--against) has no revision in its rows.
            rows = [(c.enrollment.id, *_revision(c.enrollment), later, "v", None) for c in claims]
            with store.begin() as conn:
                ledger.save_bookmarks(conn, rows)
                done, done_wall = time.process_time(), time.perf_counter()
                if database is not None:  # this transaction's own counts, read at once
                    made, hot = conn.exec_driver_sql(
                        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables "
                        "WHERE relname = 'enrollments'"
                    ).one()
                    updates, in_place = updates + made, in_place + hot
            spent["claim"] += claimed - began
            spent["record"] += recorded - claimed
            spent["bookmarks"] += done - recorded
            wall["claim"] += claimed_wall - began_wall
            wall["record"] += recorded_wall - claimed_wall
            wall["bookmarks"] += done_wall - recorded_wall
        store.close()
    result = {name: seconds / len(enrollments) * 1e6 for name, seconds in spent.items()}
    if database is not None:
        result |= {f"{name} wall": s / len(enrollments) * 1e6 for name, s in wall.items()}
        result["bookmarks in place %"] = 100 * in_place / max(updates, 1)
    return result


def _revision(enrollment: object) -> tuple[int, ...]:
    """The enrollment's revision as the bookmark row's second field, or nothing for
    code from before the change counter (schema 0010)."""
    revision = getattr(enrollment, "revision", None)
    return () if revision is None else (revision,)


def export(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--against")
    parser.add_argument("--postgres", action="store_true", help="on PostgreSQL")
    parser.add_argument("--database", help=argparse.SUPPRESS)
    parser.add_argument("--code", type=Path, default=ROOT, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.json:  # one measurement, for the parent process
        print(json.dumps(measure(args.code, args.readers, args.database)))
        return
    trees = {"this tree": ROOT}
    with _STACK, tempfile.TemporaryDirectory(prefix="series-bench-rev-") as tmp:
        if args.against:
            trees[args.against] = export(args.against, Path(tmp))
        results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for _ in range(args.runs):
            for name, code in trees.items():
                command = [sys.executable, __file__, "--json", "--code", str(code)]
                command += ["--readers", str(args.readers)]
                env = {**os.environ, "PYTHONPATH": str(code)}
                with _database(args.postgres) as database:
                    if database is not None:
                        command += ["--database", database]
                    out = subprocess.run(
                        command, check=True, capture_output=True, text=True, env=env
                    )
                results[name].append(json.loads(out.stdout))
    where = "PostgreSQL" if args.postgres else "SQLite"
    print(f"ledger writes on {where}, {args.readers:,} readers, requests of {BATCH}, ", end="")
    print(f"{args.runs} run(s), µs per message (CPU, else as named), medians:")
    for name, runs in results.items():
        figures = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        total = sum(v for k, v in figures.items() if " " not in k)
        shown = ", ".join(f"{k} {v:5.1f}" for k, v in figures.items())
        print(f"  {name:>10}: {shown}, total {total:5.1f}")


def _database(postgres: bool) -> AbstractContextManager[str | None]:
    """A fresh database on a throwaway PostgreSQL server (started once), or None."""
    if not postgres:
        return nullcontext()
    global _SERVER
    sys.path.insert(0, str(ROOT))
    from tests.databases import fresh_database, postgres_server

    if _SERVER is None:
        _SERVER = _STACK.enter_context(postgres_server())
        if _SERVER is None:
            sys.exit("--postgres needs PostgreSQL's binaries (apt-get install postgresql)")
    return fresh_database(_SERVER)


_STACK = ExitStack()
_SERVER: str | None = None


if __name__ == "__main__":
    main()
