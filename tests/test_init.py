"""`series init`: a new workspace that checks, previews and sends at once; refusals;
ejecting the built-in templates."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import UTM_KEYS, _Validator, load_config
from pipeline.loader import BUILTIN_DIR
from pipeline.scaffold import placeholder_problems

from .helpers import run

SLUG = "getting-started"
MADE = [
    ".github/workflows/check.yml",
    ".github/workflows/send.yml",
    ".gitignore",
    f"series/{SLUG}/01-how-it-arrives.md",
    f"series/{SLUG}/02-make-it-yours.md",
    f"series/{SLUG}/series.yml",
    "series.toml",
    "subscribers/subscribers.csv",
]


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _init(tmp_path: Path, *args: str) -> tuple[int, str, str, Path]:
    """`series init tmp_path/blog ARGS…`."""
    root = tmp_path / "blog"
    code, out, err = run(tmp_path, "init", str(root), *args)
    return code, out, err, root


NO_POSTAL_ADDRESS = (
    "series.toml: warning: no postal_address: the CAN-SPAM Act requires a physical postal "
    "address in commercial email, and bulk-sender guidelines expect one; set postal_address "
    "(a street address or a registered P.O. box) so every footer shows it"
)


def _set_postal_address(root: Path) -> None:
    toml = root / "series.toml"
    text = toml.read_text(encoding="utf-8").replace("# postal_address = ", "postal_address = ", 1)
    toml.write_text(text, encoding="utf-8")


def _warnings(out: str) -> list[str]:
    """The lines of `series check` output that are problems (not the --strict note)."""
    return [line + "\n" for line in out.splitlines() if not line.startswith("note: ")]


def test_init_makes_a_workspace_that_works_at_once(tmp_path: Path) -> None:
    """A new folder gets exactly the promised files, and the new workspace checks (two
    placeholder warnings), previews and sends part 1 to a new reader through the outbox,
    with no templates/ folder."""
    code, out, err, root = _init(tmp_path)
    assert code == 0, err
    assert sorted(_tree(root)) == sorted(MADE)
    assert "Next steps:" in out and f"--series {SLUG}" in out
    assert (root / "subscribers" / "subscribers.csv").read_text() == (
        "email,name,timezone,series,start_part\n"
    )

    code, out, err = run(root, "check")
    assert code == 0, out + err
    assert out.splitlines() == [
        "series.toml:7: warning: 'site_url' is still an example address (example.com): "
        "put in your own before sending to anyone",
        "series.toml:57: warning: 'from.name' is still the example name ('Your Name'): "
        "put in your own (or remove it to send from the address alone)",
        "series.toml:58: warning: 'from.email' is still an example address (example.com): "
        "put in your own before sending to anyone",
        NO_POSTAL_ADDRESS,
    ]
    assert err == "checked 2 article(s) in 1 series: 0 errors, 4 warnings\n"
    assert run(root, "check", "--strict")[0] == 1

    assert run(root, "preview")[0] == 0
    assert len(list((root / "build" / "preview" / SLUG).glob("*.eml"))) == 2
    assert run(root, "subscribers", "add", "reader@example.com", "--series", SLUG)[0] == 0
    code, out, err = run(root, "send")
    assert (code, out) == (0, "sent 1, failed 0, retried 0, unknown 0, skipped 0\n"), err
    (sent,) = (root / "outbox").glob("*.eml")
    assert "Subject: How a series reaches its readers (Getting Started, part 1 of 2)" in (
        sent.read_text()
    )
    assert not (root / "templates").exists()


def test_site_url_and_from_fill_in_the_required_keys(tmp_path: Path) -> None:
    """--site-url and --from go into series.toml; then check warns only that the
    postal address is still to be set (CAN-SPAM), and is silent once it is."""
    code, _, err, root = _init(
        tmp_path,
        "--site-url",
        "https://annwrites.example",
        "--from",
        "Ann Lee <ann@annwrites.example>",
    )
    assert code == 0, err
    config = load_config(root)
    assert config.site_url == "https://annwrites.example"
    assert (config.sender.name, config.sender.email) == ("Ann Lee", "ann@annwrites.example")
    code, out, err = run(root, "check")
    assert (code, out) == (0, NO_POSTAL_ADDRESS + "\n"), err
    _set_postal_address(root)
    code, out, err = run(root, "check", "--strict")
    assert (code, _warnings(out)) == (0, []), err


def test_postal_address_makes_a_workspace_whose_ci_passes(tmp_path: Path) -> None:
    """With --site-url, --from and --postal-address the new workspace passes the
    `series check --strict` its own check workflow runs; the footer shows the address."""
    address = "Ann Lee, 1 Main Street, 12345 Springfield"
    code, out, err, root = _init(
        tmp_path,
        "--site-url",
        "https://annwrites.example",
        "--from",
        "Ann Lee <ann@annwrites.example>",
        "--postal-address",
        f"  {address} ",
    )
    assert code == 0, err
    assert "your postal_address" not in out and "fails until" not in out
    assert "series check --strict" in (root / ".github" / "workflows" / "check.yml").read_text()
    assert load_config(root).postal_address == address
    code, out, err = run(root, "check", "--strict")
    assert (code, _warnings(out)) == (0, []), out + err
    assert run(root, "preview")[0] == 0
    eml = next((root / "build" / "preview" / SLUG).glob("*.eml")).read_text()
    assert "12345 Springfield" in eml


def test_without_a_postal_address_init_says_so_up_front(tmp_path: Path) -> None:
    """A writer who gives --site-url and --from is told, in the next steps, that
    series.toml still needs postal_address and that the CI's strict check fails."""
    code, out, err, root = _init(
        tmp_path, "--site-url", "https://annwrites.example", "--from", "ann@annwrites.example"
    )
    assert code == 0, err
    assert re.search(r"\$EDITOR series.toml +# your postal_address \(CAN-SPAM\)\n", out)
    assert (
        "The check workflow runs `series check --strict`, which fails until series.toml "
        "sets postal_address." in out
    )
    assert '# postal_address = "My Blog, 1 Main Street, 12345 Springfield"' in (
        (root / "series.toml").read_text()
    )
    assert run(root, "check", "--strict")[0] == 1


