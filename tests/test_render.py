"""Rendering: golden emails of the example series, personalisation, links and the series block."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.config import Config, load_config
from pipeline.content import Series, load_series
from pipeline.errors import RenderError
from pipeline.loader import BUILTIN_DIR
from pipeline.render import Personal, Renderer

from .conftest import EXAMPLE_NOW, FIXTURES, ROOT, BuildWorkspace

GOLDEN = Path(__file__).resolve().parent / "golden"


@pytest.fixture(scope="module")
def example() -> tuple[Config, Series]:
    config = load_config(ROOT)
    (series,), problems = load_series(config)
    assert problems == []
    return config, series


def render(config: Config, series: Series, part: int, **kwargs: object) -> tuple[str, str]:
    renderer = Renderer(config, now=EXAMPLE_NOW, use_cache=False)
    article = series.part(part)
    assert article is not None
    rendered = renderer.compile(series, article, **kwargs).personalise(renderer.sample())  # type: ignore[arg-type]
    return rendered.html, rendered.text


@pytest.mark.parametrize("part", [1, 2, 3, 4, 5])
def test_golden_email(example: tuple[Config, Series], part: int, update_golden: bool) -> None:
    """The example's HTML and text match the reviewed golden files (refresh: --update-golden)."""
    config, series = example
    html, text = render(config, series, part)
    article = series.part(part)
    assert article is not None
    for suffix, actual in ((".html", html), (".txt", text)):
        path = GOLDEN / series.slug / f"{article.path.stem}{suffix}"
        if update_golden:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(actual, encoding="utf-8")
        assert path.exists(), f"{path} is missing: run pytest --update-golden and review it"
        assert actual == path.read_text(encoding="utf-8"), (
            f"{path.name} changed: review the difference, then run pytest --update-golden"
        )


def test_golden_templates(example: tuple[Config, Series], update_golden: bool) -> None:
    """The golden files say which template files made them: each file's origin (the
    workspace's or the built-in one) and its content's hash (refresh: --update-golden)."""
    config, _ = example
    used = Renderer(config, now=EXAMPLE_NOW, use_cache=False).templates.files.values()
    actual = "".join(f"{f.name} {f.origin} {f.digest[:16]}\n" for f in used)
    path = GOLDEN / "attachment" / "templates.txt"
    if update_golden:
        path.write_text(actual, encoding="utf-8")
    assert actual == path.read_text(encoding="utf-8"), (
        f"{path.name} changed: review the difference, then run pytest --update-golden"
    )


def test_subscriber_fields_are_escaped_in_html(example: tuple[Config, Series]) -> None:
    """A name with markup is escaped in the HTML part and kept verbatim in the text part
    (the greeting uses its first word)."""
    config, series = example
    renderer = Renderer(config, now=EXAMPLE_NOW, use_cache=False)
    article = series.part(1)
    assert article is not None
    compiled = renderer.compile(series, article)
    who = Personal(
        name='<b>Ann</b> & "Bob"',
        email="ann@example.com",
        unsubscribe_url="https://steadyground.example/u/abc?x=1&y=2",
    )
    out = compiled.personalise(who)
    assert "<b>Ann</b>" not in out.html
    assert "Hi &lt;b&gt;Ann&lt;/b&gt;," in out.html
    assert 'href="https://steadyground.example/u/abc?x=1&amp;y=2"' in out.html
    assert "Hi <b>Ann</b>," in out.text
    assert "Unsubscribe: https://steadyground.example/u/abc?x=1&y=2" in out.text


def test_empty_name_falls_back_to_default(example: tuple[Config, Series]) -> None:
    """A subscriber without a name is greeted with the configured default."""
    config, series = example
    article = series.part(1)
    assert article is not None
    compiled = Renderer(config, now=EXAMPLE_NOW, use_cache=False).compile(series, article)
    out = compiled.personalise(Personal("", "x@example.com", "https://u.example/1"))
    assert "Hi there," in out.text


def test_continue_block_states(example: tuple[Config, Series]) -> None:
    """Part 3: parts 1–2 received and linked, 3 current, 4 (draft) and 5 (future) coming soon."""
    config, series = example
    html, text = render(config, series, 3)
    block = text[text.index("CONTINUE THE SERIES") :]
    assert "Attachment Styles · part 3 of 5" in block
    assert "Next: part 4, Avoidant attachment, coming soon." in block
    assert re.search(r"1\. What attachment styles are \(in your inbox\)\n\s+https://", block)
    assert "3. Anxious attachment (you are here)" in block
    assert "4. Avoidant attachment (coming soon)" in block
    assert "5. Disorganized attachment (coming soon)" in block
    # Unpublished parts are never linked, in either part.
    assert "attachment/avoidant/" not in html and "attachment/avoidant/" not in text
    assert "attachment/disorganized/" not in html and "attachment/disorganized/" not in text


