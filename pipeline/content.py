"""Load ``series/<slug>/series.yml`` and its ``NN-<slug>.md`` articles into values.

Pure parsing and validation: every problem is collected with its file and line,
nothing is raised for bad content, so `series check` can show them all at once.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from frontmatter.default_handlers import YAMLHandler

from .config import (
    Address,
    Config,
    SendWindow,
    is_web_url,
    parse_send_window,
    parse_zone,
    sender_problem,
)
from .errors import Problem
from .headers import CONTROL, line_problem
from .language import language_problem
from .sources import ReadError, quote, read_text, unquote_hint
from .yamlfile import YamlProblem, load_mapping

# Articles are .md or .markdown files, in any letter case (03-harvest.MD).
ARTICLE_NAME = re.compile(r"(?P<number>\d+)-(?P<slug>[^/]+)\.(?:md|markdown)", re.IGNORECASE)
ARTICLE_SUFFIXES = (".md", ".markdown")
# Not read, but meant to be an article: numbered like one, or 03-harvest.md.txt.
LOOKS_LIKE_ARTICLE = re.compile(r"\d+-.|.+\.(?:md|markdown)\.", re.IGNORECASE)

SERIES_KEYS = (
    "title",
    "description",
    "cadence_days",
    "url",
    "send_window",
    "timezone",
    "from",
    "language",
    "paused",
)
ARTICLE_KEYS = (
    "title",
    "part",
    "slug",
    "subject",
    "preheader",
    "summary",
    "url",
    "published",
    "draft",
    "delay_days",
)
# Keys whose value is the text typed, even when YAML would read a number or a date.
SERIES_TEXT_KEYS = ("title", "description", "url", "from", "from.name", "from.email", "language")
ARTICLE_TEXT_KEYS = ("title", "slug", "subject", "preheader", "summary", "url")
DEFAULT_CADENCE_DAYS = 7
# The longest slug the delivery ledger can record (deliveries.article).
SLUG_LENGTH = 200
# The longest series slug (its folder's name) the database can record (enrollments.series).
SERIES_SLUG_LENGTH = 100
# A delay longer than this is a typo, and a timedelta cannot hold an unbounded one.
MAX_DAYS = 3650
# Planning adds delays and send-window days to a publish date; from this year on the
# sum could pass datetime's year 9999 and crash a run halfway through its sends.
LAST_YEAR = 9000


@dataclass(frozen=True)
class Article:
    series: str
    path: Path
    source: str  # workspace-relative path, for messages
    part: int
    title: str
    slug: str
    subject: str | None
    preheader: str
    summary: str
    url: str | None
    published: datetime | None
    draft: bool
    delay_days: float | None
    body: str
    body_line: int  # 1-based line of the body's first line in the file

    def is_published(self, now: datetime) -> bool:
        """Out on the web and sendable: not a draft and its publish time has come."""
        return not self.draft and self.published is not None and self.published <= now


@dataclass(frozen=True)
class Series:
    slug: str
    path: Path
    source: str
    title: str
    description: str
    cadence_days: float
    url: str | None
    timezone: ZoneInfo
    send_window: SendWindow
    sender: Address
    language: str | None = None  # BCP 47; None: the workspace's `language`
    articles: tuple[Article, ...] = field(default=())
    # `paused: true` in series.yml: every reader is held where they are.
    paused: bool = False

    @property
    def total(self) -> int:
        return len(self.articles)

    def part(self, number: int) -> Article | None:
        for article in self.articles:
            if article.part == number:
                return article
        return None

    def article(self, slug: str) -> Article | None:
        """The article with this identity (its slug), wherever it now stands."""
        return next((a for a in self.articles if a.slug == slug), None)

    def find(self, ref: str) -> Article | None:
        """A part by number or slug, as editors type it on the command line."""
        if ref.isdigit():
            return self.part(int(ref))
        return self.article(ref)

    def delay(self, article: Article) -> timedelta:
        days = self.cadence_days if article.delay_days is None else article.delay_days
        return timedelta(days=days)

    def following(self, article: Article) -> Article | None:
        index = self.articles.index(article)
        return self.articles[index + 1] if index + 1 < len(self.articles) else None


def load_series(config: Config) -> tuple[list[Series], list[Problem]]:
    """Every series of the workspace, with every problem found on the way."""
    problems: list[Problem] = []
    found: list[Series] = []
    if not config.series_dir.is_dir():
        problems.append(Problem("series", None, "no series/ directory in the workspace"))
        return found, problems
    for directory in sorted(p for p in config.series_dir.iterdir() if p.is_dir()):
        loaded = _load_one(config, directory, problems)
        if loaded is not None:
            found.append(loaded)
    if not found and not problems:
        problems.append(
            Problem("series", None, "no series found (expected series/<slug>/series.yml)")
        )
    return found, problems


def _load_one(config: Config, directory: Path, problems: list[Problem]) -> Series | None:
    unfit = _unfit_series_slug(directory.name)
    if unfit is not None:
        # Nothing of such a series can be stored, sent or even linked (its slug names
        # the emails' campaign): it is not read further.
        problems.append(
            Problem(
                config.rel(directory),
                None,
                f"the folder's name {unfit}; it is the series' name in the database "
                "(rename the folder before anyone is enrolled)",
            )
        )
        return None
    manifest = directory / "series.yml"
    source = config.rel(manifest)
    articles_found = _article_files(config, directory, problems)
    if not manifest.is_file():
        problems.append(Problem(source, None, "missing series.yml (needs at least 'title')"))
        return None
    try:
        text = read_text(manifest, source, what="series.yml")
    except ReadError as exc:
        problems.append(exc.problem)
        return None
    data, lines = _parse_yaml(text, source, 0, problems, SERIES_TEXT_KEYS)
    if data is None:
        return None
    report = _Reporter(source, lines, problems)
    report.unknown_keys(data, SERIES_KEYS)
    title = report.line(data, "title", required=True)
    cadence = report.number(data, "cadence_days")
    timezone = config.timezone
    if "timezone" in data:
        try:
            timezone = parse_zone(str(data["timezone"]), lambda m: ValueError(m))
        except ValueError as exc:
            report.add("timezone", str(exc))
    window = config.send_window
    try:
        window = parse_send_window(data.get("send_window"), "send_window", _raise_at) or window
    except _At as exc:
        report.add(exc.key, exc.message)
    sender = config.sender
    if "from" in data:
        sender = _series_sender(data["from"], config.sender, report)
    url = report.url(data, "url")
    language = None
    if "language" in data:
        problem = language_problem(data["language"])
        if problem is None:
            language = str(data["language"])
        else:
            report.add("language", f"'language' {problem}")
    paused = report.boolean(data, "paused")
    series = Series(
        slug=directory.name,
        path=directory,
        source=config.rel(directory),
        title=title or directory.name,
        description=report.string(data, "description") or "",
        cadence_days=DEFAULT_CADENCE_DAYS if cadence is None else cadence,
        url=url,
        timezone=timezone,
        send_window=window,
        sender=sender,
        language=language,
        paused=bool(paused),
    )
    articles = []
    for path in articles_found:
        article = _load_article(config, series, path, problems)
        if article is not None:
            articles.append(article)
    _check_parts(articles, problems)
    _check_slugs(articles, problems)
    articles.sort(key=lambda a: (a.part, a.source))
    if not articles_found:
        problems.append(Problem(series.source, None, "series has no articles (NN-<slug>.md)"))
    return Series(**{**series.__dict__, "articles": tuple(articles)})


def _article_files(config: Config, directory: Path, problems: list[Problem]) -> list[Path]:
    """The files of a series folder that are read as articles: ``.md`` and ``.markdown``,
    in any letter case. Other files that look like articles get a warning: a part that
    is silently left out makes the part before it "the last part" in readers' emails."""
    found = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or path.name.endswith("~"):
            continue  # hidden files and editors' backups
        if path.suffix.lower() in ARTICLE_SUFFIXES and path.is_file():
            found.append(path)
        elif path.suffix.lower() in ARTICLE_SUFFIXES:
            problems.append(
                Problem(config.rel(path), None, "not read: a folder, not an article", "warning")
            )
        elif path.is_file() and LOOKS_LIKE_ARTICLE.match(path.name):
            rename = path.name.split(".")[0] + ".md"
            problems.append(
                Problem(
                    config.rel(path),
                    None,
                    f"not read: articles are .md or .markdown files (rename it to {rename} "
                    "if it is one)",
                    "warning",
                )
            )
    return found


