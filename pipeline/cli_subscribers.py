"""`series subscribers …` and `series db …`: parse options, call the library, print."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .cli_options import Moment, resolve_now
from .output import format_table
from .redact import terminal_text

if TYPE_CHECKING:
    from .cli import State
    from .store import Store

# The store (SQLAlchemy) is imported inside the commands that use it, so that
# `series check` and `series preview` do not pay for it at start-up.
STATUSES = ("active", "unsubscribed", "bounced", "complained")  # as in store.schema

CONTEXT = {"help_option_names": ["-h", "--help"]}


def _store(state: State, *, content_free: bool = False) -> Store:
    """The state database, migrated. ``content_free``: for commands that touch no delivery
    history and must always work (see open_store); a refused upgrade is a warning then."""
    from .store import open_store

    store = open_store(state.config.root, content_free=content_free)
    warn_upgrade_refused(store)
    return store


def warn_upgrade_refused(store: Store) -> None:
    if store.upgrade_refused is not None:
        click.echo(f"Warning: {store.upgrade_refused}", err=True)


def _now() -> datetime:
    return datetime.now(UTC)


@click.group(name="subscribers", context_settings=CONTEXT)
def subscribers_group() -> None:
    """Manage subscribers and their enrollments.

    Example: series subscribers import subscribers/example.csv --series attachment
    """


@subscribers_group.command(name="add")
@click.argument("email")
@click.option("--name", help="The subscriber's name, used in the greeting.")
@click.option(
    "--first-name",
    help="The name the greeting uses (default: the first word of --name); '' removes it.",
)
@click.option("--series", "series", help="Enroll in this series (its slug).")
@click.option("--start-part", type=click.IntRange(min=1), help="Start at this part (default 1).")
@click.option("--timezone", help="IANA timezone for the send window, e.g. Europe/Stockholm.")
@click.option(
    "--resubscribe", is_flag=True, help="Reactivate someone who unsubscribed and asked to return."
)
@click.option("--now", type=Moment(), help="Record the change as made at this time (ISO-8601).")
@click.pass_obj
def add_command(
    state: State,
    email: str,
    name: str | None,
    first_name: str | None,
    series: str | None,
    start_part: int | None,
    timezone: str | None,
    resubscribe: bool,
    now: datetime | None,
) -> None:
    """Add or update one subscriber, optionally enrolling them in a series.

    Example: series subscribers add ann@example.com --name "Ann Lee" --first-name Annie
    --series attachment
    """
    from .subscribers import add_subscriber

    with _store(state) as store:
        outcome = add_subscriber(
            store,
            state.catalog(),
            email,
            now=resolve_now(state.config, now),
            name=name,
            first_name=first_name,
            series=series,
            start_part=start_part,
            timezone=timezone,
            resubscribe=resubscribe,
        )
    click.echo({"imported": "added", "updated": "updated", "unchanged": "unchanged"}[outcome])


@subscribers_group.command(name="import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--series", "series", help="Enroll every row without a series column in this one.")
@click.option(
    "--now",
    type=Moment(),
    help="Enroll as of this time (ISO-8601) rows without a subscribed_at column.",
)
@click.pass_obj
def import_command(state: State, file: Path, series: str | None, now: datetime | None) -> None:
    """Import subscribers from a CSV with a header row (an email column required).

    UTF-8, or UTF-16 with a byte-order mark; comma, semicolon or tab separated.
    Columns: email, name, timezone, series, start_part, subscribed_at, status; any
    other column is kept as an attribute. Bad rows are reported and skipped.

    Example: series subscribers import subscribers/example.csv
    """
    from .importer import import_csv

    config = state.config
    with _store(state) as store:
        report = import_csv(
            store,
            file,
            state.catalog(),
            now=resolve_now(config, now),
            zone=config.timezone,
            series=series,
            display=str(file),
            # A row's problem may quote its cells: their control characters as escapes.
            on_problem=lambda problem: click.echo(terminal_text(str(problem)), err=True),
        )
    click.echo(report.summary())
    if report.rejected:
        sys.exit(1)


@subscribers_group.command(name="export")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def export_command(state: State, file: Path | None) -> None:
    """Write every subscriber with status and per-series progress as CSV (default: stdout).

    Example: series subscribers export build/subscribers.csv
    """
    from .importer import export_csv

    with _store(state) as store:
        if file is None:
            export_csv(store, sys.stdout, state.catalog())
            return
        partial = file.with_name(f".{file.name}.partial")
        with partial.open("w", encoding="utf-8", newline="") as out:
            count = export_csv(store, out, state.catalog())
        partial.replace(file)
    click.echo(f"exported {count} subscriber(s) to {file}", err=True)


@subscribers_group.command(name="list")
@click.option(
    "--status",
    help=f"Only subscribers with this status ({', '.join(STATUSES)}), or pending signups.",
)
@click.option("--series", "series", help="Only subscribers enrolled in this series.")
@click.pass_obj
def list_command(state: State, status: str | None, series: str | None) -> None:
    """Show subscribers as a table.

    Example: series subscribers list --status active --series attachment
    """
    from .subscribers import SubscriberError, iter_subscribers, progress_text

    catalog = state.catalog()
    if series is not None and (error := catalog.check_series(series)):
        raise SubscriberError(error)
    if status == "pending":  # signups waiting for their double opt-in confirmation
        from .cli_signup import list_pending

        return list_pending(state, series)
    with _store(state) as store:
        rows = [
            (
                s.email,
                s.name,
                s.status,
                s.timezone or "",
                "; ".join(
                    f"{e.series}: {progress_text(e, len(catalog.parts.get(e.series, ())) or None)}"
                    for e in s.enrollments
                    if series is None or e.series == series
                ),
            )
            for s in iter_subscribers(store, status=status, series=series)
        ]
    if not rows:
        click.echo("no subscribers match", err=True)
        return
    click.echo(format_table(("EMAIL", "NAME", "STATUS", "TIMEZONE", "SERIES"), rows))


@subscribers_group.command(name="unsubscribe")
@click.argument("email")
@click.option("--series", "series", help="Only from this series (default: from all).")
@click.option("--now", type=Moment(), help="Record the change as made at this time (ISO-8601).")
@click.pass_obj
def unsubscribe_command(state: State, email: str, series: str | None, now: datetime | None) -> None:
    """Unsubscribe someone from one series or from everything.

    Example: series subscribers unsubscribe ann@example.com --series attachment
    """
    from .subscribers import unsubscribe

    with _store(state, content_free=True) as store:
        click.echo(unsubscribe(store, email, now=resolve_now(state.config, now), series=series))


@subscribers_group.command(name="sync")
@click.option("--provider", "provider_name", help="Override the configured provider.")
@click.pass_obj
def sync_command(state: State, provider_name: str | None) -> None:
    """Mark subscribers the provider lists as bounced, complained or unsubscribed.

    Example: series subscribers sync
    """
    from .providers import get_provider
    from .sync import sync_suppressions

    config = state.config
    provider = get_provider(provider_name or config.provider, config)
    try:
        with _store(state, content_free=True) as store:
            report = sync_suppressions(store, provider, now=_now())
    finally:
        provider.close()
    click.echo(report.summary())


@subscribers_group.command(name="remove")
@click.argument("email")
@click.pass_obj
def remove_command(state: State, email: str) -> None:
    """Erase a person's personal data; their address is kept only as a keyed hash.

    Example: series subscribers remove ann@example.com
    """
    from .subscribers import remove

    with _store(state, content_free=True) as store:
        click.echo(remove(store, email, now=_now()))


@click.group(name="db", context_settings=CONTEXT)
def db_group() -> None:
    """The state database.

    Example: series db upgrade
    """


@db_group.command(name="upgrade")
@click.pass_obj
def upgrade_command(state: State) -> None:
    """Apply any pending schema migrations (also done automatically on first use).

    Example: SERIES_DATABASE_URL=postgresql+psycopg://… series db upgrade
    """
    from .store.migrate import head

    with _store(state) as store:
        click.echo(f"database {store.display_url} is at schema revision {head()}")
