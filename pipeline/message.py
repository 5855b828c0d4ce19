"""A rendered email → the complete raw message (multipart/alternative, all headers).

The header block is written here, line by line, from pipeline/headers.py; only the
MIME body (the text and HTML parts) comes from the email package. Its default policy
is kept away from our header values on purpose: it decodes encoded-words it finds in
a value and writes the result back raw, and it turns a long List-Unsubscribe into
encoded-words that mailbox providers cannot read.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from .config import Address
from .headers import (
    ascii_email,
    encode_text,
    format_address,
    header_line,
    list_unsubscribe,
)
from .render import RenderedEmail

ONE_CLICK = "List-Unsubscribe=One-Click"
LINESEP = "\n"


def build_message(
    email: RenderedEmail,
    *,
    sender: Address,
    to: Address,
    unsubscribe_url: str,
    date: datetime,
    reply_to: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> bytes:
    """The message as RFC 5322 bytes, ready for an ``.eml`` file or a relay, with LF
    line ends as local files have them (whatever hands it to SMTP makes them CRLF).
    Headers: From, To, Reply-To, Subject, Date, Message-ID, RFC 8058 one-click
    unsubscribe (``List-Unsubscribe: <https://…>``, never encoded, and
    ``List-Unsubscribe-Post``), then ``extra_headers``. Body: the text part first,
    the HTML part preferred (multipart/alternative).

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
    return head.encode("ascii") + _body(email.text, email.html)


def _body(text: str, html: str) -> bytes:
    """The MIME-Version and Content-Type fields and the multipart/alternative body."""
    body = EmailMessage(policy=policy.default)
    body.set_content(text)
    body.add_alternative(html, subtype="html")
    return body.as_bytes()
