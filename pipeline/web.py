"""The self-hosted unsubscribe pages behind `series serve`, one-click (RFC 8058) included.

Routes (``/unsubscribe/<token>`` is the same as ``/u/<token>``, for older links):

``GET /u/<token>``
    A page naming the series, with two buttons: leave this series, or every series.
    A GET never changes anything, because link scanners and previews follow links.
``POST /u/<token>``
    ``List-Unsubscribe=One-Click`` (a mailbox provider's one-click, urlencoded or
    multipart): leave the token's series, or everything if it names none; 200 with a
    short text, never a redirect. ``scope=series|all`` (the page's own form): do that,
    then show a page saying so. Any other body: 400, and nothing changes.
``GET /healthz``
    200 ``ok``.

A production WSGI server can load the app with ``pipeline.web:app_from_environment()``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

import sqlalchemy as sa
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from .errors import SeriesError
from .pages import Answer, render_page
from .store import Store, open_store
from .store.ledger import link_signer
from .store.linkkeys import check_serve_key
from .store.schema import enrollments, status_changes, subscribers
from .subscribers import SubscriberError, leave
from .tokens import TEST_SUBSCRIBER, Signer, TokenSubject

if TYPE_CHECKING:
    from collections.abc import Iterable

    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from .config import Config
    from .signup_web import SignupApp

log = logging.getLogger(__name__)

WORKSPACE_ENV = "SERIES_WORKSPACE"
ONE_CLICK_ACTOR = "web:one-click"
PAGE_ACTOR = "web:page"
SCOPES = ("series", "all")

ROUTES = Map(
    [
        Rule("/healthz", endpoint="health", methods=["GET"]),
        Rule("/u/<token>", endpoint="link", methods=["GET", "POST"]),
        Rule("/unsubscribe/<token>", endpoint="link", methods=["GET", "POST"]),
    ]
)

# The token in the address must not travel on as a Referer; the pages load nothing
# from elsewhere and post only to themselves.
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}


class _Request(Request):
    # An unsubscribe body is a few dozen bytes; refuse anything much larger early.
    max_content_length = 64 * 1024
    max_form_memory_size = 16 * 1024
    max_form_parts = 20


@dataclass(frozen=True)
class Reader:
    """The person a genuine token names, as the database holds them now."""

    id: int
    email: str
    status: str
    enrolled: bool  # in the token's series (False when the token names none)
    left_series: bool  # unsubscribed from the token's series
    resubscribed_at: datetime | None  # latest (re)subscription the token's scope sees


class UnsubscribeApp:
    """The WSGI application. ``clock`` gives the time recorded for an unsubscribe."""

    def __init__(
        self,
        config: Config,
        store: Store,
        signer: Signer,
        *,
        titles: dict[str, str] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.store = store
        self.signer = signer
        self.titles = titles or {}
        self.clock = clock
        self.signup: SignupApp | None = None  # /subscribe and /confirm/… when signup is on
        self.warnings: list[str] = []  # for the operator, when the app starts

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if self.signup is not None and self.signup.handles(path):
            response = self.signup(environ)
        elif self.signup is None and signup_path(path):
            response = signup_closed(self.config)
        else:
            response = self.dispatch(_Request(environ))
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        try:
            endpoint, args = ROUTES.bind_to_environ(request.environ).match()
            if endpoint == "health":
                return Response("ok\n", mimetype="text/plain")
            return self.link(request, str(args["token"]))
        except HTTPException as exc:
            return exc.get_response(request.environ)
        except SeriesError as exc:
            # The database is out of reach: a mailbox provider will try again later.
            log.warning("unsubscribe request not handled: %s", exc)
            answer = Answer(
                503,
                "Please try again later",
                "The subscriber list cannot be reached just now. Nothing was changed.",
            )
            return self.respond(answer, plain=request.method == "POST")

    def link(self, request: Request, token: str) -> Response:
        """One unsubscribe link: show the choices (GET) or act on them (POST)."""
        if request.method != "POST":
            return self.respond(self.decide(token, None), plain=False)
        if _is_one_click(request):
            return self.respond(self.decide(token, "one-click"), plain=True)
        scope = request.form.get("scope", "")
        if scope not in SCOPES:
            answer = Answer(
                400,
                "Nothing to do",
                "This request did not say what to unsubscribe from. Nothing was changed.",
            )
            return self.respond(answer, plain=True)
        return self.respond(self.decide(token, scope), plain=False)

    def decide(self, token: str, action: str | None) -> Answer:
        """What the link means now, and with an action (one-click or a scope) the change.

        A link from an email made before the person last subscribed again (as a whole,
        or to the link's series) changes nothing and says so, with status 200: a person
        sees why they are still subscribed, and a mailbox provider, which cannot mend a
        stale link, gets no error to retry or to count against the sender.
        """
        subject = self.signer.verify(token)
        if subject is None:
            return Answer(
                400,
                "This link is not valid",
                "The unsubscribe link is incomplete or has been changed. Open it again "
                "from the email, or use the unsubscribe link in a newer email.",
            )
        if subject.subscriber_id == TEST_SUBSCRIBER:
            return Answer(
                200,
                "This link came from a test email",
                "Test emails go to the people who write the series. There is no "
                "subscription behind this link, so nothing was changed.",
            )
        reader = self.reader(subject)
        site = self.config.site_name
        if reader is None:
            return Answer(
                200,
                "Nothing left to unsubscribe",
                f"This address was removed from the list of {site}, and nothing about it "
                "is kept. No more emails will be sent to it.",
            )
        if reader.resubscribed_at is not None and subject.issued < reader.resubscribed_at:
            return Answer(
                200,
                "This link is from an older email",
                "You subscribed again after that email was sent, so its link no longer "
                "unsubscribes you and nothing was changed. To unsubscribe, use the link "
                "in the most recent email.",
            )
        if action is None:
            return self.offer(subject, reader)
        scope = action if action in SCOPES else ("series" if subject.series else "all")
        actor = ONE_CLICK_ACTOR if action == "one-click" else PAGE_ACTOR
        if scope == "series" and subject.series is None:
            return Answer(400, "Nothing to do", "This link names no series. Nothing was changed.")
        # The email the link came from, so that `series status` counts the leave there.
        via = (subject.series, subject.article) if subject.series and subject.article else None
        if scope == "all":
            return self.leave_all(reader, actor, via)
        assert subject.series is not None
        return self.leave_series(reader, subject.series, actor, via)

    def offer(self, subject: TokenSubject, reader: Reader) -> Answer:
        """The page a GET shows: the choices still open to this person."""
        site = self.config.site_name
        if reader.status != "active":
            return self.already_out()
        if subject.series is None:
            return Answer(
                200,
                f"Unsubscribe from {site}?",
                f"You will get no more emails from {site}.",
                (self.everything(),),
            )
        title = self.title(subject.series)
        if not reader.enrolled or reader.left_series:
            return Answer(
                200,
                f"You are not getting {title}",
                f"No more parts of {title} will be sent to you. Other series from "
                f"{site} continue unless you unsubscribe from everything.",
                (self.everything(),),
            )
        return Answer(
            200,
            f"Unsubscribe from {title}?",
            f"Stop only {title}, or every series from {site}.",
            (("series", f"Unsubscribe from {title}"), self.everything()),
        )

    def already_out(self) -> Answer:
        return Answer(
            200,
            "You are already unsubscribed",
            f"You will not get any more emails from {self.config.site_name}.",
        )

    def everything(self) -> tuple[str, str]:
        return ("all", f"Unsubscribe from everything from {self.config.site_name}")

    def leave_series(
        self, reader: Reader, series: str, actor: str, via: tuple[str, str] | None = None
    ) -> Answer:
        title = self.title(series)
        site = self.config.site_name
        if not reader.enrolled or reader.left_series:
            return Answer(
                200,
                f"You had already unsubscribed from {title}",
                f"No more parts of {title} will be sent to you.",
                (self.everything(),) if reader.status == "active" else (),
            )
        done = self.unsubscribe(reader, series, actor, via)
        if done is None:
            return self.gone()
        if not done:
            return Answer(
                200,
                f"You had already unsubscribed from {title}",
                f"No more parts of {title} will be sent to you.",
                (self.everything(),) if reader.status == "active" else (),
            )
        return Answer(
            200,
            f"You are unsubscribed from {title}",
            f"No more parts of {title} will be sent to you. Other series from {site} "
            "continue as before.",
            (self.everything(),) if reader.status == "active" else (),
        )

    def leave_all(self, reader: Reader, actor: str, via: tuple[str, str] | None = None) -> Answer:
        site = self.config.site_name
        # Bounced or complained addresses get nothing already; that status is kept.
        if reader.status != "active":
            return self.already_out()
        done = self.unsubscribe(reader, None, actor, via)
        if done is None:
            return self.gone()
        if not done:
            return self.already_out()
        return Answer(
            200,
            "You are unsubscribed",
            f"You will not get any more emails from {site}.",
        )

    def unsubscribe(
        self, reader: Reader, series: str | None, actor: str, via: tuple[str, str] | None = None
    ) -> bool | None:
        """Record it with its audit entry (naming the email ``via`` it came from, when the
        link said), in one step: True if this request made the change, False if another
        one had made it already (many one-click requests at once), None if the person
        was erased meanwhile."""
        try:
            changed, _ = leave(
                self.store, reader.email, now=self.clock(), series=series, actor=actor, via=via
            )
        except SubscriberError:
            return None
        if changed:
            log.info("subscriber %d unsubscribed from %s (%s)", reader.id, series or "all", actor)
        return changed

    def gone(self) -> Answer:
        return Answer(
            200,
            "Nothing left to unsubscribe",
            "This address is no longer on the list. Nothing else will be sent to it.",
        )

    def reader(self, subject: TokenSubject) -> Reader | None:
        with self.store.connect() as conn:
            row = conn.execute(
                sa.select(subscribers.c.id, subscribers.c.email, subscribers.c.status).where(
                    subscribers.c.id == subject.subscriber_id
                )
            ).first()
            if row is None:
                return None
            left: datetime | None = None
            enrolled = False
            if subject.series is not None:
                found = conn.execute(
                    sa.select(enrollments.c.unsubscribed_at).where(
                        enrollments.c.subscriber_id == row.id,
                        enrollments.c.series == subject.series,
                    )
                ).first()
                enrolled = found is not None
                left = found.unsubscribed_at if found is not None else None
            # A whole-list (re)subscription counts for every link; re-enrolling in
            # one series only for that series' links.
            scope: sa.ColumnElement[bool] = status_changes.c.series.is_(None)
            if subject.series is not None:
                scope = sa.or_(scope, status_changes.c.series == subject.series)
            latest = conn.execute(
                sa.select(sa.func.max(status_changes.c.created_at)).where(
                    status_changes.c.subscriber_id == row.id,
                    status_changes.c.new_status == "active",
                    scope,
                )
            ).scalar_one_or_none()
        return Reader(
            id=row.id,
            email=row.email,
            status=row.status,
            enrolled=enrolled,
            left_series=left is not None,
            resubscribed_at=_to_second(latest),
        )

    def title(self, series: str) -> str:
        return self.titles.get(series, series)

    def respond(self, answer: Answer, *, plain: bool) -> Response:
        if plain:
            return Response(
                f"{answer.title}. {answer.text}\n", answer.status, mimetype="text/plain"
            )
        return Response(render_page(answer, self.config), answer.status, mimetype="text/html")


def _is_one_click(request: Request) -> bool:
    """RFC 8058's body, urlencoded or multipart; also sent with no content type at all."""
    value = request.form.get("List-Unsubscribe")
    if value is None and not request.mimetype:
        fields = parse_qs(request.get_data(as_text=True, parse_form_data=False))
        value = next(iter(fields.get("List-Unsubscribe", [])), None)
    return value is not None and value.strip().lower() == "one-click"


def _to_second(moment: datetime | None) -> datetime | None:
    """Token times are whole seconds: an email made in the same second as a
    resubscription counts as made after it, so its link still works."""
    return None if moment is None else moment.replace(microsecond=0)


def signup_path(path: str) -> bool:
    """Whether ``path`` is one of the signup form's routes (pipeline/signup_web.py)."""
    return path == "/subscribe" or path.startswith("/confirm/")


def signup_closed(config: Config) -> Response:
    """The answer on a signup route when signup is off (a link from when it was on, a
    form left on the blog): a page that says so, 404."""
    from .signup_pages import text_page

    text = "This site does not take signups here (any more). Nothing was changed."
    body = text_page(config, "Signup is closed", text)
    return Response(body, 404, mimetype="text/html")


def make_app(
    config: Config,
    store: Store,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    force: bool = False,
) -> UnsubscribeApp:
    """The app for this workspace: its series titles, its store, its signing key.

    Raises KeyMismatch (a SeriesError) when the key is not the one `series send`
    signed links with, unless ``force``; ``app.warnings`` lists what the operator must
    hear (links from before a key rotation that will be refused)."""
    from .content import load_series

    series_list, _ = load_series(config)  # content problems are for `series check`
    with store.connect() as conn:
        signer = link_signer(conn)
        warnings = check_serve_key(conn, signer, force=force)
    titles = {series.slug: series.title for series in series_list}
    app = UnsubscribeApp(config, store, signer, titles=titles, clock=clock)
    # A database left before 0007 (see open_store's content_free) has no signups table.
    if config.signup.enabled and store.upgrade_refused is None:
        from .signup_web import SignupApp

        app.signup = SignupApp(config, store, series_list, signer=signer, clock=clock)
    app.warnings = warnings
    return app


def app_from_environment() -> UnsubscribeApp:
    """For a WSGI server, e.g. ``gunicorn 'pipeline.web:app_from_environment()'``, with
    SERIES_WORKSPACE naming the workspace (default: the current directory) and the
    database from SERIES_DATABASE_URL as for every other command."""
    from .config import find_workspace, load_config

    config = load_config(find_workspace(os.environ.get(WORKSPACE_ENV)))
    return make_app(config, open_store(config.root, content_free=True))
