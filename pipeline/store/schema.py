"""Table definitions (SQLAlchemy Core), one code path for SQLite and PostgreSQL.

This is the schema the code expects at the newest migration; the migrations in
``migrations/versions`` are what actually create and change it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

STATUSES = ("active", "unsubscribed", "bounced", "complained")
# "skipped" (0008): an article an editor moved the reader past; never sent to them.
DELIVERY_STATES = ("claimed", "sent", "failed", "unknown", "skipped")


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on both databases.

    PostgreSQL stores timestamptz. SQLite stores UTC as fixed-width ISO text (the
    layout SQLAlchemy's own SQLite DateTime uses), so text order is time order; it
    is formatted here directly because a bulk import binds hundreds of thousands.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(26))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; pass an aware one")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return _from_text(value) if isinstance(value, str) else _in_utc(value)


@lru_cache(maxsize=4096)  # a list imported at once shares its times, read by the thousand
def _from_text(value: str) -> datetime:
    """A time as SQLite keeps it (UTC, ISO 8601 text), as an aware datetime."""
    return _in_utc(datetime.fromisoformat(value))


def _in_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive one is taken to be UTC already (how the store keeps it)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class JSONType(sa.types.TypeDecorator[Any]):
    """JSON; JSONB on PostgreSQL. The PostgreSQL dialect is imported only when it is the
    database's: a run on SQLite does not pay for it at start-up."""

    impl = sa.JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(sa.JSON())


def untyped(table: sa.Table) -> sa.TableClause:
    """The table without column types, for bulk inserts of values already converted
    with ``to_db`` / ``json.dumps``: SQLAlchemy then runs no per-value processing,
    which is most of the cost of inserting 100,000 rows."""
    return sa.table(table.name, *(sa.column(c.name) for c in table.columns))


def to_db(dialect: Dialect, moment: datetime) -> Any:
    """A time in the form UTCDateTime stores on this database."""
    return UTCDateTime().process_bind_param(moment, dialect)


metadata = sa.MetaData()

subscribers = sa.Table(
    "subscribers",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.String(320), nullable=False, unique=True),
    sa.Column("name", sa.String(200), nullable=False, server_default=""),
    sa.Column("status", sa.String(20), nullable=False, server_default="active"),
    sa.Column("timezone", sa.String(64)),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("source", sa.String(200), nullable=False, server_default=""),
    sa.Column("attributes", JSONType(), nullable=False),
    sa.CheckConstraint(f"status IN {STATUSES}", name="subscribers_status"),
)

enrollments = sa.Table(
    "enrollments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "subscriber_id",
        sa.Integer,
        sa.ForeignKey("subscribers.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("series", sa.String(100), nullable=False),
    sa.Column("enrolled_at", UTCDateTime, nullable=False),
    # The position the reader enrolled at: it decides their first article only.
    sa.Column("start_part", sa.Integer, nullable=False, server_default="1"),
    sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("completed_at", UTCDateTime),
    sa.Column("unsubscribed_at", UTCDateTime),
    # The planner's bookmark: when to look at this enrollment next (NULL: not until
    # the content changes) and for which series fingerprint (NULL: plan it next run).
    sa.Column("next_due_at", UTCDateTime),
    sa.Column("plan_version", sa.String(32)),
    # Where an editor moved the reader (`series subscribers move`, 0008): the slug of
    # the article they continue at, and when; None: never moved.
    sa.Column("moved_to", sa.String(200)),
    sa.Column("moved_at", UTCDateTime),
    # Counts the changes that make the reader be planned again (0010): each adds one in
    # the UPDATE that clears plan_version (`replanned`), and a send writes a bookmark
    # only where it still holds the value the send read, so an edit made meanwhile is
    # never overwritten. Not indexed: a bookmark writes no index entry for it.
    sa.Column("revision", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.UniqueConstraint("subscriber_id", "series", name="enrollments_once_per_series"),
)


def replanned() -> dict[str, Any]:
    """The values an UPDATE of ``enrollments`` sets with any change that makes the reader
    be planned again by the next `series send`: no plan version (plan it next run) and
    one more ``revision``, so that a send that read the enrollment before the change
    does not write its bookmark over it (`ledger.save_bookmarks`). Use as
    ``enrollments.update().where(…).values(paused=True, **replanned())``."""
    return {"plan_version": None, "revision": enrollments.c.revision + 1}


# The ledger: one row per (subscriber, series, article), the article named by its slug
# (0005). The unique constraint is what makes a duplicate send impossible, whatever
# the processes around it do and however the parts are renumbered since.
deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "subscriber_id",
        sa.Integer,
        sa.ForeignKey("subscribers.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("series", sa.String(100), nullable=False),
    sa.Column("article", sa.String(200), nullable=False),
    # Where the article stood when it was claimed; history only, it decides nothing.
    sa.Column("part", sa.Integer, nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("provider", sa.String(40)),
    sa.Column("provider_message_id", sa.String(200)),
    sa.Column("claimed_until", UTCDateTime),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("sent_at", UTCDateTime),
    sa.Column("last_error", sa.Text),
    # Random and sent to the provider, so that a delivery can be found there again.
    sa.Column("delivery_key", sa.String(64)),
    sa.Column("claim_token", sa.String(64)),
    # The key of the provider request, and when the attempt was handed over (0004).
    sa.Column("batch", sa.String(64)),
    sa.Column("attempted_at", UTCDateTime),
    sa.UniqueConstraint("subscriber_id", "series", "article", name="deliveries_once"),
    sa.CheckConstraint(f"state IN {DELIVERY_STATES}", name="deliveries_state"),
)

# Who or what changed a subscriber's status, and when. Kept after erasure, with
# the subscriber reference cleared.
status_changes = sa.Table(
    "status_changes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "subscriber_id",
        sa.Integer,
        sa.ForeignKey("subscribers.id", ondelete="SET NULL"),
    ),
    sa.Column("series", sa.String(100)),
    sa.Column("old_status", sa.String(20)),
    sa.Column("new_status", sa.String(20), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # The email the change came from, when its link said (0008): series and article
    # slug. `series status` counts the leave against that article.
    sa.Column("via_series", sa.String(100)),
    sa.Column("via_article", sa.String(200)),
)

# Addresses erased at the person's request, as keyed hashes: a later import of the
# same address is refused without keeping the address itself.
suppressions = sa.Table(
    "suppressions",
    metadata,
    sa.Column("email_hash", sa.String(64), primary_key=True),
    sa.Column("reason", sa.String(40), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

settings = sa.Table(
    "settings",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

# Requests to join a series through `series serve`, until their confirmation link
# expires (0007). Confirmed rows stay until then too, so that a used link says so.
signups = sa.Table(
    "signups",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.String(320), nullable=False, index=False),
    sa.Column("name", sa.String(200), nullable=False, server_default=""),
    sa.Column("series", sa.String(100), nullable=False),
    sa.Column("form", sa.String(200), nullable=False, server_default=""),
    sa.Column("page", sa.String(500), nullable=False, server_default=""),
    sa.Column("ip", sa.String(64), nullable=False, server_default=""),
    sa.Column("user_agent", sa.String(500), nullable=False, server_default=""),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("last_sent_at", UTCDateTime),
    sa.Column("confirmed_at", UTCDateTime),
)
