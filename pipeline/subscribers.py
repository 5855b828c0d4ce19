"""Subscribers and enrollments: add, list, unsubscribe, erase (DESIGN §5).

Addresses are validated with email-validator and normalised (lower case) so that
one person is one row. Every status change is written to ``status_changes``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email
from sqlalchemy.engine import Connection

from .config import parse_zone
from .content import Series
from .errors import SeriesError
from .headers import clean_name, smtputf8_problem
from .personal import FIRST_NAME_ATTRIBUTE
from .sources import encodable, quote
from .store import Store
from .store.ledger import record_status
from .store.schema import (
    STATUSES,
    deliveries,
    enrollments,
    replanned,
    signups,
    status_changes,
    subscribers,
    suppressions,
)

Outcome = Literal["imported", "updated", "unchanged"]
# The most characters a name (and a first name, which greets by part of it) may have:
# the name column's size (store/schema.py).
NAME_LENGTH: int = subscribers.c.name.type.length  # type: ignore[attr-defined]
# RFC 5321 section 4.5.3.1.1: a local part is at most 64 octets. email-validator checks
# it only in strict mode.
LOCAL_PART_LIMIT = 64
ERASED_REASON = "erased"


class SubscriberError(SeriesError):
    """A subscriber command named an address, series or value that does not fit."""


@dataclass(frozen=True)
class Catalog:
    """What the workspace's content allows: series slugs and their part numbers."""

    parts: Mapping[str, tuple[int, ...]]

    @classmethod
    def of(cls, series_list: list[Series]) -> Catalog:
        return cls({s.slug: tuple(a.part for a in s.articles) for s in series_list})

    def check_series(self, slug: str) -> str | None:
        if slug not in self.parts:
            names = ", ".join(sorted(self.parts)) or "none"
            return f"unknown series '{slug}' (series in this workspace: {names})"
        return None

    def check_part(self, slug: str, part: int) -> str | None:
        parts = self.parts.get(slug, ())
        if part not in parts:
            listed = ", ".join(map(str, parts)) or "none"
            return f"series '{slug}' has no part {part} (parts: {listed})"
        return None


@dataclass(frozen=True)
class Enrollment:
    series: str
    start_part: int
    paused: bool
    completed: bool
    unsubscribed: bool
    last_part: int | None  # the highest part sent


@dataclass(frozen=True)
class Subscriber:
    id: int
    email: str
    name: str
    status: str
    timezone: str | None
    created_at: datetime
    source: str
    attributes: dict[str, Any]
    enrollments: tuple[Enrollment, ...] = field(default=())


# Plain ASCII addresses (RFC 5322 dot-atom local part, LDH domain labels): the great
# majority of any list. For them only the domain needs email-validator's full rules,
# and a list has few distinct domains, so that answer is cached. Anything else takes
# the full validator; tests check both paths agree.
_ATOM = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_PLAIN_ADDRESS = re.compile(rf"({_ATOM}(?:\.{_ATOM})*)@({_LABEL}(?:\.{_LABEL})+)", re.ASCII)


