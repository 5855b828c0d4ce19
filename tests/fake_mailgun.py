"""A stand-in for Mailgun's HTTP API on 127.0.0.1, for contract and end-to-end tests.

It speaks the documented shapes (see /work/shared/reference/providers.md):
``POST /v3/{domain}/messages`` as urlencoded or multipart form data, with HTTP Basic
``api:<key>`` (anything else gets Mailgun's 401 with the body ``Forbidden``); at most
1000 ``to`` values; ``recipient-variables`` filled into each recipient's copy
(``%recipient.<name>%`` in the subject, bodies, ``h:`` headers and ``v:`` variables),
and without them every copy shows the whole To list; ``%unsubscribe_url%`` becomes a
link of Mailgun's own per recipient. Errors are ``{"message": …}`` with 400.
Accepted copies become ``accepted`` events for ``GET /v3/{domain}/events``, and
``bounces``, ``complaints`` and ``unsubscribes`` are lists; every list pages through
``paging.next`` URLs that point at api.mailgun.net, as the real ones do, so a client
must take their path and query to its own base URL. Faults come from FakeServer's
``fail_next`` (with ``too_many`` and ``server_error`` for Mailgun's own answers)::

    with FakeMailgun(key="k", domain="mg.example.com", invalid={"bad@example.com"}) as mg:
        mg.fail_next("/v3/mg.example.com/messages", too_many(retry_after="3"))
        ...  # talk to mg.url
        mg.delivered[0].html, mg.events, mg.requests[-1].form
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

from .fake_http import FakeServer, Reply, Request

PUBLIC_URL = "https://api.mailgun.net"  # where Mailgun's paging links point
MAX_RECIPIENTS = 1000
QUEUED = "Queued. Thank you."
BAD_ADDRESS = "'to' parameter is not a valid address. please check documentation"
VARIABLE = re.compile(r"%recipient\.([A-Za-z0-9_.-]+)%")
VALID = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
LISTS = ("bounces", "complaints", "unsubscribes")


@dataclass(frozen=True)
class Delivered:
    """One recipient's copy of an accepted message, as Mailgun would deliver it."""

    message_id: str
    to: str  # the recipient's address
    to_header: str  # the To header their copy shows
    sender: str
    subject: str
    html: str
    text: str
    headers: dict[str, str]  # from the h: fields, filled in for this recipient
    variables: dict[str, str]  # from the v: fields (the event's user-variables)
    tags: list[str]


