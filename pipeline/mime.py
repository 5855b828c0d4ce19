"""The body of a message as raw MIME: a text part and an HTML part, each in the
transfer encoding that keeps it smallest while it stays correct on the wire.

Written with bytes operations (``binascii``, ``base64``), not the email package: a
send writes one message per reader, and the email package's object model costs
milliseconds per message where this costs tens of microseconds. The rules:

- Line ends are LF, as in the header block series writes for ``.eml`` files (CRLF and
  bare CR in a part's text become LF first; whatever hands the file to SMTP makes
  every line end CRLF, RFC 5322 §2.1).
- ``7bit`` for ASCII text whose lines fit; ``quoted-printable`` for mostly ASCII text
  (RFC 2045 §6.7): a few non-ASCII letters cost three octets each; ``8bit`` for mostly
  non-ASCII text (Cyrillic, Greek, CJK), where quoted-printable would triple every
  letter's octets and base64 adds a third to all of them (RFC 6152 8BITMIME, which
  every mailbox provider's server announces); ``base64`` for such text with a line
  longer than 8bit allows, or with a NUL.
- No line of any part is longer than 998 octets (RFC 5322 §2.1.1; RFC 2045 §2.7-2.8);
  quoted-printable and base64 lines are at most 76 characters (RFC 2045 §6.7-6.8).
- The multipart boundary starts with ``=_``, which neither quoted-printable nor
  base64 output can contain (RFC 2045 §6.7 note); for 7bit and 8bit parts it is
  checked against the text (RFC 2046 §5.1.1).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

SEVEN_BIT = "7bit"
EIGHT_BIT = "8bit"
QUOTED_PRINTABLE = "quoted-printable"
BASE64 = "base64"
MAX_LINE = 998  # octets per line, without the line end (RFC 5322 §2.1.1)
LF = b"\n"
QP_LINE = 76  # characters in a quoted-printable line, soft break included
_ASCII = bytes(range(128))


def part_bytes(text: str) -> bytes:
    """``text`` as the UTF-8 octets of a part: LF line ends, ending with one."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    data = text.encode("utf-8")
    return data if data.endswith(LF) else data + LF


def transfer_encoding(data: bytes) -> str:
    """The Content-Transfer-Encoding for a part of ``data`` (from ``part_bytes``) that
    keeps its encoded size smallest (see the module's rules): ``7bit``, ``8bit``,
    ``quoted-printable`` or ``base64``."""
    fits = b"\0" not in data and max(map(len, data.split(LF))) <= MAX_LINE
    if fits and data.isascii():
        return SEVEN_BIT
    size = len(data)
    escaped = len(data.translate(None, _ASCII)) + data.count(b"=")
    # Quoted-printable writes each escaped octet as three characters (two more), base64
    # every three octets as four (a third more): quoted-printable is the smaller while
    # at most one octet in six is escaped. Soft line breaks cost each about the same.
    if 6 * escaped <= size:
        return QUOTED_PRINTABLE
    return EIGHT_BIT if fits else BASE64


def encode(data: bytes, encoding: str) -> bytes:
    """``data`` (from ``part_bytes``) in ``encoding``, LF line ends, ending with one."""
    if encoding == QUOTED_PRINTABLE:
        encoded = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
        encoded = LF.join(_fold_qp(line) for line in encoded.split(LF))
        return encoded if encoded.endswith(LF) else encoded + LF
    if encoding == BASE64:
        return base64.encodebytes(data)
    return data


def _fold_qp(line: bytes) -> bytes:
    """``line`` with soft line breaks so that no piece passes 76 characters (RFC 2045
    section 6.7, rule 5). binascii breaks long lines itself but does not count the
    ``=20`` it writes for a space at a line's end, which can make 77 or 78; an escape
    (``=XX``) is never cut in two."""
    pieces = []
    while len(line) > QP_LINE:
        cut = QP_LINE - 1  # room for the "=" of the soft break
        escape = line.rfind(b"=", cut - 2, cut)
        if escape != -1:
            cut = escape
        pieces.append(line[:cut] + b"=")
        line = line[cut:]
    pieces.append(line)
    return LF.join(pieces)


