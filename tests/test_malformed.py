"""Files from real tools (issue 10): one fixture per kind of malformed input, each
answered by its exact `path:line: message` line, never a traceback or silence."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.content import load_series
from pipeline.errors import ConfigError

from .conftest import FIXTURES, BuildWorkspace
from .helpers import run

# (fixture, expected lines of `series check`, after "series/demo/01-<fixture>.md:")
ARTICLE_CASES = [
    (
        "article_with_impossible_date",
        [
            "4: 'published' is not a date in the calendar: '2026-02-30' "
            "(day is out of range for month)"
        ],
    ),
    (
        "article_with_month_13",
        ["4: 'published' is not a date in the calendar: '2025-13-45' (month must be in 1..12)"],
    ),
    (
        "article_with_unclosed_front_matter",
        ["1: the front matter is never closed: add a '---' line after its last key"],
    ),
    (
        "article_in_windows_1252",
        [
            "2: not UTF-8 text: byte 0xE9 in column 11 (a Windows-1252 or Latin-1 file?); "
            "save it as UTF-8 (your editor's Save As or Encoding menu)"
        ],
    ),
    (
        "article_in_utf16",
        [
            "1: the file is UTF-16 text, not UTF-8; save it as UTF-8 "
            "(your editor's Save As or Encoding menu)"
        ],
    ),
    (
        "article_in_utf16_without_bom",
        [
            "1: not UTF-8 text: the file has NUL bytes (a UTF-16 file?); save it as UTF-8 "
            "(your editor's Save As or Encoding menu)"
        ],
    ),
    (
        "article_with_quoted_part",
        ["3: 'part' must be a whole number, got '2' (remove the quotes: part: 2)"],
    ),
    (
        "article_with_quoted_draft",
        ["4: 'draft' must be true or false, got 'true' (remove the quotes: draft: true)"],
    ),
    (
        "article_with_colon_in_title",
        [
            "2: malformed YAML: mapping values are not allowed here; "
            'put the value in quotes: title: "Greens: and browns"'
        ],
    ),
    (
        "article_with_comment_in_title",
        [
            "2: warning: 'title' ends before '#1 of the garden': YAML reads ' #' as the start "
            "of a comment; put the value in quotes to keep it"
        ],
    ),
    (
        "article_with_duplicate_key",
        ["4: the key 'title' appears twice (first on line 2); keep one"],
    ),
    (
        "article_with_yaml_tag",
        ["3: YAML tags are not allowed (!!float): write the value without it"],
    ),
    (
        "article_with_yes_draft",
        ["4: 'draft' must be true or false, got 'yes'"],
    ),
    (
        "article_with_unclosed_bracket_in_url",
        ["4: 'url' must be an absolute http(s) URL, got 'http://[blog.example/demo/'"],
    ),
    (
        "article_with_alias_bomb",
        ["5: YAML aliases are not allowed (*a0): write the value out in full"],
    ),
    (
        "article_with_line_separator_in_title",
        ["2: 'title' must be one line: it contains a line break (U+2028)"],
    ),
    (
        "article_with_next_line_in_summary",
        ["5: contains a line break (U+0085), which YAML reads as a new line; remove it"],
    ),
    (
        "article_with_nested_emphasis",
        [
            "9: emphasis or links nested too deeply (40 inside one another): "
            "remove some of the * or _ marks"
        ],
    ),
    (
        "article_with_nested_underscores",
        [
            "9: emphasis or links nested too deeply (40 inside one another): "
            "remove some of the * or _ marks"
        ],
    ),
]


def check(root: Path) -> tuple[int, str, str]:
    return run(root, "check", "--now", "2026-11-28T12:00:00+00:00")


@pytest.mark.parametrize(("fixture", "expected"), ARTICLE_CASES, ids=[c[0] for c in ARTICLE_CASES])
def test_malformed_article_is_one_line(
    workspace: BuildWorkspace, fixture: str, expected: list[str]
) -> None:
    """Each malformed article is reported as its exact lines by `series check`, no traceback."""
    name = f"01-{fixture.replace('_', '-')}.md"
    code, out, _ = check(workspace({name: fixture}))
    errors = [line for line in expected if ": warning: " not in f"x:{line}"]
    assert code == (1 if errors else 0)
    assert out.splitlines() == [f"series/demo/{name}:{line}" for line in expected]


@pytest.mark.parametrize(
    ("fixture", "key", "typed"),
    [
        ("article_with_sexagesimal_title", "title", "5:30"),
        ("article_with_octal_slug", "slug", "0123"),
        ("article_with_decimal_summary", "summary", "3.10"),
        ("article_with_bom", "title", "Saved by Notepad with a byte-order mark"),
        ("article_with_crlf_line_ends", "title", "Saved on Windows"),
        ("article_with_cr_line_ends", "title", "Saved on a classic Mac"),
    ],
)
def test_text_stays_as_typed(workspace: BuildWorkspace, fixture: str, key: str, typed: str) -> None:
    """Text keys keep the text typed (YAML 1.1 would make 5:30 330, 0123 83, 3.10 3.1), and
    a byte-order mark before the front matter is skipped; check passes."""
    root = workspace({"01-case.md": fixture})
    (series,), problems = load_series(load_config(root))
    assert problems == []
    assert getattr(series.articles[0], key) == typed
    assert check(root)[0] == 0


def test_sexagesimal_title_is_the_subject(workspace: BuildWorkspace) -> None:
    """The email's subject is the title as typed, "5:30", not "330"."""
    root = workspace({"01-case.md": "article_with_sexagesimal_title"})
    code, out, _ = run(root, "preview", "--now", "2026-11-28T12:00:00+00:00")
    assert code == 0, out
    eml = (root / "build/preview/demo/01-case.eml").read_text(encoding="utf-8")
    assert "Subject: 5:30 (Demo Series, part 1 of 1)" in eml


