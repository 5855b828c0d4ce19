"""Options several commands share: --now, an ISO-8601 moment in the workspace's timezone."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from .config import Config

F = TypeVar("F", bound=Callable[..., Any])


class Moment(click.ParamType):  # type: ignore[type-arg]
    """An ISO-8601 time; without an offset it is in the workspace's timezone."""

    name = "ISO-8601"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        try:
            return datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not an ISO-8601 time such as 2026-12-01T09:00", param, ctx)


def now_option(func: F) -> F:
    return click.option(
        "--now",
        type=Moment(),
        help="Pretend it is this time (ISO-8601), e.g. to see a part once it is published. "
        "Without an offset (2026-12-03T14:00) it is in the workspace's timezone, the zone "
        "the tables print times in; 2026-12-03T14:00Z or +01:00 names another.",
    )(func)


def resolve_now(config: Config, now: datetime | None) -> datetime:
    """The moment a command works at: ``--now`` read in the workspace's timezone when it
    has no offset, else the real time."""
    if now is None:
        return datetime.now(UTC)
    return now if now.tzinfo else now.replace(tzinfo=config.timezone)
