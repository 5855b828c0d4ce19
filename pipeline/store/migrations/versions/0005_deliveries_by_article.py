"""A delivery belongs to an article (its slug), not to a part number.

Revision ID: 0005
Revises: 0004

Each recorded part is matched to the article that has that part number in the
workspace when this migration runs; a part no article has then keeps a placeholder
identity, ``part-N``, which `series check` reports. A series with recorded deliveries
must be in that workspace and load without errors that could concern a recorded part
(else MappingRefused, and the database stays at 0004). ``part`` stays, as the position
the article had when it was sent. Enrollments keep ``start_part``: the position a
reader enrolled at, which only decides their first article.
"""

from __future__ import annotations

from collections.abc import Mapping

import sqlalchemy as sa
from alembic import context, op

from pipeline.store.migrate import current_articles

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)


def _deliveries(unique_on: str) -> sa.Table:
    """The ledger as 0001–0004 left it plus ``article``, unique per subscriber, series
    and ``unique_on``: described here so that SQLite's copy of the table keeps every
    constraint without relying on reflection."""
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
        sa.Column("article", sa.String(200), nullable=unique_on != "article"),
        sa.UniqueConstraint("subscriber_id", "series", unique_on, name="deliveries_once"),
        sa.CheckConstraint(
            "state IN ('claimed', 'sent', 'failed', 'unknown')", name="deliveries_state"
        ),
    )


def placeholders(
    recorded: set[tuple[str, int]], articles: Mapping[str, Mapping[int, str]]
) -> dict[tuple[str, int], str]:
    """The identity of each recorded (series, part): the slug of the article with that
    part number now, else ``part-N`` (``part-N-removed`` if an article is called that)."""
    identity = {}
    for series, part in recorded:
        slugs = articles.get(series, {})
        if part in slugs:
            identity[(series, part)] = slugs[part]
            continue
        name = f"part-{part}"
        identity[(series, part)] = name if name not in slugs.values() else f"{name}-removed"
    return identity


def upgrade() -> None:
    conn = op.get_bind()
    table = _deliveries(unique_on="part")
    pairs = conn.execute(sa.select(table.c.series, table.c.part).distinct())
    recorded = {(series, part) for series, part in pairs}
    parts: dict[str, set[int]] = {}
    for series, part in recorded:
        parts.setdefault(series, set()).add(part)
    # Before any change: a refusal (MappingRefused) leaves the database at 0004.
    articles = current_articles(context.config.attributes.get("workspace"), parts)
    op.add_column("deliveries", sa.Column("article", sa.String(200)))
    if recorded:
        identity = placeholders(recorded, articles)
        # One pass over the table, however many rows: a CASE over the (few) pairs.
        conn.execute(
            table.update().values(
                article=sa.case(
                    *(
                        (sa.and_(table.c.series == series, table.c.part == part), slug)
                        for (series, part), slug in sorted(identity.items())
                    ),
                )
            )
        )
    # The partial index is made again below; SQLite's table copy would drop its WHERE.
    op.drop_index("deliveries_open", "deliveries")
    with op.batch_alter_table("deliveries", copy_from=table) as batch:
        batch.alter_column("article", existing_type=sa.String(200), nullable=False)
        batch.drop_constraint("deliveries_once", type_="unique")
        batch.create_unique_constraint("deliveries_once", ["subscriber_id", "series", "article"])
    _open_index()


def downgrade() -> None:
    # Two articles sent at the same position (after a renumbering) cannot both be kept
    # under the old constraint: going back refuses rather than dropping history.
    op.drop_index("deliveries_open", "deliveries")
    with op.batch_alter_table("deliveries", copy_from=_deliveries(unique_on="article")) as batch:
        batch.drop_constraint("deliveries_once", type_="unique")
        batch.create_unique_constraint("deliveries_once", ["subscriber_id", "series", "part"])
        batch.drop_column("article")
    _open_index()


def _open_index() -> None:
    op.create_index(
        "deliveries_open",
        "deliveries",
        ["state", "claimed_until"],
        sqlite_where=sa.text("state IN ('claimed', 'unknown')"),
        postgresql_where=sa.text("state IN ('claimed', 'unknown')"),
    )
