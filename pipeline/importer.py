"""CSV in and out: `series subscribers import` and `series subscribers export`.

Import validates each row on its own (a bad row is reported as FILE:LINE and
skipped), then writes good rows one transaction per batch. It never re-subscribes
anyone who unsubscribed, bounced or complained, and never resets progress.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .errors import Problem
from .headers import clean_name, control_character
from .store import Store
from .store.schema import (
    STATUSES,
    UTCDateTime,
    enrollments,
    status_changes,
    subscribers,
    suppressions,
    to_db,
    untyped,
)
from .subscribers import (
    Catalog,
    SubscriberError,
    check_timezone,
    iter_subscribers,
    progress_text,
    replan,
    sendable_email,
)

KNOWN_COLUMNS = ("email", "name", "timezone", "series", "start_part", "subscribed_at", "status")
# Written by export and recognised on import, so an export can be imported again.
EXPORT_ONLY = ("source",)
PROGRESS_PREFIX = "progress:"
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
BATCH_SIZE = 2000


@dataclass
class ImportReport:
    imported: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    problems: list[Problem] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"imported {self.imported}, updated {self.updated}, "
            f"unchanged {self.unchanged}, rejected {self.rejected}"
        )


@dataclass(frozen=True)
class Row:
    line: int
    email: str
    name: str | None
    timezone: str | None
    series: str | None
    start_part: int
    subscribed_at: datetime | None
    status: str | None
    attributes: dict[str, str]
    notes: tuple[str, ...] = ()  # warnings about the row, which is imported all the same


def import_csv(
    store: Store,
    path: Path,
    catalog: Catalog,
    *,
    now: datetime,
    zone: ZoneInfo,
    series: str | None = None,
    display: str | None = None,
    on_problem: Callable[[Problem], None] | None = None,
    batch_size: int = BATCH_SIZE,
) -> ImportReport:
    """Import a subscriber CSV; ``display`` is the file name used in messages."""
    name = display or str(path)
    report = ImportReport()

    def problem(line: int | None, message: str, severity: str = "error") -> None:
        found = Problem(name, line, message, severity)  # type: ignore[arg-type]
        report.problems.append(found)
        if on_problem:
            on_problem(found)

    if series is not None and (error := catalog.check_series(series)):
        raise SubscriberError(error)
    _check_utf8(path, name)
    actor = f"import:{path.name}"
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in reader.fieldnames or []]
        if "email" not in header:
            raise SubscriberError(f"{name}:1: the header row must have an 'email' column")
        reader.fieldnames = header
        seen: dict[str, int] = {}
        batch: list[Row] = []
        for raw in reader:
            line = reader.line_num
            try:
                row = _parse_row(raw, line, catalog, series, zone)
            except ValueError as exc:
                report.rejected += 1
                problem(line, str(exc))
                continue
            for note in row.notes:
                problem(line, note, "warning")
            if row.email in seen:
                report.rejected += 1
                problem(line, f"{row.email} is a duplicate of line {seen[row.email]}")
                continue
            seen[row.email] = line
            batch.append(row)
            if len(batch) >= batch_size:
                _write_batch(store, batch, report, problem, now=now, actor=actor)
                batch = []
        if batch:
            _write_batch(store, batch, report, problem, now=now, actor=actor)
    return report


def _check_utf8(path: Path, name: str) -> None:
    """Refuse a file that is not UTF-8 before anything is written."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                line += chunk[: exc.start].count(b"\n")
                raise SubscriberError(
                    f"{name}:{line}: not UTF-8 text ({exc.reason}); save the file as UTF-8"
                ) from None
            line += chunk.count(b"\n")


