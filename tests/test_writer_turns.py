"""Writers on one SQLite file take turns on an flock of ``state.db-lock``
(store.turns.WriterTurns): held for exactly a write transaction, by one process at a time,
never by a reader, and never a reason to hang."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline.store import Store, open_store
from pipeline.store.turns import WriterTurns

fcntl = pytest.importorskip("fcntl")  # the turns are a POSIX flock


def held_elsewhere(lock: Path) -> bool:
    """Whether another open file holds the lock (tried from a descriptor of our own)."""
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return open_store(tmp_path)


def lock_of(store: Store) -> Path:
    return Path(str(store.engine.url.database) + "-lock")


def test_a_write_transaction_holds_the_turn_and_a_read_does_not(store: Store) -> None:
    lock = lock_of(store)
    with store.begin() as conn:
        conn.execute(sa.text("SELECT 1"))
        assert lock.exists() and held_elsewhere(lock)
    assert not held_elsewhere(lock)
    with store.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
        assert not held_elsewhere(lock)
    assert lock.stat().st_size == 0  # an empty file: nothing of anyone's in it


def _write_after_turn(url: str, root: str, entered: multiprocessing.synchronize.Event) -> None:
    other = open_store(Path(root), url, migrate=False)
    with other.begin() as conn:
        entered.set()
        conn.execute(sa.text("UPDATE settings SET value = value WHERE key = 'none'"))
    other.close()


def test_a_second_process_waits_for_the_turn_then_writes(store: Store, tmp_path: Path) -> None:
    """Another process's writer does not start its transaction while this one holds
    the turn, and does once it is given back."""
    context = multiprocessing.get_context("spawn")
    entered = context.Event()
    child = None
    try:
        with store.begin() as conn:
            conn.execute(sa.text("UPDATE settings SET value = value WHERE key = 'none'"))
            child = context.Process(
                target=_write_after_turn, args=(store.url, str(tmp_path), entered)
            )
            child.start()
            assert not entered.wait(1.0)  # waiting for our turn to end
        assert entered.wait(20)
    finally:
        if child is not None:
            child.join(20)
    assert child.exitcode == 0


def test_threads_of_one_process_take_turns_too(store: Store) -> None:
    """Two threads writing at once (the send loop's record and its sender's gate, or
    `series serve`'s request threads) take turns like processes do: the second writes
    once the first is done, and the flock is given back in between."""
    lock = lock_of(store)
    done = threading.Event()

    def second() -> None:
        with store.begin() as conn:
            conn.execute(sa.text("SELECT 1"))
        done.set()

    with store.begin() as conn:
        conn.execute(sa.text("SELECT 1"))
        thread = threading.Thread(target=second)
        thread.start()
        assert not done.wait(0.5)  # its turn comes after this transaction
        assert held_elsewhere(lock)
    thread.join(20)
    assert done.is_set()
    assert not held_elsewhere(lock)


def _busy_writer(url: str, root: str, stop: multiprocessing.synchronize.Event) -> None:
    """Three threads writing back to back until ``stop`` is set (at most 30 s)."""
    busy = open_store(Path(root), url, migrate=False)
    end = time.monotonic() + 30

    def write() -> None:
        while not stop.is_set() and time.monotonic() < end:
            with busy.begin() as conn:
                conn.execute(sa.text("UPDATE settings SET value = value WHERE key = 'none'"))

    threads = [threading.Thread(target=write) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    busy.close()


def test_a_process_whose_threads_never_pause_still_lets_another_write(
    store: Store, tmp_path: Path
) -> None:
    """A process whose threads keep writing (a burst of one-click unsubscribes on
    `series serve`) gives the turn back after each transaction: another process's
    writes get in while it goes on, not only once it stops or after the patience."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    busy = context.Process(target=_busy_writer, args=(store.url, str(tmp_path), stop))
    busy.start()
    try:
        time.sleep(1.0)  # the busy process is writing
        assert busy.is_alive()
        for _ in range(5):
            with store.begin() as conn:
                conn.execute(sa.text("UPDATE settings SET value = value WHERE key = 'none'"))
        assert busy.is_alive()  # our writes got in while it was still writing
    finally:
        stop.set()
        busy.join(40)
    assert busy.exitcode == 0


def test_a_turn_never_kept_gives_way_after_patience(tmp_path: Path) -> None:
    """A turn held by something that never lets go (a stuck process) delays a writer by
    its patience only; SQLite's own lock then decides."""
    path = tmp_path / "db-lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        turns = WriterTurns(path, patience=0.2)
        with turns.turn():
            pass
    finally:
        os.close(fd)


def test_no_turns_for_postgresql_or_memory() -> None:
    assert WriterTurns.for_engine(sa.create_engine("sqlite://")).path is None
    engine = sa.create_engine("postgresql+psycopg://u@127.0.0.1:1/x")
    assert WriterTurns.for_engine(engine).path is None
