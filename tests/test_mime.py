"""pipeline/mime.py: the raw bytes of a message's text and HTML parts, whatever they hold."""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.mime import alternative, alternative_of, filled_part, text_part

# Characters that make encodings differ: line ends of every kind, NUL, '=', spaces
# and tabs before a line end, a lone '.', letters of two and three octets.
TRICKY = st.sampled_from(
    ["\n", "\r", "\r\n", "\0", "=", " ", "\t", ".", "a", "Z", "é", "ж", "Ж", "語", "’", "\x85"]
)
PART_TEXT = st.one_of(
    st.text(max_size=400),
    st.lists(TRICKY, max_size=400).map("".join),
    st.tuples(st.sampled_from(["a", "ж", "="]), st.integers(0, 2500)).map(lambda t: t[0] * t[1]),
)


def expected_text(text: str) -> str:
    """A part's text as a mail program gets it back: LF line ends, ending with one."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text if text.endswith("\n") else text + "\n"


def parts_of(raw: bytes) -> list[tuple[str, bytes]]:
    """(declared transfer encoding, raw body octets) of each part, read off the bytes."""
    boundary = re.search(rb'boundary="([^"]+)"', raw)
    assert boundary is not None
    chunks = raw.split(b"\n--" + boundary.group(1))
    found = []
    for chunk in chunks[1:-1]:
        head, _, body = chunk.partition(b"\n\n")
        encoding = re.search(rb"Content-Transfer-Encoding: (\S+)", head)
        assert encoding is not None
        found.append((encoding.group(1).decode(), body + b"\n"))
    assert chunks[-1] == b"--\n"
    return found


@settings(max_examples=300, deadline=None)
@given(text=PART_TEXT, html=PART_TEXT)
@example(text="Hi\r\nthere\rfriend", html="<p>\0</p>")
@example(text="." * 999, html="ж" * 600)
@example(text="--=_0", html="a \n.\nFrom x\n")
@example(text="é\n" + "x" * 74 + " \nb", html="é\n" + "x" * 75 + " \n")  # "=20" at 76
def test_any_text_gives_parts_that_parse_back_within_the_limits(text: str, html: str) -> None:
    """Whatever a part holds, every line of the body is at most 998 octets, a part is
    ASCII unless declared 8bit, quoted-printable and base64 lines are at most 76
    characters, and a mail program reads back exactly the text (LF line ends)."""
    raw = alternative(text, html)
    assert all(len(line) <= 998 for line in raw.split(b"\n"))
    assert b"\r" not in raw  # line ends as the header block has them: LF only
    for encoding, body in parts_of(raw):
        assert encoding in ("7bit", "8bit", "quoted-printable", "base64")
        if encoding != "8bit":
            assert body.isascii()
        else:
            assert b"\0" not in body
        if encoding in ("quoted-printable", "base64"):
            assert all(len(line) <= 76 for line in body.split(b"\n"))
    parsed = email.message_from_bytes(
        b"Subject: x\n" + raw, policy=email.policy.default.clone(linesep="\n")
    )
    plain, rich = parsed.iter_parts()
    assert plain.get_content_type() == "text/plain"
    assert rich.get_content_type() == "text/html"
    assert plain.get_content() == expected_text(text)
    assert rich.get_content() == expected_text(html)


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("Plain English, short lines.\n" * 50, "7bit"),
        ("A line far too long for 7bit. " * 40, "quoted-printable"),
        ("Mostly English, with a curly apostrophe: it’s here.\n" * 50, "quoted-printable"),
        ("Теория привязанности: надёжный тип.\n" * 50, "8bit"),
        ("<p>Теория привязанности</p>" * 100, "base64"),  # one line over 998 octets
        ("NUL\0 in mostly ASCII\n", "quoted-printable"),
    ],
)
def test_each_part_gets_the_encoding_that_keeps_it_smallest(text: str, encoding: str) -> None:
    """7bit when it can; quoted-printable for mostly ASCII; 8bit for mostly non-ASCII,
    base64 when a line is too long for 8bit."""
    head, _ = text_part(text, "plain")
    assert f"Content-Transfer-Encoding: {encoding}\n".encode() in head


@dataclass(frozen=True)
class Filled:
    pieces: tuple[str, ...]
    fields: tuple[str, ...]


FIELD_NAMES = ["name", "email", "unsubscribe_url"]


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(PART_TEXT, min_size=1, max_size=5),
    values=st.fixed_dictionaries(
        {f: st.lists(TRICKY, max_size=30).map("".join) for f in FIELD_NAMES}
    ),
    data=st.data(),
)
def test_a_part_filled_per_reader_is_the_same_octets_as_encoding_it_whole(
    pieces: list[str], values: dict[str, str], data: st.DataObject
) -> None:
    """Encoding a compiled part's fixed lines once and a reader's lines per message
    gives the same part, octet for octet, as encoding the reader's whole text."""
    fields = tuple(data.draw(st.sampled_from(FIELD_NAMES)) for _ in pieces[1:])
    filled = Filled(tuple(pieces), fields)
    whole = pieces[0] + "".join(values[f] + p for f, p in zip(fields, pieces[1:], strict=True))
    for _ in range(2):  # the second time from the layout kept for this part
        made = filled_part(filled, values, "html", whole)
        if "\r" in whole:  # a CR is left to the whole-text path (it makes line ends LF)
            assert made is None or made == text_part(whole, "html")
        else:
            assert made == text_part(whole, "html")
    assert filled_part(filled, values, "html", whole + "x") is None
    if fields:  # a field the reader's values lack: encoded whole by the caller
        assert filled_part(filled, {}, "html", whole) is None


def test_a_body_from_filled_parts_is_a_multipart_alternative() -> None:
    """alternative_of wraps parts encoded elsewhere in the same multipart body."""
    filled = Filled(("Hi ", ",\nwelcome.\n"), ("name",))
    part = filled_part(filled, {"name": "Åsa"}, "plain", "Hi Åsa,\nwelcome.\n")
    assert part is not None
    raw = alternative_of([part, text_part("<p>Hi</p>", "html")])
    parsed = email.message_from_bytes(b"Subject: x\n" + raw, policy=email.policy.default)
    assert [p.get_content() for p in parsed.iter_parts()] == ["Hi Åsa,\nwelcome.\n", "<p>Hi</p>\n"]


def test_a_reader_field_that_ends_the_part_empty_adds_no_line() -> None:
    """The last field empty after a line too long for 8bit (found by hypothesis): the
    part filled per reader is still the whole text's part, octet for octet."""
    filled = Filled(("a" * 999, "\n", ""), ("name", "name"))
    values = {"name": "", "email": "", "unsubscribe_url": ""}
    whole = "a" * 999 + "\n"
    assert filled_part(filled, values, "html", whole) == text_part(whole, "html")
