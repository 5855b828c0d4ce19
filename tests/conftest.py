"""Shared fixtures: the example workspace, and small workspaces built from fixture files."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from .fake_postmark import FakePostmark
from .helpers import configure, enroll_examples, import_readers

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


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str | None]:
    from .databases import postgres_server

    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_admin_url: str | None
) -> Iterator[str]:
    """Each store test runs twice: on a temporary SQLite file and on a real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    yield from _fresh_postgres(postgres_admin_url)


@pytest.fixture
def postgres_database_url(postgres_admin_url: str | None) -> Iterator[str]:
    """A fresh database on the real PostgreSQL, for tests about PostgreSQL only."""
    yield from _fresh_postgres(postgres_admin_url)


def _fresh_postgres(admin_url: str | None) -> Iterator[str]:
    from .databases import HOW_TO, fresh_database

    if admin_url is None:
        if os.environ.get("CI"):
            pytest.fail(f"{HOW_TO} (CI must not skip PostgreSQL)")
        pytest.skip(HOW_TO)
    with fresh_database(admin_url) as url:
        yield url


@pytest.fixture
def example_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the example workspace, with its own (SQLite) state."""
    root = tmp_path / "example"
    root.mkdir()
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    for name in ("series", "templates"):
        shutil.copytree(ROOT / name, root / name)
    (root / "subscribers").mkdir()
    shutil.copy(ROOT / "subscribers" / "example.csv", root / "subscribers" / "example.csv")
    monkeypatch.delenv("SERIES_DATABASE_URL", raising=False)
    return root


@pytest.fixture
def postgres_workspace(
    example_copy: Path, postgres_admin_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """The example workspace with its state on a fresh PostgreSQL database (through
    SERIES_DATABASE_URL), for sends that only PostgreSQL can show."""
    for url in _fresh_postgres(postgres_admin_url):
        monkeypatch.setenv("SERIES_DATABASE_URL", url)
        yield example_copy


@pytest.fixture(params=["sqlite", "postgresql"])
def each_database(
    request: pytest.FixtureRequest,
    example_copy: Path,
    monkeypatch: pytest.MonkeyPatch,
    postgres_admin_url: str | None,
) -> Iterator[str]:
    """The example workspace's state in its own SQLite file and, the test run again, in a
    fresh database on the real PostgreSQL (through SERIES_DATABASE_URL, as a deployment
    names it): for the guarantees that must hold on both (crashes, leases). Use with
    ``pytestmark = pytest.mark.usefixtures("each_database")``; yields the URL."""
    if request.param == "sqlite":
        yield f"sqlite:///{example_copy / 'subscribers' / 'state.db'}"
        return
    for url in _fresh_postgres(postgres_admin_url):
        monkeypatch.setenv("SERIES_DATABASE_URL", url)
        yield url


POSTMARK_TOKEN = "server-token-for-tests"


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy configured on the machine must not intercept requests meant for the fakes
    and servers the tests start on 127.0.0.1."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.fixture
def postmark(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakePostmark]:
    """The fake Postmark on 127.0.0.1, with the token and its URL in the environment."""
    with FakePostmark(token=POSTMARK_TOKEN) as fake:
        monkeypatch.setenv("POSTMARK_SERVER_TOKEN", POSTMARK_TOKEN)
        monkeypatch.setenv("SERIES_PROVIDER_URL", fake.url)
        yield fake


@pytest.fixture
def postmark_example(example_copy: Path) -> Path:
    """The example workspace sending through Postmark, with the six example subscribers."""
    configure(example_copy, 'provider = "postmark"')
    return enroll_examples(example_copy)


@pytest.fixture
def readers(example_copy: Path) -> list[str]:
    """Two readers in Europe/Stockholm imported into the example workspace, which sends
    through Postmark (tests/test_send_revision.py, tests/test_revision_writers.py):
    their addresses."""
    configure(example_copy, 'provider = "postmark"')
    return import_readers(example_copy, 2, zones=["Europe/Stockholm"] * 2)
