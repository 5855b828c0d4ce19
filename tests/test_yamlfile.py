"""YAML as series reads it: the YAML 1.2 core schema plus dates, refusals at their line."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import pytest

from pipeline.yamlfile import YamlProblem, load_mapping

CORE_SCHEMA = [
    ("true", True),
    ("False", False),
    ("yes", "yes"),  # YAML 1.1's booleans are text in 1.2
    ("off", "off"),
    ("42", 42),
    ("-7", -7),
    ("0123", 123),  # decimal, not YAML 1.1's octal 83
    ("0o17", 15),
    ("0x1F", 31),
    ("1_000", "1_000"),
    ("3.10", 3.1),
    ("1e3", 1000.0),
    (".inf", float("inf")),
    ("5:30", "5:30"),  # not YAML 1.1's sexagesimal 330
    ("~", None),
    ("null", None),
    ("", None),
    ("2026-01-05", date(2026, 1, 5)),
    ("2026-01-05 09:30:00", datetime(2026, 1, 5, 9, 30)),
    ("2026-01-05 09:30", "2026-01-05 09:30"),  # no seconds: text, read by the key's check
    ("2026-02-30", "2026-02-30"),  # shaped like a date, kept as text for the key's check
    ("1" * 5000, "1" * 5000),  # longer than Python converts to an int
]


@pytest.mark.parametrize(("written", "value"), CORE_SCHEMA)
def test_plain_scalars_follow_the_core_schema(written: str, value: Any) -> None:
    """A plain scalar resolves as YAML 1.2.2 §10.3.2 says, plus dates."""
    assert load_mapping(f"key: {written}\n").data == {"key": value}


def test_text_keys_keep_the_text_typed() -> None:
    """Text keys read a plain scalar as written, also under a mapping (from.name); null
    stays None, and other keys keep their types."""
    loaded = load_mapping(
        "title: 5:30\nslug: 0123\nsummary: 3.10\npart: 2\nurl:\nfrom:\n  name: 1984\n",
        text_keys=("title", "slug", "summary", "url", "from.name"),
    )
    assert loaded.data == {
        "title": "5:30",
        "slug": "0123",
        "summary": "3.10",
        "part": 2,
        "url": None,
        "from": {"name": "1984"},
    }
    assert loaded.lines == {"title": 0, "slug": 1, "summary": 2, "part": 3, "url": 4, "from": 5}


REFUSED = [
    ("a: &x [1]\nb: *x\n", 1, "YAML aliases are not allowed (*x): write the value out in full"),
    ("a: !!python/object:os.system x\n", 0, "YAML tags are not allowed "),
    ("a: 1\nb: 2\na: 3\n", 2, "the key 'a' appears twice (first on line 1); keep one"),
    ("a: " + "[" * 40 + "]" * 40 + "\n", 0, "nested more than 32 levels deep"),
    ("- a\n- b\n", 0, "expected 'key: value' lines"),
    ("a: \x07\n", 0, "malformed YAML: character U+0007 is not allowed in YAML"),
    (
        "title: *Really* good\n",
        0,
        "malformed YAML: expected alphabetic or numeric character, but found '*' "
        '(while scanning an alias); put the value in quotes: title: "*Really* good"',
    ),
    (
        'title: "Quoted" and more\n',
        0,
        "malformed YAML: expected <block end>, but found '<scalar>' (while parsing a block "
        "mapping); put the value in quotes: title: '\"Quoted\" and more'",
    ),
]


@pytest.mark.parametrize(("text", "line", "message"), REFUSED)
def test_refused_at_its_line(text: str, line: int, message: str) -> None:
    """What the loader refuses is a YamlProblem at the 0-based line of the cause."""
    with pytest.raises(YamlProblem) as caught:
        load_mapping(text)
    assert caught.value.line == line
    assert caught.value.message.startswith(message)
