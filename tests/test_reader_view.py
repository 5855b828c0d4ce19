"""What a reader sees (issue 15): the greeting, the series line, the lead link, the
signature, the language, the inbox preview, and the compliance nudges of `check`.

End-to-end tests read the .eml files the outbox writes, with the standard library's
MIME parser taking apart what a mailbox would receive.
"""

from __future__ import annotations

import email
import email.policy
import itertools
import re
import unicodedata
from dataclasses import replace
from datetime import UTC, datetime
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path

import pytest
import regex
from hypothesis import given
from hypothesis import strategies as st

from pipeline.check import serving_note
from pipeline.config import load_config
from pipeline.content import load_series
from pipeline.language import language_problem
from pipeline.markup import LONG_TOKEN, Document, breakable
from pipeline.personal import Personal, field_values, first_word
from pipeline.render import PREHEADER_PADDING, PREVIEW_CHARACTERS, Renderer, preheader_padding

from .helpers import ENROLLED_AT, configure, run, send_at

MONDAY = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)  # parts 1-3 are out
PART_1_PREHEADER = (
    "Why you reach for closeness, or pull away, when a relationship starts to matter."
)


def _outbox(root: Path) -> dict[str, EmailMessage]:
    """The outbox's messages by recipient address."""
    found = {}
    for path in (root / "outbox").rglob("*.eml"):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        found[message["To"].addresses[0].addr_spec] = message
    return found


def _parts(message: EmailMessage) -> tuple[str, str]:
    """(text, html) of a multipart/alternative message."""
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    return str(text.get_content()), str(html.get_content())


def _import(root: Path, csv: str) -> tuple[int, str, str]:
    (root / "readers.csv").write_text(csv, encoding="utf-8")
    return run(root, "subscribers", "import", str(root / "readers.csv"), "--now", ENROLLED_AT)


# -- the greeting --------------------------------------------------------------

READERS = (
    "email,name,first_name,timezone,series\n"
    "dan@example.com,Daniel Okafor,,UTC,attachment\n"
    "mj@example.com,María José García,María José,UTC,attachment\n"
    'lead@example.com,"   Ann Lee",,UTC,attachment\n'
    'broken@example.com,"Bob\nBcc: x@evil.example",,UTC,attachment\n'
    "encoded@example.com,=?utf-8?q?Eve=0AMallory?= Smith,,UTC,attachment\n"
    'blank@example.com,"  \t ",,UTC,attachment\n'
    'spaced@example.com,Zoe Park,"  ",UTC,attachment\n'
    "zwsp@example.com,\u200b,,UTC,attachment\n"
    "rlo@example.com,\u202eAnn Lee,,UTC,attachment\n"
)
GREETINGS = {
    "dan@example.com": "Daniel",
    "mj@example.com": "María José",
    "lead@example.com": "Ann",
    "broken@example.com": "Bob",
    "encoded@example.com": "=?utf-8?q?Eve=0AMallory?=",
    "blank@example.com": "friend",
    "spaced@example.com": "Zoe",
    "zwsp@example.com": "friend",
    "rlo@example.com": "Ann",
}


def test_outbox_greets_each_reader_by_first_name(example_copy: Path) -> None:
    """The first_name column wins; else the name's first word, whatever spaces, line
    breaks or encoded-words the name holds; a reader with no name gets default_name."""
    configure(example_copy, 'default_name = "friend"')
    code, out, err = _import(example_copy, READERS)
    assert code == 0, out + err
    code, out, err = send_at(example_copy, MONDAY)
    assert code == 0, out + err
    messages = _outbox(example_copy)
    assert set(messages) == set(GREETINGS)
    for address, first in GREETINGS.items():
        text, html = _parts(messages[address])
        assert f"\nHi {first},\n" in text, address
        escaped = first.replace("&", "&amp;")
        assert f">Hi {escaped},</p>" in html, address
        # Nothing of a name reaches a line of its own.
        assert "\nBcc:" not in text and "\nMallory" not in text


