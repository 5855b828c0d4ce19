"""`series preview`: .html, .txt and .eml files of chosen parts, as a sample reader gets them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .config import Address, Config
from .content import Article, Series
from .errors import UsageError
from .message import build_message
from .render import Renderer


@dataclass(frozen=True)
class PreviewFile:
    series: str
    part: int
    paths: tuple[Path, ...]


def select_parts(series_list: list[Series], target: str | None) -> list[tuple[Series, Article]]:
    """``None`` → every part; ``SLUG`` → its parts; ``SLUG/PART`` → one part (number or slug)."""
    if not target:
        return [(s, a) for s in series_list for a in s.articles]
    slug, _, part = target.partition("/")
    series = next((s for s in series_list if s.slug == slug), None)
    if series is None:
        names = ", ".join(s.slug for s in series_list) or "none"
        raise UsageError(f"no series '{slug}' (series in this workspace: {names})")
    if not part:
        return [(series, a) for a in series.articles]
    article = series.find(part)
    if article is None:
        parts = ", ".join(f"{a.part} ({a.slug})" for a in series.articles)
        raise UsageError(f"series '{slug}' has no part '{part}' (parts: {parts})")
    return [(series, article)]


def write_previews(
    config: Config,
    chosen: list[tuple[Series, Article]],
    out: Path,
    *,
    now: datetime,
    progress: int | None = None,
) -> list[PreviewFile]:
    """``progress`` = how many parts the sample reader has received (default: all earlier ones)."""
    renderer = Renderer(config, now=now)
    reader = renderer.sample()
    written = []
    for series, article in chosen:
        received = None
        if progress is not None:
            received = [a.slug for a in series.articles[:progress]]
        email = renderer.compile(series, article, received=received).personalise(reader)
        stem = out / series.slug / article.path.stem
        stem.parent.mkdir(parents=True, exist_ok=True)
        message = build_message(
            email,
            sender=series.sender,
            to=Address(reader.email, reader.name),
            unsubscribe_url=reader.unsubscribe_url,
            date=now,
            reply_to=config.reply_to,
        )
        files = {
            stem.with_suffix(".html"): email.html.encode("utf-8"),
            stem.with_suffix(".txt"): email.text.encode("utf-8"),
            stem.with_suffix(".eml"): message,
        }
        for path, data in files.items():
            path.write_bytes(data)
        written.append(PreviewFile(series.slug, article.part, tuple(files)))
    return written
