"""The ``[signup]`` table of the workspace configuration: the signup form of `series serve`.

```toml
[signup]
enabled = true                                  # default false: no form is served
series = ["attachment"]                         # default: every published series
next = "https://blog.example.com/thanks/"       # after submitting; on site_url (or "/thanks/")
allowed_origins = ["https://blog.example.com"]  # sites whose pages may POST JSON (CORS)
token_hours = 48                                # how long a confirmation link works
per_ip_per_hour = 10                            # POST /subscribe per IP address (0: no limit)
trusted_proxies = 0                             # reverse proxies in front of `series serve`
postmark_stream = "outbound"                    # Postmark stream of the confirmation email
confirm_url = "https://blog.example.com/confirm/{token}"  # default: beside unsubscribe_url
```
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

from .errors import ConfigError
from .sources import quote

KEYS = (
    "enabled",
    "series",
    "next",
    "allowed_origins",
    "token_hours",
    "per_ip_per_hour",
    "trusted_proxies",
    "postmark_stream",
    "confirm_url",
)
_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]*")


@dataclass(frozen=True)
class SignupConfig:
    """What the writer decided about the signup form (see the module docstring)."""

    enabled: bool = False
    series: tuple[str, ...] | None = None  # None: every published series
    next_url: str = ""  # "": show the "check your inbox" page
    allowed_origins: tuple[str, ...] = ()  # scheme://host[:port], lower case
    token_hours: float = 48.0
    per_ip_per_hour: int = 10
    trusted_proxies: int = 0
    postmark_stream: str = "outbound"
    confirm_url: str = ""  # with {token}; "": derived from unsubscribe_url (confirm_template)


class _Checker(Protocol):
    def fail(self, dotted: str, message: str) -> ConfigError: ...

    def check_keys(self, table: Mapping[str, Any], known: tuple[str, ...], where: str) -> None: ...

    def typed(self, table: Mapping[str, Any], key: str, kind: type, where: str = "") -> Any: ...


def parse_signup(check: _Checker, value: Any, site_url: str) -> SignupConfig:
    """Validate the ``signup`` table with the configuration's own checker (config.py's
    _Validator: ``fail`` makes a ConfigError at the key's line). Raises ConfigError."""
    if value is None:
        return SignupConfig()
    if not isinstance(value, dict):
        raise check.fail("signup", "'signup' must be a table: [signup] with enabled = true")
    check.check_keys(value, KEYS, "signup")
    enabled = check.typed(value, "enabled", bool, "signup")
    series = check.typed(value, "series", list, "signup")
    if series is not None:
        for index, slug in enumerate(series):
            if not isinstance(slug, str) or not _SLUG.fullmatch(slug):
                raise check.fail(
                    "signup.series",
                    f"'signup.series[{index}]' must be a series slug, got {quote(slug)}",
                )
        if not series:
            raise check.fail(
                "signup.series",
                "'signup.series' lists no series; leave it out "
                "to offer every published series, or set enabled = false",
            )
    return SignupConfig(
        enabled=bool(enabled),
        series=tuple(series) if series is not None else None,
        next_url=_next(check, value, site_url),
        allowed_origins=_origins(check, value),
        token_hours=_number(check, value, "token_hours", 48.0, 0.1, 24 * 30),
        per_ip_per_hour=int(_number(check, value, "per_ip_per_hour", 10, 0, 100_000, whole=True)),
        trusted_proxies=int(_number(check, value, "trusted_proxies", 0, 0, 5, whole=True)),
        postmark_stream=check.typed(value, "postmark_stream", str, "signup") or "outbound",
        confirm_url=_confirm_url(check, value),
    )


def confirm_template(signup: SignupConfig, unsubscribe_url: str, site_url: str) -> str:
    """The confirmation link with ``{token}``: ``signup.confirm_url``, else beside the
    unsubscribe pages (``…/u/{token}`` gives ``…/confirm/{token}``), else on site_url."""
    if signup.confirm_url:
        return signup.confirm_url
    for tail in ("/u/{token}", "/unsubscribe/{token}"):
        if unsubscribe_url.endswith(tail):
            return unsubscribe_url[: -len(tail)] + "/confirm/{token}"
    return f"{site_url}/confirm/{{token}}"


