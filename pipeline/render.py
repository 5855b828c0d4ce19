"""Article (+ series, templates) → email: Jinja renders MJML, MJML compiles to HTML once.

Compilation happens once per article variant; the result keeps per-subscriber
fields as sentinels and is split around them, so personalising a message is a
join of escaped values, not another template run (DESIGN §4).
"""

from __future__ import annotations

import hashlib
import operator
import re
import traceback
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import jinja2
from markupsafe import Markup

from .compiler import MjmlCache, compact, compile_mjml, set_language
from .config import Config
from .content import Article, Series
from .errors import Problem, RenderError
from .loader import Templates
from .markup import Document
from .personal import PERSONAL_FIELDS, Personal, escape_values, field_values, json_string
from .sources import ReadError, read_text

__all__ = ["CompiledEmail", "Personal", "RenderedEmail", "Renderer", "compact", "compile_mjml"]

HTML_TEMPLATE = "email.mjml.j2"
TEXT_TEMPLATE = "email.txt.j2"
# After the hidden preheader: no-break spaces and zero-width non-joiners, so an inbox
# preview (Gmail ~100-140 characters, Apple Mail and Outlook up to ~200) shows the
# preheader and then nothing, not the "Read online" line and the greeting after it.
# Only as many pairs as fill PREVIEW_CHARACTERS with the preheader: each pair is 15
# bytes quoted-printable, and 120 of them were 1.9 KB in every message. A pair ends
# with the non-joiner: a trailing no-break space is trimmed with the line's spaces.
PREHEADER_PADDING = "\u00a0\u200c"
PREVIEW_CHARACTERS = 200


