"""`series send` and `series status`: parse options, call the library, print."""

from __future__ import annotations

import itertools
import json
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import click

from .errors import SeriesError
from .output import display_width, table_lines
from .redact import terminal_text

if TYPE_CHECKING:
    from .cli import State
    from .providers import Provider
    from .send import Planned, SendReport
    from .send.run import Stop
    from .store import Store


def _when(moment: datetime | None, zone: ZoneInfo) -> str:
    """A time in a table: in the workspace's zone, which the column's header names (as
    `--now` without an offset is read in it)."""
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M") if moment else "-"


def send_command(
    state: State,
    *,
    now: datetime,
    dry_run: bool,
    limit: int | None,
    series: str | None,
    provider_name: str | None,
    output_format: str,
    skip_sync: bool = False,
    force: bool = False,
) -> None:
    from .providers import get_provider
    from .send import SendOptions, dry_run_rows, send_due
    from .store import open_store, state_exists

    config = state.config
    provider = get_provider(provider_name or config.provider, config) if not dry_run else None
    options = SendOptions(
        now=now,
        dry_run=dry_run,
        limit=limit,
        only=series,
        provider_name=provider_name or config.provider,
        workers=config.workers,
    )
    # A dry run must not change the database, not even by migrating or creating it.
    if dry_run and not state_exists(config.root):
        click.echo("dry run: no subscribers yet (nothing to plan); nothing was written", err=True)
        return
    with open_store(config.root, migrate=not dry_run) as store:
        if dry_run:
            store.require_current_schema()
            _check_link_key(store, force=force, write=False)
            from .providers.outbox import OutboxProvider  # never used: nothing is sent

            report = send_due(config, store, OutboxProvider(config.root / "outbox"), options)
            _print_plan(dry_run_rows(report), output_format, report, config.timezone)
            return
        assert provider is not None
        rotated = _check_link_key(store, force=force, write=True)
        if rotated:
            click.echo(f"Warning: {rotated}", err=True)
        with _stop_on_signals(options.stop):
            if skip_sync:
                click.echo("suppression sync skipped (--skip-sync)", err=True)
            elif provider.keeps_suppressions:
                _sync(store, provider, now)
            bar = None
            if sys.stdout.isatty():

                def start(total: int) -> None:
                    nonlocal bar
                    bar = click.progressbar(length=total, label="sending", file=sys.stderr)
                    bar.__enter__()

                options.on_total = start
                options.on_progress = lambda n: bar.update(n) if bar else None
            try:
                report = send_due(config, store, provider, options)
            finally:
                if bar is not None:
                    bar.__exit__(None, None, None)
                provider.close()
    for line in itertools.chain(report.warnings, report.problems):
        click.echo(terminal_text(line), err=True)  # a line may name a reader
    click.echo(report.summary())
    if report.resolved:
        click.echo(f"resolved {report.resolved} delivery(ies) left unknown by an earlier run")
    if report.held:
        click.echo(
            f"held {report.held} delivery(ies) for the send window, which closed during the "
            "run; they go out when it opens",
            err=True,
        )
    if report.stopped:
        click.echo(
            f"stopped by {report.stopped} after {report.delivered} deliveries; "
            "the rest are sent by the next run",
            err=True,
        )
        sys.exit(1)
    if report.failed:
        sys.exit(1)


def _check_link_key(store: Store, *, force: bool, write: bool) -> str | None:
    """Refuse (KeyMismatch) to sign links with another key than the links already sent;
    a real run records the key's fingerprint. Returns a warning after a rotation."""
    from .store.ledger import link_signer
    from .store.linkkeys import check_send_key

    if not write:
        with store.connect() as conn:
            return check_send_key(conn, link_signer(conn), force=force, write=False)
    with store.begin() as conn:
        return check_send_key(conn, link_signer(conn), force=force)


@contextmanager
def _stop_on_signals(stop: Stop) -> Iterator[None]:
    """While sending, SIGTERM or SIGINT asks the run to stop after the batch in flight,
    recorded (workers are told too); the same signal a second time acts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may handle signals (a run started from a thread)
        return
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        stop(signum, frame)
        signal.signal(signum, previous[signum])

    for name in (signal.SIGTERM, signal.SIGINT):
        previous[name] = signal.signal(name, handler)
    try:
        yield
    finally:
        for number, action in previous.items():
            signal.signal(number, action)


def _sync(store: Store, provider: Provider, now: datetime) -> None:
    """Bring the provider's bounces, complaints and unsubscribes in before planning."""
    from .sync import SyncError, sync_suppressions

    try:
        report = sync_suppressions(store, provider, now=now)
    except SeriesError as exc:
        provider.close()
        if not isinstance(exc, SyncError):
            raise
        raise SeriesError(
            f"{exc}; nothing was sent (run again later, or pass --skip-sync to send anyway)"
        ) from None
    click.echo(report.summary(), err=True)


