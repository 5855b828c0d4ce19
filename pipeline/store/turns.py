"""Turns for the writers of one SQLite file (``WriterTurns``): who writes next, across
the threads of a process and across processes."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import Engine

try:
    import fcntl
except ImportError:  # Windows: SQLite's busy timeout alone
    fcntl = None  # type: ignore[assignment]


class WriterTurns:
    """Write transactions on one SQLite file take turns, one at a time across the
    threads of a process and, through an ``flock`` of a file beside the database
    (``state.db-lock``, empty), across processes: a run's workers, a second run,
    `series serve`. A writer waiting for its turn looks every millisecond, where
    SQLite's own busy handler sleeps ever longer between looks (up to 100 ms each,
    https://sqlite.org/c3ref/busy_timeout.html): two sending workers spent 28% of
    their time asleep in BEGIN IMMEDIATE (py-spy), and the lock passes on at once now.

    The turns only order our writers, SQLite's locks still decide: a writer that has
    not had its turn after ``patience`` seconds (another process's writers never let
    go, or one is stuck), or on a system without flock, goes on to BEGIN IMMEDIATE
    and SQLite's busy timeout, as without turns."""

    POLL = 0.001  # seconds between looks while another process has the turn

    def __init__(self, path: Path | None, patience: float = 2.0) -> None:
        self.path = path
        self.patience = patience
        self._turn = threading.RLock()  # this process's turn, one thread at a time
        self._depth = 0  # how deep the holding thread is (a nested write transaction)
        self._locked = False  # whether this process holds the flock
        self._fd: int | None = None
        self._pid = os.getpid()

    @classmethod
    def for_engine(cls, engine: Engine) -> WriterTurns:
        """Turns for a SQLite file database; none (a no-op) for PostgreSQL, a database
        in memory, or one named by a ``file:`` URI (its file is not a plain path)."""
        url = engine.url
        database = url.database if engine.dialect.name == "sqlite" else None
        if (
            not database
            or database == ":memory:"
            or database.startswith("file:")
            or url.query.get("uri")
            or fcntl is None
        ):
            return cls(None)
        return cls(Path(database + "-lock"))

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Hold the turn to write for the ``with`` block (or go on without it once
        ``patience`` has run out)."""
        if self.path is None:
            yield
            return
        deadline = time.monotonic() + self.patience
        held = self._turn.acquire(timeout=self.patience)
        try:
            if held:
                self._depth += 1
                if self._depth == 1:
                    self._locked = self._lock_file(deadline)
            yield
        finally:
            if held:
                self._depth -= 1
                if self._depth == 0 and self._locked:
                    self._unlock_file()
                self._turn.release()

    def _lock_file(self, deadline: float) -> bool:
        fd = self._open()
        if fd is None:
            return False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(self.POLL)
            except OSError:
                return False  # a file system without flock: SQLite's busy timeout alone

    def _unlock_file(self) -> None:
        self._locked = False
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _open(self) -> int | None:
        if self._fd is not None and self._pid != os.getpid():
            # Forked: that descriptor shares the parent's lock. Closing it here leaves
            # the parent's lock alone (only an unlock through it would not).
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if self._fd is None and self.path is not None:
            try:
                # Read-only is enough for flock: another user (a `series serve` running
                # under its own account) can take turns on a file the first one made.
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError:
                return None  # a read-only folder: SQLite's busy timeout alone
            self._pid = os.getpid()
        return self._fd

    def close(self) -> None:
        """Close the lock file (the turn, if held, goes with it)."""
        if self._fd is not None and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None