def _confirm_url(check: _Checker, value: Mapping[str, Any]) -> str:
    template = check.typed(value, "confirm_url", str, "signup")
    if template is None:
        return ""
    example = template.replace("{token}", "t")
    try:
        parts = urlsplit(example)
    except ValueError:
        parts = urlsplit("")
    # Plain http only for a server on this machine (trying things out, tests).
    loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if (
        template.count("{token}") != 1
        or parts.scheme not in ("https", "http")
        or (parts.scheme == "http" and not loopback)
        or not parts.hostname
        or "@" in parts.netloc
        or "#" in template
        or re.search(r"[\s<>\"\\]", template)
    ):
        raise check.fail(
            "signup.confirm_url",
            "'signup.confirm_url' must be an https:// URL containing {token} once (where "
            f"`series serve` answers /confirm/TOKEN), got {quote(template)}",
        )
    return str(template)


def same_site(url: str, site_url: str) -> bool:
    """Whether ``url`` is an absolute http(s) URL with ``site_url``'s scheme, host and
    port: the only place a signup may send a person on to (anything else would be an
    open redirect, or a downgrade from https to http)."""
    try:
        parts = urlsplit(url)
        site = urlsplit(site_url)
        port, site_port = parts.port, site.port
    except ValueError:
        return False
    defaults = {"http": 80, "https": 443}
    return (
        parts.scheme in ("http", "https")
        and parts.scheme == site.scheme
        and parts.hostname is not None
        and parts.hostname == site.hostname
        and (port or defaults[parts.scheme]) == (site_port or defaults.get(site.scheme))
        and "@" not in parts.netloc
        and not re.search(r"[\s\\\x00-\x1f\x7f]", url)
    )


def next_target(url: str, site_url: str) -> str:
    """Where to send a person after a form post: ``url`` itself when it is on the site
    (``same_site``), a path such as ``/thanks/`` resolved against ``site_url``, else ""
    (not followed)."""
    if url.startswith("/") and not url.startswith("//"):
        url = urljoin(site_url.rstrip("/") + "/", url)
    return url if same_site(url, site_url) else ""


def _next(check: _Checker, value: Mapping[str, Any], site_url: str) -> str:
    url = check.typed(value, "next", str, "signup")
    if url is None:
        return ""
    target = next_target(url, site_url)
    if not target:
        site = urlsplit(site_url)
        raise check.fail(
            "signup.next",
            f"'signup.next' must be a URL on {site.scheme}://{site.netloc} (site_url's "
            f"scheme, host and port) or a path such as /thanks/, got {quote(url)}",
        )
    return target


def _origins(check: _Checker, value: Mapping[str, Any]) -> tuple[str, ...]:
    origins = check.typed(value, "allowed_origins", list, "signup") or []
    found = []
    for index, origin in enumerate(origins):
        where = f"'signup.allowed_origins[{index}]'"
        if not isinstance(origin, str):
            raise check.fail("signup.allowed_origins", f"{where} must be a string")
        parts = urlsplit(origin)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
            or "@" in parts.netloc
        ):
            raise check.fail(
                "signup.allowed_origins",
                f"{where} must be an origin such as https://blog.example.com (scheme and "
                f"host, no path), got {quote(origin)}",
            )
        found.append(f"{parts.scheme}://{parts.netloc.lower()}")
    return tuple(found)


def _number(
    check: _Checker,
    value: Mapping[str, Any],
    key: str,
    default: float,
    least: float,
    most: float,
    *,
    whole: bool = False,
) -> float:
    number: Any = value.get(key)
    if number is None:
        return default
    if (
        isinstance(number, bool)
        or not isinstance(number, int | float)
        or (whole and not isinstance(number, int))
        or not least <= number <= most
    ):
        kind = "a whole number" if whole else "a number"
        raise check.fail(
            f"signup.{key}",
            f"'signup.{key}' must be {kind} from {least:g} to {most:g}, got {quote(number)}",
        )
    return float(number)
