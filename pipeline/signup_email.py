"""The double opt-in confirmation email: rendered from the built-in templates
(``confirm.subject.j2``, ``confirm.mjml.j2``, ``confirm.txt.j2``), which a workspace
overrides with files of the same name in its ``templates/``, and sent at once through
the configured provider.

It is transactional mail sent on the person's own request: it carries no
List-Unsubscribe (RFC 8058 one-click is for bulk mail) and, with Postmark, goes out on
the transactional stream ``signup.postmark_stream`` (default ``outbound``). It never
contains the name typed into the form: that text is chosen by whoever fills in the
form and would land in someone else's inbox.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Literal

import jinja2
from markupsafe import Markup, escape

from .compiler import compact, compile_mjml, set_language
from .config import Address, Config
from .content import Series
from .errors import Problem, RenderError, SeriesError
from .loader import Templates
from .providers import Message, ProviderError, get_provider
from .signup_config import confirm_template
from .sources import ReadError

log = logging.getLogger(__name__)

SUBJECT_TEMPLATE = "confirm.subject.j2"
HTML_TEMPLATE = "confirm.mjml.j2"
TEXT_TEMPLATE = "confirm.txt.j2"
_URL_MARK = "%%signup:confirm_url%%"

Sent = Literal["sent", "refused", "retry"]


@dataclass(frozen=True)
class ConfirmEmail:
    """One series' confirmation email, before the link is filled in."""

    subject: str
    html: str
    text: str
    sender: Address

    def with_link(self, url: str) -> tuple[str, str]:
        """(html, text) with the confirmation link in place."""
        return self.html.replace(_URL_MARK, str(escape(url))), self.text.replace(_URL_MARK, url)


class ConfirmMailer:
    """Renders (once per series, on first use) and sends confirmation emails."""

    def __init__(self, config: Config, series: dict[str, Series]) -> None:
        self.config = config
        self.series = series
        self.link = confirm_template(config.signup, config.unsubscribe_url, config.site_url)
        self._compiled: dict[str, ConfirmEmail] = {}
        self._lock = threading.Lock()

    def email(self, slug: str) -> ConfirmEmail:
        """The compiled email for series ``slug``. Raises RenderError for a template
        that does not render or compile."""
        with self._lock:
            found = self._compiled.get(slug)
            if found is None:
                found = self._compiled[slug] = self._render(self.series[slug])
            return found

    def _settings(self) -> Config:
        return replace(
            self.config,
            unsubscribe="self-hosted",
            postmark_stream=self.config.signup.postmark_stream,
        )

    def check_provider(self) -> None:
        """Raise SeriesError (one line, e.g. a provider key not set) when the configured
        provider cannot be set up to send confirmations: `series serve` refuses to start
        rather than answer every signup with a 503. Nothing is sent."""
        get_provider(self.config.provider, self._settings()).close()

    def send(self, slug: str, to: str, token: str, *, key: str) -> Sent:
        """Send one confirmation email: "sent"; "refused" when the provider will not
        send to this address (suppressed, invalid: the person is told nothing more);
        "retry" when it could not be handed over now (network, provider down)."""
        email = self.email(slug)
        html, text = email.with_link(self.link.replace("{token}", token))
        message = Message(
            key=f"signup-{key}-{uuid.uuid4().hex[:12]}",
            sender=email.sender,
            to=Address(to, ""),
            subject=email.subject,
            html=html,
            text=text,
            reply_to=self.config.reply_to,
            tag="signup-confirmation",
        )
        try:
            provider = get_provider(self.config.provider, self._settings())
        except SeriesError as exc:
            log.error("confirmation email not sent: %s", exc)
            return "retry"
        try:
            [result] = provider.send([message], batch_key=message.key)
        except ProviderError as exc:
            log.warning("confirmation email not sent: %s", exc)
            return "retry"
        finally:
            provider.close()
        if result.outcome == "sent":
            return "sent"
        if result.outcome == "unknown":
            log.warning("confirmation email outcome unknown: %s", result.error)
            return "sent"  # it may well be in the inbox: asking again is limited anyway
        log.warning("confirmation email refused by %s: %s", provider.name, result.error)
        return "refused"

    def _render(self, series: Series) -> ConfirmEmail:
        config = self.config
        templates = Templates(config.templates_dir)
        common: dict[str, Any] = {
            "loader": templates.loader(config.rel),
            "undefined": jinja2.StrictUndefined,
        }
        html_env = jinja2.Environment(autoescape=True, **common)
        text_env = jinja2.Environment(autoescape=False, keep_trailing_newline=True, **common)
        context = {
            "site": {"url": config.site_url, "name": config.site_name},
            "series": {
                "slug": series.slug,
                "title": series.title,
                "description": series.description,
                "url": series.url,
            },
            "lifetime": lifetime_words(timedelta(hours=config.signup.token_hours)),
            "postal_address": config.postal_address,
            "confirm_url": Markup(_URL_MARK),
            "language": series.language or config.language,
        }
        subject = " ".join(_render(text_env, SUBJECT_TEMPLATE, context).split())
        context["subject"] = subject
        mjml = _render(html_env, HTML_TEMPLATE, context)
        used = templates.files.get(HTML_TEMPLATE)
        label = config.rel(used.path) if used is not None else f"templates/{HTML_TEMPLATE}"
        html = compact(compile_mjml(mjml, template=label, template_dir=config.templates_dir))
        html = set_language(html, str(context["language"]))
        text = _render(text_env, TEXT_TEMPLATE, context).strip() + "\n"
        for name, body in ((HTML_TEMPLATE, html), (TEXT_TEMPLATE, text)):
            if _URL_MARK not in body:
                raise RenderError(
                    Problem(
                        f"templates/{name}",
                        None,
                        "the confirmation email must show "
                        "{{ confirm_url }}, the link that confirms the subscription",
                    )
                )
        return ConfirmEmail(subject, html, text, series.sender)


