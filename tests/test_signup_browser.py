"""The signup flow in real headless Chromium against a real `series serve`: a person fills
in the form, the confirmation email lands in the outbox, and its link is opened and the
Confirm button clicked, each with real mouse and keyboard events."""

from __future__ import annotations

import email
import email.policy
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.store import open_store
from pipeline.subscribers import SubscriberError, find

from .conftest import BuildWorkspace
from .signup_site import SIGNUP, build, token_in
from .test_web_browser import MEASURE_JS, TIMEOUT_S, WIDTH, Tab, browser, phone  # noqa: F401

pytestmark = pytest.mark.browser


@dataclass
class Served:
    root: Path
    url: str


@pytest.fixture
def served(workspace: BuildWorkspace, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """`series serve` on a free port, its confirmation links pointing at itself."""
    monkeypatch.delenv("SERIES_DATABASE_URL", raising=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    root = build(workspace, SIGNUP + f'confirm_url = "{url}/confirm/{{token}}"\n')
    env = {**os.environ, "SERIES_SECRET_KEY": "browser-signup-secret"}
    env.pop("SERIES_DATABASE_URL", None)
    command = [sys.executable, "-m", "pipeline", "-w", str(root), "serve", "--port", str(port)]
    with tempfile.TemporaryFile() as errors:
        server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=errors)
        try:
            assert server.stdout is not None
            ready, _, _ = select.select([server.stdout], [], [], TIMEOUT_S)
            line = server.stdout.readline() if ready else b""
            assert line.startswith(b"Serving unsubscribe pages and signup form"), line
            yield Served(root, url)
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.communicate(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                server.kill()
                server.communicate()


def center(tab: Tab, selector: str) -> tuple[float, float]:
    box = tab.evaluate(
        f"(() => {{ const r = document.querySelector({selector!r}).getBoundingClientRect();"
        " return [r.left + r.width / 2, r.top + r.height / 2, r.right, r.bottom]; })()"
    )
    assert box[0] >= 0 and box[2] <= WIDTH, f"{selector} does not fit the phone: {box}"
    return box[0], box[1]


def type_text(tab: Tab, text: str) -> None:
    tab.tools.call("Input.insertText", {"text": text}, tab.session)


def click_field(tab: Tab, selector: str) -> None:
    """A click that only focuses (no page load follows)."""
    x, y = center(tab, selector)
    for kind in ("mousePressed", "mouseReleased"):
        tab.tools.call(
            "Input.dispatchMouseEvent",
            {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
            tab.session,
        )


def test_a_reader_signs_up_and_confirms_in_a_browser(phone: Tab, served: Served) -> None:  # noqa: F811
    """Form at 375 px, typed in and submitted; the emailed link's page; Confirm clicked."""
    phone.open(f"{served.url}/subscribe?series=other")
    page = phone.evaluate(MEASURE_JS)
    assert page["heading"] == "Subscribe to Demo Blog"
    assert page["scrollWidth"] <= WIDTH, f"the form is {page['scrollWidth']} px wide"
    # The honeypot is out of sight.
    trap = phone.evaluate(
        "(() => { const r = document.getElementById('website').getBoundingClientRect();"
        " return r.right <= 0 || r.bottom <= 0; })()"
    )
    assert trap is True
    click_field(phone, "#email")
    type_text(phone, "reader@example.com")
    click_field(phone, "#name")
    type_text(phone, "Rea Der")
    assert phone.evaluate("document.querySelector('input[value=other]').checked") is True
    phone.click(*center(phone, "#subscribe"))
    assert phone.evaluate("document.querySelector('h1').textContent") == "Check your inbox"

    [message] = sorted((served.root / "outbox").glob("signup-*.eml"))
    link = f"{served.url}/confirm/{token_in(message.read_bytes())}"
    parsed = email.message_from_bytes(message.read_bytes(), policy=email.policy.default)
    html = parsed.get_body(("html",))
    assert html is not None and f'href="{link}"' in html.get_content()
    phone.open(link)
    assert phone.evaluate("document.querySelector('h1').textContent") == (
        "Confirm your subscription to Another Story"
    )
    with open_store(served.root) as store, pytest.raises(SubscriberError):
        find(store, "reader@example.com")  # opening the link confirmed nothing
    phone.click(*center(phone, "#confirm"))
    done = phone.evaluate("document.querySelector('h1').textContent")
    assert done == "You are subscribed to Another Story"
    with open_store(served.root) as store:
        reader = find(store, "reader@example.com")
    assert (reader.status, reader.name, [e.series for e in reader.enrollments]) == (
        "active",
        "Rea Der",
        ["other"],
    )
    # Back to the link later: it says it was used, and offers the form again.
    phone.open(link)
    assert (
        phone.evaluate("document.querySelector('h1').textContent") == "This link was already used"
    )
    phone.click(*center(phone, "#again"))
    assert phone.evaluate("location.pathname + location.search") == "/subscribe?series=other"
