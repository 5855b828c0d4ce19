"""CSV in and out: `series subscribers import` and `series subscribers export`.

Import validates each row on its own (a bad row is reported as FILE:LINE and
skipped), then writes good rows one transaction per batch. It never re-subscribes
anyone who unsubscribed, bounced or complained, and never resets progress.
"""

from __future__ import annotations

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

from .csvfile import as_one_line, neutralise, open_csv
from .csvrows import (
    EXPORT_ONLY,
    KNOWN_COLUMNS,
    PROGRESS_PREFIX,
    Row,
    column_size,
    names_email,
    parse_row,
    read_columns,
)
from .errors import Problem, Severity
from .store import Store
from .store.schema import (
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
    iter_subscribers,
    progress_text,
    replan,
)

BATCH_SIZE = 2000
SOURCE_LENGTH = column_size(subscribers.c.source)
NO_SERIES_HINT = "give a series column or --series S"
COUNTS = ("imported", "updated", "unchanged", "rejected", "unenrolled")


@dataclass
class ImportReport:
    """What an import did: the counts, and each problem with the line it is about."""

    imported: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    problems: list[Problem] = field(default_factory=list)
    # Active people this import leaves enrolled in no series: nothing will be sent to them.
    unenrolled: int = 0

    def summary(self) -> str:
        text = (
            f"imported {self.imported}, updated {self.updated}, "
            f"unchanged {self.unchanged}, rejected {self.rejected}"
        )
        if self.unenrolled:
            text += f"; {self.unenrolled} in no series, who will be sent nothing ({NO_SERIES_HINT})"
        return text

    def add(self, other: ImportReport) -> None:
        """Count in what writing a batch did, once its transaction has committed."""
        for count in COUNTS:
            setattr(self, count, getattr(self, count) + getattr(other, count))
        self.problems += other.problems


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
    """Import a subscriber CSV; ``display`` is the file name used in messages.

    The file is read as ``csvfile.open_csv`` says (RFC 4180; UTF-8, or UTF-16 with a
    byte-order mark; comma, semicolon or tab). Header names are matched as
    ``csvrows.COLUMN_NAMES`` says; a file with a ``source`` column is taken for an export and
    its cells are restored (``csvfile.restore``). Raises CsvFileError or
    SubscriberError when the file as a whole cannot be imported (nothing is written
    then); every problem with one row is a Problem naming its line, and the row is
    skipped, whatever in the row a parser, the database or a size limit refuses."""
    name = display or str(path)
    report = ImportReport()

    def problem(line: int, message: str, severity: Severity = "error") -> None:
        found = _problem(name, line, message, severity)
        report.problems.append(found)
        if on_problem:
            on_problem(found)

    def add(batch: list[Row]) -> None:
        written = _write_rows(store, batch, name=name, now=now, actor=actor)
        report.add(written)
        for found in written.problems:
            if on_problem:
                on_problem(found)

    if series is not None and (error := catalog.check_series(series)):
        raise SubscriberError(error)
    actor = f"import:{path.name}"[:SOURCE_LENGTH]
    with open_csv(path, name, names_email) as table:
        columns = read_columns(name, table.header, table.separator)
        seen: dict[str, int] = {}
        batch: list[Row] = []
        for record in table:
            line = record.line
            try:
                if record.error is not None:
                    raise ValueError(record.error)
                row = parse_row(record.cells, line, columns, catalog, series, zone)
            except ValueError as exc:
                report.rejected += 1
                problem(line, str(exc))
                continue
            if row is None:
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
                add(batch)
                batch = []
        if batch:
            add(batch)
    return report


def _problem(name: str, line: int, message: str, severity: Severity = "error") -> Problem:
    """A problem with one row, its message made one line whatever a parser put in it."""
    return Problem(name, line, as_one_line(message), severity)


