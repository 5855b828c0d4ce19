"""A stand-in for SendGrid's v3 API on 127.0.0.1, built on tests/fake_http.py.

It speaks the documented shapes (see /work/shared/reference/providers.md):
``POST /v3/mail/send`` validated as SendGrid does (at most 1000 personalizations,
required fields, 400 ``{"errors": [{"message", "field", "help"}]}`` naming the field),
answered 202 with an empty body and ``X-Message-Id``; the four suppression lists
``GET /v3/suppression/{bounces,invalid_emails,spam_reports,unsubscribes}`` paged by
``limit``/``offset``; the Email Activity search ``GET /v3/messages?query=…&limit=…``
(403 when the account lacks the paid add-on; with ``activity_limit``, 429 for a search
beyond that many a minute, as SendGrid allows 6). Every request needs
``Authorization: Bearer <key>`` (401 with SendGrid's body otherwise).

Each accepted personalization becomes one ``Delivered`` with the body its reader would
get (substitutions applied, and with subscription tracking their own unsubscribe link
and List-Unsubscribe headers)::

    with FakeSendGrid(key="k", invalid={"broken@example.com"}) as sg:
        sg.fail_next(SEND_PATH, rate_limited(reset_in=3))
        sg.fail_next(SEND_PATH, "drop-after")
        ...  # talk to sg.url
        sg.delivered[0].html, sg.sends()[-1].json
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from .fake_http import FakeServer, Reply, Request

SEND_PATH: Final = "/v3/mail/send"
ACTIVITY_PATH: Final = "/v3/messages"
SUPPRESSION_PREFIX: Final = "/v3/suppression/"
LISTS: Final = ("bounces", "invalid_emails", "spam_reports", "unsubscribes")
MAX_PERSONALIZATIONS: Final = 1000
MAX_PAGE: Final = 500
ACTIVITY_WINDOW: Final = 60.0  # seconds: Email Activity allows so many searches a minute
HELP: Final = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html"
UNSUBSCRIBE_BASE: Final = "https://u.sendgrid.example/unsubscribe/"
# SendGrid's own wording for the whole-request errors.
BAD_KEY_TEXT: Final = "The provided authorization grant is invalid, expired, or revoked"
NO_KEY_TEXT: Final = "authorization required"
FORBIDDEN_TEXT: Final = "access forbidden"
TOO_LARGE_TEXT: Final = "The JSON payload you have included in your request is too large."
INVALID_ADDRESS_TEXT: Final = "Does not contain a valid address."
_EMAIL: Final = re.compile(r"[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+")
_QUERY: Final = re.compile(r"""(unique_args\['([^']+)'\]|to_email|msg_id)="([^"]*)\"""")


@dataclass(frozen=True)
class Delivered:
    """One personalization SendGrid accepted, as its reader would receive it."""

    message_id: str  # the request's X-Message-Id
    msg_id: str  # this recipient's id in the Email Activity feed
    to: str
    name: str | None
    sender: str
    subject: str
    html: str
    text: str
    headers: dict[str, str]
    custom_args: dict[str, str]
    categories: list[str]
    at: float

    def summary(self) -> dict[str, Any]:
        """The message as the Email Activity search lists it."""
        return {
            "from_email": self.sender,
            "msg_id": self.msg_id,
            "subject": self.subject,
            "to_email": self.to,
            "status": "delivered",
            "opens_count": 0,
            "clicks_count": 0,
            "last_event_time": datetime.fromtimestamp(self.at, UTC).isoformat(),
        }


