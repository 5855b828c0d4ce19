"""Keys that match: `series send` and `series serve` must use the key links were signed with.

The state database keeps the fingerprint (``tokens.fingerprint``, never the key) of
the key the unsubscribe links already sent were signed with, and after a deliberate
rotation (``--force``) the fingerprint of the key before it. A process whose key
does not match refuses to start with one line: a `series serve` that cannot verify
the links in inboxes would tell every reader their link is "not valid", and a
`series send` signing with another key than `series serve` verifies with would send
links nobody can use. Confirmation links of the signup form (pipeline/signup_tokens.py)
count as links: `series serve` records its key's fingerprint when it sends the first
one, and an outstanding confirmation link is a link already sent.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import SeriesError
from ..tokens import PREVIOUS_SECRET_ENV, SECRET_ENV, Signer, fingerprint, keys_from_environment
from .ledger import set_setting, setting_or_none
from .schema import deliveries, settings, signups

SIGNED_WITH = "link_key_fingerprint"
SIGNED_BEFORE = "link_key_previous_fingerprint"
ROTATION = 'see README, "Rotating the link-signing key"'
# Set once links were signed with the database's own key (link_signing_key).
STORED_SIGNED = "link_key_stored_signed"


class KeyMismatch(SeriesError):
    """The link-signing key of this process is not the one links were signed with."""


def accepted_keys(conn: Connection) -> tuple[bytes, tuple[bytes, ...]]:
    """The one place that says which link-signing keys count: (the key that signs, the
    keys also accepted when verifying), for unsubscribe links (``ledger.link_signer``)
    and anything else signed with the same key.

    The environment's keys (``tokens.keys_from_environment``), and the database's own
    key (the setting ``link_signing_key``, hex) as a previous key whenever another key
    signs but links may have been signed with it: a send recorded it (its fingerprint
    is the current or the previous one, or STORED_SIGNED is set), or links were sent
    before fingerprints were kept. It is in the database anyway: accepting it gives
    nobody a key they did not have."""
    stored = bytes.fromhex(setting_or_none(conn, "link_signing_key") or "")
    key, previous = keys_from_environment(stored)
    if key != stored and stored and _stored_signed(conn, stored):
        previous = (*previous, stored)
    return key, previous


def _stored_signed(conn: Connection, stored: bytes) -> bool:
    current, before = stored_fingerprints(conn)
    if setting_or_none(conn, STORED_SIGNED) is not None or fingerprint(stored) in (current, before):
        return True
    return current is None and _links_sent(conn)


def stored_fingerprints(conn: Connection) -> tuple[str | None, str | None]:
    """(fingerprint links are signed with, the one before the last rotation)."""
    found = dict(
        conn.execute(
            sa.select(settings.c.key, settings.c.value).where(
                settings.c.key.in_((SIGNED_WITH, SIGNED_BEFORE))
            )
        ).all()
    )
    return found.get(SIGNED_WITH), found.get(SIGNED_BEFORE)


def check_send_key(
    conn: Connection, signer: Signer, *, force: bool, write: bool = True
) -> str | None:
    """Before `series send` signs links with ``signer``: raise KeyMismatch when links
    already sent (a delivery that is not merely failed) were signed with another key,
    unless ``force`` (a deliberate rotation). With ``write`` (in the caller's write
    transaction) the key's fingerprint is recorded as the one links are signed with.
    Returns a warning line after a rotation, else None."""
    current, _ = stored_fingerprints(conn)
    mine = signer.fingerprint
    if current == mine:
        return None
    if current is not None and _links_sent(conn) and not force:
        raise KeyMismatch(
            f"the link-signing key (fingerprint {mine}) is not the one the links already "
            f"sent (unsubscribe or signup confirmation) were signed with ({current}): set "
            f"{SECRET_ENV} as it was for earlier sends (or leave it unset if it was), or pass "
            f"--force to sign with this key from now on ({ROTATION})"
        )
    warning = None
    if current is not None and _links_sent(conn):
        warning = (
            f"signing links with a new key (fingerprint {mine}, was {current}): run "
            f"`series serve` with {SECRET_ENV} set to the new key and {PREVIOUS_SECRET_ENV} "
            "to the old one, so links already in inboxes keep working"
        )
    if write:
        stored = setting_or_none(conn, "link_signing_key")
        if (stored and fingerprint(bytes.fromhex(stored)) == mine) or (
            current is None and _links_sent(conn)  # sent before fingerprints were kept
        ):
            set_setting(conn, STORED_SIGNED, "1")
        set_setting(conn, SIGNED_WITH, mine)
        if warning is not None and current is not None:
            set_setting(conn, SIGNED_BEFORE, current)
    return warning if write else None


def check_serve_key(conn: Connection, signer: Signer, *, force: bool) -> list[str]:
    """Before `series serve` verifies links with ``signer``: raise KeyMismatch when none
    of its keys is the one links are signed with (unless ``force``). Returns warning
    lines: the key before the last rotation is not among its keys (links from before
    it are refused), or ``force`` let a mismatch through."""
    current, before = stored_fingerprints(conn)
    accepted = signer.fingerprints
    warnings = []
    if current is not None and current not in accepted:
        if not force:
            raise KeyMismatch(
                f"the link-signing key (fingerprint {signer.fingerprint}) is not the one "
                f"the links already sent were signed with ({current}): every link "
                f"would be refused as not valid; set {SECRET_ENV} as `series send` has it "
                f"(or leave it unset on both), or pass --force ({ROTATION})"
            )
        warnings.append(
            f"--force: links signed with the key {current} will be refused as not valid"
        )
    if before is not None and before not in accepted:
        warnings.append(
            f"links signed before the last key rotation (key {before}) will be refused as "
            f"not valid; set {PREVIOUS_SECRET_ENV} to that key while they may still be used"
        )
    return warnings


def record_signing_key(conn: Connection, fingerprint: str) -> None:
    """In the caller's write transaction, as `series serve` sends a confirmation link
    signed with the key of ``fingerprint``: record it as the key links are signed with
    when no key is recorded yet (a recorded one is only changed by `series send
    --force`)."""
    if stored_fingerprints(conn)[0] is None:
        set_setting(conn, SIGNED_WITH, fingerprint)


def _links_sent(conn: Connection) -> bool:
    """Whether a link is out there: a delivery that is not merely failed, or a signup's
    confirmation link not yet used (`series serve` deletes it once expired)."""
    delivered = sa.select(deliveries.c.id).where(deliveries.c.state != "failed").limit(1)
    if conn.execute(delivered).first() is not None:
        return True
    if not sa.inspect(conn).has_table("signups"):  # a database from before 0007
        return False
    pending = (
        sa.select(signups.c.id)
        .where(
            signups.c.confirmed_at.is_(None),
            signups.c.last_sent_at.is_not(None),
        )
        .limit(1)
    )
    return conn.execute(pending).first() is not None
