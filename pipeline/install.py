"""How this copy of series was installed, so that a new workspace's workflows install
the same version (PEP 610's direct_url.json says where an installation came from)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from typing import Any

DISTRIBUTION = "series-drip"
# Used when the installed metadata cannot be read (e.g. running from a bare checkout).
_FALLBACK_SOURCE = "https://github.com/OWNER/series"


@dataclass(frozen=True)
class Requirement:
    """What `pip install` needs to get this same version of series."""

    spec: str
    # False: not where this copy came from (a wheel file, a folder), but the version's
    # tag in the project's repository, which is where it is published.
    exact: bool


def version() -> str:
    """The installed version of series (one source of truth: pyproject.toml)."""
    try:
        return distribution(DISTRIBUTION).version
    except PackageNotFoundError:
        return "0+unknown"


def requirement() -> Requirement:
    """The requirement that installs the running version of series elsewhere."""
    try:
        dist = distribution(DISTRIBUTION)
    except PackageNotFoundError:
        return Requirement(f"{DISTRIBUTION} @ git+{_FALLBACK_SOURCE}", False)
    text = dist.read_text("direct_url.json")
    urls: dict[str, str] = {}
    for entry in dist.metadata.get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        urls[label.strip()] = url.strip()
    return requirement_from(
        json.loads(text) if text else None,
        dist.version,
        urls.get("Source", _FALLBACK_SOURCE),
    )


def requirement_from(direct_url: dict[str, Any] | None, version: str, source: str) -> Requirement:
    """The requirement for ``version``, given where it was installed from: an index
    (no direct URL), a git repository (its URL and the tag or commit), or anything else
    (a wheel file, a folder: then the version's tag in ``source``)."""
    if direct_url is None:
        return Requirement(f"{DISTRIBUTION}=={version}", True)
    vcs = direct_url.get("vcs_info") or {}
    if vcs.get("vcs") == "git":
        revision = vcs.get("requested_revision")
        if revision != f"v{version}":
            revision = vcs.get("commit_id") or revision
        return Requirement(f"{DISTRIBUTION} @ git+{direct_url['url']}@{revision}", True)
    return Requirement(f"{DISTRIBUTION} @ git+{source}@v{version}", False)