def _series_sender(value: Any, default: Address, report: _Reporter) -> Address:
    """The series' own ``from``: checked as the workspace's is (a valid address series
    can send from; a name on one line), since it goes into every From header."""
    if isinstance(value, str):
        email, name = value, default.name
    elif isinstance(value, dict) and set(value) <= {"name", "email"} and "email" in value:
        email, name = str(value["email"]), str(value.get("name", default.name))
    else:
        report.add("from", "'from' must be an address or { name, email }")
        return default
    problem = sender_problem(email)
    if problem is not None:
        report.add("from", f"'from' email {problem}")
        return default
    if (problem := line_problem(name)) is not None:
        report.add("from", f"'from' name {problem}")
        return default
    return Address(email.strip(), name)


class _At(Exception):
    def __init__(self, key: str, message: str) -> None:
        self.key, self.message = key, message


def _raise_at(key: str, message: str) -> Exception:
    return _At(key.split(".")[0], message)


def _load_article(
    config: Config, series: Series, path: Path, problems: list[Problem]
) -> Article | None:
    source = config.rel(path)
    name = ARTICLE_NAME.fullmatch(path.name)
    if not name:
        problems.append(
            Problem(
                source, None, "not an article file name (expected NN-<slug>.md); ignored", "warning"
            )
        )
        return None
    try:
        text = read_text(path, source, what="an article")
    except ReadError as exc:
        problems.append(exc.problem)
        return None
    handler = YAMLHandler()
    if not handler.detect(text):
        problems.append(
            Problem(source, 1, "missing front matter: start the file with a '---' line")
        )
        return None
    try:
        front, body = handler.split(text)
    except ValueError:  # python-frontmatter found the opening '---' and no closing one
        problems.append(
            Problem(
                source, 1, "the front matter is never closed: add a '---' line after its last key"
            )
        )
        return None
    front_offset = text[: text.index(front)].count("\n")
    data, lines = _parse_yaml(front, source, front_offset, problems, ARTICLE_TEXT_KEYS)
    if data is None:
        return None
    body_start = len(text) - len(body)
    body_line = text[:body_start].count("\n") + 1
    report = _Reporter(source, lines, problems, default_line=front_offset)
    report.unknown_keys(data, ARTICLE_KEYS)
    title = report.line(data, "title", required=True)
    part = report.integer(data, "part", required=True)
    if part is not None and part < 1:
        report.add("part", f"'part' must be 1 or more, got {part}")
        part = None
    if part is not None and int(name.group("number")) != part:
        report.add(
            "part",
            f"part {part} is in a file numbered {name.group('number')}; "
            "rename the file or fix 'part'",
            "warning",
        )
    delay = report.number(data, "delay_days")
    draft = report.boolean(data, "draft")
    published = report.moment(data, "published", series.timezone)
    if not body.strip():
        problems.append(Problem(source, body_line, "the article has no body"))
    if title is None or part is None:
        return None
    slug = report.string(data, "slug") or name.group("slug")
    return Article(
        series=series.slug,
        path=path,
        source=source,
        part=part,
        title=title,
        slug=slug,
        subject=report.line(data, "subject"),
        preheader=report.line(data, "preheader") or "",
        summary=report.line(data, "summary") or "",
        url=report.url(data, "url"),
        published=published,
        draft=bool(draft),
        delay_days=delay,
        body=body,
        body_line=body_line,
    )


