"""What differs between two readers' copies of one part: the personal fields.

Templates see them as ``reader.name``, ``reader.first_name``, ``reader.email`` and
``reader.unsubscribe_url``; the compiled email keeps a sentinel where each goes and
fills it in per reader (HTML-escaped in the HTML part), see pipeline/render.py.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from markupsafe import escape

from .headers import clean_name

PERSONAL_FIELDS = ("name", "first_name", "email", "unsubscribe_url")
# The attribute (a CSV column kept as an attribute) that overrides the greeting name.
FIRST_NAME_ATTRIBUTE = "first_name"
# Punctuation after a first word that is no part of it ("Ann, PhD" greets "Ann");
# a dot stays ("J. Smith" greets "J.").
_TRAILING = ",;:"
# Bidi embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069): an
# unterminated one in a name would reorder the rest of the greeting line ("Hi ,nnA").
# Names in right-to-left scripts need none of them: the bidi algorithm orders them.
_BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")


def shown_name(name: str) -> str:
    """``name`` as an email may show it: ``clean_name`` (one line, single spaces),
    without a leading byte-order mark (U+FEFF) or any bidi embedding, override or
    isolate, and ``""`` when nothing visible is left: a name of only format
    characters (Unicode category Cf: U+200B, U+FEFF, U+200E, …) and spaces."""
    if name.isascii() and name.isprintable():  # most names: nothing to take out
        return " ".join(name.split())
    name = clean_name(_BIDI_CONTROLS.sub("", name).lstrip("\ufeff"))
    return name.strip() if _visible(name) else ""


def _visible(text: str) -> bool:
    """Whether ``text`` has a character other than whitespace and format characters."""
    return any(not ch.isspace() and unicodedata.category(ch) != "Cf" for ch in text)


@dataclass(frozen=True)
class Personal:
    """One reader as an email addresses them: ``name`` (as stored, may be empty),
    ``email``, their ``unsubscribe_url``, and ``first_name`` (their ``first_name``
    attribute, if any; empty: taken from ``name``)."""

    name: str
    email: str
    unsubscribe_url: str
    first_name: str = ""


def first_word(name: str) -> str:
    """The first word of a name, as a greeting uses it: ``"Daniel Okafor"`` →
    ``"Daniel"``, ``"  Ann"`` → ``"Ann"``; ``""`` for a name of only whitespace or
    control characters. Line breaks and other control characters separate words
    (``clean_name``), so a hostile name cannot carry a line into the text part; a
    "word" of only invisible format characters (U+200B) is skipped."""
    shown = shown_name(name)
    if shown.isascii():  # every ASCII word that is left is visible
        words = shown.split()
        return (words[0].rstrip(_TRAILING) or words[0]) if words else ""
    words = [word for word in shown.split() if _visible(word)]
    if not words:
        return ""
    word = words[0].rstrip(_TRAILING)
    return word if _visible(word) else words[0]


def first_name_of(attributes: Mapping[str, Any] | None) -> str:
    """The ``first_name`` attribute of a subscriber's attributes (a JSON object), as
    text; ``""`` when it is absent or not text."""
    if not attributes:
        return ""
    value = attributes.get(FIRST_NAME_ATTRIBUTE)
    return value if isinstance(value, str) else ""


def field_values(who: Personal, default_name: str) -> dict[str, str]:
    """The raw (unescaped) value of each of ``PERSONAL_FIELDS`` for ``who``.

    ``name`` is the whole name made one line, ``first_name`` the ``first_name``
    attribute made one line, else the name's first word; a reader with neither (an
    empty name, or one of only spaces, line breaks or invisible format characters) is
    greeted with ``default_name`` (the workspace's ``default_name``, "there" unless
    set) in both. Both go through ``shown_name``: no bidi override reaches the email.
    """
    name = shown_name(who.name)
    first = shown_name(who.first_name) or first_word(name)
    return {
        "name": name or default_name,
        "first_name": first or default_name,
        "email": who.email,
        "unsubscribe_url": who.unsubscribe_url,
    }


def escape_values(raw: Mapping[str, str]) -> dict[str, str]:
    """Personal field values as the HTML part carries them (HTML-escaped, as
    markupsafe escapes: ``& < > " '``). A value with none of those characters, nearly
    every one, is kept as it is, the same object."""
    return {key: _escaped(value) for key, value in raw.items()}


def _escaped(value: str) -> str:
    if "&" in value or "<" in value or ">" in value or '"' in value or "'" in value:
        return str(escape(value))
    return value


def json_string(text: str) -> bytes:
    """``text`` as the inside of a JSON string (UTF-8, no quotes around it). Raises
    orjson.JSONEncodeError for a lone surrogate, which UTF-8 cannot carry."""
    return orjson.dumps(text)[1:-1]
