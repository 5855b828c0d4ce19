"""The signup routes of `series serve` (double opt-in), mounted beside the unsubscribe
pages by pipeline/web.py.

``GET /subscribe[?series=SLUG]``
    The form: email, optional name, the series (a choice when several are offered).
``POST /subscribe``
    ``application/x-www-form-urlencoded`` (the form, or a copy embedded in the writer's
    blog) or ``application/json`` ``{"email", "name", "series"}``. The same "check your
    inbox" answer whether or not the address is known; 400 with the reason, and nothing
    stored, for a bad address, a series not offered or a body that is not a form or a
    JSON object of strings. Form posts go on to ``next`` (a form field or
    ``signup.next``: an absolute URL with site_url's scheme, host and port, or a path
    such as ``/thanks/`` on site_url).
``OPTIONS /subscribe``
    CORS preflight: allowed for ``signup.allowed_origins`` only.
``GET /confirm/<token>``
    A page with a Confirm button; a GET never confirms (mail scanners follow links).
``POST /confirm/<token>``
    Confirms, once.

Abuse: a filled-in honeypot field ``website`` gets the answer the same post would get
without it (400 for bad input) and nothing is stored or sent; one confirmation email
per address per 10 minutes; ``signup.per_ip_per_hour`` POSTs per IP address (kept in
memory, per process); bodies over 8 KB are refused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Request, Response

from . import signup
from .config import Config
from .content import Series
from .errors import SeriesError
from .signup_config import next_target
from .signup_email import ConfirmMailer
from .signup_input import IpLimiter, submitted
from .signup_pages import FormState, confirm_page, form_page, link_page, text_page
from .signup_tokens import ConfirmSigner
from .store import Store
from .tokens import Signer

log = logging.getLogger(__name__)

BODY_LIMIT = 8 * 1024  # a signup is a few hundred bytes
PATHS = ("/subscribe", "/confirm/")
CHECK_INBOX = "Check your inbox"


class _SignupRequest(Request):
    max_content_length = BODY_LIMIT
    max_form_memory_size = BODY_LIMIT
    max_form_parts = 20


class SignupApp:
    """Handles the signup paths; the unsubscribe app asks ``handles`` first."""

    def __init__(
        self,
        config: Config,
        store: Store,
        series_list: Sequence[Series],
        *,
        signer: Signer,
        clock: Callable[[], datetime],
    ) -> None:
        """Raises SeriesError (one line) for a signup.series not in the workspace, a
        confirmation template that does not render, or a provider that cannot be set
        up (e.g. its key not set): `series serve` does not start then."""
        self.config = config
        self.settings = config.signup
        self.store = store
        self.clock = clock
        self.series = {s.slug: s for s in series_list}
        missing = [slug for slug in self.settings.series or () if slug not in self.series]
        if missing:
            raise SeriesError(
                f"{config.rel(config.source)}: signup.series names "
                f"{', '.join(repr(m) for m in missing)}, not a series of this workspace "
                f"(series: {', '.join(sorted(self.series)) or 'none'})"
            )
        self.signer = ConfirmSigner.for_signer(signer)
        self.mailer = ConfirmMailer(config, self.series)
        self.mailer.check_provider()
        for slug in self.settings.series or sorted(self.series):
            self.mailer.email(slug)  # a broken template stops `series serve` here, not a reader
        self.limiter = IpLimiter(self.settings.per_ip_per_hour)
        site = urlsplit(config.site_url)
        self.site_origin = f"{site.scheme}://{site.netloc}"

    @staticmethod
    def handles(path: str) -> bool:
        """Whether a request path is one of the signup routes."""
        return path == PATHS[0] or path.startswith(PATHS[1])

    def offered(self) -> dict[str, str]:
        """slug → title of the series the form offers now: those in ``signup.series``
        (default: all), each with at least one published part."""
        now = self.clock()
        names = self.settings.series or tuple(sorted(self.series))
        return {
            slug: self.series[slug].title
            for slug in names
            if any(a.is_published(now) for a in self.series[slug].articles)
        }

    def __call__(self, environ: Mapping[str, Any]) -> Response:
        request = _SignupRequest(dict(environ))
        try:
            response = self.dispatch(request)
        except RequestEntityTooLarge:
            response = self.answer(request, 413, "Too much data", "That request is too large.")
        except SeriesError as exc:
            # The database is out of reach (or a template broke): say so, store nothing.
            log.warning("signup request not handled: %s", exc)
            response = self.answer(
                request,
                503,
                "Please try again later",
                "Signups cannot be taken just now. Nothing was stored.",
            )
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'unsafe-inline'; "
            f"form-action 'self' {self.site_origin}; frame-ancestors 'none'; base-uri 'none'"
        )
        return response

    def dispatch(self, request: Request) -> Response:
        """Route one request (the module docstring lists the routes)."""
        if not self.settings.enabled:
            return self.answer(request, 404, "Signup is closed", "This site takes no signups here.")
        if request.path == PATHS[0]:
            if request.method == "OPTIONS":
                return self.preflight(request)
            if request.method == "POST":
                return self.subscribe(request)
            if request.method in ("GET", "HEAD"):
                return self.show_form(request)
            return self.not_allowed("GET, HEAD, POST, OPTIONS")
        token = request.path[len(PATHS[1]) :]
        if not token or "/" in token:
            return self.answer(request, 404, "Not found", "There is no page here.")
        if request.method == "POST":
            return self.confirm(request, token)
        if request.method in ("GET", "HEAD"):
            return self.show_confirm(token)
        return self.not_allowed("GET, HEAD, POST")

    # -- the form ---------------------------------------------------------------

    def show_form(self, request: Request) -> Response:
        """GET /subscribe: the form, ``?series=`` chosen; 404 for a series not offered."""
        offered = self.offered()
        wanted = request.args.get("series", "")
        if not offered:
            return self.html(
                503,
                text_page(
                    self.config,
                    "Nothing to subscribe to yet",
                    "No series is open for signups yet. Please come back later.",
                ),
            )
        if wanted and wanted not in offered:
            state = FormState(
                series="",
                error=f"There is no series '{wanted[:100]}' to join here; please choose one below.",
                error_field="series",
            )
            return self.html(404, form_page(self.config, offered, state))
        return self.html(200, form_page(self.config, offered, FormState(series=wanted)))

    def preflight(self, request: Request) -> Response:
        """OPTIONS /subscribe: 204 with CORS headers for an allowed Origin, else 403."""
        origin = request.headers.get("Origin", "")
        if origin.lower() not in self.settings.allowed_origins:
            return Response(status=403)
        response = Response(status=204)
        response.headers.update(
            {
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": "POST",
                "Access-Control-Allow-Headers": "Content-Type",
                "Access-Control-Max-Age": "600",
                "Vary": "Origin",
            }
        )
        return response

    def subscribe(self, request: Request) -> Response:
        """POST /subscribe: check, limit, store and mail; one answer for every accepted
        signup (``accepted``), 4xx with the reason for a refused one."""
        as_json = request.mimetype == "application/json"
        origin = request.headers.get("Origin", "")
        if as_json and origin and origin.lower() not in self.settings.allowed_origins:
            return self.answer(
                request, 403, "Not allowed", "This site may not sign people up here."
            )
        wait = self.limiter.allow(self.ip(request), self.clock().timestamp())
        if wait is not None:
            response = self.answer(
                request,
                429,
                "Too many requests",
                "Too many signups from your network just now. Please try again later.",
            )
            response.headers["Retry-After"] = str(int(wait))
            return response
        offered = self.offered()
        try:
            fields = submitted(request, as_json)
        except signup.SignupRefused as exc:
            return self.refused(request, offered, {}, exc)
        if fields is None:
            return self.answer(
                request,
                415 if not as_json else 400,
                "Not understood",
                "Send the form (urlencoded) or a JSON object with email, name and series.",
            )
        if len(offered) == 1 and not fields.get("series"):
            fields["series"] = next(iter(offered))
        raw = signup.Request(
            email=fields.get("email", ""),
            name=fields.get("name", ""),
            series=fields.get("series", ""),
            form=fields.get("form", "") or ("json" if as_json else "form"),
            page=request.headers.get("Referer", "") or origin,
            ip=self.ip(request),
            user_agent=request.headers.get("User-Agent", ""),
        )
        try:
            checked = signup.checked(raw, offered)
        except signup.SignupRefused as exc:
            return self.refused(request, offered, fields, exc)
        if fields.get("website", "").strip():
            # A bot: the answer a person would get, and nothing stored or sent.
            log.info("signup with the honeypot filled in ignored (%s)", self.ip(request))
            return self.accepted(request, fields)
        now = self.clock()
        issued = signup.register(
            self.store,
            self.signer,
            checked,
            now=now,
            lifetime=timedelta(hours=self.settings.token_hours),
        )
        if issued is not None:
            sent = self.mailer.send(
                issued.series, issued.email, issued.token, key=str(issued.signup_id)
            )
            if sent == "retry":
                signup.not_sent(self.store, issued)
                return self.answer(
                    request,
                    503,
                    "Please try again in a few minutes",
                    "The confirmation email could not be sent just now. Nothing was stored.",
                )
        return self.accepted(request, fields)

    def accepted(self, request: Request, fields: Mapping[str, str]) -> Response:
        """The one answer for every accepted signup, known address or not."""
        title = self.offered().get(fields.get("series", ""), self.config.site_name)
        text = (
            f"If the address is right, an email is on its way with a link to confirm your "
            f"subscription to {title}. Nothing else is sent until you confirm. Nothing there "
            "in a few minutes? Look in your spam folder."
        )
        if request.mimetype == "application/json":
            return self.json(request, 200, {"ok": True, "message": text})
        target = next_target(fields.get("next", ""), self.config.site_url)
        target = target or self.settings.next_url
        if target:
            return Response(status=303, headers={"Location": target})
        return self.html(200, text_page(self.config, CHECK_INBOX, text))

    def refused(
        self,
        request: Request,
        offered: Mapping[str, str],
        fields: Mapping[str, str],
        exc: signup.SignupRefused,
    ) -> Response:
        if request.mimetype == "application/json":
            return self.json(request, 400, {"ok": False, "field": exc.field, "error": exc.message})
        state = FormState(
            email=fields.get("email", "")[:254],
            name=fields.get("name", "")[: signup.NAME_LENGTH],
            series=fields.get("series", ""),
            error=exc.message,
            error_field=exc.field,
            # A copy of the form on the writer's blog: the next post still names it.
            form=fields.get("form", "")[: signup.FIELD_LENGTHS["form"]],
            next=fields.get("next", "")[:2000],
        )
        return self.html(400, form_page(self.config, offered, state))

    # -- the confirmation link ---------------------------------------------------

    def show_confirm(self, token: str) -> Response:
        """GET /confirm/<token>: the Confirm button, or what is wrong with the link."""
        found = signup.look_up(
            self.store, self.signer, token, now=self.clock(), offered=self.offered()
        )
        if found.state != "ready":
            return self.link_state(found)
        assert found.series is not None
        return self.html(200, confirm_page(self.config, self.title(found.series), found.name))

    def confirm(self, request: Request, token: str) -> Response:
        """POST /confirm/<token> with confirm=yes: confirm once and say what changed."""
        if request.form.get("confirm") != "yes":
            return self.html(
                400,
                text_page(
                    self.config,
                    "Nothing to do",
                    "Use the Confirm button on this page. Nothing was changed.",
                ),
            )
        found, joined = signup.confirm(
            self.store,
            self.signer,
            token,
            now=self.clock(),
            offered=self.offered(),
            first_parts={slug: s.articles[0].part for slug, s in self.series.items() if s.articles},
            ip=self.ip(request),
            user_agent=request.headers.get("User-Agent", ""),
        )
        if joined is None:
            return self.link_state(found)
        assert found.series is not None
        title = self.title(found.series)
        if joined == "already":
            return self.html(
                200,
                text_page(
                    self.config,
                    f"You already get {title}",
                    "Nothing changed: the next part arrives as planned.",
                ),
            )
        log.info("signup %s confirmed for %s", joined, found.series)
        return self.html(
            200,
            text_page(
                self.config,
                f"You are subscribed to {title}",
                f"Thank you. The first email of {title} is on its way soon; the next parts follow "
                "on their schedule. Every email has a link to unsubscribe.",
            ),
        )

    def link_state(self, found: signup.Found) -> Response:
        """The page for a link that cannot be confirmed (invalid, expired, used, …)."""
        series = found.series or ""
        title = self.title(series) if series else self.config.site_name
        status, body = link_page(self.config, found.state, title, series)
        return self.html(status, body)

    # -- helpers ----------------------------------------------------------------

    def ip(self, request: Request) -> str:
        """The client's address: with ``signup.trusted_proxies`` = N, the address the
        Nth proxy from us saw (X-Forwarded-For), else the connection's."""
        proxies = self.settings.trusted_proxies
        if proxies:
            hops = [
                h.strip()
                for h in request.headers.get("X-Forwarded-For", "").split(",")
                if h.strip()
            ]
            if len(hops) >= proxies:
                return hops[-proxies][:64]
        return (request.remote_addr or "")[:64]

    def title(self, slug: str) -> str:
        """A series' title (its slug when it is gone from the workspace)."""
        series = self.series.get(slug)
        return series.title if series is not None else slug

    def answer(self, request: Request, status: int, title: str, text: str) -> Response:
        """An error as JSON for a JSON request, else as a page."""
        if request.mimetype == "application/json":
            return self.json(request, status, {"ok": False, "error": text})
        return self.html(status, text_page(self.config, title, text))

    def json(self, request: Request, status: int, body: Mapping[str, Any]) -> Response:
        """A JSON answer, with the CORS header when the Origin is allowed."""
        response = Response(json.dumps(body), status, mimetype="application/json")
        origin = request.headers.get("Origin", "")
        if origin and origin.lower() in self.settings.allowed_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        return response

    def html(self, status: int, body: str) -> Response:
        """A page."""
        return Response(body, status, mimetype="text/html")

    @staticmethod
    def not_allowed(allow: str) -> Response:
        """405 with the methods the path takes."""
        return Response(
            "method not allowed\n", 405, headers={"Allow": allow}, mimetype="text/plain"
        )
