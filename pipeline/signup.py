"""Double opt-in: pending signups, their confirmation, and the consent they record.

A signup asks to join one series. It is kept in ``signups`` (migration 0007) until its
confirmation link expires; nothing that plans or sends parts reads that table, so a
pending reader is never planned. Confirming (a POST to the link, never a GET) makes
the person an active subscriber enrolled as of that moment, and writes the consent to
``status_changes``: actor ``web:signup``, and in ``reason`` a JSON object with when
the signup was asked for and confirmed, which form and page it came from, and the IP
address and user agent of both requests. Each request is its own row and its link
names that row only: asking again (anyone may type any address) never changes what an
earlier link confirms, and the record describes the request whose link was used.

Returning people: whoever unsubscribed, bounced or complained becomes active again
only here, through a confirmed link (new consent); series they had left with the rest
stay left. An erased address (kept only as a hash) may sign up again the same way: the
hash is dropped when the link is confirmed. An active reader joining another series
confirms too.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .errors import SeriesError
from .headers import clean_name
from .signup_tokens import ConfirmSigner
from .store import Store
from .store.ledger import record_status
from .store.linkkeys import record_signing_key
from .store.schema import enrollments, replanned, signups, subscribers, suppressions
from .subscribers import LOCAL_PART_LIMIT, sendable_email

ACTOR = "web:signup"
# At most one confirmation email per address in this time (whatever the series).
ADDRESS_INTERVAL = timedelta(minutes=10)
NAME_LENGTH = 200
# Longer values are cut: they are records of where a request came from, not data.
FIELD_LENGTHS = {"form": 200, "page": 500, "ip": 64, "user_agent": 500}

# One process checks and records "recently sent" at a time (SQLite serialises writers
# anyway; this keeps two threads from both seeing no recent email on PostgreSQL).
_register_lock = threading.Lock()

State = Literal["invalid", "expired", "gone", "used", "unavailable", "ready"]
Joined = Literal["joined", "rejoined", "already"]


class SignupRefused(SeriesError):
    """A signup that cannot be taken as given (bad address, unknown series): 4xx."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Request:
    """One submitted signup, before checking, and where it came from."""

    email: str
    name: str
    series: str
    form: str = ""  # the form's own name (a hidden ``form`` field), or what served it
    page: str = ""  # the page it was sent from (Referer or Origin)
    ip: str = ""
    user_agent: str = ""


@dataclass(frozen=True)
class Issued:
    """A stored signup whose confirmation email is to go out now."""

    signup_id: int
    email: str
    series: str
    expires: datetime
    token: str


@dataclass(frozen=True)
class Pending:
    """A signup waiting for its confirmation (``series subscribers list --status pending``)."""

    email: str
    name: str
    series: str
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class Found:
    """What a confirmation link stands for now: ``state`` and, when genuine, its series."""

    state: State
    series: str | None = None
    email: str | None = None
    name: str = ""  # the name typed into the form of the request the link belongs to


def checked(request: Request, offered: Mapping[str, str]) -> Request:
    """The request with its address normalised and its name cleaned; SignupRefused
    (naming the field) for an address series cannot send to or a series not offered.
    ``offered``: slug → title of the series the form offers."""
    raw = request.email.strip()
    if not raw:
        raise SignupRefused("email", "Please enter your email address.")
    if len(raw) > 254:
        raise SignupRefused("email", "That email address is too long.")
    try:
        email = sendable_email(raw)
    except ValueError:
        local = raw.rpartition("@")[0]
        if len(local.encode("utf-8")) > LOCAL_PART_LIMIT:
            raise SignupRefused(
                "email",
                f"The part before the @ is {len(local)} characters long; an address may "
                f"have at most {LOCAL_PART_LIMIT} there. Please check it.",
            ) from None
        raise SignupRefused(
            "email", "That does not look like an email address we can send to. Please check it."
        ) from None
    if not request.series:
        raise SignupRefused("series", "Please choose a series.")
    if request.series not in offered:
        names = ", ".join(sorted(offered)) or "none"
        raise SignupRefused(
            "series", f"There is no series '{request.series[:100]}' to join here (series: {names})."
        )
    name = clean_name(request.name)
    if len(name) > NAME_LENGTH:
        raise SignupRefused("name", f"Please keep the name under {NAME_LENGTH} characters.")
    # Control characters (NUL, line breaks) have no place in these records.
    cut = {
        field: "".join(c for c in getattr(request, field) if c.isprintable())[:most]
        for field, most in FIELD_LENGTHS.items()
    }
    return Request(email=email, name=name, series=request.series, **cut)


