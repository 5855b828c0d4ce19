"""The README documents what exists: every command, and the two commands CI relies on."""

from __future__ import annotations

import re

import click

from pipeline.cli import cli

from .conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def command_names(group: click.Group, prefix: str = "series") -> list[str]:
    names = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            names += command_names(command, f"{prefix} {name}")
        else:
            names.append(f"{prefix} {name}")
    return names


def test_every_command_is_documented() -> None:
    """Each CLI command (every leaf of every group) has a `### series …` section in the README."""
    headings = re.findall(r"^### `(series(?: [a-z-]+)+)", README, flags=re.MULTILINE)
    assert sorted(command_names(cli)) == sorted(set(headings))


def test_readme_opens_with_the_two_commands() -> None:
    """The first two code blocks are the main command and the test command, in that order."""
    blocks = re.findall(r"<!-- (\w+)-command -->\n```sh\n(.+?)\n```", README, flags=re.DOTALL)
    assert [name for name, _ in blocks] == ["main", "test"]
    main, test = (command for _, command in blocks)
    assert "series check" in main and "series send" in main and "series status" in main
    assert "pytest" in test and ".[test]" in test


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run takes its command from the README's test-command block, not a copy of it."""
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "<!-- test-command -->" in script
    assert "pytest collected no tests" in script  # exit code 5 is a failure
