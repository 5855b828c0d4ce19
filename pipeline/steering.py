"""Editors steer readers: pause and resume an enrollment, move a reader to another part.

Each change is one transaction and one audit entry (``status_changes``, with
``new_status`` "paused", "resumed" or "moved" and the series), and makes the next
send plan the enrollment afresh. The drip rules that follow from them are in
plan.py's docstring and the README ("Steering readers").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .content import Article, Series
from .plan import PAST, Enrollment, LedgerEntry, Step, next_step
from .store import Store
from .store.ledger import record_status
from .store.schema import deliveries, enrollments, replanned, subscribers
from .subscribers import SubscriberError, find

# Ledger states a move refuses to touch: a run is sending it, or its outcome is open.
OPEN_STATES = ("claimed", "unknown")


def _enrollment_rows(
    conn: Connection, subscriber_id: int, email: str, series: str | None
) -> list[Any]:
    """The person's enrollments (one series, or all); an error naming where they are
    enrolled when ``series`` is not one of them. On PostgreSQL they stay locked (FOR
    UPDATE) until the caller's transaction ends: a claim being written for them
    (`ledger.active_readers`) is waited for, so that what the caller reads next (the
    deliveries) includes it, and a claim that comes later waits for the change."""
    rows = conn.execute(
        sa.select(enrollments)
        .where(enrollments.c.subscriber_id == subscriber_id)
        .order_by(enrollments.c.series)
        .with_for_update()
    ).all()
    if series is None:
        if not rows:
            raise SubscriberError(f"{email} is enrolled in no series")
        return list(rows)
    chosen = [r for r in rows if r.series == series]
    if not chosen:
        names = ", ".join(r.series for r in rows) or "none"
        raise SubscriberError(f"{email} is not enrolled in '{series}' (enrolled in: {names})")
    return chosen


def set_paused(
    store: Store,
    email: str,
    *,
    paused: bool,
    now: datetime,
    series: str | None = None,
    actor: str = "cli",
) -> str:
    """Pause (``paused``) or resume one enrollment, or every enrollment of the person
    without ``series``. Audited as "paused" / "resumed". Returns what was done, in
    words. Raises SubscriberError for an unknown address or an enrollment that does
    not exist. A paused reader keeps their ledger and so their position; on resume
    the planner makes their next part due at its normal time, or at once if that
    passed meanwhile (one part per run, then the normal delays).

    A pause is refused (SubscriberError, no audit entry) for a person who is not
    active, or whose chosen enrollments are all unsubscribed: nothing is sent to them,
    so it would change nothing; unsubscribed enrollments among others are left as they
    are. Resuming always clears the flag (it matters if they come back), and says when
    nothing is sent anyway."""
    subscriber = find(store, email)
    word = "paused" if paused else "resumed"
    with store.begin() as conn:
        rows = _enrollment_rows(conn, subscriber.id, subscriber.email, series)
        gone = [r for r in rows if r.unsubscribed_at is not None]
        if paused and (subscriber.status != "active" or len(gone) == len(rows)):
            # Nothing is sent to them: a pause would change nothing and only add an
            # audit entry that looks like it did.
            why = (
                f"{subscriber.email} is {subscriber.status}"
                if subscriber.status != "active"
                else f"{subscriber.email} is unsubscribed from {', '.join(r.series for r in gone)}"
            )
            raise SubscriberError(f"{why}: nothing is sent to them, so there is nothing to pause")
        if paused:
            rows = [r for r in rows if r.unsubscribed_at is None]
        changing = [r for r in rows if r.paused != paused]
        for row in changing:
            conn.execute(
                enrollments.update()
                .where(enrollments.c.id == row.id)
                .values(paused=paused, **replanned())
            )
            record_status(
                conn,
                subscriber.id,
                None,
                word,
                actor=actor,
                now=now,
                series=row.series,
            )
    left = [r.series for r in gone]
    note = ""
    if paused and left:
        note = f" (unsubscribed from {', '.join(left)}: nothing is sent there, left as it is)"
    if not changing:
        where = ", ".join(r.series for r in rows)
        if paused:
            return f"{subscriber.email} was already paused in {where}{note}"
        return f"{subscriber.email} was not paused in {where}"
    names = ", ".join(r.series for r in changing)
    if paused:
        return f"paused {subscriber.email} in {names}: nothing is sent until resumed{note}"
    left = [r.series for r in changing if r.unsubscribed_at is not None]
    if subscriber.status != "active":
        note = f" ({subscriber.email} is {subscriber.status}: nothing is sent anyway)"
    elif left:
        note = f" (unsubscribed from {', '.join(left)}: nothing is sent there anyway)"
    return f"resumed {subscriber.email} in {names}{note}"


def move(
    store: Store,
    series: Series,
    email: str,
    target: Article,
    *,
    now: datetime,
    resend: bool = False,
    actor: str = "cli",
    zone: ZoneInfo | None = None,
) -> str:
    """Move a reader of ``series`` so that ``target`` is where they continue.

    Articles before the target that the reader does not have (never sent, or failed)
    become ``skipped``: never sent to them, and counted apart. Skipped articles at or
    after the target become sendable again. Articles at or after it that the reader
    received are not sent again unless ``resend``: then their deliveries are removed
    from the ledger (listed in the audit entry, with when and the provider's id) and
    they are sent again in order. The target is due at once, inside the send window;
    a target that is a draft or not yet published holds them until it is out. Times in
    the audit entry are in ``zone`` (the workspace's; UTC without it), with the offset.

    Refused (SubscriberError) while a delivery of theirs in the series is being sent
    or of unknown outcome. Returns what was done and what comes next, in words."""
    subscriber = find(store, email)
    index = series.articles.index(target)
    before = {a.slug: a for a in series.articles[:index]}
    later = {a.slug for a in series.articles[index:]}
    with store.begin() as conn:
        (row,) = _enrollment_rows(conn, subscriber.id, subscriber.email, series.slug)
        ledger = conn.execute(
            sa.select(deliveries).where(
                deliveries.c.subscriber_id == subscriber.id, deliveries.c.series == series.slug
            )
        ).all()
        busy = [d for d in ledger if d.state in OPEN_STATES]
        if busy:
            raise SubscriberError(
                f"{subscriber.email}: part {busy[0].part} of {series.slug} is being sent or its "
                "outcome is unknown; wait for the run, or settle it (`series status`, `series "
                "resolve`), then move"
            )
        have = {d.article: d for d in ledger}
        skipped = [
            a
            for slug, a in before.items()
            if have.get(slug) is None or have[slug].state == "failed"
        ]
        for article in skipped:
            if article.slug in have:
                conn.execute(
                    deliveries.update()
                    .where(deliveries.c.id == have[article.slug].id)
                    .values(state="skipped", part=article.part, updated_at=now, sent_at=None)
                )
            else:
                conn.execute(
                    deliveries.insert().values(
                        subscriber_id=subscriber.id,
                        series=series.slug,
                        article=article.slug,
                        part=article.part,
                        state="skipped",
                        attempts=0,
                        created_at=now,
                        updated_at=now,
                    )
                )
        unskipped = [d for d in ledger if d.article in later and d.state == "skipped"]
        resent = sorted(
            (d for d in ledger if d.article in later and d.state == "sent" and resend),
            key=lambda d: (d.part, d.id),
        )
        gone = [d.id for d in unskipped + resent]
        if gone:
            conn.execute(deliveries.delete().where(deliveries.c.id.in_(gone)))
        conn.execute(
            enrollments.update()
            .where(enrollments.c.id == row.id)
            .values(moved_to=target.slug, moved_at=now, completed_at=None, **replanned())
        )
        reason = f"to part {target.part} '{target.slug}'"
        if skipped:
            reason += "; skipped " + ", ".join(f"part {a.part} '{a.slug}'" for a in skipped)
        if resent:
            reason += (
                "; to send again (earlier deliveries: "
                + "; ".join(
                    f"part {d.part} '{d.article}' sent {_iso(d.sent_at, zone)}"
                    + (f", provider id {d.provider_message_id}" if d.provider_message_id else "")
                    for d in resent
                )
                + ")"
            )
        record_status(
            conn,
            subscriber.id,
            None,
            "moved",
            actor=actor,
            now=now,
            series=series.slug,
            reason=reason,
            ours=True,  # provider ids (an outbox file is named after the reader) kept
        )
        after = _plan_enrollment(conn, series, subscriber.id, now)
    return _moved_text(subscriber.email, series, target, skipped, resent, after, row.paused)


def _iso(moment: datetime | None, zone: ZoneInfo | None) -> str:
    if moment is None:
        return "at an unknown time"
    return moment.astimezone(zone or UTC).isoformat(timespec="minutes")


def _moved_text(
    email: str,
    series: Series,
    target: Article,
    skipped: list[Article],
    resent: list[Any],
    step: Step,
    paused: bool,
) -> str:
    text = f"moved {email} in {series.slug} to part {target.part}"
    if skipped:
        text += f"; skipped (not sent): part {', '.join(str(a.part) for a in skipped)}"
    if resent:
        text += f"; to be sent again: part {', '.join(str(d.part) for d in resent)}"
    if step.kind == "complete":
        text += (
            f"; they already have every part from {target.part} on, so nothing more is sent "
            "(--resend sends them again)"
        )
    elif step.part is not None and step.part != target.part:
        text += (
            f"; they already have part {target.part}, so next is part {step.part} "
            "(--resend sends what they have again)"
        )
    if step.kind == "waiting" and step.part is not None:
        # As the dry run says it; the part goes out once published (still one per run).
        text += f"; {step.reason}: they wait until it is published"
    elif step.kind == "paused":
        text += f"; {step.reason} (paused: true in series.yml): nothing is sent until it is lifted"
    if paused:
        text += "; they are paused: nothing is sent until `series subscribers resume`"
    return text


def reader_enrollment(
    conn: Connection, row: Any, email: str, name: str, timezone: str | None
) -> Enrollment:
    """The planner's view of one enrollment row (``enrollments``) with its ledger."""
    entries = {
        d.article: LedgerEntry(d.state, d.attempts, d.updated_at, d.sent_at, d.claimed_until)
        for d in conn.execute(
            sa.select(deliveries).where(
                deliveries.c.subscriber_id == row.subscriber_id, deliveries.c.series == row.series
            )
        )
    }
    return Enrollment(
        id=row.id,
        subscriber_id=row.subscriber_id,
        email=email,
        name=name,
        timezone=timezone,
        series=row.series,
        enrolled_at=row.enrolled_at,
        start_part=row.start_part,
        ledger=entries,
        moved_to=row.moved_to,
        moved_at=row.moved_at,
    )


def _plan_enrollment(conn: Connection, series: Series, subscriber_id: int, now: datetime) -> Step:
    person = conn.execute(sa.select(subscribers).where(subscribers.c.id == subscriber_id)).one()
    row = conn.execute(
        sa.select(enrollments).where(
            enrollments.c.subscriber_id == subscriber_id, enrollments.c.series == series.slug
        )
    ).one()
    enrollment = reader_enrollment(conn, row, person.email, person.name, person.timezone)
    return next_step(series, enrollment, now)


def move_target(series: Series, *, to_part: int | None, next_slug: str | None) -> Article:
    """The article named by ``--to-part K`` (today's part number) or ``--next SLUG``
    (exactly one of them); SubscriberError naming the choices otherwise."""
    if (to_part is None) == (next_slug is None):
        raise SubscriberError("give either --to-part K or --next ARTICLE-SLUG")
    if to_part is not None:
        article = series.part(to_part)
        if article is None:
            parts = ", ".join(str(a.part) for a in series.articles) or "none"
            raise SubscriberError(f"series '{series.slug}' has no part {to_part} (parts: {parts})")
        return article
    article = series.article(next_slug or "")
    if article is None:
        slugs = ", ".join(a.slug for a in series.articles) or "none"
        raise SubscriberError(
            f"series '{series.slug}' has no article '{next_slug}' (articles: {slugs})"
        )
    return article


@dataclass(frozen=True)
class Story:
    """One reader's whole story for `series subscribers show`: the subscriber row, each
    enrollment with the planner's next step (None: the series is not in the
    workspace), every delivery, and the audit of their status changes, oldest first."""

    subscriber: Any
    enrollments: list[tuple[Any, Step | None]]
    deliveries: list[Any]
    audit: list[Any]


def story(store: Store, email: str, series_list: list[Series], now: datetime) -> Story:
    """Everything the state database holds about one reader (SubscriberError if none)."""
    from .store.schema import status_changes

    found = find(store, email)
    by_slug = {s.slug: s for s in series_list}
    with store.connect() as conn:
        person = conn.execute(sa.select(subscribers).where(subscribers.c.id == found.id)).one()
        plans: list[tuple[Any, Step | None]] = []
        for row in conn.execute(
            sa.select(enrollments)
            .where(enrollments.c.subscriber_id == found.id)
            .order_by(enrollments.c.series)
        ).all():
            series = by_slug.get(row.series)
            step = None
            if series is not None:
                enrollment = reader_enrollment(
                    conn, row, person.email, person.name, person.timezone
                )
                step = next_step(series, enrollment, now)
            plans.append((row, step))
        rows = sorted(
            conn.execute(sa.select(deliveries).where(deliveries.c.subscriber_id == found.id)).all(),
            # Per series, in the order the reader got them; one run's sends share a
            # time, so the part decides between them.
            key=lambda d: (d.series, d.sent_at or d.attempted_at or d.updated_at, d.part, d.id),
        )
        audit = conn.execute(
            sa.select(status_changes)
            .where(status_changes.c.subscriber_id == found.id)
            .order_by(status_changes.c.created_at, status_changes.c.id)
        ).all()
    return Story(person, plans, list(rows), list(audit))


__all__ = ["PAST", "Story", "move", "move_target", "set_paused", "story"]
