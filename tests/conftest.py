"""Shared fixtures: the example workspace, and small workspaces built from fixture files."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# The moment the golden files and example tests are rendered at: parts 1–3 are
# out, part 4 is a draft and part 5 is due to be published in 2027.
EXAMPLE_NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)

DEMO_SERIES = "title: Demo Series\ncadence_days: 3\n"

BuildWorkspace = Callable[..., Path]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite tests/golden/ from the current rendering instead of comparing",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture
def workspace(tmp_path: Path) -> BuildWorkspace:
    """Build a workspace: repo templates, a fixture config, articles from fixture files."""

    def build(
        articles: dict[str, str] | None = None,
        *,
        config: str = "config_valid.toml",
        series_yml: str | None = DEMO_SERIES,
        html_template: str | None = None,
    ) -> Path:
        root = tmp_path / "ws"
        root.mkdir()
        shutil.copy(FIXTURES / "config" / config, root / "series.toml")
        shutil.copytree(ROOT / "templates", root / "templates")
        if html_template is not None:
            shutil.copy(
                FIXTURES / "templates" / html_template, root / "templates" / "email.mjml.j2"
            )
        demo = root / "series" / "demo"
        demo.mkdir(parents=True)
        if series_yml is not None:
            (demo / "series.yml").write_text(series_yml, encoding="utf-8")
        for name, fixture in (articles or {"01-valid.md": "valid_article"}).items():
            shutil.copy(FIXTURES / "articles" / f"{fixture}.md", demo / name)
        return root

    return build
