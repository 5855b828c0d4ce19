"""Audit reasons and delivery errors never name an address; a new SQLite file is clean.

Revision ID: 0006
Revises: 0005

Provider texts (a 406's "Found inactive addresses: …", Mailgun's 400s, bounce
reasons) used to be stored as the provider wrote them, in ``status_changes.reason``
(kept after a person is erased) and ``deliveries.last_error`` (shared by every
delivery of a request). They are scrubbed as they are stored now
(``redact.provider_text``); this scrubs what is already there the same way, and
secrets with it. A database that never had a subscriber has never deleted anyone without
``secure_delete``: it is marked so, and erasure need not rebuild it (store/erasure.py).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pipeline.redact import provider_text
from pipeline.store.erasure import CLEAN_MARK

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BATCH = 1000


def upgrade() -> None:
    conn = op.get_bind()
    for table, column in (("status_changes", "reason"), ("deliveries", "last_error")):
        _scrub(conn, table, column)
    # Nobody was ever added (so nobody deleted) when neither table has a row.
    used = conn.execute(
        sa.text("SELECT (SELECT COUNT(*) FROM subscribers) + (SELECT COUNT(*) FROM status_changes)")
    ).scalar_one()
    if used == 0:
        conn.execute(sa.text("DELETE FROM settings WHERE key = :key"), {"key": CLEAN_MARK})
        conn.execute(
            sa.text("INSERT INTO settings (key, value) VALUES (:key, '1')"), {"key": CLEAN_MARK}
        )


def _scrub(conn: sa.Connection, table: str, column: str) -> None:
    """Rewrite each text that may hold an address or a credential, by id, in batches."""
    last = 0
    while True:
        rows = conn.execute(
            sa.text(
                f"SELECT id, {column} FROM {table} WHERE id > :last AND {column} IS NOT NULL "
                f"AND ({column} LIKE '%@%' OR {column} LIKE '%=%' OR {column} LIKE '% %') "
                "ORDER BY id LIMIT :batch"
            ),
            {"last": last, "batch": BATCH},
        ).all()
        if not rows:
            return
        for row_id, text in rows:
            clean = provider_text(text)
            if clean != text:
                conn.execute(
                    sa.text(f"UPDATE {table} SET {column} = :clean WHERE id = :id"),
                    {"clean": clean, "id": row_id},
                )
        last = rows[-1][0]


def downgrade() -> None:
    # Scrubbed text cannot be restored; the mark is harmless to older versions.
    pass
