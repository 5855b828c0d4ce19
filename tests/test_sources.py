"""Reading source files: UTF-8 with or without a BOM, refusals at their line."""

from __future__ import annotations

import pytest

from pipeline.sources import ReadError, decode, quote, unquote_hint


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"\xef\xbb\xbftitle: x\n", "title: x\n"),
        (b"a\r\nb\rc\n", "a\nb\nc\n"),
        ("Café\n".encode(), "Café\n"),
    ],
)
def test_decode_accepts_utf8(data: bytes, text: str) -> None:
    """UTF-8 decodes with its BOM dropped (RFC 3629 §6) and line ends made LF."""
    assert decode(data, "f") == text


@pytest.mark.parametrize(
    ("data", "line", "start"),
    [
        ("ok\nCafé\n".encode("cp1252"), 2, "not UTF-8 text: byte 0xE9 in column 4 "),
        ("title\n".encode("utf-16"), 1, "the file is UTF-16 text, not UTF-8"),
        ("title\n".encode("utf-32"), 1, "the file is UTF-32 text, not UTF-8"),
        ("a\nb\n".encode("utf-16-le"), 1, "not UTF-8 text: the file has NUL bytes"),
    ],
)
def test_decode_refuses_other_encodings_at_their_line(data: bytes, line: int, start: str) -> None:
    """UTF-16/32 (by BOM or NUL bytes) and Windows-1252 bytes are one problem each."""
    with pytest.raises(ReadError) as caught:
        decode(data, "f")
    assert caught.value.problem.line == line
    assert caught.value.problem.message.startswith(start)


def test_quote_cuts_long_values() -> None:
    """Error lines quote at most about 40 characters of a value."""
    assert quote("x" * 1000) == repr("x" * 40) + "…"
    assert quote(["a"] * 1000) == repr(["a"] * 1000)[:40] + "…"
    assert quote("short") == "'short'"


@pytest.mark.parametrize(
    ("value", "kind", "hint"),
    [
        ("2", int, " (remove the quotes: part: 2)"),
        ("true", bool, " (remove the quotes: part: true)"),
        ("2.5", float, " (remove the quotes: part: 2.5)"),
        ("2.5", int, ""),
        ("two", int, ""),
        (2, int, ""),
    ],
)
def test_unquote_hint(value: object, kind: type, hint: str) -> None:
    """Only text that would be the wanted type without quotes gets the hint."""
    assert unquote_hint(value, kind, "part") == hint
