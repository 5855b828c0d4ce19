"""Email providers behind one interface, and the registry that picks one by name."""

from __future__ import annotations

import os
from collections.abc import Callable

from ..config import Config
from ..errors import SeriesError
from .base import Message, Provider, ProviderError, SendResult

PROVIDER_URL_ENV = "SERIES_PROVIDER_URL"


def _outbox(config: Config) -> Provider:
    from .outbox import OutboxProvider

    return OutboxProvider(config.root / "outbox")


def _postmark(config: Config) -> Provider:
    from .postmark import PostmarkProvider

    return PostmarkProvider(
        base_url=os.environ.get(PROVIDER_URL_ENV) or None,
        message_stream=config.postmark_stream,
        batch_size=config.postmark_batch_size,
    )


REGISTRY: dict[str, Callable[[Config], Provider]] = {
    "outbox": _outbox,
    "postmark": _postmark,
}


def get_provider(name: str, config: Config) -> Provider:
    factory = REGISTRY.get(name)
    if factory is None:
        raise SeriesError(f"unknown provider '{name}' (one of: {', '.join(sorted(REGISTRY))})")
    return factory(config)


__all__ = ["REGISTRY", "Message", "Provider", "ProviderError", "SendResult", "get_provider"]