def _check_parts(articles: list[Article], problems: list[Problem]) -> None:
    seen: dict[int, Article] = {}
    for article in sorted(articles, key=lambda a: a.source):
        first = seen.get(article.part)
        if first is not None:
            problems.append(
                Problem(
                    article.source,
                    _key_line(article.path, "part"),
                    f"part {article.part} is also {first.source}; each part number must be unique",
                )
            )
        else:
            seen[article.part] = article


def _check_slugs(articles: list[Article], problems: list[Problem]) -> None:
    """A slug is an article's identity in the delivery ledger: two articles sharing one
    would count as one article received, so each slug must be unique in its series."""
    seen: dict[str, Article] = {}
    for article in sorted(articles, key=lambda a: a.source):
        line = _key_line(article.path, "slug") or 1
        odd = _odd_character(article.slug)
        if odd is not None:
            problems.append(
                Problem(
                    article.source,
                    line,
                    f"slug holds {odd}; a slug is the article's name in the delivery ledger "
                    "(set 'slug:' to letters, digits and dashes)",
                )
            )
        if len(article.slug) > SLUG_LENGTH:
            problems.append(
                Problem(
                    article.source,
                    line,
                    f"slug is {len(article.slug)} characters long; at most {SLUG_LENGTH}",
                )
            )
        first = seen.get(article.slug)
        if first is not None:
            problems.append(
                Problem(
                    article.source,
                    line,
                    f"slug '{article.slug}' is also {first.source}'s; each article needs its "
                    "own slug (set 'slug:' to tell them apart)",
                )
            )
        else:
            seen[article.slug] = article