def register(
    store: Store, signer: ConfirmSigner, request: Request, *, now: datetime, lifetime: timedelta
) -> Issued | None:
    """Store a checked signup and return its token; None when a confirmation email went
    to this address less than ADDRESS_INTERVAL ago, and then nothing changes.

    Every request gets its own row, and its link names that row: asking again never
    changes what an earlier link confirms (a stranger typing the same address cannot
    put their name or their request details into someone else's consent). Expired
    signups are purged first. Signing a confirmation counts as signing links for the
    key check (store/linkkeys.py): the key's fingerprint is recorded if none is yet."""
    with _register_lock, store.begin() as conn:
        purge_expired(conn, now)
        recent = conn.scalar(
            sa.select(sa.func.max(signups.c.last_sent_at)).where(signups.c.email == request.email)
        )
        if recent is not None and now - recent < ADDRESS_INTERVAL:
            return None
        expires = (now + lifetime).replace(microsecond=0)
        signup_id = conn.execute(
            signups.insert()
            .values(
                email=request.email,
                series=request.series,
                created_at=now,
                name=request.name,
                form=request.form,
                page=request.page,
                ip=request.ip,
                user_agent=request.user_agent,
                expires_at=expires,
                last_sent_at=now,
            )
            .returning(signups.c.id)
        ).scalar_one()
        record_signing_key(conn, signer.fingerprint)
    token = signer.token(signup_id, request.series, request.email, expires=expires)
    return Issued(signup_id, request.email, request.series, expires, token)


def not_sent(store: Store, issued: Issued) -> None:
    """The confirmation email could not be handed over: forget this request (earlier
    ones, and their links, stay as they were), so the person may ask again at once."""
    with store.begin() as conn:
        conn.execute(signups.delete().where(signups.c.id == issued.signup_id))


def purge_expired(conn: Connection, now: datetime) -> int:
    """Delete signups whose links have expired, confirmed or not; how many. One whose
    email went out less than ADDRESS_INTERVAL ago stays (its link is expired all the
    same) so that a lifetime shorter than that does not shorten the per-address limit."""
    held = sa.and_(
        signups.c.last_sent_at.is_not(None), signups.c.last_sent_at > now - ADDRESS_INTERVAL
    )
    purge = signups.delete().where(signups.c.expires_at <= now, sa.not_(held))
    return conn.execute(purge).rowcount or 0


def look_up(
    store: Store, signer: ConfirmSigner, token: str, *, now: datetime, offered: Mapping[str, str]
) -> Found:
    """What a confirmation link means now, changing nothing (for the page a GET shows)."""
    with store.connect() as conn:
        return _find(conn, signer, token, now, offered)[0]


def _find(
    conn: Connection, signer: ConfirmSigner, token: str, now: datetime, offered: Mapping[str, str]
) -> tuple[Found, sa.Row[Any] | None]:
    subject = signer.verify(token)
    if subject is None:
        return Found("invalid"), None
    if subject.expires <= now:
        return Found("expired", subject.series), None
    row = conn.execute(sa.select(signups).where(signups.c.id == subject.signup_id)).first()
    if row is None or row.series != subject.series or not subject.names(row.email):
        # Purged (after an edit of the lifetime), erased, or never this address's.
        return Found("gone", subject.series), None
    if row.confirmed_at is not None:
        return Found("used", row.series, row.email), row
    if row.series not in offered:
        return Found("unavailable", row.series, row.email), row
    return Found("ready", row.series, row.email, row.name), row


def confirm(
    store: Store,
    signer: ConfirmSigner,
    token: str,
    *,
    now: datetime,
    offered: Mapping[str, str],
    first_parts: Mapping[str, int],
    ip: str = "",
    user_agent: str = "",
) -> tuple[Found, Joined | None]:
    """Confirm the signup a link names, once: the person becomes active and enrolled in
    its series as of ``now``, with the consent audited (see the module docstring).
    Returns what the link meant and, when it was confirmed now, what changed.
    ``first_parts``: series slug → the part number a new reader starts at."""
    with store.begin() as conn:
        purge_expired(conn, now)
        found, row = _find(conn, signer, token, now, offered)
        if found.state != "ready" or row is None:
            return found, None
        claimed = conn.execute(
            signups.update()
            .where(signups.c.id == row.id, signups.c.confirmed_at.is_(None))
            .values(confirmed_at=now)
        ).rowcount
        if claimed != 1:  # another request confirmed it first
            return Found("used", row.series, row.email), None
        # The person's other links to this series are used up with this one.
        conn.execute(
            signups.update()
            .where(
                signups.c.email == row.email,
                signups.c.series == row.series,
                signups.c.confirmed_at.is_(None),
            )
            .values(confirmed_at=now)
        )
        consent = {
            "consent": "double opt-in",
            "signup": row.id,
            "series": row.series,
            "form": row.form,
            "page": row.page,
            "requested_at": row.created_at.isoformat(),
            "request_ip": row.ip,
            "request_user_agent": row.user_agent,
            "confirmation_sent_at": row.last_sent_at.isoformat() if row.last_sent_at else None,
            "confirmed_at": now.isoformat(),
            "confirm_ip": ip[: FIELD_LENGTHS["ip"]],
            "confirm_user_agent": user_agent[: FIELD_LENGTHS["user_agent"]],
        }
        joined = _join(store, conn, row, consent, now, first_parts.get(row.series, 1))
    return found, joined


