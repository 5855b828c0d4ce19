"""A rendered email → a complete MIME message (multipart/alternative, all headers)."""

from __future__ import annotations

from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from .config import Address
from .render import RenderedEmail


def build_message(
    email: RenderedEmail,
    *,
    sender: Address,
    to: Address,
    unsubscribe_url: str,
    date: datetime,
    reply_to: str | None = None,
    extra_headers: dict[str, str] | None = None,
) -> EmailMessage:
    """Headers include RFC 8058 one-click unsubscribe; text first, HTML preferred."""
    message = EmailMessage()
    message["From"] = sender.formatted()
    message["To"] = to.formatted()
    if reply_to:
        message["Reply-To"] = reply_to
    message["Subject"] = email.subject
    message["Date"] = format_datetime(date)
    message["Message-ID"] = make_msgid(domain=sender.email.rsplit("@", 1)[-1])
    message["List-Unsubscribe"] = f"<{unsubscribe_url}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    for name, value in (extra_headers or {}).items():
        message[name] = value
    message.set_content(email.text)
    message.add_alternative(email.html, subtype="html")
    return message