def text_part(text: str, subtype: str) -> tuple[bytes, bytes]:
    """One ``text/SUBTYPE; charset=utf-8`` part: (its header lines, its encoded body)."""
    data = part_bytes(text)
    encoding = transfer_encoding(data)
    return _part_head(subtype, encoding), encode(data, encoding)


def _part_head(subtype: str, encoding: str) -> bytes:
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\nContent-Transfer-Encoding: {encoding}\n'
    ).encode("ascii")


def encoded_size(text: str) -> tuple[int, str]:
    """(octets, encoding) of ``text``'s body as series writes it in a message: what a
    mailbox receives of that part, line ends counted as CRLF (as SMTP carries them)."""
    data = part_bytes(text)
    encoding = transfer_encoding(data)
    body = encode(data, encoding)
    return len(body) + body.count(LF), encoding


def quoted_printable_size(text: str) -> int:
    """Octets of ``text``'s body in quoted-printable, line ends counted as CRLF: what a
    provider that always writes text parts quoted-printable sends (SendGrid's HTTP API,
    where the encoding is a reserved header that cannot be set)."""
    body = encode(part_bytes(text), QUOTED_PRINTABLE)
    return len(body) + body.count(LF)


def alternative(text: str, html: str) -> bytes:
    """The MIME-Version and Content-Type fields, a blank line and the
    multipart/alternative body: the text part first, the HTML part preferred (RFC 2046
    §5.1.4), LF line ends."""
    return alternative_of([text_part(text, "plain"), text_part(html, "html")])


def alternative_of(parts: list[tuple[bytes, bytes]]) -> bytes:
    """``alternative`` from parts already encoded: (header lines, body) each."""
    boundary = _boundary(parts)
    delimiter = b"--" + boundary
    out = [
        b'MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary="',
        boundary,
        b'"\n\n',
    ]
    # The line end before a delimiter is the delimiter's (RFC 2046 §5.1.1): each body
    # keeps its own last line end, as the part's text has it.
    for index, (head, body) in enumerate(parts):
        out += [LF if index else b"", delimiter, LF, head, LF, body]
    out += [LF, delimiter, b"--\n"]
    return b"".join(out)


def _boundary(parts: list[tuple[bytes, bytes]]) -> bytes:
    """A boundary no line of the parts begins with (RFC 2046 §5.1.1)."""
    while True:
        boundary = b"=_" + secrets.token_hex(16).encode("ascii")
        if not any(boundary in body for _, body in parts):
            return boundary


class Filled(Protocol):
    """A rendered part split around its personal fields (``render._Filled``): the text
    is ``pieces[0] + value(fields[0]) + pieces[1] + …``."""

    @property
    def pieces(self) -> tuple[str, ...]: ...
    @property
    def fields(self) -> tuple[str, ...]: ...


def filled_part(
    filled: Filled, values: Mapping[str, str], subtype: str, expected: str
) -> tuple[bytes, bytes] | None:
    """``text_part(expected, subtype)`` made from the part's fixed pieces, whose lines are
    encoded once per part and kept, and this reader's ``values``: only the few lines
    holding a personal field are encoded per message. None when ``expected`` is not
    the pieces filled with ``values`` (the caller then encodes ``expected`` whole)."""
    if any(f not in values for f in filled.fields):
        return None
    if sum(map(len, filled.pieces)) + sum(len(values[f]) for f in filled.fields) != len(expected):
        return None
    layout = _layout(filled)
    if layout is None or any("\r" in values[f] for f in filled.fields):
        return None
    chunks: list[bytes] = []
    stats: list[_Stats] = []
    for segment in layout.segments:
        if isinstance(segment, _Static):
            chunks.append(segment.data)
            stats.append(segment.stats)
        else:
            data = "".join(p if isinstance(p, str) else values[p[0]] for p in segment).encode()
            if not data.endswith(LF) and (data or not chunks):
                data += LF  # only the last segment can end without one
            chunks.append(data)
            stats.append(_Stats.of(data))
    encoding = _Stats.total(stats).encoding()
    if encoding == QUOTED_PRINTABLE:
        body = b"".join(
            segment.quoted_printable() if isinstance(segment, _Static) else _qp_lines(data)
            for segment, data in zip(layout.segments, chunks, strict=True)
        )
    else:
        body = encode(b"".join(chunks), encoding)
    return _part_head(subtype, encoding), body


