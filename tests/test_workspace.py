"""Finding the workspace: the nearest one at or above the current folder, like git."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.workspace import configured_by, nearest_workspace

from .conftest import BuildWorkspace


def _check(env: dict[str, str | None] | None = None, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [*args, "check"], env=env, catch_exceptions=False)
    return result.exit_code, result.stderr


def test_runs_from_a_subfolder_of_the_workspace(
    workspace: BuildWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`series check` in series/demo/ finds the workspace two levels up."""
    root = workspace()
    monkeypatch.chdir(root / "series" / "demo")
    code, err = _check({"SERIES_WORKSPACE": None})
    assert code == 0, err
    assert "checked 1 article(s) in 1 series" in err


def test_the_nearest_workspace_wins(tmp_path: Path) -> None:
    """A workspace inside another one is found first; a pyproject.toml without
    [tool.series] on the way does not count."""
    outer = tmp_path / "outer"
    inner = outer / "blog"
    deep = inner / "tools" / "scripts"
    deep.mkdir(parents=True)
    (outer / "pyproject.toml").write_text("[tool.series]\nsite_url = 'x'\n", encoding="utf-8")
    (inner / "series.toml").write_text("", encoding="utf-8")
    (inner / "tools" / "pyproject.toml").write_text("[project]\nname = 'x'\n", encoding="utf-8")
    assert nearest_workspace(deep) == inner.resolve()
    assert nearest_workspace(outer) == outer.resolve()
    assert configured_by(inner / "tools") is None
    assert nearest_workspace(tmp_path) is None


def test_broken_pyproject_with_the_table_is_still_the_workspace(tmp_path: Path) -> None:
    """Invalid TOML that has [tool.series] is the workspace, so the error names its line
    instead of some folder further up being used."""
    (tmp_path / "pyproject.toml").write_text("[tool.series]\nsite_url = \n", encoding="utf-8")
    assert nearest_workspace(tmp_path) == tmp_path.resolve()


def test_workspace_option_and_environment_beat_the_search(
    workspace: BuildWorkspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--workspace and SERIES_WORKSPACE name the workspace; the current folder is not searched."""
    root = workspace()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(root / "series")
    assert _check({"SERIES_WORKSPACE": str(elsewhere)})[0] == 1
    assert _check({"SERIES_WORKSPACE": None}, "--workspace", str(elsewhere))[0] == 1
    monkeypatch.chdir(elsewhere)
    assert _check({"SERIES_WORKSPACE": str(root)})[0] == 0


def test_no_workspace_anywhere_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside any workspace: one Error line naming the current folder, exit 1."""
    monkeypatch.chdir(tmp_path)
    code, err = _check({"SERIES_WORKSPACE": None})
    assert code == 1
    assert err == (
        f"Error: {tmp_path.resolve()}: no workspace configuration: add series.toml or "
        "[tool.series] to pyproject.toml, or pass --workspace DIR\n"
    )
