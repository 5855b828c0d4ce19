"""Delivering: due deliveries are claimed in batches, handed to the provider (one
batch in flight while the next is prepared) with retries, and their outcomes
recorded with each reader's next bookmark (on PostgreSQL in a thread of its own while
the next batch is claimed, built and in flight; with several SQLite workers while the
next batch is in flight).

A claim is taken no earlier than it can be used: the rate limiter waits first. And
right before each attempt of each request, in one transaction, the run renews its
lease on every claim of the request; a claim it no longer holds (its lease ran out
and another run may have taken the delivery over) means the request is not sent at
all. Right before, a reader who left since the claim (unsubscribed, paused, bounced,
erased) is taken out of it. In the same moment each reader's send window is checked
with the run's moving clock: a reader whose window has closed is given back for its
next opening, however the run got there (a long run, a slow rate limit, a backoff).
Building one reader's
message can fail (a template that breaks on one reader's data, an address no header
can carry): that delivery alone is failed, as an adapter fails such a message
(`providers.base.sendable`). What fails for every reader (a configured URL or sender)
never gets here: `Composer.refuse_unbuildable` stops the run before any claim.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from ..content import Series
from ..plan import Enrollment, LedgerEntry, Step, next_step, window_opening
from ..providers import Message, ProviderError, SendResult
from ..store import StoreError, ledger
from ..store.ledger import Claim, Due
from .compose import first_line
from .planning import Bookmark, bookmark
from .run import Run

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

log = logging.getLogger(__name__)

RETRIES = 4
LEASE_LOST = "this run's claim ran out"
FIRST_BACKOFF = 1.0
LONGEST_BACKOFF = 60.0


class Withheld(Exception):
    """A request was not handed to the provider (why, in one line): ``lost`` of its
    claims were no longer this run's, or the run is stopping, or no reader of it was
    left (outside their send window, or gone since the claim)."""

    def __init__(self, why: str, *, lost: int = 0) -> None:
        super().__init__(why)
        self.lost = lost


# Right before each attempt: the messages that may go and the key they go under, given
# whether an earlier attempt may have been sent; raises Withheld when none may go.
Gate = Callable[[bool], tuple[Sequence[Message], str]]


@dataclass
class _Batch:
    """One request: its claims and their messages in the same order, once submitted the
    provider's answer to come. The gate may drop readers before the first attempt."""

    series: Series
    claims: list[Claim]
    messages: list[Message]
    result: Future[list[SendResult]] | None = None
    # Readers left out by the claim or by the gate (which may run in other threads),
    # counted into the report in the send loop's thread (`_count_left_out`):
    held: int = 0  # outside their send window: looked at again when it opens
    skipped: int = 0  # claimed by another run, or no longer to be written to
    # Delivery keys left out of the repeats of a request whose first attempt may have
    # reached them (their reader left meanwhile): their outcome stays unknown.
    unsent: set[str] = field(default_factory=set)

    @property
    def key(self) -> str:
        return ledger.batch_key(c.key for c in self.claims)


