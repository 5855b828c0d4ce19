"""Planning: which enrollments to look at, each one's next step from the pure
planner, and the bookmark (next wake-up, plan version) that lets a later run skip
everyone with nothing due."""

from __future__ import annotations

import hashlib
import random
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from ..content import Series
from ..plan import Enrollment, Step, fingerprint, next_step
from ..store import ledger
from ..store.ledger import Due, Shard
from .run import Planned, PlannedRows, Run, SendReport

# (enrollment id, its revision as read, next wake-up, plan version, completed at).
Bookmark = tuple[int, int, datetime | None, str, datetime | None]
T = TypeVar("T")


def needs_full_plan(run: Run, series: Series) -> bool:
    """Whether every enrollment must be planned (new content), not just the woken."""
    with run.store.connect() as conn:
        return run.options.dry_run or ledger.plan_marker(conn, series.slug) != fingerprint(series)


def plan_chunks(
    run: Run,
    series: Series,
    shard: Shard | None = None,
    *,
    everything: bool | None = None,
) -> Iterator[list[tuple[Series, Due, Step]]]:
    """Plan one series (or one worker's share of it), one chunk of enrollments
    (``ledger.CHUNK``) at a time: each chunk's deliveries due now, sorted by due time.
    The others get their bookmark; in a dry run each step is noted in the report. A
    run that sends each chunk before planning the next holds one chunk in memory,
    however long the list. The enrollments a chunk sends are not read again by later
    chunks (the pages follow their index). ``everything``: whether every enrollment
    is planned or only those woken (by default as `needs_full_plan` says; a share
    another run has planned for this content needs no full plan, see `shares`)."""
    now = run.options.now
    dry_run = run.options.dry_run
    run.series[series.slug] = series
    version = fingerprint(series)
    run.versions[series.slug] = version
    if everything is None:
        everything = needs_full_plan(run, series)
    for chunk in ledger.iter_enrollments(
        run.store, series.slug, now=now, everything=everything, shard=shard
    ):
        due: list[tuple[Series, Due, Step]] = []
        bookmarks = []
        steps: dict[object, Step] = {}  # the planner is pure: alike readers, one call
        for enrollment in chunk:
            key = enrollment.plan_key()
            step = steps.get(key)
            if step is None:
                step = steps[key] = next_step(series, enrollment, now)
            if dry_run:
                _note(run.report, series, enrollment, step)
            if step.is_due and step.article is not None and step.part is not None:
                due.append((series, Due(enrollment, step.article, step.part), step))
            else:
                bookmarks.append(bookmark(enrollment, step, version, now))
        if not dry_run:
            with run.store.begin() as conn:
                ledger.save_bookmarks(conn, bookmarks)
        due.sort(key=lambda item: item[2].due_at or now)
        yield due


def to_plan(run: Run, series_list: Sequence[Series]) -> int:
    """How many enrollments this run looks at: what a progress bar counts up to before
    the plan is known (each is sent at most one part)."""
    with run.store.connect() as conn:
        return sum(
            ledger.count_to_plan(
                conn,
                s.slug,
                now=run.options.now,
                everything=needs_full_plan(run, s),
                cap=2**62,
            )
            for s in series_list
        )


# PostgreSQL: a series' enrollments are split into this many shares (by id), and each
# `series send` takes the shares no other run is working on first.
SHARES = 16
SHARE_POLL = 0.1  # seconds between looks at a share another run holds
SHARE_WAIT = 60.0  # seconds a run waits for such shares before working on them anyway


@dataclass(frozen=True)
class Share:
    """Part of a series' enrollments for `plan_chunks`: ``shard``, the shares of
    ``SHARES`` it is made of (None: all the enrollments), and whether all of them are
    to be planned (``everything``) or only those woken."""

    shard: Shard | None
    everything: bool


