"""The built wheel is the whole tool: installed in a fresh virtual environment outside the
repository, `series init` makes a workspace where every main command works.

Selected alone with `pytest -m wheel`. The wheel's dependencies come from the package
index (or pip's cache, filled by installing the test extras), like any user's install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.wheel

SLUG = "getting-started"


class Installed:
    """A virtual environment with only the wheel (and its dependencies) in it."""

    def __init__(self, wheel: Path, env_dir: Path, home: Path) -> None:
        self.wheel = wheel
        self.bin = env_dir / "bin"
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("SERIES_", "PYTHON", "VIRTUAL_ENV"))
        }
        self.env["PATH"] = f"{self.bin}{os.pathsep}{self.env.get('PATH', '')}"
        self.home = home

    def series(self, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
        """`series ARGS…` from the environment's bin/, in ``cwd``."""
        return subprocess.run(
            [str(self.bin / "series"), *args],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("wheel")
    # Build from a copy of the sources, so no stale build/ folder of the checkout can
    # slip files into the wheel, and the checkout is left as it was.
    source = base / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "pipeline", source / "pipeline", ignore=shutil.ignore_patterns("__pycache__")
    )
    dist = base / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dist), str(source)],
        check=True,
        timeout=600,
    )
    (wheel,) = dist.glob("series_drip-*.whl")
    env_dir = base / "env"
    # No pip inside: this environment gets the wheel and its dependencies from our pip.
    venv.create(env_dir, with_pip=False, clear=True)
    target = ["--python", str(env_dir / "bin" / "python")]
    subprocess.run(
        [*pip, *target, "install", "--quiet", "--no-compile", str(wheel)],
        check=True,
        timeout=600,
    )
    home = base / "home"
    home.mkdir()
    yield Installed(wheel, env_dir, home)


def test_the_wheel_carries_what_the_tool_reads_at_run_time(installed: Installed) -> None:
    """Templates, the init skeleton and the migrations are in the wheel; nothing else of
    the repository (tests, the example workspace) is."""
    names = zipfile.ZipFile(installed.wheel).namelist()
    for expected in (
        "pipeline/templates/email.mjml.j2",
        "pipeline/templates/email.txt.j2",
        "pipeline/templates/partials/continue.mjml.j2",
        "pipeline/templates/partials/continue.txt.j2",
        "pipeline/templates/confirm.subject.j2",
        "pipeline/templates/confirm.mjml.j2",
        "pipeline/templates/confirm.txt.j2",
        "pipeline/store/migrations/versions/0007_signups.py",
        "pipeline/skeleton/series.toml.tmpl",
        "pipeline/skeleton/dot-gitignore",
        "pipeline/skeleton/dot-github/workflows/send.yml.tmpl",
        "pipeline/skeleton/dot-github/workflows/check.yml.tmpl",
        "pipeline/store/migrations/env.py",
        "pipeline/store/migrations/versions/0001_subscribers_enrollments_ledger.py",
    ):
        assert expected in names
    assert not [n for n in names if n.startswith(("tests/", "series/", "templates/"))]


def test_version_and_package_come_from_the_installed_wheel(installed: Installed) -> None:
    """`series --version` reads the installed metadata; `pipeline` is the installed one."""
    result = installed.series(installed.home, "--version")
    assert result.stdout == "series, version 0.1.0\n", result.stderr
    where = subprocess.run(
        [str(installed.bin / "python"), "-c", "import pipeline; print(pipeline.__file__)"],
        cwd=installed.home,
        env=installed.env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(installed.bin.parent)


def test_a_new_workspace_works_from_the_installed_wheel(installed: Installed) -> None:
    """Done when of issue 11: init, then check, preview, subscribers add and send inside
    the new workspace and from its series folder, with no templates copied; a second
    init refuses; init --templates ejects them."""
    home = installed.home

    def ok(cwd: Path, *args: str) -> str:
        result = installed.series(cwd, *args)
        assert result.returncode == 0, f"series {' '.join(args)}:\n{result.stdout}{result.stderr}"
        return result.stdout

    assert "Next steps:" in ok(home, "init", "myblog")
    blog = home / "myblog"
    deep = blog / "series" / SLUG
    sends = []
    for where, reader in ((blog, "reader@example.com"), (deep, "second@example.com")):
        ok(where, "check")
        ok(where, "preview")
        ok(where, "subscribers", "add", reader, "--series", SLUG)
        sends.append(ok(where, "send"))
    assert sends == ["sent 1, failed 0, retried 0, unknown 0, skipped 0\n"] * 2
    assert len(list((blog / "outbox").glob("*.eml"))) == 2
    assert len(list((blog / "build" / "preview" / SLUG).glob("*.html"))) == 2
    assert not (blog / "templates").exists()
    assert not (deep / "build").exists() and not (deep / "outbox").exists()

    again = installed.series(home, "init", "myblog")
    assert again.returncode == 1
    assert "already configures a workspace; nothing changed" in again.stderr

    ejected = ok(deep, "init", "--templates")
    assert "copied templates/email.mjml.j2" in ejected
    assert (blog / "templates" / "partials" / "continue.mjml.j2").is_file()
    assert installed.series(blog, "init", "--templates").returncode == 1
    ok(blog, "check")