def deliver(run: Run, due: Sequence[tuple[Series, Due, Step]]) -> None:
    """Claim, render and send in batches, one batch in flight while the next is
    prepared and the last recorded: the provider's time overlaps with ours. Asked to
    stop (a signal), it ends after the batch in flight and gives back the next one."""
    provider = run.provider
    # A batch never mixes series; for a provider that personalises on its side (one
    # body per request), it never mixes parts or reader variants either.
    by_email: dict[tuple[str, str, frozenset[str], bool], list[Due]] = {}
    everything: frozenset[str] = frozenset()
    for series, item, _ in due:
        if provider.shared_body:
            enrollment = item.enrollment
            group = run.composer.variant(
                series, item.article, enrollment.received(), enrollment.started_late(series)
            )
        else:
            group = (series.slug, "", everything, False)
        by_email.setdefault(group, []).append(item)
    size = run.limiter.batch_size(provider.batch_size)
    batches = [
        (run.series[slug], items[start : start + size])
        for (slug, *_), items in by_email.items()
        for start in range(0, len(items), size)
    ]
    # The answer to the last request is recorded while the next one is on its way: on
    # PostgreSQL, the database's time (another process's, on another core) overlaps
    # the provider's; with several workers on one SQLite file, so does the wait for the
    # file's one write lock. One process alone on SQLite records before the next
    # request goes: its recording is its own CPU, which would only take turns with the
    # sending thread for the interpreter (`bench/send.py`, 100,000 messages, 1 worker:
    # 21.5 against 18.5 CPU seconds; with 2 workers, 17.0 against 17.9 s wall).
    # On PostgreSQL the recording has a thread of its own (`_Recorder`), so that the
    # loop claims and builds the next request meanwhile: the recording is mostly
    # waiting for the server, which leaves the interpreter to the loop (30,000
    # messages, 3 runs alternating: 8.1 against 9.1 s, with migration 0009). With
    # several SQLite workers it stays in the loop: there a third thread only took
    # turns for the interpreter (2 workers, 100,000 messages: 16.8 against 15.6 s).
    recording_thread = run.store.dialect == "postgresql"
    overlap = recording_thread or run.workers > 1
    # On PostgreSQL the next request is also claimed in a thread of its own while this
    # one is built: the loop waited for the claim's statements a third of its time
    # (py-spy, 30,000 messages). Not under a rate limit: there the limiter's wait comes
    # before each claim, and the rate, not the loop, sets the pace.
    claim_ahead = recording_thread and not run.limiter.rate
    sender, recording, claimer = run.threads()
    in_flight: _Batch | None = None
    claiming: Future[_Batch] | None = None  # the next request's claim, under way
    recorder = _Recorder(run, recording if recording_thread else None)
    try:
        for index, (series, items) in enumerate(batches):
            # The wait comes before the claim: a claim is never held through it.
            run.limiter.wait(len(items))
            if run.stopping():
                break
            if claiming is not None:
                batch, claiming = claiming.result(), None
            else:
                batch = _take(run, series, items)
            if claim_ahead and index + 1 < len(batches) and not run.stopping():
                claiming = claimer.submit(_take, run, *batches[index + 1])
            _build(run, batch)
            answered: _Answered | None = None
            if in_flight is not None:
                finished, in_flight = in_flight, None
                answered = _answer(run, finished, also_release=batch.claims)
                del finished  # its messages go now, not once the next batch is built
                if answered is not None:
                    _drop_changed(run, batch, answered)
                    if claiming is not None and _changes_status(answered):
                        # Claimed while that answer was on its way, too: wait for it.
                        _drop_changed(run, claiming.result(), answered)
            if run.halt is not None or (batch.claims and run.stopping()):
                recorder.record(answered)
                recorder.settle()
                _release(run, batch.claims)
                _give_back(run, claiming)
                claiming = None
                run.stop_if_halted()
                break
            if not overlap:
                recorder.record(answered)
                answered = None
            if batch.claims:
                # The sender is idle now (the last request was answered): the first
                # gate runs here, so its transaction never waits on this thread's.
                run.limiter.charge(len(batch.claims))  # the rate limit, as it goes
                try:
                    messages, key = _hand_over(run, batch, False)
                except Withheld as exc:
                    _withheld(run, batch, exc)
                else:
                    gate = functools.partial(_hand_over, run, batch)
                    batch.result = sender.submit(send_batch, run, messages, key, gate, gated=True)
                    in_flight = batch
            recorder.record(answered)
            answered = None  # its messages go now, not once the next batch is built
        _give_back(run, claiming)  # the loop stopped before it was built
        claiming = None
        if in_flight is not None:
            finished, in_flight = in_flight, None
            recorder.record(_answer(run, finished, also_release=[]))
        recorder.settle()
        run.stop_if_halted()
    except BaseException:
        if in_flight is not None and in_flight.result is not None:
            in_flight.result.cancel()
            # The threads outlive this call: nothing of it goes on behind the error.
            wait([in_flight.result])
        _give_back_quietly(run, claiming)
        recorder.settle_quietly()
        raise


