"""Parsing and validation of series and articles: one fixture file per bad case."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.check import check_workspace
from pipeline.config import load_config
from pipeline.content import load_series

from .conftest import EXAMPLE_NOW, ROOT, BuildWorkspace
from .helpers import enroll_examples, run

CASES = [
    (
        "article_with_unknown_key",
        "4: unknown key 'delay_dayz' (did you mean 'delay_days'?)",
    ),
    (
        "article_with_malformed_yaml",
        "4: malformed YAML: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence)",
    ),
    ("article_without_title", "1: missing required key 'title'"),
    ("article_with_text_part", "3: 'part' must be a whole number, got 'two'"),
    ("article_with_part_zero", "3: 'part' must be 1 or more, got 0"),
    (
        "article_with_bad_date",
        "4: 'published' is not a date: 'next tuesday' (use YYYY-MM-DD or YYYY-MM-DD HH:MM)",
    ),
    (
        "article_with_relative_url",
        "4: 'url' must be an absolute http(s) URL, got '/demo/relative/'",
    ),
    ("article_with_empty_body", "6: the article has no body"),
    ("article_without_front_matter", "1: missing front matter: start the file with a '---' line"),
    (
        "article_with_image_without_alt",
        "8: warning: image has no alt text (write ![what it shows](url))",
    ),
]


def problems_of(root: Path) -> list[str]:
    return [str(p) for p in check_workspace(load_config(root), now=EXAMPLE_NOW).problems]


@pytest.mark.parametrize(("fixture", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_article_reports_file_and_line(
    workspace: BuildWorkspace, fixture: str, expected: str
) -> None:
    """Each bad case yields exactly one problem, naming the file and the offending line."""
    name = f"01-{fixture.replace('_', '-')}.md"
    root = workspace({name: fixture})
    assert problems_of(root) == [f"series/demo/{name}:{expected}"]


def test_duplicate_part_is_an_error(workspace: BuildWorkspace) -> None:
    """Two files claiming the same part number are reported at the second file's `part` line."""
    root = workspace({"01-valid.md": "valid_article", "02-same.md": "article_with_duplicate_part"})
    problems = problems_of(root)
    assert (
        "series/demo/02-same.md:3: part 1 is also series/demo/01-valid.md; "
        "each part number must be unique"
    ) in problems


def test_duplicate_slug_is_an_error(workspace: BuildWorkspace) -> None:
    """Two articles with one slug (an article's identity in the ledger) are an error at the
    second file's `slug` line, with the fix."""
    root = workspace({"01-valid.md": "valid_article", "02-same.md": "article_with_duplicate_slug"})
    assert problems_of(root) == [
        "series/demo/02-same.md:4: slug 'valid' is also series/demo/01-valid.md's; each "
        "article needs its own slug (set 'slug:' to tell them apart)"
    ]


def test_link_to_draft_part_warns(workspace: BuildWorkspace) -> None:
    """A link to a draft part's URL is a warning at the line of the link."""
    root = workspace({"01-link.md": "article_linking_to_draft", "02-draft.md": "draft_article"})
    assert problems_of(root) == [
        "series/demo/01-link.md:8: warning: links to part 2 (Still being written), which is a draft"
    ]


def test_link_to_future_part_warns_until_published(workspace: BuildWorkspace) -> None:
    """A link to a part with a publish date still ahead warns; once the date passes it does not."""
    root = workspace({"01-link.md": "article_linking_to_draft", "02-draft.md": "draft_article"})
    draft = root / "series/demo/02-draft.md"
    draft.write_text(
        draft.read_text().replace("draft: true", "published: 2027-01-10"), encoding="utf-8"
    )
    assert problems_of(root) == [
        "series/demo/01-link.md:8: warning: links to part 2 (Still being written), "
        "which is not published yet"
    ]
    later = check_workspace(load_config(root), now=datetime(2027, 1, 11, tzinfo=UTC))
    assert later.problems == []


def test_missing_series_yml(workspace: BuildWorkspace) -> None:
    """A series directory without series.yml is an error naming the missing file."""
    root = workspace(series_yml=None)
    assert problems_of(root) == [
        "series/demo/series.yml: missing series.yml (needs at least 'title')"
    ]


def test_series_yml_unknown_key_and_bad_cadence(workspace: BuildWorkspace) -> None:
    """series.yml keys are validated like front matter, at their own lines."""
    root = workspace(series_yml="title: Demo\ncadense_days: 3\ncadence_days: soon\n")
    assert problems_of(root) == [
        "series/demo/series.yml:2: unknown key 'cadense_days' (did you mean 'cadence_days'?)",
        "series/demo/series.yml:3: 'cadence_days' must be a number of days (0 or more), got 'soon'",
    ]


def test_series_yml_paused_is_true_or_false(workspace: BuildWorkspace) -> None:
    """`paused` takes YAML 1.2's true or false; `yes` or a typo is an error at its line."""
    root = workspace(series_yml="title: Demo\npaused: yes\npausd: true\n")
    problems = problems_of(root)
    assert "series/demo/series.yml:3: unknown key 'pausd' (did you mean 'paused'?)" in problems
    assert any(
        p.startswith("series/demo/series.yml:2: 'paused' must be true or false") for p in problems
    )
    (root / "series" / "demo" / "series.yml").write_text("title: Demo\npaused: true\n")
    assert problems_of(root) == []


def test_every_problem_is_reported_at_once(workspace: BuildWorkspace) -> None:
    """Problems in several files are all collected, not just the first."""
    root = workspace(
        {
            "01-article-with-unknown-key.md": "article_with_unknown_key",
            "02-article-with-bad-date.md": "article_with_bad_date",
        }
    )
    problems = problems_of(root)
    assert any(p.startswith("series/demo/01-article-with-unknown-key.md:4:") for p in problems)
    assert any(p.startswith("series/demo/02-article-with-bad-date.md:4:") for p in problems)


