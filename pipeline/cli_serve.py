"""`series serve`: the self-hosted unsubscribe pages (built in pipeline/web.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import SeriesError

if TYPE_CHECKING:
    from .cli import State


def serve_command(state: State, *, host: str, port: int) -> None:
    raise SeriesError("series serve is being built")
