"""What every stage of a run shares: its options, its report, its clock and its state.

A run goes plan → claim → render → provider → record; each stage is its own module
in this package and works on one `Run`.
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import pickle
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, TYPE_CHECKING, ClassVar

from ..config import Config
from ..content import Series
from ..providers import Provider, ProviderError
from ..store import Store, ledger
from ..tokens import Signer

if TYPE_CHECKING:
    from .compose import Composer
    from .limiter import RateLimiter

LEASE = timedelta(minutes=15)
# How often a sleeping run (rate limit, backoff) looks whether it was asked to stop.
SLEEP_SLICE = 0.2


@dataclass(frozen=True)
class Planned:
    """One line of the plan: who gets (or waits for) which part, when and why."""

    email: str
    series: str
    part: int | None
    title: str
    due_at: datetime | None
    kind: str
    reason: str


class PlannedRows:
    """The lines of a dry run's plan, in the order an editor reads them (`ORDER`: due
    now first, then by time), held in memory up to ``SPILL`` lines: beyond, each full
    buffer is sorted and written to a temporary file, and reading merges the files. A
    plan of a million readers takes the memory of one buffer."""

    SPILL = 20_000
    ORDER: ClassVar[dict[str, int]] = {
        "due": 0,
        "held": 1,
        "scheduled": 2,
        "in_flight": 3,
        "unknown": 4,
        "waiting": 5,
        "gave_up": 6,
        "paused": 7,
    }

    def __init__(self) -> None:
        self._buffer: list[Planned] = []
        self._files: list[IO[bytes]] = []
        self._count = 0

    @classmethod
    def key(cls, p: Planned) -> tuple[int, datetime, str, str]:
        never = datetime.max.replace(tzinfo=UTC)
        return (cls.ORDER.get(p.kind, 9), p.due_at or never, p.series, p.email)

    def append(self, row: Planned) -> None:
        self._buffer.append(row)
        self._count += 1
        if len(self._buffer) >= self.SPILL:
            self._spill()

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Planned]:
        """Every line, sorted; may be read more than once."""
        self._buffer.sort(key=self.key)
        runs = [self._read(f) for f in self._files]
        return heapq.merge(*runs, iter(list(self._buffer)), key=self.key)

    def _spill(self) -> None:
        self._buffer.sort(key=self.key)
        spill = tempfile.TemporaryFile(prefix="series-plan-")  # noqa: SIM115 (lives with the report)
        for start in range(0, len(self._buffer), 1000):
            pickle.dump(self._buffer[start : start + 1000], spill)
        self._files.append(spill)
        self._buffer = []

    @staticmethod
    def _read(spill: IO[bytes]) -> Iterator[Planned]:
        spill.seek(0)
        end = spill.seek(0, 2)
        position = 0
        while position < end:
            spill.seek(position)
            rows = pickle.load(spill)  # a file this run wrote itself
            position = spill.tell()
            yield from rows


class ProblemLines:
    """The report's problem lines (one per failed delivery, and a few about the run), in
    the order they came: the first ``KEEP`` in memory, the rest in a temporary file, so
    a run where a million deliveries fail holds as little as one where a few do. A list
    to read: iterate, ``len``, index, compare with a list."""

    KEEP = 1000

    def __init__(self, lines: Iterable[str] = ()) -> None:
        self._start(lines)

    def _start(self, lines: Iterable[str]) -> None:
        self._kept: list[str] = []
        self._file: IO[str] | None = None
        self._count = 0
        self.extend(lines)

    def append(self, line: str) -> None:
        self._count += 1
        if len(self._kept) < self.KEEP:
            self._kept.append(line)
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile(  # noqa: SIM115 (lives with the report)
                "w+", encoding="utf-8", prefix="series-problems-"
            )
        self._file.seek(0, os.SEEK_END)
        self._file.write(json.dumps(line) + "\n")  # a line may hold a line break

    def extend(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.append(line)

    def __iadd__(self, lines: Iterable[str]) -> ProblemLines:
        self.extend(lines)
        return self

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        """Every line, in order; may be read more than once."""
        yield from list(self._kept)
        if self._file is not None:
            self._file.flush()
            self._file.seek(0)
            for raw in self._file:
                yield json.loads(raw)

    def __getitem__(self, index: int) -> str:
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(index)
        if index < len(self._kept):
            return self._kept[index]
        return next(itertools.islice(iter(self), index, None))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ProblemLines | list):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, like a list

    def __repr__(self) -> str:
        return f"ProblemLines({list(self)!r})"

    def __getstate__(self) -> tuple[list[str]]:
        return (list(self),)  # as a list (a worker sends its own in parts: see workers)

    def __setstate__(self, state: tuple[list[str]]) -> None:
        self._start(state[0])


@dataclass
class SendReport:
    sent: int = 0
    failed: int = 0
    retried: int = 0
    unknown: int = 0
    skipped: int = 0
    resolved: int = 0
    # Due when the run planned them, but the reader's send window had closed by the
    # time their message was to be handed over: given back for its next opening.
    held: int = 0
    # Of ``failed`` and ``unknown``: deliveries an earlier run left unknown that this
    # run's `reconcile` could not settle, or tried again without success. Not counted
    # among what this run ``delivered``.
    carried: int = 0
    stopped: str | None = None  # the signal that stopped the run early ("SIGTERM")
    planned: PlannedRows = field(default_factory=PlannedRows)
    problems: ProblemLines = field(default_factory=ProblemLines)
    # Where the content no longer matches what readers received (dry runs only).
    warnings: list[str] = field(default_factory=list)

    def merge(self, other: SendReport) -> None:
        self.sent += other.sent
        self.failed += other.failed
        self.retried += other.retried
        self.unknown += other.unknown
        self.carried += other.carried
        self.skipped += other.skipped
        self.held += other.held
        self.stopped = self.stopped or other.stopped
        self.problems += other.problems

    @property
    def delivered(self) -> int:
        """Deliveries this run's send loop handed to the provider (or failed before it)
        and recorded; an earlier run's, settled or not by this one, are not among them."""
        return self.sent + self.failed + self.unknown - self.carried

    def summary(self) -> str:
        return (
            f"sent {self.sent}, failed {self.failed}, retried {self.retried}, "
            f"unknown {self.unknown}, skipped {self.skipped}"
        )


