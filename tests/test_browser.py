"""Every example part, rendered by the real pipeline, laid out in headless Chromium.

At a phone width (375 px) and at the email's design width (600 px) nothing may stick
out sideways, and the "Continue the series" block and the unsubscribe link must be
on screen. Chromium is driven with ``--dump-dom`` only, so no Python dependency is
needed: a host page holds one ``srcdoc`` iframe per (part, width), a script measures
each frame on ``load`` and writes JSON into the page, and we parse it from the dump.

Why iframes: headless Chromium (156) will not make a window narrower than 500 px:
it silently widens ``--window-size=375,…``, and none of ``--headless=new``,
``--screen-info`` or ``--ozone-override-screen-size`` changes that. An iframe is a
viewport of exactly its own width, media queries included, and every test checks
that the frame's ``innerWidth`` and ``clientWidth`` are really the width asked for.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import load_config
from pipeline.content import Series, load_series
from pipeline.markup import LONG_TOKEN
from pipeline.render import Renderer

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)
WIDTHS = (375, 600)
VIEWPORT_HEIGHT = 1200
TOLERANCE_PX = 1.0
BROWSER_ENV = "SERIES_CHROMIUM"
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_TIMEOUT_S = 60

Key = tuple[int, int]  # (part, width)
Layout = dict[str, Any]  # one frame's measurements, as MEASURE_JS reports them

# Runs in the host page once every frame has loaded. For each frame: its viewport,
# its scroll width, every element whose right edge passes the viewport (flagging
# those with no such descendant), and the two elements the tests look for. The
# result goes into <pre id="__result"> as JSON.
MEASURE_JS = """
function describe(el) {
  let name = el.tagName.toLowerCase();
  if (el.id) name += "#" + el.id;
  if (el.classList.length) name += "." + Array.from(el.classList).join(".");
  const text = (el.textContent || "").trim().replace(/\\s+/g, " ").slice(0, 50);
  return text ? name + ' "' + text + '"' : name;
}
function box(el) {
  if (!el) return null;
  const r = el.getBoundingClientRect();
  const style = getComputedStyle(el);
  return {
    left: r.left, right: r.right, width: r.width, height: r.height,
    display: style.display, visibility: style.visibility,
    rendered: el.checkVisibility({checkVisibilityCSS: true}),
    href: el.getAttribute("href"),
  };
}
function measure(frame) {
  const win = frame.contentWindow, doc = frame.contentDocument, root = doc.documentElement;
  const past = (el) => {
    const r = el.getBoundingClientRect();
    return (r.width > 0 || r.height > 0) && r.right > win.innerWidth;
  };
  const overflowing = [];
  for (const el of doc.body.querySelectorAll("*")) {
    if (!past(el)) continue;
    const innermost = !Array.from(el.querySelectorAll("*")).some(past);
    overflowing.push({element: describe(el), right: el.getBoundingClientRect().right, innermost});
  }
  return {
    innerWidth: win.innerWidth,
    clientWidth: root.clientWidth,
    scrollWidth: Math.max(root.scrollWidth, doc.body.scrollWidth),
    overflowing: overflowing,
    continueTheSeries: box(doc.getElementById("continue-the-series")),
    unsubscribe: box(doc.querySelector("a#unsubscribe")),
    splitWords: splitWords(doc),
  };
}
// Words in the article's tables that the layout split across lines. A word is a run
// of non-spaces up to and including a hyphen (a break after a hyphen is ordinary),
// read across the cell's text nodes: a <wbr> or a <code> does not end a word, so a
// break the renderer allowed inside a word is seen like any other.
function splitWords(doc) {
  const found = [];
  for (const cell of doc.querySelectorAll(".article table td, .article table th")) {
    const table = cell.closest("table");
    const walker = doc.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    const nodes = [];
    let text = "";
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      nodes.push({node: node, start: text.length});
      text += node.data;
    }
    const at = (offset, end) => {
      // The text node and offset holding character ``offset`` (``end``: the one ending there).
      for (let i = nodes.length - 1; i >= 0; i--) {
        const start = nodes[i].start;
        if (end ? start < offset : start <= offset) return [nodes[i].node, offset - start];
      }
      return [nodes[0].node, 0];
    };
    for (const match of text.matchAll(/[^\\s-]+-?/g)) {
      const range = doc.createRange();
      range.setStart(...at(match.index, false));
      range.setEnd(...at(match.index + match[0].length, true));
      const tops = new Set();
      for (const r of range.getClientRects()) if (r.width > 0) tops.add(Math.round(r.top));
      if (tops.size < 2) continue;
      const probe = doc.createElement("span");
      probe.style.whiteSpace = "nowrap";
      probe.style.font = getComputedStyle(range.startContainer.parentNode).font;
      probe.textContent = match[0];
      cell.appendChild(probe);
      const width = probe.getBoundingClientRect().width;
      probe.remove();
      found.push({word: match[0], width: width, table: table.getBoundingClientRect().width,
                  cell: cell.getBoundingClientRect().width,
                  clusters: [...new Intl.Segmenter().segment(match[0])].length});
    }
  }
  return found;
}
addEventListener("load", () => {
  const result = {};
  for (const frame of document.querySelectorAll("iframe")) result[frame.id] = measure(frame);
  document.getElementById("__result").textContent = JSON.stringify(result);
});
"""
RESULT_RE = re.compile(r'<pre id="__result">(.*?)</pre>', re.DOTALL)


# -- the pages under test ------------------------------------------------------


def _example_series() -> Series:
    series_list, problems = load_series(load_config(ROOT))
    assert not problems, problems
    assert series_list, "the example workspace has no series"
    return series_list[0]


PARTS = tuple(article.part for article in _example_series().articles)


def _frame_id(part: int, width: int) -> str:
    return f"part{part}-{width}px"


# A page of tables only, as phones squeeze them: four columns of long words, a URL
# and an identifier (long tokens, which may break), rendered by the real pipeline.
TABLES_PAGE = 99
# Words this long (in grapheme clusters) fit a phone's table and must never be split,
# whatever the renderer does; the page's compound words are 24 to 28 letters long.
WHOLE_WORD = 30
assert LONG_TOKEN >= WHOLE_WORD, "pipeline.markup would give break points to words that fit"
TABLES_ARTICLE = """---
title: Tables on a phone
part: 1
published: 2026-01-01
---