@pytest.mark.parametrize(
    ("value", "message"),
    [("Main St\nSpringfield", "must be one line"), ("  ", "is empty")],
)
def test_a_bad_postal_address_is_a_usage_error(tmp_path: Path, value: str, message: str) -> None:
    code, _, err, root = _init(tmp_path, "--postal-address", value)
    assert code == 2 and message in err
    assert not root.exists()


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ('Ann"Quote <ann@x.example>', 'Ann"Quote'),
        ('"Lee, Ann" <ann@x.example>', "Lee, Ann"),
        ("  Ann   Lee  <ann@x.example>", "Ann Lee"),
    ],
)
def test_from_takes_one_name_and_address(tmp_path: Path, value: str, name: str) -> None:
    """A name with a quote or (quoted) a comma is taken as written, spaces made one."""
    code, _, err, root = _init(tmp_path, "--from", value)
    assert code == 0, err
    config = load_config(root)
    assert (config.sender.name, config.sender.email) == (name, "ann@x.example")


def test_a_bare_from_address_leaves_the_name_unset(tmp_path: Path) -> None:
    """--from with an address alone writes no name (never the "Your Name" placeholder),
    so the mail comes from the address alone and check --strict passes."""
    code, _, err, root = _init(
        tmp_path, "--site-url", "https://myblog.example", "--from", "ann@myblog.example"
    )
    assert code == 0, err
    config = load_config(root)
    assert (config.sender.name, config.sender.email) == ("", "ann@myblog.example")
    _set_postal_address(root)
    code, out, err = run(root, "check", "--strict")
    assert (code, _warnings(out)) == (0, []), err


def test_the_placeholder_name_warns_after_the_address_is_changed(tmp_path: Path) -> None:
    """A writer who changed only from.email still sends as "Your Name": check warns at
    from.name's line and --strict fails."""
    code, _, err, root = _init(tmp_path, "--site-url", "https://myblog.example")
    assert code == 0, err
    toml = root / "series.toml"
    toml.write_text(
        toml.read_text().replace("you@example.com", "ann@myblog.example"), encoding="utf-8"
    )
    _set_postal_address(root)
    code, out, err = run(root, "check", "--strict")
    assert code == 1
    assert "".join(_warnings(out)) == (
        "series.toml:57: warning: 'from.name' is still the example name ('Your Name'): "
        "put in your own (or remove it to send from the address alone)\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--site-url", "myblog.example"], "is not an http(s) address"),
        (["--site-url", "https://myblog.example?x=1"], "contains a query (?…)"),
        (["--site-url", "https://x.example#frag"], "contains a fragment (#…)"),
        (["--site-url", "https://user:pw@x.example"], "contains login details"),
        (["--site-url", "https://x.example:99999"], "has an invalid port (99999)"),
        (["--site-url", "https://x.example/a b"], "contains a space"),
        (["--from", "Ann <not an address>"], "is not a valid address"),
        (["--templates", "--site-url", "https://a.example"], "are for a new workspace"),
        (["--from", "Ann Lee <ann@myblog.example> extra"], "has text after the <address>: 'extra'"),
        (["--from", "Ann <a@x.example>, Bob <b@x.example>"], "names more than one address"),
        (["--from", "a@x.example, b@x.example"], "is not one address"),
        (
            ["--from", "Ann\nBcc: x@evil.example <ann@x.example>"],
            "must be one line: it contains a line break (U+000A)",
        ),
        (["--from", "Ann <>"], "has no address between < and >"),
        (["--from", "Ann <ann@x.example"], "has a < or > that does not enclose the address"),
    ],
)
def test_bad_options_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    """A wrong --site-url or --from is a usage error (exit 2), and nothing is made."""
    code, _, err, root = _init(tmp_path, *args)
    assert code == 2
    assert message in err
    assert not root.exists()