def _parse_row(
    raw: dict[str | Any, Any],
    line: int,
    catalog: Catalog,
    default_series: str | None,
    zone: ZoneInfo,
) -> Row:
    if None in raw:
        raise ValueError("more cells than header columns")
    cells = {k: (v or "").strip() for k, v in raw.items()}
    if not cells.get("email"):
        raise ValueError("no email address")
    email = sendable_email(cells["email"])
    timezone = cells.get("timezone") or None
    if timezone:
        check_timezone(timezone)
    series = cells.get("series") or default_series
    start_text = cells.get("start_part") or ""
    start_part = 1
    if start_text:
        if not start_text.isdigit() or int(start_text) < 1:
            raise ValueError(f"start_part must be a part number, got {start_text!r}")
        start_part = int(start_text)
        if series is None:
            raise ValueError("start_part is given but no series")
    if series is not None:
        error = catalog.check_series(series) or catalog.check_part(series, start_part)
        if error:
            raise ValueError(error)
    subscribed_at = None
    if cells.get("subscribed_at"):
        try:
            subscribed_at = datetime.fromisoformat(cells["subscribed_at"])
        except ValueError:
            raise ValueError(
                f"subscribed_at is not a date: {cells['subscribed_at']!r} (use YYYY-MM-DD)"
            ) from None
        if subscribed_at.tzinfo is None:
            subscribed_at = subscribed_at.replace(tzinfo=zone)
    status = cells.get("status") or None
    if status is not None and status not in STATUSES:
        raise ValueError(f"unknown status {status!r} (one of: {', '.join(STATUSES)})")
    attributes = {
        key: value
        for key, value in cells.items()
        if key not in KNOWN_COLUMNS
        and key not in EXPORT_ONLY
        and not key.startswith(PROGRESS_PREFIX)
        and key
        and value
    }
    name = clean_name(cells.get("name") or "") or None
    notes: tuple[str, ...] = ()
    if name != (cells.get("name") or None):
        found = control_character(cells.get("name") or "")
        notes = (f"the name had {found}; stored as {name or ''!r}",)
    return Row(
        line=line,
        email=email,
        name=name,
        timezone=timezone,
        series=series,
        start_part=start_part,
        subscribed_at=subscribed_at,
        status=status,
        attributes=attributes,
        notes=notes,
    )


def _write_batch(
    store: Store,
    rows: list[Row],
    report: ImportReport,
    problem: Callable[..., None],
    *,
    now: datetime,
    actor: str,
) -> None:
    with store.begin() as conn:
        # Hashing every address costs time; with no erased addresses there is no need.
        hashes: dict[str, str] = {}
        erased: set[str] = set()
        if conn.execute(sa.select(sa.exists().select_from(suppressions))).scalar():
            hashes = {row.email: store.email_hash(conn, row.email) for row in rows}
            erased = set(
                conn.scalars(
                    sa.select(suppressions.c.email_hash).where(
                        suppressions.c.email_hash.in_(hashes.values())
                    )
                )
            )
        existing = {
            r.email: r
            for r in conn.execute(
                sa.select(subscribers).where(subscribers.c.email.in_([row.email for row in rows]))
            )
        }
        enrolled = (
            {
                (e.subscriber_id, e.series): e
                for e in conn.execute(
                    sa.select(enrollments).where(
                        enrollments.c.subscriber_id.in_([r.id for r in existing.values()])
                    )
                )
            }
            if existing
            else {}
        )

        new_rows: list[Row] = []
        updates: list[dict[str, Any]] = []
        audits: list[dict[str, Any]] = []
        # (series, start part) → addresses to enroll: written as INSERT … SELECT below.
        to_enroll: dict[tuple[str, int], list[str]] = {}
        for row in rows:
            if erased and hashes[row.email] in erased:
                report.rejected += 1
                problem(row.line, f"{row.email} was erased at the person's request; refused")
                continue
            current = existing.get(row.email)
            if current is None:
                new_rows.append(row)
                if row.series is not None and (row.status or "active") == "active":
                    to_enroll.setdefault((row.series, row.start_part), []).append(row.email)
                continue
            # Someone who left is left as they are: no new data, no enrollment.
            changes = _changes(current, row) if current.status == "active" else {}
            if row.status and row.status != "active" and current.status == "active":
                # An import may record that someone left; it never brings anyone back.
                changes["status"] = row.status
                audits.append(_audit(current.id, "active", row.status, actor, now))
            elif current.status != "active" and row.status in (None, "active"):
                problem(
                    row.line,
                    f"{row.email} is {current.status}; not re-subscribed (import never does)",
                    "warning",
                )
            enrolled_now = (
                row.series is not None
                and "status" not in changes
                and current.status == "active"
                and (current.id, row.series) not in enrolled
            )
            if enrolled_now and row.series is not None:
                to_enroll.setdefault((row.series, row.start_part), []).append(row.email)
            if changes:
                updates.append({"_id": current.id, "updated_at": now, **changes})
            if changes or enrolled_now:
                report.updated += 1
            else:
                report.unchanged += 1

        if new_rows:
            db_now = to_db(conn.dialect, now)
            conn.execute(
                untyped(subscribers).insert(),
                [
                    {
                        "email": row.email,
                        "name": row.name or "",
                        "status": row.status or "active",
                        "timezone": row.timezone,
                        "created_at": (
                            to_db(conn.dialect, row.subscribed_at) if row.subscribed_at else db_now
                        ),
                        "updated_at": db_now,
                        "source": actor,
                        "attributes": json.dumps(row.attributes),
                    }
                    for row in new_rows
                ],
            )
            new_emails = [row.email for row in new_rows]
            conn.execute(
                status_changes.insert().from_select(
                    ["subscriber_id", "new_status", "actor", "reason", "created_at"],
                    sa.select(
                        subscribers.c.id,
                        subscribers.c.status,
                        sa.literal(actor),
                        sa.literal(""),
                        sa.literal(now, type_=UTCDateTime),
                    ).where(subscribers.c.email.in_(new_emails)),
                )
            )
            report.imported += len(new_rows)
        _apply_updates(conn, updates)
        replan(conn, [u["_id"] for u in updates if "timezone" in u])
        for (series_slug, start_part), emails in to_enroll.items():
            conn.execute(
                enrollments.insert().from_select(
                    ["subscriber_id", "series", "enrolled_at", "start_part", "paused"],
                    sa.select(
                        subscribers.c.id,
                        sa.literal(series_slug),
                        sa.literal(now, type_=UTCDateTime),
                        sa.literal(start_part),
                        sa.false(),
                    ).where(subscribers.c.email.in_(emails)),
                )
            )
        if audits:
            conn.execute(status_changes.insert(), audits)


