"""Find the workspace and validate its configuration into one frozen Config.

The configuration lives in ``series.toml`` or under ``[tool.series]`` in the
workspace's ``pyproject.toml`` (same keys). Every problem names the file and,
where it can be found, the line of the offending key.
"""

from __future__ import annotations

import difflib
import os
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigError, Problem
from .headers import format_address, line_problem, smtputf8_problem
from .language import DEFAULT_LANGUAGE, language_problem
from .signup_config import SignupConfig, parse_signup
from .sources import ReadError, cut, quote, read_text, read_toml, unquote_hint
from .workspace import nearest_workspace

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
UTM_KEYS = ("source", "medium", "campaign", "term", "content")
UNSUBSCRIBE_MODES = ("self-hosted", "provider")
# Providers with no unsubscribe handling of their own for series' emails.
SELF_HOSTED_ONLY = ("outbox", "resend")

_T = TypeVar("_T")


@dataclass(frozen=True)
class Address:
    email: str
    name: str = ""

    def formatted(self) -> str:
        """The mailbox as a header carries it (see headers.format_address): ASCII, the
        name one quoted or encoded phrase. Raises MessageBuildError when the address
        cannot be sent. Worked out once per Address: a message's recipient is checked
        on the wire (`providers.base.sendable`), then written into the request."""
        known = self.__dict__.get("_formatted")
        if known is None:
            known = format_address(self.email, self.name)
            object.__setattr__(self, "_formatted", known)  # a cache: not a field
        return known


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
    language: str = "en"  # BCP 47: the emails' <html lang>; a series may override it
    signup: SignupConfig = SignupConfig()  # noqa: RUF009 (frozen)  the form of `series serve`

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
    """The given folder, or else the nearest workspace at or above the current one."""
    if not workspace:
        here = Path.cwd().resolve()
        return nearest_workspace(here) or here
    root = Path(workspace)
    if not root.is_dir():
        raise ConfigError(Problem(str(root), None, "workspace is not a directory"))
    return root.resolve()


def load_config(root: Path) -> Config:
    """Read and validate the workspace configuration.

    Raises ConfigError carrying every problem found, in file order; a file that cannot
    be read or parsed (see sources.read_toml) is one problem on its own.
    """
    series_toml = root / "series.toml"
    pyproject = root / "pyproject.toml"
    data: dict[str, Any] | None = None
    source = series_toml
    prefix = ""
    text = ""
    if series_toml.is_file():
        data, text = _read_toml(series_toml)
        _refuse_tool_table(data, text)
    if pyproject.is_file():
        project, project_text = _read_toml(pyproject)
        tool = project.get("tool")
        tool = tool.get("series") if isinstance(tool, dict) else None
        if tool is not None and data is not None:
            raise ConfigError(
                Problem(
                    "series.toml",
                    None,
                    "both series.toml and [tool.series] in pyproject.toml configure "
                    "this workspace; keep one",
                )
            )
        if tool is not None and not isinstance(tool, dict):
            raise ConfigError(
                Problem("pyproject.toml", None, "'tool.series' must be a table: [tool.series]")
            )
        if tool is not None:
            data, source, prefix, text = tool, pyproject, "tool.series", project_text
    if data is None:
        raise ConfigError(
            Problem(
                str(root),
                None,
                "no workspace configuration: add series.toml or [tool.series] to "
                "pyproject.toml, or pass --workspace DIR",
            )
        )
    return _Validator(root, source, prefix, text).config(data)


def key_line(config: Config, dotted: str) -> int | None:
    """The line of a key such as ``from.email`` in the workspace's configuration file."""
    prefix = "tool.series" if config.source.name == "pyproject.toml" else ""
    text = read_text(config.source, config.source.name, what="a configuration file")
    return _Validator(config.root, config.source, prefix, text).line_of(dotted)


def _read_toml(path: Path) -> tuple[dict[str, Any], str]:
    try:
        return read_toml(path, path.name)
    except ReadError as exc:
        raise ConfigError(exc.problem) from None


