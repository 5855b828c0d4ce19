"""Email providers behind one interface, and the registry that picks one by name."""

from __future__ import annotations

import os
from collections.abc import Callable

from ..config import Config
from ..errors import SeriesError
from .base import Merge, Message, Pending, Provider, ProviderError, SendResult, Suppression

PROVIDER_URL_ENV = "SERIES_PROVIDER_URL"


def _outbox(config: Config) -> Provider:
    from .outbox import OutboxProvider

    return OutboxProvider(config.root / "outbox")


def _base_url() -> str | None:
    return os.environ.get(PROVIDER_URL_ENV) or None


def _postmark(config: Config) -> Provider:
    from .postmark import PostmarkProvider

    return PostmarkProvider(
        base_url=_base_url(),
        message_stream=config.postmark_stream,
        batch_size=config.postmark_batch_size,
        manage_unsubscribes=config.unsubscribe == "provider",
    )


def _resend(config: Config) -> Provider:
    from .resend import ResendProvider

    return ResendProvider(base_url=_base_url(), batch_size=config.resend_batch_size)


def _sendgrid(config: Config) -> Provider:
    from .sendgrid import SendGridProvider

    return SendGridProvider(
        base_url=_base_url(),
        region=config.sendgrid_region,
        batch_size=config.sendgrid_batch_size,
        manage_unsubscribes=config.unsubscribe == "provider",
    )


def _mailgun(config: Config) -> Provider:
    from .mailgun import MailgunProvider

    return MailgunProvider(
        base_url=_base_url(),
        domain=config.mailgun_domain,
        region=config.mailgun_region,
        batch_size=config.mailgun_batch_size,
        manage_unsubscribes=config.unsubscribe == "provider",
    )


REGISTRY: dict[str, Callable[[Config], Provider]] = {
    "outbox": _outbox,
    "postmark": _postmark,
    "resend": _resend,
    "sendgrid": _sendgrid,
    "mailgun": _mailgun,
}


def get_provider(name: str, config: Config) -> Provider:
    factory = REGISTRY.get(name)
    if factory is None:
        raise SeriesError(f"unknown provider '{name}' (one of: {', '.join(sorted(REGISTRY))})")
    provider = factory(config)
    if config.unsubscribe == "provider" and provider.managed_unsubscribe is None:
        provider.close()
        raise SeriesError(
            f'{config.rel(config.source)}: unsubscribe = "provider", but {name} does not '
            'manage unsubscribes for series\' emails; use unsubscribe = "self-hosted" '
            "and run `series serve`"
        )
    return provider


__all__ = [
    "REGISTRY",
    "Merge",
    "Message",
    "Pending",
    "Provider",
    "ProviderError",
    "SendResult",
    "Suppression",
    "get_provider",
]
