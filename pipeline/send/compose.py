"""Rendering for a run: every article that can go out is compiled before anything is
sent, once per article, template version and reader variant; each reader's email is
then those compiled articles with their name, address and unsubscribe link filled in.

A reader variant is what the reader has received of the series (their history, as
article slugs): it decides the "continue the series" block. Readers who got the
series in order share one history per starting part, so the compiled emails are
few however many readers there are; a history an edit made unusual (an article
inserted before the reader's position, a part moved) is one more variant.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from ..config import Address, Config
from ..content import Series
from ..plan import Step
from ..providers import Merge, Message, Provider
from ..store import ledger
from ..store.ledger import Claim, Due

if TYPE_CHECKING:
    from ..render import CompiledEmail, Renderer
    from .run import Run

# (series slug, article slug, slugs of the series' articles the reader has received)
Variant = tuple[str, str, frozenset[str]]


class Composer:
    """The compiled emails of one run, and the per-reader messages made from them."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.renderer: Renderer | None = None
        self.compiled: dict[Variant, CompiledEmail] = {}
        self._slugs: dict[str, frozenset[str]] = {}  # series slug → its article slugs

    def prepare(
        self, series_list: Sequence[Series], due: Iterable[tuple[Series, Due, Step]] = ()
    ) -> None:
        """Render before anything is sent, so that a broken template in part 5 stops the
        run before part 1 reaches anyone: every article that can go out, for each part
        readers started at (in-order histories), and the variant of each ``due``
        delivery. Raises RenderError."""
        from ..render import Renderer  # only now: a quiet run never needs it

        run = self.run
        if self.renderer is None:
            self.renderer = Renderer(run.config, now=run.options.now)
            with run.store.connect() as conn:
                starts = {s.slug: ledger.start_parts(conn, s.slug) for s in series_list}
            self.compiled.update(_compile_all(self.renderer, series_list, run.options.now, starts))
        self.prepare_due(due)

    def prepare_due(self, due: Iterable[tuple[Series, Due, Step]]) -> None:
        """Compile the variants these due deliveries need that are not compiled yet."""
        for series, item, _ in due:
            self._compiled(series, item.article, item.enrollment.received())

    def variant(self, series: Series, article: str, received: Collection[str]) -> Variant:
        """The compiled email a reader with history ``received`` gets for ``article``
        (articles gone from the series do not change the email, so they are left out)."""
        slugs = self._slugs.get(series.slug)
        if slugs is None:
            slugs = self._slugs[series.slug] = frozenset(a.slug for a in series.articles)
        return (series.slug, article, slugs.intersection(received))

    def for_claim(self, series: Series, claim: Claim, issued: datetime) -> Message:
        """The message for one claimed delivery, its links signed as of ``issued``."""
        e = claim.enrollment
        return self.build(
            series,
            claim.article,
            e.received(),
            e.subscriber_id,
            e.email,
            e.name,
            claim.key,
            issued=issued,
        )

    def build(
        self,
        series: Series,
        article: str,
        received: Collection[str],
        subscriber_id: int,
        email: str,
        name: str,
        key: str,
        *,
        issued: datetime,
    ) -> Message:
        """One reader's message for ``article`` (a slug) of ``series``, as a reader who
        has received ``received`` sees it (delivery ``key``)."""
        run = self.run
        compiled = self._compiled(series, article, received)
        return personal_message(
            run.config,
            run.provider,
            compiled,
            key=key,
            sender=series.sender,
            to=Address(email, name),
            tag=f"{series.slug}-part{compiled.part}",
            token=lambda: run.signer.token(subscriber_id, series.slug, issued=issued),
        )

    def _compiled(self, series: Series, slug: str, received: Collection[str]) -> CompiledEmail:
        key = self.variant(series, slug, received)
        compiled = self.compiled.get(key)
        if compiled is None:
            article = series.article(slug)
            assert article is not None  # the planner only proposes articles of the series
            assert self.renderer is not None  # set before anything is delivered
            compiled = self.renderer.compile(series, article, received=key[2])
            self.compiled[key] = compiled
        return compiled


def _compile_all(
    renderer: Renderer,
    series_list: Sequence[Series],
    now: datetime,
    start_parts: dict[str, set[int]],
) -> dict[Variant, CompiledEmail]:
    """Every article that can go out now, for every part readers started at, as readers
    who received the series in order from there see it; rendered once per template
    version."""
    compiled = {}
    for series in series_list:
        first_part = series.articles[0].part
        for start in {first_part} | {max(p, first_part) for p in start_parts.get(series.slug, ())}:
            for article in series.articles:
                if article.part >= start and article.is_published(now):
                    received = frozenset(
                        a.slug for a in series.articles if start <= a.part < article.part
                    )
                    compiled[(series.slug, article.slug, received)] = renderer.compile(
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
