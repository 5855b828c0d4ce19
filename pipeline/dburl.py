"""Reading ``SERIES_DATABASE_URL`` as SQLAlchemy reads it: where its secrets are, how it
may be shown, and which URLs to refuse because their readers would disagree.

SQLAlchemy (``sqlalchemy.engine.make_url``) splits ``scheme://user:password@host…`` with
a password that runs from the first ``:`` after the user name to the first ``@``, so a
password may hold ``/``, ``?``, ``#``, spaces and quotes unencoded, and it is
percent-decoded. The query (after the first ``?`` behind the host) is split on ``&``
only (``urllib.parse.parse_qsl``), ``+`` being a space; each parameter goes to libpq as
a connection keyword (``sqlalchemy.dialects.postgresql._psycopg_common``), so
``?password=…`` and ``?sslpassword=…`` are secrets too. Finding the secrets by this
same reading, and blanking exactly those strings, is what keeps a password from being
shown whatever characters it holds; a pattern alone cannot know where it ends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from urllib.parse import unquote, unquote_plus

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

MASK = "***"
# The libpq keywords whose value is a secret (libpq's "Parameter Key Words").
SECRET_KEYWORDS = frozenset(
    {"password", "sslpassword", "oauth_client_secret", "scram_client_key", "scram_server_key"}
)
# What SQLAlchemy takes as the user part: the user name up to the first ":" (no "/"),
# then the password up to the first "@".
_USERINFO = re.compile(r"[\w+]+://(?P<user>[^:/]*)(?::(?P<password>[^@]*))?@")
_SCHEME = re.compile(r"[\w+]+://")
AMBIGUOUS_AT = (
    "has an @ that may be part of its password (percent-encode an @ in a password, "
    "user name or parameter as %40)"
)


@dataclass(frozen=True)
class ReadUrl:
    """A database URL as SQLAlchemy reads it.

    ``shown``: the URL with every secret replaced by ``***`` (and, for an ambiguous URL,
    everything that may belong to the password); ``secrets``: each secret value both as
    written in the URL and as decoded; ``problem``: why the URL must be refused, in
    words that never quote a secret (None: usable)."""

    shown: str
    secrets: tuple[str, ...]
    problem: str | None


def read_url(url: str) -> ReadUrl:
    """Read ``url`` (a ``scheme://…`` database URL) the way ``make_url`` does. A string
    ``make_url`` cannot take at all gives ``problem`` "not a database URL"."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return ReadUrl(url, (), "not a database URL")
    except ValueError:  # int() of the port
        parsed = None
    scheme = _SCHEME.match(url)
    assert scheme is not None  # make_url matched the same start, or raised ArgumentError
    start = scheme.end()
    userinfo = _USERINFO.match(url)
    secrets: list[str] = []
    head, rest = url[:start], url[start:]
    if url.count("@") > 1 or ("@" in url and userinfo is None):
        # Readers differ on which @ ends the user part (SQLAlchemy and libpq take the
        # first, a person writing p@ss the last), or SQLAlchemy reads none as its end
        # (an @ in the user name, the database name or the query): a password may lie
        # anywhere after the user name, so nothing after it is shown.
        clean = userinfo is not None and "@" not in userinfo["user"]
        user = userinfo["user"] if userinfo is not None and clean else ""
        if user:
            secrets.append(url[start + len(user) + 1 :])
        secrets.append(url[start:])
        if parsed is not None and parsed.password:
            secrets.append(parsed.password)  # SQLAlchemy's reading: up to the first @
        if user and userinfo is not None:
            shown = f"{url[:start]}{user}{'@' if userinfo['password'] is None else ':'}{MASK}"
        else:
            shown = f"{url[:start]}{MASK}"
        return ReadUrl(shown, _forms(secrets), AMBIGUOUS_AT)
    if userinfo is not None and userinfo["password"] is not None:
        raw = userinfo["password"]
        secrets += [raw, unquote(raw)]
        head = f"{url[: userinfo.start('password')]}{MASK}@"
        rest = url[userinfo.end() :]
    authority, question, query = rest.partition("?")
    shown_query, query_secrets, query_problem = _query(query) if question else ("", [], None)
    secrets += query_secrets
    shown = f"{head}{authority}{question}{shown_query}"
    problem = "has a port that is not a number" if parsed is None else query_problem
    if parsed is not None and parsed.password is not None and parsed.password not in secrets:
        # Not read as expected (cannot happen with the SQLAlchemy this was written
        # for): show nothing after the scheme rather than guess.
        secrets.append(parsed.password)
        shown = f"{url[:start]}{MASK}"
    return ReadUrl(shown, _forms(secrets), problem)


def _query(query: str) -> tuple[str, list[str], str | None]:
    """(the query as shown, its secret values, a problem) — split as ``parse_qsl``
    splits it. A parameter libpq does not know (or one without ``=``) is a problem; when
    the query holds a secret such a parameter is shown as *** too, as it may be the
    tail of a password with an unencoded ``&``."""
    known = _libpq_keywords()
    pieces = query.split("&")
    holds_secret = any(unquote_plus(p.partition("=")[0]).lower() in SECRET_KEYWORDS for p in pieces)
    shown: list[str] = []
    secrets: list[str] = []
    unknown: list[str] = []
    seen: set[str] = set()
    twice = False
    for piece in pieces:
        if not piece:  # parse_qsl skips it
            shown.append(piece)
            continue
        raw_key, equals, raw_value = piece.partition("=")
        key = unquote_plus(raw_key)
        if key.lower() in SECRET_KEYWORDS:
            secrets += [raw_value, unquote_plus(raw_value)]
            shown.append(f"{raw_key}={MASK}")
        elif holds_secret and (key not in known or not equals):
            shown.append(MASK)
        else:
            shown.append(piece)
        if key not in known or not equals:
            unknown.append(key)
        elif key in seen and key != "host":  # SQLAlchemy joins repeated hosts (multi-host)
            twice = True
        seen.add(key)
    problem = None
    if unknown:
        # Named unless it may be the tail of a password ("…&tail" after password=…).
        names = [k for k in unknown if not holds_secret or k.lower() in known]
        named = f" ({', '.join(repr(k) for k in names)})" if names else ""
        problem = (
            f"has a parameter after its ? that is not a libpq connection keyword{named}: "
            "write each as keyword=value, e.g. sslmode=require, and an & in a password as %26"
        )
    elif twice:
        problem = "gives a parameter twice after its ?"
    return "&".join(shown), secrets, problem


@cache
def _libpq_keywords() -> frozenset[str]:
    """The connection keywords this libpq takes (its own list: ``PQconndefaults``)."""
    from psycopg import pq

    return frozenset(o.keyword.decode() for o in pq.Conninfo.get_defaults())


def _forms(values: list[str]) -> tuple[str, ...]:
    return tuple(v for v in dict.fromkeys(values) if v)
