"""Mailgun over HTTP: one POST /v3/{domain}/messages per part for up to 1000 readers.

Facts relied on (Mailgun's API docs and help articles): the request is form data with
``from``, one ``to`` per recipient, ``subject``, ``html``, ``text``, ``h:<Header>``,
``v:<name>`` and ``o:tag``; ``recipient-variables`` (JSON keyed by address) makes
Mailgun write to each recipient alone and fill ``%recipient.<name>%`` in the body,
the headers and the ``v:`` variables. The reply is ``{"id": "<…>", "message":
"Queued. Thank you."}``, one id for the whole request and no per-recipient status.
401 (body "Forbidden", also what a key gets at the wrong region) and 403 are about
the key; 400 ``{"message": …}`` is final; 429 and 5xx are worth retrying. There are
no idempotency keys: each recipient's copy carries its delivery key in
``v:delivery_key`` (visible in the X-Mailgun-Variables header, so an opaque id, never
personal data), and ``lookup`` finds it again in the Events API's ``accepted``
events. Lists (events, bounces, complaints, unsubscribes) page through
``paging.next`` until a page comes back empty.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from ..errors import MessageBuildError
from ..headers import ascii_email
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
from .http import HttpClient, api_key

KEY_ENV = "MAILGUN_API_KEY"
BASE_URLS = {"us": "https://api.mailgun.net", "eu": "https://api.eu.mailgun.net"}
MAX_RECIPIENTS = 1000
MAX_TAG = 128
MANAGED_UNSUBSCRIBE = "%unsubscribe_url%"
ONE_CLICK = "List-Unsubscribe=One-Click"
EVENTS_PAGE = 300  # the most the Events API returns per page
LIST_PAGE = 1000  # the most a suppression list returns per page
# The Events API filters on Mailgun's clock, and a delivery's ``since`` is ours.
CLOCK_SKEW = timedelta(minutes=10)
# The suppression lists and what each makes of a subscriber.
LISTS: tuple[tuple[str, SuppressedAs], ...] = (
    ("bounces", "bounced"),
    ("complaints", "complained"),
    ("unsubscribes", "unsubscribed"),
)
# How a 400 blames the recipients' addresses: "'to' parameter is not a valid address".
BAD_TO = re.compile(r"^\W*to\W+parameter\b.*\bnot a valid address", re.IGNORECASE | re.DOTALL)
ADDRESS = re.compile(r"[^\s'\"<>(),;:\[\]]+@[^\s'\"<>(),;:\[\]]+")


class MailgunProvider(Provider):
    name = "mailgun"
    # Mailgun keeps events for 1 to 30 days by plan: trust a search only for the shortest.
    lookup_window = 24 * 3600.0
    lookup_batch = 1  # one search request per delivery
    # Events can arrive late and out of order: Mailgun's advice is to trust a page
    # only once its events are half an hour old.
    settle_time = 1800.0
    batch_size = MAX_RECIPIENTS
    shared_body = True

    def __init__(
        self,
        *,
        base_url: str | None,
        domain: str,
        region: str = "us",
        batch_size: int = 1000,
        manage_unsubscribes: bool = False,
        timeout: float = 30,
    ) -> None:
        key = api_key(KEY_ENV, "mailgun")
        if not domain:
            raise ProviderError(
                "the mailgun provider needs your sending domain: set domain = "
                '"mg.example.com" under [tool.series.mailgun] (or [mailgun] in series.toml)',
                auth=True,
            )
        if region not in BASE_URLS:
            raise ProviderError(f'mailgun region must be "us" or "eu", got {region!r}')
        self.domain = domain
        self.region = region
        self.manage_unsubscribes = manage_unsubscribes
        if manage_unsubscribes:
            # With unsubscribe tracking on for the domain, Mailgun puts each recipient's
            # own link in place of this, in the body and in the headers we send.
            self.managed_unsubscribe = MANAGED_UNSUBSCRIBE
        self.batch_size = max(1, min(batch_size, MAX_RECIPIENTS))
        self.prefix = f"/v3/{quote(domain, safe='')}"
        credentials = base64.b64encode(f"api:{key}".encode()).decode("ascii")
        self.http = HttpClient(
            base_url or BASE_URLS[region],
            headers={"Authorization": f"Basic {credentials}", "Accept": "application/json"},
            timeout=timeout,
            secrets=(key, credentials),
            name="Mailgun",
        )

    # -- sending -------------------------------------------------------------

    def send(self, messages: Sequence[Message], *, batch_key: str) -> list[SendResult]:
        """One request per group of messages sharing a body (normally the whole batch).

        Once any request of the batch was accepted, a later failure cannot be raised:
        the send loop would take the whole batch back and send the accepted messages
        again. The rest then get their own results instead (unknown when the request
        may have gone through, failed otherwise, for a later run to retry)."""
        ready, refused = sendable(messages)
        results: dict[str, SendResult] = {}
        queue = _groups(ready)
        while queue:
            group = queue.pop(0)
            try:
                accepted, rejected, again = self._post(group)
            except ProviderError as exc:
                if not any(r.outcome == "sent" for r in results.values()):
                    raise
                outcome: Outcome = "unknown" if exc.maybe_sent else "failed"
                for message in group:
                    results[message.key] = SendResult(message.key, outcome, error=str(exc))
                for message in (m for rest in queue for m in rest):
                    results[message.key] = SendResult(
                        message.key, "failed", error=f"not sent: an earlier request failed: {exc}"
                    )
                break
            for message in group:
                if accepted is not None:
                    results[message.key] = SendResult(message.key, "sent", message_id=accepted)
                elif message.key in rejected:
                    results[message.key] = SendResult(
                        message.key,
                        "failed",
                        error=rejected[message.key],
                        subscriber_status="bounced",
                    )
            queue[:0] = again
        return in_order(messages, results.values(), refused)

    def _post(self, group: list[Message]) -> tuple[str | None, dict[str, str], list[list[Message]]]:
        """Send one group: (its message id | None, rejected key → error, groups to send
        again without the rejected recipients)."""
        response = self.http.request("POST", f"{self.prefix}/messages", data=self._form(group))
        if response.status_code == 200:
            data = _json(response)
            message_id = data.get("id") if isinstance(data, dict) else None
            if not isinstance(message_id, str) or not message_id:
                raise ProviderError(
                    "Mailgun accepted the request but its answer has no message id; the "
                    "outcome is unknown",
                    maybe_sent=True,
                )
            return message_id, {}, []
        if response.status_code == 400:
            text = _detail(response)
            named = _named(group, text)
            if named:
                # Mailgun named the addresses it refused: they fail, the others go again.
                error = f"400: {text}"
                rest = [m for m in group if m.key not in named]
                return None, dict.fromkeys(named, error), [rest] if rest else []
            if BAD_TO.search(text):
                if len(group) == 1:
                    return None, {group[0].key: f"400: {text}"}, []
                # Some recipient is refused but not named: halve the group until the
                # refused ones stand alone, so one bad address cannot fail a thousand.
                half = len(group) // 2
                return None, {}, [group[:half], group[half:]]
            raise ProviderError(self._clean(f"Mailgun rejected the request (400): {text}"))
        self._check(response, "/messages")
        raise AssertionError("unreachable")  # _check raises for every other status

    def _form(self, group: list[Message]) -> list[tuple[str, str]]:
        first = group[0]
        variables: dict[str, dict[str, str]] = {m.to.email: {} for m in group}
        form = [("from", first.sender.formatted())]
        form += [("to", m.to.formatted()) for m in group]
        form.append(("subject", first.subject))
        if (merge := first.merge) is not None:
            merges = [m.merge for m in group if m.merge is not None]
            # A field the same for everyone goes into the body as it is (the managed
            # unsubscribe placeholder, whom Mailgun fills itself); a personal one is a
            # recipient variable, twice: HTML-escaped for the HTML part, raw for the text.
            shared = {f for f in merge.values if len({m.values[f] for m in merges}) == 1}

            def placeholder(field: str, in_html: bool) -> str:
                if field in shared:
                    return merge.value(field, in_html=in_html)
                return f"%recipient.{_var(field, in_html)}%"

            html, text = merge.body(placeholder)
            for message, own_merge in zip(group, merges, strict=True):
                own = variables[message.to.email]
                for field in own_merge.values.keys() - shared:
                    own[_var(field, True)] = own_merge.value(field, in_html=True)
                    own[_var(field, False)] = own_merge.value(field, in_html=False)
        else:
            html, text = first.html, first.text  # a group of its own (see _groups)
        form += [("html", html), ("text", text)]
        headers = dict(first.headers)
        if self.manage_unsubscribes and "List-Unsubscribe" not in headers:
            headers["List-Unsubscribe"] = f"<{MANAGED_UNSUBSCRIBE}>"
            headers["List-Unsubscribe-Post"] = ONE_CLICK
        for number, (header, value) in enumerate(headers.items()):
            values = {m.headers.get(header, value) for m in group}
            if len(values) == 1:
                form.append((f"h:{header}", value))
                continue
            # A header that differs per recipient (their own List-Unsubscribe link).
            name = f"header_{number}"
            form.append((f"h:{header}", f"%recipient.{name}%"))
            for message in group:
                variables[message.to.email][name] = message.headers[header]
        if first.reply_to:
            form.append(("h:Reply-To", first.reply_to))
        form.append(("v:delivery_key", "%recipient.delivery_key%"))
        for message in group:
            variables[message.to.email]["delivery_key"] = message.key
        tag = first.tag.encode("ascii", "ignore").decode("ascii")[:MAX_TAG]
        if tag:
            form.append(("o:tag", tag))
        form.append(("recipient-variables", json.dumps(variables, ensure_ascii=False)))
        return form

    # -- lookups -------------------------------------------------------------

    def lookup(self, pending: Sequence[Pending]) -> dict[str, str | None]:
        """Each delivery's ``accepted`` event, found by recipient and time, then matched
        on its ``delivery_key`` user variable (the Events API cannot filter on it)."""
        found: dict[str, str | None] = {}
        for item in pending:
            found[item.key] = None
            params = {
                "event": "accepted",
                "recipient": _as_sent(item.email),
                "begin": f"{(item.since - CLOCK_SKEW).timestamp():.0f}",
                "ascending": "yes",
                "limit": str(EVENTS_PAGE),
            }
            for event in self._pages(f"{self.prefix}/events", params, "the events list"):
                variables = event.get("user-variables")
                if isinstance(variables, dict) and variables.get("delivery_key") == item.key:
                    found[item.key] = _event_message_id(event)
                    break
        return found

    def suppressions(self) -> Iterator[Suppression]:
        for name, status in LISTS:
            path = f"{self.prefix}/{name}"
            for entry in self._pages(path, {"limit": str(LIST_PAGE)}, f"the {name} list"):
                email = entry.get("address")
                if isinstance(email, str) and email:
                    yield Suppression(email, status, _reason(name, entry))

    def _pages(
        self, path: str, params: dict[str, str] | None, what: str
    ) -> Iterator[dict[str, Any]]:
        """Every item of a paged list, following ``paging.next`` on our own base URL
        (so SERIES_PROVIDER_URL reaches every page) until a page has no items."""
        seen: set[str] = set()
        while True:
            response = self.http.request("GET", path, params=params)
            self._check(response, what)
            data = _json(response)
            items = data.get("items") if isinstance(data, dict) else None
            if not isinstance(items, list):
                raise ProviderError(f"Mailgun's answer for {what} has no list of items")
            if not items:
                return
            yield from (item for item in items if isinstance(item, dict))
            paging = data.get("paging")
            following = paging.get("next") if isinstance(paging, dict) else None
            if not isinstance(following, str) or not following:
                return
            url = urlsplit(following)
            path = f"{url.path}?{url.query}" if url.query else url.path
            if path in seen:
                return  # a list that points back at a page already read has ended
            seen.add(path)
            params = None

    # -- errors --------------------------------------------------------------

    def _check(self, response: requests.Response, what: str) -> None:
        """Raise ProviderError for any answer but 200: one line, naming what failed."""
        status = response.status_code
        if status == 200:
            return
        if status in (401, 403):
            raise ProviderError(
                self._clean(
                    f"Mailgun refused the API key ({status} {_detail(response)}); check "
                    f'{KEY_ENV}, and that region = "{self.region}" is where {self.domain} '
                    "was created"
                ),
                auth=True,
            )
        self.http.raise_for_transient(response)
        raise ProviderError(
            self._clean(f"Mailgun answered {status} to {what}: {_detail(response)}".rstrip(": "))
        )

    def _clean(self, text: str) -> str:
        return self.http.scrub(text)

    def close(self) -> None:
        self.http.close()


def _groups(messages: Sequence[Message]) -> list[list[Message]]:
    """The requests a batch needs: messages sharing one body (the same template, sender,
    subject, reply-to, tag and header names), each address once, at most 1000."""
    groups: dict[tuple[Any, ...], list[list[Message]]] = {}
    addresses: dict[int, set[str]] = {}  # id(chunk) → the addresses in it
    for position, message in enumerate(messages):
        template = id(message.merge.template) if message.merge is not None else ("own", position)
        shape = (
            template,
            message.sender,
            message.subject,
            message.reply_to,
            message.tag,
            tuple(message.headers),
        )
        chunks = groups.setdefault(shape, [[]])
        last = chunks[-1]
        seen = addresses.setdefault(id(last), set())
        address = message.to.email.lower()
        if len(last) >= MAX_RECIPIENTS or address in seen:
            last = []
            chunks.append(last)
            seen = addresses.setdefault(id(last), set())
        last.append(message)
        seen.add(address)
    return [chunk for chunks in groups.values() for chunk in chunks if chunk]


def _as_sent(email: str) -> str:
    """The address as its message went out (an IDN domain in ASCII), which is how
    Mailgun's events name the recipient."""
    try:
        return ascii_email(email)
    except MessageBuildError:
        return email  # never sent: the search finds nothing, as it should