def _write_rows(
    store: Store, rows: list[Row], *, name: str, now: datetime, actor: str
) -> ImportReport:
    """Write rows in one transaction. When the database refuses it (a value it cannot
    store), the halves are tried on their own, down to the one row it refuses: that
    row is reported with the database's reason, and every other row is written."""
    try:
        return _write_batch(store, rows, name=name, now=now, actor=actor)
    except (sa.exc.DataError, sa.exc.IntegrityError) as exc:
        if len(rows) == 1:
            reason = (str(exc.orig or exc).strip().splitlines() or ["no reason given"])[0]
            refused = _problem(name, rows[0].line, f"the database refused the row: {reason}")
            return ImportReport(rejected=1, problems=[refused])
        half = len(rows) // 2
        written = _write_rows(store, rows[:half], name=name, now=now, actor=actor)
        written.add(_write_rows(store, rows[half:], name=name, now=now, actor=actor))
        return written


def _write_batch(
    store: Store, rows: list[Row], *, name: str, now: datetime, actor: str
) -> ImportReport:
    tally = ImportReport()

    def problem(line: int, message: str, severity: Severity = "error") -> None:
        tally.problems.append(_problem(name, line, message, severity))

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
        in_a_series = {subscriber_id for subscriber_id, _ in enrolled}
        for row in rows:
            if erased and hashes[row.email] in erased:
                tally.rejected += 1
                problem(row.line, f"{row.email} was erased at the person's request; refused")
                continue
            current = existing.get(row.email)
            # Active after this import, yet in no series: nothing will ever be sent.
            if (
                row.series is None
                and (row.status or "active") == "active"
                and (
                    current is None
                    or (current.status == "active" and current.id not in in_a_series)
                )
            ):
                tally.unenrolled += 1
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
                tally.updated += 1
            else:
                tally.unchanged += 1

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
            tally.imported += len(new_rows)
        changed = _apply_updates(conn, updates)
        audits = [a for a in audits if a["subscriber_id"] in changed]
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
    return tally


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


def _apply_updates(conn: Connection, updates: list[dict[str, Any]]) -> set[int]:
    """Write each update (``_id``, ``updated_at`` and the changed columns) of a
    subscriber read as active, where they still are: one who left since the import
    read them (bounced by a send's answer, unsubscribed by a click: PostgreSQL lets
    that commit between the read and this write) is left as they are, as the import
    leaves anyone who left. Returns the ids whose status this import changed (their
    audit rows are written)."""
    still_active = subscribers.c.status == "active"
    statuses: dict[tuple[str, Any], list[int]] = {}  # (new status, updated_at) -> ids
    # Group by the set of changed columns so each group is one executemany.
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for update in updates:
        data = {k: v for k, v in update.items() if k != "status"}
        if "status" in update:
            statuses.setdefault((update["status"], update["updated_at"]), []).append(update["_id"])
        groups.setdefault(tuple(sorted(data)), []).append(data)
    for columns, params in groups.items():
        values: dict[str, Any] = {c: sa.bindparam(c) for c in columns if c != "_id"}
        conn.execute(
            subscribers.update()
            .where(subscribers.c.id == sa.bindparam("_id"), still_active)
            .values(values),
            params,
        )
    changed: set[int] = set()
    for (status, now), ids in statuses.items():  # ids: at most a batch's (BATCH_SIZE)
        changed.update(
            conn.scalars(
                subscribers.update()
                .where(subscribers.c.id.in_(ids), still_active)
                .values(status=status, updated_at=now)
                .returning(subscribers.c.id)
            )
        )
    return changed


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


def export_csv(store: Store, out: TextIO, catalog: Catalog) -> int:
    """Every subscriber with status and per-series progress; returns the row count."""
    attribute_keys: set[str] = set()
    series_seen: set[str] = set(catalog.parts)
    for subscriber in iter_subscribers(store):
        attribute_keys.update(subscriber.attributes)
        series_seen.update(e.series for e in subscriber.enrollments)
    series_columns = sorted(series_seen)
    attributes = sorted(attribute_keys - set(KNOWN_COLUMNS) - set(EXPORT_ONLY))
    # CRLF ends records, as RFC 4180 says; with it the writer also quotes a cell that
    # holds a lone CR, which it writes bare when records end with LF alone.
    writer = csv.writer(out, lineterminator="\r\n")
    header = [
        "email",
        "name",
        "status",
        "timezone",
        "subscribed_at",
        "source",
        *(f"{PROGRESS_PREFIX}{s}" for s in series_columns),
        *attributes,
    ]
    writer.writerow(neutralise(cell) for cell in header)
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
