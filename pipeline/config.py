"""Find the workspace and validate its configuration into one frozen Config.

The configuration lives in ``series.toml`` or under ``[tool.series]`` in the
workspace's ``pyproject.toml`` (same keys). Every problem names the file and,
where it can be found, the line of the offending key.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigError, Problem
from .headers import format_address, line_problem, smtputf8_problem

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
UTM_KEYS = ("source", "medium", "campaign", "term", "content")
UNSUBSCRIBE_MODES = ("self-hosted", "provider")
# Providers with no unsubscribe handling of their own for series' emails.
SELF_HOSTED_ONLY = ("outbox", "resend")


@dataclass(frozen=True)
class Address:
    email: str
    name: str = ""

    def formatted(self) -> str:
        """The mailbox as a header carries it (see headers.format_address): ASCII, the
        name one quoted or encoded phrase. Raises MessageBuildError when the address
        cannot be sent."""
        return format_address(self.email, self.name)


@dataclass(frozen=True)
class SendWindow:
    """When mail may go out, in local time: weekdays (0 = Monday) and [start, end)."""

    days: frozenset[int]
    start: time
    end: time


ALWAYS = SendWindow(frozenset(range(7)), time(0, 0), time(23, 59, 59))


@dataclass(frozen=True)
class Utm:
    enabled: bool
    # (utm_source, value template) pairs; templates may use {series}, {slug}, {part}.
    params: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Config:
    root: Path
    source: Path
    site_url: str
    site_name: str
    sender: Address
    reply_to: str | None
    timezone: ZoneInfo
    send_window: SendWindow
    utm: Utm
    footer: tuple[str, ...]
    postal_address: str
    raw_html: bool
    default_name: str
    provider: str = "outbox"
    rate_limit: float | None = None  # messages per second, across batches
    workers: int = 1  # sending processes for large runs
    postmark_stream: str = "broadcast"
    postmark_batch_size: int = 500
    unsubscribe_url: str = ""  # with {token}; default: {site_url}/u/{token} (series serve)
    # "self-hosted": links to `series serve` (unsubscribe_url); "provider": the
    # provider's own unsubscribe link and headers.
    unsubscribe: str = "self-hosted"
    resend_batch_size: int = 100
    sendgrid_region: str = "global"  # or "eu"
    sendgrid_batch_size: int = 1000
    mailgun_domain: str = ""
    mailgun_region: str = "us"  # or "eu"
    mailgun_batch_size: int = 1000

    @property
    def series_dir(self) -> Path:
        return self.root / "series"

    @property
    def templates_dir(self) -> Path:
        return self.root / "templates"

    @property
    def subscribers_dir(self) -> Path:
        return self.root / "subscribers"

    @property
    def cache_dir(self) -> Path:
        return self.root / ".series-cache"

    def rel(self, path: Path) -> str:
        """A path as editors see it: relative to the workspace when inside it."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)


def find_workspace(workspace: str | Path | None) -> Path:
    root = Path(workspace) if workspace else Path.cwd()
    if not root.is_dir():
        raise ConfigError(Problem(str(root), None, "workspace is not a directory"))
    return root.resolve()


def load_config(root: Path) -> Config:
    """Read and validate the workspace configuration, raising ConfigError on the first problem."""
    series_toml = root / "series.toml"
    pyproject = root / "pyproject.toml"
    data: dict[str, Any] | None = None
    source = series_toml
    prefix = ""
    if series_toml.is_file():
        data = _read_toml(series_toml)
    if pyproject.is_file():
        tool = _read_toml(pyproject).get("tool", {}).get("series")
        if tool is not None and data is not None:
            raise ConfigError(
                Problem(
                    "series.toml",
                    None,
                    "both series.toml and [tool.series] in pyproject.toml configure "
                    "this workspace; keep one",
                )
            )
        if tool is not None:
            data, source, prefix = tool, pyproject, "tool.series"
    if data is None:
        raise ConfigError(
            Problem(
                str(root),
                None,
                "no workspace configuration: add series.toml or [tool.series] to "
                "pyproject.toml, or pass --workspace DIR",
            )
        )
    return _Validator(root, source, prefix).config(data)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"line (\d+)", str(exc))
        raise ConfigError(
            Problem(path.name, int(line.group(1)) if line else None, f"invalid TOML: {exc}")
        ) from None


