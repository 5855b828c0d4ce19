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
from ..errors import SeriesError
from ..personal import Personal, escape_values, field_values
from ..plan import Step, started_late_from
from ..providers import Merge, Message, Provider
from ..store import StoreError, ledger
from ..store.ledger import Claim, Due

if TYPE_CHECKING:
    from ..render import CompiledEmail, Renderer
    from .run import Run

# (series slug, article slug, slugs of the series' articles the reader has received)
Variant = tuple[str, str, frozenset[str], bool]
# A reader with nothing unusual about them. When their message cannot be built either,
# the problem is not any one reader's (the configuration, the sender, a template): it
# must stop the run, not be counted as a failure of every reader.
PROBE = Address("reader@example.com", "")
PROBE_TOKEN = "AQEAAABkAAAAAA.c2lnbmF0dXJlLW9mLWEtcHJvYmU"  # shaped like tokens.Signer's


class Composer:
    """The compiled emails of one run, and the per-reader messages made from them."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.renderer: Renderer | None = None
        self.compiled: dict[Variant, CompiledEmail] = {}
        self._slugs: dict[str, frozenset[str]] = {}  # series slug → its article slugs
        self._series: dict[str, Series] = {}
        self._problems: dict[Variant, str | None] = {}  # what the probe reader's build said

    def prepare(
        self, series_list: Sequence[Series], due: Iterable[tuple[Series, Due, Step]] = ()
    ) -> None:
        """Render before anything is sent, so that a broken template in part 5 stops the
        run before part 1 reaches anyone: every article that can go out, for each part
        readers started at (in-order histories), and the variant of each ``due``
        delivery. Raises RenderError, or SeriesError when a message cannot be built
        for any reader (see ``refuse_unbuildable``)."""
        from ..render import Renderer  # only now: a quiet run never needs it

        run = self.run
        self._series.update((s.slug, s) for s in series_list)
        if self.renderer is None:
            self.renderer = Renderer(run.config, now=run.options.now)
            with run.store.connect() as conn:
                starts = {s.slug: ledger.start_parts(conn, s.slug) for s in series_list}
            self.compiled.update(_compile_all(self.renderer, series_list, run.options.now, starts))
        self.prepare_due(due)

    def prepare_due(self, due: Iterable[tuple[Series, Due, Step]]) -> None:
        """Compile the variants these due deliveries need that are not compiled yet, and
        stop (SeriesError) when one of them cannot be built for any reader."""
        for series, item, _ in due:
            self._series[series.slug] = series
            enrollment = item.enrollment
            self._compiled(
                series, item.article, enrollment.received(), enrollment.started_late(series)
            )
        self.refuse_unbuildable()

    def refuse_unbuildable(self) -> None:
        """Raise SeriesError when a compiled email cannot be made into a message even for
        an ordinary reader (``PROBE``): an unsubscribe URL or a sender no header can
        carry, a subject that cannot be written. Such a problem is everyone's, so the
        run stops before anything is claimed; only what a reader's own name or address
        breaks fails that reader's delivery."""
        for key, compiled in list(self.compiled.items()):
            if key not in self._problems:
                self._problems[key] = self._probe(key)
            problem = self._problems[key]
            if problem is not None:
                raise SeriesError(
                    f"{key[0]}/{compiled.part} ({key[1]}) cannot be sent to anyone: "
                    f"{problem}; nothing was sent (fix it, then run again)"
                )

    def _probe(self, key: Variant) -> str | None:
        """Why the message of variant ``key`` cannot be built for ``PROBE``, or None."""
        from ..providers.base import sendable

        run = self.run
        try:
            message = personal_message(
                run.config,
                run.provider,
                self.compiled[key],
                key="probe",
                sender=self._series[key[0]].sender,
                to=PROBE,
                tag="probe",
                token=lambda: PROBE_TOKEN,
            )
            _, refused = sendable([message])
        except StoreError:
            raise
        except Exception as exc:
            return first_line(exc)
        if refused:
            return (refused[0].error or "").removeprefix("not sent: ")
        return None

    def variant(
        self,
        series: Series,
        article: str,
        received: Collection[str],
        started_late: bool = False,
    ) -> Variant:
        """The compiled email a reader with history ``received`` gets for ``article``
        (articles gone from the series do not change the email, so they are left out);
        ``started_late``: enrolled after part 1 (``Enrollment.started_late``)."""
        slugs = self._slugs.get(series.slug)
        if slugs is None:
            slugs = self._slugs[series.slug] = frozenset(a.slug for a in series.articles)
        return (series.slug, article, slugs.intersection(received), started_late)

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
            first_name=e.first_name,
            started_late=e.started_late(series),
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
        first_name: str = "",
        started_late: bool | None = None,
    ) -> Message:
        """One reader's message for ``article`` (a slug) of ``series``, as a reader who
        has received ``received`` sees it (delivery ``key``); ``first_name`` is their
        ``first_name`` attribute ("": the first word of ``name`` greets them);
        ``started_late``: ``Enrollment.started_late`` (None: from the history alone)."""
        run = self.run
        if started_late is None:  # a repeated request: its rows carry no start_part
            started_late = started_late_from(series, received)
        compiled = self._compiled(series, article, received, started_late)
        return personal_message(
            run.config,
            run.provider,
            compiled,
            key=key,
            sender=series.sender,
            to=Address(email, name),
            tag=f"{series.slug}-part{compiled.part}",
            token=lambda: run.signer.token(
                subscriber_id, series.slug, issued=issued, article=article
            ),
            first_name=first_name,
        )

    def _compiled(
        self, series: Series, slug: str, received: Collection[str], started_late: bool = False
    ) -> CompiledEmail:
        key = self.variant(series, slug, received, started_late)
        compiled = self.compiled.get(key)
        if compiled is None:
            article = series.article(slug)
            assert article is not None  # the planner only proposes articles of the series
            assert self.renderer is not None  # set before anything is delivered
            compiled = self.renderer.compile(series, article, received=key[2], started_late=key[3])
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
                    late = start > first_part
                    compiled[(series.slug, article.slug, received, late)] = renderer.compile(
                        series, article, received=received, started_late=late
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
    first_name: str = "",
) -> Message:
    """One reader's email: their name (and ``first_name`` attribute, if any) and address
    filled in, and their unsubscribe link (a signed ``token`` in ``unsubscribe_url``,
    with the RFC 8058 headers) or the provider's own placeholder where it manages
    unsubscribes."""
    headers: dict[str, str] = {}
    url = provider.managed_unsubscribe
    if url is None:
        url = config.unsubscribe_url.replace("{token}", token())
        headers = {
            "List-Unsubscribe": f"<{url}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }
    values = field_values(Personal(to.name, to.email, url, first_name), config.default_name)
    escaped = escape_values(values)
    # The parts are filled in from the merge when a provider reads them (Postmark and
    # Resend send the merge's JSON pieces instead).
    return Message(
        key=key,
        sender=sender,
        to=to,
        subject=compiled.subject,
        reply_to=config.reply_to,
        headers=headers,
        tag=tag,
        merge=Merge(compiled, values, escaped),
    )


def first_line(exc: BaseException) -> str:
    """An exception as one line of a report: its first line, else its type's name."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