def test_defaults_from_file_name_and_series() -> None:
    """Slug comes from the file name, delay from cadence_days unless delay_days overrides it."""
    (series,), problems = load_series(load_config(ROOT))
    assert problems == []
    secure, anxious = series.part(2), series.part(3)
    assert secure is not None and anxious is not None
    assert secure.slug == "secure"
    assert series.delay(secure) == timedelta(days=4)
    assert series.delay(anxious) == timedelta(days=5)


def test_example_publication_states() -> None:
    """The example shows every state: parts 1–3 out, 4 a draft, 5 published in the future."""
    (series,), _ = load_series(load_config(ROOT))
    states = [(a.part, a.draft, a.is_published(EXAMPLE_NOW)) for a in series.articles]
    assert states == [
        (1, False, True),
        (2, False, True),
        (3, False, True),
        (4, True, False),
        (5, False, False),
    ]
    part5 = series.part(5)
    assert part5 is not None and part5.published is not None
    assert part5.published.tzinfo is not None  # a bare date is midnight in the workspace's zone
    assert part5.published.utcoffset() == timedelta(hours=1)  # Europe/Stockholm in March


def test_email_over_gmail_clip_size_warns(workspace: BuildWorkspace) -> None:
    """An article whose email HTML passes 102 KB gets a warning saying Gmail clips it."""
    root = workspace()
    article = root / "series/demo/01-valid.md"
    paragraph = "A sentence that keeps going so the email grows past the clipping limit. " * 20
    article.write_text(article.read_text() + f"\n{paragraph}\n" * 80, encoding="utf-8")
    (problem,) = check_workspace(load_config(root), now=EXAMPLE_NOW).problems
    assert problem.severity == "warning"
    assert str(problem).startswith("series/demo/01-valid.md: warning: the email's HTML part is ")
    assert str(problem).endswith(
        "Gmail clips messages over 102 KB, so shorten the article or split it"
    )


def test_a_slug_with_a_control_character_is_an_error(workspace: BuildWorkspace) -> None:
    """A NUL in a slug would be cut short in the ledger (SQLite's JSON functions end a
    text there): `series check` refuses it at the `slug` line, shown escaped."""
    root = workspace({"01-valid.md": "valid_article"})
    article = root / "series" / "demo" / "01-valid.md"
    text = article.read_text(encoding="utf-8")
    article.write_text(text.replace("part: 1\n", 'part: 1\nslug: "intro\\0x"\n', 1), "utf-8")
    assert problems_of(root) == [
        "series/demo/01-valid.md:4: slug holds a control character (U+0000); a slug is the "
        "article's name in the delivery ledger (set 'slug:' to letters, digits and dashes)"
    ]


def test_a_file_name_that_is_not_utf8_is_an_error_when_it_names_the_slug(
    workspace: BuildWorkspace,
) -> None:
    """Without `slug:` the slug comes from the file name; a byte of it that is not UTF-8
    could not be stored, so `series check` says so instead of a send failing later."""
    root = workspace({"01-valid.md": "valid_article"})
    folder = root / "series" / "demo"
    odd = os.fsdecode(b"01-intro\xff.md")
    (folder / "01-valid.md").rename(folder / odd)
    [problem] = problems_of(root)
    assert ":1: slug holds a byte that is not UTF-8 (from the file name)" in problem


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("s" * 101, "is 101 characters long, at most 100"),
        ("demo\x07bell", "holds a control character (U+0007)"),
        (os.fsdecode(b"demo\xff"), "holds a byte that is not UTF-8 (from the file name)"),
    ],
)
def test_a_series_folder_name_the_database_cannot_keep_is_an_error(
    workspace: BuildWorkspace, name: str, said: str
) -> None:
    """A series' folder name is its slug in every enrollment and delivery. One the
    database cannot keep (PostgreSQL refused more than 100 characters at the first
    import; a control character or a byte that is not UTF-8 breaks the ledger's batch
    writes) is refused by `series check`, naming the folder, before anyone is enrolled."""
    root = workspace({"01-valid.md": "valid_article"})
    (root / "series" / "demo").rename(root / "series" / name)
    [problem] = problems_of(root)
    assert problem.endswith(
        f"the folder's name {said}; it is the series' name in the database "
        "(rename the folder before anyone is enrolled)"
    )
    assert problem.startswith("series/")


def test_a_series_folder_name_of_100_characters_is_fine(workspace: BuildWorkspace) -> None:
    root = workspace({"01-valid.md": "valid_article"})
    (root / "series" / "demo").rename(root / "series" / ("s" * 100))
    assert problems_of(root) == []


@pytest.mark.parametrize("command", [("check",), ("send", "--dry-run"), ("status",)])
def test_a_control_character_in_a_file_name_is_shown_not_acted_on(
    example_copy: Path, command: tuple[str, ...]
) -> None:
    """A problem line names the file, and a file or folder name may hold an escape
    sequence: printed raw, it would retitle the terminal or hide the line. It is shown
    escaped, for a series folder as for an article file."""
    enroll_examples(example_copy)
    folder = example_copy / "series" / "attachment"
    shutil.copytree(folder, folder.with_name("attach\x1b[2Jment"))
    (folder / "01-attachment-theory.md").rename(folder / "01-x\x1b]0;pwned\x07.md")
    code, out, err = run(example_copy, *command)
    shown = out + err
    assert code == 1
    assert "\x1b" not in shown and "\x07" not in shown
    assert "attach\\x1b[2Jment: the folder's name holds a control character (U+001B)" in shown
    assert "01-x\\x1b]0;pwned\\x07.md:1: slug holds a control character" in shown
