"""Where templates come from: the workspace's ``templates/`` first, then the built-in ones.

The email templates ship inside the package (``pipeline/templates/``). A workspace file
with the same name (``templates/email.mjml.j2``, ``templates/partials/continue.mjml.j2``,
…) overrides that one file, as MkDocs' ``custom_dir`` does; a workspace without
``templates/`` renders with the built-in ones alone.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import jinja2
from jinja2.loaders import split_template_path

from .sources import read_text

BUILTIN_DIR = Path(__file__).resolve().parent / "templates"


@dataclass(frozen=True)
class TemplateFile:
    """One file a workspace renders with, and where it is taken from."""

    name: str  # relative to the templates folder, e.g. "partials/continue.mjml.j2"
    path: Path
    builtin: bool
    digest: str  # sha256 of its bytes

    @property
    def origin(self) -> str:
        return "built-in" if self.builtin else "workspace"


class Templates:
    """The templates of one workspace: its own ``templates/`` over the built-in ones."""

    def __init__(self, workspace_dir: Path) -> None:
        self.workspace_dir = workspace_dir
        self.roots = (workspace_dir, BUILTIN_DIR)

    def loader(self, shown: Callable[[Path], str]) -> jinja2.BaseLoader:
        """A Jinja loader that looks in the workspace first, then in the package; each
        file read as every source file is (``shown`` prints its path in messages)."""
        return jinja2.ChoiceLoader([TemplateLoader(root, shown) for root in self.roots])

    @cached_property
    def files(self) -> dict[str, TemplateFile]:
        """Every file by name, each from the place the loader takes it from."""
        found: dict[str, TemplateFile] = {}
        for root in reversed(self.roots):  # the workspace's file replaces the built-in one
            if not root.is_dir():
                continue
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                name = path.relative_to(root).as_posix()
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                found[name] = TemplateFile(name, path, root == BUILTIN_DIR, digest)
        return dict(sorted(found.items()))

    @cached_property
    def fingerprint(self) -> str:
        """Changes when any file changes, or moves between the workspace and the built-ins."""
        lines = (f"{f.origin}\0{name}\0{f.digest}\n" for name, f in self.files.items())
        return hashlib.sha256("".join(lines).encode()).hexdigest()

    def is_template_file(self, filename: str) -> bool:
        """Whether a path (from a traceback) is one of the template folders' files."""
        return any(filename.startswith(f"{root}{os.sep}") for root in self.roots)


def builtin_files() -> list[Path]:
    """The built-in templates, for copying into a workspace (``series init --templates``)."""
    return sorted(p for p in BUILTIN_DIR.rglob("*") if p.is_file())


class TemplateLoader(jinja2.BaseLoader):
    """Jinja templates from ``directory``, read as every source file is (read_text);
    ``shown`` turns a path into the path messages print."""

    def __init__(self, directory: Path, shown: Callable[[Path], str]) -> None:
        self.directory = directory
        self.shown = shown

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        path = self.directory.joinpath(*split_template_path(template))
        if not path.is_file():
            raise jinja2.TemplateNotFound(template)
        text = read_text(path, self.shown(path), what="a template")
        mtime = path.stat().st_mtime

        def uptodate() -> bool:
            try:
                return path.stat().st_mtime == mtime
            except OSError:
                return False

        return text, str(path), uptodate