def test_delay_that_overflows_is_an_error(workspace: BuildWorkspace) -> None:
    """delay_days: 1e400 (infinity) is an error at its line, not an OverflowError in render."""
    root = workspace({"01-valid.md": "valid_article", "02-wait.md": "article_with_endless_delay"})
    code, out, _ = check(root)
    assert (code, out) == (
        1,
        "series/demo/02-wait.md:4: 'delay_days' must be at most 3650 days, got inf\n",
    )


# (fixture in tests/fixtures/series/, expected lines after "series/demo/series.yml:")
SERIES_CASES = [
    (
        "series_with_alias_bomb_in_timezone",
        ["3: YAML aliases are not allowed (*a0): write the value out in full"],
    ),
    (
        "series_with_alias_bomb_in_from_email",
        ["3: YAML aliases are not allowed (*a0): write the value out in full"],
    ),
    (
        "series_with_alias_bomb_in_send_window_days",
        ["3: YAML aliases are not allowed (*a0): write the value out in full"],
    ),
    ("series_with_endless_cadence", ["2: 'cadence_days' must be at most 3650 days, got inf"]),
]


@pytest.mark.parametrize(("fixture", "expected"), SERIES_CASES, ids=[c[0] for c in SERIES_CASES])
def test_malformed_series_yml_is_one_line(
    workspace: BuildWorkspace, fixture: str, expected: list[str]
) -> None:
    """Each malformed series.yml is reported as its exact lines, at once (an alias bomb is
    refused at its first alias instead of expanding to gigabytes)."""
    text = (FIXTURES / "series" / f"{fixture}.yml").read_text(encoding="utf-8")
    code, out, _ = check(workspace(series_yml=text))
    assert code == 1
    assert out.splitlines() == [f"series/demo/series.yml:{line}" for line in expected]


def test_series_yml_text_keys_and_bom(workspace: BuildWorkspace) -> None:
    """series.yml reads like front matter: a BOM is skipped, text keys stay as typed."""
    root = workspace()
    demo = root / "series/demo/series.yml"
    shutil.copy(FIXTURES / "series" / "series_with_bom.yml", demo)
    assert check(root)[0] == 0
    shutil.copy(FIXTURES / "series" / "series_with_numeric_title.yml", demo)
    (series,), problems = load_series(load_config(root))
    assert problems == []
    assert (series.title, series.description) == ("2026", "1:30")


@pytest.mark.parametrize(
    ("name", "read"),
    [
        ("03-harvest.MD", True),
        ("03-harvest.markdown", True),
        ("03-harvest.Markdown", True),
        ("03-harvest.md.txt", False),
        ("03-harvest.txt", False),
    ],
)
def test_article_file_extensions(workspace: BuildWorkspace, name: str, read: bool) -> None:
    """.markdown and any letter case of .md are articles; other files that look like one
    are named in a warning instead of silently shrinking the series."""
    root = workspace({"01-valid.md": "valid_article"})
    shutil.copy(FIXTURES / "articles" / "article_with_third_part.md", root / "series/demo" / name)
    code, out, _ = check(root)
    (series,), _ = load_series(load_config(root))
    if read:
        assert (code, out, series.total) == (0, "", 2)
        assert series.articles[1].slug == "harvest"
    else:
        assert code == 0
        assert out == (
            f"series/demo/{name}: warning: not read: articles are .md or .markdown files "
            "(rename it to 03-harvest.md if it is one)\n"
        )
        assert series.total == 1


