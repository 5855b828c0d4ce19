"""YAML as series reads it: the YAML 1.2 core schema, no aliases, each key once.

PyYAML implements YAML 1.1, whose implicit types change what a writer typed:
``5:30`` is the sexagesimal number 330, ``0123`` the octal number 83, ``yes`` and
``no`` are booleans. :class:`Loader` resolves plain scalars by the YAML 1.2 core
schema instead (YAML 1.2.2 §10.3.2: ``true``/``false``, decimal, ``0o`` and ``0x``
integers, floats, ``null``), plus the ``YYYY-MM-DD[ HH:MM…]`` timestamps front
matter has always used for dates. Keys that hold text can be read as the text of
the line, whatever it looks like (:func:`load_mapping`'s ``text_keys``).

What a small file must not do to a reader is refused: aliases (a 1 KB "billion
laughs" file expands to gigabytes), explicit tags other than ``!!str`` (each picks a
constructor with errors of its own), collections nested more than
:data:`MAX_DEPTH` deep (each level is a recursion in the composer), and a key that
appears twice (YAML 1.2 §3.2.1.1 requires unique keys; PyYAML keeps the last
silently).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.nodes import MappingNode, Node, ScalarNode

from .sources import QUOTE_CHARS, cut

MAX_DEPTH = 32

STR_TAG = "tag:yaml.org,2002:str"
NULL_TAG = "tag:yaml.org,2002:null"
TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"

# YAML 1.2.2 §10.3.2, tag resolution of the core schema.
_CORE = (
    ("tag:yaml.org,2002:bool", r"true|True|TRUE|false|False|FALSE", "tTfF"),
    ("tag:yaml.org,2002:int", r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", "-+0123456789"),
    (
        "tag:yaml.org,2002:float",
        r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)",
        "-+.0123456789",
    ),
    (NULL_TAG, r"~|null|Null|NULL|", ["~", "n", "N", ""]),
)


class YamlProblem(Exception):
    """Why a YAML text was refused; ``line`` is 0-based in that text, or None."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass(frozen=True)
class Loaded:
    """A YAML mapping, the 0-based line of each of its keys, and warnings by line."""

    data: dict[Any, Any]
    lines: dict[str, int]
    warnings: list[tuple[int, str]] = field(default_factory=list)


class Loader(yaml.SafeLoader):
    """PyYAML's safe loader with the YAML 1.2 core schema and no aliases."""

    # Our own table, filled below; PyYAML's resolvers are YAML 1.1's.
    yaml_implicit_resolvers: dict[Any, list[tuple[str, re.Pattern[str]]]] = {}  # noqa: RUF012

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self._next_event()
            raise ComposerError(
                None,
                None,
                f"YAML aliases are not allowed (*{event.anchor}): write the value out in full",
                event.start_mark,
            )
        tag = getattr(self._next_event(), "tag", None)
        if tag not in (None, "!", STR_TAG):
            # An explicit tag picks a constructor, and their errors (!!float x) are not
            # YAML errors; front matter and series.yml need none of them.
            raise ComposerError(
                None,
                None,
                f"YAML tags are not allowed ({cut(tag.replace('tag:yaml.org,2002:', '!!'))}): "
                "write the value without it",
                self._next_event().start_mark,
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ComposerError(
                    None,
                    None,
                    f"nested more than {MAX_DEPTH} levels deep",
                    self._next_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _next_event(self) -> Any:
        return self.peek_event()  # type: ignore[no-untyped-call]

    def compose_mapping_node(self, anchor: dict[Any, Node]) -> MappingNode:
        node = super().compose_mapping_node(anchor)
        seen: dict[str, int] = {}
        for key, _ in node.value:
            if not isinstance(key, ScalarNode):
                continue
            if key.value in seen:
                raise ComposerError(
                    None,
                    None,
                    f"the key '{cut(key.value)}' appears twice (first on line "
                    f"{seen[key.value] + 1}); keep one",
                    key.start_mark,
                )
            seen[key.value] = key.start_mark.line
        return node

    def construct_core_int(self, node: ScalarNode) -> int | str:
        text = self.construct_scalar(node)
        digits = text.lstrip("+-")
        sign = -1 if text.startswith("-") else 1
        try:
            if digits.startswith("0o"):
                return sign * int(digits[2:], 8)
            if digits.startswith("0x"):
                return sign * int(digits[2:], 16)
            return sign * int(digits, 10)
        except ValueError:
            # Longer than Python converts (4,300 digits): the key's check reports the text.
            return text

    def construct_lenient_timestamp(self, node: ScalarNode) -> Any:
        try:
            return self.construct_yaml_timestamp(node)
        except ValueError:
            # Shaped like a date but not one (2026-02-30): keep the text, so the key's
            # check says what is wrong, as it does for the same value in quotes.
            return self.construct_scalar(node)


for _tag, _pattern, _first in _CORE:
    Loader.add_implicit_resolver(_tag, re.compile(rf"^(?:{_pattern})$"), list(_first))
for _first_char, _resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items():
    for _tag, _regexp in _resolvers:
        if _tag == TIMESTAMP_TAG:
            Loader.add_implicit_resolver(_tag, _regexp, [_first_char])
Loader.add_constructor("tag:yaml.org,2002:int", Loader.construct_core_int)
Loader.add_constructor(TIMESTAMP_TAG, Loader.construct_lenient_timestamp)


def load_mapping(text: str, *, text_keys: Collection[str] = ()) -> Loaded:
    """Parse ``text`` as one YAML mapping (front matter, ``series.yml``).

    ``text_keys`` name keys whose plain scalar value is taken as the text typed
    (``title: 5:30`` stays "5:30", ``slug: 0123`` stays "0123"); ``a.b`` names key
    ``b`` of the mapping under ``a``. A null value stays None. Empty text is an empty
    mapping. Raises YamlProblem for text that is not YAML, not a mapping, or refused
    (see the module's docstring); warns where a text value ends at a ``#`` comment.
    """
    _refuse_unicode_line_breaks(text)
    loader = None
    try:
        # The reader checks every character as it is built, so build it in here.
        loader = Loader(text)
        node = loader.get_single_node()
        if node is None:
            return Loaded({}, {})
        if not isinstance(node, MappingNode):
            raise YamlProblem(0, "expected 'key: value' lines")
        warnings: list[tuple[int, str]] = []
        _read_as_text(node, set(text_keys), "", text.splitlines(), warnings)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        raise _problem(exc, text) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position)
        raise YamlProblem(
            line, f"malformed YAML: character U+{exc.character:04X} is not allowed in YAML"
        ) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(None, f"malformed YAML: {str(exc).splitlines()[0]}") from None
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, dict):
        raise YamlProblem(0, "expected 'key: value' lines")
    lines = {str(key.value): key.start_mark.line for key, _ in node.value}
    return Loaded(data, lines, warnings)


