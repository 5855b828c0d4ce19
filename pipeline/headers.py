"""Header fields for the world: addresses, display names and subjects as raw lines.

Every address, name and subject that leaves series goes through this module, whether
it becomes a line of an outbox or preview ``.eml`` file or a field of a provider's
JSON or form request. The rules, and the RFCs they follow:

- A header field is ASCII and one logical line: no CR, LF or other control character
  in any value, whoever typed it (RFC 5322 §2.2). Long fields fold only at whitespace,
  and no line exceeds 998 octets (RFC 5322 §2.1.1, §2.2.3).
- A display name is one phrase: a quoted-string when it is printable ASCII, else
  RFC 2047 encoded-words. A name that merely looks like an encoded-word is encoded
  too, so no decoder can turn it into a second recipient (RFC 2047 §5).
- An address's domain goes out in its ASCII (A-label) form (RFC 5890, 5891); the
  local part is never encoded. A non-ASCII local part would need SMTPUTF8 (RFC 6531),
  which series does not use: such an address cannot be sent.
- A subject is text: written as is when it is printable ASCII, else as encoded-words
  that decode to exactly that text. Text that happens to look like an encoded-word
  is encoded as well, so mail programs show what the writer typed.

No value written here goes through the email package's header policy: its default
policy decodes encoded-words found in a value and writes the result back raw, and
folds a long List-Unsubscribe into encoded-words. (The checks use its decoders, the
legacy RFC 2047 one and the modern parser that also reads RFC 2231 language tags, to
see what a mail program would show; an encoded-word in a charset Python does not know
is refused, since each mail program decodes it its own way.)
"""

from __future__ import annotations

import base64
import codecs
import re
from functools import lru_cache
from urllib.parse import quote, urlsplit, urlunsplit

from .errors import MessageBuildError

# C0 controls (TAB included), DEL, C1 controls (NEL, U+0085, among them) and the two
# Unicode line and paragraph separators: none has a place in a one-line field.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROLS = re.compile(f"{CONTROL.pattern}+")
_SPACES = re.compile(" {2,}")
# What str.splitlines() breaks at: the ones to call a line break in messages.
LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
MAX_LINE = 998  # octets per line, not counting CRLF (RFC 5322 §2.1.1)
FOLD_AT = 78  # the length a line should keep to where whitespace allows
CRLF = "\r\n"
# RFC 2047 §2: an encoded-word is at most 75 characters. 45 bytes of UTF-8 are 60
# characters of base64; with "=?utf-8?b?" and "?=" that is 72.
_CHUNK_BYTES = 45
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
# RFC 5322 §3.2.3 atext and dots: the local parts series can send.
_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+")
# Words a phrase may hold unquoted (RFC 5322 §3.2.3 atext, and letters of any script).
_WORDS = re.compile(r"[\w!#$%&'*+/=?^`{|}~ -]*")
_FIELD_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 §3.6.8 ftext
# An RFC 2047 encoded-word's charset, without an RFC 2231 language tag (*en).
_ENCODED_WORD = re.compile(r"=\?([^?*\s]+)(?:\*[^?\s]*)?\?[bBqQ]\?[^?\s]*\?=")


def control_character(text: str) -> str | None:
    """The first control character in ``text``, described for a person ("a line break
    (U+000A)", "a control character (U+0000)"), or None when there is none."""
    found = CONTROL.search(text)
    if found is None:
        return None
    char = found.group()
    kind = "a line break" if char in LINE_BREAKS else "a control character"
    if char == "\t":
        kind = "a tab"
    return f"{kind} (U+{ord(char):04X})"


def line_problem(text: str) -> str | None:
    """Why ``text`` cannot be a one-line field (a subject, a title, a name in the
    configuration), in words that follow the field's name, or None when it can. A
    control character counts also when an encoded-word in the text decodes to one."""
    found = control_character(text)
    if found is not None:
        if found.startswith("a line break"):
            return f"must be one line: it contains {found}"
        return f"contains {found}; remove it"
    if "=?" not in text:
        return None
    for charset in _ENCODED_WORD.findall(text):
        try:
            codecs.lookup(charset)
        except LookupError:
            return (
                f"contains an encoded-word (=?…?=) in an unknown charset ({charset}), which "
                "mail programs decode each their own way; write the text itself"
            )
    found = control_character(decoded_words(text)) or control_character(_modern_decoded(text))
    if found is not None:
        return f"contains an encoded-word (=?…?=) that decodes to {found}; write the text itself"
    return None