def _changes(current: Any, row: Row) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if row.name is not None and row.name != current.name:
        changes["name"] = row.name
    if row.timezone is not None and row.timezone != current.timezone:
        changes["timezone"] = row.timezone
    merged = {**(current.attributes or {}), **row.attributes}
    if merged != (current.attributes or {}):
        changes["attributes"] = merged
    return changes


def _apply_updates(conn: Connection, updates: list[dict[str, Any]]) -> None:
    # Group by the set of changed columns so each group is one executemany.
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for update in updates:
        groups.setdefault(tuple(sorted(update)), []).append(update)
    for columns, params in groups.items():
        values: dict[str, Any] = {c: sa.bindparam(c) for c in columns if c != "_id"}
        conn.execute(
            subscribers.update().where(subscribers.c.id == sa.bindparam("_id")).values(values),
            params,
        )


def _audit(
    subscriber_id: int, old: str | None, new: str, actor: str, now: datetime
) -> dict[str, Any]:
    return {
        "subscriber_id": subscriber_id,
        "series": None,
        "old_status": old,
        "new_status": new,
        "actor": actor,
        "reason": "",
        "created_at": now,
    }


def neutralise(cell: str) -> str:
    """Keep a spreadsheet from running a cell as a formula (CSV injection)."""
    return f"'{cell}" if cell.startswith(FORMULA_START) else cell


def export_csv(store: Store, out: TextIO, catalog: Catalog) -> int:
    """Every subscriber with status and per-series progress; returns the row count."""
    attribute_keys: set[str] = set()
    series_seen: set[str] = set(catalog.parts)
    for subscriber in iter_subscribers(store):
        attribute_keys.update(subscriber.attributes)
        series_seen.update(e.series for e in subscriber.enrollments)
    series_columns = sorted(series_seen)
    attributes = sorted(attribute_keys - set(KNOWN_COLUMNS) - set(EXPORT_ONLY))
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "email",
            "name",
            "status",
            "timezone",
            "subscribed_at",
            "source",
            *(f"{PROGRESS_PREFIX}{s}" for s in series_columns),
            *attributes,
        ]
    )
    count = 0
    for subscriber in iter_subscribers(store):
        progress = {
            e.series: progress_text(e, len(catalog.parts.get(e.series, ())) or None)
            for e in subscriber.enrollments
        }
        writer.writerow(
            neutralise(cell)
            for cell in _export_cells(subscriber, series_columns, attributes, progress)
        )
        count += 1
    return count


def _export_cells(
    subscriber: Any,
    series_columns: Iterable[str],
    attributes: Iterable[str],
    progress: dict[str, str],
) -> Iterator[str]:
    yield subscriber.email
    yield subscriber.name
    yield subscriber.status
    yield subscriber.timezone or ""
    yield subscriber.created_at.isoformat(timespec="seconds")
    yield subscriber.source
    for series in series_columns:
        yield progress.get(series, "")
    for key in attributes:
        yield str(subscriber.attributes.get(key, ""))
