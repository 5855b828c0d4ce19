"""Reading the files editors bring: bytes → text, TOML, and short quotes of bad values.

Every file series reads (articles, ``series.yml``, ``series.toml``, templates and
footer blocks) goes through :func:`read_text`, so each one accepts the same input
and refuses it with the same words: UTF-8 (RFC 3629), with or without a byte-order
mark, at most :data:`MAX_FILE_BYTES`. Whatever a parser raises on bad input becomes
a :class:`ReadError` carrying one ``path:line`` problem, here at the boundary.
"""

from __future__ import annotations

import codecs
import re
import tomllib
from pathlib import Path
from typing import Any

from .errors import Problem, SeriesError

# Far above any real article (a long one is 50 KB of Markdown, and Gmail clips an
# email whose HTML passes 102 KB), far below what takes minutes to parse.
MAX_FILE_BYTES = 1_000_000
# Error lines quote at most this many characters of a bad value.
QUOTE_CHARS = 40

_UTF8_BOM = codecs.BOM_UTF8
_OTHER_BOMS = (
    # UTF-32 first: its little-endian mark starts with UTF-16's.
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


class ReadError(SeriesError):
    """A file cannot be read as series' input; ``problem`` says where and why."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def read_text(path: Path, shown: str, *, what: str = "a file", limit: int = MAX_FILE_BYTES) -> str:
    """The text of ``path``, refused before parsing when it cannot be the input it should.

    ``shown`` is the path as messages print it; ``what`` names the kind of file in the
    size message ("an article"). Raises ReadError when the file is larger than
    ``limit`` bytes or is not UTF-8 text (see :func:`decode`).
    """
    try:
        size = path.stat().st_size
        if size > limit:
            raise ReadError(
                Problem(
                    shown,
                    None,
                    f"the file is {_size(size)}; {what} may be at most {_size(limit)}: "
                    "split it, or check that it is the file you meant",
                )
            )
        data = path.read_bytes()
    except OSError as exc:
        raise ReadError(Problem(shown, None, f"cannot read the file: {exc.strerror}")) from None
    return decode(data, shown)


def decode(data: bytes, shown: str) -> str:
    """UTF-8 bytes → text, without the byte-order mark a Windows editor may put first.

    RFC 3629 §6 allows the UTF-8 signature (EF BB BF) and says to drop it. Line ends
    become "\n", as Python's universal newlines make them: CRLF from Windows, and a
    lone CR from classic Mac OS, where the front matter's '---' would not be a line.
    Raises ReadError for a UTF-16 or UTF-32 file (recognised by its mark or by NUL
    bytes) and for bytes that are not UTF-8 (a Windows-1252 or Latin-1 file), at the
    line of the first such byte.
    """
    for mark, name in _OTHER_BOMS:
        if data.startswith(mark):
            raise ReadError(
                Problem(shown, 1, f"the file is {name} text, not UTF-8; save it as UTF-8 {_HOW}")
            )
    data = data.removeprefix(_UTF8_BOM)
    nul = data.find(b"\0")
    if nul >= 0:
        raise ReadError(
            Problem(
                shown,
                _line_of(data, nul),
                f"not UTF-8 text: the file has NUL bytes (a UTF-16 file?); save it as UTF-8 {_HOW}",
            )
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        column = len(data[line_start : exc.start].decode("utf-8", "replace")) + 1
        raise ReadError(
            Problem(
                shown,
                _line_of(data, exc.start),
                f"not UTF-8 text: byte 0x{data[exc.start]:02X} in column {column} (a "
                f"Windows-1252 or Latin-1 file?); save it as UTF-8 {_HOW}",
            )
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


_HOW = "(your editor's Save As or Encoding menu)"


def read_toml(path: Path, shown: str) -> tuple[dict[str, Any], str]:
    """A TOML file (TOML 1.0, via tomllib) and its text, for finding a key's line.

    Raises ReadError for what :func:`read_text` refuses, for invalid TOML (at the line
    tomllib names) and for arrays or tables nested so deep that parsing them would
    exhaust the stack.
    """
    text = read_text(path, shown, what="a configuration file")
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"line (\d+)", str(exc))
        raise ReadError(
            Problem(shown, int(found.group(1)) if found else None, f"invalid TOML: {exc}")
        ) from None
    except RecursionError:
        raise ReadError(
            Problem(shown, None, "invalid TOML: arrays or tables nested too deeply")
        ) from None


def encodable(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8: False when it holds a lone surrogate,
    which is how Python keeps a byte that is not UTF-8 (a command-line argument, a file
    name, a JSON ``\\ud800`` escape) and which no database text can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)`` for an error line, cut to about ``limit`` characters: a bad value
    can be a whole file long, and an error must stay one readable line."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + "…"
    return cut(repr(value), limit)


def cut(text: str, limit: int = QUOTE_CHARS) -> str:
    """``text``, or its first ``limit`` characters and "…"."""
    return text if len(text) <= limit else text[:limit] + "…"


def unquote_hint(value: object, kind: type, key: str, assign: str = ": ") -> str:
    """The hint ``" (remove the quotes: part: 2)"`` when ``value`` is text that would be
    a ``kind`` (int, float or bool) without its quotes; otherwise "". ``assign`` is how the file
    format writes a key and its value: ": " in YAML, " = " in TOML."""
    if not isinstance(value, str):
        return ""
    text = value.strip()
    number = r"[+-]?\d+" if kind is int else r"[+-]?(\d+\.?\d*|\.\d+)"
    if (kind is bool and text in ("true", "false")) or (
        kind in (int, float) and re.fullmatch(number, text)
    ):
        return f" (remove the quotes: {key}{assign}{text})"
    return ""


def _line_of(data: bytes, index: int) -> int:
    return data.count(b"\n", 0, index) + 1


def _size(count: int) -> str:
    return f"{count:,} bytes" if count < 10_000_000 else f"{count / 1_000_000:.0f} MB"