# Line breaks to PyYAML besides \n and \r (YAML 1.1 §5.4): NEL, LINE SEPARATOR and
# PARAGRAPH SEPARATOR. Editors show none of them as a new line, so the YAML error PyYAML
# gives (at a line number counted with them) points nowhere a writer can see.
_UNICODE_LINE_BREAK = re.compile("[\x85\u2028\u2029]")
_LINE_KEY = re.compile(r"\s*(?:-\s+)?(?P<key>[A-Za-z_][\w-]*)\s*:")


def _refuse_unicode_line_breaks(text: str) -> None:
    """Refuse U+0085, U+2028 and U+2029 at their line, counted as editors count lines."""
    found = _UNICODE_LINE_BREAK.search(text)
    if found is None:
        return
    line = text.count("\n", 0, found.start())
    char = f"a line break (U+{ord(found.group()):04X})"
    start = text.rfind("\n", 0, found.start()) + 1
    key = _LINE_KEY.match(text, start, found.start())
    if key is not None:
        raise YamlProblem(line, f"'{key.group('key')}' must be one line: it contains {char}")
    raise YamlProblem(line, f"contains {char}, which YAML reads as a new line; remove it")


def _read_as_text(
    node: MappingNode, keys: set[str], prefix: str, lines: list[str], warnings: list[Any]
) -> None:
    for key, value in node.value:
        if not isinstance(key, ScalarNode):
            continue
        name = f"{prefix}{key.value}"
        if isinstance(value, MappingNode):
            _read_as_text(value, keys, f"{name}.", lines, warnings)
        elif name in keys and isinstance(value, ScalarNode) and value.style is None:
            if value.tag != NULL_TAG:
                value.tag = STR_TAG
            end = value.end_mark
            rest = lines[end.line][end.column :] if end.line < len(lines) else ""
            if end.line == value.start_mark.line and rest.lstrip().startswith("#"):
                warnings.append(
                    (
                        value.start_mark.line,
                        f"'{name}' ends before '{cut(rest.strip(), 20)}': YAML reads ' #' "
                        "as the start of a comment; put the value in quotes to keep it",
                    )
                )


def _problem(exc: yaml.MarkedYAMLError, text: str) -> YamlProblem:
    mark = exc.problem_mark
    if exc.context_mark and (mark is None or mark.index >= len(text.rstrip())):
        # "got <stream end>" points past the last line; the opening bracket is the news.
        mark = exc.context_mark
    if isinstance(exc, ComposerError) and exc.context is None:
        # Our own refusals (aliases, depth, duplicate keys) read as they are.
        return YamlProblem(mark.line if mark else None, str(exc.problem))
    detail = f"{exc.problem} ({exc.context})" if exc.context else str(exc.problem or exc)
    if mark is None:
        return YamlProblem(None, f"malformed YAML: {detail}")
    source_lines = text.splitlines()
    hint = _quote_hint(source_lines[mark.line]) if mark.line < len(source_lines) else ""
    return YamlProblem(mark.line, f"malformed YAML: {detail}{hint}")


_KEY_VALUE = re.compile(r"\s*(?P<key>[A-Za-z_][\w-]*):[ \t]+(?P<value>\S.*?)\s*")
# What YAML reads as syntax, not text, at the start of a plain value (YAML 1.2.2 §5.3).
_INDICATORS = "@`*&!%|>\"'"


def _quote_hint(line: str) -> str:
    """The hint ``; put the value in quotes: title: "…"`` for a ``key: value`` line whose
    value YAML reads as syntax: one with ': ' in it, or one starting with an indicator."""
    found = _KEY_VALUE.fullmatch(line)
    if not found:
        return ""
    key, value = found.group("key"), found.group("value")
    if ": " not in value and value[0] not in _INDICATORS:
        return ""
    if len(value) > QUOTE_CHARS:
        return f"; put the value of '{key}' in quotes"
    if '"' in value:
        quoted = "'" + value.replace("'", "''") + "'"
    else:
        quoted = '"' + value.replace("\\", "\\\\") + '"'
    return f"; put the value in quotes: {key}: {quoted}"
