"""Editors steer readers: skipped articles, moves, and where each leave came from.

Revision ID: 0008
Revises: 0005

- ``deliveries.state`` may be ``skipped``: an article a reader was moved past
  (`series subscribers move`), recorded so it is never sent to them and counted
  apart from those sent.
- ``enrollments.moved_to`` / ``moved_at``: the article an editor moved a reader to,
  and when; the planner places the reader there (see plan.py).
- ``status_changes.via_series`` / ``via_article``: the email an unsubscribe came
  from (its link names the series and article), so `series status` counts the
  leave against that article.

Existing rows keep their meaning: no delivery is skipped, no reader moved, and no
audit entry names an email (status counts those against the last article sent).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)
OLD_STATES = "state IN ('claimed', 'sent', 'failed', 'unknown')"
NEW_STATES = "state IN ('claimed', 'sent', 'failed', 'unknown', 'skipped')"


def _deliveries(states: str) -> sa.Table:
    """The ledger as 0005 left it, with the check on ``state`` given: described here
    so that SQLite's copy of the table keeps every constraint."""
    return sa.Table(
        "deliveries",
        sa.MetaData(),
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
        sa.Column("delivery_key", sa.String(64)),
        sa.Column("claim_token", sa.String(64)),
        sa.Column("batch", sa.String(64)),
        sa.Column("attempted_at", TIME),
        sa.Column("article", sa.String(200), nullable=False),
        sa.UniqueConstraint("subscriber_id", "series", "article", name="deliveries_once"),
        sa.CheckConstraint(states, name="deliveries_state"),
    )


def _states(old: str, new: str) -> None:
    # SQLite's copy of the table would drop the partial index's WHERE: made again below.
    op.drop_index("deliveries_open", "deliveries")
    with op.batch_alter_table("deliveries", copy_from=_deliveries(old)) as batch:
        batch.drop_constraint("deliveries_state", type_="check")
        batch.create_check_constraint("deliveries_state", sa.text(new))
    op.create_index(
        "deliveries_open",
        "deliveries",
        ["state", "claimed_until"],
        sqlite_where=sa.text("state IN ('claimed', 'unknown')"),
        postgresql_where=sa.text("state IN ('claimed', 'unknown')"),
    )


def upgrade() -> None:
    _states(OLD_STATES, NEW_STATES)
    op.add_column("enrollments", sa.Column("moved_to", sa.String(200)))
    op.add_column("enrollments", sa.Column("moved_at", TIME))
    op.add_column("status_changes", sa.Column("via_series", sa.String(100)))
    op.add_column("status_changes", sa.Column("via_article", sa.String(200)))


def downgrade() -> None:
    # A skipped article becomes one the reader never got; the planner of 0005 then
    # places them by what they received.
    op.execute("DELETE FROM deliveries WHERE state = 'skipped'")
    _states(NEW_STATES, OLD_STATES)
    with op.batch_alter_table("status_changes") as batch:
        batch.drop_column("via_article")
        batch.drop_column("via_series")
    with op.batch_alter_table("enrollments") as batch:
        batch.drop_column("moved_at")
        batch.drop_column("moved_to")
