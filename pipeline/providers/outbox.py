"""The default provider: each message becomes a complete .eml file under outbox/.

No server and no credentials. Files are written whole or not at all (a temporary
name, then a rename), so a file that exists is a message that was "sent", which is
also how ``lookup`` resolves deliveries whose outcome is unknown.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from ..errors import MessageBuildError
from ..message import build_message
from ..mime import alternative_of, filled_part
from .base import Message, Pending, Provider, SendResult


class OutboxProvider(Provider):
    name = "outbox"
    batch_size = 500
    keeps_suppressions = False

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def send(self, messages: Sequence[Message], *, batch_key: str) -> list[SendResult]:
        self.directory.mkdir(parents=True, exist_ok=True)
        results = []
        for message in messages:
            path = self.directory / _file_name(message)
            try:
                raw = build_message(
                    message,
                    sender=message.sender,
                    to=message.to,
                    unsubscribe_url=message.headers.get("List-Unsubscribe", "").strip("<>"),
                    date=datetime.now(UTC),
                    reply_to=message.reply_to,
                    extra_headers={
                        name: value
                        for name, value in message.headers.items()
                        if name not in ("List-Unsubscribe", "List-Unsubscribe-Post")
                    }
                    | {"X-Series-Delivery": message.key},
                    body=_body(message),
                )
            except MessageBuildError as exc:
                # This reader only: the others' files are written all the same.
                results.append(SendResult(message.key, "failed", error=f"not sent: {exc}"))
                continue
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                fh.write(raw)
            os.replace(tmp, path)
            results.append(SendResult(message.key, "sent", message_id=path.name))
        return results

    def lookup(self, pending: Sequence[Pending]) -> dict[str, str | None]:
        found: dict[str, str | None] = {p.key: None for p in pending}
        if self.directory.is_dir():
            wanted = set(found)
            for path in self.directory.glob("*.eml"):
                key = path.stem.rsplit("-", 1)[-1]
                if key in wanted:
                    found[key] = path.name
        return found


def _body(message: Message) -> bytes | None:
    """The message's MIME body from its compiled part, as the HTTP providers' requests
    are made from it: the fixed lines are encoded once per part, only those holding
    this reader's fields per message. None when the message has no compiled part (it
    is then encoded whole)."""
    merge = message.merge
    if merge is None:
        return None
    html_values = merge.escaped
    if html_values is None:
        html_values = {name: merge.value(name, in_html=True) for name in merge.values}
    text = filled_part(merge.template.text, merge.values, "plain", message.text)
    html = filled_part(merge.template.html, html_values, "html", message.html)
    if text is None or html is None:
        return None
    return alternative_of([text, html])


def _file_name(message: Message) -> str:
    readable = re.sub(r"[^A-Za-z0-9@._+-]", "_", f"{message.tag}-{message.to.email}")
    return f"{readable}-{message.key}.eml"
