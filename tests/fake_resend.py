"""A stand-in for Resend's HTTP API on 127.0.0.1, built on tests/fake_http.py.

It speaks the documented shapes (see /work/shared/reference/providers.md and
resend.com/docs): ``POST /emails/batch`` (at most 100 emails, strict or permissive
``x-batch-validation``), ``Idempotency-Key`` semantics, ``GET /suppressions`` paged
with ``limit``/``after``/``has_more``, the ``ratelimit-*`` headers on every reply, and
errors as ``{"statusCode", "name", "message"}``::

    with FakeResend(key="re_test") as resend:
        resend.fail_next(BATCH_PATH, "drop-after")     # accepted, answer lost
        resend.fail_next(BATCH_PATH, error(429, "daily_quota_exceeded", QUOTA_TEXT))
        resend.suppress("gone@example.com", "bounce")
        ...  # talk to resend.url
        resend.accepted  # one dict per email accepted, with its id and request key

Idempotency: a key first seen is "in progress" while its batch is processed
(``processing`` seconds, 0 by default); a repeat meanwhile gets 409
``concurrent_idempotent_requests``. Once answered 200, the same key with the same
body gets the stored answer again and nothing new is accepted; with another body it
gets 409 ``invalid_idempotent_request``. Rejected requests store nothing.

Rate limit: ``rate_limit`` requests per ``window`` seconds on ``clock`` (a test may
pass its own clock); beyond that, 429 ``rate_limit_exceeded`` with ``retry-after``.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from email.utils import parseaddr
from typing import Any, Final

from .fake_http import FakeServer, Reply, Request

BATCH_PATH: Final = "/emails/batch"
SUPPRESSIONS_PATH: Final = "/suppressions"
BATCH_LIMIT: Final = 100
TO_LIMIT: Final = 50
PAGE_DEFAULT: Final = 20
PAGE_LIMIT: Final = 100
DEFAULT_KEY: Final = "re_fake_key_for_tests"

MISSING_KEY_TEXT: Final = "Missing API key in the authorization header."
INVALID_KEY_TEXT: Final = "API key is invalid."
RESTRICTED_KEY_TEXT: Final = "This API key is restricted to only send emails."
OTHER_BODY_TEXT: Final = "Same idempotency key used with a different request payload."
IN_PROGRESS_TEXT: Final = "Same idempotency key used while original request is still in progress."
RATE_TEXT: Final = "Too many requests. Please limit the number of requests per second."
QUOTA_TEXT: Final = "You have reached your daily email sending quota."
MONTHLY_QUOTA_TEXT: Final = "You have reached your monthly email sending quota."
SERVER_TEXT: Final = "An unexpected error occurred."
INVALID_TO_TEXT: Final = (
    "Invalid `to` field. The email address needs to be `email@example.com` or "
    "`Name <email@example.com>`."
)


def error(status: int, name: str, message: str, headers: Mapping[str, str] | None = None) -> Reply:
    """A reply in Resend's error shape."""
    return Reply(status, {"statusCode": status, "name": name, "message": message}, headers or {})


@dataclass
class _Key:
    """What an idempotency key has seen: its body, and its answer once there is one."""

    body: Any
    reply: Reply | None = None  # None: still being processed


