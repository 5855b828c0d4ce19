"""`series send`: plan → claim → render → provider → record, in batches.

Nothing is held only in memory: a delivery is claimed in the database before it
is sent and its outcome recorded right after, so a run killed at any moment
leaves claims that the next run resolves (DESIGN §7).

The stages, one module each: `reconcile` (deliveries an earlier run left unknown),
`planning` (who is due), `compose` (rendering and each reader's message),
`deliver` (claims, provider requests, retries, outcomes) and `workers` (the same,
shared out to processes for large runs); `run` holds what they share.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
from collections.abc import Callable, Generator, Sequence
from typing import cast

from ..config import Config
from ..content import Series, load_series
from ..errors import ContentError, SeriesError
from ..plan import Step
from ..providers import Provider
from ..store import Store, StoreError, bulk
from ..store.ledger import Due
from .compose import first_line, personal_message
from .deliver import RETRIES, deliver
from .planning import (
    ShareLocks,
    dry_run_rows,
    earliest,
    hold_back,
    mark_planned,
    needs_full_plan,
    plan_chunks,
    shares,
    to_plan,
)
from .reconcile import reconcile
from .run import LEASE, Planned, Run, SendOptions, SendReport
from .workers import plan_and_deliver_in_parallel, workers_for

log = logging.getLogger(__name__)

__all__ = [
    "LEASE",
    "RETRIES",
    "Planned",
    "SendOptions",
    "SendReport",
    "dry_run_rows",
    "load_selected",
    "personal_message",
    "send_due",
]


def send_due(config: Config, store: Store, provider: Provider, options: SendOptions) -> SendReport:
    """Send every part that is due (or, with ``dry_run``, say what would be sent).

    Asked to stop (``options.stop``, set by a signal handler), it ends after the batch
    in flight and says so in ``report.stopped``; what it did not send is sent by the
    next run. Raises ContentError when the content has errors (before anything is
    sent), ProviderError when the provider refuses the run (credentials, quota), and
    SeriesError for other problems that stop the run."""
    series_list = load_selected(config, options.only)
    _refresh_statistics(store)
    report = SendReport()
    run = Run(config, store, provider, options, report)
    try:
        _send(run, series_list)
    finally:
        run.close()  # the send loop's threads, done with
    return report


def _send(run: Run, series_list: Sequence[Series]) -> None:
    """`send_due`'s work, its report in ``run.report``."""
    store, options, report = run.store, run.options, run.report
    report.warnings += [
        f"{s.source}/series.yml: series paused (paused: true): nothing is sent to its readers "
        "until the line is removed"
        for s in series_list
        if s.paused
    ]
    if options.dry_run:
        from ..edits import history_problems

        report.warnings += [str(p) for p in history_problems(store, series_list)]
    else:
        reconcile(run, series_list)
    if run.stopped():
        return
    workers = workers_for(run, series_list)
    if workers > 1:
        run.composer.prepare(series_list)
        # The compiled emails live for the whole run: keep the cycle collector from
        # walking them, and forked workers from copying their pages by touching them.
        gc.freeze()
        plan_and_deliver_in_parallel(run, series_list, workers)
        return
    full = [s for s in series_list if needs_full_plan(run, s)]
    if options.limit is None and not options.dry_run:
        _plan_and_deliver_in_chunks(run, series_list)
        if not run.stopped():
            mark_planned(run, full)
        return
    if options.dry_run and options.limit is None:
        # The plan goes into the report (spilled to files when long), chunk by chunk.
        for series in series_list:
            for due_now in plan_chunks(run, series):
                run.composer.prepare(series_list, due_now)
        run.composer.prepare(series_list)
        return
    # --limit N: the N due first are sent, the others held back for the next run (as
    # soon as they cannot be among the first N: memory holds about 2N, not the list).
    assert options.limit is not None

    def held(items: list[tuple[Series, Due, Step]]) -> None:
        report.skipped += len(items)
        hold_back(run, items)

    due = earliest(
        (chunk for series in series_list for chunk in plan_chunks(run, series)),
        options.limit,
        key=lambda item: item[2].due_at or options.now,
        drop=held,
    )
    if due or options.dry_run:
        run.composer.prepare(series_list, due)
    if options.dry_run:
        return
    if due and not run.stopped():
        if options.on_total:
            options.on_total(len(due))
        gc.freeze()  # the plan lives to the end of the run; see above
        deliver(run, due)
    # Only once every due delivery was handled may later runs skip the full plan:
    # a run cut short leaves the marker, and the next run plans everyone again.
    if not run.stopped():
        mark_planned(run, full)