def _modern_decoded(text: str) -> str:
    """``text`` as Python's modern header parser (``email.policy.default``) reads it: it
    also decodes RFC 2231 language tags (``=?utf-8*en?q?…?=``), which the legacy decoder
    of ``decoded_words`` leaves alone."""
    import email
    import email.policy

    try:
        parsed = email.message_from_string(f"Subject: {text}\n\n", policy=email.policy.default)
        return str(parsed["Subject"])
    except Exception:  # a parser that gives up has decoded nothing
        return text


def one_line(text: str) -> str:
    """``text`` with every run of control characters (line breaks, tabs, NUL, DEL, C1,
    U+2028/U+2029) replaced by one space, and no space at either end: what a name
    typed into a CSV cell or a form becomes before it is stored or sent."""
    return _CONTROLS.sub(" ", text).strip() if CONTROL.search(text) else text.strip()


def clean_name(name: str) -> str:
    """A person's name as stored and sent: ``one_line``, and runs of spaces made one
    (mail programs show a phrase's spaces as one anyway)."""
    return _SPACES.sub(" ", one_line(name))


def decoded_words(text: str) -> str:
    """``text`` as a mail program would show it, every RFC 2047 encoded-word in it
    decoded; ``text`` itself when it has none or they do not decode. For checks: a
    subject that looks harmless can decode to a line break."""
    from email.errors import HeaderParseError
    from email.header import decode_header, make_header

    if "=?" not in text:
        return text
    try:
        return str(make_header(decode_header(text)))
    except (HeaderParseError, LookupError, UnicodeError, ValueError):
        return text


def ascii_email(address: str) -> str:
    """``local@domain`` as it can go on the wire: the domain in its ASCII form
    (``anna@bücher.example`` → ``anna@xn--bcher-kva.example``, RFC 5890/5891 via
    email-validator's IDNA rules), the local part unchanged.

    Raises MessageBuildError, naming the address and why, when the local part is not
    plain ASCII (sending it would need SMTPUTF8, RFC 6531) or the domain is not valid."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise MessageBuildError(f"{address!r} is not an email address")
    problem = smtputf8_problem(address)
    if problem is not None:
        raise MessageBuildError(f"{address}: {problem}")
    if not _LOCAL_PART.fullmatch(local):
        raise MessageBuildError(f"{address}: the part before the @ is not a plain address")
    return f"{local}@{ascii_domain(domain)}"


@lru_cache(maxsize=4096)
def ascii_domain(domain: str) -> str:
    """A domain in ASCII: an IDN becomes its A-labels (``xn--…``), lower case.

    Raises MessageBuildError when it is not a valid domain."""
    from email_validator import EmailNotValidError, validate_email

    try:
        checked = validate_email(f"postmaster@{domain}", check_deliverability=False)
    except EmailNotValidError as exc:
        raise MessageBuildError(f"the domain {domain!r} is not valid: {exc}") from None
    return str(checked.ascii_domain).lower()


def smtputf8_problem(address: str) -> str | None:
    """Why ``address`` cannot be sent by series (its local part is not ASCII), or None.
    Import, ``subscribers add`` and ``test-send --to`` refuse such addresses with this
    reason; one already stored fails its own deliveries with it."""
    local = address.rpartition("@")[0]
    if local.isascii():
        return None
    return (
        "the part before the @ is not ASCII; mail with such an address needs SMTPUTF8 "
        "(RFC 6531), which series does not use"
    )


def display_name(name: str) -> str:
    """A display name as one RFC 5322 phrase, ASCII only: ``"Ann \\"Jo\\" Lee"`` (a
    quoted-string) for printable ASCII, else RFC 2047 encoded-words (UTF-8, base64).
    Control characters become spaces first (see ``clean_name``); a name containing
    ``=?`` is always encoded, so it can never be read as an encoded-word. Empty for a
    name that is empty once cleaned."""
    text = clean_name(name)
    if not text:
        return ""
    if _PRINTABLE.fullmatch(text) and "=?" not in text and _words_fit(text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return encoded_words(text)


def recipient_name(name: str) -> str:
    """A name for a provider's separate name field that the provider may write into
    the To header unquoted (SendGrid's ``personalizations[].to[].name``: a comma or a
    semicolon there is documented to break the address). Words of letters, digits and
    RFC 5322 atext go as they are, so nobody sees quotes; anything else (also a word
    too long to fold) goes as ``display_name``'s quoted or encoded phrase."""
    text = clean_name(name)
    if _WORDS.fullmatch(text) and "=?" not in text and _words_fit(text):
        return text
    return display_name(text)


