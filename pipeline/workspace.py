"""Which folder is the workspace: the nearest one at or above a starting folder that
holds ``series.toml`` or a ``pyproject.toml`` with ``[tool.series]`` (as git finds
``.git``), so `series` runs from any subfolder of a workspace."""

from __future__ import annotations

import re
from pathlib import Path

from .sources import ReadError, read_toml

CONFIG_FILE = "series.toml"
PYPROJECT = "pyproject.toml"
_TOOL_TABLE = re.compile(r"^\s*\[\s*tool\.series\s*[\].]", re.MULTILINE)


def configured_by(folder: Path) -> Path | None:
    """The file that makes ``folder`` a workspace (series.toml, or a pyproject.toml
    with [tool.series]), or None."""
    if (folder / CONFIG_FILE).is_file():
        return folder / CONFIG_FILE
    pyproject = folder / PYPROJECT
    if pyproject.is_file() and _has_tool_table(pyproject):
        return pyproject
    return None


def nearest_workspace(start: Path) -> Path | None:
    """The nearest workspace at or above ``start``, or None when there is none."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if configured_by(folder) is not None:
            return folder
    return None


def _has_tool_table(pyproject: Path) -> bool:
    try:
        data, _ = read_toml(pyproject, pyproject.name)
    except ReadError:
        # A broken file that has the table is still the workspace it was meant to be:
        # loading it then names what is wrong, instead of a folder further up being used.
        try:
            text = pyproject.read_bytes().decode("utf-8", "replace")
        except OSError:
            return False
        return _TOOL_TABLE.search(text) is not None
    tool = data.get("tool")
    return isinstance(tool, dict) and "series" in tool