def _plan_and_deliver_in_chunks(run: Run, series_list: Sequence[Series]) -> None:
    """Plan a group of enrollments, send what is due in it, then the next: memory holds
    one group, not the list. Every article that can go out is rendered before the
    first group is planned (a broken template stops the run before anything is sent).

    On PostgreSQL the next group is planned in a thread of its own while this one is
    sent (`_planned_ahead`): its statements are another process's work, and a run
    waiting for each group's plan had nothing on its way to the provider meanwhile
    (100,000 messages: 3.5 of 29.4 s)."""
    options = run.options
    if options.on_total:
        options.on_total(to_plan(run, series_list))
    locks = ShareLocks(run)
    groups = _groups(run, series_list, locks)
    if run.store.dialect == "postgresql":
        groups = _planned_ahead(groups)
    try:
        for group in groups:
            if callable(group):
                group()  # every delivery of a part is recorded: it is done
                continue
            if run.stopped():
                return
            _deliver_group(run, series_list, group)
            if run.stopped():
                return
    finally:
        groups.close()  # on PostgreSQL: the planning thread is over once this returns
        locks.close()


# Due deliveries sent as one stream (one batch in flight while the next is prepared):
# chunks of the plan are gathered up to this many first, so the stream seldom restarts.
SEND_GROUP = 20_000

# What `_groups` yields: due deliveries to send together, or a part's `Share.done`, to
# be called once everything before it is sent and recorded.
Group = list[tuple[Series, Due, Step]] | Callable[[], None]


def _groups(
    run: Run, series_list: Sequence[Series], locks: ShareLocks
) -> Generator[Group, None, None]:
    """The run's due deliveries in groups of about ``SEND_GROUP``, part after part of
    each series (see `planning.shares`), each part followed by its ``done``. Planning
    a chunk writes the bookmarks of those not due; it stops between chunks when the
    run is asked to stop."""
    for series in series_list:
        for share in shares(run, series, SEND_GROUP, locks):
            pending: list[tuple[Series, Due, Step]] = []
            for due in plan_chunks(run, series, share.shard, everything=share.everything):
                if run.stopping():
                    return
                pending += due
                if len(pending) >= SEND_GROUP:
                    yield pending
                    pending = []
            if run.stopping():
                return
            if pending:
                yield pending
            yield share.done


def _deliver_group(
    run: Run, series_list: Sequence[Series], due: list[tuple[Series, Due, Step]]
) -> None:
    due.sort(key=lambda item: item[2].due_at or run.options.now)
    if run.composer.renderer is None:
        run.composer.prepare(series_list, due)
        gc.freeze()  # the compiled emails live to the end of the run; see above
    else:
        run.composer.prepare_due(due)
    deliver(run, due)


def _refresh_statistics(store: Store) -> None:
    """PostgreSQL: let the planner know the list before a run looks it up in batches
    (`bulk.refresh_statistics`). Not getting to it (another session analysing the same
    tables for longer than the wait, a read-only standby) is no reason to stop the run:
    what the database cannot do for the run itself is reported where the run does it."""
    if store.dialect != "postgresql":
        return
    import sqlalchemy as sa

    try:
        with store.begin() as conn:
            bulk.refresh_statistics(conn)
    except (sa.exc.DBAPIError, StoreError) as exc:
        log.info("statistics left as they are: %s", first_line(exc))


def load_selected(config: Config, only: str | None) -> list[Series]:
    """The workspace's series (or just ONLY), stopping on any content error.
    Raises ContentError (every problem, `path:line: message`) or SeriesError."""
    series_list, problems = load_series(config)
    if any(p.is_error for p in problems):
        raise ContentError(problems)
    if only is not None:
        chosen = [s for s in series_list if s.slug == only]
        if not chosen:
            names = ", ".join(s.slug for s in series_list) or "none"
            raise SeriesError(f"unknown series '{only}' (series in this workspace: {names})")
        return chosen
    return series_list


_END = object()


def _planned_ahead(groups: Generator[Group, None, None]) -> Generator[Group, None, None]:
    """``groups``, made in a thread of its own one group ahead of the caller: while the
    caller sends one group, the next is planned (a part's ``done`` does not count: the
    thread goes on past it). What the thread raises is raised here, after the groups
    made before it. Once the caller is through or stops early, the thread is waited
    for (it ends within the chunk it is planning)."""
    handoff: queue.SimpleQueue[tuple[object, BaseException | None]] = queue.SimpleQueue()
    room = threading.Semaphore(0)  # released each time the caller takes a group
    quit = threading.Event()

    def make() -> None:
        try:
            for group in groups:
                handoff.put((group, None))
                if not callable(group):
                    room.acquire()
                if quit.is_set():
                    break
        except BaseException as exc:  # the caller raises it, in its own thread
            handoff.put((None, exc))
        try:
            groups.close()  # the caller stopped early: where the plan was, it ends
        except Exception:  # the caller has stopped already: its reason is the news
            log.debug("ending the plan made ahead failed", exc_info=True)
        handoff.put((_END, None))

    thread = threading.Thread(target=make, name="series-plan", daemon=True)
    thread.start()
    try:
        while True:
            group, error = handoff.get()
            if error is not None:
                raise error
            if group is _END:
                return
            if not callable(group):
                room.release()
            yield cast(Group, group)
    finally:
        quit.set()
        room.release()
        thread.join()
