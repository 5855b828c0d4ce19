"""`series subscribers list --status pending`: signups waiting for their confirmation."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from .output import format_table

if TYPE_CHECKING:
    from .cli import State


def list_pending(state: State, series: str | None) -> None:
    """Print pending signups as a table (expired ones are purged first)."""
    from .cli_subscribers import _store
    from .signup import iter_pending

    with _store(state) as store:
        rows = [
            (
                p.email,
                p.name,
                "pending",
                "",
                f"{p.series}: asked {_when(p.created_at)}, link works until {_when(p.expires_at)}",
            )
            for p in iter_pending(store, now=datetime.now(UTC), series=series)
        ]
    if not rows:
        click.echo("no subscribers match", err=True)
        return
    click.echo(format_table(("EMAIL", "NAME", "STATUS", "TIMEZONE", "SERIES"), rows))


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
