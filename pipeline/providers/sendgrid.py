"""SendGrid v3 over HTTP: POST /v3/mail/send with one personalization per reader.

Facts relied on (SendGrid's v3 docs, /work/shared/reference/providers.md):
``content`` belongs to the whole request and each personalization fills in its own
``substitutions``, so a request carries one body for up to 1000 readers
(``shared_body``). Success is 202 with an empty body and an ``X-Message-Id`` header
naming the request. Any validation error fails the whole request: 400 with
``{"errors": [{"message", "field", "help"}]}``, where ``field`` can point at one
personalization's address (``personalizations.3.to.0.email``). 401/403 are the key;
413 is a request too large; 429 comes with ``X-RateLimit-Reset`` (epoch seconds).
SendGrid has no idempotency keys: each personalization carries its delivery key in
``custom_args`` and ``lookup`` finds it through the Email Activity API (a paid add-on).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

import orjson
import requests

from ..headers import recipient_name
from .base import (
    Message,
    Outcome,
    Pending,
    Provider,
    ProviderError,
    SendResult,
    SuppressedAs,
    Suppression,
    in_order,
    sendable,
)
from .http import GATEWAY_ERRORS, HttpClient, api_key

KEY_ENV = "SENDGRID_API_KEY"
REGION_URLS = {"global": "https://api.sendgrid.com", "eu": "https://api.eu.sendgrid.com"}
SEND_PATH = "/v3/mail/send"
ACTIVITY_PATH = "/v3/messages"
SUPPRESSION_PATH = "/v3/suppression/{}"
MAX_PERSONALIZATIONS = 1000
SUPPRESSION_PAGE = 500  # the most the suppression lists give per page
MAX_CATEGORIES = 10
# Subscription tracking puts each reader's unsubscribe URL in place of this tag (no
# characters HTML would escape, so it survives the HTML part unchanged).
MANAGED_UNSUBSCRIBE = "%series.sendgrid_unsubscribe%"
# Which suppression list makes a subscriber what.
SUPPRESSION_LISTS: tuple[tuple[str, SuppressedAs], ...] = (
    ("bounces", "bounced"),
    ("invalid_emails", "bounced"),
    ("spam_reports", "complained"),
    ("unsubscribes", "unsubscribed"),
)
# A 400 that blames one reader's address rather than the request.
_RECIPIENT_FIELD = re.compile(r"personalizations\.(\d+)\.to\.\d+(?:\.email)?")


def substitution_tag(field: str, in_html: bool) -> str:
    """The tag standing for one personal field in the shared body. The HTML and text
    forms differ: the HTML part needs the value escaped, the text part raw."""
    return f"%series.{field}.{'html' if in_html else 'text'}%"


class SendGridProvider(Provider):
    name = "sendgrid"
    # Email Activity covers the last 30 days.
    lookup_window = 30 * 24 * 3600.0
    lookup_batch = 1  # one search request per delivery
    # Email Activity is indexed with a delay: give it half an hour too.
    settle_time = 1800.0
    batch_size = MAX_PERSONALIZATIONS
    shared_body = True

    def __init__(
        self,
        *,
        base_url: str | None,
        region: str = "global",
        batch_size: int = 1000,
        manage_unsubscribes: bool = False,
        timeout: float = 30,
    ) -> None:
        key = api_key(KEY_ENV, "sendgrid")
        if base_url is None and region not in REGION_URLS:
            raise ProviderError(
                f"unknown SendGrid region '{region}' (one of: {', '.join(REGION_URLS)})"
            )
        if manage_unsubscribes:
            self.managed_unsubscribe = MANAGED_UNSUBSCRIBE
        self.batch_size = max(1, min(batch_size, MAX_PERSONALIZATIONS))
        self.http = HttpClient(
            base_url or REGION_URLS[region],
            headers={
                "Authorization": f"Bearer {key}",
                "Accept": "application/json",
                "Content-Type": "application/json",
            },
            timeout=timeout,
            secrets=(key,),
            name="SendGrid",
        )

    # -- sending -------------------------------------------------------------

    def send(self, messages: Sequence[Message], *, batch_key: str) -> list[SendResult]:
        ready, refused = sendable(messages)
        # The send loop never mixes templates in a batch, but a request can only carry
        # one body, sender and category set: split defensively if it ever does.
        groups: dict[tuple[Any, ...], list[Message]] = {}
        for message in ready:
            body = id(message.merge.template) if message.merge else id(message)
            key = (body, message.sender, message.reply_to, message.tag)
            groups.setdefault(key, []).append(message)
        requests_ = [
            group[start : start + MAX_PERSONALIZATIONS]
            for group in groups.values()
            for start in range(0, len(group), MAX_PERSONALIZATIONS)
        ]
        return in_order(messages, self._each(requests_), refused)

    def _each(self, requests_: Sequence[Sequence[Message]]) -> list[SendResult]:
        """Send several requests in turn. Once one was accepted, a later failure must not
        reach the send loop as an exception: it would retry the whole batch and send the
        accepted part again. The rest then gets results instead (unknown if it may have
        been sent, else failed, for a later run to send)."""
        results: list[SendResult] = []
        for index, messages in enumerate(requests_):
            try:
                results += self._request(messages)
            except ProviderError as exc:
                if not any(r.outcome == "sent" for r in results):
                    raise
                outcome: Outcome = "unknown" if exc.maybe_sent else "failed"
                for rest in requests_[index:]:
                    results += [SendResult(m.key, outcome, error=str(exc)) for m in rest]
                break
        return results

    def _request(self, messages: Sequence[Message]) -> list[SendResult]:
        """One request for messages sharing a body, sent again without any reader whose
        address SendGrid refused (a 400 sends nothing, so that repeats no one)."""
        refused: list[SendResult] = []
        remaining = list(messages)
        while remaining:
            response = self.http.request(
                "POST", SEND_PATH, data=orjson.dumps(self._payload(remaining))
            )
            status = response.status_code
            if status in (200, 202):
                message_id = response.headers.get("X-Message-Id") or None
                sent = [SendResult(m.key, "sent", message_id=message_id) for m in remaining]
                return refused + sent
            if status == 413:
                # Too large as it is, and a repeat would be too: send each half on its
                # own (the halves may fit), down to one message, which then fails alone
                # rather than holding back every other reader of the batch.
                if len(remaining) == 1:
                    error = "413: SendGrid refused the message as too large"
                    return [*refused, SendResult(remaining[0].key, "failed", error=error)]
                half = len(remaining) // 2
                return refused + self._each([remaining[:half], remaining[half:]])
            if status == 400:
                errors = _errors(response)
                bad = _refused_recipients(errors, len(remaining))
                if bad is None:
                    raise self._error(f"SendGrid rejected the request (400): {_describe(errors)}")
                for index in sorted(bad):
                    refused.append(
                        SendResult(
                            remaining[index].key,
                            "failed",
                            error=self._scrub(f"400: {_describe([bad[index]])}"),
                            subscriber_status="bounced",
                        )
                    )
                remaining = [m for i, m in enumerate(remaining) if i not in bad]
                continue
            self._raise_for(response, SEND_PATH)
        return refused

    def _payload(self, messages: Sequence[Message]) -> dict[str, Any]:
        first = messages[0]
        merge = first.merge
        if merge is not None:
            html, text = merge.body(self._placeholder)
        else:
            html, text = first.html, first.text
        payload: dict[str, Any] = {
            "personalizations": [self._personalization(m) for m in messages],
            # SendGrid writes the name into From as given: one phrase, as for `to`.
            "from": _address(first.sender.email, recipient_name(first.sender.name)),
            "subject": first.subject,
            "content": [
                {"type": "text/plain", "value": text},
                {"type": "text/html", "value": html},
            ],
        }
        if first.reply_to:
            payload["reply_to"] = {"email": first.reply_to}
        categories = sorted({m.tag[:255] for m in messages if m.tag})
        if categories:
            payload["categories"] = categories[:MAX_CATEGORIES]
        if self.managed_unsubscribe:
            # SendGrid then puts each reader's own link where the tag is and adds the
            # List-Unsubscribe and List-Unsubscribe-Post headers itself.
            payload["tracking_settings"] = {
                "subscription_tracking": {
                    "enable": True,
                    "substitution_tag": self.managed_unsubscribe,
                }
            }
        return payload

    def _placeholder(self, field: str, in_html: bool) -> str:
        if field == "unsubscribe_url" and self.managed_unsubscribe:
            return self.managed_unsubscribe
        return substitution_tag(field, in_html)

    def _personalization(self, message: Message) -> dict[str, Any]:
        item: dict[str, Any] = {
            "to": [_address(message.to.email, recipient_name(message.to.name))],
            "subject": message.subject,
            "custom_args": {"delivery_key": message.key},
        }
        if message.merge is not None:
            item["substitutions"] = {
                substitution_tag(field, in_html): message.merge.value(field, in_html=in_html)
                for field in message.merge.values
                if not (field == "unsubscribe_url" and self.managed_unsubscribe)
                for in_html in (True, False)
            }
        if message.headers:
            # This reader's own List-Unsubscribe: never one shared by the request.
            item["headers"] = dict(message.headers)
        return item

    # -- looking up ------------------------------------------------------------

    def lookup(self, pending: Sequence[Pending]) -> dict[str, str | None]:
        found: dict[str, str | None] = {}
        for key in (p.key for p in pending):
            response = self.http.request(
                "GET",
                ACTIVITY_PATH,
                params={"query": f"unique_args['delivery_key']=\"{key}\"", "limit": 1},
            )
            status = response.status_code
            if status in (403, 404):
                raise ProviderError(
                    f"SendGrid's Email Activity API answered {status}: it is a paid add-on "
                    f"and the key in {KEY_ENV} needs Email Activity access; until then "
                    "unknown deliveries cannot be checked (see `series status`)"
                )
            if status == 429 and found:
                return found  # the rest are checked by a later run, a few a minute
            if status == 429:
                raise ProviderError(
                    "SendGrid's Email Activity API is rate limited (429; about 6 requests "
                    "a minute); unknown deliveries will be checked on a later run",
                    retryable=True,
                    retry_after=_reset_in(response),
                )
            if status != 200:
                self._raise_for(response, ACTIVITY_PATH)
            data = _json(response)
            items = data.get("messages") if isinstance(data, dict) else None
            if not isinstance(items, list):
                raise ProviderError("SendGrid's Email Activity API gave an unreadable answer")
            first = items[0] if items else None
            found[key] = str(first.get("msg_id")) if isinstance(first, dict) else None
        return found

    def suppressions(self) -> Iterator[Suppression]:
        """The bounce, invalid-address, spam-report and global unsubscribe lists, every
        page of each (a page shorter than the limit is the last)."""
        for name, status in SUPPRESSION_LISTS:
            path = SUPPRESSION_PATH.format(name)
            offset = 0
            while True:
                response = self.http.request(
                    "GET", path, params={"limit": SUPPRESSION_PAGE, "offset": offset}
                )
                if response.status_code != 200:
                    self._raise_for(response, path)
                entries = _json(response)
                if not isinstance(entries, list):
                    raise ProviderError(f"SendGrid's {path} gave an unreadable answer")
                for entry in entries:
                    email = entry.get("email") if isinstance(entry, dict) else None
                    if isinstance(email, str) and email:
                        yield Suppression(email, status, _reason(name, entry))
                if len(entries) < SUPPRESSION_PAGE:
                    break
                offset += SUPPRESSION_PAGE

    def close(self) -> None:
        self.http.close()

    # -- errors ----------------------------------------------------------------

    def _raise_for(self, response: requests.Response, path: str) -> NoReturn:
        """Any answer but success, as one ProviderError naming what went wrong."""
        status = response.status_code
        detail = _describe(_errors(response))
        if status == 401:
            raise self._error(
                f"SendGrid refused the API key (401: {detail}); check {KEY_ENV}", auth=True
            )
        if status == 403:
            # A key without the permission, or (for mail) a sender that is not verified:
            # nothing can be sent until a person fixes it.
            raise self._error(
                f"SendGrid refused {path} (403: {detail}); check the permissions of the "
                f"key in {KEY_ENV} and the verified sender",
                auth=True,
            )
        if status == 429:
            raise ProviderError(
                f"SendGrid rate limit reached on {path} (429); will retry",
                retryable=True,
                retry_after=_reset_in(response),
            )
        if status >= 500:
            raise ProviderError(
                f"SendGrid answered {status} to {path}; will retry",
                retryable=True,
                maybe_sent=status in GATEWAY_ERRORS,
            )
        raise self._error(f"SendGrid answered {status} to {path}: {detail}")

    def _error(self, message: str, *, auth: bool = False) -> ProviderError:
        return ProviderError(self._scrub(message), auth=auth)

    def _scrub(self, text: str) -> str:
        """Text from SendGrid's answer, with the key blanked should it ever be echoed."""
        for secret in self.http.secrets:
            text = text.replace(secret, "***")
        return text


