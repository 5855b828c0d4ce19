"""`series test-send`: one part, through the configured provider, to an editor.

The email is the one a reader gets (same rendering, same headers), with "[TEST]"
before the subject. It touches neither the ledger nor any subscriber: the state
database is only read, for the link-signing key, and not created when missing.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, replace
from datetime import datetime

from .config import Address, Config
from .content import Article, Series
from .errors import SeriesError
from .providers import Provider, ProviderError
from .render import Renderer
from .send.compose import personal_message
from .subscribers import sendable_email
from .tokens import SECRET_ENV, TEST_SUBSCRIBER, Signer

SUBJECT_MARK = "[TEST] "


@dataclass(frozen=True)
class TestSent:
    series: Series
    article: Article
    to: str
    message_id: str | None


def send_test(
    config: Config,
    provider: Provider,
    series: Series,
    article: Article,
    to: str,
    *,
    now: datetime,
    progress: int | None = None,
) -> TestSent:
    """Render ``article`` as a reader who has received ``progress`` parts sees it
    (default: every earlier part) and send it to ``to``."""
    try:
        address = sendable_email(to)
    except ValueError as exc:
        raise SeriesError(f"--to: {exc}") from None
    received = None
    if progress is not None:
        received = [a.slug for a in series.articles[:progress]]
    compiled = Renderer(config, now=now).compile(series, article, received=received)
    compiled = replace(compiled, subject=SUBJECT_MARK + compiled.subject)
    key = f"test-{uuid.uuid4().hex}"
    message = personal_message(
        config,
        provider,
        compiled,
        key=key,
        sender=series.sender,
        to=Address(address, ""),
        tag=f"{series.slug}-part{article.part}-test",
        token=lambda: _signer(config).token(TEST_SUBSCRIBER, series.slug, issued=now),
    )
    try:
        [result] = provider.send([message], batch_key=f"series-{key}")
    except ProviderError as exc:
        raise SeriesError(f"the test email was not sent: {exc}") from None
    if result.outcome == "unknown":
        raise SeriesError(
            f"the provider's answer was lost ({result.error}); check {address}'s inbox "
            "before sending the test again"
        )
    if result.outcome != "sent":
        raise SeriesError(f"{provider.name} refused the test email: {result.error}")
    return TestSent(series, article, address, result.message_id)


def _signer(config: Config) -> Signer:
    """The workspace's signing key, read without creating or migrating anything."""
    import os

    from .store import open_store, state_exists
    from .store.ledger import link_signer

    if os.environ.get(SECRET_ENV) or not state_exists(config.root):
        # Without a state database there is no stored key: a throwaway one still
        # gives the email a well-formed link (the page will call it not valid).
        return Signer.from_environment(secrets.token_hex(32))
    with open_store(config.root, migrate=False) as store, store.connect() as conn:
        return link_signer(conn)