def _take(run: Run, series: Series, items: Sequence[Due]) -> _Batch:
    """Claim the deliveries of one request whose readers are inside their send window
    now; a reader outside it is bookmarked for its next opening. The database's part
    of a request, which may run in the claiming thread: what the report is to count
    of it is kept in the batch (``held``, ``skipped``) for `_build` to count."""
    clock = run.clock()
    closed = _closed(series, [item.enrollment for item in items], clock)
    inside = [item for i, item in enumerate(items) if i not in closed]
    held: list[Bookmark] = [_held(run, series, items[i].enrollment, o) for i, o in closed.items()]
    with run.store.begin() as conn:
        ledger.save_bookmarks(conn, held)
        claims = ledger.claim(
            conn, inside, token=run.token, until=clock + run.options.lease, now=clock
        )
    return _Batch(series, claims, [], held=len(held), skipped=len(inside) - len(claims))


def _build(run: Run, batch: _Batch) -> None:
    """Build each claimed reader's message (in the send loop's thread), and count what
    claiming left out. A message that cannot be built fails that delivery alone."""
    _count_left_out(run, batch)
    clock = run.clock()
    claims, batch.claims = batch.claims, []
    unbuilt: list[tuple[Claim, SendResult]] = []
    for claim in claims:
        try:
            message = run.composer.for_claim(batch.series, claim, clock)
            run.provider.prepare(message)
        except StoreError:
            raise  # the database, not this reader: the run cannot go on
        except Exception as exc:
            why = f"not sent: {first_line(exc)}"
            unbuilt.append((claim, SendResult(claim.key, "failed", error=why)))
            continue
        batch.claims.append(claim)
        batch.messages.append(message)
    if unbuilt:
        failed = [c for c, _ in unbuilt]
        _count(run, _record(run, batch.series, failed, [r for _, r in unbuilt]))


def _give_back(run: Run, claiming: Future[_Batch] | None) -> None:
    """Wait for a claim made ahead (None: there is none) and give back what it got:
    the loop ended before its request was built."""
    if claiming is None:
        return
    batch = claiming.result()
    _count_left_out(run, batch)
    _release(run, batch.claims)


def _count_left_out(run: Run, batch: _Batch) -> None:
    """Count (once, in the send loop's thread) the readers the claim or the gate left
    out of ``batch``: outside their send window, or not to be written to by this run."""
    run.report.held += batch.held
    run.report.skipped += batch.skipped
    batch.held = batch.skipped = 0


def _give_back_quietly(run: Run, claiming: Future[_Batch] | None) -> None:
    """`_give_back` while another exception is on its way up: that one is the news (a
    claim left behind runs out with its lease, and a later run takes it over)."""
    try:
        _give_back(run, claiming)
    except Exception:
        log.debug("giving back the claim made ahead failed too", exc_info=True)


def _held(run: Run, series: Series, enrollment: Enrollment, opening: datetime) -> Bookmark:
    """The bookmark of a reader held for the send window: look again when it opens."""
    step = Step("held", "outside the send window", wake_at=opening)
    return bookmark(enrollment, step, run.versions[series.slug], run.options.now)