def test_next_part_arrival_follows_its_delay(example: tuple[Config, Series]) -> None:
    """The next part's arrival comes from its delay: cadence for part 2, delay_days for part 3."""
    config, series = example
    assert "Next: part 2, Secure attachment, in 4 days." in render(config, series, 1)[1]
    assert "Next: part 3, Anxious attachment, in 5 days." in render(config, series, 2)[1]


def test_last_part_and_publication_over_time(example: tuple[Config, Series]) -> None:
    """Once part 5's date has passed it is linked from part 3; part 5 itself is the last part."""
    config, series = example
    later = Renderer(config, now=datetime(2027, 3, 16, tzinfo=UTC), use_cache=False)
    part3, part5 = series.part(3), series.part(5)
    assert part3 is not None and part5 is not None
    text = later.compile(series, part3).personalise(later.sample()).text
    assert re.search(
        r"5\. Disorganized attachment\n\s+https://steadyground.example/attachment/disorganized/",
        text,
    )
    assert "4. Avoidant attachment (coming soon)" in text  # still a draft
    last = later.compile(series, part5).personalise(later.sample()).text
    assert "This is the last part of the series." in last


def test_progress_changes_the_block(example: tuple[Config, Series]) -> None:
    """A reader who has received nothing yet sees earlier parts as available, not in the inbox."""
    config, series = example
    _, text = render(config, series, 3, received=[])
    assert "(in your inbox)" not in text
    assert re.search(r"1\. What attachment styles are\n\s+https://", text)


def test_utm_only_on_site_links(example: tuple[Config, Series]) -> None:
    """Links to the site get UTM parameters; external links and the unsubscribe link do not."""
    config, series = example
    html, text = render(config, series, 3)
    assert (
        "https://steadyground.example/attachment/secure/?utm_source=newsletter&amp;"
        "utm_medium=email&amp;utm_campaign=attachment&amp;utm_content=part-3"
    ) in html
    external = re.findall(r'href="(https://(?!steadyground)[^"]+)"', render(config, series, 5)[0])
    assert external == ["https://www.psychologytoday.com/us/therapists"]
    assert "Unsubscribe: https://steadyground.example/u/sample\n" in text


def test_text_part_is_readable(example: tuple[Config, Series]) -> None:
    """The text part has no HTML, shows headings and tables as text and keeps links as URLs."""
    config, series = example
    _, text = render(config, series, 5)
    assert "<" not in text.replace("<stream", "")
    assert "Comparing the patterns\n----------------------" in text
    assert "Style: Anxious\nWants closeness: Very much" in text  # a wide table, one record per row
    assert "(https://steadyground.example/attachment/anxious/?utm_source=" in text


def test_raw_html_is_escaped_by_default(workspace: BuildWorkspace) -> None:
    """Raw HTML in Markdown comes out as text unless the workspace turns raw_html on."""
    root = workspace({"01-raw.md": "article_with_raw_html"})
    config = load_config(root)
    (series,), _ = load_series(config)
    renderer = Renderer(config, now=EXAMPLE_NOW, use_cache=False)
    out = renderer.compile(series, series.articles[0]).personalise(renderer.sample())
    assert "<script>" not in out.html
    assert "&lt;script&gt;alert" in out.html

    config_file = root / "series.toml"
    config_file.write_text("raw_html = true\n" + config_file.read_text(), encoding="utf-8")
    config = load_config(root)
    (series,), _ = load_series(config)
    renderer = Renderer(config, now=EXAMPLE_NOW, use_cache=False)
    out = renderer.compile(series, series.articles[0]).personalise(renderer.sample())
    assert "<b>bold</b>" in out.html


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (
            "template_with_undefined_variable.mjml.j2",
            "templates/email.mjml.j2:5: template could not render: "
            "'dict object' has no attribute 'subtitle'",
        ),
        (
            "template_with_unknown_mjml_tag.mjml.j2",
            "templates/email.mjml.j2:5: MJML could not compile the template: "
            "unknown MJML element <mj-sparkle>",
        ),
        (
            "template_that_is_not_mjml.mjml.j2",
            "templates/email.mjml.j2: not an MJML document: the rendered template must start "
            "with <mjml> (see the built-in email.mjml.j2)",
        ),
    ],
)
def test_template_errors_name_the_template(
    workspace: BuildWorkspace, template: str, expected: str
) -> None:
    """Jinja and MJML failures become one RenderError naming the template (and line when known)."""
    config = load_config(workspace(html_template=template))
    (series,), _ = load_series(config)
    with pytest.raises(RenderError) as caught:
        Renderer(config, now=EXAMPLE_NOW, use_cache=False).compile(series, series.articles[0])
    assert str(caught.value) == expected


