"""Postmark over HTTP: POST /email/batch (up to 500 messages), token from the environment.

Facts relied on (Postmark's API docs): the batch reply is an array in request order,
each item with its own ErrorCode (0 = accepted) inside an HTTP 200; 401 = bad token;
422 = the request as a whole is invalid; 429/500/503 are worth retrying. Item
ErrorCode 406 (inactive recipient: hard bounce, spam complaint or manual
suppression) and 300 (invalid address or request) are never retried. Postmark has
no idempotency keys, so each message carries its delivery key in Metadata and
``lookup`` finds it again through GET /messages/outbound?metadata_delivery_key=….
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any
from urllib.parse import quote

import orjson
import requests

from ..config import Address
from .base import (
    Message,
    Pending,
    Provider,
    ProviderError,
    SendResult,
    SuppressedAs,
    Suppression,
    in_order,
    sendable,
)
from .http import HttpClient

TOKEN_ENV = "POSTMARK_SERVER_TOKEN"
DEFAULT_URL = "https://api.postmarkapp.com"
# Item error codes that can say something about the recipient. 406's text always lists
# every reason a recipient can be inactive ("a hard bounce, a spam complaint, or a
# manual suppression"), so it cannot tell a complaint from a bounce: the subscriber
# becomes "bounced" and the text goes into the error. 300 is any invalid request
# ("Invalid 'From' address", "Zero recipients specified", …): only when it blames the
# 'To' address is it about the subscriber, otherwise bouncing them would punish every
# recipient of a batch for the sender's mistake.
INACTIVE_RECIPIENT = 406
INVALID_REQUEST = 300
RECIPIENT_FIELD = "'to'"
MANAGED_UNSUBSCRIBE = "{{{ pm:unsubscribe }}}"
# SuppressionReason in a stream's suppression dump → the subscriber's status.
SUPPRESSION_STATUS: dict[str, SuppressedAs] = {
    "HardBounce": "bounced",
    "SpamComplaint": "complained",
    "ManualSuppression": "unsubscribed",
}


class PostmarkProvider(Provider):
    name = "postmark"
    # Postmark keeps sent messages 45 days by default and accounts can shorten that:
    # trust "not found" for a week only.
    lookup_window = 7 * 24 * 3600.0
    lookup_batch = 1  # one search request per delivery
    batch_size = 500

    def __init__(
        self,
        *,
        base_url: str | None,
        message_stream: str,
        batch_size: int = 500,
        manage_unsubscribes: bool = False,
        timeout: float = 30,
    ) -> None:
        token = os.environ.get(TOKEN_ENV, "").strip()
        if not token:
            raise ProviderError(
                f"the postmark provider needs a server token: set the {TOKEN_ENV} "
                "environment variable",
                auth=True,
            )
        self.stream = message_stream
        if manage_unsubscribes:
            # Broadcast streams: Postmark puts each recipient's link in place of this
            # and adds its own List-Unsubscribe and List-Unsubscribe-Post headers.
            self.managed_unsubscribe = MANAGED_UNSUBSCRIBE
        # Postmark takes at most 500 messages and 50 MB per batch; long emails need fewer.
        self.batch_size = min(batch_size, 500)
        self.http = HttpClient(
            base_url or DEFAULT_URL,
            headers={
                "X-Postmark-Server-Token": token,
                "Accept": "application/json",
                "Content-Type": "application/json",
            },
            timeout=timeout,
            secrets=(token,),
            name="Postmark",
        )

    def send(self, messages: Sequence[Message], *, batch_key: str) -> list[SendResult]:
        ready, refused = sendable(messages)
        results = self._send(ready) if ready else []
        return in_order(messages, results, refused)

    def _send(self, messages: Sequence[Message]) -> list[SendResult]:
        body = [self._payload(m) for m in messages]
        # orjson: a batch is up to 500 full emails (~10 MB); the stdlib encoder takes
        # longer over that than everything else the send loop does per message.
        response = self.http.request("POST", "/email/batch", data=orjson.dumps(body))
        if response.status_code == 401:
            raise ProviderError(
                f"Postmark refused the server token (401); check {TOKEN_ENV}", auth=True
            )
        if response.status_code == 422:
            detail = _json(response)
            code = detail.get("ErrorCode") if isinstance(detail, dict) else None
            if code == 10:
                raise ProviderError(
                    f"Postmark refused the server token (ErrorCode 10); check {TOKEN_ENV}",
                    auth=True,
                )
            message = detail.get("Message", "") if isinstance(detail, dict) else ""
            raise ProviderError(f"Postmark rejected the batch (422, ErrorCode {code}): {message}")
        self.http.raise_for_transient(response)
        if response.status_code != 200:
            raise ProviderError(f"Postmark answered {response.status_code} to /email/batch")
        items = _json(response)
        if not isinstance(items, list) or len(items) != len(messages):
            raise ProviderError(
                "Postmark's batch reply does not match the request (expected one result per "
                "message); the outcome is unknown",
                maybe_sent=True,
            )
        return [self._result(m, item) for m, item in zip(messages, items, strict=True)]

    def lookup(self, pending: Sequence[Pending]) -> dict[str, str | None]:
        found: dict[str, str | None] = {}
        for key in (p.key for p in pending):
            response = self.http.request(
                "GET",
                "/messages/outbound",
                params={"count": 1, "offset": 0, "metadata_delivery_key": key},
            )
            if response.status_code == 401:
                raise ProviderError("Postmark refused the server token (401)", auth=True)
            self.http.raise_for_transient(response)
            data = _json(response)
            messages = data.get("Messages") if isinstance(data, dict) else None
            if response.status_code != 200 or not isinstance(messages, list):
                raise ProviderError(f"Postmark's message search answered {response.status_code}")
            found[key] = str(messages[0].get("MessageID")) if messages else None
        return found

    def suppressions(self) -> Iterator[Suppression]:
        """The stream's suppression dump (one reply holds all of it)."""
        path = f"/message-streams/{quote(self.stream, safe='')}/suppressions/dump"
        response = self.http.request("GET", path)
        if response.status_code == 401:
            raise ProviderError(
                f"Postmark refused the server token (401); check {TOKEN_ENV}", auth=True
            )
        self.http.raise_for_transient(response)
        data = _json(response)
        entries = data.get("Suppressions") if isinstance(data, dict) else None
        if response.status_code != 200 or not isinstance(entries, list):
            message = data.get("Message", "") if isinstance(data, dict) else ""
            raise ProviderError(
                self.http.scrub(
                    f"Postmark's suppression list answered {response.status_code} {message}"
                ).rstrip()
            )
        for entry in entries:
            reason = str(entry.get("SuppressionReason", ""))
            status = SUPPRESSION_STATUS.get(reason)
            email = entry.get("EmailAddress")
            if status and isinstance(email, str):
                origin = entry.get("Origin") or "unknown origin"
                yield Suppression(email, status, f"Postmark {reason} ({origin})")

    def close(self) -> None:
        self.http.close()

    def prepare(self, message: Message) -> None:
        """The parts as JSON (kept by the message's merge): the longest work of a
        request's body, done while the request before is on its way."""
        message.json_bodies()

    def _payload(self, message: Message) -> dict[str, Any]:
        html, text = message.json_bodies()
        payload: dict[str, Any] = {
            "From": _formatted(message.sender),
            "To": message.to.formatted(),
            "Subject": message.subject,
            "HtmlBody": html,
            "TextBody": text,
            "Headers": [{"Name": k, "Value": v} for k, v in message.headers.items()],
            "Metadata": {"delivery_key": message.key},
            "MessageStream": self.stream,
        }
        if message.tag:
            payload["Tag"] = message.tag[:1000]
        if message.reply_to:
            payload["ReplyTo"] = message.reply_to
        return payload

    def _result(self, message: Message, item: Any) -> SendResult:
        if not isinstance(item, dict):
            return SendResult(message.key, "unknown", error="malformed item in Postmark's reply")
        code = item.get("ErrorCode")
        text = str(item.get("Message", ""))
        if code == 0:
            return SendResult(message.key, "sent", message_id=str(item.get("MessageID", "")))
        if code == INACTIVE_RECIPIENT:
            return SendResult(
                message.key, "failed", error=f"406: {text}", subscriber_status="bounced"
            )
        if code == INVALID_REQUEST:
            status = "bounced" if RECIPIENT_FIELD in text.lower() else None
            return SendResult(message.key, "failed", error=f"300: {text}", subscriber_status=status)
        return SendResult(message.key, "failed", error=f"{code}: {text}")


@lru_cache(maxsize=64)
def _formatted(address: Address) -> str:
    return address.formatted()  # the same sender on every message of a run


def _json(response: requests.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except ValueError:
        return None
