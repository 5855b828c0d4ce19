"""Which request each delivery went out in, and when it was handed to the provider.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The key of the provider request a delivery went out in (derived from the
    # request's delivery keys): with a provider that has idempotency keys, an
    # interrupted request is repeated under exactly this key, so the provider answers
    # from the first one instead of sending again.
    op.add_column("deliveries", sa.Column("batch", sa.String(64)))
    # When this attempt was handed to the provider: a lookup searches from there,
    # and an idempotency key is only trusted while the provider still keeps it.
    op.add_column("deliveries", sa.Column("attempted_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("attempted_at")
        batch.drop_column("batch")
