"""`series init`: a new workspace from the skeleton that ships with the tool, and the
built-in templates copied into a workspace for editing.

The skeleton (``pipeline/skeleton/``) is laid out as the workspace it makes. A path
part ``dot-NAME`` becomes ``.NAME``; a file ending in ``.tmpl`` loses that ending and
has its ``@@{name}`` fields filled in (``$`` and ``{{ }}`` belong to the shell and to
GitHub Actions in the workflows, so neither marks a field).
"""

from __future__ import annotations

import json
import shutil
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit

from .config import Address, Config, key_line
from .errors import Problem, UsageError
from .install import Requirement, requirement
from .loader import BUILTIN_DIR, builtin_files
from .workspace import configured_by

SKELETON_DIR = Path(__file__).resolve().parent / "skeleton"
PLACEHOLDER_URL = "https://example.com"
PLACEHOLDER_SENDER = Address("you@example.com", "Your Name")
# Reserved for examples (RFC 2606): a workspace still using them is not ready to send.
PLACEHOLDER_DOMAINS = ("example.com", "example.net", "example.org")
GITIGNORE = ".gitignore"


class _Fields(string.Template):
    delimiter = "@@"


@dataclass(frozen=True)
class NewWorkspace:
    """What `series init` made."""

    root: Path
    written: list[Path]
    gitignore_added: list[str]  # lines added to a .gitignore that was already there
    requirement: Requirement
    series: str  # the example series' slug


PLACEHOLDER_POSTAL_ADDRESS = "My Blog, 1 Main Street, 12345 Springfield"


def create_workspace(
    root: Path,
    *,
    site_url: str | None = None,
    sender: Address | None = None,
    postal_address: str | None = None,
    today: date,
) -> NewWorkspace:
    """Lay out a new workspace in ``root`` (made if missing). Raises UsageError, having
    changed nothing, when ``root`` already is a workspace or holds a file it would write
    (an existing .gitignore is extended instead). ``postal_address`` (one line) is
    written as set; None leaves the key commented out, with an example."""
    existing = configured_by(root) if root.is_dir() else None
    if existing is not None:
        raise UsageError(
            f"{existing} already configures a workspace; nothing changed "
            "(`series init --templates` copies the built-in templates into it)"
        )
    need = requirement()
    sender = sender or PLACEHOLDER_SENDER
    fields = {
        "site_url": _toml_string(site_url or PLACEHOLDER_URL),
        # A bare --from address gets no name, not the placeholder's "Your Name".
        "from_name": _toml_string(sender.name),
        "from_email": _toml_string(sender.email),
        # Without --postal-address the key stays commented out, with an example to edit.
        "postal_address": (
            f"postal_address = {_toml_string(postal_address)}"
            if postal_address
            else f"# postal_address = {_toml_string(PLACEHOLDER_POSTAL_ADDRESS)}"
        ),
        # Yesterday: already published in every timezone, so the example sends at once.
        "published": date.fromordinal(today.toordinal() - 1).isoformat(),
        "requirement": json.dumps(need.spec),
    }
    files = _skeleton(root)
    blocked = _files_in_the_way(root, files.values())
    if blocked:
        names = ", ".join(_shown(root, p) if p.is_relative_to(root) else str(p) for p in blocked)
        raise UsageError(
            f"{names} is a file where series init would make a folder; nothing changed"
        )
    clashes = [
        t for t in files.values() if t.exists() and not (t.name == GITIGNORE and t.is_file())
    ]
    if clashes:
        names = ", ".join(_shown(root, t) for t in clashes)
        raise UsageError(f"{names} already exist(s) in {root}; nothing changed")
    written, added = [], []
    for source, target in files.items():
        # A workflow's pip cache is keyed on the workflow itself, which names the version.
        text = fill(source, {**fields, "cache_dependency_path": _shown(root, target)})
        if target.name == GITIGNORE and target.is_file():
            added = _extend_gitignore(target, text)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        written.append(target)
    return NewWorkspace(root, written, added, need, series="getting-started")


