"""Benchmark: `series send` end to end against a fake Postmark on 127.0.0.1, and an idle run.

1. N subscribers (default 100,000) each due part 1 of the example series; one full
   `series send --provider postmark` (batches of 500) against the fake Postmark
   running in its own process. Prints messages/s end to end and the send's peak RSS.
2. M enrollments (default 1,000,000) with nothing due: the first run plans them all
   (peak RSS reported), then a second run with nothing due is timed.

Targets (issue 4, this 2-core machine): >= 5,000 messages/s; <= 1 s for the
nothing-due run; peak RSS <= 300 MB at 1,000,000 subscribers.

    python bench/send.py [--subscribers 100000] [--idle 1000000] [--runs 3]
    python bench/send.py --subscribers 0 --idle 0 --outbox 5000 --against REV

3. With ``--outbox N``: N due messages sent to the outbox provider (the default, one
   .eml file each), messages/s end to end (issue 16 target: >= 5x the outbox rate of
   the email-package build, about 280 messages/s).

With ``--against REV`` the same runs are made, alternating, with the code of git
revision REV (exported to a temporary folder), and both medians are printed: the
machine's noise then weighs on both sides alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_postmark import FakePostmarkProcess  # noqa: E402

TOKEN = "bench-token"


def make_workspace(directory: Path, workers: int | None = None, code: Path = ROOT) -> Path:
    """The example workspace (content, templates and config of the tree at CODE)."""
    root = directory / "workspace"
    root.mkdir()
    config = (code / "pyproject.toml").read_text(encoding="utf-8")
    if workers is not None:
        config = config.replace("[tool.series]\n", f"[tool.series]\nworkers = {workers}\n", 1)
    (root / "pyproject.toml").write_text(config, encoding="utf-8")
    for name in ("series", "templates"):
        if (code / name).is_dir():
            shutil.copytree(code / name, root / name)
    return root


def write_csv(path: Path, count: int) -> None:
    with path.open("w", encoding="utf-8") as fh:
        fh.write("email,name,series\n")
        for i in range(count):
            fh.write(f"reader{i:07d}@example.com,Reader {i},attachment\n")


def series(
    workspace: Path, *args: str, env: dict[str, str], code: Path = ROOT
) -> tuple[float, float, str]:
    """Run `series ARGS` in the workspace with the package of the tree at CODE: (seconds,
    peak RSS of its process tree in MB, stdout). The tree matters: a large send forks
    worker processes."""
    command = [sys.executable, "-m", "pipeline", "--workspace", str(workspace), *args]
    env = {**env, "PYTHONPATH": str(code)}
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, cwd=code, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.2):  # often enough for a peak, rarely enough to cost nothing
            peak = max(peak, _tree_rss_kb(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out_bytes, err_bytes = process.communicate()
    elapsed = time.perf_counter() - started
    stop.set()
    sampler.join()
    out, err = out_bytes.decode(), err_bytes.decode()
    if process.returncode != 0:
        sys.exit(f"series {' '.join(args)} failed: {out}{err}")
    return elapsed, peak / 1024, out


def _tree_rss_kb(root: int) -> int:
    """Resident memory of a process and all its descendants, from /proc (Linux)."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue  # gone meanwhile
    return total


def send_once(count: int, workers: int | None, code: Path) -> tuple[float, float]:
    """One full send of COUNT due messages with the code at CODE: (seconds, peak MB)."""
    with tempfile.TemporaryDirectory(prefix="series-bench-send-") as tmp:
        workspace = make_workspace(Path(tmp), workers, code)
        env = {**os.environ, "POSTMARK_SERVER_TOKEN": TOKEN}
        env.pop("SERIES_DATABASE_URL", None)
        readers = Path(tmp) / "readers.csv"
        write_csv(readers, count)
        series(workspace, "subscribers", "import", str(readers), env=env, code=code)
        with FakePostmarkProcess(Path(tmp) / "postmark.jsonl", token=TOKEN) as fake:
            env["SERIES_PROVIDER_URL"] = fake.url
            seconds, peak, out = series(
                workspace, "send", "--provider", "postmark", env=env, code=code
            )
            accepted = len(fake.accepted)
        if not out.startswith(f"sent {count}, failed 0") or accepted != count:
            sys.exit(f"expected {count} messages, got: {out.strip()} ({accepted} accepted)")
        return seconds, peak


