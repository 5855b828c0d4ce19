"""Which requirement a new workspace's workflows install: the same version, from where it came."""

from __future__ import annotations

import pytest

from pipeline.install import DISTRIBUTION, Requirement, requirement, requirement_from, version

SOURCE = "https://github.com/OWNER/series"
GIT = "https://github.com/ann/series"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    ("direct_url", "expected"),
    [
        # From an index: that version there.
        (None, Requirement("series-drip==1.2.0", True)),
        # `pipx install git+…@v1.2.0`: the same repository and tag.
        (
            {
                "url": GIT,
                "vcs_info": {"vcs": "git", "requested_revision": "v1.2.0", "commit_id": COMMIT},
            },
            Requirement(f"series-drip @ git+{GIT}@v1.2.0", True),
        ),
        # A branch moves on: the commit that was installed.
        (
            {
                "url": GIT,
                "vcs_info": {"vcs": "git", "requested_revision": "main", "commit_id": COMMIT},
            },
            Requirement(f"series-drip @ git+{GIT}@{COMMIT}", True),
        ),
        (
            {"url": GIT, "vcs_info": {"vcs": "git", "commit_id": COMMIT}},
            Requirement(f"series-drip @ git+{GIT}@{COMMIT}", True),
        ),
        # A wheel file or a folder cannot be reached from a runner: the version's tag.
        (
            {"url": "file:///tmp/series_drip-1.2.0-py3-none-any.whl", "archive_info": {}},
            Requirement(f"series-drip @ git+{SOURCE}@v1.2.0", False),
        ),
        (
            {"url": "file:///home/ann/series", "dir_info": {"editable": True}},
            Requirement(f"series-drip @ git+{SOURCE}@v1.2.0", False),
        ),
    ],
    ids=["index", "git-tag", "git-branch", "git-commit", "wheel-file", "folder"],
)
def test_requirement_from_where_it_came(
    direct_url: dict[str, object] | None, expected: Requirement
) -> None:
    """PEP 610's direct URL decides: an index, a git repository, or anything else."""
    assert requirement_from(direct_url, "1.2.0", SOURCE) == expected


def test_the_running_copy_names_its_own_version() -> None:
    """The installed distribution is series-drip, and its requirement pins its version."""
    assert DISTRIBUTION == "series-drip"
    spec = requirement().spec
    assert spec.startswith("series-drip")
    assert spec.endswith((f"=={version()}", f"@v{version()}")) or "git+" in spec