def eject_templates(root: Path) -> list[Path]:
    """Copy the built-in templates into ``root/templates/`` for editing. Raises
    UsageError, having copied nothing, when any of them is there already."""
    if configured_by(root) is None:
        raise UsageError(f"{root} is not a workspace; run `series init` there first")
    pairs = {
        source: root / "templates" / source.relative_to(BUILTIN_DIR) for source in builtin_files()
    }
    there = [target for target in pairs.values() if target.exists()]
    if there:
        names = ", ".join(_shown(root, t) for t in there)
        raise UsageError(
            f"{names} already exist(s); nothing copied (move them away to get the "
            "built-in versions next to them)"
        )
    for source, target in pairs.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return list(pairs.values())


def workflow(name: str, requirement_spec: str, cache_dependency_path: str) -> str:
    """The text of a skeleton workflow (``send.yml`` or ``check.yml``) installing
    ``requirement_spec``; this repository's own send.yml is one of them."""
    source = SKELETON_DIR / "dot-github" / "workflows" / f"{name}.tmpl"
    return fill(
        source,
        {
            "requirement": json.dumps(requirement_spec),
            "cache_dependency_path": cache_dependency_path,
        },
    )


def fill(source: Path, fields: Mapping[str, str]) -> str:
    """A skeleton file's text, its ``@@{name}`` fields filled in if it is a template."""
    text = source.read_text(encoding="utf-8")
    return _Fields(text).substitute(fields) if source.suffix == ".tmpl" else text


def placeholder_problems(config: Config) -> list[Problem]:
    """Warnings for the example.com addresses and the "Your Name" sender name that
    `series init` writes until the writer puts in their own."""
    found = []
    if config.sender.name.strip().casefold() == PLACEHOLDER_SENDER.name.casefold():
        found.append(
            Problem(
                config.rel(config.source),
                key_line(config, "from.name"),
                f"'from.name' is still the example name ({config.sender.name!r}): put in "
                "your own (or remove it to send from the address alone)",
                "warning",
            )
        )
    for key, host in (
        ("site_url", urlsplit(config.site_url).hostname or ""),
        ("from.email", config.sender.email.rpartition("@")[2]),
        ("reply_to", (config.reply_to or "").rpartition("@")[2]),
    ):
        if any(host == d or host.endswith(f".{d}") for d in PLACEHOLDER_DOMAINS):
            found.append(
                Problem(
                    config.rel(config.source),
                    key_line(config, key),
                    f"'{key}' is still an example address ({host}): put in your own "
                    "before sending to anyone",
                    "warning",
                )
            )
    return sorted(found, key=lambda p: p.line or 0)


def _skeleton(root: Path) -> dict[Path, Path]:
    """Each skeleton file and the workspace file it becomes."""
    mapping = {}
    for source in sorted(p for p in SKELETON_DIR.rglob("*") if p.is_file()):
        parts = [
            f".{part.removeprefix('dot-')}" if part.startswith("dot-") else part
            for part in source.relative_to(SKELETON_DIR).parts
        ]
        parts[-1] = parts[-1].removesuffix(".tmpl")
        mapping[source] = root.joinpath(*parts)
    return mapping


def _files_in_the_way(root: Path, targets: Iterable[Path]) -> list[Path]:
    """The existing non-folders (files, or links to them) at the place of a folder that
    some target needs, ``root`` and its parents included."""
    found: set[Path] = set()
    for target in targets:
        for folder in target.parents:
            if folder.is_dir():
                break
            if folder.exists() or folder.is_symlink():
                found.add(folder)
                break
    return sorted(found)


def _extend_gitignore(path: Path, wanted: str) -> list[str]:
    """Add the lines of ``wanted`` that ``path`` lacks; returns the lines added."""
    text = path.read_text(encoding="utf-8")
    have = {line.strip() for line in text.splitlines()}
    missing = [
        line
        for line in wanted.splitlines()
        if line.strip() and not line.startswith("#") and line.strip() not in have
    ]
    if missing:
        joined = "\n".join(["# series", *missing])
        separator = "" if not text or text.endswith("\n") else "\n"
        path.write_text(f"{text}{separator}{joined}\n", encoding="utf-8")
    return missing


def _toml_string(value: str) -> str:
    # A JSON string is a valid TOML basic string (the same escapes, \uXXXX included).
    return json.dumps(value, ensure_ascii=False)


def _shown(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()