def _refuse_tool_table(data: Mapping[str, Any], text: str) -> None:
    """series.toml holds the keys that pyproject.toml holds under [tool.series]; a block
    copied from a pyproject.toml (or the README) with its headers is the usual mistake."""
    tool = data.get("tool")
    if not (isinstance(tool, dict) and "series" in tool):
        return
    line = next(
        (
            number
            for number, raw in enumerate(text.splitlines(), start=1)
            if re.match(r"\s*\[\s*tool\s*\.\s*series\b|\s*tool\s*[.=]", raw)
        ),
        None,
    )
    raise ConfigError(
        Problem(
            "series.toml",
            line,
            "series.toml takes the keys at the top level: write [tool.series] keys without "
            "that header, and [tool.series.from] as [from] ([tool.series] is for pyproject.toml)",
        )
    )


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
        "language",
        "provider",
        "rate_limit",
        "workers",
        "postmark",
        "resend",
        "sendgrid",
        "mailgun",
        "unsubscribe_url",
        "unsubscribe",
        "signup",
    )

    def __init__(self, root: Path, source: Path, prefix: str, text: str) -> None:
        self.root = root
        self.source = source
        self.prefix = prefix
        self.lines = text.splitlines()
        self.problems: list[Problem] = []

    def fail(self, dotted: str, message: str) -> ConfigError:
        return ConfigError(Problem(self.source.name, self.line_of(dotted), message))

    def collect(self, compute: Callable[[], _T], fallback: _T) -> _T:
        """``compute()``, or ``fallback`` once the problem it raised is recorded: each
        key is checked whatever the keys before it hold, so one run reports them all."""
        try:
            return compute()
        except ConfigError as exc:
            self.problems.extend(exc.problems)
            return fallback

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
                self.problems.extend(self.fail(name, f"unknown key '{name}'{suggestion}").problems)

    def typed(self, table: Mapping[str, Any], key: str, kind: type, where: str = "") -> Any:
        name = f"{where}.{key}" if where else key
        value = table.get(key)
        if value is not None and not isinstance(value, kind):
            raise self.fail(
                name,
                f"'{name}' must be a {_type_name(kind)}, got {quote(value)}"
                + unquote_hint(value, kind, key, " = "),
            )
        return value

    def config(self, data: Mapping[str, Any]) -> Config:
        """The validated Config; raises ConfigError with every problem, in file order."""
        self.check_keys(data, self.KEYS, "")
        keep = self.collect
        site_url = keep(lambda: self.site_url(data), "https://site.invalid")
        none: Mapping[str, Any] = {}
        resend = keep(lambda: self.table(data, "resend", ()), none)
        sendgrid = keep(lambda: self.table(data, "sendgrid", ("region",)), none)
        mailgun = keep(lambda: self.table(data, "mailgun", ("domain", "region")), none)
        postmark = keep(lambda: self.postmark(data.get("postmark")), none)
        config = Config(
            root=self.root,
            source=self.source,
            site_url=site_url,
            site_name=keep(lambda: self.typed(data, "site_name", str), None)
            or (urlsplit(site_url).hostname or ""),
            sender=keep(lambda: self.sender(data), Address("")),
            reply_to=keep(lambda: self.reply_to(data), None),
            timezone=keep(
                lambda: self.zone(self.typed(data, "timezone", str) or "UTC", "timezone"),
                ZoneInfo("UTC"),
            ),
            send_window=keep(lambda: self.send_window(data.get("send_window"), "send_window"), None)
            or ALWAYS,
            utm=keep(lambda: self.utm(data.get("utm")), Utm(False, ())),
            footer=keep(lambda: self.footer(data), ()),
            postal_address=keep(lambda: self.typed(data, "postal_address", str), None) or "",
            raw_html=bool(keep(lambda: self.typed(data, "raw_html", bool), None)),
            default_name=keep(lambda: self.typed(data, "default_name", str), None) or "there",
            language=keep(lambda: self.language(data), DEFAULT_LANGUAGE),
            provider=keep(lambda: self.typed(data, "provider", str), None) or "outbox",
            rate_limit=keep(lambda: self.rate_limit(data.get("rate_limit")), None),
            workers=keep(lambda: self.workers(data.get("workers")), 1),
            postmark_stream=keep(
                lambda: self.typed(postmark, "message_stream", str, "postmark"), None
            )
            or "broadcast",
            postmark_batch_size=keep(lambda: self.batch_size(postmark, "postmark", 500), 500),
            unsubscribe_url=keep(lambda: self.unsubscribe_url(data, site_url), ""),
            unsubscribe=keep(lambda: self.unsubscribe_mode(data), "self-hosted"),
            resend_batch_size=keep(lambda: self.batch_size(resend, "resend", 100), 100),
            sendgrid_region=keep(
                lambda: self.choice(sendgrid, "region", ("global", "eu"), "sendgrid"), "global"
            ),
            sendgrid_batch_size=keep(lambda: self.batch_size(sendgrid, "sendgrid", 1000), 1000),
            mailgun_domain=keep(lambda: self.mailgun_domain(mailgun), ""),
            mailgun_region=keep(
                lambda: self.choice(mailgun, "region", ("us", "eu"), "mailgun"), "us"
            ),
            mailgun_batch_size=keep(lambda: self.batch_size(mailgun, "mailgun", 1000), 1000),
            signup=keep(lambda: parse_signup(self, data.get("signup"), site_url), SignupConfig()),
        )
        if self.problems:
            unique = dict.fromkeys(self.problems)  # a key two settings read is reported once
            raise ConfigError(sorted(unique, key=lambda p: (p.line is None, p.line or 0)))
        return config

    def language(self, data: Mapping[str, Any]) -> str:
        if "language" not in data:
            return DEFAULT_LANGUAGE
        value = data["language"]
        problem = language_problem(value)
        if problem is not None:
            raise self.fail("language", f"'language' {problem}")
        return str(value)

    def site_url(self, data: Mapping[str, Any]) -> str:
        site_url = self.typed(data, "site_url", str)
        if site_url is None:
            raise self.fail("site_url", "'site_url' is required (the blog's https:// address)")
        if not is_web_url(site_url):
            raise self.fail(
                "site_url", f"'site_url' must be an absolute http(s) URL, got {quote(site_url)}"
            )
        problem = url_problem(site_url) or url_part_problem(site_url, base=True)
        if problem is not None:
            raise self.fail("site_url", f"'site_url' {problem}")
        return str(site_url).rstrip("/")

    def sender(self, data: Mapping[str, Any]) -> Address:
        sender = self.address(data.get("from"), "from")
        if sender is None:
            raise self.fail("from", '\'from\' is required: from = { name = "…", email = "…" }')
        return sender

    def reply_to(self, data: Mapping[str, Any]) -> str | None:
        reply_to = self.typed(data, "reply_to", str)
        return None if reply_to is None else self.email(reply_to, "reply_to")

    def footer(self, data: Mapping[str, Any]) -> tuple[str, ...]:
        footer = self.typed(data, "footer", list) or []
        for index, name in enumerate(footer):
            if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
                raise self.fail(
                    "footer", f"'footer[{index}]' must be a block name, got {quote(name)}"
                )
            if not (self.root / "templates" / "footer" / f"{name}.md").is_file():
                raise self.fail(
                    "footer", f"footer block '{name}': templates/footer/{name}.md not found"
                )
        return tuple(footer)

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
            raise self.fail(name, f"'{name}' must be {options}, got {quote(value)}")
        return str(value)

    def batch_size(self, table: Mapping[str, Any], where: str, most: int) -> int:
        size = self.typed(table, "batch_size", int, where)
        if size is None:
            return most
        if isinstance(size, bool) or not 1 <= size <= most:
            raise self.fail(
                f"{where}.batch_size",
                f"'{where}.batch_size' must be 1 to {most}, got {quote(size)}",
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
                f"got {quote(domain)}",
            )
        return str(domain).lower()

    def rate_limit(self, value: Any) -> float | None:
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 < value < float("inf")
        ):
            raise self.fail(
                "rate_limit",
                f"'rate_limit' must be messages per second (> 0), got {quote(value)}"
                + unquote_hint(value, float, "rate_limit", " = "),
            )
        return float(value)

    def workers(self, value: Any) -> int:
        if value is None:
            # One process per core, up to four: sending is CPU-bound (rendering and
            # encoding each message), and four already saturate a provider's API.
            return max(1, min(os.cpu_count() or 1, 4))
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 32:
            raise self.fail(
                "workers",
                f"'workers' must be 1 to 32 processes, got {quote(value)}"
                + unquote_hint(value, int, "workers", " = "),
            )
        return value

    def postmark(self, value: Any) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(
                "postmark", "'postmark' must be a table: postmark = { message_stream = \"…\" }"
            )
        self.check_keys(value, ("message_stream", "batch_size"), "postmark")
        return value

    def unsubscribe_url(self, data: Mapping[str, Any], site_url: str) -> str:
        template = self.typed(data, "unsubscribe_url", str)
        if template is None:
            return f"{site_url}/u/{{token}}"
        example = template.replace("{token}", "t")
        if "{token}" not in template or not is_web_url(example) or not example.startswith("https"):
            raise self.fail(
                "unsubscribe_url",
                "'unsubscribe_url' must be an https:// URL containing {token}, "
                f"got {quote(template)}",
            )
        problem = url_problem(example) or url_part_problem(example, base=False)
        if problem is not None:
            raise self.fail("unsubscribe_url", f"'unsubscribe_url' {problem}")
        return str(template)

    def email(self, value: str, where: str) -> str:
        problem = sender_problem(value)
        if problem is not None:
            raise self.fail(where, f"'{where}' {problem}")
        from email_validator import validate_email

        return validate_email(value, check_deliverability=False, strict=True).normalized

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
            # Recorded, not raised: the address below is checked too, in the same run.
            self.problems.extend(self.fail(f"{where}.name", f"'{where}.name' {problem}").problems)
        return Address(self.email(email, f"{where}.email"), name)

    def zone(self, name: str, where: str) -> ZoneInfo:
        return parse_zone(name, lambda message: self.fail(where, message))

    def send_window(self, value: Any, where: str) -> SendWindow | None:
        return parse_send_window(
            value,
            where,
            lambda key, message: self.fail(key, message),
            report=lambda exc: self.problems.extend(exc.problems),
        )

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
                problem = _utm_template_problem(template)
                if problem is not None:
                    raise self.fail(
                        f"utm.{key}",
                        f"'utm.{key}' may use only {{series}}, {{slug}} and {{part}}: {problem}",
                    )
                params.append((f"utm_{key}", template))
        return Utm(enabled is not False, tuple(params))


