"""Handing one request to the provider: the attempts and their retries, and the pieces
of the gate that runs right before each attempt which the send loop (`deliver`) and
the repeat of an interrupted request (`reconcile`) share.

Right before each attempt the run's lease on every claim of the request is renewed
(or found to last long enough, by a read); a claim it no longer holds (its lease ran
out and another run may have taken the delivery over) means the request is not sent
at all. Transient errors are retried with backoff, honouring what the provider says
about waiting; an answer lost on the way back is retried only under an idempotency
key, else the request's outcome is unknown: never sent again blindly.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from ..providers import Message, ProviderError, SendResult
from ..store import ledger
from .run import Run

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

log = logging.getLogger(__name__)

RETRIES = 4  # attempts after the first
LEASE_LOST = "this run's claim ran out"
FIRST_BACKOFF = 1.0  # seconds before the first retry, doubled for each next (with jitter)
LONGEST_BACKOFF = 60.0  # seconds


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
