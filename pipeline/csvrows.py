"""What a subscriber CSV's header row and rows mean: pure parsing, no database.

``read_columns`` maps header names to columns; ``parse_row`` turns one record into a
``Row`` or raises ValueError with what is wrong with it, in one line. Cells are
checked against the sizes of the columns they are stored in (store/schema.py)
before any parser sees them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from .csvfile import CsvFileError, header_cells, restore
from .headers import clean_name, control_character
from .personal import FIRST_NAME_ATTRIBUTE as FIRST_NAME
from .sources import quote
from .store.schema import STATUSES, enrollments, subscribers
from .subscribers import Catalog, check_timezone, sendable_email


def column_size(column: sa.Column[Any]) -> int:
    """The size of a String column in the schema."""
    length = getattr(column.type, "length", None)
    assert isinstance(length, int), column
    return length


KNOWN_COLUMNS = ("email", "name", "timezone", "series", "start_part", "subscribed_at", "status")
# Written by export and recognised on import, so an export can be imported again.
EXPORT_ONLY = ("source",)
PROGRESS_PREFIX = "progress:"
# Header names, compared in lower case without spaces, hyphens and underscores, and
# the column each one names: "E-mail Address" is the email column, "Start Part" is
# start_part. Only spellings that cannot mean anything else ("mail" could).
COLUMN_NAMES = {
    **{name.replace("_", ""): name for name in (*KNOWN_COLUMNS, *EXPORT_ONLY)},
    "emailaddress": "email",
    # The greeting's first name (kept as the first_name attribute, personal.py), as
    # Excel, Mailchimp ("First Name", merge tag FNAME) and Google Contacts ("Given
    # Name") export it.
    "firstname": FIRST_NAME,
    "fname": FIRST_NAME,
    "givenname": FIRST_NAME,
}
_SPACING = re.compile(r"[\s_-]+")
# The most characters a cell can hold: the column's size in the database (schema.py)
# for text stored as is; enough for a part number and an ISO 8601 time; and a cap on
# attributes, which are kept as JSON.
MAX_ATTRIBUTE = 10_000
LIMITS = {
    "email": column_size(subscribers.c.email),
    "name": column_size(subscribers.c.name),
    FIRST_NAME: column_size(subscribers.c.name),  # a part of a name: as long as names
    "timezone": column_size(subscribers.c.timezone),
    "series": column_size(enrollments.c.series),
    "status": column_size(subscribers.c.status),
    "start_part": 9,
    "subscribed_at": 64,
}


@dataclass(frozen=True)
class Row:
    """One subscriber as a row of the file gives them, checked and normalised."""

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


@dataclass(frozen=True)
class Columns:
    """What each column of a file's header row holds."""

    header: tuple[str, ...]  # the header cells as written (stripped)
    fields: dict[str, int]  # known column → its index
    attributes: tuple[tuple[int, str], ...]  # (index, attribute name)
    separator: str
    exported: bool  # written by `series subscribers export`: cells to restore

    @property
    def width(self) -> int:
        return len(self.header)


def canonical(header: str) -> str:
    """A header name as COLUMN_NAMES knows it: lower case, no spaces, hyphens, underscores."""
    return _SPACING.sub("", header.lower())


def names_email(header: list[str]) -> bool:
    """Whether these header cells name an email column (csvfile.open_csv's ``fits``)."""
    return any(COLUMN_NAMES.get(canonical(cell.strip())) == "email" for cell in header)


def read_columns(name: str, cells: list[str], separator: str) -> Columns:
    """What the header row's cells name; CsvFileError if there is no email column,
    two columns name the same thing, or a name holds a control character."""
    header = [cell.strip() for cell in cells]
    exported = any(canonical(cell) == "source" for cell in header)
    if exported:
        header = [restore(cell) for cell in header]
    fields: dict[str, int] = {}
    attributes: dict[str, int] = {}
    for index, cell in enumerate(header):
        if not cell or cell.startswith(PROGRESS_PREFIX):
            continue
        if found := control_character(cell):
            raise CsvFileError(f"{name}:1: column {index + 1}, {quote(cell)}, has {found}")
        if exported:
            # Export writes the columns' own names; any other header is an attribute,
            # even one ("Name") that an older version stored as an attribute.
            column = cell if cell in COLUMN_NAMES.values() else None
        else:
            column = COLUMN_NAMES.get(canonical(cell))
        named = fields if column else attributes
        key = column or cell
        if key in named:
            first = named[key]
            what = f"the {column} column" if column else "the same attribute"
            raise CsvFileError(
                f"{name}:1: columns {first + 1} and {index + 1} ({quote(header[first])} and "
                f"{quote(cell)}) both name {what}; keep one"
            )
        named[key] = index
    if "email" not in fields:
        raise CsvFileError(
            f"{name}:1: the header row has no email column, only {header_cells(header)} "
            "(call the addresses' column 'email', 'E-mail' or 'Email Address')"
        )
    return Columns(
        header=tuple(header),
        fields=fields,
        attributes=tuple((index, key) for key, index in attributes.items()),
        separator=separator,
        exported=exported,
    )