def test_series_toml_names_every_key(tmp_path: Path) -> None:
    """Every configuration key appears in the new series.toml, most of them commented
    out, so a writer sees what there is to set."""
    _, _, _, root = _init(tmp_path)
    text = (root / "series.toml").read_text(encoding="utf-8")
    keys = {m.group(1) for m in re.finditer(r"^#? ?\[?([a-z_]+)", text, re.MULTILINE)}
    assert set(_Validator.KEYS) <= keys
    for key in (*UTM_KEYS, "message_stream", "batch_size", "region", "domain", "days", "start"):
        assert re.search(rf"^# {key} = ", text, re.MULTILINE), key
    # Uncommented, it is still a valid configuration.
    assert set(tomllib.loads(text)) == {"site_url", "from"}


def test_a_second_init_refuses_and_changes_nothing(tmp_path: Path) -> None:
    """Init where series.toml exists, or below it in a subfolder, exits 1 and changes nothing."""
    _, _, _, root = _init(tmp_path)
    before = _tree(root)
    code, out, err = run(tmp_path, "init", str(root))
    assert code == 1 and out == ""
    assert err == (
        f"Error: {root / 'series.toml'} already configures a workspace; nothing changed "
        "(`series init --templates` copies the built-in templates into it)\n"
    )
    assert _tree(root) == before