def _print_plan(
    rows: Iterable[Planned], output_format: str, report: SendReport, zone: ZoneInfo
) -> None:
    """Print the plan as it is read from ``rows`` (which may be read twice: a table's
    column widths first), never holding a long plan's text in memory."""
    for warning in report.warnings:
        click.echo(terminal_text(warning), err=True)
    if output_format == "json":
        _print_json_plan(rows)
        return
    header = ("EMAIL", "SERIES", "PART", "TITLE", f"DUE ({zone.key})", "WHY")

    def cells(r: Planned) -> tuple[str, ...]:
        when = "now" if r.kind == "due" else _when(r.due_at, zone)
        row = (r.email, r.series, str(r.part or "-"), r.title, when, r.reason)
        return tuple(terminal_text(cell) for cell in row)  # as format_table shows them

    widths = [display_width(h) for h in header]
    count = due = paused = 0
    for r in rows:
        widths = [max(w, display_width(c)) for w, c in zip(widths, cells(r), strict=True)]
        count += 1
        due += r.kind == "due"
        paused += r.kind == "paused"
    if count:
        _echo_lines(table_lines(header, widths, (cells(r) for r in rows)))
    skipped = f" ({report.skipped} more held back by --limit)" if report.skipped else ""
    held = f"; {paused} held by a paused series" if paused else ""
    click.echo(
        f"dry run: would send {due} email(s) now{skipped}; "
        f"{count - due - paused} waiting or scheduled{held}; nothing was sent or written",
        err=True,
    )


def resolve_command(
    state: State,
    *,
    target: str,
    email: str | None,
    sent: bool | None,
    retry: bool = False,
    now: datetime,
) -> None:
    from .status import settle_unknown
    from .store import open_store
    from .subscribers import normalise_email

    if retry == (sent is not None):
        raise SeriesError("say what to do: --sent, --not-sent or --retry")
    slug, _, ref = target.partition("/")
    if not slug or (not ref and (not retry or email is not None)):
        raise SeriesError(
            f"name the delivery as SERIES/PART or SERIES/ARTICLE, e.g. {slug or 'attachment'}/2"
        )
    if email is None and not retry:
        raise SeriesError("name the reader: series resolve SERIES/PART EMAIL --sent")
    address = None
    if email is not None:
        try:
            address = normalise_email(email)
        except ValueError as exc:
            raise SeriesError(str(exc)) from None
    article = _article_of(state, slug, ref) if ref else None
    with open_store(state.config.root) as store:
        if retry:
            count = _retry(store, slug, article, address, now=now)
            whom = f" to {address}" if address else ""
            click.echo(
                f"{target}{whom}: {count} failed delivery(ies) will be tried again by the next run"
            )
            return
        assert article is not None and address is not None
        settle_unknown(store, slug, article, address, sent=sent is True, now=now, label=ref)
    what = "sent (it will not be sent again)" if sent else "not sent (a later run sends it)"
    click.echo(f"{slug}/{ref} to {address}: marked {what}")


def _retry(
    store: Store, series: str, article: str | None, email: str | None, *, now: datetime
) -> int:
    """Give failed deliveries a fresh count of attempts; SeriesError when there are none."""
    from .store import ledger

    with store.begin() as conn:
        count = ledger.retry_failed(conn, series, article=article, email=email, now=now)
    if not count:
        raise SeriesError("no failed delivery there: nothing to retry (`series status` lists them)")
    return count


def _article_of(state: State, series: str, ref: str) -> str:
    """The slug a delivery is recorded under: REF itself, or for a part number the
    slug of the article that has it today (articles gone from the series, and
    placeholders like part-7, are named by slug)."""
    if not ref.isdigit():
        return ref
    from .content import load_series

    found, _ = load_series(state.config)
    chosen = next((s for s in found if s.slug == series), None)
    article = chosen.part(int(ref)) if chosen is not None else None
    if article is None:
        raise SeriesError(
            f"{series} has no part {ref} today; name the article by its slug "
            "(`series status` lists unknown deliveries with theirs)"
        )
    return article.slug


def _print_json_plan(rows: Iterable[Planned]) -> None:
    """The plan as a JSON array, as ``json.dumps(rows, indent=2)`` writes it, one row at
    a time."""

    def items() -> Iterator[str]:
        first = True
        for r in rows:
            item = {
                "email": r.email,
                "series": r.series,
                "part": r.part,
                "title": r.title,
                "due_at": r.due_at.isoformat() if r.due_at else None,
                "status": r.kind,
                "why": r.reason,
            }
            text = json.dumps(item, indent=2, ensure_ascii=False).replace("\n", "\n  ")
            yield ("[\n  " if first else ",\n  ") + text
            first = False
        yield "[]" if first else "\n]"

    _echo_lines(items(), joiner="")


def _echo_lines(lines: Iterable[str], joiner: str = "\n", every: int = 2000) -> None:
    """Echo text pieces joined by ``joiner``, in groups (each echo flushes), ending with
    a line break."""
    group: list[str] = []
    started = False
    for line in lines:
        group.append(line)
        if len(group) >= every:
            click.echo((joiner if started else "") + joiner.join(group), nl=False)
            started = True
            group = []
    click.echo((joiner if started and group else "") + joiner.join(group))
