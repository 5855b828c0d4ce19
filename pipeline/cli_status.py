"""`series status`: the funnel per series and article, as a table, JSON or CSV."""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import click

from .csvfile import neutralise
from .dropoff import BEFORE_FIRST, LEAVES
from .output import format_table
from .redact import terminal_text

if TYPE_CHECKING:
    from .cli import State
    from .status import SeriesStatus, Stuck

FORMATS = ("table", "json", "csv")


def _when(moment: datetime | None, zone: ZoneInfo) -> str:
    """A time in a table: in the workspace's zone, which the column's header names."""
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M") if moment else "-"


def _utc(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def status_command(
    state: State, *, now: datetime, series: str | None, output_format: str = "table"
) -> None:
    """Print the funnel of every series (or one): ``output_format`` one of FORMATS."""
    from .plan import MAX_ATTEMPTS
    from .send import load_selected
    from .status import PART_COLUMNS, series_status
    from .store import open_store

    config = state.config
    series_list = load_selected(config, series)
    with open_store(config.root) as store:
        report = series_status(store, series_list, now)
    if output_format == "json":
        click.echo(json.dumps([_as_json(s, now) for s in report], indent=2, ensure_ascii=False))
        return
    if output_format == "csv":
        _write_csv(report, now)
        return
    for index, status in enumerate(report):
        if index:
            click.echo()
        total = status.series.total
        paused = (
            f"; series paused (paused: true in {status.series.source}/series.yml)"
            if status.series.paused
            else ""
        )
        heading = f"{status.series.title} ({status.series.slug}), {total} part(s){paused}"
        click.echo(terminal_text(heading))
        rows = []
        for article in status.series.articles:
            counts = status.articles.get(article.slug) or Counter()
            state_note = (
                "draft"
                if article.draft
                else ("published" if article.is_published(now) else "not published")
            )
            rows.append(
                (
                    str(article.part),
                    article.slug,
                    article.title,
                    state_note,
                    *(str(counts.get(column, 0)) for column in PART_COLUMNS),
                    _when(status.next_due.get(article.slug), config.timezone),
                )
            )
        click.echo(
            format_table(
                (
                    "PART",
                    "ARTICLE",
                    "TITLE",
                    "STATE",
                    *(c.upper() for c in PART_COLUMNS),
                    f"NEXT DUE ({config.timezone.key})",
                ),
                rows,
            )
        )
        for (part, held), count in sorted(status.held.items()):
            click.echo(f"part {part}: {count} reader(s) {held}, in their own time")
        if status.gone:
            click.echo(
                "no longer in the series (renamed? give the new file the old `slug:`; "
                "removed: never sent again):"
            )
            click.echo(
                format_table(
                    ("ARTICLE", "SENT", "FAILED", "UNKNOWN"),
                    (
                        (slug, *(str(counts.get(c, 0)) for c in ("sent", "failed", "unknown")))
                        for slug, counts in status.gone.items()
                    ),
                )
            )
        if status.unknown:
            _listing(
                f"{len(status.unknown)} delivery(ies) with an unknown outcome: the provider may "
                "or may not have sent them. Check its activity log, then decide each with "
                f"`series resolve {status.series.slug}/PART EMAIL --sent` (the reader has it) "
                "or `--not-sent` (a later run sends it); an article no longer in the series "
                "is named by its slug:",
                f"SINCE ({config.timezone.key})",
                [(u, _when(u.since, config.timezone)) for u in status.unknown],
            )
        if status.failed:
            gone = sum(1 for f in status.failed if f.part is None)
            never = (
                f" ({gone} of an article no longer in the series: never tried again)"
                if gone
                else ""
            )
            _listing(
                f"{len(status.failed)} failed delivery(ies): a later run tries each again "
                f"until it has failed {MAX_ATTEMPTS} times{never}. Fix what the error names, "
                f"then `series resolve {status.series.slug} --retry` sends them again; for an "
                "address series cannot send to, `series subscribers unsubscribe EMAIL`:",
                "ATTEMPTS",
                [(f, str(f.attempts)) for f in status.failed],
            )
        _echo_dropoff(status)
        e = status.enrollments
        click.echo(
            f"enrollments: {e['active']} active, {e['completed']} completed, "
            f"{e['paused']} paused, {e['unsubscribed']} unsubscribed, "
            f"{e['bounced'] + e['complained']} bounced or complained"
        )


def _listing(intro: str, column: str, rows: list[tuple[Stuck, str]]) -> None:
    """Deliveries one by one after what to do about them: email, part (today's number, or
    the slug of an article no longer in the series), COLUMN, error."""
    click.echo(intro)
    click.echo(
        format_table(
            ("EMAIL", "PART", column, "LAST ERROR"),
            (
                (d.email, d.article if d.part is None else str(d.part), value, d.error[:80])
                for d, value in rows
            ),
        )
    )


def _state_note(article: Any, now: datetime) -> str:
    if article.draft:
        return "draft"
    return "published" if article.is_published(now) else "not published"


def _echo_dropoff(status: SeriesStatus) -> None:
    """Where readers left: per article, those who unsubscribed, bounced or complained
    right after it (the last article they were sent, or the one whose link they used)."""
    drop = status.dropoff
    rows = []
    if any(drop.left.get(BEFORE_FIRST, Counter()).values()):
        rows.append(
            ("-", "(before part 1)", "-", *(str(drop.count(BEFORE_FIRST, k)) for k in LEAVES))
        )
    present = {a.slug for a in status.series.articles}
    for article in status.series.articles:
        counts = status.articles.get(article.slug) or Counter()
        rows.append(
            (
                str(article.part),
                article.slug,
                str(counts.get("sent", 0)),
                *(str(drop.count(article.slug, k)) for k in LEAVES),
            )
        )
    for slug in sorted(s for s in drop.left if s and s not in present):
        counts = status.articles.get(slug) or Counter()
        rows.append(
            ("gone", slug, str(counts.get("sent", 0)), *(str(drop.count(slug, k)) for k in LEAVES))
        )
    click.echo("where readers left, counted at the last part they were sent:")
    click.echo(format_table(("PART", "ARTICLE", "RECEIVED", *(k.upper() for k in LEAVES)), rows))
    click.echo(f"completed the series (received the last part): {drop.completed}")


def _part_row(status: SeriesStatus, slug: str) -> dict[str, Any]:
    from .status import PART_COLUMNS

    counts = status.articles.get(slug) or Counter()
    row: dict[str, Any] = {c.replace(" ", "_"): counts.get(c, 0) for c in PART_COLUMNS}
    row["next_due"] = _utc(status.next_due.get(slug))
    row.update({k: status.dropoff.count(slug, k) for k in LEAVES})
    return row


def _as_json(status: SeriesStatus, now: datetime) -> dict[str, Any]:
    """One series' status for machines: counts by article, times in UTC with offset."""
    series = status.series
    present = {a.slug for a in series.articles}
    gone = sorted(set(status.gone) | {s for s in status.dropoff.left if s and s not in present})
    return {
        "series": series.slug,
        "title": series.title,
        "paused": series.paused,
        "parts": [
            {
                "part": a.part,
                "article": a.slug,
                "title": a.title,
                "state": _state_note(a, now),
                **_part_row(status, a.slug),
            }
            for a in series.articles
        ],
        "gone": [{"article": slug, **_part_row(status, slug)} for slug in gone],
        "left_before_first_part": {k: status.dropoff.count(BEFORE_FIRST, k) for k in LEAVES},
        "completed": status.dropoff.completed,
        "enrollments": {
            k: status.enrollments.get(k, 0)
            for k in ("active", "completed", "paused", "unsubscribed", "bounced", "complained")
        },
        "held": [
            {"part": part, "readers": count, "until": until}
            for (part, until), count in sorted(status.held.items())
        ],
        "unknown_deliveries": [_stuck_json(u) for u in status.unknown],
        "failed_deliveries": [_stuck_json(f) for f in status.failed],
    }


def _stuck_json(stuck: Stuck) -> dict[str, Any]:
    return {
        "email": stuck.email,
        "part": stuck.part,
        "article": stuck.article,
        "since": _utc(stuck.since),
        "attempts": stuck.attempts,
        "error": stuck.error,
    }


def _write_csv(report: list[SeriesStatus], now: datetime) -> None:
    """One row per series and article (RFC 4180, CRLF), then the articles no longer in
    the series and those who left before part 1; cells a spreadsheet would run as a
    formula get a leading apostrophe, as `subscribers export` does."""
    from .status import PART_COLUMNS

    columns = [c.replace(" ", "_") for c in PART_COLUMNS]
    header = ["series", "part", "article", "title", "state", *columns, "next_due", *LEAVES]
    out = csv.writer(sys.stdout, lineterminator="\r\n")
    out.writerow(header)
    for status in report:
        data = _as_json(status, now)
        rows = [{**p, "state": p["state"]} for p in data["parts"]] + [
            {**g, "part": "", "title": "", "state": "no longer in the series"} for g in data["gone"]
        ]
        before = data["left_before_first_part"]
        if any(before.values()):
            rows.append(
                {"part": "", "article": "", "title": "", "state": "left before part 1", **before}
            )
        for row in rows:
            cells = [data["series"], *(row.get(c, "") for c in header[1:])]
            out.writerow([neutralise("" if c is None else str(c)) for c in cells])
