"""The pages of the signup form and of its confirmation links: small, self-contained,
accessible HTML that works without JavaScript (the unsubscribe pages' look)."""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

from .pages import PAGE_CSS
from .signup import NAME_LENGTH

if TYPE_CHECKING:
    from .config import Config

FORM_CSS = """
label{display:block;font-weight:600;margin:0 0 .35rem}
.field{margin:0 0 1.1rem}
.hint{font-weight:400;color:#4a5468}
input[type=email],input[type=text]{width:100%;min-height:2.75rem;padding:.6rem .75rem;
font:inherit;border:2px solid #8a93a6;border-radius:.5rem;background:#fff;color:inherit}
input:focus-visible{outline:3px solid #e3a100;outline-offset:2px;border-color:#1c4f9c}
input[aria-invalid=true]{border-color:#b3261e}
.choice{display:flex;gap:.6rem;align-items:center;font-weight:400;margin:0 0 .5rem}
.choice input{width:1.25rem;height:1.25rem;margin:0}
.error{color:#b3261e;font-weight:600}
.trap{position:absolute;left:-10000px;top:auto;width:1px;height:1px;overflow:hidden}
"""


@dataclass(frozen=True)
class FormState:
    """What the form shows: the values typed so far and, after a refusal, why."""

    email: str = ""
    name: str = ""
    series: str = ""
    error: str = ""
    error_field: str = ""
    form: str = ""  # the hidden fields of a copy of the form on the writer's blog,
    next: str = ""  # carried through a refusal so the next post still has them


def page(config: Config, title: str, body: str) -> str:
    """A complete page: the site's name, a heading, and ``body`` (HTML, escaped by the caller)."""
    esc = html.escape
    return (
        f'<!doctype html>\n<html lang="{esc(config.language)}">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)} · {esc(config.site_name)}</title>\n"
        f"<style>{PAGE_CSS}{FORM_CSS}</style>\n</head>\n<body>\n<main>\n"
        f'<p class="site"><a href="{esc(config.site_url)}">{esc(config.site_name)}</a></p>\n'
        f"<h1>{esc(title)}</h1>\n{body}</main>\n</body>\n</html>\n"
    )


def form_page(config: Config, offered: Mapping[str, str], state: FormState) -> str:
    """GET /subscribe: email, optional name, the series (a choice when there are several),
    the honeypot, and a submit button. ``offered``: slug → title."""
    esc = html.escape
    titles = list(offered.items())
    heading = (
        f"Subscribe to {titles[0][1]}" if len(titles) == 1 else f"Subscribe to {config.site_name}"
    )
    parts = []
    if state.error:
        parts.append(f'<p class="error" role="alert" id="form-error">{esc(state.error)}</p>\n')
    parts.append('<form method="post" novalidate>\n')
    parts.append(
        _input("email", "Email address", "email", state.email, state, required=True, most=254)
    )
    parts.append(
        _input("name", "Name", "text", state.name, state, hint=" (optional)", most=NAME_LENGTH)
    )
    for hidden in ("form", "next"):
        value = getattr(state, hidden)
        if value:
            parts.append(f'<input type="hidden" name="{hidden}" value="{esc(value)}">\n')
    if len(titles) == 1:
        slug, title = titles[0]
        parts.append(f'<input type="hidden" name="series" value="{esc(slug)}">\n')
    else:
        chosen = state.series if state.series in offered else ""
        invalid = ' aria-invalid="true"' if state.error_field == "series" else ""
        parts.append(f"<fieldset{invalid}>\n<legend>Which series?</legend>\n")
        for index, (slug, title) in enumerate(titles):
            checked = " checked" if slug == chosen or (not chosen and index == 0) else ""
            parts.append(
                f'<label class="choice"><input type="radio" name="series" value="{esc(slug)}"'
                f"{checked}> {esc(title)}</label>\n"
            )
        parts.append("</fieldset>\n")
    # The honeypot: out of sight and out of the tab order for people; bots fill it in.
    parts.append(
        '<div class="trap" aria-hidden="true"><label for="website">Leave this empty</label>'
        '<input type="text" id="website" name="website" tabindex="-1" autocomplete="off">'
        "</div>\n"
    )
    parts.append('<button type="submit" id="subscribe">Subscribe</button>\n</form>\n')
    parts.append(
        '<p class="hint">We will email you a link to confirm. Nothing else is sent until you do, '
        "and every email has a link to unsubscribe.</p>\n"
    )
    return page(config, heading, "".join(parts))


