"""The one small interface every email provider implements (STYLE.md).

An adapter turns HTTP (or files) into ``SendResult`` values, one per message, or
raises ``ProviderError`` when the whole request failed. The send loop, not the
adapter, decides about retries.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import orjson
from markupsafe import escape

from ..config import Address
from ..errors import MessageBuildError, SeriesError
from ..headers import (
    CONTROL,
    FOLD_AT,
    MAX_LINE,
    ascii_email,
    clean_name,
    encode_text,
    format_address,
    header_line,
    list_unsubscribe,
    one_line,
)
from ..personal import escape_values, json_string
from ..redact import provider_text, terminal_text

if TYPE_CHECKING:
    from ..render import CompiledEmail

Outcome = Literal["sent", "failed", "unknown"]
# What a provider's suppression list makes of a subscriber.
SuppressedAs = Literal["bounced", "complained", "unsubscribed"]


@dataclass(frozen=True)
class Merge:
    """A message before personalisation, for providers that fill in each recipient's
    fields themselves (one body per request plus per-recipient variables, as Mailgun's
    ``recipient-variables``). Messages built from the same part for the same kind of
    reader share ``template`` (the same object); the send loop never mixes two
    templates in one batch."""

    template: CompiledEmail
    values: dict[str, str]  # this recipient's fields: personal.PERSONAL_FIELDS
    # The same values HTML-escaped (personal.escape_values), when already worked out.
    escaped: dict[str, str] | None = None

    def body(self, placeholder: Callable[[str, bool], str]) -> tuple[str, str]:
        """(html, text) with ``placeholder(field, in_html)`` in place of each field."""
        fields = self.values.keys()
        html = self.template.html.fill({f: placeholder(f, True) for f in fields})
        text = self.template.text.fill({f: placeholder(f, False) for f in fields})
        return html, text

    @cached_property
    def filled(self) -> tuple[str, str]:
        """(html, text) of this recipient's message: the part with their fields filled
        in, escaped in the HTML."""
        rendered = self.template.filled(self.values, self.escaped)
        return rendered.html, rendered.text

    @cached_property
    def json_bodies(self) -> tuple[bytes, bytes]:
        """(html, text) of this recipient's message as JSON strings (quotes included,
        UTF-8), for a provider whose request carries the parts as JSON: the same text
        as ``Message.html`` and ``Message.text``, joined from pieces encoded once per
        part (`render._Filled.fill_json`). Raises orjson.JSONEncodeError for a value
        UTF-8 cannot carry (a lone surrogate)."""
        escaped = self.escaped if self.escaped is not None else escape_values(self.values)
        text = {name: json_string(raw) for name, raw in self.values.items()}
        # A value with nothing to escape is the same object in both (`escape_values`).
        html = {
            name: text[name] if value is self.values[name] else json_string(value)
            for name, value in escaped.items()
        }
        return self.template.html.fill_json(html), self.template.text.fill_json(text)

    def value(self, name: str, *, in_html: bool) -> str:
        """One field's value as the HTML part needs it (escaped) or the text part."""
        raw = self.values[name]
        return str(escape(raw)) if in_html else raw