def test_templates_can_use_the_whole_name_and_the_first_name(example_copy: Path) -> None:
    """reader.name and reader.first_name are both there, escaped in the HTML part."""
    (example_copy / "templates" / "email.txt.j2").write_text(
        "[{{ reader.name }}] [{{ reader.first_name }}]\n", encoding="utf-8"
    )
    config = load_config(example_copy)
    (series,), _ = load_series(config)
    renderer = Renderer(config, now=MONDAY, use_cache=False)
    compiled = renderer.compile(series, series.articles[0])
    out = compiled.personalise(
        Personal("Daniel <Okafor>", "d@example.com", "https://u.example/1", "Dan")
    )
    assert out.text == "[Daniel <Okafor>] [Dan]\n"
    assert "Hi Dan," in out.html


def test_subscribers_add_takes_a_first_name(example_copy: Path) -> None:
    """`subscribers add --first-name` sets the greeting's name; '' removes it again."""

    def add(*args: str) -> None:
        code, out, err = run(
            example_copy, "subscribers", "add", "dan@example.com", *args, "--now", ENROLLED_AT
        )
        assert code == 0, out + err

    add("--name", "Daniel Okafor", "--first-name", " Dan\nny ", "--series", "attachment",
        "--timezone", "UTC")  # fmt: skip
    code, out, err = send_at(example_copy, MONDAY)
    assert code == 0, out + err
    text, html = _parts(_outbox(example_copy)["dan@example.com"])
    assert "\nHi Dan ny,\n" in text and ">Hi Dan ny,</p>" in html
    code, out, _ = run(example_copy, "subscribers", "show", "dan@example.com")
    assert "Dan ny" in out
    add("--first-name", "")
    code, out, _ = run(example_copy, "subscribers", "show", "dan@example.com")
    assert "Dan ny" not in out
    code, out, err = run(
        example_copy, "subscribers", "add", "dan@example.com", "--first-name", "D" * 201
    )
    assert code != 0
    assert "the first name is 201 characters long (at most 200)" in out + err
    assert "Traceback" not in out + err


@pytest.mark.parametrize(
    ("name", "first", "expected"),
    [
        ("Daniel Okafor", "", "Daniel"),
        ("  Daniel   Okafor ", "", "Daniel"),
        ("Ann, PhD", "", "Ann"),
        ("Ann\r\nLee", "", "Ann"),
        ("\u2028Ann", "", "Ann"),
        ("", "", "there"),
        (" \n\t", "", "there"),
        ("Daniel Okafor", "Dan", "Dan"),
        ("Daniel Okafor", " Dan\n", "Dan"),
        ("Daniel Okafor", "\n ", "Daniel"),
        # Invisible names (issue 15 review): format characters and spaces are no name.
        ("\u200b", "", "there"),
        ("\ufeff", "", "there"),
        ("\u200e\u200f\u2060", "", "there"),
        ("\u202e", "", "there"),
        ("\u2066\u202a \u200b", "", "there"),
        ("Daniel Okafor", "\u200b", "Daniel"),
        ("\ufeffAnn Lee", "", "Ann"),
        ("\u200b Ann Lee", "", "Ann"),
        ("\u202eAnn Lee", "", "Ann"),
        ("Ann\u202e", "", "Ann"),
        ("Daniel", "\u2067Dan", "Dan"),
        ("دانيال أوكافور", "", "دانيال"),
    ],
)
def test_first_name_rules(name: str, first: str, expected: str) -> None:
    values = field_values(Personal(name, "a@example.com", "https://u.example/1", first), "there")
    assert values["first_name"] == expected


