"""Benchmark: the send loop's three ledger writes per request, alone, on SQLite.

N readers (default 20,000) imported into a fresh workspace; then, in requests of 500,
each reader's part 1 is claimed (`ledger.claim`), its outcome recorded
(`ledger.record`) and its bookmark saved (`ledger.save_bookmarks`), each in its own
transaction as the send loop does. Prints the CPU microseconds per message of each,
median of RUNS workspaces. With ``--against REV`` the same is measured with the code
of git revision REV (exported to a temporary folder) in a subprocess.

    python bench/ledger.py [--readers 20000] [--runs 3] [--against REV]
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
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCH = 500


def measure(code: Path, readers: int) -> dict[str, float]:
    """CPU µs per message of claim, record and bookmarks, with the package at CODE."""
    sys.path.insert(0, str(code))
    from bench.send import Setup
    from pipeline.config import load_config
    from pipeline.content import load_series
    from pipeline.store import ledger, open_store
    from pipeline.store.ledger import Due

    with tempfile.TemporaryDirectory(prefix="series-bench-ledger-") as tmp:
        setup = Setup(Path(tmp), readers, code, workers=1, database=None)
        store = open_store(setup.workspace)
        now = datetime.now(UTC) + timedelta(days=1)
        series = load_series(load_config(setup.workspace))[0][0]
        first = series.articles[0]
        enrollments = [
            e
            for chunk in ledger.iter_enrollments(store, series.slug, now=now, everything=True)
            for e in chunk
        ]
        spent = {"claim": 0.0, "record": 0.0, "bookmarks": 0.0}
        for start in range(0, len(enrollments), BATCH):
            due = [Due(e, first.slug, first.part) for e in enrollments[start : start + BATCH]]
            began = time.process_time()
            with store.begin() as conn:
                claims = ledger.claim(
                    conn, due, token="bench", until=now + timedelta(minutes=15), now=now
                )
            claimed = time.process_time()
            outcomes = [(c, "sent", f"id-{c.id}", None) for c in claims]
            with store.begin() as conn:
                ledger.record(conn, outcomes, token="bench", now=now, sent_at=now)
            recorded = time.process_time()
            later = now + timedelta(days=3)
            with store.begin() as conn:
                ledger.save_bookmarks(
                    conn,
                    [(c.enrollment.id, c.enrollment.revision, later, "v", None) for c in claims],
                )
            spent["claim"] += claimed - began
            spent["record"] += recorded - claimed
            spent["bookmarks"] += time.process_time() - recorded
        store.close()
    return {name: seconds / len(enrollments) * 1e6 for name, seconds in spent.items()}


def export(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--against")
    parser.add_argument("--code", type=Path, default=ROOT, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.json:  # one measurement, for the parent process
        print(json.dumps(measure(args.code, args.readers)))
        return
    trees = {"this tree": ROOT}
    with tempfile.TemporaryDirectory(prefix="series-bench-rev-") as tmp:
        if args.against:
            trees[args.against] = export(args.against, Path(tmp))
        results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for _ in range(args.runs):
            for name, code in trees.items():
                command = [sys.executable, __file__, "--json", "--code", str(code)]
                command += ["--readers", str(args.readers)]
                env = {**os.environ, "PYTHONPATH": str(code)}
                out = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
                results[name].append(json.loads(out.stdout))
    print(f"ledger writes, {args.readers:,} readers, requests of {BATCH}, {args.runs} run(s),")
    print("CPU µs per message, medians:")
    for name, runs in results.items():
        figures = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        total = sum(figures.values())
        shown = ", ".join(f"{k} {v:5.1f}" for k, v in figures.items())
        print(f"  {name:>10}: {shown}, total {total:5.1f}")


if __name__ == "__main__":
    main()