class Message:
    """One personalised email, ready for a provider: a value that does not change
    (`replace` makes a changed copy).

    Its ``html`` and ``text`` are given, or, for a message made from a compiled part
    (``merge``), filled in from it (`Merge.filled`) the first time they are read: a provider whose
    request carries the parts as JSON (`json_bodies`) never builds them, about 25 KB
    of text per reader."""

    __slots__ = (
        "_html",
        "_text",
        "headers",
        "key",
        "merge",
        "reply_to",
        "sender",
        "subject",
        "tag",
        "to",
    )
    key: str  # the delivery's unique key; providers carry it as metadata
    sender: Address
    to: Address
    subject: str
    reply_to: str | None
    headers: dict[str, str]
    tag: str
    # The same email before personalisation: ``html`` and ``text`` are its fill.
    merge: Merge | None
    _html: str | None
    _text: str | None

    def __init__(
        self,
        key: str,
        sender: Address,
        to: Address,
        subject: str,
        html: str | None = None,
        text: str | None = None,
        reply_to: str | None = None,
        headers: dict[str, str] | None = None,
        tag: str = "",
        merge: Merge | None = None,
    ) -> None:
        """Raises TypeError when neither both parts nor the ``merge`` they come from
        are given."""
        if (html is None or text is None) and merge is None:
            raise TypeError("a Message needs its html and text, or the merge they fill from")
        put = object.__setattr__  # past the __setattr__ below that refuses changes
        put(self, "key", key)
        put(self, "sender", sender)
        put(self, "to", to)
        put(self, "subject", subject)
        put(self, "reply_to", reply_to)
        put(self, "headers", {} if headers is None else headers)
        put(self, "tag", tag)
        put(self, "merge", merge)
        put(self, "_html", html)
        put(self, "_text", text)

    @property
    def html(self) -> str:
        """The HTML part (filled in from ``merge``, once, when not given)."""
        return self._html if self._html is not None else self._merge().filled[0]

    @property
    def text(self) -> str:
        """The plain-text part (likewise)."""
        return self._text if self._text is not None else self._merge().filled[1]

    def _merge(self) -> Merge:
        assert self.merge is not None  # __init__ makes sure when a part is not given
        return self.merge

    def replace(self, **changes: Any) -> Message:
        """A copy with ``changes`` (the constructor's arguments by name). Its parts are
        this message's: still to be filled from the same merge, or, when ``merge``
        changes and they are not given, the text they have now."""
        given: dict[str, Any] = {name: getattr(self, name) for name in _MESSAGE_FIELDS}
        if "merge" in changes:
            given["html"], given["text"] = self.html, self.text
        else:
            given["html"], given["text"] = self._html, self._text
        given.update(changes)
        return Message(**given)

    def json_bodies(self) -> tuple[Any, Any]:
        """(html, text) as a JSON request body carries them: ``orjson.Fragment``s
        joined from pieces encoded once per part when the message has its ``merge``,
        else the strings themselves (orjson encodes them)."""
        if self.merge is None:
            return self.html, self.text
        html, text = self.merge.json_bodies
        return orjson.Fragment(html), orjson.Fragment(text)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # For copy and pickle, which would otherwise set each slot (refused below).
        fields = (self.key, self.sender, self.to, self.subject, self._html, self._text)
        return Message, (*fields, self.reply_to, self.headers, self.tag, self.merge)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a Message does not change ({name}); use replace()")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"a Message does not change ({name}); use replace()")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return self._compared() == other._compared()

    __hash__ = None  # type: ignore[assignment]  # its headers are a dict

    def _compared(self) -> tuple[Any, ...]:
        return (*(getattr(self, name) for name in _MESSAGE_FIELDS), self.html, self.text)

    def __repr__(self) -> str:
        return (
            f"Message(key={self.key!r}, to={self.to!r}, subject={self.subject!r}, tag={self.tag!r})"
        )


_MESSAGE_FIELDS = ("key", "sender", "to", "subject", "reply_to", "headers", "tag", "merge")


@dataclass(frozen=True)
class SendResult:
    """One message's outcome. ``error`` is stored in the ledger and printed, so it is
    scrubbed as it is made (``redact.provider_text``: no secret, no address), whichever
    adapter or stage wrote it."""

    key: str
    outcome: Outcome
    message_id: str | None = None
    error: str | None = None
    # For a failure about the recipient (invalid, inactive, suppressed): the status
    # the subscriber now has. Such failures are never retried.
    subscriber_status: str | None = None

    def __post_init__(self) -> None:
        if self.error:
            object.__setattr__(self, "error", provider_text(self.error))
        if self.message_id:
            # A provider's id goes into the ledger and out in tables: a control
            # character in one (NUL, which PostgreSQL cannot store and SQLite's JSON
            # functions cut at) is kept as a visible escape.
            object.__setattr__(self, "message_id", terminal_text(self.message_id))


