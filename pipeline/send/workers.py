"""Large runs: the enrollments are shared out to worker processes by id, each
planning and sending its own share on its own core. The claim protocol already
makes concurrent senders safe; the parent adds up what the workers report.

A worker never sends on its own: asked to stop, the parent passes SIGTERM on to
its workers, and each stops after its batch in flight, recorded; when the parent
is gone, even by SIGKILL, the kernel sends the worker SIGTERM (Linux's
PR_SET_PDEATHSIG), and elsewhere the worker notices between batches that its
parent has changed."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import itertools
import multiprocessing
import multiprocessing.queues
import os
import queue
import random
import signal
import sys
from collections.abc import Sequence
from typing import Any

from ..content import Series
from ..errors import SeriesError
from ..providers import ProviderError, get_provider
from ..store import ledger, open_store
from ..store.ledger import Shard
from .deliver import deliver
from .limiter import RateLimiter
from .planning import mark_planned, needs_full_plan, plan_chunks, to_plan
from .run import ProblemLines, Run, SendReport, Stop

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
PROBLEMS_AT_ONCE = 1000  # problem lines a worker sends its parent in one message


def workers_for(run: Run, series_list: Sequence[Series]) -> int:
    """Worker processes for this run: several only for a large, unlimited real send."""
    options = run.options
    if options.workers < 2 or options.dry_run or options.limit is not None:
        return 1
    if not hasattr(os, "fork"):
        return 1
    batch_size = run.provider.batch_size
    enough = 2 * options.workers * batch_size
    with run.store.connect() as conn:
        work = sum(
            ledger.count_to_plan(
                conn, s.slug, now=options.now, everything=needs_full_plan(run, s), cap=enough
            )
            for s in series_list
        )
    batches = -(-work // batch_size)
    return max(1, min(options.workers, batches // 2))


def plan_and_deliver_in_parallel(run: Run, series_list: Sequence[Series], workers: int) -> None:
    """Share the enrollments out to worker processes by id, each planning and sending
    its own share, and add up what they report. Raises what a worker's failure means:
    ProviderError (auth) or SeriesError."""
    options = run.options
    full = [s for s in series_list if needs_full_plan(run, s)]
    context = multiprocessing.get_context("fork")
    events: multiprocessing.queues.Queue[tuple[Any, ...]] = context.Queue()
    # The bar counts up to the enrollments to look at: the workers plan as they send.
    total = to_plan(run, series_list) if options.on_total else 0
    run.store.engine.dispose()  # no connection may be shared across a fork
    parent = os.getpid()
    children = [
        context.Process(
            target=_worker, args=(run, series_list, ((k,), workers), events, parent), daemon=True
        )
        for k in range(workers)
    ]
    for child in children:
        child.start()
    failure: tuple[Any, ...] | None = None
    finished = 0
    planned: list[int] = []  # due deliveries per worker, once each has planned
    sent_early = 0  # progress reported before every worker had planned
    forwarded = False
    while finished < workers:
        if not forwarded and run.stopping():
            forwarded = True
            # The report names the signal the run was given (SIGINT, say), not the
            # SIGTERM it passes on to the workers, whose reports are merged into it.
            run.stopped()
            _stop_all(children)
        try:
            event = events.get(timeout=1)
        except queue.Empty:
            if all(not child.is_alive() for child in children) and events.empty():
                failure = failure or ("failed", False, "a worker process died")
                break  # killed: its claims expire and the next run settles them
            continue
        if event[0] == "planned":
            planned.append(event[1])
            if len(planned) == workers:
                if options.on_total:
                    options.on_total(total)
                if options.on_progress and sent_early:
                    options.on_progress(sent_early)
            continue
        if event[0] == "problems":
            run.report.problems += event[1]
            continue
        if event[0] == "progress":
            if len(planned) < workers:
                sent_early += event[1]
            elif options.on_progress:
                options.on_progress(event[1])
            continue
        finished += 1
        if event[0] == "done":
            run.report.merge(event[1])
        else:
            failure = failure or event
    for child in children:
        child.join()
    if failure is not None:
        _, auth, message = failure
        if auth:
            raise ProviderError(message, auth=True)
        raise SeriesError(f"a sending process failed: {message}")
    # Only now, with every share planned and sent, may later runs skip the full plan.
    if not run.stopped():
        mark_planned(run, full)


def _stop_all(children: Sequence[multiprocessing.process.BaseProcess]) -> None:
    """Pass a stop on: each worker ends after its batch in flight, recorded."""
    for child in children:
        if child.pid is not None and child.is_alive():
            with contextlib.suppress(ProcessLookupError):  # it has just ended
                os.kill(child.pid, signal.SIGTERM)


def _worker(
    run: Run,
    series_list: Sequence[Series],
    shard: Shard,
    events: multiprocessing.queues.Queue[tuple[Any, ...]],
    parent: int,
) -> None:
    """One worker process (forked): its own store connection and provider session."""
    options = run.options
    _die_with_parent(options.stop, parent)
    random.seed()  # each worker its own retry jitter
    run.workers = shard[1]
    if run.config.rate_limit:
        # The configured rate is for the whole run: each worker takes its share.
        run.limiter = RateLimiter(run.config.rate_limit / shard[1], options.monotonic, run.sleep)
    try:
        run.store = open_store(run.config.root, run.store.url, migrate=False)
        run.provider = get_provider(options.provider_name, run.config)
        run.report = SendReport()
        options.on_progress = lambda count: events.put(("progress", count))
        events.put(("planned", 0))
        gc.freeze()
        # One chunk of this worker's share at a time: planned, then sent.
        for series in series_list:
            for due in plan_chunks(run, series, shard):
                if run.stopped():
                    break
                # Histories an edit made unusual need their own emails (the parent
                # rendered the in-order ones).
                run.composer.prepare_due(due)
                deliver(run, due)
        # A SIGTERM to this worker alone stops it too: the report says so, and the
        # parent reports the run as stopped (exit 1), not as an ordinary one.
        run.stopped()
        if os.getppid() != parent:
            # Nobody is left to read what this worker did: exit without waiting to say it.
            events.cancel_join_thread()
            return
        # Its problem lines go in parts (a run where every delivery failed has one a
        # delivery), so that neither process holds them all at once.
        problems = iter(run.report.problems)
        while part := list(itertools.islice(problems, PROBLEMS_AT_ONCE)):
            events.put(("problems", part))
        run.report.problems = ProblemLines()
        events.put(("done", run.report))
    except ProviderError as exc:
        events.put(("failed", exc.auth, str(exc)))
    except BaseException as exc:
        events.put(("failed", False, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        run.close()
        run.provider.close()
        run.store.close()


def _die_with_parent(stop: Stop, parent: int) -> None:
    """Stop this worker when the parent ends, whatever ends it: SIGTERM and SIGINT
    set ``stop``; on Linux the kernel sends SIGTERM when the parent dies; anywhere,
    ``stop`` also checks between batches that the parent is still ours."""
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    stop.parent = parent
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the check between batches still stops it
    stop.requested()  # the parent may have ended before the kernel was told
