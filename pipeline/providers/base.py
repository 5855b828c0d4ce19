"""The one small interface every email provider implements (STYLE.md).

An adapter turns HTTP (or files) into ``SendResult`` values, one per message, or
raises ``ProviderError`` when the whole request failed. The send loop, not the
adapter, decides about retries.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ..config import Address
from ..errors import SeriesError

Outcome = Literal["sent", "failed", "unknown"]


@dataclass(frozen=True)
class Message:
    """One personalised email, ready for a provider."""

    key: str  # the delivery's unique key; providers carry it as metadata
    sender: Address
    to: Address
    subject: str
    html: str
    text: str
    reply_to: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    tag: str = ""


@dataclass(frozen=True)
class SendResult:
    key: str
    outcome: Outcome
    message_id: str | None = None
    error: str | None = None
    # For a failure about the recipient (invalid, inactive, suppressed): the status
    # the subscriber now has. Such failures are never retried.
    subscriber_status: str | None = None


class ProviderError(SeriesError):
    """A whole request failed. ``retryable``: try again later; ``auth``: stop the run;
    ``maybe_sent``: the provider may have accepted it (the outcome is unknown)."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        auth: bool = False,
        maybe_sent: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.auth = auth
        self.maybe_sent = maybe_sent
        self.retry_after = retry_after


class Provider(ABC):
    name: ClassVar[str]
    batch_size: int = 1  # messages per request; an instance may lower it

    @abstractmethod
    def send(self, messages: Sequence[Message]) -> list[SendResult]:
        """Send up to ``batch_size`` messages; one result per message, in order."""

    def lookup(self, keys: Sequence[str]) -> dict[str, str | None]:
        """For deliveries whose outcome is unknown: the provider's message id of each one
        it has (None where it has none). Raises ProviderError when it cannot tell."""
        raise ProviderError(f"{self.name} cannot look up sent messages")

    def close(self) -> None:  # noqa: B027  (optional hook: most providers hold nothing)
        """Release connections."""