| Style | Under stress | What helps |
|---|---|---|
| Disorganized | Misunderstandings multiply | Predictability, reassurance |
| Secure | Reach out and talk | Unhurried conversations |

| Where | What |
|---|---|
| https://steadyground.example/attachment/disorganized/?utm_source=email | The web page |
| `attachment_style_questionnaire_results` | Misunderstandings |

| Wort | Meaning |
|---|---|
| Rechtsschutzversicherung | Insurance that pays for a lawyer |
| Krankenversicherungsbeitrag | What health insurance costs a month |
| Datenschutzgrundverordnungen | Data protection rules |
| Avrupalılaştırılamayanlardan | Turkish, one word: of those who cannot be Europeanised |

| Setting | Default | Meaning |
|---|---|---|
| `user.preferences.theme` | `system` | Light or dark, as the device prefers, unless chosen |
"""


def render_tables_page(tmp: Path) -> str:
    """TABLES_ARTICLE as the example workspace's templates and settings render it."""
    shutil.copy(ROOT / "pyproject.toml", tmp / "pyproject.toml")
    shutil.copytree(ROOT / "templates", tmp / "templates")
    folder = tmp / "series" / "tables"
    folder.mkdir(parents=True)
    (folder / "series.yml").write_text("title: Tables\n", encoding="utf-8")
    (folder / "01-tables.md").write_text(TABLES_ARTICLE, encoding="utf-8")
    config = load_config(tmp)
    (series,), problems = load_series(config)
    assert not problems, problems
    renderer = Renderer(config, now=NOW, use_cache=False)
    return renderer.compile(series, series.articles[0]).personalise(renderer.sample()).html


def render_parts() -> tuple[dict[int, str], str]:
    """Each example part's HTML for the sample reader, and the sample unsubscribe URL."""
    config = load_config(ROOT)
    renderer = Renderer(config, now=NOW, use_cache=False)
    series = _example_series()
    sample = renderer.sample()
    pages = {
        article.part: renderer.compile(series, article).personalise(sample).html
        for article in series.articles
    }
    return pages, sample.unsubscribe_url


