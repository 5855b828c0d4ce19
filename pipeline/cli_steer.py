"""`series subscribers pause|resume|move|show`: parse options, call steering, print."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import click

from .cli_options import now_option, resolve_now
from .cli_subscribers import _store, subscribers_group
from .output import format_table
from .redact import terminal_text

if TYPE_CHECKING:
    from .cli import State
    from .plan import Step
    from .steering import Story


def _when(moment: datetime | None, zone: ZoneInfo) -> str:
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M") if moment else "-"


@subscribers_group.command(name="pause")
@click.argument("email")
@click.option("--series", "series", help="Only in this series (default: in every series).")
@now_option
@click.pass_obj
def pause_command(state: State, email: str, series: str | None, now: datetime | None) -> None:
    """Pause a reader: nothing is sent to them, and they keep their place.

    Example: series subscribers pause ann@example.com --series attachment
    """
    _pause(state, email, series, now, paused=True)


@subscribers_group.command(name="resume")
@click.argument("email")
@click.option("--series", "series", help="Only in this series (default: in every series).")
@now_option
@click.pass_obj
def resume_command(state: State, email: str, series: str | None, now: datetime | None) -> None:
    """Resume a paused reader: their next part is due at once if its time passed meanwhile.

    Example: series subscribers resume ann@example.com --series attachment
    """
    _pause(state, email, series, now, paused=False)


def _pause(
    state: State, email: str, series: str | None, now: datetime | None, *, paused: bool
) -> None:
    from .steering import set_paused
    from .subscribers import SubscriberError

    if series is not None and (error := state.catalog().check_series(series)):
        raise SubscriberError(error)
    with _store(state) as store:
        click.echo(
            set_paused(
                store, email, paused=paused, now=resolve_now(state.config, now), series=series
            )
        )


@subscribers_group.command(name="move")
@click.argument("email")
@click.option("--series", "series", required=True, help="The series (its slug).")
@click.option(
    "--to-part", type=click.IntRange(min=1), help="Continue at this part (today's number)."
)
@click.option("--next", "next_slug", metavar="ARTICLE-SLUG", help="Continue at this article.")
@click.option(
    "--resend",
    is_flag=True,
    help="Send again the parts from there on that the reader already received.",
)
@now_option
@click.pass_obj
def move_command(
    state: State,
    email: str,
    series: str,
    to_part: int | None,
    next_slug: str | None,
    resend: bool,
    now: datetime | None,
) -> None:
    """Move a reader to another part: ahead (the parts skipped are never sent) or back
    (parts they already have are not sent again unless --resend).

    Example: series subscribers move ann@example.com --series attachment --to-part 3
    """
    from .send import load_selected
    from .steering import move, move_target

    config = state.config
    chosen = load_selected(config, series)  # content errors stop it: parts must be certain
    target = move_target(chosen[0], to_part=to_part, next_slug=next_slug)
    with _store(state) as store:
        click.echo(
            move(
                store,
                chosen[0],
                email,
                target,
                now=resolve_now(config, now),
                resend=resend,
                zone=config.timezone,
            )
        )


@subscribers_group.command(name="show")
@click.argument("email")
@now_option
@click.pass_obj
def show_command(state: State, email: str, now: datetime | None) -> None:
    """Show one reader's whole story: status, enrollments, every delivery, the audit.

    Example: series subscribers show ann@example.com
    """
    from .content import load_series
    from .steering import story

    config = state.config
    series_list, _ = load_series(config)  # content problems are for `series check`
    with _store(state) as store:
        found = story(store, email, series_list, resolve_now(config, now))
    click.echo(_format_story(found, config.timezone, {s.slug: s for s in series_list}))


def _format_story(found: Story, zone: ZoneInfo, series: dict[str, Any]) -> str:
    from .personal import first_name_of

    person = found.subscriber
    zone_name = zone.key
    # Every stored value is shown with its control characters as escapes (the tables
    # do the same): a name or an import source cannot act on the terminal.
    lines = [
        terminal_text(person.email),
        f"name: {terminal_text(person.name or '-')}",
        *(
            [f"first name: {terminal_text(first)}"]
            if (first := first_name_of(person.attributes))
            else []
        ),
        f"status: {person.status}",
        f"timezone: {terminal_text(person.timezone or 'none (the series or workspace timezone)')}",
        f"subscribed: {_when(person.created_at, zone)} ({zone_name}), "
        f"source {terminal_text(person.source or '-')}",
        "",
    ]
    if found.enrollments:
        plans: list[tuple[str, ...]] = []
        for row, step in found.enrollments:
            known = series.get(row.series)
            moved = ""
            if row.moved_to is not None:
                article = known.article(row.moved_to) if known is not None else None
                where = f"part {article.part}" if article is not None else f"'{row.moved_to}'"
                moved = f"moved to {where} on {_when(row.moved_at, zone)}"
            plans.append(
                (
                    row.series,
                    _when(row.enrolled_at, zone),
                    str(row.start_part),
                    _enrollment_state(person.status, row, step),
                    _next(person.status, row, step, zone),
                    moved or "-",
                )
            )
        lines.append("enrollments:")
        lines.append(
            format_table(
                ("SERIES", f"ENROLLED ({zone_name})", "START", "STATE", "NEXT", "MOVED"), plans
            )
        )
    else:
        lines.append("enrollments: none")
    lines.append("")
    if found.deliveries:
        lines.append("deliveries:")
        rows: list[tuple[str, ...]] = []
        for d in found.deliveries:
            known = series.get(d.series)
            article = known.article(d.article) if known is not None else None
            now_part = str(article.part) if article is not None else "gone"
            moment = d.sent_at or d.attempted_at or d.updated_at
            rows.append(
                (
                    d.series,
                    d.article,
                    str(d.part),
                    now_part,
                    d.state,
                    _when(moment, zone),
                    d.provider_message_id or "-",
                    (d.last_error or "")[:60] or "-",
                )
            )
        lines.append(
            format_table(
                (
                    "SERIES",
                    "ARTICLE",
                    "PART THEN",
                    "PART NOW",
                    "STATE",
                    f"WHEN ({zone_name})",
                    "PROVIDER ID",
                    "ERROR",
                ),
                rows,
            )
        )
    else:
        lines.append("deliveries: none")
    lines.append("")
    if found.audit:
        lines.append("status changes:")
        lines.append(
            format_table(
                (f"WHEN ({zone_name})", "SERIES", "CHANGE", "BY", "FROM EMAIL", "REASON"),
                (
                    (
                        _when(a.created_at, zone),
                        a.series or "(all)",
                        f"{a.old_status} -> {a.new_status}" if a.old_status else a.new_status,
                        a.actor,
                        f"{a.via_series}/{a.via_article}" if a.via_article else "-",
                        a.reason or "-",
                    )
                    for a in found.audit
                ),
            )
        )
    else:
        lines.append("status changes: none")
    return "\n".join(lines)


def _enrollment_state(status: str, row: Any, step: Step | None) -> str:
    if row.unsubscribed_at is not None:
        return "unsubscribed"
    if status != "active":
        return status
    if row.paused:
        return "paused"
    if step is not None and step.kind == "complete":
        return "completed"
    if step is not None and step.kind == "paused":
        return "series paused"
    return "active"


def _next(status: str, row: Any, step: Step | None, zone: ZoneInfo) -> str:
    """What comes next for one enrollment, as the dry run would say it: a reader who
    gets nothing is never given a due time."""
    if row.unsubscribed_at is not None:
        return "unsubscribed: nothing is sent"
    if status != "active":
        return f"{status}: nothing is sent"
    if row.paused:
        return "paused: nothing is sent until resumed"
    if step is None:
        return "- (series not in the workspace)"
    if step.kind == "complete":
        return step.reason
    if step.kind == "paused":
        where = f"part {step.part}: " if step.part is not None else ""
        return f"{where}{step.reason}: nothing is sent until paused: true is lifted"
    part = f"part {step.part}" if step.part is not None else (step.article or "")
    when = f" {_when(step.due_at, zone)}" if step.due_at is not None else ""
    return f"{part}: {step.kind}{when} ({step.reason})"