class Stop:
    """A request to stop early: a signal handler (``signal.signal(SIGTERM, stop)``) sets
    it, and the run ends after the batch in flight, recorded, giving back the claims it
    has not used. In a worker process it is also set when the parent process is gone."""

    def __init__(self) -> None:
        self.reason: str | None = None  # "SIGTERM", "SIGINT"
        self.parent: int | None = None  # a worker's parent pid, watched between batches

    def __call__(self, signum: int, frame: object = None) -> None:
        self.reason = signal.Signals(signum).name

    def requested(self) -> str | None:
        """Why the run must stop, or None to go on."""
        if self.reason is None and self.parent is not None and os.getppid() != self.parent:
            self.reason = "the end of the parent process"
        return self.reason


@dataclass
class SendOptions:
    now: datetime
    dry_run: bool = False
    limit: int | None = None
    only: str | None = None
    provider_name: str = "outbox"  # to make a fresh provider in each worker process
    workers: int = 1  # processes sending in parallel (each its own share of batches)
    on_progress: Callable[[int], None] | None = None
    on_total: Callable[[int], None] | None = None
    # Seconds to wait (rate limit, backoff); None: really wait, but wake when stopped.
    sleep: Callable[[float], None] | None = None
    monotonic: Callable[[], float] = time.monotonic
    lease: timedelta = LEASE  # how long a claim is held before another run may take it
    stop: Stop = field(default_factory=Stop)


# The send loop's helper threads: (sending, recording, claiming).
_Threads = tuple[ThreadPoolExecutor, ThreadPoolExecutor, ThreadPoolExecutor]


class Run:
    """One `series send`: the store and provider it uses, what it has learnt so far
    (the series it planned and their fingerprints), and what it reports."""

    def __init__(
        self,
        config: Config,
        store: Store,
        provider: Provider,
        options: SendOptions,
        report: SendReport,
    ) -> None:
        from .compose import Composer
        from .limiter import RateLimiter

        self.config = config
        self.store = store
        self.provider = provider
        self.options = options
        self.report = report
        self.token = uuid.uuid4().hex  # marks this run's claims in the ledger
        self.series: dict[str, Series] = {}
        self.versions: dict[str, str] = {}  # series slug → the fingerprint planned with
        self.composer: Composer = Composer(self)
        self.limiter: RateLimiter = RateLimiter(config.rate_limit, options.monotonic, self.sleep)
        # Set when the provider stopped the run after a request that may have gone
        # through: that batch is recorded unknown first, then the run stops.
        self.halt: ProviderError | None = None
        self.workers = 1  # processes sending this run's share (set in each worker)
        self.started = options.monotonic()
        self._signer: Signer | None = None
        self._threads: _Threads | None = None

    def threads(self) -> _Threads:
        """The send loop's helper threads, (sending, recording, claiming), one task at a
        time each: started at first use and kept until `close` (a thread starts only
        when first given a task). A PostgreSQL run delivers share after share, and a
        worker chunk after chunk: starting threads for each took 3% of the loop's time
        (py-spy, 30,000 messages)."""
        if self._threads is None:
            send, record, claim = (
                ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"series-{name}")
                for name in ("send", "record", "claim")
            )
            self._threads = (send, record, claim)
        return self._threads

    def close(self) -> None:
        """Stop the helper threads, once what they were given is done."""
        threads, self._threads = self._threads, None
        for pool in threads or ():
            pool.shutdown(wait=True)

    def clock(self) -> datetime:
        """The run's current time: `now` as given, plus the time the run has taken.
        Leases and ledger times use it, so a long run's later claims are not born
        expired; with --now, time still moves on from the moment asked for."""
        return self.options.now + timedelta(seconds=self.options.monotonic() - self.started)

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (a rate limit, a backoff), cut short when the run is asked to
        stop: a run waiting minutes for its rate never keeps a SIGTERM waiting."""
        if self.options.sleep is not None:
            self.options.sleep(seconds)
            return
        end = time.monotonic() + seconds
        while not self.stopping() and (left := end - time.monotonic()) > 0:
            time.sleep(min(left, SLEEP_SLICE))

    def stopping(self) -> str | None:
        """Why the run must stop after the batch in flight (a signal), or None."""
        return self.options.stop.requested()

    def stopped(self) -> bool:
        """Whether the run was asked to stop; if so the report says why."""
        self.report.stopped = self.report.stopped or self.stopping()
        return self.report.stopped is not None

    def stop_if_halted(self) -> None:
        if self.halt is not None:
            raise self.halt

    @property
    def signer(self) -> Signer:
        """What signs this run's unsubscribe links (read from the store once)."""
        if self._signer is None:
            with self.store.connect() as conn:
                self._signer = ledger.link_signer(conn)
        return self._signer