# -- driving Chromium ----------------------------------------------------------


def find_browser() -> str | None:
    """$SERIES_CHROMIUM if set, else the first Chromium or Chrome on PATH."""
    configured = os.environ.get(BROWSER_ENV)
    if configured:
        found = shutil.which(configured)
        if found is None:
            pytest.fail(f"{BROWSER_ENV}={configured!r} is not an executable")
        return found
    return next((path for name in BROWSER_NAMES if (path := shutil.which(name))), None)


def host_page(pages: Mapping[int, str], widths: Iterable[int]) -> str:
    """One page with an iframe per (part, width), each exactly that wide."""
    frames = "\n".join(
        f'<iframe id="{_frame_id(part, width)}" width="{width}" height="{VIEWPORT_HEIGHT}"'
        f' style="display:block;border:0;margin:0 0 8px" srcdoc="{html.escape(page)}"></iframe>'
        for part, page in pages.items()
        for width in widths
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'></head><body style='margin:0'>\n"
        f'{frames}\n<pre id="__result"></pre>\n<script>{MEASURE_JS}</script>\n</body></html>\n'
    )


def measure_layouts(
    browser: str, pages: Mapping[int, str], widths: Iterable[int]
) -> dict[Key, Layout]:
    """Lay every page out at every width in one headless Chromium run."""
    widths = tuple(widths)
    with tempfile.TemporaryDirectory(prefix="series-browser-") as tmp:
        host = Path(tmp) / "host.html"
        host.write_text(host_page(pages, widths), encoding="utf-8")
        command = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={Path(tmp) / 'profile'}",
            "--hide-scrollbars",
            f"--window-size={max(widths) + 100},{VIEWPORT_HEIGHT}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            host.as_uri(),
        ]
        run = subprocess.run(
            command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, check=False
        )
    match = RESULT_RE.search(run.stdout)
    if run.returncode != 0 or match is None or not match.group(1).strip():
        pytest.fail(
            f"Chromium gave no measurements (exit {run.returncode}).\n"
            f"command: {' '.join(command)}\nstderr (last lines):\n"
            + "\n".join(run.stderr.splitlines()[-15:])
        )
    raw: dict[str, Layout] = json.loads(html.unescape(match.group(1)))
    return {(part, width): raw[_frame_id(part, width)] for part in pages for width in widths}


# -- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser() -> str:
    found = find_browser()
    if found is None:
        names = ", ".join(BROWSER_NAMES)
        if os.environ.get("CI"):
            pytest.fail(
                f"No Chromium found (${BROWSER_ENV} unset; none of {names} on PATH), "
                "but CI must run the browser tests: .ci/run should install chromium."
            )
        pytest.skip(
            f"No Chromium found (none of {names} on PATH): install it with "
            f"`apt-get install chromium`, or point ${BROWSER_ENV} at a Chrome binary."
        )
    return found


@pytest.fixture(scope="session")
def example() -> tuple[dict[int, str], str]:
    return render_parts()


@pytest.fixture(scope="session")
def layouts(
    browser: str, example: tuple[dict[int, str], str], tmp_path_factory: pytest.TempPathFactory
) -> dict[Key, Layout]:
    pages, _ = example
    tables = render_tables_page(tmp_path_factory.mktemp("tables"))
    return measure_layouts(browser, {**pages, TABLES_PAGE: tables}, WIDTHS)


@pytest.fixture
def layout(layouts: dict[Key, Layout], part: int, width: int) -> Layout:
    """One part's measurements at one width, after checking the viewport is that wide."""
    measured = layouts[(part, width)]
    assert (measured["innerWidth"], measured["clientWidth"]) == (width, width), (
        f"part {part}: viewport is {measured['innerWidth']} px "
        f"(client {measured['clientWidth']} px), asked for {width} px"
    )
    return measured


# -- checks --------------------------------------------------------------------


