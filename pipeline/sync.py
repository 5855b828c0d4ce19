"""Suppression sync: the provider's bounce, complaint and unsubscribe lists → subscribers.

Run before every real send (and by `series subscribers sync`): whoever the provider
refuses to write to, or who unsubscribed through the provider's own link, is
marked here before anything is planned, with an audit entry naming the provider.
Only active subscribers change: someone already unsubscribed stays as they are.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa

from .errors import SeriesError
from .providers import Provider, ProviderError, Suppression
from .store import Store
from .store.ledger import mark_subscriber
from .store.schema import subscribers
from .subscribers import normalise_email

CHUNK = 500  # addresses per query
ATTEMPTS = 3
FIRST_WAIT = 0.5  # seconds, doubling
LONGEST_WAIT = 30.0


class SyncError(SeriesError):
    """The provider's lists could not be read; nothing was changed."""


@dataclass
class SyncReport:
    provider: str
    listed: int = 0  # entries on the provider's lists
    marked: Counter[str] = field(default_factory=Counter)  # new status → subscribers

    def summary(self) -> str:
        if not self.marked:
            changes = "no subscriber changed"
        else:
            changes = ", ".join(
                f"{count} {status}" for status, count in sorted(self.marked.items())
            )
        return f"synced {self.listed} suppression(s) from {self.provider}: {changes}"


def sync_suppressions(
    store: Store,
    provider: Provider,
    *,
    now: datetime,
    sleep: Callable[[float], None] = time.sleep,
) -> SyncReport:
    """Read every page of the provider's lists first, then mark subscribers in one
    transaction: a list that cannot be read in full changes nothing. A transient
    failure (429, 5xx, a dropped connection) reads the list again from the start."""
    report = SyncReport(provider.name)
    entries: dict[str, Suppression] = {}
    for attempt in range(ATTEMPTS):
        try:
            entries = _strongest(provider.suppressions())
            break
        except ProviderError as exc:
            if exc.auth:
                raise  # bad credentials: the same line a send would give
            if not exc.retryable or attempt == ATTEMPTS - 1:
                said = str(exc).removesuffix("; will retry")
                tries = f" ({ATTEMPTS} attempts)" if exc.retryable else ""
                raise SyncError(
                    f"could not read {provider.name}'s suppression list{tries}: {said}"
                ) from None
            sleep(min(LONGEST_WAIT, exc.retry_after or FIRST_WAIT * 2**attempt))
    report.listed = len(entries)
    addresses = sorted(entries)
    with store.begin() as conn:
        for start in range(0, len(addresses), CHUNK):
            chunk = addresses[start : start + CHUNK]
            rows = conn.execute(
                sa.select(subscribers.c.id, subscribers.c.email).where(
                    subscribers.c.email.in_(chunk), subscribers.c.status == "active"
                )
            ).all()
            for row in rows:
                entry = entries[row.email]
                if mark_subscriber(
                    conn,
                    row.id,
                    entry.status,
                    actor=f"provider:{provider.name}",
                    reason=entry.reason,
                    now=now,
                ):
                    report.marked[entry.status] += 1
    return report


# When one address is on several lists, the status that says most about it wins.
_RANK = {"unsubscribed": 0, "bounced": 1, "complained": 2}


def _strongest(listed: Iterable[Suppression]) -> dict[str, Suppression]:
    """One entry per address as subscribers are stored (normalised); entries whose
    address cannot be one of ours are skipped."""
    chosen: dict[str, Suppression] = {}
    for entry in listed:
        try:
            email = normalise_email(entry.email)
        except ValueError:
            continue
        known = chosen.get(email)
        if known is None or _RANK[entry.status] > _RANK[known.status]:
            chosen[email] = Suppression(email, entry.status, entry.reason)
    return chosen