@lru_cache(maxsize=1024)  # a batch repeats its sender, subject and fixed fields
def format_address(email: str, name: str = "") -> str:
    """One mailbox for a From, To or Reply-To field (RFC 5322 §3.4), ASCII only:
    ``"Name" <local@domain>``, ``=?utf-8?b?…?= <local@xn--…>`` or, without a name,
    ``local@domain``. Raises MessageBuildError for an address that cannot be sent."""
    address = ascii_email(email)
    phrase = display_name(name)
    return f"{phrase} <{address}>" if phrase else address


@lru_cache(maxsize=1024)  # a batch repeats its sender, subject and fixed fields
def encode_text(text: str) -> str:
    """An unstructured field's value (Subject, RFC 5322 §3.6.5) in ASCII: the text
    itself when it is printable ASCII without ``=?``, else encoded-words that decode to
    exactly it (RFC 2047). Control characters become spaces first."""
    text = one_line(text)
    if _PRINTABLE.fullmatch(text) and "=?" not in text and _words_fit(text):
        return text
    return encoded_words(text)


def encoded_words(text: str) -> str:
    """``text`` as RFC 2047 encoded-words (UTF-8, base64), each at most 75 characters,
    separated by spaces. Every character, spaces included, is inside a word, and a
    character is never split across two words, so decoding gives back ``text``.
    Words break before a space of the text where there is one (so a reader that wrongly
    keeps the space between encoded-words, as Python 3.11's address parser does, only
    doubles a space instead of splitting a word)."""
    words = []
    chunk = ""
    for char in text:
        while chunk and len((chunk + char).encode("utf-8")) > _CHUNK_BYTES:
            cut = chunk.rfind(" ")
            cut = cut if cut > 0 else len(chunk)
            words.append(chunk[:cut])
            chunk = chunk[cut:]
        chunk += char
    if chunk:
        words.append(chunk)
    return " ".join(
        "=?utf-8?b?" + base64.b64encode(word.encode("utf-8")).decode("ascii") + "?="
        for word in words
    )


@lru_cache(maxsize=1024)  # a batch repeats its sender, subject and fixed fields
def header_line(name: str, value: str, linesep: str = CRLF) -> str:
    """``Name: value`` and ``linesep``, folded (a line break before a space) to 78
    characters where whitespace allows. ``value`` must already be ASCII without control characters
    (the encoders above make it so).

    Raises MessageBuildError for a field that cannot be written: a bad field name, a
    value with non-ASCII or control characters, or a line over 998 octets."""
    if not _FIELD_NAME.fullmatch(name):
        raise MessageBuildError(f"{name!r} is not a header field name")
    if not value.isascii() or CONTROL.search(value):
        found = control_character(value) or "non-ASCII text"
        raise MessageBuildError(f"the {name} header cannot be written: it contains {found}")
    lines = []
    line = f"{name}:"
    for index, word in enumerate(value.split(" ")):
        # Never before the first word: "List-Unsubscribe: <https://…>" stays one line.
        if index and word and len(line) + 1 + len(word) > FOLD_AT:
            lines.append(line)
            line = ""
        line += f" {word}"
    lines.append(line)
    if any(len(part) > MAX_LINE for part in lines):
        raise MessageBuildError(
            f"the {name} header cannot be written: a part of it without spaces is longer "
            f"than the {MAX_LINE} characters a line may hold"
        )
    return linesep.join(lines) + linesep


def ascii_url(url: str) -> str:
    """A URL fit for a header (List-Unsubscribe, RFC 2369 and 8058): the host in ASCII
    (IDNA), any other non-ASCII character percent-encoded (RFC 3987 §3.1)."""
    if url.isascii():
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = parts.netloc
    if host and not host.isascii():
        netloc = netloc.replace(host, ascii_domain(host))
    safe = "".join(chr(c) for c in range(0x21, 0x7F))
    return urlunsplit(
        (
            parts.scheme,
            quote(netloc, safe=safe),
            quote(parts.path, safe=safe),
            quote(parts.query, safe=safe),
            quote(parts.fragment, safe=safe),
        )
    )


def list_unsubscribe(value: str) -> str:
    """A List-Unsubscribe value (``<https://…>``, or several such, comma-separated) with
    each URI in ASCII, so that it is written as it is: never encoded (RFC 2369, 8058)."""
    return re.sub(r"<([^<>]*)>", lambda m: f"<{ascii_url(m.group(1))}>", value)


def _words_fit(text: str) -> bool:
    """Whether every whitespace-free run of ``text`` fits on a folded line."""
    return all(len(word) <= MAX_LINE - 30 for word in text.split(" "))
