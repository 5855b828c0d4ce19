"""Resend over HTTP: POST /emails/batch (up to 100 emails), API key from the environment.

Facts relied on (Resend's API docs: errors, idempotency keys, rate limits, batch
validation modes, suppressions):

- A batch carries ``Idempotency-Key`` (1–256 characters, kept 24 hours): the same key
  with the same body is answered from the first request without sending again; the
  same key with another body is 409 ``invalid_idempotent_request``; a repeat while the
  first is still being processed is 409 ``concurrent_idempotent_requests``.
- ``x-batch-validation: permissive``: valid emails are queued and invalid ones come
  back as ``errors: [{index, message}]`` beside ``data: [{id}]`` (the ids of the
  emails created, in request order). The default, strict, would reject a whole batch
  of 100 readers for one malformed address.
- Errors are ``{"statusCode", "name", "message"}``: 400/422 the request is invalid;
  401/403 the key is missing, invalid or not allowed to do this, or the sending
  domain is not verified; 429 ``rate_limit_exceeded`` (wait ``retry-after``) or
  ``daily_quota_exceeded`` / ``monthly_quota_exceeded`` (no use waiting seconds).
- Every reply carries ``ratelimit-remaining`` and ``ratelimit-reset`` (seconds until
  the window resets): at 0 remaining, the next request waits for the reset.
- ``GET /suppressions?limit=…&after=<id>`` pages the team's suppression list
  (``has_more``); each entry's ``origin`` is bounce, complaint or manual.
- Resend adds nothing for unsubscribes on API sends: our own List-Unsubscribe headers
  travel in each email's ``headers``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from typing import Any

import orjson
import requests

from ..config import Address
from .base import (
    Message,
    Provider,
    ProviderError,
    SendResult,
    SuppressedAs,
    Suppression,
    in_order,
    sendable,
)
from .http import GATEWAY_ERRORS, HttpClient, api_key, retry_after

KEY_ENV = "RESEND_API_KEY"
DEFAULT_URL = "https://api.resend.com"
BATCH_PATH = "/emails/batch"
SUPPRESSIONS_PATH = "/suppressions"
BATCH_LIMIT = 100
PAGE_SIZE = 100  # the most GET /suppressions returns at once
TAG_LIMIT = 256
# How long a broken ratelimit-reset may hold a request back, at most.
LONGEST_WAIT = 60.0
# A page of the suppression list that meets the rate limit is asked for again this often.
PAGE_RETRIES = 3
QUOTA_ERRORS = frozenset({"daily_quota_exceeded", "monthly_quota_exceeded"})
KEY_ERRORS = frozenset({"missing_api_key", "invalid_api_key", "restricted_api_key"})
# Tag names and values: ASCII letters, digits, underscores and dashes only.
_NOT_TAG = re.compile(r"[^A-Za-z0-9_-]")
# An item error that blames the recipient ("Invalid `to` field. …"), and not reply_to.
_TO_FIELD = re.compile(r"(?<![\w`'\"])[`'\"]?to[`'\"]?\s+field", re.IGNORECASE)
SUPPRESSION_STATUS: dict[str, SuppressedAs] = {
    "bounce": "bounced",
    "complaint": "complained",
    "manual": "unsubscribed",
    "unsubscribe": "unsubscribed",
}


class ResendProvider(Provider):
    name = "resend"
    batch_size = BATCH_LIMIT
    idempotent = True
    idempotency_window = 24 * 3600.0

    def __init__(
        self,
        *,
        base_url: str | None,
        batch_size: int = BATCH_LIMIT,
        timeout: float = 30,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        key = api_key(KEY_ENV, "resend")
        self.key = key
        self.batch_size = max(1, min(batch_size, BATCH_LIMIT))
        self.sleep = sleep
        self.monotonic = monotonic
        self.not_before = 0.0  # no request before this moment (monotonic clock)
        self.http = HttpClient(
            base_url or DEFAULT_URL,
            headers={
                "Authorization": f"Bearer {key}",
                "Accept": "application/json",
                "Content-Type": "application/json",
            },
            timeout=timeout,
            secrets=(key,),
            name="Resend",
        )

    # -- sending -----------------------------------------------------------

    def send(self, messages: Sequence[Message], *, batch_key: str) -> list[SendResult]:
        # A message that cannot be built fails the same way every time, so a repeat
        # under the same key carries the same body.
        ready, refused = sendable(messages)
        if not ready:
            return in_order(messages, refused)
        body = [self._payload(m) for m in ready]
        response = self._request(
            "POST",
            BATCH_PATH,
            data=orjson.dumps(body),
            headers={"Idempotency-Key": batch_key, "x-batch-validation": "permissive"},
        )
        if response.status_code != 200:
            raise self._error(response, "the batch")
        return in_order(messages, self._results(ready, _json(response)), refused)

    def prepare(self, message: Message) -> None:
        """The parts as JSON (kept by the message's merge): the longest work of a
        request's body, done while the request before is on its way."""
        message.json_bodies()

    def _payload(self, message: Message) -> dict[str, Any]:
        html, text = message.json_bodies()
        payload: dict[str, Any] = {
            "from": _formatted(message.sender),
            "to": [message.to.formatted()],
            "subject": message.subject,
            "html": html,
            "text": text,
            "headers": dict(message.headers),
            "tags": [{"name": "delivery_key", "value": _tag_value(message.key)}],
        }
        if message.tag:
            payload["tags"].append({"name": "series_part", "value": _tag_value(message.tag)})
        if message.reply_to:
            payload["reply_to"] = message.reply_to
        return payload

    def _results(self, messages: Sequence[Message], reply: Any) -> list[SendResult]:
        data = reply.get("data") if isinstance(reply, dict) else None
        errors = (reply.get("errors") or []) if isinstance(reply, dict) else None
        failed: dict[int, str] = {}
        if isinstance(errors, list):
            for item in errors:
                index = item.get("index") if isinstance(item, dict) else None
                if isinstance(index, int) and 0 <= index < len(messages):
                    failed[index] = self._scrub(str(item.get("message", "")))
        if (
            not isinstance(data, list)
            or not isinstance(errors, list)
            or len(failed) != len(errors)
            or len(data) + len(failed) != len(messages)
        ):
            raise ProviderError(
                "Resend's batch reply does not match the request (expected one id or error "
                "per email); the outcome is unknown",
                maybe_sent=True,
            )
        ids = iter(data)
        results = []
        for index, message in enumerate(messages):
            if index in failed:
                text = failed[index]
                status = "bounced" if _TO_FIELD.search(text) else None
                results.append(
                    SendResult(message.key, "failed", error=text, subscriber_status=status)
                )
                continue
            item = next(ids)
            message_id = item.get("id") if isinstance(item, dict) else None
            if not message_id:
                results.append(
                    SendResult(message.key, "unknown", error="Resend's reply has no id for it")
                )
            else:
                results.append(SendResult(message.key, "sent", message_id=str(message_id)))
        return results

    # -- suppressions ------------------------------------------------------

    def suppressions(self) -> Iterator[Suppression]:
        """Every page of the team's suppression list, each page after the last one's id."""
        after: str | None = None
        while True:
            page = self._page(after)
            entries = page.get("data")
            if not isinstance(entries, list):
                raise ProviderError("Resend's suppression list came back without a data list")
            for entry in entries:
                suppression = _suppression(entry)
                if suppression is not None:
                    yield suppression
            if not page.get("has_more") or not entries:
                return
            last = entries[-1].get("id") if isinstance(entries[-1], dict) else None
            if not isinstance(last, str) or not last:
                raise ProviderError("Resend's suppression list says it has more, but no cursor")
            after = last

    def _page(self, after: str | None) -> dict[str, Any]:
        params = {"limit": str(PAGE_SIZE)}
        if after is not None:
            params["after"] = after
        for attempt in range(PAGE_RETRIES + 1):
            response = self._request("GET", SUPPRESSIONS_PATH, params=params)
            if response.status_code == 200:
                page = _json(response)
                if not isinstance(page, dict):
                    raise ProviderError("Resend's suppression list is not JSON")
                return page
            error = self._error(response, "the suppression list")
            # A wait for the rate limit is worth it here: the sync reads every page first.
            if not error.retryable or error.maybe_sent or attempt == PAGE_RETRIES:
                raise error
            self.sleep(min(error.retry_after or 1.0, LONGEST_WAIT))
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.http.close()

    # -- HTTP --------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        wait = self.not_before - self.monotonic()
        if wait > 0:
            self.sleep(wait)
        response = self.http.request(method, path, **kwargs)
        self._note_rate_limit(response)
        return response

    def _note_rate_limit(self, response: requests.Response) -> None:
        """At 0 requests left in the window, hold the next one until the window resets."""
        remaining = _seconds(response.headers.get("ratelimit-remaining"))
        if remaining is None or remaining > 0 or response.status_code == 429:
            return  # a 429's own wait goes to the send loop as retry_after
        reset = _seconds(response.headers.get("ratelimit-reset"))
        if reset is not None:
            self.not_before = self.monotonic() + min(reset, LONGEST_WAIT)

    def _error(self, response: requests.Response, what: str) -> ProviderError:
        """One line for a reply that is not 200, classed as the docs class it."""
        status = response.status_code
        detail = _json(response)
        name = str(detail.get("name", "")) if isinstance(detail, dict) else ""
        text = self._scrub(str(detail.get("message", "")) if isinstance(detail, dict) else "")
        said = f"{status} {name}".rstrip() + (f": {text}" if text else "")
        if status in (401, 403):
            if name == "restricted_api_key":
                # A sending-only key can still send: only this read is refused.
                return ProviderError(
                    f"Resend refused {what} ({said}); a sending-only key cannot read it: "
                    f"set {KEY_ENV} to a full-access key"
                )
            advice = f"; check {KEY_ENV}" if name in KEY_ERRORS or not name else ""
            return ProviderError(f"Resend refused {what} ({said}){advice}", auth=True)
        if status == 409:
            if name == "concurrent_idempotent_requests":
                return ProviderError(
                    f"Resend is still processing an earlier request for {what} ({said}); "
                    "will retry",
                    retryable=True,
                    maybe_sent=True,
                    retry_after=retry_after(response.headers.get("retry-after")),
                )
            # The key was used for another body: whatever it sent is not known here, and
            # sending these emails again under a new key could send them twice.
            return ProviderError(
                f"Resend refused {what} ({said}); the outcome of the first request under "
                "this key is unknown",
                maybe_sent=True,
            )
        if status == 429:
            if name in QUOTA_ERRORS:
                period = "daily" if name.startswith("daily") else "monthly"
                return ProviderError(
                    f"Resend's {period} sending quota is used up ({said}); nothing more can "
                    "be sent until it renews or the plan is upgraded",
                    auth=True,
                )
            wait = retry_after(response.headers.get("retry-after"))
            if wait is None:
                wait = _seconds(response.headers.get("ratelimit-reset"))
            return ProviderError(
                f"Resend rate limit reached for {what} ({said}); will retry",
                retryable=True,
                retry_after=wait,
            )
        if status >= 500:
            return ProviderError(
                f"Resend failed on {what} ({said}); will retry",
                retryable=True,
                maybe_sent=status in GATEWAY_ERRORS,
                retry_after=retry_after(response.headers.get("retry-after")),
            )
        return ProviderError(f"Resend rejected {what} ({said})")

    def _scrub(self, text: str) -> str:
        return text.replace(self.key, "***")


def _tag_value(value: str) -> str:
    return _NOT_TAG.sub("_", value)[:TAG_LIMIT]


def _suppression(entry: Any) -> Suppression | None:
    if not isinstance(entry, dict):
        return None
    email = entry.get("email")
    origin = str(entry.get("origin", ""))
    status = SUPPRESSION_STATUS.get(origin)
    if not isinstance(email, str) or not email or status is None:
        return None
    since = entry.get("created_at")
    reason = f"Resend suppression: {origin}" + (f" (since {since})" if since else "")
    return Suppression(email, status, reason)


def _seconds(value: str | None) -> float | None:
    """A non-negative number (of seconds, or of requests) from a header, or None."""
    try:
        seconds = float((value or "").strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


@lru_cache(maxsize=64)
def _formatted(address: Address) -> str:
    return address.formatted()  # the same sender on every email of a run


def _json(response: requests.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except ValueError:
        return None