class FakeResend(FakeServer):
    name = "fake-resend"

    def __init__(
        self,
        *,
        key: str = DEFAULT_KEY,
        invalid: Iterable[str] = (),
        rate_limit: int = 1000,
        window: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        port: int = 0,
    ) -> None:
        super().__init__(port=port)
        self.key = key
        self.sending_only = False  # the key may send but not read (restricted_api_key)
        self.invalid = {a.lower() for a in invalid}  # recipients refused as invalid
        self.processing = 0.0  # seconds a batch stays "in progress" before its answer
        self.rate_limit = rate_limit
        self.window = window
        self.clock = clock
        self.accepted: list[dict[str, Any]] = []
        self.suppressed: list[dict[str, Any]] = []
        self.keys: dict[str, _Key] = {}
        self._state = threading.Lock()
        self._window_start = clock()
        self._count = 0

    # -- for tests ---------------------------------------------------------

    def batch_requests(self) -> list[Request]:
        return self.requests_to(BATCH_PATH, "POST")

    def suppress(self, email: str, origin: str, created_at: str = "2026-10-07T08:12:03Z") -> None:
        """Put an address on the team's suppression list (origin: bounce, complaint, manual)."""
        self.suppressed.append(
            {
                "object": "suppression",
                "id": str(uuid.uuid4()),
                "email": email,
                "origin": origin,
                "source_id": str(uuid.uuid4()) if origin != "manual" else None,
                "created_at": created_at,
            }
        )

    # -- serving -----------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        limits = self._count_request()
        if limits is not None:
            return limits
        reply = self._authorised(request) or self._route(request)
        return Reply(reply.status, reply.body, {**reply.headers, **self._limit_headers()})

    def _route(self, request: Request) -> Reply:
        if request.path == BATCH_PATH:
            if request.method != "POST":
                return error(405, "method_not_allowed", "Method is not allowed for this path.")
            return self._batch(request)
        if request.path == SUPPRESSIONS_PATH:
            if request.method != "GET":
                return error(405, "method_not_allowed", "Method is not allowed for this path.")
            if self.sending_only:
                return error(401, "restricted_api_key", RESTRICTED_KEY_TEXT)
            return self._suppressions(request)
        return error(404, "not_found", "The requested endpoint does not exist.")

    def _authorised(self, request: Request) -> Reply | None:
        header = request.header("Authorization") or ""
        if not header.startswith("Bearer ") or not header[len("Bearer ") :].strip():
            return error(401, "missing_api_key", MISSING_KEY_TEXT)
        if header[len("Bearer ") :].strip() != self.key:
            return error(403, "invalid_api_key", INVALID_KEY_TEXT)
        return None

    def _count_request(self) -> Reply | None:
        with self._state:
            now = self.clock()
            if now >= self._window_start + self.window:
                self._window_start, self._count = now, 0
            self._count += 1
            if self._count <= self.rate_limit:
                return None
        headers = self._limit_headers()
        return error(429, "rate_limit_exceeded", RATE_TEXT, {**headers, "retry-after": "1"})

    def _limit_headers(self) -> dict[str, str]:
        with self._state:
            left = max(0.0, self._window_start + self.window - self.clock())
            return {
                "ratelimit-limit": str(self.rate_limit),
                "ratelimit-remaining": str(max(0, self.rate_limit - self._count)),
                "ratelimit-reset": str(max(1, math.ceil(left))),
            }

    # -- POST /emails/batch --------------------------------------------------

    def _batch(self, request: Request) -> Reply:
        key = request.header("Idempotency-Key")
        if key is not None and not 1 <= len(key) <= 256:
            return error(400, "invalid_idempotency_key", "The key must be between 1-256 chars.")
        body = request.json
        if not isinstance(body, list) or not body:
            return error(422, "validation_error", "The request body must be a list of emails.")
        if len(body) > BATCH_LIMIT:
            return error(422, "validation_error", f"A batch holds at most {BATCH_LIMIT} emails.")
        if key is not None:
            with self._state:
                seen = self.keys.get(key)
                if seen is None:
                    self.keys[key] = _Key(body)
                elif seen.body != body:
                    return error(409, "invalid_idempotent_request", OTHER_BODY_TEXT)
                elif seen.reply is None:
                    return error(409, "concurrent_idempotent_requests", IN_PROGRESS_TEXT)
                else:
                    return seen.reply  # answered before: nothing is sent again
        if self.processing:
            self._wait(self.processing)
        permissive = (request.header("x-batch-validation") or "strict").lower() == "permissive"
        reply = self._accept(body, key, permissive)
        if key is not None:
            with self._state:
                if reply.status == 200:
                    self.keys[key].reply = reply
                else:
                    del self.keys[key]  # a rejected request leaves the key free
        return reply

    def _accept(self, emails: list[Any], key: str | None, permissive: bool) -> Reply:
        problems = [(i, p) for i, p in enumerate(map(self._problem, emails)) if p is not None]
        if problems and not permissive:
            _, (name, message) = problems[0]
            return error(422, name, message)
        refused = {index for index, _ in problems}
        data = []
        with self._state:
            for index, email in enumerate(emails):
                if index in refused:
                    continue
                email_id = str(uuid.uuid4())
                self.accepted.append({"id": email_id, "idempotency_key": key, **email})
                data.append({"id": email_id})
        if not permissive:
            return Reply(200, {"data": data})
        errors = [{"index": index, "message": message} for index, (_, message) in problems]
        return Reply(200, {"data": data, "errors": errors})

    def _problem(self, email: Any) -> tuple[str, str] | None:
        """(error name, message) for an email Resend would refuse; None if it is valid."""
        if not isinstance(email, dict):
            return "validation_error", "Each email must be an object."
        for field in ("from", "to", "subject"):
            if not email.get(field):
                return "missing_required_field", f"Missing `{field}` field."
        if not email.get("html") and not email.get("text"):
            return "missing_required_field", "Missing `html` or `text` field."
        if not _address(email["from"]):
            return "validation_error", "Invalid `from` field."
        to = email["to"] if isinstance(email["to"], list) else [email["to"]]
        if not 1 <= len(to) <= TO_LIMIT:
            return "validation_error", f"The `to` field holds 1 to {TO_LIMIT} addresses."
        for recipient in to:
            address = _address(recipient)
            if not address or address in self.invalid:
                return "validation_error", INVALID_TO_TEXT
        reply_to = email.get("reply_to")
        if reply_to is not None and not _address(reply_to):
            return "validation_error", "Invalid `reply_to` field."
        headers = email.get("headers", {})
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            return "validation_error", "The `headers` field must map names to strings."
        for tag in email.get("tags", []):
            if not isinstance(tag, dict) or not all(
                _tag_text(tag.get(part)) for part in ("name", "value")
            ):
                return (
                    "validation_error",
                    "Tags should only contain ASCII letters, numbers, underscores, or dashes.",
                )
        return None

    # -- GET /suppressions ---------------------------------------------------

    def _suppressions(self, request: Request) -> Reply:
        limit_text = request.query.get("limit", [str(PAGE_DEFAULT)])[0]
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= PAGE_LIMIT:
            return error(422, "validation_error", f"`limit` must be 1 to {PAGE_LIMIT}.")
        after = request.query.get("after", [None])[0]
        with self._state:
            entries = list(self.suppressed)
        start = 0
        if after is not None:
            ids = [e["id"] for e in entries]
            if after not in ids:
                return error(422, "validation_error", "The `after` id was not found.")
            start = ids.index(after) + 1
        page = entries[start : start + int(limit_text)]
        has_more = start + len(page) < len(entries)
        return Reply(200, {"object": "list", "has_more": has_more, "data": page})


def _address(value: Any) -> str | None:
    """The lower-cased address in ``email`` or ``Name <email>``, or None."""
    if not isinstance(value, str):
        return None
    _, address = parseaddr(value)
    local, _, domain = address.partition("@")
    if not local or "." not in domain or " " in address:
        return None
    return address.lower()


def _tag_text(value: Any) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= 256
        and all(c.isascii() and (c.isalnum() or c in "_-") for c in value)
    )
