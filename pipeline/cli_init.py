"""`series init`: parse options, make the workspace (or copy the templates), print."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from .cli import State
    from .config import Address


def _site_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from .config import is_web_url, url_part_problem, url_problem

    if value is None:
        return None
    if not is_web_url(value):
        raise click.BadParameter(
            f"{value!r} is not an http(s) address such as https://myblog.example"
        )
    problem = url_problem(value) or url_part_problem(value, base=True)
    if problem is not None:
        raise click.BadParameter(f"{value!r} {problem}")
    return value


def _sender(ctx: click.Context, param: click.Parameter, value: str | None) -> Address | None:
    from .config import Address

    if value is None:
        return None
    parsed = parse_sender(value)
    if isinstance(parsed, str):
        raise click.BadParameter(
            f'{value!r} {parsed} (use "Name <you@myblog.example>" or the address alone)'
        )
    return Address(parsed[1], parsed[0])


def _postal_address(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from .headers import line_problem

    if value is None:
        return None
    if not value.strip():
        raise click.BadParameter("is empty: give the street address or P.O. box")
    problem = line_problem(value)
    if problem is not None:
        raise click.BadParameter(f"{problem} (an address on several lines: edit series.toml)")
    return value.strip()


def parse_sender(value: str) -> tuple[str, str] | str:
    """``value`` as exactly one ``Name <address>`` or one bare address: (name, address),
    the name cleaned as every name series sends is, or why it is neither (in words that
    follow the value). Nothing is dropped or guessed, unlike email.utils.parseaddr."""
    from .config import sender_problem
    from .headers import clean_name, line_problem

    problem = line_problem(value)
    if problem is not None:
        return problem
    text = value.strip()
    if text.count("<") > 1 or text.count(">") > 1:
        return "names more than one address; give one"
    if "<" in text or ">" in text:
        match = re.fullmatch(r"([^<>]*)<([^<>]*)>(.*)", text)
        if match is None:
            return "has a < or > that does not enclose the address"
        name, email, after = (part.strip() for part in match.groups())
        if after:
            return f"has text after the <address>: {after!r}"
        if not email:
            return "has no address between < and >"
        if len(name) >= 2 and name[0] == name[-1] == '"':
            name = re.sub(r"\\(.)", r"\1", name[1:-1])
    elif re.search(r"[\s,;]", text):
        return "is not one address (put a name before the address in <…>)"
    else:
        name, email = "", text
    problem = sender_problem(email)
    if problem is not None:
        return problem
    name = clean_name(name)
    problem = line_problem(name)
    return (name, email) if problem is None else f"has a name that {problem}"


@click.command(name="init")
@click.argument(
    "directory", required=False, type=click.Path(file_okay=False, path_type=Path), metavar="[DIR]"
)
@click.option(
    "--templates",
    is_flag=True,
    help="Copy the built-in templates into the workspace's templates/ for editing, "
    "instead of making a workspace.",
)
@click.option(
    "--site-url",
    callback=_site_url,
    help="The blog's address (default: an https://example.com placeholder).",
)
@click.option(
    "--from",
    "sender",
    callback=_sender,
    metavar='"NAME <EMAIL>"',
    help="Who the emails come from (default: a you@example.com placeholder).",
)
@click.option(
    "--postal-address",
    callback=_postal_address,
    metavar='"ADDRESS"',
    help="The postal address every footer shows (CAN-SPAM); without it `series check "
    "--strict`, as the CI runs it, fails until series.toml sets one.",
)
@click.pass_obj
def init_command(
    state: State,
    directory: Path | None,
    templates: bool,
    site_url: str | None,
    sender: Address | None,
    postal_address: str | None,
) -> None:
    """Make a new workspace in DIR (default: the current folder): series.toml, an
    example series, subscribers/, .gitignore and GitHub workflows. With --templates,
    copy the built-in email templates into an existing workspace instead.

    Example: series init myblog --site-url https://myblog.example --from "Ann <ann@myblog.example>"
    --postal-address "Ann Lee, 1 Main Street, 12345 Springfield"
    """
    from .config import find_workspace
    from .scaffold import create_workspace, eject_templates

    # Without DIR: the workspace this folder is in, if any (where a new one is refused).
    root = (directory or find_workspace(state.workspace)).resolve()
    if templates:
        if site_url or sender or postal_address:
            raise click.UsageError(
                "--site-url, --from and --postal-address are for a new workspace, not --templates"
            )
        for path in eject_templates(root):
            click.echo(f"copied {path.relative_to(root).as_posix()}")
        click.echo(
            "A file in templates/ replaces the built-in one of the same name: keep only "
            "those you change, and the rest follow new versions of series."
        )
        return
    made = create_workspace(
        root,
        site_url=site_url,
        sender=sender,
        postal_address=postal_address,
        today=datetime.now(UTC).date(),
    )
    click.echo(f"Made a series workspace in {_shown(root)}/:")
    for path in made.written:
        click.echo(f"  {path.relative_to(root).as_posix()}")
    if made.gitignore_added:
        click.echo(f"  .gitignore (added {', '.join(made.gitignore_added)})")
    missing = [
        *([] if site_url else ["your site_url"]),
        *([] if sender else ["your from address"]),
        *([] if postal_address else ["your postal_address (CAN-SPAM)"]),
    ]
    _next_steps(root, made.series, missing)
    if not made.requirement.exact:
        click.echo(
            f"\nThe workflows install {made.requirement.spec}: this copy of series was not "
            "installed from its repository, so check that line in .github/workflows/."
        )


def _next_steps(root: Path, series: str, missing: list[str]) -> None:
    """Print what to do next; ``missing``: what series.toml still needs, in words."""
    steps = []
    if root != Path.cwd().resolve():
        steps.append((f"cd {_shown(root)}", ""))
    if missing:
        steps.append(("$EDITOR series.toml", _joined(missing)))
    steps += [
        ("series check", "validate everything"),
        ("series preview", "the emails, in build/preview/"),
        (f"series subscribers add you@example.com --series {series}", "a first reader"),
        ("series send", "the emails that are due, as files in outbox/"),
    ]
    width = max(len(command) for command, _ in steps)
    click.echo("\nNext steps:")
    for command, why in steps:
        click.echo(f"  {command.ljust(width)}  # {why}" if why else f"  {command}")
    click.echo(
        "To send for real, set provider in series.toml and the provider's key in the "
        "environment; .github/workflows/send.yml says what scheduled sends need."
    )
    if any("postal_address" in item for item in missing):
        click.echo(
            "The check workflow runs `series check --strict`, which fails until "
            "series.toml sets postal_address."
        )


def _joined(items: list[str]) -> str:
    """``["a", "b", "c"]`` → ``"a, b and c"``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _shown(path: Path) -> str:
    """A path relative to the current folder when it is inside it."""
    here = Path.cwd().resolve()
    return os.path.relpath(path, here) if path.is_relative_to(here) else str(path)
