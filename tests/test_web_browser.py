"""The unsubscribe page in real headless Chromium, served by a real `series serve`.

Chromium is driven over its DevTools protocol on a pipe (``--remote-debugging-pipe``:
NUL-separated JSON on file descriptors 3 and 4), so no Python dependency is needed.
The page is laid out at 375 px with the protocol's device metrics (a window cannot
be made that narrow, see tests/test_browser.py), and the series button is clicked
with a real mouse event, so the browser itself submits the form.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline.config import load_config
from pipeline.content import load_series
from pipeline.store import open_store
from pipeline.store.schema import enrollments, status_changes
from pipeline.subscribers import Catalog, add_subscriber, find
from pipeline.tokens import SECRET_ENV, Signer

from .conftest import FIXTURES, BuildWorkspace
from .test_browser import BROWSER_ENV, BROWSER_NAMES, find_browser

pytestmark = pytest.mark.browser

WIDTH = 375
HEIGHT = 740
SECRET = "browser-test-secret"
CREATED = datetime(2026, 1, 5, 9, tzinfo=UTC)
ISSUED = datetime(2026, 1, 10, 9, tzinfo=UTC)
TIMEOUT_S = 30

MEASURE_JS = """
(() => {
  const box = (el) => {
    const r = el.getBoundingClientRect();
    return {id: el.id, text: el.textContent.trim(), left: r.left, right: r.right,
            top: r.top, bottom: r.bottom, width: r.width, height: r.height,
            visible: el.checkVisibility({checkVisibilityCSS: true})};
  };
  const root = document.documentElement;
  return {
    innerWidth: innerWidth,
    scrollWidth: Math.max(root.scrollWidth, document.body.scrollWidth),
    heading: document.querySelector("h1").textContent,
    buttons: Array.from(document.querySelectorAll("button")).map(box),
  };
})()
"""


class DevTools:
    """One headless Chromium, spoken to over --remote-debugging-pipe."""

    def __init__(self, browser: str, profile: Path) -> None:
        to_browser, self._send = os.pipe()
        self._receive, from_browser = os.pipe()
        # Chromium reads commands on fd 3 and writes answers on fd 4. Copies above
        # 10 first, so that placing one pipe end cannot overwrite the other.
        high_in = fcntl.fcntl(to_browser, fcntl.F_DUPFD_CLOEXEC, 10)
        high_out = fcntl.fcntl(from_browser, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_browser)
        os.close(from_browser)

        def place_pipes() -> None:
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)

        command = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,
            # Only code run between fork and exec can put the pipes on fds 3 and 4.
            preexec_fn=place_pipes,
        )
        os.close(high_in)
        os.close(high_out)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, params: dict[str, Any] | None = None, session: str = "") -> Any:
        """Send one command and return its result (events meanwhile are kept)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._write(message)
        while True:
            answer = self._read()
            if answer.get("id") != self._next_id:
                self.events.append(answer)
                continue
            assert "error" not in answer, f"{method}: {answer['error']}"
            return answer["result"]

    def wait_for(self, method: str, waiting_for: str) -> dict[str, Any]:
        """The first event of this kind not yet seen, waiting for it if need be."""
        while True:
            for index, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(index)
            self.events.append(self._read(waiting_for))

    def _write(self, message: dict[str, Any]) -> None:
        os.write(self._send, json.dumps(message).encode() + b"\0")

    def _read(self, waiting_for: str = "an answer") -> dict[str, Any]:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._receive], [], [], TIMEOUT_S)
            assert ready, f"no {waiting_for} from Chromium within {TIMEOUT_S} s"
            chunk = os.read(self._receive, 65536)
            assert chunk, "Chromium closed its DevTools pipe"
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        result: dict[str, Any] = json.loads(message)
        return result

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                self._write({"id": 0, "method": "Browser.close"})
                self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        finally:
            os.close(self._send)
            os.close(self._receive)


@dataclass
class Tab:
    tools: DevTools
    session: str

    def open(self, url: str) -> None:
        self.tools.events.clear()
        self.tools.call("Page.navigate", {"url": url}, self.session)
        self.tools.wait_for("Page.loadEventFired", f"page load of {url}")

    def evaluate(self, expression: str) -> Any:
        result = self.tools.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, self.session
        )
        return result["result"]["value"]

    def click(self, x: float, y: float) -> None:
        """A left click at (x, y), pressed and released like a person's; waits for the page."""
        self.tools.events.clear()
        for kind in ("mousePressed", "mouseReleased"):
            self.tools.call(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
                self.session,
            )
        self.tools.wait_for("Page.loadEventFired", f"page load after a click at ({x}, {y})")