def sender_problem(value: str) -> str | None:
    """Why ``value`` cannot be a sender or reply-to address (in words that follow its
    key's name), or None when it can: it must be a valid address series can send from
    (an ASCII local part; an IDN domain goes out in ASCII)."""
    from email_validator import EmailNotValidError, validate_email

    try:
        validate_email(value, check_deliverability=False, strict=True)
    except EmailNotValidError as exc:
        return f"is not a valid address: {exc}"
    problem = smtputf8_problem(value)
    return None if problem is None else f"cannot be used: {problem}"


def _utm_template_problem(template: str) -> str | None:
    """Why a UTM value template cannot be filled, or None. Only bare ``{series}``,
    ``{slug}`` and ``{part}`` are allowed: str.format would also run attribute lookups,
    indexing and format specs (``{part:999999999}`` builds a gigabyte string)."""
    try:
        fields = [
            (name, spec, conversion)
            for _, name, spec, conversion in string.Formatter().parse(template)
            if name is not None
        ]
    except ValueError as exc:
        return str(exc)
    for name, spec, conversion in fields:
        if name not in ("series", "slug", "part") or spec or conversion:
            written = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            return f"found {{{cut(written)}}}"
    return None


def parse_zone(name: str, fail: Callable[[str], Exception]) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # OSError: a name that is a directory of the zone database ("Europe"), or too long.
        raise fail(
            f"unknown timezone {quote(name)} (use an IANA name such as 'Europe/Stockholm')"
        ) from None