def test_folder_named_like_an_article_warns(workspace: BuildWorkspace) -> None:
    """A folder named 03-harvest.md is named in a warning (it raised IsADirectoryError)."""
    root = workspace()
    (root / "series/demo/03-harvest.md").mkdir()
    assert check(root)[:2] == (
        0,
        "series/demo/03-harvest.md: warning: not read: a folder, not an article\n",
    )


def test_article_over_the_size_limit_is_refused_before_parsing(
    workspace: BuildWorkspace,
) -> None:
    """An article over 1 MB is one error naming the limit, found without parsing it."""
    root = workspace()
    article = root / "series/demo/01-valid.md"
    article.write_text(article.read_text() + "x" * 1_000_000, encoding="utf-8")
    size = article.stat().st_size
    code, out, _ = check(root)
    assert (code, out) == (
        1,
        f"series/demo/01-valid.md: the file is {size:,} bytes; an article may be at most "
        "1,000,000 bytes: split it, or check that it is the file you meant\n",
    )


CONFIG_CASES = [
    (
        "config_with_tool_series_header",
        [
            "series.toml:1: series.toml takes the keys at the top level: write [tool.series] "
            "keys without that header, and [tool.series.from] as [from] ([tool.series] is for "
            "pyproject.toml)"
        ],
    ),
    (
        "config_with_three_mistakes",
        [
            "series.toml:1: 'site_url' must be an absolute http(s) URL, got 'blog.example'",
            "series.toml:2: unknown key 'timezne' (did you mean 'timezone'?)",
            "series.toml:3: 'workers' must be 1 to 32 processes, got '4' "
            "(remove the quotes: workers = 4)",
        ],
    ),
    (
        "config_with_mistakes_inside_tables",
        [
            "series.toml:5: 'from.name' must be one line: it contains a line break (U+000A)",
            "series.toml:6: 'from.email' is not a valid address: "
            "There must be something after the @-sign.",
            "series.toml:9: 'send_window.start' must be a time such as \"09:00\", got '25:00'",
            "series.toml:11: 'send_window.days': unknown day 'xx'",
        ],
    ),
    (
        "config_with_quoted_boolean",
        [
            "series.toml:2: 'raw_html' must be a boolean (true/false), got 'true' "
            "(remove the quotes: raw_html = true)"
        ],
    ),
    (
        "config_with_directory_as_timezone",
        ["series.toml:2: unknown timezone 'Europe' (use an IANA name such as 'Europe/Stockholm')"],
    ),
    (
        "config_with_format_spec_in_utm",
        [
            "series.toml:7: 'utm.content' may use only {series}, {slug} and {part}: "
            "found {part:999999999}"
        ],
    ),
]


