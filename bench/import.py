"""Benchmark: import generated subscribers from CSV into a fresh SQLite state database.

Runs the real command (`python -m pipeline subscribers import FILE.csv`) in a child
process on a copy of the example workspace, and prints rows/s and the child's peak
RSS. Targets (issue 3): >= 20,000 rows/s and < 200 MB at 100,000 rows.

    python bench/import.py [--rows 100000] [--runs 3]
"""

from __future__ import annotations

import argparse
import csv
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ZONES = ("Europe/Stockholm", "America/New_York", "Asia/Tokyo", "Australia/Sydney", "UTC")


def write_csv(path: Path, rows: int) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["email", "name", "timezone", "series", "start_part", "plan"])
        for i in range(rows):
            writer.writerow(
                [
                    f"reader{i:07d}@example.com",
                    f"Reader {i}",
                    ZONES[i % len(ZONES)],
                    "attachment",
                    1 + i % 3,
                    "free" if i % 4 else "coaching",
                ]
            )


def make_workspace(directory: Path) -> Path:
    root = directory / "workspace"
    root.mkdir()
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    for name in ("series", "templates"):
        shutil.copytree(ROOT / name, root / name)
    return root


def one_run(csv_path: Path, rows: int) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of one import into an empty database."""
    with tempfile.TemporaryDirectory(prefix="series-bench-") as tmp:
        workspace = make_workspace(Path(tmp))
        command = [
            sys.executable,
            "-m",
            "pipeline",
            "--workspace",
            str(workspace),
            "subscribers",
            "import",
            str(csv_path),
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - started
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if result.returncode != 0 or f"imported {rows}," not in result.stdout:
            sys.exit(f"import failed ({result.returncode}): {result.stdout}{result.stderr}")
        # ru_maxrss of children is the largest child so far; each run is alike, so the
        # figure is this run's peak unless an earlier run was larger.
        return elapsed, max(peak_kb, before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="series-bench-csv-") as tmp:
        csv_path = Path(tmp) / "subscribers.csv"
        write_csv(csv_path, args.rows)
        results = [one_run(csv_path, args.rows) for _ in range(args.runs)]
    seconds = statistics.median(r[0] for r in results)
    peak = max(r[1] for r in results)
    print(f"rows:            {args.rows:,}")
    print(f"runs:            {args.runs} (median wall time, whole command incl. start-up)")
    print(f"median time:     {seconds:.2f} s")
    print(f"rows/s:          {args.rows / seconds:,.0f}   (target >= 20,000)")
    print(f"peak RSS:        {peak:.0f} MB   (target < 200 MB)")


if __name__ == "__main__":
    main()