@pytest.fixture(scope="module")
def browser() -> str:
    found = find_browser()
    if found is None:
        names = ", ".join(BROWSER_NAMES)
        if os.environ.get("CI"):
            pytest.fail(f"No Chromium found (${BROWSER_ENV} unset; none of {names} on PATH)")
        pytest.skip(f"No Chromium found (none of {names} on PATH)")
    return found


@pytest.fixture
def phone(browser: str, tmp_path: Path) -> Iterator[Tab]:
    """A tab 375 px wide, as on a small phone."""
    tools = DevTools(browser, tmp_path / "profile")
    try:
        target = tools.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = tools.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        tools.call("Page.enable", session=session)
        metrics = {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 2, "mobile": True}
        tools.call("Emulation.setDeviceMetricsOverride", metrics, session)
        yield Tab(tools, session)
    finally:
        tools.close()


@dataclass
class Served:
    root: Path
    url: str
    ann: int


@pytest.fixture
def served(workspace: BuildWorkspace, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """`series serve` on a free port, for a workspace where Ann reads two series."""
    monkeypatch.delenv("SERIES_DATABASE_URL", raising=False)
    root = workspace()
    other = root / "series" / "other"
    other.mkdir()
    (other / "series.yml").write_text("title: Another Story\ncadence_days: 7\n", encoding="utf-8")
    shutil.copy(FIXTURES / "articles" / "valid_article.md", other / "01-valid.md")
    series_list, _ = load_series(load_config(root))
    catalog = Catalog.of(series_list)
    with open_store(root) as store:
        for slug in ("demo", "other"):
            add_subscriber(store, catalog, "ann@example.com", now=CREATED, series=slug)
        ann = find(store, "ann@example.com").id
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, SECRET_ENV: SECRET}
    env.pop("SERIES_DATABASE_URL", None)
    command = [sys.executable, "-m", "pipeline", "-w", str(root), "serve", "--port", str(port)]
    with tempfile.TemporaryFile() as errors:
        server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=errors)
        try:
            assert server.stdout is not None
            ready, _, _ = select.select([server.stdout], [], [], TIMEOUT_S)
            assert ready and server.stdout.readline().startswith(b"Serving"), "serve did not start"
            yield Served(root, f"http://127.0.0.1:{port}", ann)
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.communicate(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                server.kill()
                server.communicate()


def test_page_fits_a_phone_and_its_series_button_unsubscribes(phone: Tab, served: Served) -> None:
    """At 375 px the page names the series, both buttons fit, and clicking one leaves the series."""
    token = Signer(SECRET.encode()).token(served.ann, "demo", issued=ISSUED)
    phone.open(f"{served.url}/u/{token}")
    page = phone.evaluate(MEASURE_JS)
    # A phone widens its layout viewport to fit content that is too wide.
    assert page["innerWidth"] == WIDTH, f"content widened the viewport to {page['innerWidth']} px"
    assert page["scrollWidth"] <= WIDTH, f"the page is {page['scrollWidth']} px wide"
    assert page["heading"] == "Unsubscribe from Demo Series?"
    buttons = {button["id"]: button for button in page["buttons"]}
    assert set(buttons) == {"scope-series", "scope-all"}
    for button in buttons.values():
        assert button["visible"] and button["width"] > 0 and button["height"] >= 44, button
        assert button["left"] >= 0 and button["right"] <= WIDTH, button
        assert button["top"] >= 0 and button["bottom"] <= HEIGHT, f"below the fold: {button}"
    assert buttons["scope-series"]["text"] == "Unsubscribe from Demo Series"

    series = buttons["scope-series"]
    phone.click((series["left"] + series["right"]) / 2, (series["top"] + series["bottom"]) / 2)

    done = phone.evaluate(MEASURE_JS)
    assert done["heading"] == "You are unsubscribed from Demo Series"
    assert [button["id"] for button in done["buttons"]] == ["scope-all"]
    with open_store(served.root) as store, store.connect() as conn:
        left = dict(
            conn.execute(
                sa.select(enrollments.c.series, enrollments.c.unsubscribed_at).where(
                    enrollments.c.subscriber_id == served.ann
                )
            ).all()
        )
        actor = conn.execute(
            sa.select(status_changes.c.actor).order_by(status_changes.c.id.desc()).limit(1)
        ).scalar_one()
    assert left["demo"] is not None and left["other"] is None
    assert actor == "web:page"
