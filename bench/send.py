"""Benchmark: `series send` end to end against a Postmark-shaped server on 127.0.0.1, measured
against the machine's limit, and its memory, PostgreSQL and several processes.

1. The limit ratio: N readers (default 100,000) each due part 1 of the example series.
   `bench/limit.py` (only the unavoidable work: fill three personal fields into the
   rendered part, orjson, POST batches of 500) and `series send --provider postmark`
   send the same messages to the same Postmark-shaped server on 127.0.0.1 that
   discards them (`bench/sink.py`), alternating, with 1 and 2 workers; prints
   messages/s, peak memory (PSS, each page counted once across the processes) and
   `series / limit` (wall time). Target <= 1.4x.
2. Memory: M readers due (default 1,000,000): peak PSS of `series send --dry-run`, of
   the send itself (part 1, every enrollment planned afresh) and of the next run that
   sends part 2 to everyone (found by their wake-up time). Target <= 300 MB each.
3. Idle: the same M enrollments with nothing due; the nothing-due run (median wall
   and CPU seconds), target <= 1 s.
4. With --postgres: the same send on PostgreSQL against SQLite (target <= 1.25x), and
   two `series send` processes started at once against one PostgreSQL against one
   process (target >= 1.7x), every message counted at the sink (no duplicates).
   CPU seconds of `series`, of the PostgreSQL server and of the provider (the sink) are
   printed too, with the cores one process keeps busy and those other programs do:
   what two processes can gain at most on this machine at that moment.
5. The outbox: N messages (default 10,000) sent to the default provider, one .eml file
   each; messages/s end to end (target: >= 5x the rate of the email-package build, which
   `--against` an older revision shows side by side).

    python bench/send.py [--subscribers 100000] [--workers 1,2] [--memory 1000000]
                         [--idle 1000000] [--postgres] [--outbox 10000] [--runs 3]
                         [--against REV]

With ``--against REV`` the sends of section 1 are also made, alternating, with the
code of git revision REV (exported to a temporary folder), and every median printed:
the machine's noise then weighs on all sides alike. CPU seconds (user + system of
`series` and its workers) are printed too: on a shared machine they are steadier.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.sink import Sink  # noqa: E402

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


@dataclass(frozen=True)
class Timed:
    seconds: float  # wall time
    peak_mb: float  # peak PSS of the process tree
    cpu: float  # user + system seconds of the process tree
    out: str


def series(
    workspace: Path, *args: str, env: dict[str, str], code: Path = ROOT
) -> tuple[float, float, str]:
    """Run `series ARGS` in the workspace with the package of the tree at CODE: (seconds,
    peak PSS of its process tree in MB, stdout). The tree matters: a large send forks
    worker processes."""
    timed = run_timed(series_command(workspace, *args), env={**env, "PYTHONPATH": str(code)})
    return timed.seconds, timed.peak_mb, timed.out


def series_command(workspace: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "--workspace", str(workspace), *args]


def run_timed(*commands: list[str], env: dict[str, str], cwd: Path = ROOT) -> Timed:
    """Start COMMANDS at once and wait for all: wall time, peak PSS of all their
    processes together, CPU seconds, and their joined stdout. Exits on a failure."""
    cpu_before = _children_cpu()
    started = time.perf_counter()
    processes = [
        subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for command in commands
    ]
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.2):  # often enough for a peak, rarely enough to cost little
            peak = max(peak, sum(_tree_pss_kb(p.pid) for p in processes))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    outputs = [p.communicate() for p in processes]
    elapsed = time.perf_counter() - started
    cpu = _children_cpu() - cpu_before
    stop.set()
    sampler.join()
    out = "".join(o.decode() for o, _ in outputs)
    for command, process, (o, e) in zip(commands, processes, outputs, strict=True):
        if process.returncode != 0:
            sys.exit(f"{' '.join(command)} failed: {o.decode()}{e.decode()}")
    return Timed(elapsed, peak / 1024, cpu, out)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _tree_pss_kb(root: int) -> int:
    """Proportional set size of a process and all its descendants, from /proc (Linux):
    pages shared between them (a forked worker's) are counted once in all."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            try:
                text = Path(f"/proc/{pid}/smaps_rollup").read_text()
                key = "Pss:"
            except OSError:
                text = Path(f"/proc/{pid}/status").read_text()
                key = "VmRSS:"
            for line in text.splitlines():
                if line.startswith(key):
                    total += int(line.split()[1])
                    break
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue  # gone meanwhile
    return total


class Setup:
    """A workspace with COUNT readers imported, in a temporary folder, for one run."""

    def __init__(
        self, tmp: Path, count: int, code: Path, *, workers: int | None, database: str | None
    ) -> None:
        self.workspace = make_workspace(tmp, workers, code)
        self.code = code
        self.env = {**os.environ, "POSTMARK_SERVER_TOKEN": TOKEN, "PYTHONPATH": str(code)}
        self.env.pop("SERIES_DATABASE_URL", None)
        if database is not None:
            self.env["SERIES_DATABASE_URL"] = database
        self.readers = tmp / "readers.csv"
        if not self.readers.exists():
            write_csv(self.readers, count)
        run_timed(
            series_command(self.workspace, "subscribers", "import", str(self.readers)),
            env=self.env,
            cwd=code,
        )
        # As the generated workflow runs it before each send: the MJML of every part is
        # compiled into .series-cache/ (which the workflow keeps between runs), so the
        # send measured reads it from there, as a scheduled send does.
        run_timed(series_command(self.workspace, "check"), env=self.env, cwd=code)

    def send(self, fake_url: str, *extra: str, processes: int = 1) -> Timed:
        env = {**self.env, "SERIES_PROVIDER_URL": fake_url}
        command = series_command(self.workspace, "send", "--provider", "postmark", *extra)
        return run_timed(*[command] * processes, env=env, cwd=self.code)


def write_part(workspace: Path, path: Path) -> None:
    """Part 1 of the example series rendered once, as `bench/limit.py` reads it."""
    import orjson

    from pipeline.config import load_config
    from pipeline.content import load_series
    from pipeline.render import Renderer

    config = load_config(workspace)
    series_list, _ = load_series(config)
    series = series_list[0]
    compiled = Renderer(config, now=datetime.now(UTC), use_cache=False).compile(
        series, series.articles[0]
    )
    part = {
        "series": series.slug,
        "subject": compiled.subject,
        "sender": series.sender.formatted(),
        "html": {"pieces": compiled.html.pieces, "fields": compiled.html.fields},
        "text": {"pieces": compiled.text.pieces, "fields": compiled.text.fields},
        "unsubscribe_url": config.unsubscribe_url,
        "key": os.urandom(32).hex(),
    }
    path.write_bytes(orjson.dumps(part))


def send_once(
    count: int, workers: int | None, code: Path, database: str | None = None, processes: int = 1
) -> Timed:
    """One full send of COUNT due messages with the code at CODE, by PROCESSES `series
    send` started at once; checks that the fake server got each message exactly once."""
    with tempfile.TemporaryDirectory(prefix="series-bench-send-") as tmp:
        with ExitStack() as stack:
            if database == "postgresql":
                database = stack.enter_context(_postgres_database())
            setup = Setup(Path(tmp), count, code, workers=workers, database=database)
            with Sink(TOKEN) as sink:
                timed = setup.send(sink.url, processes=processes)
                stats = sink.stats()
        _each_once(timed, count, stats)
        return timed


def _each_once(timed: Timed, count: int, stats: dict[str, int]) -> None:
    """Exit unless the sends said COUNT sent and the sink took each reader's once."""
    sent = sum(
        int(line.split(",")[0].split()[1])
        for line in timed.out.splitlines()
        if line.startswith("sent ")
    )
    if sent != count or stats["accepted"] != count or stats["twice"]:
        sys.exit(
            f"expected {count} messages once each, got: {timed.out.strip()} "
            f"({stats['accepted']} accepted, {stats['twice']} readers more than once)"
        )


def limit_once(count: int, workers: int, part: Path) -> Timed:
    """The limit client on the same COUNT readers, with WORKERS processes."""
    with tempfile.TemporaryDirectory(prefix="series-bench-limit-") as tmp:
        readers = Path(tmp) / "readers.csv"
        write_csv(readers, count)
        with Sink(TOKEN) as sink:
            command = [sys.executable, str(ROOT / "bench" / "limit.py"), str(part), str(readers)]
            command += [sink.url, "--token", TOKEN, "--processes", str(workers)]
            timed = run_timed(command, env=dict(os.environ))
            accepted = sink.stats()["accepted"]
        if accepted != count:
            sys.exit(f"the limit client: {accepted} of {count} accepted")
        return timed


def bench_limit(
    count: int, runs: int, workers_list: list[int], against: dict[str, Path], note: list[str]
) -> None:
    with tempfile.TemporaryDirectory(prefix="series-bench-part-") as tmp:
        part = Path(tmp) / "part.json"
        write_part(ROOT, part)
        for workers in workers_list:
            trees = {"this tree": ROOT, **against}
            results: dict[str, list[Timed]] = {"limit": [], **{name: [] for name in trees}}
            for _ in range(runs):  # alternating, so noise hits all alike
                results["limit"].append(limit_once(count, workers, part))
                for name, code in trees.items():
                    results[name].append(send_once(count, workers, code))
            limit = statistics.median(r.seconds for r in results["limit"])
            limit_cpu = statistics.median(r.cpu for r in results["limit"])
            print(f"send, {count:,} messages, {workers} worker(s), {runs} run(s), medians:")
            for name, timings in results.items():
                seconds = statistics.median(r.seconds for r in timings)
                cpu = statistics.median(r.cpu for r in timings)
                peak = max(r.peak_mb for r in timings)
                print(
                    f"  {name:>10}: {seconds:6.1f} s, {count / seconds:7,.0f} msg/s, "
                    f"CPU {cpu:5.1f} s, peak PSS {peak:4.0f} MB, "
                    f"÷ limit {seconds / limit:.2f}x (CPU {cpu / limit_cpu:.2f}x)"
                )
            ratio = statistics.median(r.seconds for r in results["this tree"]) / limit
            note.append(
                f"series ÷ limit, {workers} worker(s), {count:,} messages: {ratio:.2f}x "
                "(target <= 1.4x)"
            )


def bench_memory(count: int, note: list[str]) -> None:
    """Peak PSS of a dry run and of the send with COUNT readers due."""
    with tempfile.TemporaryDirectory(prefix="series-bench-memory-") as tmp:
        started = time.perf_counter()
        setup = Setup(Path(tmp), count, ROOT, workers=None, database=None)
        print(f"memory: imported {count:,} readers in {time.perf_counter() - started:.0f} s")
        env = dict(setup.env)
        dry = run_timed(series_command(setup.workspace, "send", "--dry-run"), env=env, cwd=ROOT)
        lines = dry.out.count("\n")
        print(f"  dry run: {dry.seconds:.1f} s, peak PSS {dry.peak_mb:.0f} MB ({lines:,} lines)")
        with Sink(TOKEN) as sink:
            sent = setup.send(sink.url)
            accepted = sink.stats()["accepted"]
        print(
            f"  send: {sent.seconds:.1f} s ({count / sent.seconds:,.0f} msg/s), "
            f"peak PSS {sent.peak_mb:.0f} MB, {accepted:,} accepted"
        )
        # The everyday case: the next part falls due for everyone, and the run finds
        # them by their wake-up time (not by planning every enrollment afresh).
        later = (datetime.now(UTC) + timedelta(days=5)).replace(hour=12, minute=0)
        with Sink(TOKEN) as sink:
            woken = setup.send(sink.url, "--now", later.isoformat())
            accepted = sink.stats()["accepted"]
        print(
            f"  next part (woken by bookmark): {woken.seconds:.1f} s, "
            f"peak PSS {woken.peak_mb:.0f} MB, {accepted:,} accepted"
        )
        peak = max(sent.peak_mb, woken.peak_mb)
        note.append(
            f"{count:,} due: dry run peak {dry.peak_mb:.0f} MB, send peak {peak:.0f} MB "
            "(target <= 300 MB each)"
        )


def bench_idle(count: int, runs: int, note: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="series-bench-idle-") as tmp:
        started = time.perf_counter()
        setup = Setup(Path(tmp), count, ROOT, workers=None, database=None)
        print(f"idle: imported {count:,} subscribers in {time.perf_counter() - started:.1f} s")
        # Before anyone enrolled: part 1 is not due yet for anybody.
        before = (datetime.now(UTC) - timedelta(days=1)).isoformat()
        command = series_command(setup.workspace, "send", "--now", before)
        # Start-up as installed: pip writes each module's bytecode; with
        # PYTHONDONTWRITEBYTECODE set (some sandboxes do) every run would compile
        # the package from source again (~0.15 s). The first run writes it.
        env = {k: v for k, v in setup.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        first = run_timed(command, env=env)
        assert first.out.startswith("sent 0,"), first.out
        print(
            f"  first run plans all {count:,}: {first.seconds:.1f} s, "
            f"peak PSS {first.peak_mb:.0f} MB"
        )
        timings = [run_timed(command, env=env) for _ in range(runs)]
        median = statistics.median(t.seconds for t in timings)
        cpu = statistics.median(t.cpu for t in timings)
        print(
            f"  nothing-due run: median {median:.2f} s (CPU {cpu:.2f} s) over {runs} run(s), "
            f"peak PSS {max(t.peak_mb for t in timings):.0f} MB"
        )
        note.append(
            f"nothing-due run, {count:,} enrollments: {median:.2f} s, CPU {cpu:.2f} s "
            "(target <= 1 s)"
        )


def bench_postgres(count: int, runs: int, note: list[str]) -> None:
    """The same send on SQLite and PostgreSQL, then two processes against one. Besides
    wall time, the CPU seconds of `series` and of the two servers it talks to (the
    database, the provider) show where the machine's time goes: on a machine of
    few cores, two processes cannot be faster than the cores left idle by one allow."""
    sqlite: list[Timed] = []
    postgres: list[_ServersTimed] = []
    one: list[_ServersTimed] = []
    two: list[_ServersTimed] = []
    for _ in range(runs):  # alternating, so noise hits all alike
        sqlite.append(send_once(count, 1, ROOT))
        postgres.append(postgres_send(count))
    for _ in range(runs):
        one.append(postgres_send(count))
        two.append(postgres_send(count, processes=2))
    s = statistics.median(t.seconds for t in sqlite)
    s_cpu = statistics.median(t.cpu for t in sqlite)
    p = statistics.median(t.timed.seconds for t in postgres)
    print(f"PostgreSQL vs SQLite, {count:,} messages, 1 worker, {runs} run(s), medians:")
    print(f"  SQLite:     {s:6.1f} s, {count / s:7,.0f} msg/s, CPU series {s_cpu:5.1f} s")
    print(f"  PostgreSQL: {_servers_line(count, postgres)}")
    note.append(f"PostgreSQL ÷ SQLite: {p / s:.2f}x (target <= 1.25x)")
    o = statistics.median(t.timed.seconds for t in one)
    w = statistics.median(t.timed.seconds for t in two)
    print(f"two `series send` started at once vs one, PostgreSQL, {count:,} messages:")
    print(f"  one: {_servers_line(count, one)}")
    print(f"  two: {_servers_line(count, two)}")
    cores = os.cpu_count() or 1
    busy = statistics.median(t.busy for t in one)
    others = statistics.median(t.others for t in [*one, *two])
    ceiling = max(cores - others, busy) / busy
    print(
        f"  one process keeps {busy:.2f} of {cores} cores busy (series, PostgreSQL and the "
        f"provider), other programs {others:.2f}: two can be at most {ceiling:.2f}x "
        "as fast on this machine now; every message counted once at the fake server"
    )
    note.append(
        f"two processes ÷ one (throughput): {o / w:.2f}x (target >= 1.7x; "
        f"this machine's ceiling now {ceiling:.2f}x)"
    )


@dataclass(frozen=True)
class _ServersTimed:
    timed: Timed
    database_cpu: float | None  # None: a server this benchmark did not start
    provider_cpu: float
    machine_cpu: float  # CPU seconds of every program on the machine meanwhile

    @property
    def busy(self) -> float:
        """Cores kept busy on average by the send: its CPU seconds over the wall time."""
        total = self.timed.cpu + (self.database_cpu or 0) + self.provider_cpu
        return total / self.timed.seconds

    @property
    def others(self) -> float:
        """Cores kept busy on average by everything else on the machine."""
        return max(0.0, self.machine_cpu / self.timed.seconds - self.busy)


def _servers_line(count: int, timings: list[_ServersTimed]) -> str:
    seconds = statistics.median(t.timed.seconds for t in timings)
    cpu = statistics.median(t.timed.cpu for t in timings)
    known = [t.database_cpu for t in timings if t.database_cpu is not None]
    database = f"{statistics.median(known):5.1f} s" if known else "  n/a"
    provider = statistics.median(t.provider_cpu for t in timings)
    return (
        f"{seconds:6.1f} s, {count / seconds:7,.0f} msg/s, CPU series {cpu:5.1f} s, "
        f"PostgreSQL {database}, provider (sink) {provider:5.1f} s"
    )


def postgres_send(count: int, processes: int = 1) -> _ServersTimed:
    """`send_once` on a fresh PostgreSQL database by PROCESSES `series send` at once,
    with the CPU seconds the database server and the provider (the sink) spent meanwhile."""
    with tempfile.TemporaryDirectory(prefix="series-bench-pg-") as tmp, ExitStack() as stack:
        database = stack.enter_context(_postgres_database())
        setup = Setup(Path(tmp), count, ROOT, workers=1, database=database)
        with Sink(TOKEN) as sink:
            server = _postmaster()
            database_before = _tree_cpu(server) if server else 0.0
            provider_before = _tree_cpu(sink.pid)
            machine_before = _machine_cpu()
            timed = setup.send(sink.url, processes=processes)
            machine = _machine_cpu() - machine_before
            provider = _tree_cpu(sink.pid) - provider_before
            database_cpu = _tree_cpu(server) - database_before if server else None
            stats = sink.stats()
    _each_once(timed, count, stats)
    return _ServersTimed(timed, database_cpu, provider, machine)


def _postmaster() -> int | None:
    """The process id of the PostgreSQL server this benchmark started (None for one
    named by SERIES_TEST_DATABASE_URL): the first line of its data folder's
    postmaster.pid."""
    from urllib.parse import unquote

    if _SERVER is None or "host=" not in _SERVER:
        return None
    folder = Path(unquote(_SERVER.split("host=", 1)[1].split("&", 1)[0]))
    try:
        return int((folder / "data" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _machine_cpu() -> float:
    """CPU seconds spent by the whole machine since boot, all cores (Linux /proc/stat:
    every column of the first line but idle and iowait; guest time is inside user)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of a process, of its children it has waited for
    (a database server's finished sessions), and of its live descendants, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo, first = 0, [root], True
    while todo:
        pid = todo.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
            if first:
                total += int(fields[13]) + int(fields[14])  # its waited-for children
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass  # gone meanwhile
        first = False
    return total / tick


def _postgres_database() -> AbstractContextManager[str]:
    """A fresh database on a throwaway PostgreSQL server (see tests/databases.py)."""
    from contextlib import contextmanager

    from tests.databases import fresh_database, postgres_server

    @contextmanager
    def database() -> Iterator[str]:
        global _SERVER
        if _SERVER is None:
            _SERVER = _STACK.enter_context(postgres_server())
            if _SERVER is None:
                sys.exit("--postgres needs PostgreSQL's binaries (apt-get install postgresql)")
        with fresh_database(_SERVER) as url:
            yield url

    return database()


_STACK = ExitStack()
_SERVER: str | None = None


def outbox_once(count: int, code: Path) -> float:
    """One `series send` of COUNT due messages to the outbox provider (the default: an
    .eml file per message) with the code at CODE: its seconds."""
    with tempfile.TemporaryDirectory(prefix="series-bench-outbox-") as tmp:
        workspace = make_workspace(Path(tmp), None, code)
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


def bench_outbox(count: int, runs: int, against: dict[str, Path], note: list[str]) -> None:
    """`series send` to the outbox: messages/s end to end, alternating with AGAINST."""
    trees = {"this tree": ROOT, **against}
    timings: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(runs):
        for name, code in trees.items():
            timings[name].append(outbox_once(count, code))
    for name, seconds in timings.items():
        median = statistics.median(seconds)
        print(
            f"outbox ({name}): {count:,} .eml files, {runs} run(s), median {median:.1f} s, "
            f"{count / median:,.0f} messages/s"
        )
    rate = count / statistics.median(timings["this tree"])
    note.append(f"outbox: {rate:,.0f} messages/s (target >= 5x the email-package build)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--workers", default="1,2", help="worker counts to measure, e.g. 1,2")
    parser.add_argument("--memory", type=int, default=1_000_000, help="readers due (0: skip)")
    parser.add_argument("--idle", type=int, default=1_000_000, help="enrollments (0: skip)")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL sections")
    parser.add_argument(
        "--outbox", type=int, default=10_000, help="messages to the outbox provider (0: skip)"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--against", metavar="REV", help="also measure git revision REV")
    args = parser.parse_args()
    note: list[str] = []
    with _STACK, tempfile.TemporaryDirectory(prefix="series-bench-rev-") as tmp:
        against = {}
        if args.against:
            against[args.against] = export_revision(args.against, Path(tmp))
        if args.subscribers:
            workers = [int(w) for w in args.workers.split(",")]
            bench_limit(args.subscribers, args.runs, workers, against, note)
        if args.memory:
            bench_memory(args.memory, note)
        if args.idle:
            bench_idle(args.idle, args.runs, note)
        if args.postgres and args.subscribers:
            bench_postgres(args.subscribers, args.runs, note)
        if args.outbox:
            bench_outbox(args.outbox, args.runs, against, note)
    print("\nAgainst the targets (issue 16), from this run:")
    for line in note:
        print(f"  {line}")


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
