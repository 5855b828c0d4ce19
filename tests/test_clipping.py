"""Gmail's clipping size, measured on what the mailbox receives: the HTML part of the
message as it is transfer-encoded, read from the raw bytes of the .eml file."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.check import GMAIL_CLIP_BYTES, check_workspace
from pipeline.config import load_config
from pipeline.content import load_series
from pipeline.preview import select_parts, write_previews

from .conftest import EXAMPLE_NOW, BuildWorkspace

# About 800 octets of Cyrillic per paragraph: one line of the compiled HTML each.
PARAGRAPH = "Теория привязанности описывает, как ранние отношения формируют нас. " * 6


def cyrillic_workspace(workspace: BuildWorkspace, paragraphs: int, provider: str = "") -> Path:
    root = workspace()
    if provider:
        config = root / "series.toml"
        config.write_text(f'provider = "{provider}"\n' + config.read_text(), encoding="utf-8")
    article = root / "series/demo/01-valid.md"
    body = "\n\n".join([PARAGRAPH] * paragraphs)
    article.write_text(article.read_text() + f"\n\n{body}\n", encoding="utf-8")
    return root


def raw_html_part(eml: bytes) -> tuple[str, int]:
    """(Content-Transfer-Encoding, octets on the wire) of the HTML part of a raw message,
    read off its bytes; line ends counted as CRLF, as SMTP carries them."""
    boundary = re.search(rb'boundary="([^"]+)"', eml)
    assert boundary is not None
    for chunk in eml.split(b"\n--" + boundary.group(1)):
        head, _, body = chunk.partition(b"\n\n")
        if b"Content-Type: text/html" in head:
            found = re.search(rb"Content-Transfer-Encoding: (\S+)", head)
            assert found is not None
            body += b"\n"
            return found.group(1).decode(), len(body) + body.count(b"\n")
    raise AssertionError("no HTML part")


def clip_warnings(root: Path) -> list[str]:
    problems = check_workspace(load_config(root), now=EXAMPLE_NOW).problems
    return [str(p) for p in problems if "Gmail clips" in p.message]


def test_a_cyrillic_article_that_check_passes_reaches_the_mailbox_under_the_limit(
    workspace: BuildWorkspace, tmp_path: Path
) -> None:
    """A Cyrillic article of about 85 KB of HTML passes `series check`, and the .eml
    holds its HTML part at about that size (8bit), not tripled by quoted-printable."""
    root = cyrillic_workspace(workspace, 98)
    assert clip_warnings(root) == []
    config = load_config(root)

    series_list, _ = load_series(config)
    [written] = write_previews(
        config, select_parts(series_list, "demo/1"), tmp_path / "out", now=EXAMPLE_NOW
    )
    html, _, eml = written.paths
    html_octets = len(html.read_bytes())
    assert 80 * 1024 < html_octets < GMAIL_CLIP_BYTES
    encoding, octets = raw_html_part(eml.read_bytes())
    assert encoding == "8bit"
    assert octets < GMAIL_CLIP_BYTES
    assert octets < html_octets * 1.05  # quoted-printable wrote it at 2.5 times


def test_a_provider_that_encodes_quoted_printable_gets_the_warning(
    workspace: BuildWorkspace,
) -> None:
    """Through SendGrid (its API writes text parts quoted-printable) the same article
    passes 102 KB: the warning names the file, the size and the encoding."""
    root = cyrillic_workspace(workspace, 98, provider="sendgrid")
    [warning] = clip_warnings(root)
    assert re.fullmatch(
        r"series/demo/01-valid\.md: warning: the email's HTML part is 2\d\d KB as sendgrid "
        r"sends it \(quoted-printable\); Gmail clips messages over 102 KB, so shorten the "
        r"article or split it",
        warning,
    )


def test_a_longer_cyrillic_article_warns_for_the_outbox_too(workspace: BuildWorkspace) -> None:
    """Past 102 KB as written (8bit) the outbox path warns as well, for the whole file."""
    root = cyrillic_workspace(workspace, 130)
    [warning] = clip_warnings(root)
    assert warning.startswith("series/demo/01-valid.md: warning: the email's HTML part is ")
    assert "KB as outbox sends it (8bit)" in warning