def _hand_over(run: Run, batch: _Batch, maybe_sent: bool) -> tuple[Sequence[Message], str]:
    """The gate of one request, right before each attempt (in the sending thread).

    A reader who left since the claim (unsubscribed, paused, bounced, erased:
    `ledger.departed`) is given back, and so is a reader outside their send window at
    the run's clock, for its next opening. That is before any attempt. After one that
    may have been sent, a request whose window has closed is not repeated at all, and
    one that lost a reader is repeated under the same key without them (``unsent``:
    their outcome stays unknown; the provider refuses the changed body if it has the
    first). Then, in one transaction, this run's lease on every remaining claim is
    renewed and the request's key recorded. Raises Withheld when the run is stopping,
    a claim is no longer this run's, or nobody is left."""
    refuse_if_stopping(run)
    clock = run.clock()
    claims = batch.claims
    with run.store.connect() as conn:
        readers = {c.enrollment.subscriber_id: c.enrollment.id for c in claims}
        gone = ledger.departed(conn, batch.series.slug, readers)
        left = {i for i, c in enumerate(claims) if c.enrollment.subscriber_id in gone}
        closed = _closed(batch.series, [c.enrollment for c in claims], clock)
        for i in left:
            closed.pop(i, None)  # gone for good, not held for the window
        if maybe_sent and closed:
            raise Withheld("the send window closed before the request could be repeated")
        if maybe_sent and left:
            # The request goes again under its key, without those who left: the
            # provider refuses a changed body under a key it has seen (nothing goes
            # twice), and when the first attempt never arrived the others get it now.
            # Those who left stay unknown: the first attempt may have reached them.
            batch.unsent |= {claims[i].key for i in left}
            left = set()
        dropped = [claims[i] for i in sorted(left)]
        held = [claims[i] for i in closed]
        bookmarks = [_held(run, batch.series, claims[i].enrollment, o) for i, o in closed.items()]
        if left or closed:
            out = left | closed.keys()
            batch.claims = [c for i, c in enumerate(claims) if i not in out]
            batch.messages = [m for i, m in enumerate(batch.messages) if i not in out]
            batch.skipped += len(left)
            batch.held += len(closed)
        # (The claims of those left out of a repeat are not renewed: an erasure removes
        # them, and their outcome is unknown whatever happens now.)
        ids = [c.id for c in batch.claims if c.key not in batch.unsent]
        quiet = not (dropped or held) and held_for_now(run, conn, ids, clock, batch.key)
    if not quiet:
        with run.store.begin() as conn:
            if dropped or held:
                ledger.release(conn, [*dropped, *held], token=run.token)
                ledger.save_bookmarks(conn, bookmarks)
            lost = renew(run, conn, ids, clock, batch=batch.key)
        if lost:
            raise Withheld(LEASE_LOST, lost=lost)
    going = [
        m for m, c in zip(batch.messages, batch.claims, strict=True) if c.key not in batch.unsent
    ]
    if not going:
        raise Withheld("nobody was left to send it to")
    return going, batch.key


def _closed(
    series: Series, enrollments: Sequence[Enrollment], clock: datetime
) -> dict[int, datetime]:
    """Index → when the window opens next, for each reader outside their send window at
    ``clock`` (computed once per time zone: a batch's readers share a few)."""
    by_zone: dict[str | None, datetime | None] = {}
    closed = {}
    for index, enrollment in enumerate(enrollments):
        zone = enrollment.timezone
        if zone not in by_zone:
            by_zone[zone] = window_opening(series, zone, clock)
        opening = by_zone[zone]
        if opening is not None:
            closed[index] = opening
    return closed


def refuse_if_stopping(run: Run) -> None:
    """Right before an attempt: raise Withheld if the run was asked to stop."""
    reason = run.stopping()
    if reason is not None:
        raise Withheld(f"stopped by {reason}")


def held_for_now(
    run: Run, conn: Connection, ids: Sequence[int], clock: datetime, batch: str
) -> bool:
    """Whether this run holds every claim of ``ids`` under the request key ``batch``
    with more than half its lease left at ``clock``: then the request may go with no
    write at all. A read, outside any write transaction (on SQLite it takes no turn
    of the file's one write lock): another run takes a claim over only once its lease
    has run out, and this run alone (its token) changes a claim it holds, so what the
    read saw stays true for the half lease left, far longer than an attempt takes."""
    rest = clock + run.options.lease / 2
    return ledger.held_claims(conn, ids, token=run.token, until=rest, batch=batch) == len(ids)


def renew(
    run: Run, conn: Connection, ids: Sequence[int], clock: datetime, *, batch: str | None = None
) -> int:
    """Renew this run's lease on the claims ``ids`` (in the caller's transaction) until
    ``clock`` plus the run's lease, right before they go to the provider; with ``batch``
    also record the key the request goes under (the gate calls it only when
    `held_for_now` found that needed). Returns how many of them this run no longer
    holds (the request must then not be sent)."""
    until = clock + run.options.lease
    return len(ids) - ledger.extend_claims(
        conn, ids, token=run.token, until=until, now=clock, batch=batch
    )


