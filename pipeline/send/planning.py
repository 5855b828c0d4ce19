"""Planning: which enrollments to look at, each one's next step from the pure
planner, and the bookmark (next wake-up, plan version) that lets a later run skip
everyone with nothing due."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime

from ..content import Series
from ..plan import Enrollment, Step, fingerprint, next_step
from ..store import ledger
from ..store.ledger import Due
from .run import Planned, PlannedRows, Run, SendReport

Bookmark = tuple[int, datetime | None, str, datetime | None]


def needs_full_plan(run: Run, series: Series) -> bool:
    """Whether every enrollment must be planned (new content), not just the woken."""
    with run.store.connect() as conn:
        return run.options.dry_run or ledger.plan_marker(conn, series.slug) != fingerprint(series)


def plan(
    run: Run, series: Series, shard: tuple[int, int] | None = None
) -> list[tuple[Series, Due, Step]]:
    """Plan one series (or one worker's share of it): the deliveries due now. The
    others get their bookmark; in a dry run each step is noted in the report."""
    return [item for chunk in plan_chunks(run, series, shard) for item in chunk]


def plan_chunks(
    run: Run, series: Series, shard: tuple[int, int] | None = None
) -> Iterator[list[tuple[Series, Due, Step]]]:
    """`plan`, one chunk of enrollments (``ledger.CHUNK``) at a time, each chunk's due
    deliveries sorted by due time: a run that sends each chunk before planning the
    next holds one chunk in memory, however long the list. The enrollments a chunk
    sends are not read again by later chunks (the pages follow their index)."""
    now = run.options.now
    dry_run = run.options.dry_run
    run.series[series.slug] = series
    version = fingerprint(series)
    run.versions[series.slug] = version
    everything = needs_full_plan(run, series)
    for chunk in ledger.iter_enrollments(
        run.store, series.slug, now=now, everything=everything, shard=shard
    ):
        due: list[tuple[Series, Due, Step]] = []
        bookmarks = []
        steps: dict[object, Step] = {}  # the planner is pure: alike readers, one call
        for enrollment in chunk:
            key = (
                enrollment.start_part,
                enrollment.timezone,
                enrollment.enrolled_at,
                tuple(sorted(enrollment.ledger.items())),
            )
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
    """(enrollment id, next wake-up, plan version, completed at) for `save_bookmarks`."""
    completed = now if step.kind == "complete" else None
    return (enrollment.id, step.wake_at, version, completed)


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
