"""Markdown (CommonMark + tables) → an email-safe HTML fragment and readable plain text.

One parse feeds both outputs, so the HTML and the text part always say the same
thing; links are rewritten once (UTM) on the tokens before either is rendered.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml as escape_html
from markdown_it.renderer import RendererHTML
from markdown_it.rules_block import StateBlock
from markdown_it.token import Token
from markdown_it.tree import SyntaxTreeNode

# Inline styles, because many mail clients drop <style> blocks. They also keep
# wide content (tables, code, images) from pushing the layout past the screen.
STYLES = {
    # word-break/overflow-wrap normal: MJML puts word-break:break-word on the text cell
    # the article sits in, and a table inheriting it (or overflow-wrap:anywhere) squeezes
    # its columns until words split ("Secur/e"). Cells wrap at spaces; only tokens too
    # long for any phone get break points (<wbr>, see LONG_TOKEN).
    "table_open": "width:100%;border-collapse:collapse;margin:16px 0;font-size:15px;"
    "word-break:normal;overflow-wrap:normal;",
    "th_open": "border-bottom:2px solid #d8d2c8;padding:6px 8px;text-align:left;"
    "vertical-align:top;",
    "td_open": "border-bottom:1px solid #e8e2d8;padding:6px 8px;vertical-align:top;",
    "blockquote_open": "margin:16px 0;padding:4px 16px;border-left:4px solid #d8d2c8;color:#555;",
    "image": "max-width:100%;height:auto;",
    "fence": "white-space:pre-wrap;word-break:break-word;",
    "code_block": "white-space:pre-wrap;word-break:break-word;",
}


# markdown-it's commonmark preset stops at nesting level 20 (a list ten deep) and
# drops the rest of the document without a word. Levels: a list and its item are two,
# a quote one. Anything at MAX_NESTING or deeper is an error (Document.too_deep), and
# the parser goes two levels further, so nothing is dropped that was not reported.
MAX_NESTING = 40
TOO_DEEP = (
    "nested too deeply (20 lists or 40 quotes inside one another): flatten it, or the "
    "email would lose the rest of the article"
)
# Emphasis is paired after parsing, without markdown-it's nesting limit, so `*` * 500
# nests 500 deep; walking that overflowed Python's stack. The same limit applies inline.
TOO_DEEP_INLINE = (
    f"emphasis or links nested too deeply ({MAX_NESTING} inside one another): "
    "remove some of the * or _ marks"
)
# Anything else that overflows the stack (a case neither guard foresaw) is still one line.
TOO_DEEP_OTHER = "nested too deeply to read: simplify the Markdown"


@dataclass(frozen=True)
class Link:
    href: str
    line: int  # 0-based line in the Markdown source


# A table cell's text wraps at spaces and after hyphens only: a word that fits is never
# split. A token longer than LONG_TOKEN grapheme clusters (about what a 375 px phone's
# table can hold at 15 px: a URL, a file path, a long identifier) could never fit, so
# it gets break points (<wbr>) instead of widening its column past the screen: after
# URL punctuation, and at least every _LONG_PIECE clusters between. Break points fall
# only between grapheme clusters (UAX #29, via `regex`'s \X), never inside a Hindi
# conjunct or an emoji ZWJ sequence.
LONG_TOKEN = 34
_BREAK_AFTER = "/.?&=#_:;,@+~"
_LONG_PIECE = 16
_TOKEN = re.compile(r"\S+")


@cache
def _parser(allow_html: bool) -> MarkdownIt:
    # Building a parser compiles its rules; one per setting serves every document.
    md = MarkdownIt("commonmark", {"html": allow_html, "maxNesting": MAX_NESTING + 2})
    md.block.ruler.before("table", "nesting_guard", _nesting_guard)
    md.enable("table")
    _break_long_tokens_in_cells(md)
    return md


def _break_long_tokens_in_cells(md: MarkdownIt) -> None:
    """Make the renderer write ``<wbr>`` break points into long tokens (``LONG_TOKEN``)
    of table cells' text and inline code; the tokens themselves are not changed, so
    the text part stays as written."""
    renderer = md.renderer
    assert isinstance(renderer, RendererHTML)
    plain_text = renderer.rules["text"]
    plain_code = renderer.rules["code_inline"]

    def cell(entering: bool) -> Callable[..., str]:
        def rule(
            self: RendererHTML, tokens: list[Token], idx: int, options: Any, env: dict[str, Any]
        ) -> str:
            env["in_cell"] = entering
            return self.renderToken(tokens, idx, options, env)

        return rule

    def text(
        self: RendererHTML, tokens: list[Token], idx: int, options: Any, env: dict[str, Any]
    ) -> str:
        if not env.get("in_cell"):
            return str(plain_text(tokens, idx, options, env))
        return breakable(tokens[idx].content)

    def code(
        self: RendererHTML, tokens: list[Token], idx: int, options: Any, env: dict[str, Any]
    ) -> str:
        if not env.get("in_cell"):
            return str(plain_code(tokens, idx, options, env))
        token = tokens[idx]
        return f"<code{self.renderAttrs(token)}>{breakable(token.content)}</code>"

    for kind in ("th", "td"):
        md.add_render_rule(f"{kind}_open", cell(True))
        md.add_render_rule(f"{kind}_close", cell(False))
    md.add_render_rule("text", text)
    md.add_render_rule("code_inline", code)


def breakable(text: str) -> str:
    """``text`` HTML-escaped, with ``<wbr>`` break points in each run of more than
    ``LONG_TOKEN`` grapheme clusters without a space: after URL punctuation (``/``,
    ``.``, ``?``, ``&``, …) and at least every ``_LONG_PIECE`` clusters. Anything
    shorter (every ordinary word, ``user.preferences.theme``) is left whole."""
    out = []
    last = 0
    for found in _TOKEN.finditer(text):
        clusters = _clusters(found.group(0))
        if len(clusters) <= LONG_TOKEN:
            continue
        out.append(escape_html(text[last : found.start()]))
        out.append("<wbr>".join(escape_html(piece) for piece in _pieces(clusters)))
        last = found.end()
    out.append(escape_html(text[last:]))
    return "".join(out)


def _clusters(token: str) -> list[str]:
    """``token``'s extended grapheme clusters (UAX #29), as a reader sees its characters."""
    import regex

    return list(regex.findall(r"\X", token))


