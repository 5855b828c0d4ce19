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

import base64
import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, quote_plus, unquote, unquote_plus

from .dburl import MASK, read_url

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
ADDRESS_MASK = "[address]"
NAME_MASK = "[name]"
# A secret shorter than this is masked where it stands as a credential (a URL's
# password, password=…) but not wherever its letters happen to occur in a text.
SHORTEST_SECRET = 4
_SCHEME = re.compile(r"[\w+]+://")

# scheme://user:password@host in free text: the password runs to the last @ of the
# segment, so a password with an unencoded @ is masked whole, not cut at its first @.
# (The configured database URL is read as SQLAlchemy reads it: ``dburl.read_url``.)
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^:@/\s?#]*:)[^\s/?#]*@")
# password=… (and libpq's other secret keywords) as a URL query parameter or a libpq
# keyword, quoted or not; a value already masked stays as it is, with what follows it.
_PASSWORD_PARAM = re.compile(
    r"(?P<head>\b(?:(?:ssl)?pass(?:word|wd)?|oauth_client_secret|scram_(?:client|server)_key)"
    r"\s*=\s*)(?:\*\*\*|'(?:[^'\\]|\\.)*'?|[^\s&#]*)",
    re.IGNORECASE,
)
_AUTHORIZATION = re.compile(r"(?P<head>\b(?:Basic|Bearer|Token)\s+)[A-Za-z0-9._~+/=:-]{6,}")
# An address as a provider may write it: a local part of atom characters or a quoted
# string, an @, a domain with at least one dot (IDN letters included).
_ADDRESS = re.compile(
    r"""(?:"[^"\r\n]*"|[\w.!#$%&'*+/=?^`{|}~-]+)@[\w-]+(?:\.[\w-]+)+""", re.UNICODE
)
# RFC 2047 encoded-words (and the spaces between adjacent ones).
_ENCODED_WORDS = re.compile(r"=\?[^?\s]+\?[BbQq]\?[^?\s]*\?=(?:\s*=\?[^?\s]+\?[BbQq]\?[^?\s]*\?=)*")
# A run of URL characters holding a percent-encoded @ (an address in a query string).
_PERCENT_RUN = re.compile(r"[\w.!$'*+%~-]*%(?:25)*40[\w.!$'*+%~-]*", re.IGNORECASE)
# A display name before <[address]>: a quoted string, or words back to a delimiter.
_DISPLAY_NAME = re.compile(
    r"""(?:"(?:[^"\\]|\\.)*"|\[name\]|[^\s<>:;,"'()\[\]{}]+(?:[ \t]+[^\s<>:;,"'()\[\]{}]+)*)"""
    r"[ \t]*<\[address\]>"
)
# What a terminal acts on: C0 and C1 controls, DEL, line and paragraph separators, and
# the bidirectional overrides that make text display in another order than it is.
_TERMINAL_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def mask_database_url(url: str) -> str:
    """``url`` (the configured ``SERIES_DATABASE_URL``) as it may be shown: every
    password replaced by ``***``. A ``scheme://`` URL is read as SQLAlchemy reads it
    (``dburl.read_url``: the password exactly where SQLAlchemy finds it, whatever it
    holds; ``?password=…`` and libpq's other secret parameters); anything else, such as
    a libpq keyword DSN pasted by mistake, by pattern (``password=…``)."""
    if _SCHEME.match(url):
        url = read_url(url).shown
    return mask_credentials(url)


def mask_credentials(text: str) -> str:
    """``text`` with every credential-shaped value masked whatever it is: the password
    of a ``scheme://user:password@`` URL (to the segment's last ``@``), and the value of
    ``password=``, ``sslpassword=`` and libpq's other secret keywords."""
    masked = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", text)
    return _PASSWORD_PARAM.sub(lambda m: f"{m['head']}{MASK}", masked)