@pytest.mark.parametrize(("fixture", "expected"), CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_malformed_config_lists_every_problem_in_file_order(
    workspace: BuildWorkspace, fixture: str, expected: list[str]
) -> None:
    """A bad series.toml: every problem at once, in file order, one `Error:` line each."""
    root = workspace(config=f"{fixture}.toml")
    with pytest.raises(ConfigError) as caught:
        load_config(root)
    assert [str(p) for p in caught.value.problems] == expected
    code, out, err = check(root)
    assert (code, out) == (1, "")
    assert err.splitlines() == [f"Error: {line}" for line in expected]


def test_config_with_bom_is_read(workspace: BuildWorkspace) -> None:
    """A series.toml saved with a byte-order mark loads like one without."""
    root = workspace(config="config_with_bom.toml")
    assert load_config(root).site_url == "https://blog.example"
    assert check(root)[0] == 0


def test_raw_html_warns_at_each_line(workspace: BuildWorkspace) -> None:
    """Raw HTML that would reach readers as literal tags is a warning at its line, naming
    the raw_html setting; with raw_html = true there is no warning and the tags are HTML."""
    root = workspace({"01-html.md": "article_with_br_and_div"})
    code, out, _ = check(root)
    setting = "write it in Markdown, or set raw_html = true in series.toml"
    assert (code, out.splitlines()) == (
        0,
        [
            f"series/demo/01-html.md:6: warning: raw HTML <br> will show as text in the email: "
            f"{setting}",
            f'series/demo/01-html.md:9: warning: raw HTML <div class="note"> will show as text '
            f"in the email: {setting}",
            f"series/demo/01-html.md:11: warning: raw HTML <!-- more --> will show as text in "
            f"the email: {setting}",
        ],
    )
    config = root / "series.toml"
    config.write_text("raw_html = true\n" + config.read_text(), encoding="utf-8")
    assert check(root)[:2] == (0, "")
    run(root, "preview", "--now", "2026-11-28T12:00:00+00:00")
    html = (root / "build/preview/demo/01-html.html").read_text(encoding="utf-8")
    assert '<div class="note">A note in a box.</div>' in html


def test_list_ten_deep_reaches_readers_whole(workspace: BuildWorkspace) -> None:
    """A list ten levels deep loses neither its tenth level nor what follows it, in the HTML
    and in the text part (markdown-it's commonmark preset dropped both)."""
    root = workspace({"01-deep.md": "article_with_list_nested_10_deep"})
    assert check(root)[:2] == (0, "")
    run(root, "preview", "--now", "2026-11-28T12:00:00+00:00")
    for suffix in ("html", "txt"):
        part = (root / f"build/preview/demo/01-deep.{suffix}").read_text(encoding="utf-8")
        assert "level 10" in part
        assert "After the list: this paragraph must reach readers too." in part


def test_list_too_deep_is_an_error(workspace: BuildWorkspace) -> None:
    """Nesting past the limit is an error at the first line too deep, so nothing is cut
    silently; send and preview refuse it like any render error."""
    root = workspace({"01-deep.md": "article_with_list_nested_25_deep"})
    code, out, _ = check(root)
    assert (code, out) == (
        1,
        "series/demo/01-deep.md:25: nested too deeply (20 lists or 40 quotes inside one "
        "another): flatten it, or the email would lose the rest of the article\n",
    )


@pytest.mark.parametrize("command", [["preview", "attachment/1"], ["send", "--dry-run"]])
def test_nested_emphasis_is_refused_by_preview_and_send(
    example_copy: Path, command: list[str]
) -> None:
    """Emphasis 500 deep is one line from preview and send too (it was a RecursionError
    traceback from the text part's tree walk)."""
    article = "series/attachment/01-attachment-theory.md"
    shutil.copy(FIXTURES / "articles" / "article_with_nested_emphasis.md", example_copy / article)
    assert run(example_copy, "subscribers", "import", "subscribers/example.csv")[0] == 0
    code, out, err = run(example_copy, *command)
    assert "Traceback" not in out + err
    assert code == 1
    expected = (
        f"{article}:9: emphasis or links nested too deeply (40 inside one another): "
        "remove some of the * or _ marks"
    )
    assert any(line.removeprefix("Error: ") == expected for line in (out + err).splitlines()), (
        out + err
    )


def test_footer_block_with_nested_emphasis_is_one_line(workspace: BuildWorkspace) -> None:
    """Emphasis 500 deep in a footer block is one line naming the block."""
    root = workspace()
    shutil.copy(
        FIXTURES / "templates" / "footer_with_nested_emphasis.md", root / "templates/footer/note.md"
    )
    config = root / "series.toml"
    config.write_text('footer = ["note"]\n' + config.read_text(), encoding="utf-8")
    code, out, _ = check(root)
    assert (code, out) == (
        1,
        "templates/footer/note.md:1: emphasis or links nested too deeply (40 inside one "
        "another): remove some of the * or _ marks\n",
    )


def test_template_that_includes_itself_is_one_line(workspace: BuildWorkspace) -> None:
    """A template that includes itself is one line at the include (it was a RecursionError
    traceback)."""
    root = workspace()
    shutil.copy(
        FIXTURES / "templates" / "template_including_itself.txt.j2", root / "templates/email.txt.j2"
    )
    code, out, _ = check(root)
    assert (code, out) == (
        1,
        "templates/email.txt.j2:1: template could not render: templates include one another "
        "without end (does one include itself?)\n",
    )


def test_template_not_utf8_is_one_line(workspace: BuildWorkspace) -> None:
    """A template saved as Windows-1252 is one line naming it (Jinja raised
    UnicodeDecodeError with no file named)."""
    root = workspace(html_template="template_in_windows_1252.mjml.j2")
    code, out, _ = check(root)
    assert (code, out) == (
        1,
        "templates/email.mjml.j2:1: not UTF-8 text: byte 0xE9 in column 7 (a Windows-1252 or "
        "Latin-1 file?); save it as UTF-8 (your editor's Save As or Encoding menu)\n",
    )


def test_template_with_bom_is_read(workspace: BuildWorkspace) -> None:
    """A template with a byte-order mark renders as one without: no U+FEFF in the email."""
    root = workspace(html_template="template_with_bom.mjml.j2")
    assert check(root)[:2] == (0, "")
    run(root, "preview", "--now", "2026-11-28T12:00:00+00:00")
    assert "\ufeff" not in (root / "build/preview/demo/01-valid.html").read_text(encoding="utf-8")


def test_footer_block_not_utf8_is_one_line(workspace: BuildWorkspace) -> None:
    """A footer block saved as Windows-1252 is one line naming it."""
    root = workspace()
    shutil.copy(
        FIXTURES / "templates" / "footer_in_windows_1252.md", root / "templates/footer/note.md"
    )
    config = root / "series.toml"
    config.write_text('footer = ["note"]\n' + config.read_text(), encoding="utf-8")
    code, out, _ = check(root)
    assert (code, out) == (
        1,
        "templates/footer/note.md:1: not UTF-8 text: byte 0xE9 in column 19 (a Windows-1252 "
        "or Latin-1 file?); save it as UTF-8 (your editor's Save As or Encoding menu)\n",
    )


def test_empty_state_db_is_refused_not_reinitialised(example_copy: Path) -> None:
    """A zero-length state.db is refused by every command, and stays empty: taken for a new
    database, the usual re-import would send every reader part 1 again."""
    state = example_copy / "subscribers" / "state.db"
    state.touch()
    expected = (
        f"Error: database sqlite:///{state} is an empty file, not a database: restore it from "
        "a backup (a new database here would send every reader part 1 again); delete it only "
        "to start afresh\n"
    )
    for command in (["subscribers", "import", "subscribers/example.csv"], ["status"]):
        code, out, err = run(example_copy, *command)
        assert (code, out, err) == (1, "", expected)
    assert state.stat().st_size == 0


@pytest.mark.parametrize(
    ("damage", "reason"),
    [("truncated", "database disk image is malformed"), ("overwritten", "file is not a database")],
)
def test_damaged_state_db_is_one_line(example_copy: Path, damage: str, reason: str) -> None:
    """A truncated or overwritten state.db is one line naming it, no SQLAlchemy traceback."""
    assert run(example_copy, "subscribers", "import", "subscribers/example.csv")[0] == 0
    state = example_copy / "subscribers" / "state.db"
    if damage == "truncated":
        state.write_bytes(state.read_bytes()[:8192])
    else:
        state.write_bytes(b"Not a database, whatever the name says.\n" * 100)
    for name in ("state.db-wal", "state.db-shm"):
        (example_copy / "subscribers" / name).unlink(missing_ok=True)
    expected = (
        f"Error: database sqlite:///{state} is damaged ({reason}): restore it from a backup; "
        "series will not write to it\n"
    )
    for command in (["status"], ["subscribers", "list"], ["send", "--dry-run"]):
        code, out, err = run(example_copy, *command)
        assert (code, out, err) == (1, "", expected), command


@pytest.mark.parametrize("kind", ["directory", "dangling_symlink"])
def test_unopenable_state_db_is_one_line(example_copy: Path, kind: str) -> None:
    """A state.db that is there but cannot be opened is the same line from status and a dry
    run (which took it for "no subscribers yet", exit 0), and a warning from check (which
    said nothing)."""
    state = example_copy / "subscribers" / "state.db"
    if kind == "directory":
        state.mkdir()
    else:
        state.symlink_to(example_copy / "nowhere" / "state.db")
    expected = f"Error: database sqlite:///{state}: unable to open database file\n"
    for command in (["status"], ["send", "--dry-run"]):
        code, out, err = run(example_copy, *command)
        assert (code, out, err) == (1, "", expected), command
    code, out, _ = run(example_copy, "check")
    assert (code, out) == (
        0,
        f"state: warning: could not read the state database: database sqlite:///{state}: "
        "unable to open database file\n",
    )


def test_publish_date_too_far_ahead_is_an_error(workspace: BuildWorkspace) -> None:
    """published: 9999-12-31 (a writer's "never") is an error at its line, so send refuses
    the content before anything goes out (planning it overflowed datetime mid-run)."""
    root = workspace(
        {"01-valid.md": "valid_article", "02-held.md": "article_published_in_year_9999"}
    )
    code, out, _ = check(root)
    assert (code, out) == (
        1,
        "series/demo/02-held.md:4: 'published' is 9999-12-31, too far ahead to schedule: to "
        "hold a part back, leave 'published' out or set draft: true\n",
    )
    code, _, err = run(root, "send", "--now", "2026-11-28T12:00:00+00:00")
    assert code == 1 and "series/demo/02-held.md:4: 'published' is 9999-12-31" in err
