"""The `series` command: parse options, call one library function, print."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .cli_init import init_command
from .cli_options import now_option, resolve_now
from .cli_send import resolve_command, send_command
from .cli_status import FORMATS, status_command
from .cli_steer import pause_command  # noqa: F401  (adds pause, resume, move, show)
from .cli_subscribers import db_group, subscribers_group
from .config import Config, find_workspace, load_config
from .content import load_series
from .errors import ConfigError, ContentError, SeriesError
from .redact import scrub_secrets, terminal_text

if TYPE_CHECKING:
    from .subscribers import Catalog

CONTEXT = {"help_option_names": ["-h", "--help"]}


@dataclass
class State:
    workspace: str | None
    _config: Config | None = field(default=None, repr=False)

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(find_workspace(self.workspace))
        return self._config

    def catalog(self) -> Catalog:
        """The series and parts that exist, for validating names; content problems aside."""
        from .subscribers import Catalog

        series_list, _ = load_series(self.config)
        return Catalog.of(series_list)


class SeriesGroup(click.Group):
    """Turns every expected error into one line and exit code 1 (the one place that does)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ContentError as exc:
            # A problem names a file, and a file name may hold any character but "/".
            for problem in exc.problems:
                click.echo(terminal_text(str(problem)), err=True)
            click.echo(f"Error: {terminal_text(str(exc))}", err=True)
            ctx.exit(1)
        except ConfigError as exc:
            for problem in exc.problems:
                click.echo(f"Error: {terminal_text(str(problem))}", err=True)
            ctx.exit(1)
        except SeriesError as exc:
            # The last net: whatever a message quotes, no secret of the environment.
            # A message may name a subscriber (a name, an address): never a control
            # character the terminal would act on, nor a line break that fakes a line.
            click.echo(f"Error: {terminal_text(scrub_secrets(str(exc)))}", err=True)
            ctx.exit(1)


@click.group(cls=SeriesGroup, context_settings=CONTEXT)
@click.option(
    "--workspace",
    "-w",
    envvar="SERIES_WORKSPACE",
    type=click.Path(file_okay=False),
    help="The workspace directory (default: the nearest one at or above the current "
    "directory; env SERIES_WORKSPACE).",
)
@click.version_option(package_name="series-drip")
@click.pass_context
def cli(ctx: click.Context, workspace: str | None) -> None:
    """Deliver a Markdown series as drip emails.

    Example: series check && series preview attachment --out build/preview
    """
    ctx.obj = State(workspace)


@cli.command(name="check")
@now_option
@click.option("--strict", is_flag=True, help="Treat warnings as errors (exit 1).")
@click.pass_obj
def check_command(state: State, now: datetime | None, strict: bool) -> None:
    """Validate content, templates and config; print every problem as path:line: message.
    With a state database, also warn where edits no longer match what readers received.

    Example: series check
    """
    from .check import check_workspace, serving_note

    config = state.config
    report = check_workspace(config, now=resolve_now(config, now), state=True)
    for problem in report.problems:
        click.echo(terminal_text(str(problem)))
    if strict and (note := serving_note(config)) is not None:
        click.echo(note)
    errors, warnings = len(report.errors), len(report.warnings)
    click.echo(
        f"checked {report.articles} article(s) in {len(report.series)} series: "
        f"{_plural(errors, 'error')}, {_plural(warnings, 'warning')}",
        err=True,
    )
    if errors or (strict and warnings):
        sys.exit(1)


@cli.command(name="preview")
@click.argument("target", required=False, metavar="[SERIES[/PART]]")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("build/preview"),
    show_default=True,
    help="Directory for the .html, .txt and .eml files (relative to the workspace).",
)
@click.option(
    "--progress",
    type=click.IntRange(min=0),
    help="Show the series block as seen by a reader who has received this many parts.",
)
@now_option
@click.pass_obj
def preview_command(
    state: State, target: str | None, out: Path, progress: int | None, now: datetime | None
) -> None:
    """Write .html, .txt and .eml previews of a series or one part (by number or slug).

    Example: series preview attachment/2 --out build/preview
    """
    from .preview import select_parts, write_previews

    config = state.config
    series_list, problems = load_series(config)
    if any(p.is_error for p in problems):
        raise ContentError(problems)
    chosen = select_parts(series_list, target)
    out_dir = out if out.is_absolute() else config.root / out
    for item in write_previews(
        config, chosen, out_dir, now=resolve_now(config, now), progress=progress
    ):
        first = item.paths[0]
        click.echo(f"{config.rel(first.with_suffix(''))}.{{html,txt,eml}}")


cli.add_command(subscribers_group)
cli.add_command(db_group)
cli.add_command(init_command)


