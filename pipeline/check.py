"""`series check`: content, templates and rendered emails, every problem at once."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from .config import Config
from .content import Article, Series, load_series
from .errors import Problem, RenderError
from .markup import Document, raw_html
from .render import Renderer
from .scaffold import placeholder_problems
from .sources import cut

# Gmail clips a message whose HTML part, as received (encoded), is larger than this.
GMAIL_CLIP_BYTES = 102 * 1024


@dataclass(frozen=True)
class CheckReport:
    series: list[Series]
    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.is_error]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if not p.is_error]

    @property
    def articles(self) -> int:
        return sum(s.total for s in self.series)


def check_workspace(config: Config, *, now: datetime, state: bool = False) -> CheckReport:
    """Every problem of the workspace's content, templates, rendered emails and config;
    with ``state``, also warnings where the content no longer matches what readers
    received (the state database read-only, if there is one: pipeline/edits.py)."""
    series_list, problems = load_series(config)
    renderer = Renderer(config, now=now)
    template_problems: set[Problem] = set()
    for series in series_list:
        for article in series.articles:
            problems += _check_links(series, article, now)
            problems += _check_raw_html(config, article)
            try:
                email = renderer.compile(series, article).personalise(renderer.sample())
            except RenderError as exc:
                # A broken template breaks every part: report it once.
                template_problems.add(exc.problem)
                continue
            problems += _check_clipping(config, article, email.html)
    problems += sorted(template_problems, key=lambda p: (p.path, p.line or 0))
    if config.unsubscribe == "self-hosted" and not config.unsubscribe_url.startswith("https://"):
        problems.append(
            Problem(
                config.rel(config.source),
                None,
                f"unsubscribe links would be {config.unsubscribe_url.split('{')[0]}…: Gmail and "
                "Yahoo require an https:// one-click link; set unsubscribe_url or an https "
                "site_url",
                "warning",
            )
        )
    problems += placeholder_problems(config)
    problems += compliance_problems(config)
    if config.signup.enabled:
        from .signup_email import signup_problems

        problems += signup_problems(config, series_list)
    if state:
        from .edits import state_problems

        problems += state_problems(config, series_list)
    return CheckReport(series_list, problems)


def _check_clipping(config: Config, article: Article, html: str) -> list[Problem]:
    """A warning, for the whole file, when the email's HTML part as the mailbox receives
    it (transfer-encoded) passes Gmail's clipping size: as series writes it for the
    outbox, or as quoted-printable for a provider's API, which encodes the part itself
    (SendGrid's always does so): a Cyrillic or Greek article triples there."""
    from .mime import QUOTED_PRINTABLE, encoded_size, quoted_printable_size

    if config.provider == "outbox":
        size, encoding = encoded_size(html)
    else:
        size, encoding = quoted_printable_size(html), QUOTED_PRINTABLE
    if size <= GMAIL_CLIP_BYTES:
        return []
    return [
        Problem(
            article.source,
            None,
            f"the email's HTML part is {size / 1024:.0f} KB as {config.provider} sends it "
            f"({encoding}); Gmail clips messages over 102 KB, so shorten the article or "
            "split it",
            "warning",
        )
    ]


def _check_links(series: Series, article: Article, now: datetime) -> list[Problem]:
    found = []
    document = Document(article.body)
    for line in document.images_without_alt():
        found.append(
            Problem(
                article.source,
                article.body_line + line,
                "image has no alt text (write ![what it shows](url))",
                "warning",
            )
        )
    unpublished = {
        _same_page(other.url): other
        for other in series.articles
        if other.url and not other.is_published(now)
    }
    for link in document.links():
        target = unpublished.get(_same_page(link.href))
        if target is not None and target is not article:
            state = "a draft" if target.draft else "not published yet"
            found.append(
                Problem(
                    article.source,
                    article.body_line + link.line,
                    f"links to part {target.part} ({target.title}), which is {state}",
                    "warning",
                )
            )
    return found


def _check_raw_html(config: Config, article: Article) -> list[Problem]:
    """Raw HTML is escaped unless the workspace lets it through, so `<br>` would reach
    readers as those four characters: warn once per line, naming the setting."""
    if config.raw_html:
        return []
    setting = (
        f"raw_html = true in {config.source.name}"
        if config.source.name == "series.toml"
        else "raw_html = true under [tool.series] in pyproject.toml"
    )
    found: dict[int, str] = {}
    for line, tag in raw_html(article.body):
        found.setdefault(line, tag)
    return [
        Problem(
            article.source,
            article.body_line + line,
            f"raw HTML {cut(tag, 30)} will show as text in the email: write it in Markdown, "
            f"or set {setting}",
            "warning",
        )
        for line, tag in found.items()
    ]


def _same_page(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}{parts.path.rstrip('/')}"


def compliance_problems(config: Config) -> list[Problem]:
    """Warnings about what the law or mailbox providers ask of every email and the
    workspace does not give: a postal address (CAN-SPAM, 15 U.S.C. 7704(a)(5)(A)(iii):
    commercial email must show the sender's valid physical postal address)."""
    if config.postal_address.strip():
        return []
    return [
        Problem(
            config.rel(config.source),
            None,
            "no postal_address: the CAN-SPAM Act requires a physical postal address in "
            "commercial email, and bulk-sender guidelines expect one; set postal_address "
            "(a street address or a registered P.O. box) so every footer shows it",
            "warning",
        )
    ]


def serving_note(config: Config) -> str | None:
    """For ``series check --strict``: where the pages that emails link to must be served,
    since no offline check can tell whether anything answers there (None when the
    provider answers unsubscribes). One line, checked against the routes `series serve`
    has (pipeline/web.py: ``/u/<token>``, ``/unsubscribe/<token>``, ``/healthz``;
    pipeline/signup_web.py, with ``[signup] enabled``: ``/subscribe``,
    ``/confirm/<token>``): a link whose path is none of them is said to need a rewrite."""
    if config.unsubscribe != "self-hosted":
        return None
    from .signup_config import confirm_template

    url = config.unsubscribe_url
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(url))
    parts = [
        f"note: emails link to {url} (unsubscribe_url): `series serve` must answer there"
        + _route_fit(url, origin, ("/u/{token}", "/unsubscribe/{token}"), "unsubscribe_url")
    ]
    if config.signup.enabled:
        confirm = confirm_template(config.signup, url, config.site_url)
        parts.append(
            "with [signup] enabled it also serves the signup form at /subscribe and the "
            f"confirmation links, {confirm}"
            + _route_fit(confirm, origin, ("/confirm/{token}",), "signup.confirm_url")
        )
    parts.append("a static blog alone cannot answer them: readers would get a 404")
    return "; ".join(parts)


def _route_fit(url: str, origin: str, routes: tuple[str, ...], key: str) -> str:
    """How a link template ``url`` (with {token}) reaches one of `series serve`'s
    ``routes``: directly (its path is one of them), through a proxy that strips a
    path prefix, or only through a rewrite (anything else: a query, another path)."""
    split = urlsplit(url)
    path = split.path + (f"?{split.query}" if split.query else "")
    if path in routes:
        return f" (its {routes[0].replace('{token}', '<token>')} route)"
    for route in routes:
        if path.endswith(route):
            prefix = path[: -len(route)]
            return (
                f" (its {route.replace('{token}', '<token>')} route, which it answers at its "
                f"root: the web server in front of it must pass {prefix}/… on without {prefix})"
            )
    route = routes[0].replace("{token}", "<token>")
    return (
        f", but it answers these links only at {route}, not at {path}: have the web server "
        f"at {origin} rewrite {path} to series serve's {route} (the token as the last "
        f"segment), or change {key} to {origin}{routes[0]}"
    )
