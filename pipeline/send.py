"""`series send`: plan → claim → render → provider → record, in batches.

Nothing is held only in memory: a delivery is claimed in the database before it
is sent and its outcome recorded right after, so a run killed at any moment
leaves claims that the next run resolves (DESIGN §7).
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import multiprocessing.queues
import os
import queue
import random
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .config import Address, Config
from .content import Article, Series, load_series
from .errors import ContentError, SeriesError
from .plan import Enrollment, LedgerEntry, Step, fingerprint, next_step
from .providers import (
    Merge,
    Message,
    Pending,
    Provider,
    ProviderError,
    SendResult,
    get_provider,
)
from .store import Store, ledger, open_store
from .store.ledger import Claim, Due
from .tokens import Signer

if TYPE_CHECKING:
    from .render import CompiledEmail, Renderer

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=15)
RETRIES = 4
FIRST_BACKOFF = 1.0
LONGEST_BACKOFF = 60.0


@dataclass(frozen=True)
class Planned:
    """One line of the plan: who gets (or waits for) which part, when and why."""

    email: str
    series: str
    part: int | None
    title: str
    due_at: datetime | None
    kind: str
    reason: str


@dataclass
class SendReport:
    sent: int = 0
    failed: int = 0
    retried: int = 0
    unknown: int = 0
    skipped: int = 0
    resolved: int = 0
    planned: list[Planned] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def merge(self, other: SendReport) -> None:
        self.sent += other.sent
        self.failed += other.failed
        self.retried += other.retried
        self.unknown += other.unknown
        self.skipped += other.skipped
        self.problems += other.problems

    def summary(self) -> str:
        return (
            f"sent {self.sent}, failed {self.failed}, retried {self.retried}, "
            f"unknown {self.unknown}, skipped {self.skipped}"
        )


@dataclass
class SendOptions:
    now: datetime
    dry_run: bool = False
    limit: int | None = None
    only: str | None = None
    provider_name: str = "outbox"  # to make a fresh provider in each worker process
    workers: int = 1  # processes sending in parallel (each its own share of batches)
    on_progress: Callable[[int], None] | None = None
    on_total: Callable[[int], None] | None = None
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic


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


def send_due(config: Config, store: Store, provider: Provider, options: SendOptions) -> SendReport:
    """Send every part that is due (or, with ``dry_run``, say what would be sent)."""
    series_list = load_selected(config, options.only)
    report = SendReport()
    run = _Run(config, store, provider, options, report)
    if not options.dry_run:
        run.reconcile(series_list)
    workers = run.workers_for(series_list)
    if workers > 1:
        run.prepare_rendering(series_list)
        # The compiled emails live for the whole run: keep the cycle collector from
        # walking them, and forked workers from copying their pages by touching them.
        gc.freeze()
        run.plan_and_deliver_in_parallel(series_list, workers)
        return report
    full = [s for s in series_list if run.needs_full_plan(s)]
    due: list[tuple[Series, Due, Step]] = []
    for series in series_list:
        due += run.plan(series)
    due.sort(key=lambda item: item[2].due_at or options.now)
    if options.limit is not None:
        report.skipped += max(0, len(due) - options.limit)
        run.hold_back(due[options.limit :])
        due = due[: options.limit]
    if due or options.dry_run:
        run.prepare_rendering(series_list)
    if options.dry_run:
        return report
    if due:
        if options.on_total:
            options.on_total(len(due))
        gc.freeze()  # the plan lives to the end of the run; see above
        run.deliver(due)
    # Only once every due delivery was handled may later runs skip the full plan:
    # a run cut short leaves the marker, and the next run plans everyone again.
    run.mark_planned(full)
    return report


def load_selected(config: Config, only: str | None) -> list[Series]:
    """The workspace's series (or just ONLY), stopping on any content error."""
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


def _compile_all(
    renderer: Renderer,
    series_list: Sequence[Series],
    now: datetime,
    start_parts: dict[str, set[int]],
) -> dict[tuple[str, int, int], CompiledEmail]:
    """Every part that can go out now, for every starting part readers have (what they
    have received differs), rendered once per template version."""
    compiled = {}
    for series in series_list:
        first_part = series.articles[0].part
        for start in {first_part} | {max(p, first_part) for p in start_parts.get(series.slug, ())}:
            for article in series.articles:
                if article.part >= start and article.is_published(now):
                    received = [a.part for a in series.articles if start <= a.part < article.part]
                    compiled[(series.slug, article.part, start)] = renderer.compile(
                        series, article, received=received
                    )
    return compiled