# A request answered, with its results in the order of its claims, to be recorded.
_Answered = tuple[_Batch, list[SendResult]]


def _answer(run: Run, batch: _Batch, *, also_release: Sequence[Claim]) -> _Answered | None:
    """Wait for the answer to a request (in the main thread). None when its gate
    withheld it (what it held is given back). When the provider refused the run
    (credentials), nothing was sent: its claims are given back, also those of the batch
    prepared meanwhile (``also_release``), and the ProviderError goes up."""
    assert batch.result is not None
    wait([batch.result])  # the gate has had its say by the time an answer is there
    _count_left_out(run, batch)
    try:
        results = batch.result.result()
    except ProviderError:
        _release(run, [*batch.claims, *also_release])
        raise
    except Withheld as exc:
        _withheld(run, batch, exc)
        return None
    if batch.unsent:
        why = "not repeated: the reader left after an attempt that may have reached them"
        results = [*results, *(SendResult(key, "unknown", error=why) for key in batch.unsent)]
    return batch, results


class _Recorder:
    """Records the answers to a run's requests (`_answer`) one at a time: in the send
    loop's thread, or (given a ``thread``) in that thread while the loop goes on to
    claim and build the next request (PostgreSQL: the recording's statements then
    overlap the loop's work). The report and the progress bar are only ever counted
    in the loop's thread (`settle`), so a report never counts what the ledger does not
    hold, and a recording that fails stops the run there."""

    def __init__(self, run: Run, thread: ThreadPoolExecutor | None) -> None:
        self.run = run
        self.thread = thread
        self.pending: Future[_Tally] | None = None

    def record(self, answered: _Answered | None) -> None:
        """Record ``answered`` (None: nothing to record), the one before it settled
        first: at most one recording is under way."""
        if answered is None:
            return
        self.settle()
        batch, results = answered
        # An answer that changed a reader's status (a bounce, a complaint) is recorded
        # before the loop claims anything more: the next claim's check of who is
        # active must see it, or a second series could send that reader another part.
        if self.thread is None or _changes_status(answered):
            _count(self.run, _record(self.run, batch.series, batch.claims, results), progress=True)
        else:
            self.pending = self.thread.submit(
                _record, self.run, batch.series, batch.claims, results
            )

    def settle(self) -> None:
        """Wait for the recording under way, count it, and raise what it raised (the
        database failing: the run cannot go on)."""
        pending, self.pending = self.pending, None
        if pending is not None:
            _count(self.run, pending.result(), progress=True)

    def settle_quietly(self) -> None:
        """`settle` while another exception is on its way up: that one is the news."""
        try:
            self.settle()
        except Exception:
            log.debug("recording the last answer failed too", exc_info=True)


def _withheld(run: Run, batch: _Batch, exc: Withheld) -> None:
    """A request its gate stopped before any attempt: nothing of it went out, so what
    is still this run's goes back (and a lost claim is reported)."""
    _count_left_out(run, batch)
    _release(run, batch.claims)
    if exc.lost:
        run.report.skipped += len(batch.claims)
        run.report.problems.append(
            f"{len(batch.claims)} deliveries of {batch.series.slug} were not sent: this "
            f"run's claim on {exc.lost} of them ran out before they could be handed over "
            "(another run may be sending them); a later run settles them"
        )


def _changes_status(answered: _Answered) -> bool:
    """Whether an answer bounced a reader or marked them as complaining."""
    return any(r.subscriber_status for r in answered[1])