def normalise_email(raw: str) -> str:
    """A valid address in its one canonical form; ValueError says why it is not valid."""
    address = raw.strip().lower()
    plain = _PLAIN_ADDRESS.fullmatch(address)
    if plain and len(plain.group(1)) <= 64 and len(address) <= 254:
        domain = _normal_domain(plain.group(2))
        if domain is not None:
            return f"{plain.group(1)}@{domain}"
    try:
        return validate_email(raw.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise ValueError(f"invalid email {quote(raw.strip())}: {exc}") from None


def sendable_email(raw: str) -> str:
    """A new address, as ``normalise_email`` gives it, that series can also send to: the
    one rule for ``subscribers add``, import and ``test-send --to``. An IDN domain is
    fine (it goes out in ASCII); a non-ASCII local part is refused, since it would need
    SMTPUTF8 (RFC 6531), and so is one longer than 64 octets (RFC 5321). ValueError
    says why."""
    address = normalise_email(raw)
    problem = smtputf8_problem(address)
    if problem is not None:
        raise ValueError(f"{address}: {problem}")
    local = address.rpartition("@")[0]
    if len(local.encode("utf-8")) > LOCAL_PART_LIMIT:
        # An address already on the list stays findable (normalise_email): only new ones
        # are held to the limit.
        raise ValueError(
            f"invalid email {quote(raw.strip())}: the part before the @ is {len(local)} "
            f"characters long; at most {LOCAL_PART_LIMIT} are allowed (RFC 5321)"
        )
    return address


@lru_cache(maxsize=4096)
def _normal_domain(domain: str) -> str | None:
    """email-validator's verdict on a domain: its normalised form, or None if invalid."""
    try:
        checked = validate_email(f"postmaster@{domain}", check_deliverability=False)
    except EmailNotValidError:
        return None
    return str(checked.domain).lower()


def check_timezone(name: str) -> str:
    """``name`` if it is an IANA timezone; ValueError otherwise (config.parse_zone)."""
    parse_zone(name, ValueError)
    return name


def is_erased(store: Store, conn: Connection, email: str) -> bool:
    digest = store.email_hash(conn, email)
    found = conn.execute(
        sa.select(suppressions.c.email_hash).where(suppressions.c.email_hash == digest)
    ).first()
    return found is not None


def add_subscriber(
    store: Store,
    catalog: Catalog,
    email: str,
    *,
    now: datetime,
    name: str | None = None,
    series: str | None = None,
    start_part: int | None = None,
    timezone: str | None = None,
    resubscribe: bool = False,
    actor: str = "cli",
    first_name: str | None = None,
) -> Outcome:
    """Create or update one subscriber and, with ``series``, enroll them. The name is
    stored cleaned (``clean_name``); an address series cannot send to is refused.
    ``first_name`` (the greeting's, kept as the ``first_name`` attribute) is cleaned
    the same way; ``""`` (or only spaces) removes it, None leaves it as it is.
    SubscriberError when a name or first name is longer than the name column holds."""
    if name is not None:
        name = clean_name(name)
    if first_name is not None:
        first_name = clean_name(first_name)
    for what, value in (("name", name), ("first name", first_name)):
        if value is not None and not encodable(value):
            # A byte that is not UTF-8 on the command line comes in as a lone surrogate,
            # which no database can store.
            raise SubscriberError(f"the {what} holds a byte that is not UTF-8")
        if value is not None and len(value) > NAME_LENGTH:
            raise SubscriberError(
                f"the {what} is {len(value):,} characters long (at most {NAME_LENGTH:,})"
            )
    try:
        address = sendable_email(email)
        if timezone is not None:
            check_timezone(timezone)
    except ValueError as exc:
        raise SubscriberError(str(exc)) from None
    if start_part is not None and series is None:
        raise SubscriberError("--start-part needs --series")
    if series is not None:
        problem = catalog.check_series(series) or catalog.check_part(series, start_part or 1)
        if problem:
            raise SubscriberError(problem)
    with store.begin() as conn:
        if is_erased(store, conn, address):
            raise SubscriberError(
                f"{address} was erased at the person's request and cannot be added again"
            )
        row = conn.execute(sa.select(subscribers).where(subscribers.c.email == address)).first()
        if row is None:
            subscriber_id = conn.execute(
                subscribers.insert()
                .values(
                    email=address,
                    name=name or "",
                    status="active",
                    timezone=timezone,
                    created_at=now,
                    updated_at=now,
                    source=actor,
                    attributes={FIRST_NAME_ATTRIBUTE: first_name} if first_name else {},
                )
                .returning(subscribers.c.id)
            ).scalar_one()
            record_status(conn, subscriber_id, None, "active", actor=actor, now=now)
            outcome: Outcome = "imported"
        else:
            subscriber_id = row.id
            changes: dict[str, Any] = {}
            if row.status != "active":
                if not resubscribe:
                    raise SubscriberError(
                        f"{address} is {row.status}; add --resubscribe if they asked to "
                        "subscribe again"
                    )
                changes["status"] = "active"
                record_status(conn, row.id, row.status, "active", actor=actor, now=now)
            if name is not None and name != row.name:
                changes["name"] = name
            if timezone is not None and timezone != row.timezone:
                changes["timezone"] = timezone
            if first_name is not None:
                attributes = dict(row.attributes or {})
                if first_name:
                    attributes[FIRST_NAME_ATTRIBUTE] = first_name
                else:
                    attributes.pop(FIRST_NAME_ATTRIBUTE, None)
                if attributes != (row.attributes or {}):
                    changes["attributes"] = attributes
            if changes:
                conn.execute(
                    subscribers.update()
                    .where(subscribers.c.id == row.id)
                    .values(updated_at=now, **changes)
                )
                replan(conn, [row.id])
            outcome = "updated" if changes else "unchanged"
        if series is not None and enroll(
            conn, subscriber_id, series, start_part or 1, now, resubscribe=resubscribe, actor=actor
        ):
            outcome = "updated" if outcome == "unchanged" else outcome
    return outcome


def enroll(
    conn: Connection,
    subscriber_id: int,
    series: str,
    start_part: int,
    now: datetime,
    *,
    resubscribe: bool = False,
    actor: str = "cli",
) -> bool:
    """Enroll once; an existing enrollment keeps its progress. True if anything changed.

    Re-enrolling after a per-series unsubscribe is audited as a change to "active" for
    that series: links in emails made before it must not unsubscribe the person again."""
    existing = conn.execute(
        sa.select(enrollments).where(
            enrollments.c.subscriber_id == subscriber_id, enrollments.c.series == series
        )
    ).first()
    if existing is None:
        conn.execute(
            enrollments.insert().values(
                subscriber_id=subscriber_id,
                series=series,
                enrolled_at=now,
                start_part=start_part,
                paused=False,
            )
        )
        return True
    if existing.unsubscribed_at is not None and resubscribe:
        conn.execute(
            enrollments.update()
            .where(enrollments.c.id == existing.id)
            .values(unsubscribed_at=None, **replanned())
        )
        record_status(
            conn, subscriber_id, "unsubscribed", "active", actor=actor, now=now, series=series
        )
        return True
    return False


def replan(conn: Connection, subscriber_ids: Sequence[int]) -> None:
    """Make the next send plan these subscribers' enrollments afresh: their timezone
    or status changed, so a stored wake-up time may no longer hold."""
    if subscriber_ids:
        conn.execute(
            enrollments.update()
            .where(enrollments.c.subscriber_id.in_(subscriber_ids))
            .values(**replanned())
        )


def find(store: Store, email: str) -> Subscriber:
    """The subscriber with this address, with enrollments; an error if there is none."""
    try:
        address = normalise_email(email)
    except ValueError as exc:
        raise SubscriberError(str(exc)) from None
    with store.connect() as conn:
        row = conn.execute(sa.select(subscribers).where(subscribers.c.email == address)).first()
        if row is None:
            raise SubscriberError(f"no subscriber {address}")
        return _with_enrollments(conn, [row])[0]


def unsubscribe(
    store: Store,
    email: str,
    *,
    now: datetime,
    series: str | None = None,
    actor: str = "cli",
    via: tuple[str, str] | None = None,
) -> str:
    """Unsubscribe from one series, or from everything. ``via``: the (series, article
    slug) of the email whose link asked, recorded in the audit for `series status`.
    Returns what was done, in words."""
    return leave(store, email, now=now, series=series, actor=actor, via=via)[1]


def leave(
    store: Store,
    email: str,
    *,
    now: datetime,
    series: str | None = None,
    actor: str = "cli",
    via: tuple[str, str] | None = None,
) -> tuple[bool, str]:
    """Unsubscribe from one series, or from everything: (whether this call changed
    anything, what was done in words). The change and its audit row are one step: of
    any number of requests at once (a mailbox's one-click sent many times), exactly one
    changes the status and writes the audit row; the others find it done. ``via``: the
    (series, article slug) of the email whose link asked, recorded in the audit for
    `series status`. Raises SubscriberError when there is no such subscriber (or
    enrollment)."""
    subscriber = find(store, email)
    if store.upgrade_refused is not None:
        via = None  # left before schema 0008 (content-free open): nowhere to record it
    with store.begin() as conn:
        status = conn.execute(
            sa.select(subscribers.c.status).where(subscribers.c.id == subscriber.id)
        ).scalar()
        if status is None:
            raise SubscriberError(f"no subscriber {subscriber.email}")
        if series is None:
            # Changed only from the status read here: a request that lost the race to
            # another one changes nothing and writes no audit row.
            changed = (
                status != "unsubscribed"
                and conn.execute(
                    subscribers.update()
                    .where(subscribers.c.id == subscriber.id, subscribers.c.status == status)
                    .values(status="unsubscribed", updated_at=now)
                ).rowcount
            )
            if not changed:
                return False, f"{subscriber.email} was already unsubscribed"
            record_status(
                conn, subscriber.id, status, "unsubscribed", actor=actor, now=now, via=via
            )
            return True, f"unsubscribed {subscriber.email} from all series"
        enrolled = next((e for e in subscriber.enrollments if e.series == series), None)
        if enrolled is None:
            names = ", ".join(e.series for e in subscriber.enrollments) or "none"
            raise SubscriberError(
                f"{subscriber.email} is not enrolled in '{series}' (enrolled in: {names})"
            )
        changed = conn.execute(
            enrollments.update()
            .where(
                enrollments.c.subscriber_id == subscriber.id,
                enrollments.c.series == series,
                enrollments.c.unsubscribed_at.is_(None),
            )
            .values(unsubscribed_at=now)
        ).rowcount
        if not changed:
            return False, f"{subscriber.email} was already unsubscribed from {series}"
        record_status(
            conn,
            subscriber.id,
            status,
            "unsubscribed",
            actor=actor,
            now=now,
            series=series,
            via=via,
        )
        return True, f"unsubscribed {subscriber.email} from {series}"


def remove(store: Store, email: str, *, now: datetime, actor: str = "cli") -> str:
    """Erase a person's data; keep only a keyed hash so the address cannot come back.

    In one transaction: their subscriber, enrollment and delivery rows and their pending
    signups are deleted (so no confirmation link of theirs works any more), their audit
    rows lose the reference to them and the request details of their consent
    (``store.erasure.scrub_consent``), and every stored text naming their address is
    scrubbed (``store.erasure.scrub_mentions``). Someone who only has pending signups
    is erased the same way. Then the database's own copies go
    (``store.erasure.clear_traces``: the SQLite write-ahead log, free pages; VACUUM on
    PostgreSQL). Returns what was done, in words, with a warning line if the database
    could not drop its copies yet. Raises SubscriberError when the address is neither
    a subscriber nor a pending signup."""
    from .store.erasure import clear_traces, scrub_consent, scrub_mentions

    try:
        address = normalise_email(email)
    except ValueError as exc:
        raise SubscriberError(str(exc)) from None
    with store.begin() as conn:
        row = conn.execute(sa.select(subscribers).where(subscribers.c.email == address)).first()
        pending = conn.execute(signups.delete().where(signups.c.email == address)).rowcount or 0
        if row is None and not pending:
            raise SubscriberError(f"no subscriber {address}")  # nor a pending signup
        digest = store.email_hash(conn, address)
        if row is not None:
            record_status(
                conn, row.id, row.status, "unsubscribed", actor=actor, now=now, reason=ERASED_REASON
            )
            scrub_consent(conn, row.id)
            scrub_mentions(conn, row.id, row.email, row.name)
            # The audit trail stays, without anything that names the person.
            conn.execute(
                status_changes.update()
                .where(status_changes.c.subscriber_id == row.id)
                .values(subscriber_id=None)
            )
            conn.execute(deliveries.delete().where(deliveries.c.subscriber_id == row.id))
            conn.execute(enrollments.delete().where(enrollments.c.subscriber_id == row.id))
            conn.execute(subscribers.delete().where(subscribers.c.id == row.id))
        # A person only waiting to confirm is erased too: like anyone erased, they come
        # back only through a new confirmed link, never through `add` or an import.
        exists = conn.execute(
            sa.select(suppressions.c.email_hash).where(suppressions.c.email_hash == digest)
        ).first()
        if exists is None:
            conn.execute(
                suppressions.insert().values(
                    email_hash=digest, reason=ERASED_REASON, created_at=now
                )
            )
    what = "personal data deleted" if row is not None else "pending signup deleted"
    done = f"erased {address}: {what}, address kept only as a hash"
    left = clear_traces(store)
    return done if left is None else f"{done}\nWarning: {left}"


def iter_subscribers(
    store: Store,
    *,
    status: str | None = None,
    series: str | None = None,
    batch: int = 2000,
) -> Iterator[Subscriber]:
    """Every subscriber (optionally one status, or enrolled in one series), by id, streamed."""
    if status is not None and status not in STATUSES:
        raise SubscriberError(f"unknown status '{status}' (one of: {', '.join(STATUSES)})")
    last_id = 0
    with store.connect() as conn:
        while True:
            query = (
                sa.select(subscribers)
                .where(subscribers.c.id > last_id)
                .order_by(subscribers.c.id)
                .limit(batch)
            )
            if status is not None:
                query = query.where(subscribers.c.status == status)
            if series is not None:
                query = query.where(
                    sa.exists().where(
                        enrollments.c.subscriber_id == subscribers.c.id,
                        enrollments.c.series == series,
                    )
                )
            rows = conn.execute(query).all()
            if not rows:
                return
            yield from _with_enrollments(conn, rows)
            last_id = rows[-1].id


def _with_enrollments(conn: Connection, rows: Sequence[Any]) -> list[Subscriber]:
    ids = [row.id for row in rows]
    sent = (
        sa.select(
            deliveries.c.subscriber_id,
            deliveries.c.series,
            sa.func.max(deliveries.c.part).label("last_part"),
        )
        .where(deliveries.c.state == "sent", deliveries.c.subscriber_id.in_(ids))
        .group_by(deliveries.c.subscriber_id, deliveries.c.series)
    )
    last = {(r.subscriber_id, r.series): r.last_part for r in conn.execute(sent)}
    by_subscriber: dict[int, list[Enrollment]] = {}
    # The columns named, not the table: a database left at 0004 (see open_store) lacks
    # the newer ones.
    for e in conn.execute(
        sa.select(
            enrollments.c.subscriber_id,
            enrollments.c.series,
            enrollments.c.start_part,
            enrollments.c.paused,
            enrollments.c.completed_at,
            enrollments.c.unsubscribed_at,
        )
        .where(enrollments.c.subscriber_id.in_(ids))
        .order_by(enrollments.c.series)
    ):
        by_subscriber.setdefault(e.subscriber_id, []).append(
            Enrollment(
                series=e.series,
                start_part=e.start_part,
                paused=e.paused,
                completed=e.completed_at is not None,
                unsubscribed=e.unsubscribed_at is not None,
                last_part=last.get((e.subscriber_id, e.series)),
            )
        )
    return [
        Subscriber(
            id=row.id,
            email=row.email,
            name=row.name,
            status=row.status,
            timezone=row.timezone,
            created_at=row.created_at,
            source=row.source,
            attributes=dict(row.attributes or {}),
            enrollments=tuple(by_subscriber.get(row.id, ())),
        )
        for row in rows
    ]


def progress_text(enrollment: Enrollment, total: int | None) -> str:
    """How far along a series someone is, in words an editor reads at a glance."""
    of = f" of {total}" if total else ""
    if enrollment.unsubscribed:
        return "unsubscribed"
    if enrollment.completed:
        return "completed"
    if enrollment.last_part:
        done = f"sent {enrollment.last_part}{of}"
    elif enrollment.start_part > 1:
        done = f"not started (starts at part {enrollment.start_part})"
    else:
        done = "not started"
    return f"paused, {done}" if enrollment.paused else done
