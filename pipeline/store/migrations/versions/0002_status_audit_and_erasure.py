"""Audit of status changes, and erasure: suppressed address hashes and their key.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "status_changes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "subscriber_id", sa.Integer, sa.ForeignKey("subscribers.id", ondelete="SET NULL")
        ),
        sa.Column("series", sa.String(100)),
        sa.Column("old_status", sa.String(20)),
        sa.Column("new_status", sa.String(20), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", TIME, nullable=False),
    )
    op.create_index("status_changes_by_subscriber", "status_changes", ["subscriber_id"])
    op.create_table(
        "suppressions",
        sa.Column("email_hash", sa.String(64), primary_key=True),
        sa.Column("reason", sa.String(40), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
    )
    settings = op.create_table(
        "settings",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    # The key for hashing erased addresses: random per database, never printed.
    op.bulk_insert(settings, [{"key": "email_hash_key", "value": secrets.token_hex(32)}])


def downgrade() -> None:
    op.drop_table("settings")
    op.drop_table("suppressions")
    op.drop_table("status_changes")
