"""Planning: which enrollments to look at, each one's next step from the pure
planner, and the bookmark (next wake-up, plan version) that lets a later run skip
everyone with nothing due."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from ..content import Series
from ..plan import Enrollment, Step, fingerprint, next_step
from ..store import ledger
from ..store.ledger import Due
from .run import Planned, Run, SendReport

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
    now = run.options.now
    dry_run = run.options.dry_run
    run.series[series.slug] = series
    version = fingerprint(series)
    run.versions[series.slug] = version
    everything = needs_full_plan(run, series)
    due: list[tuple[Series, Due, Step]] = []
    for chunk in ledger.iter_enrollments(
        run.store, series.slug, now=now, everything=everything, shard=shard
    ):
        bookmarks = []
        for enrollment in chunk:
            step = next_step(series, enrollment, now)
            if dry_run:
                _note(run.report, series, enrollment, step)
            if step.is_due and step.article is not None and step.part is not None:
                due.append((series, Due(enrollment, step.article, step.part), step))
            else:
                bookmarks.append(bookmark(enrollment, step, version, now))
        if not dry_run:
            with run.store.begin() as conn:
                ledger.save_bookmarks(conn, bookmarks)
    return due


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


def dry_run_rows(report: SendReport) -> list[Planned]:
    """The plan in the order an editor reads it: due now first, then by time."""
    order = {
        "due": 0,
        "held": 1,
        "scheduled": 2,
        "in_flight": 3,
        "unknown": 4,
        "waiting": 5,
        "gave_up": 6,
        "paused": 7,
    }
    never = datetime.max.replace(tzinfo=UTC)
    return sorted(
        report.planned,
        key=lambda p: (order.get(p.kind, 9), p.due_at or never, p.series, p.email),
    )