def bench_send(count: int, runs: int, workers: int | None, against: dict[str, Path]) -> None:
    trees = {"this tree": ROOT, **against}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    for _ in range(runs):
        for name, code in trees.items():  # alternating, so noise hits both alike
            results[name].append(send_once(count, workers, code))
    for name, timings in results.items():
        seconds = statistics.median(r[0] for r in timings)
        print(f"send ({name}): {count:,} messages, {runs} run(s), median {seconds:.1f} s")
        print(f"  messages/s end to end: {count / seconds:,.0f}   (target >= 5,000)")
        print(f"  peak RSS of series send (all its processes): {max(r[1] for r in timings):.0f} MB")


def bench_idle(count: int, runs: int, name: str = "this tree", code: Path = ROOT) -> None:
    with tempfile.TemporaryDirectory(prefix="series-bench-idle-") as tmp:
        workspace = make_workspace(Path(tmp), code=code)
        env = {**os.environ}
        env.pop("SERIES_DATABASE_URL", None)
        readers = Path(tmp) / "readers.csv"
        write_csv(readers, count)
        seconds, _, _ = series(workspace, "subscribers", "import", str(readers), env=env, code=code)
        print(f"idle ({name}): imported {count:,} subscribers in {seconds:.1f} s")
        # Before anyone enrolled: part 1 is not due yet for anybody.
        before = (datetime.now(UTC) - timedelta(days=1)).isoformat()
        seconds, peak, out = series(workspace, "send", "--now", before, env=env, code=code)
        assert out.startswith("sent 0,"), out
        print(
            f"  first run plans all {count:,}: {seconds:.1f} s, peak RSS {peak:.0f} MB"
            "   (target <= 300 MB)"
        )
        timings = []
        for _ in range(runs):
            seconds, peak, out = series(workspace, "send", "--now", before, env=env, code=code)
            assert out.startswith("sent 0,"), out
            timings.append((seconds, peak))
        median = statistics.median(t[0] for t in timings)
        print(
            f"  nothing-due run: median {median:.2f} s over {runs} run(s), "
            f"peak RSS {max(t[1] for t in timings):.0f} MB   (target <= 1 s)"
        )


def outbox_once(count: int, workers: int | None, code: Path) -> float:
    """One `series send` of COUNT due messages to the outbox provider (the default: an
    .eml file per message) with the code at CODE: its seconds."""
    with tempfile.TemporaryDirectory(prefix="series-bench-outbox-") as tmp:
        workspace = make_workspace(Path(tmp), workers, code)
        env = {**os.environ}
        env.pop("SERIES_DATABASE_URL", None)
        readers = Path(tmp) / "readers.csv"
        write_csv(readers, count)
        series(workspace, "subscribers", "import", str(readers), env=env, code=code)
        seconds, _, out = series(workspace, "send", "--provider", "outbox", env=env, code=code)
        written = sum(1 for _ in (workspace / "outbox").glob("*.eml"))
        if not out.startswith(f"sent {count}, failed 0") or written != count:
            sys.exit(f"expected {count} .eml files, got: {out.strip()} ({written} written)")
        return seconds


def bench_outbox(count: int, runs: int, workers: int | None, against: dict[str, Path]) -> None:
    """`series send` to the outbox: messages/s end to end, alternating with AGAINST."""
    trees = {"this tree": ROOT, **against}
    timings: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(runs):
        for name, code in trees.items():
            timings[name].append(outbox_once(count, workers, code))
    for name, seconds in timings.items():
        median = statistics.median(seconds)
        print(
            f"outbox ({name}): {count:,} .eml files, {runs} run(s), median {median:.1f} s, "
            f"{count / median:,.0f} messages/s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--idle", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, help="sending processes (default: the config's)")
    parser.add_argument("--against", metavar="REV", help="also measure git revision REV")
    parser.add_argument(
        "--outbox",
        type=int,
        default=0,
        metavar="N",
        help="also send N messages to the outbox provider (.eml files) and print messages/s",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="series-bench-rev-") as tmp:
        against = {}
        if args.against:
            against[args.against] = export_revision(args.against, Path(tmp))
        if args.subscribers:
            bench_send(args.subscribers, args.runs, args.workers, against)
        if args.outbox:
            bench_outbox(args.outbox, args.runs, args.workers, against)
        if args.idle:
            for name, code in {"this tree": ROOT, **against}.items():
                bench_idle(args.idle, args.runs, name, code)


def export_revision(revision: str, directory: Path) -> Path:
    """The files of git REVISION of this repository, in a new folder under DIRECTORY."""
    target = directory / "tree"
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", revision],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


if __name__ == "__main__":
    main()
