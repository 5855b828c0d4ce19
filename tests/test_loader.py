"""Built-in templates, overridable per file: what a workspace renders with, and the cache key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.content import load_series
from pipeline.errors import RenderError
from pipeline.loader import BUILTIN_DIR, Templates
from pipeline.render import Personal, Renderer

from .conftest import EXAMPLE_NOW, BuildWorkspace

READER = Personal("Ann", "ann@example.com", "https://u.example/1")


def _render(root: Path, *, use_cache: bool = False) -> tuple[str, str]:
    config = load_config(root)
    (series,), _ = load_series(config)
    email = (
        Renderer(config, now=EXAMPLE_NOW, use_cache=use_cache)
        .compile(series, series.articles[0])
        .personalise(READER)
    )
    return email.html, email.text


def test_a_workspace_without_templates_uses_the_built_in_ones(
    workspace: BuildWorkspace,
) -> None:
    """With no templates/ folder at all, every template comes from the package."""
    root = workspace()
    with_folder = _render(root)
    shutil.rmtree(root / "templates")
    assert _render(root) == with_folder
    files = Templates(root / "templates").files
    assert sorted(files) == [
        "confirm.mjml.j2",
        "confirm.subject.j2",
        "confirm.txt.j2",
        "email.mjml.j2",
        "email.txt.j2",
        "partials/continue.mjml.j2",
        "partials/continue.txt.j2",
    ]
    assert all(f.builtin and f.path.is_relative_to(BUILTIN_DIR) for f in files.values())


def test_a_workspace_file_overrides_that_one_file(workspace: BuildWorkspace) -> None:
    """templates/partials/continue.txt.j2 replaces the built-in text block only; the HTML
    part and the text email around it stay built-in."""
    root = workspace()
    html_before, _ = _render(root)
    override = root / "templates" / "partials" / "continue.txt.j2"
    override.parent.mkdir(parents=True)
    override.write_text("OUR OWN BLOCK: part {{ continue.part }}\n", encoding="utf-8")
    html, text = _render(root)
    assert "OUR OWN BLOCK: part 1" in text
    assert "CONTINUE THE SERIES" not in text
    assert "Hi Ann," in text  # the rest of the text email is still the built-in one
    assert html == html_before
    files = Templates(root / "templates").files
    assert files["partials/continue.txt.j2"].origin == "workspace"
    assert files["partials/continue.mjml.j2"].origin == "built-in"


def test_cache_key_knows_which_file_was_used(workspace: BuildWorkspace) -> None:
    """A workspace copy of a built-in template, even byte for byte the same, is another
    template version to the MJML cache; so is any edit to it."""
    root = workspace()
    cache = root / ".series-cache" / "mjml"
    _render(root, use_cache=True)
    assert len(list(cache.glob("*.html"))) == 1
    copy = root / "templates" / "email.mjml.j2"
    shutil.copy(BUILTIN_DIR / "email.mjml.j2", copy)
    _render(root, use_cache=True)
    assert len(list(cache.glob("*.html"))) == 2
    # A comment changes nothing in the rendered MJML, but it is another file content.
    copy.write_text("{# ours #}" + copy.read_text(encoding="utf-8"), encoding="utf-8")
    _render(root, use_cache=True)
    assert len(list(cache.glob("*.html"))) == 3
    _render(root, use_cache=True)
    assert len(list(cache.glob("*.html"))) == 3


def test_an_error_in_an_override_names_the_workspace_file(workspace: BuildWorkspace) -> None:
    """A broken override is reported at its own path and line, as before."""
    root = workspace()
    override = root / "templates" / "partials" / "continue.mjml.j2"
    override.parent.mkdir(parents=True)
    override.write_text("<mj-section>\n{{ nothing_here }}\n</mj-section>\n", encoding="utf-8")
    config = load_config(root)
    (series,), _ = load_series(config)
    renderer = Renderer(config, now=EXAMPLE_NOW, use_cache=False)
    with pytest.raises(RenderError) as caught:
        renderer.compile(series, series.articles[0])
    assert str(caught.value) == (
        "templates/partials/continue.mjml.j2:2: template could not render: "
        "'nothing_here' is undefined"
    )
