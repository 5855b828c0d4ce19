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

Existing rows start at 0. No index: a bookmark changes the indexed wake-up time, so
PostgreSQL writes the row anew with an entry in every index of the table (0009); an
index on the revision would be one more entry per bookmark, for a value no query looks
up (the bookmark finds its row by id).
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