class _Run:
    def __init__(
        self,
        config: Config,
        store: Store,
        provider: Provider,
        options: SendOptions,
        report: SendReport,
    ) -> None:
        self.config = config
        self.store = store
        self.provider = provider
        self.options = options
        self.report = report
        self.token = uuid.uuid4().hex
        self.renderer: Renderer | None = None
        self.compiled: dict[tuple[str, int, int], CompiledEmail] = {}
        self.series: dict[str, Series] = {}
        self.versions: dict[str, str] = {}
        self.limiter = RateLimiter(config.rate_limit, options.monotonic, options.sleep)
        self._signer: Signer | None = None
        # Set when the provider stopped the run after a request that may have gone
        # through: that batch is recorded unknown first, then the run stops.
        self.halt: ProviderError | None = None
        self.started = options.monotonic()

    def clock(self) -> datetime:
        """The run's current time: `now` as given, plus the time the run has taken.
        Leases and ledger times use it, so a long run's later claims are not born
        expired; with --now, time still moves on from the moment asked for."""
        return self.options.now + timedelta(seconds=self.options.monotonic() - self.started)

    # -- reconciliation ----------------------------------------------------

    def reconcile(self, series_list: Sequence[Series]) -> None:
        """Settle deliveries left unknown by a crash or a timeout before planning: repeat
        their request under the same idempotency key where the provider has them, else
        look them up; whatever cannot be settled stays unknown and is reported."""
        now = self.clock()
        with self.store.begin() as conn:
            ledger.expire_claims(conn, now)
            unknown = ledger.unknown_deliveries(conn, [s.slug for s in series_list])
        if unknown and self.provider.idempotent:
            unknown = self.replay(series_list, unknown)
        if not unknown:
            return
        pending = [
            Pending(row.delivery_key, row.email, row.attempted_at or row.updated_at - LEASE)
            for row in unknown
        ]
        try:
            found = self.provider.lookup(pending)
        except ProviderError as exc:
            if exc.auth:
                raise
            self.report.problems.append(f"could not check {len(unknown)} unknown deliveries: {exc}")
            self.report.unknown += len(unknown)
            return
        forgotten = 0
        settle = timedelta(seconds=self.provider.settle_time)
        unchecked = [row for row in unknown if row.delivery_key not in found]
        if unchecked:
            self.report.unknown += len(unchecked)
            self.report.problems.append(
                f"{self.provider.name} checked {len(unknown) - len(unchecked)} of "
                f"{len(unknown)} unknown deliveries; the rest wait for a later run"
            )
        with self.store.begin() as conn:
            for row in unknown:
                if row.delivery_key not in found:
                    continue
                message_id = found[row.delivery_key]
                if message_id is None and row.updated_at > now - settle:
                    self.report.unknown += 1  # too recent to conclude anything
                    continue
                if message_id is None and _forgotten(self.provider, row, now):
                    # Older than the provider's memory: "not found" proves nothing.
                    self.report.unknown += 1
                    forgotten += 1
                    continue
                ledger.resolve_unknown(
                    conn,
                    row.id,
                    message_id=message_id,
                    sent_at=row.attempted_at or row.updated_at,
                )
                self.report.resolved += 1
        if forgotten:
            self.report.problems.append(
                f"{forgotten} unknown deliveries are older than {self.provider.name} keeps its "
                "log: decide them with `series resolve` (see `series status`)"
            )

    def replay(self, series_list: Sequence[Series], unknown: Sequence[Any]) -> list[Any]:
        """Repeat each interrupted request whole, with the same messages under the same
        idempotency key: if the provider took it the first time, it answers from that
        (nothing is sent twice); if not, it sends now. Returns the rows this cannot
        settle: the key has expired, or a recipient has left since (the first request
        may never have arrived, and must not be sent to them now)."""
        by_slug = {s.slug: s for s in series_list}
        now = self.clock()
        window = timedelta(seconds=self.provider.idempotency_window - self.provider.settle_time)
        groups: dict[str, list[Any]] = {}
        left: list[Any] = []
        for row in unknown:
            if row.batch is None or row.attempted_at is None:
                left.append(row)
            else:
                groups.setdefault(row.batch, []).append(row)
        for batch, rows in groups.items():
            if rows[0].attempted_at < now - window:
                left += rows  # the provider no longer knows the key
                continue
            gone = [
                r for r in rows if r.status != "active" or r.unsubscribed_at is not None or r.paused
            ]
            if gone:
                self.report.problems.append(
                    f"{len(rows)} deliveries of an interrupted request stay unknown: "
                    f"{gone[0].email} has left or paused since, so it cannot be repeated"
                )
                left += rows
                continue
            series = by_slug[rows[0].series]
            missing = sorted({r.part for r in rows if series.part(r.part) is None})
            if missing:
                self.report.problems.append(
                    f"{len(rows)} deliveries of an interrupted request stay unknown: part "
                    f"{missing[0]} of {series.slug} is no longer in the workspace"
                )
                left += rows
                continue
            if self.renderer is None:
                self.prepare_rendering(series_list)
            with self.store.begin() as conn:
                claimed = ledger.claim_unknown(
                    conn, [r.id for r in rows], batch, token=self.token, until=now + LEASE, now=now
                )
            if not claimed:
                continue  # another run is repeating it, or a recipient left just now
            messages = [
                self._build(
                    series,
                    r.part,
                    r.start_part,
                    r.subscriber_id,
                    r.email,
                    r.name,
                    r.delivery_key,
                    issued=r.attempted_at,
                )
                for r in rows
            ]
            # The key the request went out under, as recorded then: a request that
            # lost a member since has another body, which the provider refuses (409)
            # rather than sending again.
            results = self._send(messages, batch)
            outcome = {r.key: r for r in results}
            with self.store.begin() as conn:
                ledger.record_replay(
                    conn,
                    [
                        (r.id, outcome[r.delivery_key].outcome, outcome[r.delivery_key])
                        for r in rows
                    ],
                    token=self.token,
                    now=now,
                    sent_at=rows[0].attempted_at,
                )
            self._stop_if_halted()
            for r in rows:
                result = outcome[r.delivery_key]
                if result.outcome == "sent":
                    self.report.resolved += 1
                elif result.outcome == "unknown":
                    self.report.unknown += 1
                else:
                    self.report.failed += 1
                    self.report.problems.append(
                        f"{r.email}: part {r.part} of {r.series} failed: {result.error}"
                    )
        return left

    def _stop_if_halted(self) -> None:
        if self.halt is not None:
            raise self.halt

    # -- planning ----------------------------------------------------------

    def needs_full_plan(self, series: Series) -> bool:
        """Whether every enrollment must be planned (new content), not just the woken."""
        with self.store.connect() as conn:
            return self.options.dry_run or ledger.plan_marker(conn, series.slug) != fingerprint(
                series
            )

    def plan(
        self, series: Series, shard: tuple[int, int] | None = None
    ) -> list[tuple[Series, Due, Step]]:
        """Plan one series (or one worker's share of it): the deliveries due now."""
        now = self.options.now
        self.series[series.slug] = series
        version = fingerprint(series)
        self.versions[series.slug] = version
        everything = self.needs_full_plan(series)
        due: list[tuple[Series, Due, Step]] = []
        for chunk in ledger.iter_enrollments(
            self.store, series.slug, now=now, everything=everything, shard=shard
        ):
            bookmarks = []
            for enrollment in chunk:
                step = next_step(series, enrollment, now)
                if self.options.dry_run:
                    self._note(series, enrollment, step)
                if step.is_due and step.part is not None:
                    due.append((series, Due(enrollment, step.part), step))
                else:
                    bookmarks.append(_bookmark(enrollment, step, version, now))
            if not self.options.dry_run:
                with self.store.begin() as conn:
                    ledger.save_bookmarks(conn, bookmarks)
        return due

    def hold_back(self, items: Sequence[tuple[Series, Due, Step]]) -> None:
        """Deliveries this run leaves for the next (--limit): their wake-up time has come."""
        if self.options.dry_run:
            return
        with self.store.begin() as conn:
            ledger.save_bookmarks(
                conn,
                [
                    _bookmark(d.enrollment, step, self.versions[series.slug], self.options.now)
                    for series, d, step in items
                ],
            )

    def mark_planned(self, full: Sequence[Series]) -> None:
        """Every enrollment of these series now has a bookmark for their content."""
        if full and not self.options.dry_run:
            with self.store.begin() as conn:
                for series in full:
                    ledger.set_plan_marker(conn, series.slug, fingerprint(series))

    def workers_for(self, series_list: Sequence[Series]) -> int:
        """Worker processes for this run: several only for a large, unlimited real send."""
        options = self.options
        if options.workers < 2 or options.dry_run or options.limit is not None:
            return 1
        if not hasattr(os, "fork"):
            return 1
        enough = 2 * options.workers * self.provider.batch_size
        with self.store.connect() as conn:
            work = sum(
                ledger.count_to_plan(
                    conn, s.slug, now=options.now, everything=self.needs_full_plan(s), cap=enough
                )
                for s in series_list
            )
        batches = -(-work // self.provider.batch_size)
        return max(1, min(options.workers, batches // 2))

    def prepare_rendering(self, series_list: Sequence[Series]) -> None:
        """Render every part that can go out before anything is sent: a broken template
        in part 5 must stop the run before part 1 reaches anyone."""
        from .render import Renderer  # only now: a quiet run never needs it

        self.renderer = Renderer(self.config, now=self.options.now)
        with self.store.connect() as conn:
            starts = {s.slug: ledger.start_parts(conn, s.slug) for s in series_list}
        self.compiled.update(_compile_all(self.renderer, series_list, self.options.now, starts))

    def _note(self, series: Series, enrollment: Enrollment, step: Step) -> None:
        if step.kind == "complete":
            return
        article = series.part(step.part) if step.part is not None else None
        self.report.planned.append(
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

    # -- delivering --------------------------------------------------------

    def deliver(self, due: Sequence[tuple[Series, Due, Step]]) -> None:
        """Claim, render and send in batches, one batch in flight while the next is
        prepared and the last recorded: the provider's time overlaps with ours."""
        # A batch never mixes series; for a provider that personalises on its side (one
        # body per request), it never mixes parts or reader variants either.
        by_email: dict[tuple[str, int, int], list[Due]] = {}
        for series, item, _ in due:
            if self.provider.shared_body:
                variant = max(series.articles[0].part, item.enrollment.start_part)
                group = (series.slug, item.part, variant)
            else:
                group = (series.slug, 0, 0)
            by_email.setdefault(group, []).append(item)
        size = self.provider.batch_size
        batches = [
            (self.series[slug], items[start : start + size])
            for (slug, _, _), items in by_email.items()
            for start in range(0, len(items), size)
        ]
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="series-send") as sender:
            in_flight: _InFlight | None = None
            try:
                for series, items in batches:
                    claims, messages = self._prepare(series, items)
                    if in_flight is not None:
                        finished, in_flight = in_flight, None
                        self._finish(finished, also_release=claims)
                    if claims:
                        self.limiter.wait(len(messages))
                        key = ledger.batch_key(c.key for c in claims)
                        in_flight = _InFlight(
                            series, claims, sender.submit(self._send, messages, key)
                        )
                if in_flight is not None:
                    finished, in_flight = in_flight, None
                    self._finish(finished, also_release=[])
            except BaseException:
                if in_flight is not None:
                    in_flight.result.cancel()
                raise

    def plan_and_deliver_in_parallel(self, series_list: Sequence[Series], workers: int) -> None:
        """Share the enrollments out to worker processes by id, each planning and sending
        its own share (one core each; the claim protocol already makes concurrent
        senders safe), and add up what they report."""
        full = [s for s in series_list if self.needs_full_plan(s)]
        context = multiprocessing.get_context("fork")
        events: multiprocessing.queues.Queue[tuple[Any, ...]] = context.Queue()
        self.store.engine.dispose()  # no connection may be shared across a fork
        children = [
            context.Process(
                target=self._worker, args=(series_list, (k, workers), events), daemon=True
            )
            for k in range(workers)
        ]
        for child in children:
            child.start()
        failure: tuple[Any, ...] | None = None
        finished = 0
        planned: list[int] = []  # due deliveries per worker, once each has planned
        sent_early = 0  # progress reported before every worker had planned
        while finished < workers:
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
                    if self.options.on_total:
                        self.options.on_total(sum(planned))
                    if self.options.on_progress and sent_early:
                        self.options.on_progress(sent_early)
                continue
            if event[0] == "progress":
                if len(planned) < workers:
                    sent_early += event[1]
                elif self.options.on_progress:
                    self.options.on_progress(event[1])
                continue
            finished += 1
            if event[0] == "done":
                self.report.merge(event[1])
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
        self.mark_planned(full)

    def _worker(
        self,
        series_list: Sequence[Series],
        shard: tuple[int, int],
        events: multiprocessing.queues.Queue[tuple[Any, ...]],
    ) -> None:
        random.seed()  # each worker its own retry jitter
        if self.config.rate_limit:
            # The configured rate is for the whole run: each worker takes its share.
            self.limiter = RateLimiter(
                self.config.rate_limit / shard[1], self.options.monotonic, self.options.sleep
            )
        try:
            self.store = open_store(self.config.root, self.store.url, migrate=False)
            self.provider = get_provider(self.options.provider_name, self.config)
            self.report = SendReport()
            self.options.on_progress = lambda count: events.put(("progress", count))
            due: list[tuple[Series, Due, Step]] = []
            for series in series_list:
                due += self.plan(series, shard)
            due.sort(key=lambda item: item[2].due_at or self.options.now)
            events.put(("planned", len(due)))
            gc.freeze()
            self.deliver(due)
            events.put(("done", self.report))
        except ProviderError as exc:
            events.put(("failed", exc.auth, str(exc)))
        except BaseException as exc:
            events.put(("failed", False, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            self.provider.close()
            self.store.close()

    def _prepare(self, series: Series, items: Sequence[Due]) -> tuple[list[Claim], list[Message]]:
        now = self.clock()
        with self.store.begin() as conn:
            claims = ledger.claim(conn, items, token=self.token, until=now + LEASE, now=now)
        self.report.skipped += len(items) - len(claims)
        return claims, [self._message(series, claim, now) for claim in claims]

    def _finish(self, batch: _InFlight, *, also_release: Sequence[Claim]) -> None:
        try:
            results = batch.result.result()
        except ProviderError:
            # Nothing was sent (bad credentials): give the claims back, also those of
            # the batch prepared meanwhile, then stop.
            with self.store.begin() as conn:
                ledger.release(conn, [*batch.claims, *also_release], token=self.token)
            raise
        self._record(batch.series, batch.claims, results)
        if self.options.on_progress:
            self.options.on_progress(len(batch.claims))
        if self.halt is not None:
            with self.store.begin() as conn:
                ledger.release(conn, also_release, token=self.token)
            self._stop_if_halted()

    def _send(self, messages: Sequence[Message], key: str) -> list[SendResult]:
        """One batch, retried on transient errors with backoff (Retry-After first). An
        answer lost on the way back is retried only under an idempotency key; without
        one, the batch's outcome is unknown (never re-sent blindly). A refusal that stops
        the run (credentials, quota) after an attempt that may have gone through leaves
        the batch unknown and the run stops once it is recorded."""
        maybe_sent = False
        for attempt in range(RETRIES + 1):
            try:
                return self.provider.send(messages, batch_key=key)
            except ProviderError as exc:
                if exc.auth and maybe_sent:
                    self.halt = exc
                    return [SendResult(m.key, "unknown", error=str(exc)) for m in messages]
                if exc.auth:
                    raise
                maybe_sent = maybe_sent or exc.maybe_sent
                lost = exc.maybe_sent and (not exc.retryable or not self.provider.idempotent)
                if lost or (exc.maybe_sent and attempt == RETRIES):
                    return [SendResult(m.key, "unknown", error=str(exc)) for m in messages]
                if not exc.retryable or attempt == RETRIES:
                    return [SendResult(m.key, "failed", error=str(exc)) for m in messages]
                self.report.retried += 1
                wait = exc.retry_after
                if wait is None:
                    wait = min(LONGEST_BACKOFF, FIRST_BACKOFF * 2**attempt)
                    wait = random.uniform(wait / 2, wait)  # jitter: runs do not retry in step
                log.info("provider busy (%s); retrying in %.1f s", exc, wait)
                self.options.sleep(min(wait, LONGEST_BACKOFF))
        raise AssertionError("unreachable")

    def _record(
        self, series: Series, claims: Sequence[Claim], results: Sequence[SendResult]
    ) -> None:
        # Sends count from the run's time, the same for every reader of the run (so a
        # part due "4 days later" is due at the same hour); the ledger's clock moves on.
        now = self.options.now
        clock = self.clock()
        outcome = {r.key: r for r in results}
        version = self.versions[series.slug]
        rows = []
        bookmarks = []
        with self.store.begin() as conn:
            for claim in claims:
                result = outcome.get(claim.key) or SendResult(
                    claim.key, "unknown", error="no result"
                )
                rows.append((claim, result.outcome, result.message_id, result.error))
                if result.outcome == "sent":
                    self.report.sent += 1
                elif result.outcome == "unknown":
                    self.report.unknown += 1
                else:
                    self.report.failed += 1
                    self.report.problems.append(
                        f"{claim.enrollment.email}: part {claim.part} of {series.slug} failed: "
                        f"{result.error}"
                    )
                    if result.subscriber_status:
                        ledger.mark_subscriber(
                            conn,
                            claim.enrollment.subscriber_id,
                            result.subscriber_status,
                            actor=f"provider:{self.provider.name}",
                            reason=result.error or "",
                            now=now,
                        )
                entry = LedgerEntry(
                    result.outcome, claim.attempts, now, now if result.outcome == "sent" else None
                )
                updated = _with_entry(claim.enrollment, claim.part, entry)
                bookmarks.append(_bookmark(updated, next_step(series, updated, now), version, now))
            ledger.record(conn, rows, token=self.token, now=clock, sent_at=now)
            ledger.save_bookmarks(conn, bookmarks)

    def _message(self, series: Series, claim: Claim, issued: datetime) -> Message:
        e = claim.enrollment
        return self._build(
            series,
            claim.part,
            e.start_part,
            e.subscriber_id,
            e.email,
            e.name,
            claim.key,
            issued=issued,
        )

    def _build(
        self,
        series: Series,
        part: int,
        start_part: int,
        subscriber_id: int,
        email: str,
        name: str,
        key: str,
        *,
        issued: datetime,
    ) -> Message:
        article = series.part(part)
        assert article is not None  # the planner only proposes existing parts
        return personal_message(
            self.config,
            self.provider,
            self._compiled(series, article, start_part),
            key=key,
            sender=series.sender,
            to=Address(email, name),
            tag=f"{series.slug}-part{part}",
            token=lambda: self.signer.token(subscriber_id, series.slug, issued=issued),
        )

    def _compiled(self, series: Series, article: Article, start_part: int) -> CompiledEmail:
        first = max(series.articles[0].part, start_part)
        key = (series.slug, article.part, first)
        if key not in self.compiled:
            received = [a.part for a in series.articles if first <= a.part < article.part]
            assert self.renderer is not None  # set before anything is delivered
            self.compiled[key] = self.renderer.compile(series, article, received=received)
        return self.compiled[key]

    @property
    def signer(self) -> Signer:
        if self._signer is None:
            with self.store.connect() as conn:
                self._signer = ledger.link_signer(conn)
        return self._signer


def _forgotten(provider: Provider, row: Any, now: datetime) -> bool:
    """Whether the provider no longer keeps a log that far back (None: it always does)."""
    if provider.lookup_window is None:
        return False
    since = row.attempted_at or row.updated_at
    return bool(since < now - timedelta(seconds=provider.lookup_window))


def personal_message(
    config: Config,
    provider: Provider,
    compiled: CompiledEmail,
    *,
    key: str,
    sender: Address,
    to: Address,
    tag: str,
    token: Callable[[], str],
) -> Message:
    """One reader's email: their name and address filled in, and their unsubscribe link
    (a signed ``token`` in ``unsubscribe_url``, with the RFC 8058 headers) or the
    provider's own placeholder where it manages unsubscribes."""
    from .render import Personal

    headers: dict[str, str] = {}
    url = provider.managed_unsubscribe
    if url is None:
        url = config.unsubscribe_url.replace("{token}", token())
        headers = {
            "List-Unsubscribe": f"<{url}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }
    rendered = compiled.personalise(Personal(to.name, to.email, url), config.default_name)
    return Message(
        key=key,
        sender=sender,
        to=to,
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
        reply_to=config.reply_to,
        headers=headers,
        tag=tag,
        merge=Merge(
            compiled,
            {"name": to.name or config.default_name, "email": to.email, "unsubscribe_url": url},
        ),
    )


@dataclass
class _InFlight:
    series: Series
    claims: list[Claim]
    result: Future[list[SendResult]]


def _with_entry(enrollment: Enrollment, part: int, entry: LedgerEntry) -> Enrollment:
    ledger_map = dict(enrollment.ledger)
    ledger_map[part] = entry
    return Enrollment(**{**enrollment.__dict__, "ledger": ledger_map})


def _bookmark(
    enrollment: Enrollment, step: Step, version: str, now: datetime
) -> tuple[int, datetime | None, str, datetime | None]:
    completed = now if step.kind == "complete" else None
    return (enrollment.id, step.wake_at, version, completed)


def dry_run_rows(report: SendReport) -> list[Planned]:
    """The plan in the order an editor reads it: due now first, then by time."""
    order = {"due": 0, "scheduled": 1, "in_flight": 2, "unknown": 3, "waiting": 4, "gave_up": 5}
    never = datetime.max.replace(tzinfo=UTC)
    return sorted(
        report.planned,
        key=lambda p: (order.get(p.kind, 9), p.due_at or never, p.series, p.email),
    )
