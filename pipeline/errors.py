"""Errors the core raises; the CLI turns each into one line and an exit code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Problem:
    """One finding of validation, printed as ``path:line: message``."""

    path: str
    line: int | None
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        if self.severity == "warning":
            return f"{where}: warning: {self.message}"
        return f"{where}: {self.message}"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"


class SeriesError(Exception):
    """Root of every expected error: the CLI prints it as one line, no traceback."""


class ConfigError(SeriesError):
    """The workspace configuration is missing or invalid: one problem, or every problem
    of the file in file order (``problems``; its string is one line per problem)."""

    def __init__(self, problem: Problem | list[Problem]) -> None:
        self.problems = [problem] if isinstance(problem, Problem) else list(problem)
        super().__init__("\n".join(str(p) for p in self.problems))
        self.problem = self.problems[0]


class ContentError(SeriesError):
    """Content or templates failed validation; carries every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        errors = [p for p in problems if p.is_error]
        super().__init__(f"{len(errors)} problem(s) in the content; run `series check`")
        self.problems = problems


class RenderError(SeriesError):
    """A template failed to render or compile."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


class UsageError(SeriesError):
    """The command was called with arguments that name nothing in the workspace."""


class MessageBuildError(SeriesError):
    """One reader's message cannot be built: an address no provider can take (a non-ASCII
    local part, a domain that is not valid IDNA), or a header that cannot be written as
    one RFC 5322 field. Raised by pipeline/headers.py and pipeline/message.py; it is about
    that reader only, so whoever sends marks that delivery failed with ``str(exc)`` and
    goes on with the others."""