def _input(
    name: str,
    label: str,
    kind: str,
    value: str,
    state: FormState,
    *,
    required: bool = False,
    hint: str = "",
    most: int,
) -> str:
    esc = html.escape
    invalid = state.error_field == name
    extra = ' aria-invalid="true" aria-describedby="form-error"' if invalid else ""
    auto = "email" if name == "email" else "name"
    need = " required" if required else ""
    shown = f'{esc(label)}<span class="hint">{esc(hint)}</span>' if hint else esc(label)
    return (
        f'<div class="field"><label for="{name}">{shown}</label>'
        f'<input type="{kind}" id="{name}" name="{name}" value="{esc(value)}" '
        f'autocomplete="{auto}" maxlength="{most}"{need}{extra}></div>\n'
    )


def text_page(config: Config, title: str, text: str, *, again: str | None = None) -> str:
    """A heading and a paragraph; with ``again`` (a series slug, or "" for any), a link
    to sign up again."""
    body = f"<p>{html.escape(text)}</p>\n"
    if again is not None:
        body += f'<p><a href="{html.escape(signup_link(again))}" id="again">Sign up again</a></p>\n'
    return page(config, title, body)


def confirm_page(config: Config, title: str, name: str = "") -> str:
    """GET /confirm/<token>: one button; only pressing it (a POST) confirms. ``name``:
    the name typed into the form of this link's request, shown because confirming
    saves it (it is what the emails will greet the reader with)."""
    esc = html.escape
    named = (
        f'<p>The name given with this signup: <strong id="signup-name">{esc(name)}</strong>. '
        "If that is not you, or not how you want to be greeted, do not confirm: sign up "
        "again with the right name.</p>\n"
        if name
        else ""
    )
    body = (
        f"<p>Press the button to start receiving {esc(title)} from {esc(config.site_name)}.</p>\n"
        + named
        + '<form method="post"><button type="submit" name="confirm" value="yes" id="confirm">'
        "Confirm</button></form>\n"
        '<p class="hint">If you did not ask for this, close this page: nothing happens '
        "unless you confirm.</p>\n"
    )
    return page(config, f"Confirm your subscription to {title}", body)


def link_page(config: Config, state: str, title: str, series: str) -> tuple[int, str]:
    """(HTTP status, page) for a confirmation link that cannot be confirmed: ``state``
    is signup.Found's (invalid, expired, gone, used, unavailable), ``title`` the series'
    title (or the site's name), ``series`` its slug ("" when not known)."""
    pages = {
        "invalid": (
            400,
            "This link is not valid",
            "The confirmation link is incomplete or has been changed. Open it again "
            "from the email, or sign up again.",
            "",
        ),
        "expired": (
            410,
            "This link has expired",
            f"Confirmation links work for a limited time, and this one has run out. "
            f"Sign up again to get a new one for {title}.",
            series,
        ),
        "gone": (
            410,
            "This link no longer works",
            "This confirmation link has been replaced or removed. Sign up again to get a new one.",
            series,
        ),
        "used": (
            410,
            "This link was already used",
            f"This subscription to {title} was already confirmed with this link, "
            "which works only once. If you have since unsubscribed, sign up again.",
            series,
        ),
        "unavailable": (
            410,
            f"{title} is not open for signups",
            "This series no longer takes new readers here. Nothing was changed.",
            "",
        ),
    }
    status, heading, text, again = pages[state]
    return status, text_page(config, heading, text, again=again)


def signup_link(series: str) -> str:
    """The form, relative to /confirm/<token> (so it works under any path prefix)."""
    return "../subscribe" + (f"?series={quote(series)}" if series else "")
