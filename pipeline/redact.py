"""Keeping secrets and addresses out of what series prints and stores: the one place.

Three kinds of text pass through here:

- **Secrets** (provider keys, the link-signing keys, the database password) are known
  from the environment, the only place they come from. ``scrub_secrets`` blanks every
  one of them wherever it appears, also percent-encoded, and anything shaped like a
  credential whatever its value: an ``Authorization`` value (``Basic …``, ``Bearer
  …``), a password in a URL's user part, a ``password=`` parameter of a URL or of a
  libpq keyword DSN (``host=db password=…``).
- **Provider texts** (an error message, a bounce reason) may echo the request, and so
  a key or a reader's address. ``provider_text`` is applied to every one of them
  before it is printed or stored (``providers.base`` calls it when it builds a
  ``SendResult``, a ``ProviderError`` or a ``Suppression``): secrets are blanked and
  addresses become ``[address]``, so an audit reason or a delivery's last error never
  names a person, and erasing someone leaves no copy of their address in other rows.
- **Terminal text** (names and addresses read from a list): ``terminal_text`` shows
  control characters as escapes, so a name cannot move the cursor, recolour or retitle
  the terminal of the person reading ``series subscribers list``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, unquote

DATABASE_URL_ENV = "SERIES_DATABASE_URL"
# Every variable a secret comes from: the providers' keys (providers/*.py read them),
# the link-signing keys (tokens.py). A test checks that each provider's is listed.
SECRET_ENVS = (
    "POSTMARK_SERVER_TOKEN",
    "RESEND_API_KEY",
    "SENDGRID_API_KEY",
    "MAILGUN_API_KEY",
    "SERIES_SECRET_KEY",
    "SERIES_PREVIOUS_SECRET_KEY",
)
MASK = "***"
ADDRESS_MASK = "[address]"
# A secret shorter than this is masked where it stands as a credential (a URL's
# password, password=…) but not wherever its letters happen to occur in a text.
SHORTEST_SECRET = 4

# scheme://user:password@host: the password runs to the last @ before the host, so a
# password with an unencoded @ is masked whole, not cut at its first @.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^:@/\s?#]*:)[^\s/?#]*@")
# password=… as a URL query parameter or a libpq keyword (quoted or not).
_PASSWORD_PARAM = re.compile(
    r"(?P<head>\b(?:ssl)?pass(?:word|wd)?\s*=\s*)(?:'(?:[^'\\]|\\.)*'?|[^\s&;#]*)",
    re.IGNORECASE,
)
_AUTHORIZATION = re.compile(r"(?P<head>\b(?:Basic|Bearer|Token)\s+)[A-Za-z0-9._~+/=:-]{6,}")
# An address as a provider may write it: a local part of atom characters or a quoted
# string, an @, a domain with at least one dot (IDN letters included).
_ADDRESS = re.compile(
    r"""(?:"[^"\r\n]*"|[\w.!#$%&'*+/=?^`{|}~-]+)@[\w-]+(?:\.[\w-]+)+""", re.UNICODE
)
# What a terminal acts on: C0 and C1 controls, DEL, line and paragraph separators, and
# the bidirectional overrides that make text display in another order than it is.
_TERMINAL_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def mask_database_url(url: str) -> str:
    """``url`` as it may be shown: every password in it replaced by ``***``, in each
    form libpq and SQLAlchemy take: ``user:password@host`` (also with an unencoded
    ``@`` in the password), ``?password=…`` and a keyword DSN's ``password=…``."""
    masked = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", url)
    return _PASSWORD_PARAM.sub(lambda m: f"{m['head']}{MASK}", masked)


def database_secrets(url: str) -> list[str]:
    """The password values a database URL or keyword DSN holds (as written and
    percent-decoded), for blanking them wherever a driver might echo them."""
    found: list[str] = []
    match = _URL_PASSWORD.search(url)
    if match:
        start = match.end("head")
        found.append(url[start : match.end() - 1])
    for param in _PASSWORD_PARAM.finditer(url):
        value = param.group(0)[len(param["head"]) :]
        found.append(value.strip("'"))
    values = []
    for value in found:
        values += [value, unquote(value)]
    return [v for v in dict.fromkeys(values) if v]


def environment_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """Every secret set in the environment: keys, and the database URL's password."""
    env = os.environ if environ is None else environ
    values = [env.get(name, "").strip() for name in SECRET_ENVS]
    values += database_secrets(env.get(DATABASE_URL_ENV, ""))
    return [v for v in values if v]


def scrub_secrets(text: str, extra: Iterable[str] = ()) -> str:
    """``text`` with every secret of the environment (and ``extra``) blanked, also
    percent-encoded, and every credential-shaped value masked whatever it is."""
    secrets = {s for s in (*environment_secrets(), *extra) if len(s) >= SHORTEST_SECRET}
    for secret in sorted(secrets, key=len, reverse=True):
        for form in {secret, quote(secret, safe=""), quote(secret)}:
            text = text.replace(form, MASK)
    text = _AUTHORIZATION.sub(lambda m: f"{m['head']}{MASK}", text)
    return mask_database_url(text)


def scrub_addresses(text: str) -> str:
    """``text`` with every email address in it replaced by ``[address]``."""
    return _ADDRESS.sub(ADDRESS_MASK, text) if "@" in text else text


def provider_text(text: str, extra: Iterable[str] = ()) -> str:
    """A provider's words as series prints and stores them: no secret, no address, and
    no control character a terminal would act on (shown as escapes)."""
    return terminal_text(scrub_addresses(scrub_secrets(text, extra)))


def terminal_text(text: str) -> str:
    """``text`` safe to print in a terminal: each control character (an escape sequence
    starts with one) shown as a visible escape such as ``\\x1b`` instead of acted on."""
    if not _TERMINAL_CONTROL.search(text):
        return text
    return _TERMINAL_CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)
