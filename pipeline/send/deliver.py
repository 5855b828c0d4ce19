"""Delivering: due deliveries are claimed in batches, handed to the provider (one
batch in flight while the next is prepared) with retries, and their outcomes
recorded with each reader's next bookmark while the next batch is in flight (on
PostgreSQL in a thread of its own, while the next batch is also claimed and built).

A claim is taken no earlier than it can be used: the rate limiter waits first. And
right before each attempt of each request, in one transaction, the run renews its
lease on every claim of the request; a claim it no longer holds (its lease ran out
and another run may have taken the delivery over) means the request is not sent at
all. Right before, a reader who left since the claim (unsubscribed, paused, bounced,
erased) is taken out of it. In the same moment each reader's send window is checked
with the run's moving clock: a reader whose window has closed is given back for its
next opening, however the run got there (a long run, a slow rate limit, a backoff).
Building one reader's message can fail (a template that breaks on one reader's data,
an address no header can carry): that delivery alone is failed, as an adapter fails
such a message (`providers.base.sendable`). What fails for every reader (a configured URL or sender)
never gets here: `Composer.refuse_unbuildable` stops the run before any claim.

The attempts themselves and their retries are in `attempts`, the recording of the
answers in `recording`.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, wait
from dataclasses import dataclass, field
from datetime import datetime

from ..content import Series
from ..plan import Enrollment, Step, window_opening
from ..providers import Message, ProviderError, SendResult
from ..store import StoreError, ledger
from ..store.ledger import Claim, Due
from .attempts import (
    LEASE_LOST,
    Withheld,
    held_for_now,
    refuse_if_stopping,
    renew,
    send_batch,
)
from .compose import first_line
from .planning import Bookmark, bookmark
from .recording import Answered, Recorder, changes_status, count_outcomes, record_outcomes
from .run import Run

log = logging.getLogger(__name__)


@dataclass
class Batch:
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
    # The answer to the last request is recorded while the next one is on its way, on
    # every database: on PostgreSQL, the database's time (another process's, on another
    # core) overlaps the provider's; with several workers on one SQLite file, so does
    # the wait for the file's one write lock; and one process alone on SQLite keeps the
    # provider at work while it records, where recording first left it idle
    # (`bench/send.py`'s send, 100,000 messages, 1 worker, 5 runs alternating: 10.1
    # against 12.0 s, 9.2 CPU seconds both).
    # On PostgreSQL the recording has a thread of its own (`Recorder`), so that the
    # loop claims and builds the next request meanwhile: the recording is mostly
    # waiting for the server, which leaves the interpreter to the loop (30,000
    # messages, 3 runs alternating: 8.1 against 9.1 s, with migration 0009). With
    # several SQLite workers it stays in the loop: there a third thread only took
    # turns for the interpreter (2 workers, 100,000 messages: 16.8 against 15.6 s).
    recording_thread = run.store.dialect == "postgresql"
    # On PostgreSQL the next request is also claimed in a thread of its own while this
    # one is built: the loop waited for the claim's statements a third of its time
    # (py-spy, 30,000 messages). Not under a rate limit: there the limiter's wait comes
    # before each claim, and the rate, not the loop, sets the pace.
    claim_ahead = recording_thread and not run.limiter.rate
    sender, recording, claimer = run.threads()
    in_flight: Batch | None = None
    claiming: Future[Batch] | None = None  # the next request's claim, under way
    recorder = Recorder(run, recording if recording_thread else None)
    # The answer to the last request, in hand until it is recorded (once the next
    # request is on its way): a failure before then still records it (below).
    answered: Answered | None = None
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
            if in_flight is not None:
                finished, in_flight = in_flight, None
                answered = _answer(run, finished, also_release=batch.claims)
                del finished  # its messages go now, not once the next batch is built
                if answered is not None:
                    _drop_changed(run, batch, answered)
                    if claiming is not None and changes_status(answered):
                        # Claimed while that answer was on its way, too: wait for it.
                        _drop_changed(run, claiming.result(), answered)
            if run.halt is not None or (batch.claims and run.stopping()):
                done, answered = answered, None
                recorder.record(done)
                recorder.settle()
                _release(run, batch.claims)
                _give_back(run, claiming)
                claiming = None
                run.stop_if_halted()
                break
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
                    batch.result = _started(sender, send_batch, run, messages, key, gate)
                    in_flight = batch
            done, answered = answered, None
            recorder.record(done)
            del done  # its messages go now, not once the next batch is built
        _give_back(run, claiming)  # the loop stopped before it was built
        claiming = None
        if in_flight is not None:
            finished, in_flight = in_flight, None
            recorder.record(_answer(run, finished, also_release=[]))
        recorder.settle()
        run.stop_if_halted()
    except BaseException as exc:
        if in_flight is not None and in_flight.result is not None:
            in_flight.result.cancel()
            # The threads outlive this call: nothing of it goes on behind the error.
            wait([in_flight.result])
        _give_back_quietly(run, claiming)
        recorder.settle_quietly()
        if answered is not None and isinstance(exc, Exception):
            # An answer in hand when the loop failed (say, the database at the next
            # request's gate): what the provider accepted is recorded if the database
            # lets it, rather than left claimed for a later run to look up.
            recorder.record_quietly(answered)
        raise


def _started(
    sender: Executor,
    send: Callable[..., list[SendResult]],
    run: Run,
    messages: Sequence[Message],
    key: str,
    gate: Callable[[bool], tuple[Sequence[Message], str]],
) -> Future[list[SendResult]]:
    """``send`` the request in the sending thread (its first gate passed), returning once
    that thread has begun: the loop waits here, without the interpreter, instead of
    going on to build the next request while the sending thread waits up to a switch
    interval (5 ms, `sys.getswitchinterval`) for its turn, with the provider idle.
    The wait is a hint, never a condition: after a second the loop goes on anyway."""
    begun = threading.Event()

    def sending() -> list[SendResult]:
        begun.set()
        return send(run, messages, key, gate, gated=True)

    future = sender.submit(sending)
    begun.wait(1.0)
    return future


def _take(run: Run, series: Series, items: Sequence[Due]) -> Batch:
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
    return Batch(series, claims, [], held=len(held), skipped=len(inside) - len(claims))


def _build(run: Run, batch: Batch) -> None:
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
        count_outcomes(run, record_outcomes(run, batch.series, failed, [r for _, r in unbuilt]))


def _give_back(run: Run, claiming: Future[Batch] | None) -> None:
    """Wait for a claim made ahead (None: there is none) and give back what it got:
    the loop ended before its request was built."""
    if claiming is None:
        return
    batch = claiming.result()
    _count_left_out(run, batch)
    _release(run, batch.claims)


def _count_left_out(run: Run, batch: Batch) -> None:
    """Count (once, in the send loop's thread) the readers the claim or the gate left
    out of ``batch``: outside their send window, or not to be written to by this run."""
    run.report.held += batch.held
    run.report.skipped += batch.skipped
    batch.held = batch.skipped = 0


def _give_back_quietly(run: Run, claiming: Future[Batch] | None) -> None:
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


def _hand_over(run: Run, batch: Batch, maybe_sent: bool) -> tuple[Sequence[Message], str]:
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


def _answer(run: Run, batch: Batch, *, also_release: Sequence[Claim]) -> Answered | None:
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


def _withheld(run: Run, batch: Batch, exc: Withheld) -> None:
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


def _drop_changed(run: Run, batch: Batch, answered: Answered) -> None:
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
