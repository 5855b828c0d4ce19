"""Subscribers, enrollments and the delivery ledger.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "subscribers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(320), nullable=False, unique=True),
        sa.Column("name", sa.String(200), nullable=False, server_default=""),
        sa.Column("status", sa.String(20), nullable=False, server_default="active"),
        sa.Column("timezone", sa.String(64)),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("source", sa.String(200), nullable=False, server_default=""),
        sa.Column("attributes", JSON, nullable=False),
        sa.CheckConstraint(
            "status IN ('active', 'unsubscribed', 'bounced', 'complained')",
            name="subscribers_status",
        ),
    )
    op.create_index("subscribers_by_status", "subscribers", ["status"])
    op.create_table(
        "enrollments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "subscriber_id",
            sa.Integer,
            sa.ForeignKey("subscribers.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("series", sa.String(100), nullable=False),
        sa.Column("enrolled_at", TIME, nullable=False),
        sa.Column("start_part", sa.Integer, nullable=False, server_default="1"),
        sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("completed_at", TIME),
        sa.Column("unsubscribed_at", TIME),
        sa.UniqueConstraint("subscriber_id", "series", name="enrollments_once_per_series"),
    )
    op.create_index("enrollments_by_series", "enrollments", ["series"])
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "subscriber_id",
            sa.Integer,
            sa.ForeignKey("subscribers.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("series", sa.String(100), nullable=False),
        sa.Column("part", sa.Integer, nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("provider", sa.String(40)),
        sa.Column("provider_message_id", sa.String(200)),
        sa.Column("claimed_until", TIME),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("sent_at", TIME),
        sa.Column("last_error", sa.Text),
        sa.UniqueConstraint("subscriber_id", "series", "part", name="deliveries_once"),
        sa.CheckConstraint(
            "state IN ('claimed', 'sent', 'failed', 'unknown')", name="deliveries_state"
        ),
    )


def downgrade() -> None:
    op.drop_table("deliveries")
    op.drop_table("enrollments")
    op.drop_table("subscribers")
