"""Delivering: due deliveries are claimed in batches, handed to the provider (one
batch in flight while the next is prepared) with retries, and their outcomes
recorded with each reader's next bookmark."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from ..content import Series
from ..plan import Enrollment, LedgerEntry, Step, next_step
from ..providers import Message, ProviderError, SendResult
from ..store import ledger
from ..store.ledger import Claim, Due
from .planning import bookmark
from .run import LEASE, Run

log = logging.getLogger(__name__)

RETRIES = 4
FIRST_BACKOFF = 1.0
LONGEST_BACKOFF = 60.0


class RateLimiter:
    """At most ``rate`` messages per second, across batches."""

    def __init__(
        self, rate: float | None, monotonic: Callable[[], float], sleep: Callable[[float], None]
    ) -> None:
        self.rate = rate
        self.monotonic = monotonic
        self.sleep = sleep
        self.next_free = monotonic()

    def wait(self, count: int) -> None:
        if not self.rate:
            return
        now = self.monotonic()
        if self.next_free > now:
            self.sleep(self.next_free - now)
            now = self.next_free
        self.next_free = max(now, self.next_free) + count / self.rate


@dataclass
class _InFlight:
    series: Series
    claims: list[Claim]
    result: Future[list[SendResult]]


def deliver(run: Run, due: Sequence[tuple[Series, Due, Step]]) -> None:
    """Claim, render and send in batches, one batch in flight while the next is
    prepared and the last recorded: the provider's time overlaps with ours."""
    provider = run.provider
    # A batch never mixes series; for a provider that personalises on its side (one
    # body per request), it never mixes parts or reader variants either.
    by_email: dict[tuple[str, str, frozenset[str]], list[Due]] = {}
    everything: frozenset[str] = frozenset()
    for series, item, _ in due:
        if provider.shared_body:
            group = run.composer.variant(series, item.article, item.enrollment.received())
        else:
            group = (series.slug, "", everything)
        by_email.setdefault(group, []).append(item)
    size = provider.batch_size
    batches = [
        (run.series[slug], items[start : start + size])
        for (slug, _, _), items in by_email.items()
        for start in range(0, len(items), size)
    ]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="series-send") as sender:
        in_flight: _InFlight | None = None
        try:
            for series, items in batches:
                claims, messages = _claim(run, series, items)
                if in_flight is not None:
                    finished, in_flight = in_flight, None
                    _finish(run, finished, also_release=claims)
                if claims:
                    run.limiter.wait(len(messages))
                    key = ledger.batch_key(c.key for c in claims)
                    in_flight = _InFlight(
                        series, claims, sender.submit(send_batch, run, messages, key)
                    )
            if in_flight is not None:
                finished, in_flight = in_flight, None
                _finish(run, finished, also_release=[])
        except BaseException:
            if in_flight is not None:
                in_flight.result.cancel()
            raise


def _claim(run: Run, series: Series, items: Sequence[Due]) -> tuple[list[Claim], list[Message]]:
    now = run.clock()
    with run.store.begin() as conn:
        claims = ledger.claim(conn, items, token=run.token, until=now + LEASE, now=now)
    run.report.skipped += len(items) - len(claims)
    return claims, [run.composer.for_claim(series, claim, now) for claim in claims]


def _finish(run: Run, batch: _InFlight, *, also_release: Sequence[Claim]) -> None:
    try:
        results = batch.result.result()
    except ProviderError:
        # Nothing was sent (bad credentials): give the claims back, also those of
        # the batch prepared meanwhile, then stop.
        with run.store.begin() as conn:
            ledger.release(conn, [*batch.claims, *also_release], token=run.token)
        raise
    _record(run, batch.series, batch.claims, results)
    if run.options.on_progress:
        run.options.on_progress(len(batch.claims))
    if run.halt is not None:
        with run.store.begin() as conn:
            ledger.release(conn, also_release, token=run.token)
        run.stop_if_halted()


def send_batch(run: Run, messages: Sequence[Message], key: str) -> list[SendResult]:
    """One batch, retried on transient errors with backoff (Retry-After first). An
    answer lost on the way back is retried only under an idempotency key; without
    one, the batch's outcome is unknown (never re-sent blindly). A refusal that stops
    the run (credentials, quota) after an attempt that may have gone through leaves
    the batch unknown and the run stops once it is recorded."""
    provider = run.provider
    maybe_sent = False
    for attempt in range(RETRIES + 1):
        try:
            return provider.send(messages, batch_key=key)
        except ProviderError as exc:
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
            run.options.sleep(min(wait, LONGEST_BACKOFF))
    raise AssertionError("unreachable")


def _record(
    run: Run, series: Series, claims: Sequence[Claim], results: Sequence[SendResult]
) -> None:
    # Sends count from the run's time, the same for every reader of the run (so a
    # part due "4 days later" is due at the same hour); the ledger's clock moves on.
    now = run.options.now
    clock = run.clock()
    report = run.report
    outcome = {r.key: r for r in results}
    version = run.versions[series.slug]
    rows = []
    bookmarks = []
    with run.store.begin() as conn:
        for claim in claims:
            result = outcome.get(claim.key) or SendResult(claim.key, "unknown", error="no result")
            rows.append((claim, result.outcome, result.message_id, result.error))
            if result.outcome == "sent":
                report.sent += 1
            elif result.outcome == "unknown":
                report.unknown += 1
            else:
                report.failed += 1
                report.problems.append(
                    f"{claim.enrollment.email}: part {claim.part} of {series.slug} failed: "
                    f"{result.error}"
                )
                if result.subscriber_status:
                    ledger.mark_subscriber(
                        conn,
                        claim.enrollment.subscriber_id,
                        result.subscriber_status,
                        actor=f"provider:{run.provider.name}",
                        reason=result.error or "",
                        now=now,
                    )
            entry = LedgerEntry(
                result.outcome, claim.attempts, now, now if result.outcome == "sent" else None
            )
            updated = _with_entry(claim.enrollment, claim.article, entry)
            bookmarks.append(bookmark(updated, next_step(series, updated, now), version, now))
        ledger.record(conn, rows, token=run.token, now=clock, sent_at=now)
        ledger.save_bookmarks(conn, bookmarks)


def _with_entry(enrollment: Enrollment, article: str, entry: LedgerEntry) -> Enrollment:
    ledger_map = dict(enrollment.ledger)
    ledger_map[article] = entry
    return Enrollment(**{**enrollment.__dict__, "ledger": ledger_map})
