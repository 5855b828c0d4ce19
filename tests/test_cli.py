"""The `series` command as editors run it: exit codes, exact lines, files written."""

from __future__ import annotations

import email
import email.policy
import os
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli

from .conftest import ROOT, BuildWorkspace


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_check_example_is_clean() -> None:
    """`series check` on the example workspace exits 0 with no problems at all."""
    code, out, err = run("--workspace", str(ROOT), "check", "--now", "2026-11-28T12:00:00+00:00")
    assert (code, out) == (0, "")
    assert err == "checked 5 article(s) in 1 series: 0 errors, 0 warnings\n"


def test_check_example_today() -> None:
    """`series check` also passes at the real current time, with no warnings."""
    code, out, err = run("--workspace", str(ROOT), "check", "--strict")
    # Only the note on where `series serve` must answer (self-hosted unsubscribe).
    assert code == 0, out
    assert [line.split(":")[0] for line in out.splitlines()] == ["note"], out
    assert "0 errors, 0 warnings" in err


def test_check_bad_content_exits_1_with_lines(workspace: BuildWorkspace) -> None:
    """Problems print one per line as path:line: message, and the exit code is 1."""
    root = workspace({"01-valid.md": "valid_article", "02-typo.md": "article_with_unknown_key"})
    typo = root / "series/demo/02-typo.md"
    typo.write_text(typo.read_text().replace("part: 1", "part: 2"))
    code, out, err = run("--workspace", str(root), "check")
    assert code == 1
    assert (
        out == "series/demo/02-typo.md:4: unknown key 'delay_dayz' (did you mean 'delay_days'?)\n"
    )
    assert err == "checked 2 article(s) in 1 series: 1 error, 0 warnings\n"


def test_check_warnings_fail_only_when_strict(workspace: BuildWorkspace) -> None:
    """Warnings are printed and exit 0; --strict makes them fail."""
    root = workspace({"01-image.md": "article_with_image_without_alt"})
    code, out, _ = run("--workspace", str(root), "check")
    assert code == 0 and "warning: image has no alt text" in out
    assert run("--workspace", str(root), "check", "--strict")[0] == 1


def test_check_warns_about_plain_http_unsubscribe_links(workspace: BuildWorkspace) -> None:
    """A site on plain http gives unsubscribe links mailbox providers will not one-click."""
    root = workspace()
    config = root / "series.toml"
    config.write_text(
        config.read_text(encoding="utf-8").replace("https://", "http://"), encoding="utf-8"
    )

    code, out, _ = run("--workspace", str(root), "check")

    assert code == 0
    assert (
        "series.toml: warning: unsubscribe links would be http://blog.example/u/…: Gmail and "
        "Yahoo require an https:// one-click link; set unsubscribe_url or an https site_url\n"
    ) in out
    assert run("--workspace", str(root), "check", "--strict")[0] == 1


def test_template_error_stops_check_once(workspace: BuildWorkspace) -> None:
    """A broken template is reported once, naming it, even with several parts."""
    root = workspace(
        {"01-valid.md": "valid_article", "02-draft.md": "draft_article"},
        html_template="template_with_syntax_error.mjml.j2",
    )
    code, out, _ = run("--workspace", str(root), "check")
    assert code == 1
    assert out.count("templates/email.mjml.j2:4: template syntax error:") == 1


def test_workspace_from_environment(workspace: BuildWorkspace) -> None:
    """SERIES_WORKSPACE picks the workspace when --workspace is not given."""
    root = workspace()
    code, _, err = run("check", env={"SERIES_WORKSPACE": str(root)})
    assert code == 0
    assert "checked 1 article(s) in 1 series" in err


def test_missing_config_is_one_line(tmp_path: Path) -> None:
    """A directory without configuration is a single Error line, exit 1, no traceback."""
    code, _, err = run("--workspace", str(tmp_path), "check")
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("Error: ")
    assert "no workspace configuration" in err


def test_preview_writes_html_text_and_eml(tmp_path: Path) -> None:
    """`series preview SERIES/PART` writes the three files; the .eml is complete MIME."""
    out_dir = tmp_path / "preview"
    code, _, _ = run(
        "--workspace",
        str(ROOT),
        "preview",
        "attachment/2",
        "--out",
        str(out_dir),
        "--now",
        "2026-11-28T12:00",
    )
    assert code == 0
    stem = out_dir / "attachment" / "02-secure"
    assert {p.name for p in stem.parent.iterdir()} == {
        "02-secure.html",
        "02-secure.txt",
        "02-secure.eml",
    }
    message = email.message_from_bytes(
        stem.with_suffix(".eml").read_bytes(), policy=email.policy.default
    )
    assert isinstance(message, EmailMessage)
    assert message.get_content_type() == "multipart/alternative"
    assert message["Subject"] == "Secure attachment (Attachment Styles, part 2 of 5)"
    assert message["From"] == "Maya at Steady Ground <maya@steadyground.example>"
    assert message["List-Unsubscribe"] == "<https://steadyground.example/u/sample>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text_part = message.get_body(preferencelist=("plain",))
    html_part = message.get_body(preferencelist=("html",))
    assert text_part is not None and html_part is not None
    assert text_part.get_content() == stem.with_suffix(".txt").read_text()
    assert html_part.get_content() == stem.with_suffix(".html").read_text()


def test_preview_progress_option(tmp_path: Path) -> None:
    """--progress K shows the block as seen by a reader who has received K parts."""
    code, _, _ = run(
        "--workspace",
        str(ROOT),
        "preview",
        "attachment/3",
        "--out",
        str(tmp_path),
        "--progress",
        "1",
        "--now",
        "2026-11-28T12:00",
    )
    assert code == 0
    text = (tmp_path / "attachment" / "03-anxious.txt").read_text()
    assert "1. What attachment styles are (in your inbox)" in text
    assert "2. Secure attachment (in your inbox)" not in text


def test_preview_whole_series_by_slug(tmp_path: Path) -> None:
    """`series preview attachment` writes every part, drafts included, and lists them."""
    code, out, _ = run("--workspace", str(ROOT), "preview", "attachment", "--out", str(tmp_path))
    assert code == 0
    assert len(list((tmp_path / "attachment").glob("*.eml"))) == 5
    assert len(out.splitlines()) == 5


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nope", "Error: no series 'nope' (series in this workspace: attachment)\n"),
        (
            "attachment/9",
            "Error: series 'attachment' has no part '9' (parts: 1 (attachment-theory), "
            "2 (secure), 3 (anxious), 4 (avoidant), 5 (disorganized))\n",
        ),
    ],
)
def test_preview_unknown_target(tmp_path: Path, target: str, message: str) -> None:
    """An unknown series or part is one clear line naming what exists, exit 1."""
    code, _, err = run("--workspace", str(ROOT), "preview", target, "--out", str(tmp_path))
    assert (code, err) == (1, message)


def test_bad_now_is_a_usage_error() -> None:
    """A --now that is not ISO-8601 is a usage error (exit 2)."""
    code, _, err = run("--workspace", str(ROOT), "check", "--now", "tomorrow")
    assert code == 2 and "'tomorrow' is not an ISO-8601 time" in err


def test_python_dash_m_entry_point() -> None:
    """`python -m pipeline` runs the same CLI as the `series` script."""
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "--help"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0
    assert "preview" in result.stdout and "check" in result.stdout