def parse_send_window(
    value: Any,
    where: str,
    fail: Callable[[str, str], Exception],
    *,
    report: Callable[[Any], None] | None = None,
) -> SendWindow | None:
    """Validate ``{ days = ["mon", …], start = "HH:MM", end = "HH:MM" }``.

    ``fail(key, message)`` makes the exception for a problem. Without ``report`` the
    first problem is raised; with it, every problem of the table is handed to
    ``report`` (so one run names them all) and the window is None if there was any."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise fail(where, f"'{where}' must be a table with days, start and end")
    found: list[Exception] = []

    def check(compute: Callable[[], _T], fallback: _T) -> _T:
        try:
            return compute()
        except Exception as exc:
            if report is None:  # every problem here comes from fail()
                raise
            found.append(exc)
            return fallback

    for key in value:
        if key not in ("days", "start", "end"):
            hint = difflib.get_close_matches(key, ("days", "start", "end"), n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            check(_raise(fail(f"{where}.{key}", f"unknown key '{where}.{key}'{suggestion}")), None)
    days: set[int] = check(lambda: _days(value, where, fail), set())
    start = check(lambda: _clock(value.get("start", "00:00"), f"{where}.start", fail), None)
    end = check(lambda: _clock(value.get("end", "24:00"), f"{where}.end", fail), None)
    if start is not None and end is not None and end <= start:
        check(
            _raise(fail(f"{where}.end", f"'{where}.end' must be later than '{where}.start'")), None
        )
    if found:
        assert report is not None
        for exc in found:
            report(exc)
        return None
    assert start is not None and end is not None
    return SendWindow(frozenset(days), start, end)


def _raise(exc: Exception) -> Callable[[], None]:
    def raise_it() -> None:
        raise exc

    return raise_it


def _days(value: dict[str, Any], where: str, fail: Callable[[str, str], Exception]) -> set[int]:
    days_value = value.get("days", list(DAY_NAMES))
    if not isinstance(days_value, list) or not days_value:
        raise fail(f"{where}.days", f'\'{where}.days\' must be a list such as ["mon", "tue"]')
    days = set()
    for day in days_value:
        key = str(day).lower()[:3]
        if key not in DAY_NAMES:
            raise fail(f"{where}.days", f"'{where}.days': unknown day {quote(day)}")
        days.add(DAY_NAMES.index(key))
    return days


def _clock(value: Any, where: str, fail: Callable[[str, str], Exception]) -> time:
    if isinstance(value, time):
        return value
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", str(value))
    if not match or int(match.group(1)) > 24 or int(match.group(2)) > 59:
        raise fail(where, f"'{where}' must be a time such as \"09:00\", got {quote(value)}")
    hour, minute = int(match.group(1)), int(match.group(2))
    if hour == 24:
        if minute:
            raise fail(where, f"'{where}' must be at most \"24:00\", got {quote(value)}")
        return time(23, 59, 59)
    return time(hour, minute)


# What RFC 3986 never allows in a URI, percent-encoded or not: it would end a
# List-Unsubscribe's <…>, add a second URI, or fold the header inside the URI.
_NOT_IN_URI = re.compile(r'[\s<>"{}|\\^`\x00-\x1f\x7f-\x9f\u2028\u2029]')


def url_problem(value: str) -> str | None:
    """Why ``value`` cannot be written as one URI in a header or a link (a space, a
    control character, or a character such as ``<`` or ``"`` that RFC 3986 leaves out
    of URIs), or None. Other non-ASCII characters are fine: they are percent-encoded
    (or the host made ASCII) when the URL is written."""
    found = _NOT_IN_URI.search(value)
    if found is None:
        return None
    char = found.group()
    if char != " " and (char.isspace() or not char.isprintable()):
        return f"contains a control character or line break (U+{ord(char):04X}); remove it"
    what = "a space" if char == " " else f"'{char}'"
    return f"contains {what}, which a URL cannot hold; percent-encode it (%{ord(char):02X})"


def url_part_problem(value: str, *, base: bool) -> str | None:
    """Why ``value`` (an http(s) URL) cannot begin a link series writes, or None: login
    details or a bad port break every link, and so does a fragment, after which the
    rest of the link would be lost; a base URL (``base``, to which series adds a path
    such as /u/TOKEN) cannot have a query either."""
    parts = urlsplit(value)
    if "@" in parts.netloc:
        return "contains login details (user@ or user:password@); remove them"
    after_host = parts.netloc.rpartition("]")[2]  # past an IPv6 address's colons
    if ":" in after_host:
        port = after_host.rpartition(":")[2]
        if not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
            return f"has an invalid port ({port or 'empty'}); use a number from 1 to 65535"
    if "#" in value:
        return "contains a fragment (#…), which would cut off the rest of each link; remove it"
    if base and "?" in value:
        return (
            "contains a query (?…): series adds paths such as /u/TOKEN to it, so it must "
            "be the bare address; remove it"
        )
    return None


def is_web_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
    except ValueError:  # "Invalid IPv6 URL": an unclosed [ after the scheme
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _type_name(kind: type) -> str:
    return {str: "string", bool: "boolean (true/false)", list: "list", dict: "table"}.get(
        kind, kind.__name__
    )