@cli.command(name="send")
@click.option(
    "--dry-run", is_flag=True, help="Plan and render, but send nothing and write nothing."
)
@click.option("--series", "series", help="Only this series (its slug).")
@click.option("--limit", type=click.IntRange(min=0), help="Send at most N emails in this run.")
@now_option
@click.option(
    "--provider",
    "provider_name",
    help="Override the configured provider (outbox, postmark, resend, sendgrid, mailgun).",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output of --dry-run.",
)
@click.option(
    "--skip-sync",
    is_flag=True,
    help="Send without first reading the provider's bounce, complaint and unsubscribe lists.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Sign unsubscribe links with this SERIES_SECRET_KEY although earlier links were "
    "signed with another (a deliberate key rotation; see the README).",
)
@click.pass_obj
def send_cmd(
    state: State,
    dry_run: bool,
    series: str | None,
    limit: int | None,
    now: datetime | None,
    provider_name: str | None,
    output_format: str,
    skip_sync: bool,
    force: bool,
) -> None:
    """Send every part that is due, one per reader; --dry-run shows who would get what and why.

    Example: series send --dry-run
    """
    config = state.config
    send_command(
        state,
        now=resolve_now(config, now),
        dry_run=dry_run,
        limit=limit,
        series=series,
        provider_name=provider_name,
        output_format=output_format,
        skip_sync=skip_sync,
        force=force,
    )


@cli.command(name="status")
@click.option("--series", "series", help="Only this series (its slug).")
@now_option
@click.option(
    "--format",
    "output_format",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="table for people; json or csv (one row per article) for machines and spreadsheets.",
)
@click.pass_obj
def status_cmd(state: State, series: str | None, now: datetime | None, output_format: str) -> None:
    """Show the funnel per series and part: sent, skipped, due, scheduled, waiting, failed,
    unknown, and where readers left (unsubscribed, bounced, complained) and completed.

    Example: series status --series attachment --format csv > status.csv
    """
    config = state.config
    status_command(state, now=resolve_now(config, now), series=series, output_format=output_format)


@cli.command(name="resolve")
@click.argument("target", metavar="SERIES[/PART|/ARTICLE]")
@click.argument("email", required=False)
@click.option(
    "--sent/--not-sent",
    "sent",
    default=None,
    help="The reader has it (never send it again), or does not (a later run sends it).",
)
@click.option(
    "--retry",
    is_flag=True,
    help="Try failed deliveries again, also those that gave up: one (SERIES/PART EMAIL), "
    "a part's (SERIES/PART) or a whole series' (SERIES).",
)
@now_option
@click.pass_obj
def resolve_cmd(
    state: State,
    target: str,
    email: str | None,
    sent: bool | None,
    retry: bool,
    now: datetime | None,
) -> None:
    """Decide a delivery whose outcome is unknown, after checking the provider's log;
    or, with --retry, send failed deliveries again once their cause is fixed.
    Name the article by part number or by slug (also one no longer in the series).

    Example: series resolve attachment/2 ann@example.com --sent
    """
    resolve_command(
        state,
        target=target,
        email=email,
        sent=sent,
        retry=retry,
        now=resolve_now(state.config, now),
    )


@cli.command(name="test-send")
@click.argument("target", metavar="SERIES/PART|SERIES/ARTICLE")
@click.option("--to", "to", required=True, help="The editor's address that gets the test.")
@click.option(
    "--progress",
    type=click.IntRange(min=0),
    help="Show the series block as seen by a reader who has received this many parts.",
)
@click.option("--provider", "provider_name", help="Override the configured provider.")
@now_option
@click.pass_obj
def test_send_cmd(
    state: State,
    target: str,
    to: str,
    progress: int | None,
    provider_name: str | None,
    now: datetime | None,
) -> None:
    """Send one part to an editor, "[TEST]" in the subject; no subscriber or ledger changes.

    Example: series test-send attachment/2 --to editor@example.com --progress 1
    """
    from .preview import select_parts
    from .providers import get_provider
    from .testsend import send_test

    config = state.config
    series_list, problems = load_series(config)
    if any(p.is_error for p in problems):
        raise ContentError(problems)
    if "/" not in target:
        raise SeriesError(f"name one part as SERIES/PART, e.g. {target}/1")
    [(series, article)] = select_parts(series_list, target)
    provider = get_provider(provider_name or config.provider, config)
    try:
        sent = send_test(
            config,
            provider,
            series,
            article,
            to,
            now=resolve_now(config, now),
            progress=progress,
        )
    finally:
        provider.close()
    draft = " (a draft)" if article.draft else ""
    message_id = f", message id {sent.message_id}" if sent.message_id else ""
    click.echo(
        f"sent a test of {series.slug}/{article.part} “{article.title}”{draft} to {sent.to} "
        f"through {provider.name}{message_id}"
    )


@cli.command(name="serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option(
    "--force",
    is_flag=True,
    help="Start although SERIES_SECRET_KEY is not the key `series send` signed links with.",
)
@click.pass_obj
def serve_cmd(state: State, host: str, port: int, force: bool) -> None:
    """Serve the self-hosted unsubscribe pages (GET and one-click POST on /u/<token>),
    and with [signup] enabled the signup form (/subscribe) and its double opt-in links.

    Example: series serve --host 0.0.0.0 --port 8080
    """
    from .cli_serve import serve_command

    serve_command(state, host=host, port=port, force=force)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def main() -> None:
    cli(prog_name="series")