def _address(email: str, name: str) -> dict[str, str]:
    return {"email": email, "name": name} if name else {"email": email}


def _json(response: requests.Response) -> Any:
    try:
        return orjson.loads(response.content) if response.content else None
    except ValueError:
        return None


def _errors(response: requests.Response) -> list[dict[str, Any]]:
    data = _json(response)
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return []
    return [e for e in errors if isinstance(e, dict)]


def _describe(errors: Sequence[dict[str, Any]]) -> str:
    if not errors:
        return "no details given"
    parts = []
    for error in errors:
        message = str(error.get("message") or "no message").strip()
        field = error.get("field")
        parts.append(f"{message} (field {field})" if field else message)
    return "; ".join(parts)


def _refused_recipients(
    errors: Sequence[dict[str, Any]], count: int
) -> dict[int, dict[str, Any]] | None:
    """The personalizations whose address a 400 blames, by index; None when any error
    is about something else (then the request itself is wrong, not a reader)."""
    bad: dict[int, dict[str, Any]] = {}
    for error in errors:
        match = _RECIPIENT_FIELD.fullmatch(str(error.get("field") or ""))
        if match is None or int(match.group(1)) >= count:
            return None
        bad.setdefault(int(match.group(1)), error)
    return bad or None


def _reset_in(response: requests.Response) -> float | None:
    """Seconds until X-RateLimit-Reset (an epoch time), or None when there is none."""
    value = (response.headers.get("X-RateLimit-Reset") or "").strip()
    try:
        reset = float(value)
    except ValueError:
        return None
    return max(0.0, reset - time.time())


def _reason(name: str, entry: dict[str, Any]) -> str:
    kind = name.replace("_", " ")
    detail = str(entry.get("reason") or "").strip()
    return f"SendGrid {kind}: {detail}" if detail else f"SendGrid {kind}"