def _join(
    store: Store,
    conn: Connection,
    row: sa.Row[Any],
    consent: dict[str, object],
    now: datetime,
    start_part: int,
) -> Joined:
    """Make the signup's person active and enrolled in its series; audit each change."""
    digest = store.email_hash(conn, row.email)
    erased = conn.execute(suppressions.delete().where(suppressions.c.email_hash == digest)).rowcount
    person = conn.execute(sa.select(subscribers).where(subscribers.c.email == row.email)).first()
    joined: Joined = "already"
    if person is None:
        consent["previously"] = "erased" if erased else "new"
        subscriber_id = conn.execute(
            subscribers.insert()
            .values(
                email=row.email,
                name=row.name,
                status="active",
                timezone=None,
                created_at=now,
                updated_at=now,
                source=ACTOR,
                attributes={},
            )
            .returning(subscribers.c.id)
        ).scalar_one()
        _audit(conn, subscriber_id, None, row.series, consent, now)
        joined = "joined"
    else:
        subscriber_id = person.id
        changes: dict[str, object] = {}
        # The name typed into a form replaces no name an active reader already has.
        if row.name and row.name != person.name and (not person.name or person.status != "active"):
            changes["name"] = row.name
        if person.status != "active":
            consent["previously"] = person.status
            changes["status"] = "active"
            # They agreed to this series only: others they had, which stopped with the
            # rest of their subscription, stay stopped.
            conn.execute(
                enrollments.update()
                .where(
                    enrollments.c.subscriber_id == person.id,
                    enrollments.c.series != row.series,
                    enrollments.c.unsubscribed_at.is_(None),
                )
                .values(unsubscribed_at=now)
            )
            _audit(conn, person.id, person.status, None, consent, now)
            joined = "rejoined"
        if changes:
            conn.execute(
                subscribers.update()
                .where(subscribers.c.id == person.id)
                .values(updated_at=now, **changes)
            )
    enrolled = conn.execute(
        sa.select(enrollments).where(
            enrollments.c.subscriber_id == subscriber_id, enrollments.c.series == row.series
        )
    ).first()
    if enrolled is None:
        conn.execute(
            enrollments.insert().values(
                subscriber_id=subscriber_id,
                series=row.series,
                enrolled_at=now,
                start_part=start_part,
                paused=False,
            )
        )
        if joined == "already":  # an active reader joining one more series
            _audit(conn, subscriber_id, "active", row.series, consent, now)
            return "joined"
        return joined
    if enrolled.unsubscribed_at is not None:
        # Back to this series: its progress is kept (nothing is ever sent twice).
        conn.execute(
            enrollments.update()
            .where(enrollments.c.id == enrolled.id)
            .values(unsubscribed_at=None, **replanned())
        )
        if joined == "already":
            _audit(conn, subscriber_id, "unsubscribed", row.series, consent, now)
        return "rejoined"
    if joined == "rejoined":
        conn.execute(
            enrollments.update().where(enrollments.c.id == enrolled.id).values(**replanned())
        )
    return joined


def _audit(
    conn: Connection,
    subscriber_id: int,
    old: str | None,
    series: str | None,
    consent: dict[str, object],
    now: datetime,
) -> None:
    reason = json.dumps(consent, ensure_ascii=False, sort_keys=True)
    record_status(
        conn, subscriber_id, old, "active", actor=ACTOR, now=now, series=series, reason=reason
    )


def iter_pending(store: Store, *, now: datetime, series: str | None = None) -> Iterator[Pending]:
    """Signups still waiting for confirmation, oldest first (expired ones purged)."""
    with store.begin() as conn:
        purge_expired(conn, now)
    query = (
        sa.select(signups)
        .where(signups.c.confirmed_at.is_(None), signups.c.expires_at > now)
        .order_by(signups.c.id)
    )
    if series is not None:
        query = query.where(signups.c.series == series)
    with store.connect() as conn:
        rows = conn.execute(query).all()
    for row in rows:
        yield Pending(row.email, row.name, row.series, row.created_at, row.expires_at)