def _pieces(clusters: list[str]) -> list[str]:
    """A long token's grapheme ``clusters`` joined into pieces: a piece ends after a
    run of ``_BREAK_AFTER`` punctuation (``https://`` stays whole) or after
    ``_LONG_PIECE`` clusters without one."""
    pieces: list[str] = []
    piece: list[str] = []
    for index, cluster in enumerate(clusters):
        piece.append(cluster)
        after = clusters[index + 1] if index + 1 < len(clusters) else ""
        ends_run = cluster[0] in _BREAK_AFTER and after[:1] not in _BREAK_AFTER
        if ends_run or len(piece) >= _LONG_PIECE:
            pieces.append("".join(piece))
            piece = []
    if piece:
        pieces.append("".join(piece))
    return pieces


def _nesting_guard(state: StateBlock, start: int, end: int, silent: bool) -> bool:
    """A block rule that parses nothing: it notes the first block at MAX_NESTING or deeper."""
    if state.level >= MAX_NESTING:
        state.env.setdefault("too_deep", start)
    return False


class Document:
    """A parsed Markdown body."""

    def __init__(self, source: str, *, allow_html: bool = False) -> None:
        self._md = _parser(allow_html)
        self._env: dict[str, int] = {}
        self.tokens: list[Token] = []
        self.too_deep: tuple[int, str] | None = None
        """(0-based line, message) of the first thing nested MAX_NESTING levels deep, or
        None. Content deeper than that would be cut from the email (blocks) or could not be
        walked (inline), so it must not be sent; ``html()`` and ``text()`` need it None."""
        try:
            self.tokens = self._md.parse(source, self._env)
        except RecursionError:
            self.too_deep = (0, TOO_DEEP_OTHER)
            return
        if "too_deep" in self._env:
            self.too_deep = (self._env["too_deep"], TOO_DEEP)
        else:
            line = _inline_too_deep(self.tokens)
            if line is not None:
                self.too_deep = (line, TOO_DEEP_INLINE)

    def _inline(self) -> Iterator[tuple[Token, int]]:
        line = 0
        for token in self.tokens:
            if token.map:
                line = token.map[0]
            yield token, line
            for child in token.children or ():
                yield child, line

    def links(self) -> list[Link]:
        return [
            Link(str(tok.attrGet("href") or ""), line)
            for tok, line in self._inline()
            if tok.type == "link_open"
        ]

    def images_without_alt(self) -> list[int]:
        return [
            line
            for tok, line in self._inline()
            if tok.type == "image" and not "".join(c.content for c in tok.children or ()).strip()
        ]

    def rewrite_links(self, rewrite: Callable[[str], str]) -> None:
        for tok, _ in self._inline():
            if tok.type == "link_open":
                tok.attrSet("href", rewrite(str(tok.attrGet("href") or "")))

    def html(self) -> str:
        for tok, _ in self._inline():
            style = STYLES.get(tok.type)
            if style:
                tok.attrSet("style", style)
        return str(self._md.renderer.render(self.tokens, self._md.options, {"in_cell": False}))

    def text(self, width: int = 72) -> str:
        return _TextRenderer(width).render(SyntaxTreeNode(self.tokens)).strip() + "\n"


def _inline_too_deep(tokens: list[Token]) -> int | None:
    """The 0-based line of the first inline element (emphasis, link) MAX_NESTING deep."""
    for token in tokens:
        if token.type != "inline" or not token.children:
            continue
        line = token.map[0] if token.map else 0
        depth = 0
        for child in token.children:
            depth += child.nesting
            if depth >= MAX_NESTING:
                return line
            line += child.content.count("\n") + (child.type in ("softbreak", "hardbreak"))
    return None