@dataclass(frozen=True)
class Pending:
    """A delivery whose outcome is unknown, to look up at the provider."""

    key: str  # the delivery key the message carried
    email: str  # its recipient
    since: datetime  # it was handed to the provider no earlier than this


@dataclass(frozen=True)
class Suppression:
    """One entry of a provider's suppression list."""

    email: str
    status: SuppressedAs
    reason: str  # the provider's own words, for the audit trail (scrubbed: no address)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", provider_text(self.reason))


class ProviderError(SeriesError):
    """A whole request failed. ``retryable``: try again later; ``auth``: stop the run,
    nothing more can be sent (bad credentials, an exhausted quota); ``maybe_sent``: the
    provider may have accepted it (the outcome is unknown, unless repeating the request
    under its idempotency key settles it)."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        auth: bool = False,
        maybe_sent: bool = False,
        retry_after: float | None = None,
    ) -> None:
        # Printed, logged and stored as the last error of every delivery of a request:
        # scrubbed here, for every provider (a proxy or server may echo the request).
        super().__init__(provider_text(message))
        self.retryable = retryable
        self.auth = auth
        self.maybe_sent = maybe_sent
        self.retry_after = retry_after


class Provider(ABC):
    name: ClassVar[str]
    batch_size: int = 1  # messages per request; an instance may lower it
    # True when a request repeated with the same ``batch_key`` is answered from the
    # first one without sending again (an idempotency key), for how long it is kept.
    idempotent: ClassVar[bool] = False
    idempotency_window: ClassVar[float] = 0.0  # seconds
    # How far back ``lookup`` can see (seconds; None: as far as we need). Past it, a
    # delivery the provider does not find may still have been sent.
    lookup_window: ClassVar[float | None] = None
    # How long after an interrupted send "not found" by ``lookup`` can be believed:
    # a search may not list what was accepted just before (seconds).
    settle_time: ClassVar[float] = 600.0
    # How many deliveries one ``lookup`` call is given (None: all at once): a run stops
    # on a signal between two calls, so a provider that asks once per delivery takes
    # one at a time (the outbox reads its folder once for all of them).
    lookup_batch: ClassVar[int | None] = None
    # True when one request carries one body for all its recipients (personalised by the
    # provider from Message.merge): the send loop then batches only messages of the
    # same template together.
    shared_body: ClassVar[bool] = False
    # False for a provider that keeps no suppression lists (the outbox): nothing to sync.
    keeps_suppressions: ClassVar[bool] = True
    # Where the provider manages unsubscribes (config ``unsubscribe = "provider"``):
    # the placeholder it replaces with each recipient's own unsubscribe URL. The
    # adapter then adds whatever the provider needs for its List-Unsubscribe headers.
    managed_unsubscribe: str | None = None

    @abstractmethod
    def send(self, messages: Sequence[Message], *, batch_key: str) -> list[SendResult]:
        """Send up to ``batch_size`` messages; one result per message, in order.
        ``batch_key`` names this batch: the same messages always get the same key."""

    def prepare(self, message: Message) -> None:  # noqa: B027  (optional hook)
        """Do ahead what ``send`` will need of ``message`` and keeps with it (the send
        loop calls it as it builds each message, while the request before is on its
        way). Raises what building that part of the request raises: that message
        alone fails."""

    def lookup(self, pending: Sequence[Pending]) -> dict[str, str | None]:
        """For deliveries whose outcome is unknown: the provider's message id of each one
        it has, by delivery key (None where it has none). A key left out was not checked
        (a rate limit cut the search short) and stays unknown. Raises ProviderError when
        it cannot tell anything."""
        raise ProviderError(f"{self.name} cannot look up sent messages")

    def suppressions(self) -> Iterator[Suppression]:
        """Every address the provider refuses to send to, all pages of it. Raises
        ProviderError when the list cannot be had."""
        return iter(())

    def close(self) -> None:  # noqa: B027  (optional hook: most providers hold nothing)
        """Release connections."""


def sendable(messages: Sequence[Message]) -> tuple[list[Message], list[SendResult]]:
    """Split a batch into the messages as they go on the wire and failed results for
    those that cannot (``MessageBuildError``'s reason): one reader's odd data never
    sinks the batch. Every adapter calls this first and sends only the first list.

    A wire message has ASCII addresses (IDN domains in A-labels, RFC 5890), a name
    and subject on one line, and header values that are one RFC 5322 field each; it
    has been formatted once as the outbox would write it, so building its request
    cannot fail."""
    ready: list[Message] = []
    refused: list[SendResult] = []
    for message in messages:
        try:
            ready.append(_on_the_wire(message))
        except MessageBuildError as exc:
            refused.append(SendResult(message.key, "failed", error=f"not sent: {exc}"))
    return ready, refused


def in_order(messages: Sequence[Message], *results: Iterable[SendResult]) -> list[SendResult]:
    """One result per message, in the messages' order, from results in any order."""
    by_key = {result.key: result for group in results for result in group}
    return [by_key[message.key] for message in messages]


def _on_the_wire(message: Message) -> Message:
    sender, reply_to, subject = _fixed_fields(message.sender, message.reply_to, message.subject)
    to = message.to
    wire_email, wire_name = ascii_email(to.email), clean_name(to.name)
    if wire_email != to.email or wire_name != to.name:
        to = Address(wire_email, wire_name)
    # The reader's mailbox: ASCII without control characters by construction, so the
    # To line can only fail by length (a word over the line limit).
    formatted = to.formatted()
    if len(formatted) > MAX_LINE - len("To: "):
        header_line("To", formatted)
    headers = message.headers
    unsubscribe = headers.get("List-Unsubscribe")
    plain = unsubscribe is not None and _plain_line("List-Unsubscribe", unsubscribe)
    if unsubscribe is not None and not plain:
        headers = {**headers, "List-Unsubscribe": list_unsubscribe(unsubscribe)}
    for name, value in headers.items():
        if not (plain and name == "List-Unsubscribe"):
            header_line(name, value)  # the fixed fields are remembered by header_line
    if (
        sender == message.sender
        and to is message.to
        and reply_to == message.reply_to
        and subject == message.subject
        and headers is message.headers
    ):
        return message  # already as it goes on the wire (the usual case): no copy
    return message.replace(
        sender=sender, to=to, reply_to=reply_to, subject=subject, headers=headers
    )


@lru_cache(maxsize=256)  # a batch repeats its sender, reply address and subject
def _fixed_fields(
    sender: Address, reply_to: str | None, subject: str
) -> tuple[Address, str | None, str]:
    """The sender, Reply-To address and subject as they go on the wire, each checked to
    make a header line. Raises MessageBuildError (not remembered: each message that
    carries them fails alike)."""
    wire_sender = Address(ascii_email(sender.email), clean_name(sender.name))
    wire_reply_to = ascii_email(reply_to) if reply_to else None
    header_line("From", wire_sender.formatted())
    header_line("Subject", encode_text(subject))
    if wire_reply_to:
        header_line("Reply-To", format_address(wire_reply_to))
    return wire_sender, wire_reply_to, one_line(subject)


def _plain_line(name: str, value: str) -> bool:
    """Whether ``name: value`` is one short line of ASCII without control characters:
    written as it is, nothing to encode or fold (a reader's List-Unsubscribe, usually)."""
    return (
        (
            len(name) + len(value) + 2 <= FOLD_AT
            or (len(name) + len(value) + 2 <= MAX_LINE and " " not in value)
        )
        and value.isascii()
        and CONTROL.search(value) is None
    )