@given(st.text(), st.text())
def test_no_bidi_control_or_invisible_greeting_reaches_the_email(name: str, first: str) -> None:
    """Whatever a name holds, the greeting and the name have no bidi embedding,
    override or isolate (which would reorder "Hi …," around them) and are never only
    invisible: a name of format characters and spaces gets the default name."""
    values = field_values(Personal(name, "a@example.com", "https://u.example/1", first), "there")
    for key in ("name", "first_name"):
        value = values[key]
        assert not re.search("[\u202a-\u202e\u2066-\u2069]", value)
        assert not value.startswith("\ufeff")
        assert any(not c.isspace() and unicodedata.category(c) != "Cf" for c in value)


@given(st.text())
def test_a_first_word_is_one_line_without_spaces(name: str) -> None:
    word = first_word(name)
    assert not re.search(r"[\s\x00-\x1f\x7f-\x9f]", word)
    assert word == "" or word.rstrip(",;:") in name or word in name


# -- the series line and the lead link ------------------------------------------


def test_late_starters_alone_are_pointed_to_part_1(example_copy: Path) -> None:
    """A reader enrolled at part 3 is told "New here? Start with part 1"; a reader who
    started at part 1 is not, in any part; the series line says "· part k of 5"."""
    for address, start in (("late@example.com", "3"), ("early@example.com", "1")):
        code, out, err = run(
            example_copy,
            "subscribers",
            "add",
            address,
            "--series",
            "attachment",
            "--start-part",
            start,
            "--timezone",
            "UTC",
            "--now",
            ENROLLED_AT,
        )
        assert code == 0, out + err
    code, out, err = send_at(example_copy, MONDAY)
    assert code == 0, out + err
    messages = _outbox(example_copy)
    late_text, late_html = _parts(messages["late@example.com"])
    early_text, early_html = _parts(messages["early@example.com"])
    assert "Attachment Styles · part 3 of 5" in late_text
    assert "<strong>Attachment Styles</strong> · part 3 of 5" in late_html
    assert "New here? Start with part 1: What attachment styles are" in late_text
    assert "New here?" in late_html
    assert "of 5 of" not in late_text + late_html
    assert "New here?" not in early_text + early_html


def test_readers_with_part_1_never_see_the_lead_link() -> None:
    """Every part, as a reader who started at part 1 gets it (after every part is out)."""
    config = load_config(Path(__file__).resolve().parent.parent)
    (series,), _ = load_series(config)
    renderer = Renderer(config, now=datetime(2027, 6, 1, tzinfo=UTC), use_cache=False)
    for article in series.articles:
        out = renderer.compile(series, article).personalise(renderer.sample())
        assert "New here?" not in out.text + out.html, article.part


def test_part_is_lower_case_wherever_the_email_says_it() -> None:
    """The series line says "· part 3 of 5"; the continue block said "Next: Part 4",
    in both parts: one spelling everywhere (the default subject too)."""
    config = load_config(Path(__file__).resolve().parent.parent)
    (series,), _ = load_series(config)
    renderer = Renderer(config, now=datetime(2027, 6, 1, tzinfo=UTC), use_cache=False)
    for article in series.articles:
        out = renderer.compile(series, article).personalise(renderer.sample())
        assert not re.search(r"\bPart \d", out.text + out.html), article.part
        if article.part < series.total:
            assert f"Next: part {article.part + 1}, " in out.text
            assert f"Next: <strong>part {article.part + 1}, " in out.html


# -- the signature --------------------------------------------------------------


