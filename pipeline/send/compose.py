"""Rendering for a run: every part that can go out is compiled before anything is
sent, once per article, template version and reader variant; each reader's email is
then those compiled parts with their name, address and unsubscribe link filled in."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from ..config import Address, Config
from ..content import Article, Series
from ..providers import Merge, Message, Provider
from ..store import ledger
from ..store.ledger import Claim

if TYPE_CHECKING:
    from ..render import CompiledEmail, Renderer
    from .run import Run


class Composer:
    """The compiled emails of one run, and the per-reader messages made from them."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.renderer: Renderer | None = None
        # (series slug, part, the part the reader started at) → compiled email
        self.compiled: dict[tuple[str, int, int], CompiledEmail] = {}

    def prepare(self, series_list: Sequence[Series]) -> None:
        """Render every part that can go out before anything is sent: a broken template
        in part 5 must stop the run before part 1 reaches anyone."""
        from ..render import Renderer  # only now: a quiet run never needs it

        run = self.run
        self.renderer = Renderer(run.config, now=run.options.now)
        with run.store.connect() as conn:
            starts = {s.slug: ledger.start_parts(conn, s.slug) for s in series_list}
        self.compiled.update(_compile_all(self.renderer, series_list, run.options.now, starts))

    def for_claim(self, series: Series, claim: Claim, issued: datetime) -> Message:
        """The message for one claimed delivery, its links signed as of ``issued``."""
        e = claim.enrollment
        return self.build(
            series,
            claim.part,
            e.start_part,
            e.subscriber_id,
            e.email,
            e.name,
            claim.key,
            issued=issued,
        )

    def build(
        self,
        series: Series,
        part: int,
        start_part: int,
        subscriber_id: int,
        email: str,
        name: str,
        key: str,
        *,
        issued: datetime,
    ) -> Message:
        """One reader's message for ``part`` of ``series`` (delivery ``key``)."""
        run = self.run
        article = series.part(part)
        assert article is not None  # the planner only proposes existing parts
        return personal_message(
            run.config,
            run.provider,
            self._compiled(series, article, start_part),
            key=key,
            sender=series.sender,
            to=Address(email, name),
            tag=f"{series.slug}-part{part}",
            token=lambda: run.signer.token(subscriber_id, series.slug, issued=issued),
        )

    def _compiled(self, series: Series, article: Article, start_part: int) -> CompiledEmail:
        first = max(series.articles[0].part, start_part)
        key = (series.slug, article.part, first)
        if key not in self.compiled:
            received = [a.part for a in series.articles if first <= a.part < article.part]
            assert self.renderer is not None  # set before anything is delivered
            self.compiled[key] = self.renderer.compile(series, article, received=received)
        return self.compiled[key]


def _compile_all(
    renderer: Renderer,
    series_list: Sequence[Series],
    now: datetime,
    start_parts: dict[str, set[int]],
) -> dict[tuple[str, int, int], CompiledEmail]:
    """Every part that can go out now, for every starting part readers have (what they
    have received differs), rendered once per template version."""
    compiled = {}
    for series in series_list:
        first_part = series.articles[0].part
        for start in {first_part} | {max(p, first_part) for p in start_parts.get(series.slug, ())}:
            for article in series.articles:
                if article.part >= start and article.is_published(now):
                    received = [a.part for a in series.articles if start <= a.part < article.part]
                    compiled[(series.slug, article.part, start)] = renderer.compile(
                        series, article, received=received
                    )
    return compiled


def personal_message(
    config: Config,
    provider: Provider,
    compiled: CompiledEmail,
    *,
    key: str,
    sender: Address,
    to: Address,
    tag: str,
    token: Callable[[], str],
) -> Message:
    """One reader's email: their name and address filled in, and their unsubscribe link
    (a signed ``token`` in ``unsubscribe_url``, with the RFC 8058 headers) or the
    provider's own placeholder where it manages unsubscribes."""
    from ..render import Personal

    headers: dict[str, str] = {}
    url = provider.managed_unsubscribe
    if url is None:
        url = config.unsubscribe_url.replace("{token}", token())
        headers = {
            "List-Unsubscribe": f"<{url}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }
    rendered = compiled.personalise(Personal(to.name, to.email, url), config.default_name)
    return Message(
        key=key,
        sender=sender,
        to=to,
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
        reply_to=config.reply_to,
        headers=headers,
        tag=tag,
        merge=Merge(
            compiled,
            {"name": to.name or config.default_name, "email": to.email, "unsubscribe_url": url},
        ),
    )
