"""A rendered email → the complete raw message (multipart/alternative, all headers).

The header block is written here, line by line, from pipeline/headers.py, and the
MIME body by pipeline/mime.py: raw bytes, as an HTTP provider's request is built from
the rendered part, not through the email package (whose object model costs
milliseconds per message, and whose default header policy decodes encoded-words it
finds in a value and writes the result back raw).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from email.utils import format_datetime, make_msgid
from typing import Protocol

from .config import Address
from .headers import (
    ascii_email,
    encode_text,
    format_address,
    header_line,
    list_unsubscribe,
)
from .mime import alternative

ONE_CLICK = "List-Unsubscribe=One-Click"
LINESEP = "\n"


class Content(Protocol):
    """What a message says: a ``render.RenderedEmail`` or a ``providers.Message``."""

    @property
    def subject(self) -> str: ...
    @property
    def html(self) -> str: ...
    @property
    def text(self) -> str: ...


def build_message(
    email: Content,
    *,
    sender: Address,
    to: Address,
    unsubscribe_url: str,
    date: datetime,
    reply_to: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
) -> bytes:
    """The message as RFC 5322 bytes, ready for an ``.eml`` file or a relay, with LF
    line ends as local files have them (whatever hands it to SMTP makes them CRLF).
    Headers: From, To, Reply-To, Subject, Date, Message-ID, RFC 8058 one-click
    unsubscribe (``List-Unsubscribe: <https://…>``, never encoded, and
    ``List-Unsubscribe-Post``), then ``extra_headers``. Body: the text part first,
    the HTML part preferred (multipart/alternative), each in the transfer encoding
    that keeps it smallest (pipeline/mime.py); ``body``, when given, is that MIME body
    already built from ``email`` (``mime.alternative_of``).

    Raises MessageBuildError when this reader's message cannot be built (an address
    that cannot be sent, a header that cannot be one field)."""
    domain = ascii_email(sender.email).rpartition("@")[2]
    fields = [
        ("From", sender.formatted()),
        ("To", to.formatted()),
        ("Reply-To", format_address(reply_to) if reply_to else None),
        ("Subject", encode_text(email.subject)),
        ("Date", format_datetime(date)),
        ("Message-ID", make_msgid(domain=domain)),
        # Only bulk mail has one; a double opt-in confirmation (unsubscribe_url "") not.
        ("List-Unsubscribe", list_unsubscribe(f"<{unsubscribe_url}>") if unsubscribe_url else None),
        ("List-Unsubscribe-Post", ONE_CLICK if unsubscribe_url else None),
        *(extra_headers or {}).items(),
    ]
    head = "".join(header_line(name, value, LINESEP) for name, value in fields if value is not None)
    return head.encode("ascii") + (body or alternative(email.text, email.html))