def overflow_problems(measured: Layout, width: int) -> list[str]:
    """What sticks out past the right edge of a ``width``-px viewport, beyond the tolerance."""
    problems = []
    if measured["scrollWidth"] > width + TOLERANCE_PX:
        problems.append(f"document scrollWidth is {measured['scrollWidth']} px")
    past = [item for item in measured["overflowing"] if item["right"] > width + TOLERANCE_PX]
    # Innermost first: they are the likely culprits; their wrappers are only stretched.
    past.sort(key=lambda item: not item["innermost"])
    problems += [f"{item['element']} ends at x={item['right']:.1f}" for item in past]
    return problems


def visibility_problems(box: Layout | None, width: int) -> list[str]:
    """Why an element measured by ``box()`` is not on screen in a ``width``-px viewport."""
    if box is None:
        return ["element not found"]
    problems = []
    if box["display"] == "none" or box["visibility"] != "visible" or not box["rendered"]:
        problems.append(f"hidden (display:{box['display']}, visibility:{box['visibility']})")
    if box["width"] <= 0 or box["height"] <= 0:
        problems.append(f"has no size ({box['width']}x{box['height']})")
    if box["left"] < -TOLERANCE_PX or box["right"] > width + TOLERANCE_PX:
        problems.append(f"spans x={box['left']:.1f}..{box['right']:.1f}, outside 0..{width}")
    return problems


parts_and_widths = pytest.mark.parametrize(
    ("part", "width"),
    [pytest.param(part, width, id=_frame_id(part, width)) for part in PARTS for width in WIDTHS],
)


@parts_and_widths
def test_no_horizontal_overflow(layout: Layout, part: int, width: int) -> None:
    """Nothing in the email is wider than, or reaches past, the reader's screen."""
    problems = overflow_problems(layout, width)
    shown = "\n  ".join(problems[:10])
    assert not problems, f"part {part} overflows at {width} px ({len(problems)}):\n  {shown}"


@parts_and_widths
def test_continue_the_series_is_visible(layout: Layout, part: int, width: int) -> None:
    """The "Continue the series" block is rendered and fits across the screen."""
    problems = visibility_problems(layout["continueTheSeries"], width)
    assert not problems, f"part {part} at {width} px: #continue-the-series {problems}"


@parts_and_widths
def test_unsubscribe_link_is_visible(
    layout: Layout, example: tuple[dict[int, str], str], part: int, width: int
) -> None:
    """The unsubscribe link is on screen and points at the reader's unsubscribe URL."""
    _, unsubscribe_url = example
    box = layout["unsubscribe"]
    problems = visibility_problems(box, width)
    assert not problems, f"part {part} at {width} px: a#unsubscribe {problems}"
    assert box["href"] == unsubscribe_url


with_tables = pytest.mark.parametrize(
    ("part", "width"),
    [
        pytest.param(part, width, id=_frame_id(part, width))
        for part in (*PARTS, TABLES_PAGE)
        for width in WIDTHS
    ],
)


@with_tables
def test_tables_keep_whole_words(layout: Layout, part: int, width: int) -> None:
    """No table cell splits a word that fits: MJML's word-break:break-word on the text
    cell must not reach article tables ("Secur/e", "Disorgani/zed" on a phone). Only
    tokens too long for a phone (LONG_TOKEN: URLs, identifiers) break, at the <wbr>
    points the renderer puts in; a split at one of those inside a shorter word counts
    ("Rechtsschutzvers/icherung", "user.preferences./theme" at 600 px)."""
    split = [
        w
        for w in layout["splitWords"]
        if w["width"] <= w["table"] + TOLERANCE_PX and w["clusters"] <= WHOLE_WORD
    ]
    shown = ", ".join(
        f"{w['word']!r} ({w['width']:.0f} px word, {w['cell']:.0f} px cell)" for w in split[:8]
    )
    assert not split, f"part {part} at {width} px splits words in table cells: {shown}"


@pytest.mark.parametrize("width", WIDTHS)
def test_tables_page_fits_the_screen(layouts: dict[Key, Layout], width: int) -> None:
    """The long URL and identifier in a table wrap instead of pushing it off screen."""
    problems = overflow_problems(layouts[(TABLES_PAGE, width)], width)
    assert not problems, f"the tables page overflows at {width} px: {problems[:5]}"