def signup_problems(config: Config, series_list: Sequence[Series]) -> list[Problem]:
    """For `series check` with signup on: a series ``signup.series`` names that the
    workspace does not have, and a confirmation template that does not render (each
    reported once)."""
    slugs = {s.slug for s in series_list}
    problems = [
        Problem(
            config.rel(config.source),
            None,
            f"signup.series names '{slug}', not a series "
            f"of this workspace (series: {', '.join(sorted(slugs)) or 'none'})",
        )
        for slug in config.signup.series or ()
        if slug not in slugs
    ]
    mailer = ConfirmMailer(config, {s.slug: s for s in series_list})
    found: dict[Problem, None] = {}
    for slug in config.signup.series or sorted(slugs):
        if slug in slugs:
            try:
                mailer.email(slug)
            except RenderError as exc:
                found[exc.problem] = None
    return problems + list(found)


def lifetime_words(lifetime: timedelta) -> str:
    """ "48 hours", "1 hour", "90 minutes": how long a link works, as people say it."""
    minutes = round(lifetime.total_seconds() / 60)
    if minutes % 60 == 0:
        hours = minutes // 60
        return f"{hours} hour{'s' if hours != 1 else ''}"
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def _render(env: jinja2.Environment, name: str, context: dict[str, object]) -> str:
    try:
        return env.get_template(name).render(context)
    except jinja2.TemplateNotFound as exc:
        raise RenderError(Problem(f"templates/{exc.name}", None, "template not found")) from None
    except jinja2.TemplateSyntaxError as exc:
        raise RenderError(
            Problem(f"templates/{name}", exc.lineno, f"template syntax error: {exc.message}")
        ) from None
    except jinja2.TemplateError as exc:
        raise RenderError(
            Problem(f"templates/{name}", None, f"template could not render: {exc}")
        ) from None
    except ReadError as exc:
        raise RenderError(exc.problem) from None