def _odd_character(slug: str) -> str | None:
    """What makes ``slug`` unfit for the ledger, in words: a control character (NUL
    cuts it short in SQLite's JSON functions, and none can be typed or shown), or a
    byte of a file name that is not UTF-8 (Python keeps it as a lone surrogate, which
    no database text can hold). None when it is fine."""
    for char in slug:
        if "\ud800" <= char <= "\udfff":
            return "a byte that is not UTF-8 (from the file name)"
        if CONTROL.match(char):
            return f"a control character (U+{ord(char):04X})"
    return None


def _unfit_series_slug(slug: str) -> str | None:
    """What makes a series' folder name unfit to be its slug, in words, or None: what
    `_odd_character` finds, or more characters than the database keeps."""
    odd = _odd_character(slug)
    if odd is not None:
        return f"holds {odd}"
    if len(slug) > SERIES_SLUG_LENGTH:
        return f"is {len(slug)} characters long, at most {SERIES_SLUG_LENGTH}"
    return None


def _key_line(path: Path, key: str) -> int | None:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith(f"{key}:"):
            return number
    return None


def _parse_yaml(
    text: str, source: str, offset: int, problems: list[Problem], text_keys: tuple[str, ...]
) -> tuple[dict[str, Any] | None, dict[str, int]]:
    """Parse a YAML mapping (see yamlfile.load_mapping), returning it with the 1-based file
    line of each key; ``offset`` is the number of file lines before ``text``."""
    try:
        loaded = load_mapping(text, text_keys=text_keys)
    except YamlProblem as exc:
        line = None if exc.line is None else offset + exc.line + 1
        problems.append(Problem(source, line, exc.message))
        return None, {}
    for line, message in loaded.warnings:
        problems.append(Problem(source, offset + line + 1, message, "warning"))
    return loaded.data, {key: offset + line + 1 for key, line in loaded.lines.items()}


