"""Before planning: settle the deliveries that an earlier run left unknown (a crash,
a lost answer, a lease that ran out). Where the provider honours idempotency keys
the interrupted request is repeated whole under its key; otherwise each delivery is
looked up at the provider. What cannot be settled stays unknown and is reported,
never sent again blindly (DESIGN §7)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from ..content import Series
from ..plan import held_until, reader_zone, window_opening
from ..providers import Message, Pending, Provider, ProviderError
from ..store import StoreError, ledger
from .attempts import LEASE_LOST, Withheld, refuse_if_stopping, renew, send_batch
from .compose import first_line
from .run import LEASE, Run


def reconcile(run: Run, series_list: Sequence[Series]) -> None:
    """Settle deliveries left unknown by a crash or a timeout before planning: repeat
    their request under the same idempotency key where the provider has them, else
    look them up; whatever cannot be settled stays unknown and is reported."""
    report = run.report
    before = report.failed + report.unknown
    try:
        _reconcile(run, series_list)
    finally:
        # Counted in the summary, but not among the deliveries this run hands over.
        report.carried += report.failed + report.unknown - before


def _reconcile(run: Run, series_list: Sequence[Series]) -> None:
    now = run.clock()
    report = run.report
    with run.store.begin() as conn:
        ledger.expire_claims(conn, now)
        unknown = ledger.unknown_deliveries(conn, [s.slug for s in series_list])
    if unknown and run.provider.idempotent:
        unknown = replay(run, series_list, unknown)
    if not unknown:
        return
    pending = [
        Pending(row.delivery_key, row.email, row.attempted_at or row.updated_at - LEASE)
        for row in unknown
    ]
    found, failure = _look_up(run, pending)
    if failure is not None and not found:
        report.problems.append(f"could not check {len(unknown)} unknown deliveries: {failure}")
        report.unknown += len(unknown)
        return
    forgotten = recent = 0
    settle = timedelta(seconds=run.provider.settle_time)
    unchecked = [row for row in unknown if row.delivery_key not in found]
    if unchecked:
        report.unknown += len(unchecked)
        # (A lookup cut short by an error says nothing more: the run does not retry it.)
        report.problems.append(
            f"{run.provider.name} checked {len(unknown) - len(unchecked)} of "
            f"{len(unknown)} unknown deliveries; the rest wait for a later run"
            if found or not run.stopping()
            else f"{len(unknown)} unknown deliveries were not looked up before the run "
            "was stopped; a later run looks them up"
        )
    with run.store.begin() as conn:
        for row in unknown:
            if row.delivery_key not in found:
                continue
            message_id = found[row.delivery_key]
            if message_id is None and _forgotten(run.provider, row, now):
                # Older than the provider's memory: "not found" proves nothing, now or
                # later (a claim that expired just now may have been sent days ago).
                report.unknown += 1
                forgotten += 1
                continue
            if message_id is None and row.updated_at > now - settle:
                report.unknown += 1  # too recent to conclude anything
                recent += 1
                continue
            settled = ledger.resolve_unknown(
                conn,
                row.id,
                message_id=message_id,
                sent_at=row.attempted_at or row.updated_at,
            )
            if settled:  # not when another run looking them up got there first
                report.resolved += 1
    if recent:
        report.problems.append(
            f"{recent} unknown deliveries were interrupted less than "
            f"{settle.seconds // 60} minutes ago, too soon to take {run.provider.name}'s "
            '"not found" as final: a later run looks them up again'
        )
    if forgotten:
        report.problems.append(
            f"{forgotten} unknown deliveries are older than {run.provider.name} keeps its "
            "log: decide them with `series resolve` (see `series status`)"
        )


def _look_up(
    run: Run, pending: Sequence[Pending]
) -> tuple[dict[str, str | None], ProviderError | None]:
    """The provider's answer for ``pending``, asked ``Provider.lookup_batch`` deliveries
    at a time so that a stop (a signal) is heeded between its requests: (the provider's
    message id, or None where it has none, by delivery key, for each delivery checked;
    the error that ended the lookups early, or None). A delivery left out was not
    checked. Raises ProviderError when the provider refuses the run (credentials)."""
    size = run.provider.lookup_batch or len(pending)
    found: dict[str, str | None] = {}
    for start in range(0, len(pending), size):
        if run.stopping():
            break
        try:
            found.update(run.provider.lookup(pending[start : start + size]))
        except ProviderError as exc:
            if exc.auth:
                raise
            return found, exc
    return found, None


def replay(run: Run, series_list: Sequence[Series], unknown: Sequence[Any]) -> list[Any]:
    """Repeat each interrupted request whole, with the same messages under the same
    idempotency key: if the provider took it the first time, it answers from that
    (nothing is sent twice); if not, it sends now. Returns the rows this cannot
    settle: the key has expired, or a recipient has left since (the first request
    may never have arrived, and must not be sent to them now).

    A repeat may send, so it keeps the rule every send keeps: it goes out only while
    every reader of the request is inside their send window (checked again right
    before each attempt, with the claims' lease renewed); otherwise the request stays
    unknown, counted and reported, until a run inside the window repeats it. Its key
    may expire meanwhile (Resend keeps one for a day): then it waits for a person
    (`series resolve`), which is better than sending at 02:00."""
    by_slug = {s.slug: s for s in series_list}
    report = run.report
    window = timedelta(seconds=run.provider.idempotency_window - run.provider.settle_time)
    groups: dict[str, list[Any]] = {}
    left: list[Any] = []
    for row in unknown:
        if row.batch is None or row.attempted_at is None:
            left.append(row)
        else:
            groups.setdefault(row.batch, []).append(row)
    for batch, rows in groups.items():
        if run.stopping():
            report.unknown += len(rows)
            continue
        if rows[0].attempted_at < run.clock() - window:
            left += rows  # the provider no longer knows the key
            continue
        gone = [
            r for r in rows if r.status != "active" or r.unsubscribed_at is not None or r.paused
        ]
        if gone:
            # Their delivery stays unknown (the request may have reached them); the
            # others' is repeated without them, under the request's key: the provider
            # refuses the changed body if it has the first, and sends it if not.
            report.problems.append(
                f"{len(gone)} deliveries of an interrupted request stay unknown: "
                f"{gone[0].email} has left or paused since"
                + (", so it cannot be repeated" if len(gone) == len(rows) else "")
            )
            left += gone
            rows = [r for r in rows if r not in gone]
            if not rows:
                continue
        series = by_slug[rows[0].series]
        if series.paused:
            # Repeating it may send: it waits, unknown, until the series is resumed.
            report.unknown += len(rows)
            report.problems.append(
                f"{len(rows)} deliveries of an interrupted request stay unknown while "
                f"{series.slug} is paused: repeating it may send it"
            )
            continue
        missing = sorted((r.article, r.part) for r in rows if series.article(r.article) is None)
        if missing:
            slug, part = missing[0]
            report.problems.append(
                f"{len(rows)} deliveries of an interrupted request stay unknown: '{slug}' "
                f"(sent as part {part}) of {series.slug} is no longer in the workspace"
            )
            left += rows
            continue
        closed = _outside_window(series, rows, run.clock())
        if closed:
            report.unknown += len(rows)
            report.problems.append(
                f"{len(rows)} deliveries of an interrupted request stay unknown until the "
                f"send window opens: repeating it may send it ({closed})"
            )
            continue
        if run.composer.renderer is None:
            run.composer.prepare(series_list)
        _repeat(run, series, rows, batch)
    return left


def _repeat(run: Run, series: Series, rows: Sequence[Any], batch: str) -> None:
    """Claim one interrupted request's deliveries, repeat it and record the outcome."""
    report = run.report
    with run.store.connect() as conn:
        # What each reader had then: nothing else reaches them while this is unknown.
        history = ledger.received_articles(conn, series.slug, [r.subscriber_id for r in rows])
    try:
        messages = [
            run.composer.build(
                series,
                r.article,
                history.get(r.subscriber_id, frozenset()),
                r.subscriber_id,
                r.email,
                r.name,
                r.delivery_key,
                issued=r.attempted_at,
                first_name=r.first_name or "",
            )
            for r in rows
        ]
    except StoreError:
        raise
    except Exception as exc:  # one reader's data: the request cannot be repeated as it was
        report.unknown += len(rows)
        report.problems.append(
            f"{len(rows)} deliveries of an interrupted request stay unknown: its messages "
            f"cannot be made again: {first_line(exc)}"
        )
        return
    ids = [r.id for r in rows]
    run.limiter.wait(len(rows))
    now = run.clock()
    with run.store.begin() as conn:
        claimed = ledger.claim_unknown(
            conn, ids, batch, token=run.token, until=now + run.options.lease, now=now
        )
    if not claimed:
        return  # another run is repeating it, or a recipient left just now
    # The key the request went out under, as recorded then: a request that lost a
    # member since has another body, which the provider refuses (409) rather than
    # sending again.
    out: set[str] = set()  # delivery keys left out of the repeat: their readers left
    gate = functools.partial(_gate, run, series, rows, messages, batch, out)
    try:
        results = send_batch(run, messages, batch, gate)
    except Withheld as exc:
        with run.store.begin() as conn:
            kept = ledger.unclaim_unknown(conn, ids, token=run.token)
        report.unknown += kept
        report.problems.append(
            f"{kept} deliveries of an interrupted request stay unknown: not repeated ({exc})"
        )
        return
    if out:
        gone = [r.id for r in rows if r.delivery_key in out]
        rows = [r for r in rows if r.delivery_key not in out]
        with run.store.begin() as conn:
            kept = ledger.unclaim_unknown(conn, gone, token=run.token)
        report.unknown += kept
        if kept:  # (none when the one who left was erased, their rows with them)
            report.problems.append(
                f"{kept} deliveries of an interrupted request stay unknown: their readers "
                "left while it was repeated (the others went without them)"
            )
        if not rows:
            return  # everyone left after an attempt that may have been sent
    outcome = {r.key: r for r in results}
    with run.store.begin() as conn:
        ledger.record_replay(
            conn,
            [(r.id, outcome[r.delivery_key].outcome, outcome[r.delivery_key]) for r in rows],
            token=run.token,
            now=run.clock(),
            sent_at=rows[0].attempted_at,
        )
    run.stop_if_halted()
    for r in rows:
        result = outcome[r.delivery_key]
        if result.outcome == "sent":
            report.resolved += 1
        elif result.outcome == "unknown":
            report.unknown += 1
        else:
            report.failed += 1
            report.problems.append(f"{r.email}: part {r.part} of {r.series} failed: {result.error}")


def _gate(
    run: Run,
    series: Series,
    rows: Sequence[Any],
    messages: Sequence[Message],
    batch: str,
    out: set[str],
    maybe_sent: bool,
) -> tuple[Sequence[Message], str]:
    """Right before each attempt of a repeat: the request under its key, without the
    readers who left since the claim (their delivery keys are added to ``out``: their
    outcome stays unknown), or Withheld (the run is stopping, a reader's window has
    closed, nobody is left, or a claim is no longer ours)."""
    refuse_if_stopping(run)
    clock = run.clock()
    with run.store.begin() as conn:
        gone = ledger.departed(conn, series.slug, {r.subscriber_id: r.enrollment_id for r in rows})
        out.update(r.delivery_key for r in rows if r.subscriber_id in gone)
        staying = [r for r in rows if r.delivery_key not in out]
        # Only the window of those it goes to (one who left holds nobody back).
        closed = _outside_window(series, staying, clock)
        lost = renew(run, conn, [r.id for r in staying], clock) if staying and not closed else 0
    if closed:
        raise Withheld(closed)
    if not staying:
        raise Withheld(
            "its readers can no longer be written to: unsubscribed, paused, bounced or "
            "erased since it went out"
        )
    if lost:
        raise Withheld(LEASE_LOST, lost=lost)
    return [m for m in messages if m.key not in out], batch


def _outside_window(series: Series, rows: Sequence[Any], moment: datetime) -> str | None:
    """The first reader of a request outside their send window at ``moment``, as
    "EMAIL: held until Mon 09:00 (send window)"; None when all are inside."""
    for row in rows:
        opening = window_opening(series, row.timezone, moment)
        if opening is not None:
            return f"{row.email}: {held_until(opening, reader_zone(row.timezone, series))}"
    return None


def _forgotten(provider: Provider, row: Any, now: datetime) -> bool:
    """Whether the provider no longer keeps a log that far back (None: it always does)."""
    if provider.lookup_window is None:
        return False
    since = row.attempted_at or row.updated_at
    return bool(since < now - timedelta(seconds=provider.lookup_window))