def database_secrets(url: str) -> list[str]:
    """The secret values a database URL or keyword DSN holds, each as written and as
    decoded (as SQLAlchemy reads a URL, ``dburl.read_url``; by pattern otherwise), for
    blanking them wherever a driver might echo them."""
    found: list[str] = list(read_url(url).secrets) if _SCHEME.match(url) else []
    match = _URL_PASSWORD.search(url)
    if match:
        start = match.end("head")
        found.append(url[start : match.end() - 1])
    for param in _PASSWORD_PARAM.finditer(url):
        value = param.group(0)[len(param["head"]) :]
        found.append(value.strip("'"))
    values = []
    for value in found:
        values += [value, unquote(value), unquote_plus(value)]
    return [v for v in dict.fromkeys(values) if v and v != MASK]


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
        for form in {secret, quote(secret, safe=""), quote(secret), quote_plus(secret)}:
            text = text.replace(form, MASK)
    text = _AUTHORIZATION.sub(lambda m: f"{m['head']}{MASK}", text)
    return mask_credentials(text)


def scrub_addresses(text: str) -> str:
    """``text`` as it may be stored: every email address replaced by ``[address]``,
    also one percent-encoded (``ann%40example.com``, as a page URL may hold it), and
    what names the person next to one: an RFC 2047 encoded-word anywhere (a header
    echoed as sent: ``=?utf-8?b?…?=``, base64 of a name) becomes ``[name]``, and a
    display name before ``<[address]>`` (quoted, or the words back to the previous
    ``:``, ``,``, ``;``, quote or bracket) is dropped."""
    if "=?" in text:
        text = _ENCODED_WORDS.sub(NAME_MASK, text)
    if "%40" in text.upper():
        text = _PERCENT_RUN.sub(_percent_address, text)
    if "@" in text:
        text = _ADDRESS.sub(ADDRESS_MASK, text)
    if f"<{ADDRESS_MASK}>" in text:
        text = _DISPLAY_NAME.sub(f"{ADDRESS_MASK}", text)
    return text


def _percent_address(match: re.Match[str]) -> str:
    decoded = match.group()
    for _ in range(3):  # also encoded twice (%2540)
        decoded = unquote_plus(decoded)
    return _ADDRESS.sub(ADDRESS_MASK, decoded) if _ADDRESS.search(decoded) else match.group()


def scrub_person(text: str, email: str, name: str) -> str:
    """For erasure: ``text`` with ``email`` and every other address scrubbed as
    ``scrub_addresses`` does, and ``name`` (two characters or more) replaced by
    ``[name]`` in any letter case and as it may be encoded: percent (``%C3%A9``, ``+``
    for a space), JSON (``\\u00e9``), RFC 2047 (dropped whole, see above) or base64."""
    text = scrub_addresses(text)
    if email and email.lower() in text.lower():
        text = re.sub(re.escape(email), ADDRESS_MASK, text, flags=re.IGNORECASE)
    name = " ".join(name.split())
    if len(name) < 2:
        return text
    text = text.replace(base64.b64encode(name.encode()).decode().rstrip("="), NAME_MASK)
    # Each spelling too: a letter's other case may be longer (ß, SS).
    for spelling in dict.fromkeys((name, name.upper(), name.lower())):
        text = _name_pattern(spelling).sub(NAME_MASK, text)
    return text


def _name_pattern(name: str) -> re.Pattern[str]:
    """Each character of ``name`` as itself (any case), percent-encoded (UTF-8) or as a
    JSON escape; a space as any run of spaces, ``+``, ``%20`` or ``\\u0020``."""
    parts = []
    for char in name:
        if char == " ":
            parts.append(r"(?:\s|\+|%20|\\u0020)+")
            continue
        forms = {re.escape(char)}
        for variant in {char, char.lower(), char.upper()}:
            if len(variant) != 1:
                continue
            forms.add(re.escape("".join(f"%{b:02X}" for b in variant.encode())))
            code = ord(variant)
            if code > 0xFFFF:
                high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + (code & 0x3FF)
                forms.add(re.escape(f"\\u{high:04x}\\u{low:04x}"))
            else:
                forms.add(re.escape(f"\\u{code:04x}"))
        parts.append(f"(?:{'|'.join(sorted(forms))})")
    return re.compile(rf"(?<!\w){''.join(parts)}(?!\w)", re.IGNORECASE)


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