@pytest.mark.parametrize("footer", [True, False])
def test_text_signature_separator_is_dash_dash_space(footer: bool) -> None:
    """RFC 3676: the separator line is "-- ", once, and what follows starts right
    after it; the text ends with one newline, with or without footer blocks."""
    config = load_config(Path(__file__).resolve().parent.parent)
    if not footer:
        config = replace(config, footer=(), postal_address="")
    (series,), _ = load_series(config)
    renderer = Renderer(config, now=MONDAY, use_cache=False)
    text = renderer.compile(series, series.articles[0]).personalise(renderer.sample()).text
    lines = text.split("\n")
    assert lines.count("-- ") == 1 and "--" not in lines
    after = lines[lines.index("-- ") + 1]
    assert after.startswith("Maya" if footer else "You're receiving this"), after
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_an_article_line_cannot_start_a_signature(example_copy: Path) -> None:
    """A body line "-- " (a code block) loses its space: only the footer's separator counts."""
    article = example_copy / "series" / "attachment" / "01-attachment-theory.md"
    article.write_text(
        article.read_text(encoding="utf-8") + "\n```\n-- \nnot a signature\n```\n",
        encoding="utf-8",
    )
    config = load_config(example_copy)
    (series,), _ = load_series(config)
    renderer = Renderer(config, now=MONDAY, use_cache=False)
    text = renderer.compile(series, series.articles[0]).personalise(renderer.sample()).text
    assert text.split("\n").count("-- ") == 1
    assert text.index("not a signature") < text.index("\n-- \n")


# -- the language ---------------------------------------------------------------


def _html_tag(html: str) -> str:
    found = re.search(r"<html\b[^>]*>", html)
    assert found is not None
    return found.group(0)


