"""Signups waiting for their double opt-in confirmation (`series serve`'s /subscribe).

Revision ID: 0007
Revises: 0005

A signup is one request to join one series, kept until its confirmation link expires:
who asked (address, name), for what, where from (the form, page, IP address and user
agent), and when the confirmation email went out. Nothing in the send path reads this
table: a pending reader is never planned for any part.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "signups",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("name", sa.String(200), nullable=False, server_default=""),
        sa.Column("series", sa.String(100), nullable=False),
        sa.Column("form", sa.String(200), nullable=False, server_default=""),
        sa.Column("page", sa.String(500), nullable=False, server_default=""),
        sa.Column("ip", sa.String(64), nullable=False, server_default=""),
        sa.Column("user_agent", sa.String(500), nullable=False, server_default=""),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("expires_at", TIME, nullable=False),
        sa.Column("last_sent_at", TIME),
        sa.Column("confirmed_at", TIME),
    )
    op.create_index("signups_by_email", "signups", ["email"])
    op.create_index("signups_by_expiry", "signups", ["expires_at"])


def downgrade() -> None:
    op.drop_index("signups_by_expiry", "signups")
    op.drop_index("signups_by_email", "signups")
    op.drop_table("signups")
