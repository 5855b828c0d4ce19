"""`series send`: plan → claim → render → provider → record, in batches.

Nothing is held only in memory: a delivery is claimed in the database before it
is sent and its outcome recorded right after, so a run killed at any moment
leaves claims that the next run resolves (DESIGN §7).

The stages, one module each: `reconcile` (deliveries an earlier run left unknown),
`planning` (who is due), `compose` (rendering and each reader's message),
`deliver` (claims and the send loop), `attempts` (provider requests and their
retries), `recording` (outcomes and bookmarks) and `workers` (the same, shared out to
processes for large runs); `run` holds what they share.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence

from ..config import Config
from ..content import Series, load_series
from ..errors import ContentError, SeriesError
from ..plan import Step
from ..providers import Provider
from ..store import Store, StoreError, bulk
from ..store.ledger import Due
from .attempts import RETRIES
from .compose import first_line, personal_message
from .deliver import deliver
from .planning import (
    Share,
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
    """Plan a chunk of enrollments, send what is due in it, then the next: memory holds
    one chunk, not the list. Every article that can go out is rendered before the
    first chunk is planned (a broken template stops the run before anything is sent)."""
    options = run.options
    if options.on_total:
        options.on_total(to_plan(run, series_list))
    for series in series_list:
        for share in shares(run, series, SEND_GROUP):
            _deliver_share(run, series_list, series, share)
            if run.stopped():
                return


# Due deliveries sent as one stream (one batch in flight while the next is prepared):
# chunks of the plan are gathered up to this many first, so the stream seldom restarts.
SEND_GROUP = 20_000


def _deliver_share(run: Run, series_list: Sequence[Series], series: Series, share: Share) -> None:
    """Plan and send one share of a series' enrollments (see `planning.shares`), chunk by
    chunk; render everything first, before the first delivery of the run."""
    pending: list[tuple[Series, Due, Step]] = []
    for due in plan_chunks(run, series, share.shard, everything=share.everything):
        if run.stopped():
            return
        pending += due
        if len(pending) >= SEND_GROUP:
            _deliver_group(run, series_list, pending)
            pending = []
    if pending and not run.stopped():
        _deliver_group(run, series_list, pending)


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