def test_language_fills_lang_and_xml_lang(example_copy: Path) -> None:
    """Default en; the workspace's language; a series' own language wins."""
    run(example_copy, "subscribers", "add", "a@example.com", "--series", "attachment")
    code, out, err = run(example_copy, "preview", "attachment/1")
    assert code == 0, out + err
    eml = next((example_copy / "build" / "preview").rglob("*.eml")).read_bytes()
    parsed = email.message_from_bytes(eml, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    tag = _html_tag(_parts(parsed)[1])
    assert ' lang="en" xml:lang="en" ' in tag and "und" not in tag

    configure(example_copy, 'language = "en-GB"')
    config = load_config(example_copy)
    (series,), _ = load_series(config)
    html = Renderer(config, now=MONDAY, use_cache=False).compile(series, series.articles[0])
    assert ' lang="en-GB" xml:lang="en-GB" ' in html.html.pieces[0]

    manifest = example_copy / "series" / "attachment" / "series.yml"
    manifest.write_text(manifest.read_text() + "language: sv\n", encoding="utf-8")
    (series,), problems = load_series(config)
    assert problems == []
    html = Renderer(config, now=MONDAY, use_cache=False).compile(series, series.articles[0])
    assert ' lang="sv" xml:lang="sv" ' in _html_tag(html.html.pieces[0])


def test_a_template_without_lang_still_gets_the_language(example_copy: Path) -> None:
    """A workspace's own email.mjml.j2 that does not say <mjml lang> (MJML then writes
    "und" on <html> and on the body's wrapper) gets the configured language in both."""
    builtin = (Path(__file__).resolve().parent.parent / "pipeline" / "templates").joinpath(
        "email.mjml.j2"
    )
    source = builtin.read_text(encoding="utf-8").replace('<mjml lang="{{ language }}">', "<mjml>")
    (example_copy / "templates" / "email.mjml.j2").write_text(source, encoding="utf-8")
    configure(example_copy, 'language = "de"')
    config = load_config(example_copy)
    (series,), _ = load_series(config)
    renderer = Renderer(config, now=MONDAY, use_cache=False)
    html = renderer.compile(series, series.articles[0]).personalise(renderer.sample()).html
    assert 'lang="und"' not in html
    assert ' lang="de" xml:lang="de" ' in _html_tag(html)
    assert re.search(r'<div [^>]*role="article" lang="de"', html)


def test_a_bad_language_is_one_line_with_its_place(example_copy: Path) -> None:
    configure(example_copy, 'language = "english"')
    code, out, err = run(example_copy, "check")
    assert code == 1
    lines = (out + err).strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, lines
    assert re.fullmatch(
        r"Error: pyproject\.toml:\d+: 'language' must be a BCP 47 language tag such as .*"
        r"got 'english'.*",
        lines[0],
    ), lines


def test_a_bad_series_language_is_reported_at_its_line(example_copy: Path) -> None:
    manifest = example_copy / "series" / "attachment" / "series.yml"
    lines = manifest.read_text(encoding="utf-8").splitlines()
    manifest.write_text("\n".join([*lines, "language: en_US"]) + "\n", encoding="utf-8")
    code, out, _ = run(example_copy, "check")
    assert code == 1
    assert (
        f"series/attachment/series.yml:{len(lines) + 1}: 'language' must be a BCP 47 "
        "language tag such as en, en-GB, de or pt-BR, got 'en_US' (write 'en-US': "
        "hyphens, not underscores)"
    ) in out.splitlines()


@pytest.mark.parametrize("tag", ["en", "en-GB", "sv", "pt-BR", "zh-Hant-TW", "de-CH-1996"])
def test_good_language_tags(tag: str) -> None:
    assert language_problem(tag) is None


@pytest.mark.parametrize(
    "tag", ["english", "en_US", "en-", "", "xx", "en GB", 'en"><script>', 1, "a" * 100]
)
def test_bad_language_tags(tag: object) -> None:
    problem = language_problem(tag)
    assert problem is not None and "\n" not in problem


@pytest.mark.parametrize(
    ("tag", "why"),
    [
        ("en-US-US", "(not a valid BCP 47 tag: a subtag is repeated or out of place)"),
        ("xx", "('xx' is not a registered language)"),
        ("und", "('und' means an undetermined language, which tells a screen reader nothing"),
        ("und-US", "('und' means an undetermined language"),
        ("zxx", "('zxx' means no linguistic content, which tells a screen reader nothing"),
        ("mul", "('mul' means several languages"),
    ],
)
def test_language_problems_say_what_is_wrong(tag: str, why: str) -> None:
    """A repeated region is not called "not a registered language"; the tags that name
    no language (und, zxx, mul) are refused, as lang="und" helps no screen reader."""
    problem = language_problem(tag)
    assert problem is not None and why in problem


# -- the inbox preview ----------------------------------------------------------


class _Text(HTMLParser):
    """A body's text in document order, as an inbox preview is taken from it."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag in ("head", "style", "title", "script"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("head", "style", "title", "script"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def test_inbox_preview_ends_with_the_preheader(example_copy: Path) -> None:
    """The first 200 characters of the body's text (what Gmail, Apple Mail and Outlook
    show, at most) are the preheader and then only padding, not the next visible text."""
    run(example_copy, "subscribers", "add", "a@example.com", "--series", "attachment")
    code, out, err = run(example_copy, "preview", "attachment/1")
    assert code == 0, out + err
    eml = next((example_copy / "build" / "preview").rglob("*.eml")).read_bytes()
    parsed = email.message_from_bytes(eml, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    reader = _Text()
    reader.feed(_parts(parsed)[1])
    text = re.sub(r"[ \t\r\n]+", " ", "".join(reader.parts)).strip()
    preview = text[:200]
    assert preview.startswith(PART_1_PREHEADER)
    rest = preview[len(PART_1_PREHEADER) :]
    assert rest and set(rest) <= set(PREHEADER_PADDING + " "), rest[:60]


@pytest.mark.parametrize("length", [1, 10, 80, 150, 199, 200, 201, 400])
def test_padding_fills_the_preview_and_no_more(length: int) -> None:
    """Preheader and padding fill PREVIEW_CHARACTERS (Apple Mail and Outlook show up
    to ~200), with at most one character more; a preheader that long needs none."""
    padding = preheader_padding("p" * length)
    assert set(padding) <= set(PREHEADER_PADDING)
    assert PREVIEW_CHARACTERS <= length + len(padding) <= max(length, PREVIEW_CHARACTERS + 1)


def test_padding_costs_what_the_preview_needs(example_copy: Path) -> None:
    """In the raw .eml (quoted-printable), part 1's 80-character preheader is followed
    by 60 pairs: 120 characters to reach 200, about 0.9 KB, not 120 pairs (1.9 KB)."""
    run(example_copy, "subscribers", "add", "a@example.com", "--series", "attachment")
    code, out, err = run(example_copy, "preview", "attachment/1")
    assert code == 0, out + err
    raw = next((example_copy / "build" / "preview").rglob("*.eml")).read_bytes()
    unfolded = raw.replace(b"=\r\n", b"").replace(b"=\n", b"")
    assert len(PART_1_PREHEADER) == 80
    assert unfolded.count(b"=C2=A0=E2=80=8C") == 60


def test_no_padding_without_a_preheader(example_copy: Path) -> None:
    """An article with neither preheader nor summary leaves the preview to its text."""
    article = example_copy / "series" / "attachment" / "01-attachment-theory.md"
    text = article.read_text(encoding="utf-8")
    article.write_text(re.sub(r"(?m)^(preheader|summary): .*\n", "", text), encoding="utf-8")
    config = load_config(example_copy)
    (series,), _ = load_series(config)
    renderer = Renderer(config, now=MONDAY, use_cache=False)
    html = renderer.compile(series, series.articles[0]).personalise(renderer.sample()).html
    assert "\u200c" not in html


# -- tables ----------------------------------------------------------------------


def test_table_cells_wrap_at_spaces_and_break_only_long_tokens() -> None:
    html = Document(
        "| Style | Link |\n|---|---|\n| Disorganized | https://steadyground.example/a/b?c=1 |\n"
    ).html()
    assert "word-break:normal" in html.split(">", 1)[0]
    assert ">Disorganized<" in html
    assert ">https://<wbr>steadyground.<wbr>example/<wbr>a/<wbr>b?<wbr>c=<wbr>1<" in html
    # Outside tables nothing changes.
    assert "<wbr>" not in Document("https://steadyground.example/a/b?c=1").html()


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=120))
def test_breakable_keeps_the_text_and_short_words(text: str) -> None:
    out = breakable(text)
    import html as html_module

    assert html_module.unescape(out.replace("<wbr>", "")) == text
    for word in re.split(r"\s+", text):
        if len(regex.findall(r"\X", word)) <= LONG_TOKEN:
            assert "<wbr>" not in breakable(word)


@pytest.mark.parametrize(
    "word",
    [
        "Rechtsschutzversicherung",
        "Krankenversicherungsbeitrag",
        "Datenschutzgrundverordnungen",
        "Avrupalılaştırılamayanlardan",
        "user.preferences.theme",
        "attachment_style_results",
        "https://blog.example/a/b",
    ],
)
def test_words_that_fit_a_phone_get_no_break_points(word: str) -> None:
    """A word that a phone's table can hold is never given a break point (it was given
    one every 16 characters, and Chromium split "Rechtsschutzvers/icherung" at 600 px)."""
    html = Document(f"| A | B |\n|---|---|\n| {word} | `{word}` |\n").html()
    assert "<wbr>" not in html
    assert "overflow-wrap:normal" in html.split(">", 1)[0]


def _wbr_offsets(out: str) -> tuple[str, list[int]]:
    import html as html_module

    pieces = [html_module.unescape(p) for p in out.split("<wbr>")]
    offsets = [sum(len(p) for p in pieces[: i + 1]) for i in range(len(pieces) - 1)]
    return "".join(pieces), offsets


@pytest.mark.parametrize(
    "token",
    [
        "क्षत्रिय" * 12,  # Hindi conjuncts: consonant + virama + consonant is one cluster
        "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466" * 40,  # ZWJ family
        "e\u0301" * 50,  # e + combining acute
        "https://blog.example/" + "\U0001f1e9\U0001f1ea" * 30,  # flags: regional indicators
    ],
)
def test_break_points_fall_between_grapheme_clusters(token: str) -> None:
    text, offsets = _wbr_offsets(breakable(token))
    assert text == token and offsets, "a token this long gets break points"
    boundaries = set(itertools.accumulate(len(c) for c in regex.findall(r"\X", token)))
    assert set(offsets) <= boundaries


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=30, max_size=200))
def test_break_points_never_split_a_cluster(text: str) -> None:
    plain, offsets = _wbr_offsets(breakable(text))
    boundaries = set(itertools.accumulate(len(c) for c in regex.findall(r"\X", text)))
    assert plain == text
    assert set(offsets) <= boundaries


# -- series check -----------------------------------------------------------------


def test_check_warns_without_a_postal_address(example_copy: Path) -> None:
    config = example_copy / "pyproject.toml"
    text = config.read_text(encoding="utf-8")
    config.write_text(re.sub(r"(?m)^postal_address = .*\n", "", text), encoding="utf-8")
    code, out, _ = run(example_copy, "check")
    assert code == 0
    assert out.splitlines() == [
        "pyproject.toml: warning: no postal_address: the CAN-SPAM Act requires a physical "
        "postal address in commercial email, and bulk-sender guidelines expect one; set "
        "postal_address (a street address or a registered P.O. box) so every footer shows it"
    ]
    assert run(example_copy, "check", "--strict")[0] == 1


def test_strict_check_says_once_where_pages_must_be_served(example_copy: Path) -> None:
    configure(example_copy, 'unsubscribe_url = "https://lists.steadyground.example/u/{token}"')
    code, out, _ = run(example_copy, "check", "--strict")
    assert code == 0
    notes = [line for line in out.splitlines() if line.startswith("note: ")]
    assert notes == [
        "note: emails link to https://lists.steadyground.example/u/{token} (unsubscribe_url): "
        "`series serve` must answer there (its /u/<token> route); a static blog alone cannot "
        "answer them: readers would get a 404"
    ]
    assert "note:" not in run(example_copy, "check")[1]
    config = load_config(example_copy)
    assert serving_note(replace(config, unsubscribe="provider")) is None


def test_the_signup_page_is_named_only_when_signup_is_on(example_copy: Path) -> None:
    """`series serve` has /subscribe and /confirm/<token> only with [signup] enabled."""
    config = load_config(example_copy)
    assert config.signup.enabled is False
    note = serving_note(config)
    assert note is not None and "signup" not in note and "/subscribe" not in note
    on = serving_note(replace(config, signup=replace(config.signup, enabled=True)))
    assert on is not None
    assert (
        "with [signup] enabled it also serves the signup form at /subscribe and the "
        "confirmation links, https://steadyground.example/confirm/{token} (its "
        "/confirm/<token> route)" in on
    )


def test_a_path_series_serve_does_not_answer_is_said_plainly(example_copy: Path) -> None:
    """unsubscribe_url with another path: series serve answers /u/<token> only, so the
    note says a rewrite is needed, or a change of unsubscribe_url."""
    config = load_config(example_copy)
    odd = serving_note(
        replace(config, unsubscribe_url="https://news.blog.example/newsletter/leave?t={token}")
    )
    assert odd is not None
    assert (
        "but it answers these links only at /u/<token>, not at /newsletter/leave?t={token}: "
        "have the web server at https://news.blog.example rewrite /newsletter/leave?t={token} "
        "to series serve's /u/<token> (the token as the last segment), or change "
        "unsubscribe_url to https://news.blog.example/u/{token}" in odd
    )
    prefixed = serving_note(replace(config, unsubscribe_url="https://blog.example/news/u/{token}"))
    assert prefixed is not None
    assert "must pass /news/… on without /news" in prefixed


def test_the_note_names_only_routes_series_serve_has() -> None:
    """The routes the note names are the ones pipeline/web.py and signup_web.py serve."""
    from pipeline.signup_web import PATHS
    from pipeline.web import ROUTES

    rules = {rule.rule for rule in ROUTES.iter_rules()}
    assert {"/u/<token>", "/unsubscribe/<token>"} <= rules
    assert {"/subscribe", "/confirm/"} <= set(PATHS)
