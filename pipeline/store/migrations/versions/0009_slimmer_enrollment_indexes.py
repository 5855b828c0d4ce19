"""Fewer index entries written per bookmark: the planner's indexes hold only what it looks for.

Revision ID: 0009
Revises: 0008

Every send saves each reader's bookmark (``next_due_at``, ``plan_version``). Both
columns are indexed, so PostgreSQL cannot update the row in place (a HOT update): it
writes a new row version and a new entry in every index of ``enrollments``. Two of
those entries were never read:

- ``enrollments_to_plan`` held every enrollment under its plan version, though the
  planner only ever looks for those with none (``plan_version IS NULL``). It now
  holds just those, in id order, the order the planner pages them in.
- ``enrollments_by_series`` (PostgreSQL only): every query on one series can use the
  leading column of ``enrollments_by_wakeup`` instead. SQLite keeps it: its entries
  are (series, rowid), the id order the full plan pages in, and SQLite only touches
  an index whose columns change, so a bookmark never writes to it.

What the planner finds is unchanged; ``bench/send.py --postgres`` measures the
difference.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UNPLANNED = sa.text("plan_version IS NULL")


def upgrade() -> None:
    op.drop_index("enrollments_to_plan", "enrollments")
    op.create_index(
        "enrollments_to_plan",
        "enrollments",
        ["series", "id"],
        sqlite_where=UNPLANNED,
        postgresql_where=UNPLANNED,
    )
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("enrollments_by_series", "enrollments")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_index("enrollments_by_series", "enrollments", ["series"])
    op.drop_index("enrollments_to_plan", "enrollments")
    op.create_index("enrollments_to_plan", "enrollments", ["series", "plan_version"])