class FakeSendGrid(FakeServer):
    """``invalid``: addresses refused with a 400 naming their field; ``activity``: the
    Email Activity add-on is there; ``activity_limit``: searches it answers a minute of
    ``clock`` (SendGrid: 6; None: no limit); ``lists``: the suppression lists' entries;
    ``max_bytes``: a larger request gets 413."""

    name = "fake-sendgrid"

    def __init__(
        self,
        *,
        key: str = "fake-sendgrid-key",
        invalid: Iterable[str] = (),
        activity: bool = True,
        lists: Mapping[str, Iterable[Mapping[str, Any]]] | None = None,
        max_bytes: int = 30 * 1024 * 1024,
        activity_limit: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.key = key
        self.invalid = {a.lower() for a in invalid}
        self.activity = activity
        self.activity_limit = activity_limit
        self.clock = clock
        self._searches: list[float] = []  # when the searches of the last minute came
        self.lists: dict[str, list[dict[str, Any]]] = {
            name: [dict(e) for e in (lists or {}).get(name, ())] for name in LISTS
        }
        self.max_bytes = max_bytes
        self.delivered: list[Delivered] = []

    # -- for tests -----------------------------------------------------------

    def sends(self) -> list[Request]:
        """The mail-send requests received, in order."""
        return self.requests_to(SEND_PATH, "POST")

    def delivered_to(self, address: str) -> list[Delivered]:
        with self.lock:
            return [d for d in self.delivered if d.to == address.lower()]

    def suppress(self, list_name: str, entries: Iterable[Mapping[str, Any]]) -> None:
        with self.lock:
            self.lists[list_name] += [dict(e) for e in entries]

    # -- serving ---------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        authorization = request.header("Authorization")
        if not authorization:
            return _errors(401, [(NO_KEY_TEXT, None)])
        if authorization != f"Bearer {self.key}":
            return _errors(401, [(BAD_KEY_TEXT, None)])
        if request.path == SEND_PATH and request.method == "POST":
            return self._send(request)
        if request.path == ACTIVITY_PATH and request.method == "GET":
            return self._search(request)
        if request.path.startswith(SUPPRESSION_PREFIX) and request.method == "GET":
            return self._list(request.path[len(SUPPRESSION_PREFIX) :], request)
        return _errors(404, [("not found", None)])

    def _send(self, request: Request) -> Reply:
        if len(request.raw) > self.max_bytes:
            return _errors(413, [(TOO_LARGE_TEXT, None)])
        body = request.json
        if not isinstance(body, dict):
            return _errors(400, [("Bad Request", None)])
        problems = _validate(body, self.invalid)
        if problems:
            return _errors(400, problems)
        if body.get("mail_settings", {}).get("sandbox_mode", {}).get("enable") is True:
            return Reply(200)
        message_id = uuid.uuid4().hex[:22]
        with self.lock:
            for index, item in enumerate(body["personalizations"]):
                self.delivered.append(_deliver(body, item, message_id, index))
        return Reply(202, None, {"X-Message-Id": message_id})

    def _search(self, request: Request) -> Reply:
        if not self.activity:
            return _errors(403, [(FORBIDDEN_TEXT, None)])
        wait = self._activity_wait()
        if wait is not None:
            return rate_limited(reset_in=wait, limit=self.activity_limit or 0)
        query = (request.query.get("query") or [""])[0]
        try:
            limit = int((request.query.get("limit") or ["10"])[0])
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            return _errors(400, [("limit must be between 1 and 1000", "limit")])
        conditions = _QUERY.findall(query)
        if not conditions:
            return _errors(400, [("invalid query", "query")])
        with self.lock:
            found = [d for d in self.delivered if all(_matches(d, c) for c in conditions)]
        return Reply(200, {"messages": [d.summary() for d in found[:limit]]})

    def _activity_wait(self) -> float | None:
        """Seconds until another search is allowed, or None when this one is (and counts)."""
        if self.activity_limit is None:
            return None
        now = self.clock()
        with self.lock:
            self._searches = [t for t in self._searches if t > now - ACTIVITY_WINDOW]
            if len(self._searches) >= self.activity_limit:
                return self._searches[0] + ACTIVITY_WINDOW - now
            self._searches.append(now)
        return None

    def _list(self, name: str, request: Request) -> Reply:
        if name not in LISTS:
            return _errors(404, [("not found", None)])
        try:
            limit = int((request.query.get("limit") or [str(MAX_PAGE)])[0])
            offset = int((request.query.get("offset") or ["0"])[0])
        except ValueError:
            return _errors(400, [("limit and offset must be numbers", None)])
        if not 1 <= limit <= MAX_PAGE or offset < 0:
            return _errors(400, [(f"limit must be between 1 and {MAX_PAGE}", "limit")])
        with self.lock:
            return Reply(200, self.lists[name][offset : offset + limit])


# -- faults as SendGrid sends them ------------------------------------------------


def rate_limited(*, reset_in: float = 1.0, limit: int = 600) -> Reply:
    """429 with SendGrid's X-RateLimit-* headers (Reset is an epoch time)."""
    headers = {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(int(time.time() + reset_in)),
    }
    return _errors(429, [("too many requests", None)], headers)


def server_error(status: int = 500) -> Reply:
    return _errors(status, [("internal server error", None)])


def too_large() -> Reply:
    return _errors(413, [(TOO_LARGE_TEXT, None)])


def forbidden(message: str = FORBIDDEN_TEXT) -> Reply:
    return _errors(403, [(message, None)])


# -- helpers ----------------------------------------------------------------------


def _errors(
    status: int, problems: Iterable[tuple[str, str | None]], headers: Mapping[str, str] = {}
) -> Reply:
    body = {
        "errors": [
            {"message": message, "field": where, "help": HELP if where else None}
            for message, where in problems
        ]
    }
    return Reply(status, body, dict(headers))


def _validate(body: dict[str, Any], invalid: set[str]) -> list[tuple[str, str | None]]:
    """What SendGrid would say about a mail-send body (every problem, as it does)."""
    problems: list[tuple[str, str | None]] = []
    sender = body.get("from")
    if not isinstance(sender, dict) or "email" not in sender:
        problems.append(
            (
                "The from object must be provided for every email send. It is an object that "
                "requires the email parameter, but may also contain a name parameter.",
                "from",
            )
        )
    elif not _valid(sender["email"]):
        problems.append(("The from email does not contain a valid address.", "from.email"))
    personalizations = body.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        problems.append(("You must have at least one personalization.", "personalizations"))
        personalizations = []
    elif len(personalizations) > MAX_PERSONALIZATIONS:
        problems.append(
            (
                "The personalization block is limited to 1000 personalizations per API "
                f"request. You have provided {len(personalizations)} personalizations. Please "
                "consider splitting this into multiple requests and resending your request.",
                "personalizations",
            )
        )
    seen: set[str] = set()
    for i, item in enumerate(personalizations):
        to = item.get("to") if isinstance(item, dict) else None
        if not isinstance(to, list) or not to:
            problems.append(
                (
                    "The to array is required for all personalization objects, and must have "
                    "at least one email object with a valid email address.",
                    f"personalizations.{i}.to",
                )
            )
            continue
        for j, recipient in enumerate(to):
            email = recipient.get("email") if isinstance(recipient, dict) else None
            if not _valid(email) or str(email).lower() in invalid:
                problems.append((INVALID_ADDRESS_TEXT, f"personalizations.{i}.to.{j}.email"))
            elif str(email).lower() in seen:
                problems.append(
                    (
                        "Each unique email address in the personalizations array should only "
                        "be included once.",
                        f"personalizations.{i}.to.{j}.email",
                    )
                )
            else:
                seen.add(str(email).lower())
        if not body.get("subject") and not item.get("subject"):
            problems.append(
                (
                    "The subject is required. You can get around this requirement if you use a "
                    "template with a subject defined or if every personalization has a subject "
                    "defined.",
                    "subject",
                )
            )
        for name in ("substitutions", "custom_args", "headers"):
            values = item.get(name, {})
            if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
                problems.append((f"{name} values must be strings", f"personalizations.{i}.{name}"))
        if len(json.dumps(item.get("substitutions", {}))) > 10_000:
            problems.append(
                (
                    "The total size of your substitutions may not exceed 10,000 bytes per "
                    "personalization object.",
                    f"personalizations.{i}.substitutions",
                )
            )
    content = body.get("content")
    if not isinstance(content, list) or not content:
        problems.append(
            (
                "Unless a valid template_id is provided, the content parameter is required.",
                "content",
            )
        )
        content = []
    for i, part in enumerate(content):
        if (
            not isinstance(part, dict)
            or not isinstance(part.get("value"), str)
            or not part["value"]
        ):
            problems.append(
                (
                    "The content value must be a string at least one character in length.",
                    f"content.{i}.value",
                )
            )
    types = [p.get("type") for p in content if isinstance(p, dict)]
    if "text/plain" in types and types[0] != "text/plain":
        problems.append(
            (
                "If present, text/plain content must be first, followed by text/html, followed "
                "by any other content.",
                "content.0.type",
            )
        )
    categories = body.get("categories", [])
    if not isinstance(categories, list) or len(categories) > 10:
        problems.append(("Too many categories. The maximum is 10.", "categories"))
    return problems


def _valid(email: Any) -> bool:
    return isinstance(email, str) and _EMAIL.fullmatch(email) is not None


def _deliver(body: dict[str, Any], item: dict[str, Any], message_id: str, index: int) -> Delivered:
    """One personalization as its reader gets it: substitutions applied to the subject and
    both parts, subscription tracking's link and headers added."""
    subs: dict[str, str] = item.get("substitutions", {})
    parts = {p["type"]: p["value"] for p in body["content"]}
    msg_id = f"{message_id}.filter0001.{index}.0"
    headers = {**body.get("headers", {}), **item.get("headers", {})}
    html, text = parts.get("text/html", ""), parts.get("text/plain", "")
    subject = item.get("subject") or body["subject"]
    html, text, subject = (_substitute(v, subs) for v in (html, text, subject))
    tracking = body.get("tracking_settings", {}).get("subscription_tracking", {})
    if tracking.get("enable"):
        link = f"{UNSUBSCRIBE_BASE}{msg_id}"
        tag = tracking.get("substitution_tag")
        if tag:
            html, text = html.replace(tag, link), text.replace(tag, link)
        else:
            html += f'<p><a href="{link}">Unsubscribe</a></p>'
            text += f"\n\nUnsubscribe: {link}\n"
        headers["List-Unsubscribe"] = f"<{link}>"
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    recipient = item["to"][0]
    return Delivered(
        message_id=message_id,
        msg_id=msg_id,
        to=recipient["email"].lower(),
        name=recipient.get("name"),
        sender=body["from"]["email"],
        subject=subject,
        html=html,
        text=text,
        headers=headers,
        custom_args={**body.get("custom_args", {}), **item.get("custom_args", {})},
        categories=list(body.get("categories", [])),
        at=time.time(),
    )


def _substitute(value: str, subs: Mapping[str, str]) -> str:
    # Longest tags first, so one tag that is a prefix of another cannot cut it short.
    for tag in sorted(subs, key=len, reverse=True):
        value = value.replace(tag, subs[tag])
    return value


def _matches(delivered: Delivered, condition: tuple[str, str, str]) -> bool:
    whole, arg, value = condition
    if arg:
        return delivered.custom_args.get(arg) == value
    if whole == "to_email":
        return delivered.to == value.lower()
    return delivered.msg_id == value