def test_an_unknown_mjml_element_in_an_override_partial_names_that_file(
    workspace: BuildWorkspace,
) -> None:
    """An MJML error in a workspace partial names the partial and the element's line, not
    the built-in email.mjml.j2 that includes it."""
    root = workspace()
    partial = root / "templates" / "partials" / "continue.mjml.j2"
    partial.parent.mkdir(parents=True)
    lines = (BUILTIN_DIR / "partials" / "continue.mjml.j2").read_text().splitlines(True)
    lines.insert(2, "<mj-bogus>x</mj-bogus>\n")
    partial.write_text("".join(lines), encoding="utf-8")
    config = load_config(root)
    (series,), _ = load_series(config)
    with pytest.raises(RenderError) as caught:
        Renderer(config, now=EXAMPLE_NOW, use_cache=False).compile(series, series.articles[0])
    assert str(caught.value) == (
        "templates/partials/continue.mjml.j2:3: MJML could not compile the template: "
        "unknown MJML element <mj-bogus>"
    )


def test_compiled_mjml_is_reused_from_cache(workspace: BuildWorkspace) -> None:
    """A later run reuses the compiled HTML when nothing changed, and recompiles when it did."""
    config = load_config(workspace())
    (series,), _ = load_series(config)
    article = series.articles[0]
    Renderer(config, now=EXAMPLE_NOW).compile(series, article)
    (cached,) = (config.cache_dir / "mjml").glob("*.html")
    # Mark the cached file: if the next run shows the mark, it reused the file.
    cached.write_text(cached.read_text().replace("</body>", "<!-- from-cache --></body>"))
    again = (
        Renderer(config, now=EXAMPLE_NOW)
        .compile(series, article)
        .personalise(Personal("A", "a@example.com", "https://u.example/1"))
    )
    assert "<!-- from-cache -->" in again.html

    article.path.write_text(article.path.read_text() + "\nOne more line.\n")
    (series,), _ = load_series(config)
    changed = (
        Renderer(config, now=EXAMPLE_NOW)
        .compile(series, series.articles[0])
        .personalise(Personal("A", "a@example.com", "https://u.example/1"))
    )
    assert "<!-- from-cache -->" not in changed.html
    assert "One more line." in changed.html


def test_personalising_does_not_recompile(example: tuple[Config, Series]) -> None:
    """One compiled part serves many readers: each copy differs only in the personal fields."""
    config, series = example
    article = series.part(2)
    assert article is not None
    compiled = Renderer(config, now=EXAMPLE_NOW, use_cache=False).compile(series, article)
    one = compiled.personalise(Personal("Ann", "ann@example.com", "https://u.example/ann"))
    two = compiled.personalise(Personal("Bob", "bob@example.com", "https://u.example/bob"))
    assert (
        one.html.replace("Ann", "Bob").replace("ann@", "bob@").replace("/ann", "/bob") == two.html
    )


def test_fixture_dir_exists() -> None:
    """The bad-template fixtures used above are present (guards against a silent rename)."""
    assert (FIXTURES / "templates" / "template_with_syntax_error.mjml.j2").is_file()


def test_compact_html_keeps_preformatted_text() -> None:
    """Indentation goes from the compiled HTML, but code in <pre> keeps its spaces."""
    from pipeline.render import compact

    html = "<div>\n    <p>a</p>\n  <pre><code>def f():\n    return 1\n</code></pre>\n    <b>x</b>"
    assert compact(html) == (
        "<div>\n<p>a</p>\n<pre><code>def f():\n    return 1\n</code></pre>\n<b>x</b>"
    )


def test_code_block_survives_rendering(workspace: BuildWorkspace) -> None:
    """An indented code block in an article reaches the email with its indentation."""
    root = workspace()
    article = root / "series/demo/01-valid.md"
    article.write_text(
        article.read_text() + "\n```\nfor part in series:\n    send(part)\n```\n",
        encoding="utf-8",
    )
    config = load_config(root)
    (series,), _ = load_series(config)
    renderer = Renderer(config, now=EXAMPLE_NOW, use_cache=False)
    html = renderer.compile(series, series.articles[0]).personalise(renderer.sample()).html
    assert "for part in series:\n    send(part)" in html
