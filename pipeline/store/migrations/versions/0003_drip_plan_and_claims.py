"""The drip engine: each enrollment's next wake-up time, and claims on ledger rows.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    # When the planner next needs to look at this enrollment (NULL: not until the
    # content changes), and the series fingerprint that answer was computed for
    # (NULL: plan it on the next run).
    op.add_column("enrollments", sa.Column("next_due_at", TIME))
    op.add_column("enrollments", sa.Column("plan_version", sa.String(32)))
    op.create_index("enrollments_by_wakeup", "enrollments", ["series", "next_due_at"])
    op.create_index("enrollments_to_plan", "enrollments", ["series", "plan_version"])
    # A claim belongs to one run (claim_token) until its lease ends; delivery_key is
    # sent to the provider as metadata, so a delivery can be found there later.
    op.add_column("deliveries", sa.Column("delivery_key", sa.String(64)))
    op.add_column("deliveries", sa.Column("claim_token", sa.String(64)))
    # Only open deliveries (claimed or unknown) are ever looked up by state; sent ones,
    # nearly all rows, stay out of the index, so recording a send costs less.
    op.create_index(
        "deliveries_open",
        "deliveries",
        ["state", "claimed_until"],
        sqlite_where=sa.text("state IN ('claimed', 'unknown')"),
        postgresql_where=sa.text("state IN ('claimed', 'unknown')"),
    )
    settings = sa.table("settings", sa.column("key"), sa.column("value"))
    # Signs unsubscribe links when SERIES_SECRET_KEY is not set; never printed.
    op.bulk_insert(settings, [{"key": "link_signing_key", "value": secrets.token_hex(32)}])


def downgrade() -> None:
    op.execute("DELETE FROM settings WHERE key = 'link_signing_key'")
    op.drop_index("deliveries_open", "deliveries")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("claim_token")
        batch.drop_column("delivery_key")
    op.drop_index("enrollments_to_plan", "enrollments")
    op.drop_index("enrollments_by_wakeup", "enrollments")
    with op.batch_alter_table("enrollments") as batch:
        batch.drop_column("plan_version")
        batch.drop_column("next_due_at")