def shares(run: Run, series: Series, group: int) -> Iterator[Share]:
    """The parts of a series' enrollments this run plans and sends, one at a time.
    SQLite (one machine, usually one run): the whole series at once. PostgreSQL, where
    several runs on several machines may work on one list: ``SHARES`` shares, each held
    with a session advisory lock while this run works on it; a share another run holds
    is left for the end, so that concurrent runs share the work instead of racing for
    the same claims. The claims still decide who sends what: the locks only spread
    the work. So the shares still held ``SHARE_WAIT`` after this run is through with
    the others (one wait for all of them) are worked on all the same: their holder may
    be stuck (a hung request, a backoff), and the deliveries whose lease it let run out
    are this run's to send (DESIGN §7), not to wait for.

    Free shares are taken together, as many as hold about ``group`` enrollments to look
    at (`_unit_size`): each part starts the send loop's stream of requests anew and
    waits for its last answer, and a run alone would otherwise do that 16 times for
    a list SQLite sends in one or two streams.

    A run that has planned and sent a whole share for the series' current content
    says so in the database (a plan marker per share, as `mark_planned` does for the
    series). When the share's lock is free again, another run then looks only at its
    woken enrollments, which is nearly nothing: it does not plan again the readers the
    first run has just bookmarked. A share whose run stopped or died halfway has no
    marker, and is planned whole."""
    full = needs_full_plan(run, series)
    if run.store.dialect != "postgresql":
        yield Share(None, full)
        return
    import sqlalchemy as sa

    key = zlib.crc32(series.slug.encode("utf-8")) & 0x7FFFFFFF
    version = fingerprint(series)
    size = _unit_size(run, series, full, group)
    start = random.randrange(SHARES)  # runs started at once begin apart
    order = [(start + k) % SHARES for k in range(SHARES)]
    busy = []
    with run.store.engine.connect() as locks:  # its own session: the locks are its own

        def lock(share: int, *, wait: float) -> bool:
            """Take the share's lock, waiting up to ``wait`` seconds for its holder."""
            until = time.monotonic() + wait
            while True:
                call = sa.func.pg_try_advisory_lock(key, share)
                got = bool(locks.execute(sa.select(call)).scalar())
                locks.commit()  # a session lock outlives the transaction; hold none open
                if got or run.stopping() or time.monotonic() >= until:
                    return got
                run.sleep(SHARE_POLL)  # the other run is on it; a stop cuts this short

        def unlock(share: int) -> None:
            locks.execute(sa.select(sa.func.pg_advisory_unlock(key, share)))
            locks.commit()

        def work(unit: list[int], *, locked: bool = True) -> Iterator[Share]:
            markers = [_share_marker(series, share) for share in unit]
            with run.store.connect() as conn:
                planned = full and all(
                    ledger.setting_or_none(conn, marker) == version for marker in markers
                )
            try:
                yield Share((tuple(unit), SHARES), full and not planned)
                # Back here only when the caller went through the whole unit.
                if full and not planned and run.halt is None and not run.stopping():
                    with run.store.begin() as conn:
                        for marker in markers:
                            ledger.set_setting(conn, marker, version)
            finally:
                if locked:
                    for share in unit:
                        unlock(share)

        unit: list[int] = []
        for share in order:
            if not lock(share, wait=0):
                busy.append(share)
                continue
            unit.append(share)
            if len(unit) == size:
                yield from work(unit)
                unit = []
        if unit:
            yield from work(unit)
        # One wait for them all: a run stuck in a hung request may hold many shares (it
        # takes them together), and a wait for each would add up to many minutes.
        deadline = time.monotonic() + SHARE_WAIT
        for share in busy:
            locked = lock(share, wait=max(0.0, deadline - time.monotonic()))
            if run.stopping():
                if locked:
                    unlock(share)
                return  # the run ends without this share
            # A holder that keeps a share longer may be stuck (a hung request, a long
            # backoff): the share is worked on beside it, its leases deciding who sends.
            yield from work([share], locked=locked)


def _unit_size(run: Run, series: Series, everything: bool, group: int) -> int:
    """How many free shares a PostgreSQL run takes at once: as many as hold about
    ``group`` of the enrollments it looks at (counted up to ``SHARES * group``), at
    least one. 30,000 enrollments to plan and a group of 20,000: two parts of 8 shares.
    (30,000 messages in 16 shares: 27% of the send went by between two shares, with
    no request on its way.) Two runs at once still split the list: a share one holds
    is left to the other."""
    with run.store.connect() as conn:
        count = ledger.count_to_plan(
            conn, series.slug, now=run.options.now, everything=everything, cap=SHARES * group
        )
    parts = max(1, -(-count // group))
    return max(1, SHARES // parts)


def _share_marker(series: Series, share: int) -> str:
    """The settings key of one share's plan marker (fits the key column whatever the
    length of the series' slug)."""
    digest = hashlib.sha256(series.slug.encode("utf-8")).hexdigest()[:32]
    return f"plan-share:{digest}:{share}/{SHARES}"


def earliest(
    chunks: Iterable[list[T]], limit: int, key: Callable[[T], Any], drop: Callable[[list[T]], None]
) -> list[T]:
    """The ``limit`` items of ``chunks`` with the smallest ``key``, in key order (equal
    keys in the order given): ``sorted(all items, key=key)[:limit]``, without holding
    all items. Those that cannot be among them are handed to ``drop`` as soon as that
    is known, so memory holds ``2 * limit`` items and a chunk, however many there are."""
    kept: list[T] = []
    for chunk in chunks:
        kept += chunk
        if len(kept) > 2 * limit:
            kept.sort(key=key)  # stable: equal keys stay in the order they came
            out, kept = kept[limit:], kept[:limit]
            drop(out)
            del out
    kept.sort(key=key)
    if len(kept) > limit:
        drop(kept[limit:])
        del kept[limit:]
    return kept


def hold_back(run: Run, items: Sequence[tuple[Series, Due, Step]]) -> None:
    """Deliveries this run leaves for the next (--limit): their wake-up time has come."""
    if run.options.dry_run:
        return
    with run.store.begin() as conn:
        ledger.save_bookmarks(
            conn,
            [
                bookmark(d.enrollment, step, run.versions[series.slug], run.options.now)
                for series, d, step in items
            ],
        )


def mark_planned(run: Run, full: Sequence[Series]) -> None:
    """Every enrollment of these series now has a bookmark for their content."""
    if full and not run.options.dry_run:
        with run.store.begin() as conn:
            for series in full:
                ledger.set_plan_marker(conn, series.slug, fingerprint(series))


def bookmark(enrollment: Enrollment, step: Step, version: str, now: datetime) -> Bookmark:
    """(enrollment id, revision read, next wake-up, plan version, completed at) for
    `save_bookmarks`, which writes it only if nobody changed the enrollment since it
    was read."""
    completed = now if step.kind == "complete" else None
    return (enrollment.id, enrollment.revision, step.wake_at, version, completed)


def _note(report: SendReport, series: Series, enrollment: Enrollment, step: Step) -> None:
    if step.kind == "complete":
        return
    article = series.article(step.article) if step.article is not None else None
    report.planned.append(
        Planned(
            email=enrollment.email,
            series=series.slug,
            part=step.part,
            title=article.title if article else "",
            due_at=step.due_at,
            kind=step.kind,
            reason=step.reason,
        )
    )


def dry_run_rows(report: SendReport) -> PlannedRows:
    """The plan in the order an editor reads it: due now first, then by time. Iterable
    more than once, without holding a long plan in memory (see `PlannedRows`)."""
    return report.planned