def preheader_padding(preheader: str) -> str:
    """The padding that follows ``preheader`` (a one-line text): PREHEADER_PADDING
    pairs until the two fill PREVIEW_CHARACTERS characters; ``""`` when there is no
    preheader (the preview is then best the email's first text) or it is that long."""
    if not preheader:
        return ""
    missing = max(0, PREVIEW_CHARACTERS - len(preheader))
    return PREHEADER_PADDING * -(-missing // len(PREHEADER_PADDING))


SIGNATURE_SEPARATOR = "-- "  # RFC 3676 §4.3
_SENTINEL = "%%series:{}%%"
_SENTINEL_RE = re.compile(r"%%series:(" + "|".join(PERSONAL_FIELDS) + r")%%")
# Bumped when our compile step changes in a way the MJML source does not show.
_CACHE_VERSION = "2"


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    preheader: str
    html: str
    text: str


@dataclass(frozen=True)
class _Filled:
    """A compiled body split around its personal fields, ready to join per subscriber."""

    pieces: tuple[str, ...]
    fields: tuple[str, ...]

    @classmethod
    def split(cls, rendered: str) -> _Filled:
        parts = _SENTINEL_RE.split(rendered)
        return cls(tuple(parts[0::2]), tuple(parts[1::2]))

    def fill(self, values: Mapping[str, str]) -> str:
        """The body with each field's value (``values``: field → text) in its place."""
        return self._template % self._pick(values)

    @cached_property
    def encoded(self) -> tuple[bytes, ...]:
        """Each piece as the inside of a JSON string (RFC 8259 §7: UTF-8, with quotes,
        backslashes and control characters escaped), encoded once for every reader."""
        return tuple(json_string(piece) for piece in self.pieces)

    def fill_json(self, values: Mapping[str, bytes]) -> bytes:
        """`fill` as a JSON string, quotes included, from ``values`` already encoded
        with `json_string`: JSON escapes one character at a time, so the encoded
        pieces joined are the encoding of the joined text. A request body then
        carries it as it is (``orjson.Fragment``) instead of encoding ~25 KB of text
        again for each reader."""
        return self._json_template % self._pick(values)

    # Each body as one %-format with a slot per field, filled in one C call (half the
    # time of joining the pieces in a loop, for a part of ~25 KB and a few fields).
    @cached_property
    def _template(self) -> str:
        return "%s".join(piece.replace("%", "%%") for piece in self.pieces)

    @cached_property
    def _json_template(self) -> bytes:
        pieces = (piece.replace(b"%", b"%%") for piece in self.encoded)
        return b'"' + b"%b".join(pieces) + b'"'

    @cached_property
    def _pick(self) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
        """From a mapping, the tuple of its values at ``fields``, in order."""
        if len(self.fields) >= 2:
            return operator.itemgetter(*self.fields)
        return lambda values: tuple(values[name] for name in self.fields)


@dataclass(frozen=True)
class CompiledEmail:
    """One part as a given reader's progress sees it, before personalisation."""

    series: str
    part: int
    subject: str
    preheader: str
    html: _Filled
    text: _Filled

    def personalise(self, who: Personal, default_name: str = "there") -> RenderedEmail:
        """``who``'s copy: their fields (``personal.field_values``) filled in, escaped
        in the HTML part and as they are in the text part."""
        return self.filled(field_values(who, default_name))

    def filled(
        self, raw: Mapping[str, str], escaped: Mapping[str, str] | None = None
    ) -> RenderedEmail:
        """This email with the raw (unescaped) values of ``personal.PERSONAL_FIELDS``
        filled in: escaped in the HTML part (``escaped``: those values already escaped,
        `escape_values`), as they are in the text part."""
        if escaped is None:
            escaped = escape_values(raw)
        return RenderedEmail(
            self.subject, self.preheader, self.html.fill(escaped), self.text.fill(raw)
        )


class Renderer:
    """Renders the articles of one workspace as of ``now`` (which parts are out)."""

    def __init__(self, config: Config, *, now: datetime, use_cache: bool = True) -> None:
        self.config = config
        self.now = now
        self.cache = MjmlCache(config.cache_dir / "mjml") if use_cache else None
        self.templates = Templates(config.templates_dir)
        loader = self.templates.loader(config.rel)
        common: dict[str, Any] = {"loader": loader, "undefined": jinja2.StrictUndefined}
        self.html_env = jinja2.Environment(autoescape=True, **common)
        self.text_env = jinja2.Environment(autoescape=False, keep_trailing_newline=True, **common)
        self._footer_sources: dict[str, str] = {}

    def compile(
        self,
        series: Series,
        article: Article,
        *,
        received: Collection[str] | None = None,
        started_late: bool | None = None,
    ) -> CompiledEmail:
        """Render one article for readers who have received ``received`` (article slugs;
        default: every article before this one). Part numbers and "part k of n" are
        today's; the table of contents marks what those readers have. ``started_late``:
        whether those readers were enrolled to start after the series' first article
        (``Enrollment.started_late``); only they are told "New here? Start with part 1".
        None (previews, test sends): a reader without the first article started late.
        Raises RenderError for a template that fails to render or compile."""
        if received is None:
            received = [a.slug for a in series.articles if a.part < article.part]
        if started_late is None:
            started_late = series.articles[0].slug not in received
        context = self.context(series, article, frozenset(received), started_late=started_late)
        mjml_source = self._render(self.html_env, HTML_TEMPLATE, context)
        html = set_language(self._compile_mjml(mjml_source), context["language"])
        html = html.rstrip("\n") + "\n"
        text = self._render(self.text_env, TEXT_TEMPLATE, context)
        return CompiledEmail(
            series=series.slug,
            part=article.part,
            subject=context["subject"],
            preheader=context["preheader"],
            html=_Filled.split(html),
            text=_Filled.split(_tidy_text(text)),
        )

    def sample(self) -> Personal:
        """The reader that previews and checks are rendered for."""
        return Personal(
            name="Sample Reader",
            email="reader@example.com",
            unsubscribe_url=f"{self.config.site_url}/u/sample",
        )

    # -- context -------------------------------------------------------------

    def context(
        self,
        series: Series,
        article: Article,
        received: frozenset[str],
        *,
        started_late: bool = False,
    ) -> dict[str, Any]:
        link = _Linker(self.config, series, article)
        body = Document(article.body, allow_html=self.config.raw_html)
        if body.too_deep is not None:
            line, message = body.too_deep
            raise RenderError(Problem(article.source, article.body_line + line, message))
        body.rewrite_links(link)
        preheader = article.preheader or article.summary
        subject = article.subject or (
            f"{article.title} ({series.title}, part {article.part} of {series.total})"
        )
        return {
            "site": {"url": self.config.site_url, "name": self.config.site_name},
            "series": {
                "slug": series.slug,
                "title": series.title,
                "description": series.description,
                "url": link(series.url) if series.url else None,
            },
            "article": {
                "title": article.title,
                "part": article.part,
                "summary": article.summary,
                "url": link(article.url) if article.url else None,
                "body_html": Markup(body.html()),
                "body_text": _line_ends_stripped(body.text()),
            },
            "subject": subject,
            "preheader": preheader,
            "preheader_padding": Markup(preheader_padding(preheader or "")),
            "language": series.language or self.config.language,
            "continue": self._continue(series, article, received, link, started_late),
            "footer_blocks": [self._footer_block(name, link) for name in self.config.footer],
            "postal_address": self.config.postal_address,
            "reader": {name: Markup(_SENTINEL.format(name)) for name in PERSONAL_FIELDS},
        }

    def _continue(
        self,
        series: Series,
        article: Article,
        received: frozenset[str],
        link: _Linker,
        started_late: bool,
    ) -> dict[str, Any]:
        toc = []
        for entry in series.articles:
            out = entry.is_published(self.now)
            if entry is article:
                state = "current"
            elif entry.slug in received:
                state = "received"
            elif out:
                state = "available"
            else:
                state = "coming_soon"
            toc.append(
                {
                    "part": entry.part,
                    "title": entry.title,
                    "summary": entry.summary,
                    "state": state,
                    "url": link(entry.url) if out and entry.url else None,
                }
            )
        following = series.following(article)
        upcoming = None
        if following is not None:
            if following.slug in received:
                when = "already in your inbox"
            elif following.is_published(self.now):
                when = _arrives(series.delay(following).total_seconds())
            else:
                when = "coming soon"
            upcoming = {
                "part": following.part,
                "title": following.title,
                "when": when,
                "published": following.is_published(self.now),
            }
        lead = series.articles[0]
        lead_url = link(lead.url) if lead.url and lead.is_published(self.now) else None
        return {
            "part": article.part,
            "total": series.total,
            "position": series.articles.index(article) + 1,
            "next": upcoming,
            "is_last": following is None,
            "toc": toc,
            "lead": {"part": lead.part, "title": lead.title, "url": lead_url},
            # "New here? Start with part 1" is for readers enrolled to start later
            # (--start-part), who lack part 1 and are not reading it now; never for one
            # who started at the beginning, even when an editor later put a new part 1
            # before the one they had.
            "show_lead": started_late
            and bool(lead_url)
            and lead is not article
            and lead.slug not in received,
        }

    def _footer_block(self, name: str, link: _Linker) -> dict[str, Any]:
        if name not in self._footer_sources:
            path = self.config.templates_dir / "footer" / f"{name}.md"
            try:
                self._footer_sources[name] = read_text(
                    path, self.config.rel(path), what="a footer block"
                )
            except ReadError as exc:
                raise RenderError(exc.problem) from None
        block = Document(self._footer_sources[name], allow_html=self.config.raw_html)
        if block.too_deep is not None:
            line, message = block.too_deep
            raise RenderError(Problem(f"templates/footer/{name}.md", line + 1, message))
        block.rewrite_links(link)
        return {
            "name": name,
            "html": Markup(block.html()),
            "text": _line_ends_stripped(block.text()),
        }

    # -- templates and MJML ------------------------------------------------

    def _render(self, env: jinja2.Environment, name: str, context: dict[str, Any]) -> str:
        try:
            return env.get_template(name).render(context)
        except jinja2.TemplateNotFound as exc:
            raise RenderError(
                Problem(f"templates/{exc.name}", None, "template not found")
            ) from None
        except jinja2.TemplateError as exc:
            raise RenderError(self._template_problem(exc, name)) from None
        except ReadError as exc:  # a template, or one it includes, that is not UTF-8
            raise RenderError(exc.problem) from None
        except RecursionError as exc:  # {% include %} of itself, directly or in a ring
            raise RenderError(self._template_problem(exc, name)) from None

    def _template_problem(self, exc: jinja2.TemplateError | RecursionError, name: str) -> Problem:
        path, line = f"templates/{name}", None
        if isinstance(exc, jinja2.TemplateSyntaxError) and exc.filename:
            path, line = self.config.rel(Path(exc.filename)), exc.lineno
            return Problem(path, line, f"template syntax error: {exc.message}")
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            if self.templates.is_template_file(frame.filename):
                path, line = self.config.rel(Path(frame.filename)), frame.lineno
                break
        if isinstance(exc, RecursionError):
            message = "templates include one another without end (does one include itself?)"
        else:
            message = exc.message or str(exc)
        return Problem(path, line, f"template could not render: {message}")

    def _template_label(self, name: str) -> str:
        """The template file as editors see it: ``templates/NAME`` in the workspace, or
        the built-in file's path."""
        used = self.templates.files.get(name)
        return self.config.rel(used.path) if used is not None else f"templates/{name}"

    def _locate_element(self, element: str) -> tuple[str, int] | None:
        """The template file, and line, where the MJML element ``element`` is first
        written: the workspace's own files first (an override is the usual culprit), then
        the built-in ones; None when no template file holds it."""
        tag = re.compile(f"<{re.escape(element)}(?=[\\s/>]|$)", re.MULTILINE)
        for used in sorted(self.templates.files.values(), key=lambda f: (f.builtin, f.name)):
            try:
                text = used.path.read_text(encoding="utf-8-sig")
            except (OSError, UnicodeError):
                continue
            found = tag.search(text)
            if found is not None:
                line = text.count("\n", 0, found.start()) + 1
                return self.config.rel(used.path), line
        return None

    def _compile_mjml(self, source: str) -> str:
        key = None
        if self.cache is not None:
            # Which template files were used (workspace or built-in) and their content
            # are part of the key, with anything MJML itself reads from the templates folder.
            parts = (_CACHE_VERSION, version("mjml"), self.templates.fingerprint, source)
            key = hashlib.sha256("\0".join(parts).encode()).hexdigest()
            cached = self.cache.get(key)
            if cached is not None:
                return cached
        html = compact(
            compile_mjml(
                source,
                template=self._template_label(HTML_TEMPLATE),
                template_dir=self.config.templates_dir,
                locate=self._locate_element,
            )
        )
        if self.cache is not None and key is not None:
            self.cache.put(key, html)
        return html


class _Linker:
    """Adds UTM parameters to links that point at the site, leaving others alone."""

    def __init__(self, config: Config, series: Series, article: Article) -> None:
        self.host = urlsplit(config.site_url).hostname
        values = {"series": series.slug, "slug": article.slug, "part": article.part}
        self.params = (
            [(key, template.format(**values)) for key, template in config.utm.params]
            if config.utm.enabled
            else []
        )

    def __call__(self, url: str) -> str:
        if not self.params:
            return url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or parts.hostname != self.host:
            return url
        query = parse_qsl(parts.query, keep_blank_values=True)
        present = {key for key, _ in query}
        query += [(key, value) for key, value in self.params if key not in present]
        return urlunsplit(parts._replace(query=urlencode(query)))


def _arrives(seconds: float) -> str:
    hours = seconds / 3600
    if hours < 1:
        return "shortly"
    if hours < 24:
        return f"in about {round(hours)} hour{'s' if round(hours) != 1 else ''}"
    days = round(hours / 24)
    return "tomorrow" if days == 1 else f"in {days} days"


def _line_ends_stripped(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.split("\n"))


def _tidy_text(text: str) -> str:
    """Collapse the blank lines template logic leaves behind; end with one newline.
    Trailing spaces go, except on the template's signature separator, which is "-- "
    exactly (RFC 3676 §4.3); content reaches the template with its line ends already
    stripped, so no line of an article can start a signature."""
    lines = [line if line == SIGNATURE_SEPARATOR else line.rstrip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"