def raw_html(source: str) -> list[tuple[int, str]]:
    """Raw HTML in Markdown ``source``, as (0-based line, the tag or comment as written):
    what an email shows as literal text unless the workspace sets ``raw_html = true``."""
    found = []
    for token in _parser(True).parse(source):
        line = token.map[0] if token.map else 0
        if token.type == "html_block":
            found.append((line, _first_tag(token.content)))
        for child in token.children or ():
            if child.type == "html_inline":
                found.append((line, _first_tag(child.content)))
            line += child.content.count("\n") + (child.type in ("softbreak", "hardbreak"))
    return found


def _first_tag(html: str) -> str:
    found = _TAG.search(html)
    return found.group(0) if found else html.strip().split("\n")[0]


_TAG = re.compile(r"<!--.*?-->|<[^>]*>", re.DOTALL)


class _TextRenderer:
    """Plain text for the text/plain part: readable, every link kept as a URL."""

    def __init__(self, width: int) -> None:
        self.width = width

    def render(self, root: SyntaxTreeNode) -> str:
        return "\n\n".join(b for b in (self.block(child) for child in root.children) if b)

    def block(self, node: SyntaxTreeNode, width: int | None = None) -> str:
        width = width or self.width
        kind = node.type
        if kind == "heading":
            text = self.inline(node)
            if node.tag == "h1":
                return f"{text.upper()}\n{'=' * min(len(text), width)}"
            if node.tag == "h2":
                return f"{text}\n{'-' * min(len(text), width)}"
            return f"{'#' * int(node.tag[1])} {text}"
        if kind == "paragraph":
            return self.wrap(self.inline(node), width)
        if kind in ("bullet_list", "ordered_list"):
            return self.list(node, width)
        if kind == "blockquote":
            inner = "\n\n".join(self.block(c, width - 2) for c in node.children)
            return "\n".join(f"> {line}".rstrip() for line in inner.splitlines())
        if kind in ("fence", "code_block"):
            return "\n".join(f"    {line}" for line in node.content.rstrip("\n").splitlines())
        if kind == "hr":
            return "-" * 20
        if kind == "table":
            return self.table(node)
        if kind == "html_block":
            return node.content.strip()
        return "\n\n".join(self.block(c, width) for c in node.children)

    def list(self, node: SyntaxTreeNode, width: int) -> str:
        start = int(node.attrs.get("start", 1) or 1)
        items = []
        for index, item in enumerate(node.children):
            marker = f"{start + index}. " if node.type == "ordered_list" else "- "
            pad = " " * len(marker)
            body = "\n\n".join(self.block(c, width - len(marker)) for c in item.children)
            lines = body.splitlines() or [""]
            items.append("\n".join([marker + lines[0], *[(pad + ln).rstrip() for ln in lines[1:]]]))
        return "\n".join(items)

    def table(self, node: SyntaxTreeNode) -> str:
        rows: list[list[str]] = []
        for section in node.children:
            for row in section.children:
                rows.append([self.inline(cell) for cell in row.children])
        if not rows:
            return ""
        columns = max(len(r) for r in rows)
        widths = [max(len(r[i]) if i < len(r) else 0 for r in rows) for i in range(columns)]
        if sum(widths) + 3 * (columns - 1) > self.width:
            # Too wide to align in a text email: one record per block instead.
            header, *body = rows
            records = [
                "\n".join(f"{h}: {v}" for h, v in zip(header, row, strict=False)) for row in body
            ]
            return "\n\n".join(records)
        lines = [
            " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in rows
        ]
        lines.insert(1, "-+-".join("-" * w for w in widths))
        return "\n".join(lines)

    def inline(self, node: SyntaxTreeNode) -> str:
        parts: list[str] = []
        for child in node.children:
            kind = child.type
            if kind == "inline":
                parts.append(self.inline(child))
            elif kind == "text":
                parts.append(child.content)
            elif kind in ("softbreak", "hardbreak"):
                parts.append(" " if kind == "softbreak" else "\n")
            elif kind == "code_inline":
                parts.append(child.content)
            elif kind in ("em", "strong"):
                mark = "*" if kind == "em" else "**"
                parts.append(f"{mark}{self.inline(child)}{mark}")
            elif kind == "link":
                href = str(child.attrs.get("href", ""))
                label = self.inline(child)
                parts.append(
                    href if label in (href, href.removeprefix("mailto:")) else f"{label} ({href})"
                )
            elif kind == "image":
                alt = "".join(c.content for c in child.children)
                parts.append(f"[{alt or 'image'}: {child.attrs.get('src', '')}]")
            elif kind == "html_inline":
                parts.append(child.content)
            else:
                parts.append(self.inline(child))
        return "".join(parts)

    def wrap(self, text: str, width: int) -> str:
        return "\n".join(
            textwrap.fill(
                piece, width=max(width, 20), break_long_words=False, break_on_hyphens=False
            )
            for piece in text.split("\n")
        )
