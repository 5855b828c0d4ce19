"""A change counter on enrollments, so that a send's bookmark never undoes an edit.

Revision ID: 0010
Revises: 0009

``enrollments.revision`` counts the changes that make a reader be planned again (a
move, a pause or its end, a resubscribe, a new time zone, a delivery settled or retried
by hand). Each such change adds one to it in the same UPDATE that clears the reader's
``plan_version``. A send reads it with the enrollment and writes that reader's bookmark
only where it still holds the value read: an edit committed meanwhile wins, and the
next run plans the reader with it, instead of the bookmark writing the edit's
``plan_version = NULL`` over.

Existing rows start at 0. No index: a bookmark, which writes other columns, must not
write index entries for it (PostgreSQL updates such a row in place, a HOT update,
only while no indexed column changes).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A constant default: PostgreSQL (11 and later) adds it without rewriting the table,
    # SQLite without copying it; existing rows read 0.
    op.add_column(
        "enrollments",
        sa.Column("revision", sa.Integer, nullable=False, server_default=sa.text("0")),
    )


def downgrade() -> None:
    # SQLite (3.35 and later, as the store requires) drops a column that no index,
    # key or constraint names in place; this one is named by none.
    op.drop_column("enrollments", "revision")