class _Validator:
    """Checks one configuration table; knows where each key stands in the file."""

    KEYS = (
        "site_url",
        "site_name",
        "from",
        "reply_to",
        "timezone",
        "send_window",
        "utm",
        "footer",
        "postal_address",
        "raw_html",
        "default_name",
        "provider",
        "rate_limit",
        "workers",
        "postmark",
        "resend",
        "sendgrid",
        "mailgun",
        "unsubscribe_url",
        "unsubscribe",
    )

    def __init__(self, root: Path, source: Path, prefix: str) -> None:
        self.root = root
        self.source = source
        self.prefix = prefix
        self.lines = source.read_text(encoding="utf-8").splitlines()

    def fail(self, dotted: str, message: str) -> ConfigError:
        return ConfigError(Problem(self.source.name, self.line_of(dotted), message))

    def line_of(self, dotted: str) -> int | None:
        """The line of ``a.b.c``: as ``c = `` inside table ``[prefix.a.b]`` or inline."""
        parts = dotted.split(".")
        table = ".".join(p for p in [self.prefix, *parts[:-1]] if p)
        key = parts[-1]
        current = ""
        fallback = None
        for number, raw in enumerate(self.lines, start=1):
            line = raw.strip()
            header = re.fullmatch(r"\[([^\[\]]+)\]", line)
            if header:
                current = header.group(1).strip()
                continue
            if re.match(rf"[\"']?{re.escape(key)}[\"']?\s*=", line):
                if current == table:
                    return number
                fallback = fallback or (number if current.startswith(self.prefix) else None)
            elif (
                len(parts) > 1
                and current == table.rsplit(".", 1)[0]
                and re.match(rf"{re.escape(parts[-2])}\s*=\s*\{{", line)
            ):
                return number  # an inline table: `utm = { enabled = true }`
        return fallback

    def check_keys(self, table: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
        for key in table:
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                prefix = f"{where}." if where else ""
                suggestion = f" (did you mean '{prefix}{hint[0]}'?)" if hint else ""
                name = f"{prefix}{key}"
                raise self.fail(name, f"unknown key '{name}'{suggestion}")

    def typed(self, table: Mapping[str, Any], key: str, kind: type, where: str = "") -> Any:
        name = f"{where}.{key}" if where else key
        value = table.get(key)
        if value is not None and not isinstance(value, kind):
            raise self.fail(name, f"'{name}' must be a {_type_name(kind)}, got {value!r}")
        return value

    def config(self, data: Mapping[str, Any]) -> Config:
        self.check_keys(data, self.KEYS, "")
        site_url = self.typed(data, "site_url", str)
        if site_url is None:
            raise self.fail("site_url", "'site_url' is required (the blog's https:// address)")
        if not is_web_url(site_url):
            raise self.fail(
                "site_url", f"'site_url' must be an absolute http(s) URL, got {site_url!r}"
            )
        sender = self.address(data.get("from"), "from")
        if sender is None:
            raise self.fail("from", '\'from\' is required: from = { name = "…", email = "…" }')
        reply_to = self.typed(data, "reply_to", str)
        if reply_to is not None:
            reply_to = self.email(reply_to, "reply_to")
        timezone = self.zone(self.typed(data, "timezone", str) or "UTC", "timezone")
        footer = self.typed(data, "footer", list) or []
        for index, name in enumerate(footer):
            if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
                raise self.fail("footer", f"'footer[{index}]' must be a block name, got {name!r}")
            if not (self.root / "templates" / "footer" / f"{name}.md").is_file():
                raise self.fail(
                    "footer", f"footer block '{name}': templates/footer/{name}.md not found"
                )
        return Config(
            root=self.root,
            source=self.source,
            site_url=site_url.rstrip("/"),
            site_name=self.typed(data, "site_name", str) or (urlsplit(site_url).hostname or ""),
            sender=sender,
            reply_to=reply_to,
            timezone=timezone,
            send_window=self.send_window(data.get("send_window"), "send_window") or ALWAYS,
            utm=self.utm(data.get("utm")),
            footer=tuple(footer),
            postal_address=self.typed(data, "postal_address", str) or "",
            raw_html=bool(self.typed(data, "raw_html", bool)),
            default_name=self.typed(data, "default_name", str) or "there",
            provider=self.typed(data, "provider", str) or "outbox",
            rate_limit=self.rate_limit(data.get("rate_limit")),
            workers=self.workers(data.get("workers")),
            postmark_stream=self.postmark(data.get("postmark")),
            postmark_batch_size=self.postmark_batch_size(data.get("postmark")),
            unsubscribe_url=self.unsubscribe_url(data, site_url.rstrip("/")),
            unsubscribe=self.unsubscribe_mode(data),
            resend_batch_size=self.batch_size(self.table(data, "resend", ()), "resend", 100),
            sendgrid_region=self.choice(
                self.table(data, "sendgrid", ("region",)), "region", ("global", "eu"), "sendgrid"
            ),
            sendgrid_batch_size=self.batch_size(data.get("sendgrid") or {}, "sendgrid", 1000),
            mailgun_domain=self.mailgun_domain(self.table(data, "mailgun", ("domain", "region"))),
            mailgun_region=self.choice(
                data.get("mailgun") or {}, "region", ("us", "eu"), "mailgun"
            ),
            mailgun_batch_size=self.batch_size(data.get("mailgun") or {}, "mailgun", 1000),
        )

    def table(self, data: Mapping[str, Any], name: str, keys: tuple[str, ...]) -> Mapping[str, Any]:
        """A provider's own table, e.g. ``[tool.series.mailgun]``; every one may set
        ``batch_size``."""
        value = data.get(name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            header = ".".join(part for part in (self.prefix, name) if part)
            raise self.fail(name, f"'{name}' must be a table: [{header}]")
        self.check_keys(value, (*keys, "batch_size"), name)
        return value

    def unsubscribe_mode(self, data: Mapping[str, Any]) -> str:
        mode = self.choice(data, "unsubscribe", UNSUBSCRIBE_MODES)
        provider = self.typed(data, "provider", str) or "outbox"
        if mode == "provider" and provider in SELF_HOSTED_ONLY:
            raise self.fail(
                "unsubscribe",
                f'unsubscribe = "provider", but {provider} does not manage unsubscribes; '
                'use "self-hosted" (and run `series serve`) or a provider that does '
                "(postmark, sendgrid, mailgun)",
            )
        return mode

    def choice(
        self, data: Mapping[str, Any], key: str, allowed: tuple[str, ...], where: str = ""
    ) -> str:
        """One of ``allowed``; the first is the default."""
        name = f"{where}.{key}" if where else key
        value = self.typed(data, key, str, where)
        if value is None:
            return allowed[0]
        if value not in allowed:
            options = " or ".join(f'"{a}"' for a in allowed)
            raise self.fail(name, f"'{name}' must be {options}, got {value!r}")
        return str(value)

    def batch_size(self, table: Mapping[str, Any], where: str, most: int) -> int:
        size = self.typed(table, "batch_size", int, where)
        if size is None:
            return most
        if isinstance(size, bool) or not 1 <= size <= most:
            raise self.fail(
                f"{where}.batch_size", f"'{where}.batch_size' must be 1 to {most}, got {size!r}"
            )
        return int(size)

    def mailgun_domain(self, table: Mapping[str, Any]) -> str:
        domain = self.typed(table, "domain", str, "mailgun")
        if domain is None:
            return ""
        if not re.fullmatch(r"(?=.{1,253}$)([A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,63}", domain):
            raise self.fail(
                "mailgun.domain",
                f"'mailgun.domain' must be your sending domain (e.g. mg.example.com), "
                f"got {domain!r}",
            )
        return str(domain).lower()

    def rate_limit(self, value: Any) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise self.fail(
                "rate_limit", f"'rate_limit' must be messages per second (> 0), got {value!r}"
            )
        return float(value)

    def workers(self, value: Any) -> int:
        if value is None:
            # One process per core, up to four: sending is CPU-bound (rendering and
            # encoding each message), and four already saturate a provider's API.
            return max(1, min(os.cpu_count() or 1, 4))
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 32:
            raise self.fail("workers", f"'workers' must be 1 to 32 processes, got {value!r}")
        return value

    def postmark(self, value: Any) -> str:
        if value is None:
            return "broadcast"
        if not isinstance(value, dict):
            raise self.fail(
                "postmark", "'postmark' must be a table: postmark = { message_stream = \"…\" }"
            )
        self.check_keys(value, ("message_stream", "batch_size"), "postmark")
        return self.typed(value, "message_stream", str, "postmark") or "broadcast"

    def postmark_batch_size(self, value: Any) -> int:
        size = self.typed(value or {}, "batch_size", int, "postmark")
        if size is None:
            return 500
        if isinstance(size, bool) or not 1 <= size <= 500:
            raise self.fail(
                "postmark.batch_size", f"'postmark.batch_size' must be 1 to 500, got {size!r}"
            )
        return int(size)

    def unsubscribe_url(self, data: Mapping[str, Any], site_url: str) -> str:
        template = self.typed(data, "unsubscribe_url", str)
        if template is None:
            return f"{site_url}/u/{{token}}"
        example = template.replace("{token}", "t")
        if "{token}" not in template or not is_web_url(example) or not example.startswith("https"):
            raise self.fail(
                "unsubscribe_url",
                f"'unsubscribe_url' must be an https:// URL containing {{token}}, got {template!r}",
            )
        return str(template)

    def email(self, value: str, where: str) -> str:
        problem = sender_problem(value)
        if problem is not None:
            raise self.fail(where, f"'{where}' {problem}")
        from email_validator import validate_email

        return validate_email(value, check_deliverability=False).normalized

    def address(self, value: Any, where: str) -> Address | None:
        if value is None:
            return None
        if isinstance(value, str):
            return Address(self.email(value, where))
        if not isinstance(value, dict):
            raise self.fail(where, f"'{where}' must be an address or {{ name, email }}")
        self.check_keys(value, ("name", "email"), where)
        email = self.typed(value, "email", str, where)
        if email is None:
            raise self.fail(where, f"'{where}.email' is required")
        name = self.typed(value, "name", str, where) or ""
        if (problem := line_problem(name)) is not None:
            raise self.fail(f"{where}.name", f"'{where}.name' {problem}")
        return Address(self.email(email, f"{where}.email"), name)

    def zone(self, name: str, where: str) -> ZoneInfo:
        return parse_zone(name, lambda message: self.fail(where, message))

    def send_window(self, value: Any, where: str) -> SendWindow | None:
        return parse_send_window(value, where, lambda key, message: self.fail(key, message))

    def utm(self, value: Any) -> Utm:
        if value is None:
            return Utm(False, ())
        if isinstance(value, bool):
            value = {"enabled": value}
        if not isinstance(value, dict):
            raise self.fail(
                "utm", "'utm' must be a table: utm = { enabled = true, source = \"…\" }"
            )
        self.check_keys(value, ("enabled", *UTM_KEYS), "utm")
        enabled = self.typed(value, "enabled", bool, "utm")
        params = []
        for key in UTM_KEYS:
            template = self.typed(value, key, str, "utm")
            if template is not None:
                try:
                    template.format(series="", slug="", part=0)
                except (KeyError, IndexError, ValueError) as exc:
                    raise self.fail(
                        f"utm.{key}",
                        f"'utm.{key}' may use only {{series}}, {{slug}} and {{part}}: {exc}",
                    ) from None
                params.append((f"utm_{key}", template))
        return Utm(enabled is not False, tuple(params))


def sender_problem(value: str) -> str | None:
    """Why ``value`` cannot be a sender or reply-to address (in words that follow its
    key's name), or None when it can: it must be a valid address series can send from
    (an ASCII local part; an IDN domain goes out in ASCII)."""
    from email_validator import EmailNotValidError, validate_email

    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        return f"is not a valid address: {exc}"
    problem = smtputf8_problem(value)
    return None if problem is None else f"cannot be used: {problem}"


def parse_zone(name: str, fail: Callable[[str], Exception]) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise fail(
            f"unknown timezone {name!r} (use an IANA name such as 'Europe/Stockholm')"
        ) from None


def parse_send_window(
    value: Any, where: str, fail: Callable[[str, str], Exception]
) -> SendWindow | None:
    """Validate ``{ days = ["mon", …], start = "HH:MM", end = "HH:MM" }``."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise fail(where, f"'{where}' must be a table with days, start and end")
    for key in value:
        if key not in ("days", "start", "end"):
            hint = difflib.get_close_matches(key, ("days", "start", "end"), n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise fail(f"{where}.{key}", f"unknown key '{where}.{key}'{suggestion}")
    days_value = value.get("days", list(DAY_NAMES))
    if not isinstance(days_value, list) or not days_value:
        raise fail(f"{where}.days", f'\'{where}.days\' must be a list such as ["mon", "tue"]')
    days = set()
    for day in days_value:
        key = str(day).lower()[:3]
        if key not in DAY_NAMES:
            raise fail(f"{where}.days", f"'{where}.days': unknown day {day!r}")
        days.add(DAY_NAMES.index(key))
    start = _clock(value.get("start", "00:00"), f"{where}.start", fail)
    end = _clock(value.get("end", "24:00"), f"{where}.end", fail)
    if end <= start:
        raise fail(f"{where}.end", f"'{where}.end' must be later than '{where}.start'")
    return SendWindow(frozenset(days), start, end)


def _clock(value: Any, where: str, fail: Callable[[str, str], Exception]) -> time:
    if isinstance(value, time):
        return value
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", str(value))
    if not match or int(match.group(1)) > 24 or int(match.group(2)) > 59:
        raise fail(where, f"'{where}' must be a time such as \"09:00\", got {value!r}")
    hour, minute = int(match.group(1)), int(match.group(2))
    if hour == 24:
        if minute:
            raise fail(where, f"'{where}' must be at most \"24:00\", got {value!r}")
        return time(23, 59, 59)
    return time(hour, minute)


def is_web_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _type_name(kind: type) -> str:
    return {str: "string", bool: "boolean (true/false)", list: "list", dict: "table"}.get(
        kind, kind.__name__
    )