def test_init_in_a_subfolder_of_a_workspace_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without DIR, init works on the workspace the current folder is in: refused."""
    _, _, _, root = _init(tmp_path)
    monkeypatch.chdir(root / "series" / SLUG)
    monkeypatch.delenv("SERIES_WORKSPACE", raising=False)
    result = CliRunner().invoke(cli, ["init"])
    assert result.exit_code == 1
    assert "already configures a workspace" in result.stderr
    assert not (root / "series" / SLUG / "series.toml").exists()


def test_pyproject_with_tool_series_also_refuses(tmp_path: Path) -> None:
    """A folder configured by [tool.series] in pyproject.toml is a workspace too."""
    root = tmp_path / "blog"
    root.mkdir()
    (root / "pyproject.toml").write_text("[tool.series]\n", encoding="utf-8")
    code, _, err = run(tmp_path, "init", str(root))
    assert code == 1 and "pyproject.toml already configures a workspace" in err
    assert _tree(root) == {"pyproject.toml": b"[tool.series]\n"}


def test_init_next_to_existing_files(tmp_path: Path) -> None:
    """In a folder that already has a repository: an existing .gitignore gets the missing
    lines; a file init would write refuses the whole init."""
    root = tmp_path / "blog"
    root.mkdir()
    (root / ".gitignore").write_text("node_modules/\nbuild/", encoding="utf-8")
    (root / "index.md").write_text("hello\n", encoding="utf-8")
    code, out, err = run(tmp_path, "init", str(root))
    assert code == 0, err
    assert ".gitignore (added subscribers/state.db*, outbox/, .series-cache/)" in out
    assert (root / ".gitignore").read_text() == (
        "node_modules/\nbuild/\n# series\nsubscribers/state.db*\noutbox/\n.series-cache/\n"
    )

    other = tmp_path / "other"
    (other / ".github" / "workflows").mkdir(parents=True)
    (other / ".github" / "workflows" / "send.yml").write_text("ours\n", encoding="utf-8")
    code, _, err = run(tmp_path, "init", str(other))
    assert code == 1
    assert (
        err == f"Error: .github/workflows/send.yml already exist(s) in {other}; nothing changed\n"
    )
    assert _tree(other) == {".github/workflows/send.yml": b"ours\n"}


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize(
    ("made", "file", "shown"),
    [
        ("blog", "blog/subscribers", "subscribers"),
        ("blog/.github", "blog/.github/workflows", ".github/workflows"),
        ("blog", "blog/series", "series"),
        ("", "blog", "{tmp}/blog"),
    ],
)
def test_a_file_where_a_folder_goes_refuses_and_changes_nothing(
    tmp_path: Path, made: str, file: str, shown: str
) -> None:
    """A file at the place of a folder init would make (subscribers/, .github/workflows/,
    or the workspace folder itself, `series init afile/sub`) is one error line, exit 1,
    before anything is written."""
    (tmp_path / made).mkdir(parents=True, exist_ok=True)
    (tmp_path / file).write_text("mine\n", encoding="utf-8")
    before = _tree(tmp_path)
    code, out, err = run(
        tmp_path, "init", str(tmp_path / "blog" / "sub" if not made else tmp_path / "blog")
    )
    assert (code, out) == (1, "")
    assert err == (
        f"Error: {shown.format(tmp=tmp_path)} is a file where series init would make a "
        "folder; nothing changed\n"
    )
    assert _tree(tmp_path) == before


def test_gitignore_keeps_personal_data_and_outputs_out_of_git(tmp_path: Path) -> None:
    """git itself ignores the state database (and its -wal/-shm files), the outbox, the
    previews and the compile cache of a new workspace, and nothing init wrote."""
    _, _, _, root = _init(tmp_path)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    ignored = [
        "subscribers/state.db",
        "subscribers/state.db-wal",
        "subscribers/state.db-shm",
        "outbox/a.eml",
        "build/preview/a.html",
        ".series-cache/mjml/a.html",
    ]
    check = subprocess.run(
        ["git", "check-ignore", "--no-index", *ignored, *MADE],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.stdout.splitlines() == ignored


def test_init_templates_ejects_the_built_in_templates_once(tmp_path: Path) -> None:
    """--templates copies every built-in template into templates/ (the workspace renders
    the same), then refuses to overwrite them."""
    _, _, _, root = _init(tmp_path)
    assert run(root, "preview", "--out", "before")[0] == 0
    code, out, err = run(root, "init", "--templates")
    assert code == 0, err
    names = sorted(p.relative_to(BUILTIN_DIR).as_posix() for p in BUILTIN_DIR.rglob("*.j2"))
    assert [line.removeprefix("copied templates/") for line in out.splitlines()[:-1]] == names
    for name in names:
        assert (root / "templates" / name).read_bytes() == (BUILTIN_DIR / name).read_bytes()
    assert run(root, "preview", "--out", "after")[0] == 0
    made = sorted(p.relative_to(root / "before") for p in (root / "before").rglob("*.*"))
    assert len(made) == 6
    for path in (p for p in made if p.suffix in (".html", ".txt")):
        assert (root / "after" / path).read_bytes() == (root / "before" / path).read_bytes()

    (root / "templates" / "email.txt.j2").write_text("edited\n", encoding="utf-8")
    code, out, err = run(root, "init", "--templates")
    assert code == 1 and out == ""
    assert err.startswith(
        "Error: templates/confirm.mjml.j2, templates/confirm.subject.j2, "
        "templates/confirm.txt.j2, templates/email.mjml.j2, templates/email.txt.j2,"
    )
    assert "nothing copied" in err
    assert (root / "templates" / "email.txt.j2").read_text() == "edited\n"


def test_init_templates_needs_a_workspace(tmp_path: Path) -> None:
    """--templates outside any workspace says so, and copies nothing."""
    code, _, err = run(tmp_path, "init", "--templates", str(tmp_path))
    assert code == 1
    assert err == f"Error: {tmp_path} is not a workspace; run `series init` there first\n"
    assert not (tmp_path / "templates").exists()


def test_placeholders_warn_in_pyproject_too(tmp_path: Path) -> None:
    """The example.com warnings name the line in pyproject.toml's [tool.series] as well."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.series]\nsite_url = "https://www.example.org"\n'
        'reply_to = "me@example.net"\n\n[tool.series.from]\nemail = "me@mine.example"\n',
        encoding="utf-8",
    )
    problems = placeholder_problems(load_config(tmp_path))
    assert [(p.path, p.line, p.message.split(" is ")[0]) for p in problems] == [
        ("pyproject.toml", 5, "'site_url'"),
        ("pyproject.toml", 6, "'reply_to'"),
    ]