class _Reporter:
    """Typed access to a parsed mapping; problems are recorded at the key's line."""

    def __init__(
        self, source: str, lines: dict[str, int], problems: list[Problem], default_line: int = 0
    ) -> None:
        self.source = source
        self.lines = lines
        self.problems = problems
        self.default_line = default_line + 1

    def add(self, key: str, message: str, severity: str = "error") -> None:
        line = self.lines.get(key, self.default_line)
        self.problems.append(Problem(self.source, line, message, severity))  # type: ignore[arg-type]

    def unknown_keys(self, data: Mapping[str, Any], known: tuple[str, ...]) -> None:
        for key in data:
            if key not in known:
                hint = difflib.get_close_matches(str(key), known, n=1)
                suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
                self.add(str(key), f"unknown key '{key}'{suggestion}")

    def _missing(self, data: Mapping[str, Any], key: str, required: bool) -> bool:
        if data.get(key) is None:
            if required:
                self.add(key, f"missing required key '{key}'")
            return True
        return False

    def string(self, data: Mapping[str, Any], key: str, required: bool = False) -> str | None:
        if self._missing(data, key, required):
            return None
        value = data[key]
        if isinstance(value, bool | dict | list):
            self.add(key, f"'{key}' must be text, got {_describe(value)}")
            return None
        text = str(value).strip()
        if not text:
            self.add(key, f"'{key}' must not be empty")
            return None
        return text

    def line(self, data: Mapping[str, Any], key: str, required: bool = False) -> str | None:
        """Text for a one-line field (a subject, or text a subject is made from): no
        line breaks or other control characters, not even inside an encoded-word."""
        text = self.string(data, key, required)
        if text is not None and (problem := line_problem(text)) is not None:
            self.add(key, f"'{key}' {problem}")
            return None
        return text

    def integer(self, data: Mapping[str, Any], key: str, required: bool = False) -> int | None:
        if self._missing(data, key, required):
            return None
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(
                key,
                f"'{key}' must be a whole number, got {_describe(value)}"
                + unquote_hint(value, int, key),
            )
            return None
        return value

    def number(self, data: Mapping[str, Any], key: str) -> float | None:
        if self._missing(data, key, False):
            return None
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            self.add(
                key,
                f"'{key}' must be a number of days (0 or more), got {_describe(value)}"
                + unquote_hint(value, float, key),
            )
            return None
        if not math.isfinite(value) or value > MAX_DAYS:
            self.add(key, f"'{key}' must be at most {MAX_DAYS} days, got {_describe(value)}")
            return None
        return float(value)

    def boolean(self, data: Mapping[str, Any], key: str) -> bool | None:
        if self._missing(data, key, False):
            return None
        value = data[key]
        if not isinstance(value, bool):
            self.add(
                key,
                f"'{key}' must be true or false, got {_describe(value)}"
                + unquote_hint(value, bool, key),
            )
            return None
        return value

    def url(self, data: Mapping[str, Any], key: str) -> str | None:
        value = self.string(data, key)
        if value is not None and not is_web_url(value):
            self.add(key, f"'{key}' must be an absolute http(s) URL, got {quote(value)}")
            return None
        return value

    def moment(self, data: Mapping[str, Any], key: str, zone: ZoneInfo) -> datetime | None:
        """A date (midnight, local) or datetime; naive values are in the series' timezone."""
        if self._missing(data, key, False):
            return None
        value = data[key]
        if isinstance(value, str):
            shaped = _DATE_SHAPE.match(value.strip())
            try:
                if shaped:
                    date(*(int(part) for part in shaped.groups()))
            except ValueError as exc:
                self.add(key, f"'{key}' is not a date in the calendar: {quote(value)} ({exc})")
                return None
            try:
                value = datetime.fromisoformat(value.strip())
            except ValueError:
                self.add(
                    key,
                    f"'{key}' is not a date: {quote(value)} (use YYYY-MM-DD or YYYY-MM-DD HH:MM)",
                )
                return None
        if isinstance(value, date) and value.year >= LAST_YEAR:
            self.add(
                key,
                f"'{key}' is {value.isoformat()}, too far ahead to schedule: to hold a part "
                f"back, leave '{key}' out or set draft: true",
            )
            return None
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=zone)
        if isinstance(value, date):
            return datetime(value.year, value.month, value.day, tzinfo=zone)
        self.add(key, f"'{key}' is not a date: {_describe(value)} (use YYYY-MM-DD)")
        return None


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return quote(value)


_DATE_SHAPE = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})")


def iter_articles(series_list: list[Series]) -> Iterator[tuple[Series, Article]]:
    for series in series_list:
        for article in series.articles:
            yield series, article