class FakeMailgun(FakeServer):
    name = "fake-mailgun"

    def __init__(
        self,
        *,
        key: str = "fake-mailgun-key",
        domain: str = "mg.example.com",
        invalid: Iterable[str] = (),
        name_invalid: bool = False,
        page_size: int | None = None,
        clock: Callable[[], float] = time.time,
        port: int = 0,
    ) -> None:
        """``invalid``: addresses refused with a 400; ``name_invalid``: that 400 names
        the address; ``page_size``: a list page's size (default: the request's limit);
        ``clock``: the time accepted events are filed under."""
        super().__init__(port=port)
        self.key = key
        self.domain = domain
        self.invalid = {a.lower() for a in invalid}
        self.name_invalid = name_invalid
        self.page_size = page_size
        self.clock = clock
        self.delivered: list[Delivered] = []
        self.events: list[dict[str, Any]] = []
        self.lists: dict[str, list[dict[str, Any]]] = {name: [] for name in LISTS}
        self._state = threading.Lock()
        self._count = 0

    # -- for tests -----------------------------------------------------------

    @property
    def prefix(self) -> str:
        return f"/v3/{self.domain}"

    def message_requests(self) -> list[Request]:
        return self.requests_to(f"{self.prefix}/messages", "POST")

    def copies_to(self, address: str) -> list[Delivered]:
        with self._state:
            return [d for d in self.delivered if d.to.lower() == address.lower()]

    def add_bounce(self, address: str, code: str = "550", error: str = "No such mailbox") -> None:
        self.lists["bounces"].append(
            {"address": address, "code": code, "error": error, "created_at": _now_text()}
        )

    def add_complaint(self, address: str) -> None:
        self.lists["complaints"].append({"address": address, "created_at": _now_text()})

    def add_unsubscribe(self, address: str, tags: Iterable[str] = ("*",)) -> None:
        self.lists["unsubscribes"].append(
            {"address": address, "tags": list(tags), "created_at": _now_text()}
        )

    # -- serving -------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        expected = base64.b64encode(f"api:{self.key}".encode()).decode()
        if request.header("Authorization") != f"Basic {expected}":
            return Reply(401, "Forbidden")
        if not request.path.startswith(f"{self.prefix}/"):
            domain = request.path.split("/")[2] if request.path.count("/") >= 2 else ""
            return Reply(404, {"message": f"Domain not found: {domain}"})
        rest = request.path[len(self.prefix) + 1 :]
        if (request.method, rest) == ("POST", "messages"):
            return self._messages(request.form)
        if request.method == "GET" and rest.split("/")[0] == "events":
            return self._events(request, rest)
        if request.method == "GET" and rest in LISTS:
            return self._list(request, rest)
        return Reply(404, {"message": "Not Found"})

    def _messages(self, form: dict[str, list[str]]) -> Reply:
        if not any(v.strip() for v in form.get("from", [])):
            return Reply(400, {"message": "from parameter is missing"})
        recipients = [a for value in form.get("to", []) for a in getaddresses([value]) if a[1]]
        if not recipients:
            return Reply(400, {"message": "to parameter is missing"})
        if len(recipients) > MAX_RECIPIENTS:
            return Reply(400, {"message": f"Too many recipients (at most {MAX_RECIPIENTS})"})
        for _, address in recipients:
            if not VALID.match(address) or address.lower() in self.invalid:
                text = BAD_ADDRESS
                if self.name_invalid:
                    text = BAD_ADDRESS.replace("address.", f"address: {address}.")
                return Reply(400, {"message": text})
        if not (form.get("html") or form.get("text")):
            return Reply(
                400, {"message": "Need at least one of 'text' or 'html' parameters specified"}
            )
        try:
            per_recipient = json.loads(form.get("recipient-variables", ["{}"])[0])
        except ValueError:
            return Reply(400, {"message": "recipient-variables parameter is not a valid JSON"})
        if not isinstance(per_recipient, dict):
            return Reply(400, {"message": "recipient-variables parameter is not a valid JSON"})
        with self._state:
            self._count += 1
            now = self.clock()
            message_id = (
                f"{time.strftime('%Y%m%d%H%M%S', time.gmtime(now))}.{self._count}@{self.domain}"
            )
            everyone = ", ".join(form["to"])
            for name, address in recipients:
                own = per_recipient.get(address)
                values = {k: str(v) for k, v in own.items()} if isinstance(own, dict) else {}
                fill = self._filler(address, values)
                copy = Delivered(
                    message_id=f"<{message_id}>",
                    to=address,
                    to_header=_formatted(name, address) if per_recipient else everyone,
                    sender=form["from"][0],
                    subject=fill(form.get("subject", [""])[0]),
                    html=fill(form.get("html", [""])[0]),
                    text=fill(form.get("text", [""])[0]),
                    headers={k[2:]: fill(v[-1]) for k, v in form.items() if k.startswith("h:")},
                    variables={k[2:]: fill(v[-1]) for k, v in form.items() if k.startswith("v:")},
                    tags=form.get("o:tag", []),
                )
                self.delivered.append(copy)
                self.events.append(_accepted(copy, message_id, now))
        return Reply(200, {"id": f"<{message_id}>", "message": QUEUED})

    def _filler(self, address: str, values: dict[str, str]) -> Callable[[str], str]:
        token = hashlib.sha256(f"{self.domain}:{address}".encode()).hexdigest()[:24]
        unsubscribe = f"https://email.{self.domain}/u/{token}"

        def fill(text: str) -> str:
            text = VARIABLE.sub(lambda m: values.get(m.group(1), m.group(0)), text)
            return text.replace("%unsubscribe_url%", unsubscribe)

        return fill

    def _events(self, request: Request, rest: str) -> Reply:
        parts = rest.split("/")
        if len(parts) == 2:  # a paging link: the filters and position travel in the token
            try:
                query = json.loads(base64.urlsafe_b64decode(parts[1].encode()))
            except ValueError:
                return Reply(400, {"message": "Invalid page token"})
        else:
            query = {k: v[0] for k, v in request.query.items()}
            query["offset"] = 0
        try:
            limit = int(query.get("limit", 100))
            begin = _moment(query.get("begin"))
        except ValueError as exc:
            return Reply(400, {"message": str(exc)})
        if not 0 < limit <= 300:
            return Reply(400, {"message": "limit must be between 1 and 300"})
        with self._state:
            matches = [
                e
                for e in self.events
                if e["event"] == query.get("event", e["event"])
                and e["recipient"].lower() == query.get("recipient", e["recipient"]).lower()
                and (begin is None or e["timestamp"] >= begin)
            ]
        if query.get("ascending") != "yes":
            matches.reverse()
        offset = int(query["offset"])
        size = min(limit, self.page_size or limit)
        page = matches[offset : offset + size]
        following = {**query, "offset": offset + len(page)}
        token = base64.urlsafe_b64encode(json.dumps(following).encode()).decode()
        link = f"{PUBLIC_URL}{self.prefix}/events/{token}"
        return Reply(200, {"items": page, "paging": {"next": link, "previous": link}})

    def _list(self, request: Request, name: str) -> Reply:
        try:
            limit = int(request.query.get("limit", ["100"])[0])
        except ValueError:
            return Reply(400, {"message": "limit must be a number"})
        if not 0 < limit <= 10000:
            return Reply(400, {"message": "limit must be between 1 and 10000"})
        entries = list(self.lists[name])
        start = 0
        after = request.query.get("address", [None])[0]
        if request.query.get("page", [""])[0] == "next" and after is not None:
            start = next((i + 1 for i, e in enumerate(entries) if e["address"] == after), 0)
        page = entries[start : start + min(limit, self.page_size or limit)]
        last = page[-1]["address"] if page else after or ""
        base = f"{PUBLIC_URL}{self.prefix}/{name}"
        paging = {
            "first": f"{base}?{urlencode({'page': 'first', 'limit': limit})}",
            "last": f"{base}?{urlencode({'page': 'last', 'limit': limit})}",
            "next": f"{base}?{urlencode({'page': 'next', 'address': last, 'limit': limit})}",
            "previous": f"{base}?{urlencode({'page': 'previous', 'limit': limit})}",
        }
        return Reply(200, {"items": page, "paging": paging})


def too_many(retry_after: str | None = None) -> Reply:
    """Mailgun's 429 (whether it sends Retry-After is undocumented: both are tried)."""
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return Reply(429, {"message": "Too many requests"}, headers)


def server_error(status: int = 500) -> Reply:
    return Reply(status, {"message": "Internal Server Error"})


def _accepted(copy: Delivered, message_id: str, at: float) -> dict[str, Any]:
    return {
        "event": "accepted",
        "id": hashlib.sha1(f"{message_id}:{copy.to}".encode()).hexdigest()[:22],
        "timestamp": at,
        "recipient": copy.to,
        "tags": copy.tags,
        "user-variables": dict(copy.variables),
        "message": {
            "headers": {
                "message-id": message_id,
                "to": copy.to_header,
                "from": copy.sender,
                "subject": copy.subject,
            }
        },
    }


def _moment(value: str | None) -> float | None:
    """``begin`` as Mailgun takes it: a Unix timestamp or an RFC 2822 date."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        raise ValueError(f"Invalid begin: {value}") from None


def _formatted(name: str, address: str) -> str:
    return f"{name} <{address}>" if name else address


def _now_text() -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime())