def _drop_changed(run: Run, batch: _Batch, answered: _Answered) -> None:
    """Give back the claims of ``batch`` (the next request, claimed while ``answered``
    was on its way) whose reader that answer bounced or marked as complaining: their
    claim's check of who is active came too early to see it. They are counted
    skipped; the answer, recorded before anything more is claimed, keeps them from
    later requests and runs."""
    finished, results = answered
    changed_keys = {r.key for r in results if r.subscriber_status}
    if not changed_keys:
        return
    changed = {c.enrollment.subscriber_id for c in finished.claims if c.key in changed_keys}
    gone = {i for i, c in enumerate(batch.claims) if c.enrollment.subscriber_id in changed}
    if not gone:
        return
    _release(run, [batch.claims[i] for i in sorted(gone)])
    batch.claims = [c for i, c in enumerate(batch.claims) if i not in gone]
    batch.messages = [m for i, m in enumerate(batch.messages) if i not in gone]
    run.report.skipped += len(gone)


def _release(run: Run, claims: Sequence[Claim]) -> None:
    """Give claims back untouched: nothing of theirs was handed to the provider."""
    if claims:
        with run.store.begin() as conn:
            ledger.release(conn, claims, token=run.token)


def send_batch(
    run: Run, messages: Sequence[Message], key: str, gate: Gate, *, gated: bool = False
) -> list[SendResult]:
    """One request, retried on transient errors with backoff (Retry-After first).

    Before each attempt (but the first when ``gated``: the caller has just passed the
    gate, and ``messages`` and ``key`` are what it let through) ``gate`` renews the
    run's claims and says what may go (it may drop readers whose send window closed,
    or who left since the claim); if it
    raises Withheld, nothing more is sent: the exception goes up when no attempt may
    have gone through (the claims can be given back), else the batch is unknown. An
    answer lost on the way back is retried only under an idempotency key; without
    one, the batch's outcome is unknown (never re-sent blindly). A refusal that stops
    the run (credentials, quota) after an attempt that may have gone through leaves
    the batch unknown and the run stops once it is recorded."""
    provider = run.provider
    maybe_sent = False
    for attempt in range(RETRIES + 1):
        try:
            if attempt or not gated:
                run.limiter.charge(len(messages))  # before the gate: no lease waits on it
                messages, key = gate(maybe_sent)
        except Withheld as exc:
            if not maybe_sent:
                raise
            why = f"not repeated ({exc}) after an attempt that may have been sent"
            return [SendResult(m.key, "unknown", error=why) for m in messages]
        try:
            results = provider.send(messages, batch_key=key)
            run.limiter.settle()
            return results
        except ProviderError as exc:
            run.limiter.settle()
            if exc.auth and maybe_sent:
                run.halt = exc
                return [SendResult(m.key, "unknown", error=str(exc)) for m in messages]
            if exc.auth:
                raise
            maybe_sent = maybe_sent or exc.maybe_sent
            lost = exc.maybe_sent and (not exc.retryable or not provider.idempotent)
            if lost or (exc.maybe_sent and attempt == RETRIES):
                return [SendResult(m.key, "unknown", error=str(exc)) for m in messages]
            if not exc.retryable or attempt == RETRIES:
                return [SendResult(m.key, "failed", error=str(exc)) for m in messages]
            run.report.retried += 1
            wait = exc.retry_after
            if wait is None:
                wait = min(LONGEST_BACKOFF, FIRST_BACKOFF * 2**attempt)
                wait = random.uniform(wait / 2, wait)  # jitter: runs do not retry in step
            log.info("provider busy (%s); retrying in %.1f s", exc, wait)
            run.sleep(min(wait, LONGEST_BACKOFF))
    raise AssertionError("unreachable")


def _record(
    run: Run,
    series: Series,
    claims: Sequence[Claim],
    results: Sequence[SendResult],
) -> _Tally:
    """Record a request's outcomes and each reader's next bookmark in one transaction;
    returns what the report is to count of them (the caller counts it: `_count`)."""
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
    return _Tally(sent, len(kept), failed, len(rows))


@dataclass(frozen=True)
class _Tally:
    """What recording a request's outcomes adds to the run's report (`_count`), once
    the ledger holds them: a report never counts what the ledger does not hold."""

    sent: int
    unknown: int
    failed: list[str]  # one problem line each
    recorded: int  # deliveries recorded, whatever their outcome


def _count(run: Run, tally: _Tally, *, progress: bool = False) -> None:
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