def _qp_lines(data: bytes) -> bytes:
    """Quoted-printable of a reader's lines; nothing for none (a field that ends the
    part empty), where ``encode`` would give the one line end a whole part ends with."""
    return encode(data, QUOTED_PRINTABLE) if data else b""


@dataclass(frozen=True)
class _Stats:
    """What ``transfer_encoding`` looks at, for complete lines of a part."""

    size: int
    escaped: int
    longest: int
    ascii: bool
    nul: bool

    @classmethod
    def of(cls, data: bytes) -> _Stats:
        return cls(
            len(data),
            len(data.translate(None, _ASCII)) + data.count(b"="),
            max(map(len, data.split(LF))),
            data.isascii(),
            b"\0" in data,
        )

    @classmethod
    def total(cls, parts: Sequence[_Stats]) -> _Stats:
        return cls(
            sum(p.size for p in parts),
            sum(p.escaped for p in parts),
            max(p.longest for p in parts),
            all(p.ascii for p in parts),
            any(p.nul for p in parts),
        )

    def encoding(self) -> str:
        """``transfer_encoding`` of the whole part (the same rules, from its lines)."""
        fits = not self.nul and self.longest <= MAX_LINE
        if fits and self.ascii:
            return SEVEN_BIT
        if 6 * self.escaped <= self.size:
            return QUOTED_PRINTABLE
        return EIGHT_BIT if fits else BASE64


class _Static:
    """Complete lines of a part that are the same for every reader."""

    def __init__(self, text: str) -> None:
        self.data = text.encode("utf-8")
        self.stats = _Stats.of(self.data)
        self._qp: bytes | None = None

    def quoted_printable(self) -> bytes:
        # Quoted-printable encodes each line on its own (RFC 2045 §6.7), so complete
        # lines encoded apart are the same octets as encoded with the rest.
        if self._qp is None:
            self._qp = encode(self.data, QUOTED_PRINTABLE)
        return self._qp


@dataclass(frozen=True)
class _Layout:
    """A part cut into complete lines: fixed ones (``_Static``) and lines holding
    personal fields (text, and a field's name as a 1-tuple)."""

    segments: tuple[_Static | tuple[str | tuple[str], ...], ...]


_LAYOUTS: dict[int, tuple[Filled, _Layout | None]] = {}


def _layout(filled: Filled) -> _Layout | None:
    """The layout of ``filled``, made once per part (None when it holds a CR)."""
    kept = _LAYOUTS.get(id(filled))
    if kept is not None and kept[0] is filled:
        return kept[1]
    if len(_LAYOUTS) >= 512:  # a run has a few parts and reader variants
        _LAYOUTS.clear()
    layout = None if any("\r" in p for p in filled.pieces) else _cut(filled)
    _LAYOUTS[id(filled)] = (filled, layout)  # the part is kept: its id stays its own
    return layout


def _cut(filled: Filled) -> _Layout:
    segments: list[_Static | tuple[str | tuple[str], ...]] = []
    line: list[str | tuple[str]] = []  # the line being built, up to the next line end in a piece
    last = len(filled.pieces) - 1
    for index, piece in enumerate(filled.pieces):
        start = 0
        if index:  # this piece continues the line of the field before it
            end = piece.find("\n")
            if end < 0:
                line += [piece, (filled.fields[index],)] if index < last else [piece]
                continue
            line.append(piece[: end + 1])
            segments.append(tuple(line))
            line = []
            start = end + 1
        stop = len(piece) if index == last else piece.rfind("\n") + 1
        if stop > start:
            segments.append(_Static(piece[start:stop]))
        if index < last:
            line = [piece[max(stop, start) :], (filled.fields[index],)]
    if line:
        segments.append(tuple(line))
    if not segments:
        segments.append(_Static(""))
    if isinstance(segments[-1], _Static) and not segments[-1].data.endswith(LF):
        tail = segments.pop()
        assert isinstance(tail, _Static)
        segments.append(_Static(tail.data.decode("utf-8") + "\n"))
    return _Layout(tuple(segments))