def _var(field: str, in_html: bool) -> str:
    return f"{field}_html" if in_html else f"{field}_text"


def _named(group: Sequence[Message], text: str) -> set[str]:
    """Keys of the messages whose recipient a 400's text names."""
    mentioned = {a.rstrip(".").lower() for a in ADDRESS.findall(text)}
    return {m.key for m in group if m.to.email.lower() in mentioned}


def _event_message_id(event: dict[str, Any]) -> str | None:
    """The Message-Id of an event's message, in the form the send reply gives it."""
    message = event.get("message")
    headers = message.get("headers") if isinstance(message, dict) else None
    value = headers.get("message-id") if isinstance(headers, dict) else None
    if not isinstance(value, str) or not value:
        return str(event.get("id") or "") or None
    return value if value.startswith("<") else f"<{value}>"


def _reason(name: str, entry: dict[str, Any]) -> str:
    if name == "bounces":
        detail = " ".join(str(entry.get(k) or "") for k in ("code", "error")).strip()
        return f"Mailgun bounce ({detail})" if detail else "Mailgun bounce"
    if name == "complaints":
        return "Mailgun spam complaint"
    # An unsubscribe limited to some tags is still an unsubscribe from this sender: each
    # part goes out under its own tag, so Mailgun would drop only the part whose link
    # was used and deliver the next one, which the reader did not ask for.
    tags = entry.get("tags")
    if isinstance(tags, list) and tags and tags != ["*"]:
        return f"Mailgun unsubscribe (tags: {', '.join(str(t) for t in tags)})"
    return "Mailgun unsubscribe"


def _detail(response: requests.Response) -> str:
    """Mailgun's own words from an error answer: its JSON ``message``, else the text."""
    data = _json(response)
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        text = data["message"]
    else:
        text = response.text
    return " ".join(text.split())[:300]


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