def parse_row(
    cells: list[str],
    line: int,
    columns: Columns,
    catalog: Catalog,
    default_series: str | None,
    zone: ZoneInfo,
) -> Row | None:
    """One record as a Row, or None for a row with no text at all. ValueError says
    what is wrong with it, in one line."""
    if columns.exported:
        cells = [restore(cell) for cell in cells]
    if len(cells) > columns.width and any(cell.strip() for cell in cells[columns.width :]):
        separator = {",": "comma", ";": "semicolon", "\t": "tab"}[columns.separator]
        raise ValueError(
            f"{len(cells)} cells, but the header row has {columns.width} columns "
            f"(a cell with a {separator} in it must be quoted)"
        )

    def cell(key: str) -> str:
        index = columns.fields.get(key)
        if index is None or index >= len(cells):
            return ""
        value = cells[index].strip()
        if len(value) > LIMITS[key] and key not in ("name", FIRST_NAME):
            raise ValueError(_too_long(columns.header[index], len(value), LIMITS[key]))
        return value

    raw_email = cell("email")
    if not raw_email:
        if not "".join(cells).strip():
            return None
        raise ValueError("no email address")
    email = sendable_email(raw_email)
    timezone = cell("timezone") or None
    if timezone:
        check_timezone(timezone)
    series = cell("series") or default_series
    start_text = cell("start_part")
    start_part = 1
    if start_text:
        if not start_text.isascii() or not start_text.isdigit() or int(start_text) < 1:
            raise ValueError(f"start_part must be a part number, got {quote(start_text)}")
        start_part = int(start_text)
        if series is None:
            raise ValueError("start_part is given but no series")
    if series is not None:
        error = catalog.check_series(series) or catalog.check_part(series, start_part)
        if error:
            raise ValueError(error)
    subscribed_at = _moment(cell("subscribed_at"), zone)
    status = cell("status") or None
    if status is not None and status not in STATUSES:
        raise ValueError(f"unknown status {quote(status)} (one of: {', '.join(STATUSES)})")
    notes: list[str] = []
    attributes: dict[str, str] = {}
    for index, key in columns.attributes:
        value = cells[index].strip() if index < len(cells) else ""
        if not value:
            continue
        if len(value) > MAX_ATTRIBUTE:
            raise ValueError(_too_long(key, len(value), MAX_ATTRIBUTE))
        if "\x00" in value:
            # Neither PostgreSQL's text nor its JSON can hold U+0000.
            value = value.replace("\x00", "").strip()
            notes.append(f"the {quote(key)} cell had NUL characters (U+0000); stored without them")
            if not value:
                continue
        attributes[key] = value
    name = _clean_name(cell("name"), "name", columns, notes)
    first_name = _clean_name(cell(FIRST_NAME), "first name", columns, notes)
    if first_name is not None:
        attributes[FIRST_NAME] = first_name
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
        notes=tuple(notes),
    )


def _clean_name(typed: str, what: str, columns: Columns, notes: list[str]) -> str | None:
    """A name or first name cell (stripped) as stored: ``clean_name``'d (control
    characters such as line breaks become spaces, runs of spaces one), or None when
    nothing is left (an empty cell leaves what is stored unchanged). Appends a note
    to ``notes`` when the stored text differs from the cell; ValueError when it is
    longer than the name column holds."""
    name = clean_name(typed) or None
    if name is not None and len(name) > LIMITS["name"]:
        key = "name" if what == "name" else FIRST_NAME
        header = columns.header[columns.fields[key]]
        raise ValueError(_too_long(header, len(name), LIMITS["name"]))
    if name != (typed or None):
        found = control_character(typed)
        had = found if found is not None else "runs of more than one space"
        notes.append(f"the {what} had {had}; stored as {name or ''!r}")
    return name


def _moment(text: str, zone: ZoneInfo) -> datetime | None:
    """A subscribed_at cell as an aware time (a date or a time without an offset is
    in ``zone``), or None when empty; ValueError when it is not an ISO 8601 time."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"subscribed_at is not a date: {quote(text)} (use YYYY-MM-DD)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(
            f"subscribed_at is out of range: {quote(text)} (a time in the years 1 to 9999)"
        ) from None


def _too_long(column: str, length: int, limit: int) -> str:
    return f"the {quote(column)} cell is {length:,} characters long (at most {limit:,})"
