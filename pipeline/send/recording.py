"""Recording a request's answer: each delivery's outcome and each reader's next
bookmark in one transaction, then what the run's report counts of them.

On PostgreSQL the recording runs in a thread of its own while the send loop claims,
builds and sends the next request; the report and the progress bar are counted only in
the loop's thread, once the ledger holds what they count.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from ..content import Series
from ..plan import Enrollment, LedgerEntry, Step, next_step
from ..providers import SendResult
from ..store import ledger
from ..store.ledger import Claim
from .planning import bookmark
from .run import Run

if TYPE_CHECKING:
    from .deliver import Batch

log = logging.getLogger(__name__)

# A request answered, with its results in the order of its claims, to be recorded.
Answered = tuple["Batch", list[SendResult]]


class Recorder:
    """Records the answers to a run's requests (`deliver`'s `_answer`) one at a time:
    in the send loop's thread, or (given a ``thread``) in that thread while the loop
    goes on to claim and build the next request (PostgreSQL: the recording's statements
    then overlap the loop's work). The report and the progress bar are only ever counted
    in the loop's thread (`settle`), so a report never counts what the ledger does not
    hold, and a recording that fails stops the run there."""

    def __init__(self, run: Run, thread: ThreadPoolExecutor | None) -> None:
        self.run = run
        self.thread = thread
        self.pending: Future[Tally] | None = None

    def record(self, answered: Answered | None) -> None:
        """Record ``answered`` (None: nothing to record), the one before it settled
        first: at most one recording is under way."""
        if answered is None:
            return
        self.settle()
        batch, results = answered
        # An answer that changed a reader's status (a bounce, a complaint) is recorded
        # before the loop claims anything more: the next claim's check of who is
        # active must see it, or a second series could send that reader another part.
        if self.thread is None or changes_status(answered):
            self._record_here(answered, progress=True)
        else:
            self.pending = self.thread.submit(
                record_outcomes, self.run, batch.series, batch.claims, results
            )

    def settle(self) -> None:
        """Wait for the recording under way, count it, and raise what it raised (the
        database failing: the run cannot go on)."""
        pending, self.pending = self.pending, None
        if pending is not None:
            count_outcomes(self.run, pending.result(), progress=True)

    def record_quietly(self, answered: Answered) -> None:
        """Record ``answered`` in this thread while another exception is on its way up
        (that one is the news): a failure here leaves its claims for a later run."""
        try:
            self._record_here(answered, progress=False)
        except Exception:
            log.debug("recording the answer in hand failed too", exc_info=True)

    def _record_here(self, answered: Answered, *, progress: bool) -> None:
        batch, results = answered
        tally = record_outcomes(self.run, batch.series, batch.claims, results)
        count_outcomes(self.run, tally, progress=progress)

    def settle_quietly(self) -> None:
        """`settle` while another exception is on its way up: that one is the news."""
        try:
            self.settle()
        except Exception:
            log.debug("recording the last answer failed too", exc_info=True)


def changes_status(answered: Answered) -> bool:
    """Whether an answer bounced a reader or marked them as complaining."""
    return any(r.subscriber_status for r in answered[1])


def record_outcomes(
    run: Run,
    series: Series,
    claims: Sequence[Claim],
    results: Sequence[SendResult],
) -> Tally:
    """Record a request's outcomes and each reader's next bookmark in one transaction;
    returns what the report is to count of them (the caller counts it: `count_outcomes`)."""
    # Sends count from the run's time, the same for every reader of the run (so a
    # part due "4 days later" is due at the same hour); the ledger's clock moves on.
    now = run.options.now
    clock = run.clock()
    outcome = {r.key: r for r in results}
    version = run.versions[series.slug]
    rows = []
    bookmarks = []
    statuses: list[tuple[int, str, str]] = []  # subscriber id, new status, why
    failed: list[str] = []
    steps = _NextSteps(series, now)
    # Everything is worked out before the transaction: its write lock is held only for
    # the writes (other workers and runs wait for it).
    for claim in claims:
        result = outcome.get(claim.key) or SendResult(claim.key, "unknown", error="no result")
        rows.append((claim, result.outcome, result.message_id, result.error))
        if result.outcome == "failed":
            failed.append(
                f"{claim.enrollment.email}: part {claim.part} of {series.slug} failed: "
                f"{result.error}"
            )
            if result.subscriber_status:
                statuses.append(
                    (claim.enrollment.subscriber_id, result.subscriber_status, result.error or "")
                )
        entry = LedgerEntry(
            result.outcome, claim.attempts, now, now if result.outcome == "sent" else None
        )
        bookmarks.append(bookmark(claim.enrollment, steps.after(claim, entry), version, now))
    unknown = [claim.id for claim, state, _, _ in rows if state == "unknown"]
    with run.store.begin() as conn:
        # An unknown outcome is counted where the ledger still holds the claim: an
        # erasure during the request removed that reader's (a lost answer, a reader
        # left out of a repeat).
        kept = ledger.claimed_ids(conn, unknown, token=run.token) if unknown else set()
        for subscriber_id, status, reason in statuses:
            ledger.mark_subscriber(
                conn,
                subscriber_id,
                status,
                actor=f"provider:{run.provider.name}",
                reason=reason,
                now=now,
            )
        ledger.record(conn, rows, token=run.token, now=clock, sent_at=now)
        ledger.save_bookmarks(conn, bookmarks)
    sent = sum(1 for _, state, _, _ in rows if state == "sent")
    return Tally(sent, len(kept), failed, len(rows))


@dataclass(frozen=True)
class Tally:
    """What recording a request's outcomes adds to the run's report (`count_outcomes`), once
    the ledger holds them: a report never counts what the ledger does not hold."""

    sent: int
    unknown: int
    failed: list[str]  # one problem line each
    recorded: int  # deliveries recorded, whatever their outcome


def count_outcomes(run: Run, tally: Tally, *, progress: bool = False) -> None:
    """Add ``tally`` to the run's report (and, with ``progress``, move the progress bar
    on by the deliveries recorded). Only the send loop's own thread does."""
    report = run.report
    report.sent += tally.sent
    report.unknown += tally.unknown
    report.failed += len(tally.failed)
    report.problems += tally.failed
    if progress and run.options.on_progress:
        run.options.on_progress(tally.recorded)


class _NextSteps:
    """Each reader's next step once a delivery's outcome is in its ledger. The planner
    is pure (plan.py): readers alike in everything it reads (``Enrollment.plan_key``)
    have the same next step, so a batch of readers who
    started together asks it once."""

    def __init__(self, series: Series, now: datetime) -> None:
        self.series = series
        self.now = now
        self.known: dict[object, Step] = {}

    def after(self, claim: Claim, entry: LedgerEntry) -> Step:
        e = claim.enrollment
        key = (e.plan_key(without=claim.article), claim.article, entry)
        step = self.known.get(key)
        if step is None:
            updated = _with_entry(e, claim.article, entry)
            step = self.known[key] = next_step(self.series, updated, self.now)
        return step


def _with_entry(enrollment: Enrollment, article: str, entry: LedgerEntry) -> Enrollment:
    ledger_map = dict(enrollment.ledger)
    ledger_map[article] = entry
    return Enrollment(**{**enrollment.__dict__, "ledger": ledger_map})
