"""The GitHub Actions workflows: actionlint passes; send.yml keeps the properties that matter."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.scaffold import workflow

from .conftest import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"
# What `series init` writes for a writer's own repository.
REQUIREMENT = "series-drip @ git+https://github.com/OWNER/series@v0.1.0"
GENERATED = {
    name: workflow(name, REQUIREMENT, f".github/workflows/{name}")
    for name in ("send.yml", "check.yml")
}


def _actionlint() -> Path:
    beside_python = Path(sys.executable).parent / "actionlint"
    if beside_python.is_file():
        return beside_python
    on_path = shutil.which("actionlint")
    if on_path:
        return Path(on_path)
    pytest.fail(
        "actionlint is not installed: install the test extras with pip install -e '.[test]'"
    )


def _load(name: str, text: str | None = None) -> dict[Any, Any]:
    data = yaml.safe_load(text or (WORKFLOWS / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{name} is not a YAML mapping"
    return data


def _steps(workflow: dict[Any, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def _runs_series(step: dict[str, Any], command: str) -> bool:
    """Whether the step's script runs `series COMMAND`, directly or through an args array."""
    pattern = re.compile(rf"(\bseries\s+|\bargs=\(){command}\b")
    return any(
        pattern.search(line)
        for line in (raw.strip() for raw in str(step.get("run", "")).splitlines())
        if not line.startswith(("#", "echo"))
    )


@pytest.fixture(scope="module", params=["this repository", "series init"])
def send(request: pytest.FixtureRequest) -> dict[Any, Any]:
    """This repository's send.yml, and the one `series init` writes: the same guarantees."""
    if request.param == "series init":
        return _load("send.yml", GENERATED["send.yml"])
    return _load("send.yml")


def _actionlint_passes(directory: Path) -> None:
    files = sorted(str(p) for p in directory.iterdir() if p.suffix in {".yml", ".yaml"})
    assert files, f"no workflow files in {directory}"
    # shellcheck (from the test extras) sits beside python; actionlint runs it on every
    # `run:` script when it is given one.
    shellcheck = Path(sys.executable).parent / "shellcheck"
    extra = [f"-shellcheck={shellcheck}"] if shellcheck.is_file() else []
    result = subprocess.run(
        [str(_actionlint()), "-no-color", *extra, *files],
        cwd=directory.parent.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_passes() -> None:
    """actionlint reports nothing on any workflow file of this repository."""
    _actionlint_passes(WORKFLOWS)


def test_actionlint_passes_on_the_workflows_init_writes(tmp_path: Path) -> None:
    """actionlint reports nothing on the send.yml and check.yml `series init` writes."""
    directory = tmp_path / ".github" / "workflows"
    directory.mkdir(parents=True)
    for name, text in GENERATED.items():
        (directory / name).write_text(text, encoding="utf-8")
    _actionlint_passes(directory)


def test_this_repositorys_send_is_the_one_init_writes() -> None:
    """This repository's send.yml is the skeleton's, installing the checkout (`.`) and
    keying the pip cache on pyproject.toml: one workflow to maintain, not two."""
    assert (WORKFLOWS / "send.yml").read_text(encoding="utf-8") == workflow(
        "send.yml", ".", "pyproject.toml"
    )


@pytest.mark.parametrize("name", ["send.yml", "check.yml"])
def test_generated_workflows_install_the_same_version_with_a_pip_cache(name: str) -> None:
    """A writer's workflows install the version of series that ran init (never `pip
    install .`: their repository is not the tool), through setup-python's pip cache."""
    data = _load(name, GENERATED[name])
    (job,) = data["jobs"].values()
    assert job["env"]["SERIES_REQUIREMENT"] == REQUIREMENT
    setup = next(s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/setup-"))
    assert setup["with"]["cache"] == "pip"
    assert setup["with"]["cache-dependency-path"] == f".github/workflows/{name}"
    installs = [s for s in job["steps"] if "pip install" in str(s.get("run", ""))]
    assert [s["run"].count('"$SERIES_REQUIREMENT"') for s in installs] == [1]


def test_send_honours_the_workspace_provider_unless_a_variable_says_otherwise(
    send: dict[Any, Any],
) -> None:
    """No provider is forced: the repository variable SERIES_PROVIDER, when set, else the
    workspace's `provider`, chosen in a step before the send."""
    (job,) = send["jobs"].values()
    assert job["env"]["PROVIDER_VARIABLE"] == "${{ vars.SERIES_PROVIDER }}"
    assert "postmark" not in str(job["env"])
    sending = next(s for s in job["steps"] if _runs_series(s, "send"))
    assert sending["env"]["SERIES_PROVIDER"] == "${{ steps.provider.outputs.name }}"


@pytest.mark.parametrize(
    ("variable", "dry_run", "code", "chosen"),
    [
        ("", "false", 1, None),  # the workspace's outbox: refused for a real send
        ("", "true", 0, "outbox"),  # a dry run may use it
        ("postmark", "false", 0, "postmark"),  # the variable overrides the workspace
    ],
)
def test_provider_step_refuses_the_outbox_for_real_sends(
    tmp_path: Path, variable: str, dry_run: str, code: int, chosen: str | None
) -> None:
    """The provider step, run by bash in a new workspace: the outbox would only write
    files on a throwaway runner, so a real send through it stops there."""
    result = CliRunner().invoke(cli, ["init", str(tmp_path / "blog")])
    assert result.exit_code == 0, result.output
    (job,) = _load("send.yml", GENERATED["send.yml"])["jobs"].values()
    step = next(s for s in job["steps"] if s.get("id") == "provider")
    output = tmp_path / "output"
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "PROVIDER_VARIABLE": variable,
        "DRY_RUN": dry_run,
        "GITHUB_OUTPUT": str(output),
    }
    ran = subprocess.run(
        ["bash", "-e", "-c", step["run"]],
        cwd=tmp_path / "blog",
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ran.returncode == code, ran.stdout + ran.stderr
    if chosen is None:
        assert "::error title=No email provider::" in ran.stdout
        assert not output.exists()
    else:
        assert output.read_text() == f"name={chosen}\n"


def test_check_runs_on_pull_requests_and_uploads_previews() -> None:
    """check.yml: on pull requests, `series check --strict`, then `series preview` whose
    files are uploaded as an artifact."""
    data = _load("check.yml", GENERATED["check.yml"])
    assert "pull_request" in data[True]
    steps = _steps(data)
    runs = [str(s.get("run", "")) for s in steps]
    assert any("series check --strict" in r for r in runs)
    preview = next(i for i, r in enumerate(runs) if "series preview --out build/preview" in r)
    upload = next(i for i, s in enumerate(steps) if "upload-artifact" in str(s.get("uses")))
    assert preview < upload
    assert steps[upload]["with"]["path"] == "build/preview/"


def test_send_runs_hourly_and_on_demand_with_dry_run(send: dict[Any, Any]) -> None:
    """send.yml runs on an hourly schedule and by hand with a boolean dry_run input."""
    triggers = send[True]  # YAML 1.1 reads the key `on` as the boolean True
    crons = [entry["cron"].split() for entry in triggers["schedule"]]
    assert any(minute.isdigit() and rest == ["*", "*", "*", "*"] for minute, *rest in crons), (
        f"no hourly cron in {crons}"
    )
    dry_run = triggers["workflow_dispatch"]["inputs"]["dry_run"]
    assert dry_run["type"] == "boolean"
    assert dry_run["default"] is False


def test_send_is_never_cancelled_by_the_next_run(send: dict[Any, Any]) -> None:
    """send.yml is one concurrency group whose running send is never cancelled."""
    concurrency = send["concurrency"]
    assert concurrency["group"]
    assert concurrency["cancel-in-progress"] is False


def test_send_takes_credentials_from_secrets(send: dict[Any, Any]) -> None:
    """The database URL and every provider's key come from repository secrets, nowhere else."""
    envs = [send.get("env", {})]
    for job in send["jobs"].values():
        envs += [job.get("env", {}), *(step.get("env", {}) for step in job["steps"])]
    for name in (
        "SERIES_DATABASE_URL",
        "POSTMARK_SERVER_TOKEN",
        "RESEND_API_KEY",
        "SENDGRID_API_KEY",
        "MAILGUN_API_KEY",
    ):
        values = [env[name] for env in envs if name in env]
        assert values, f"{name} is never set"
        assert all(v == f"${{{{ secrets.{name} }}}}" for v in values), values


def test_send_never_interpolates_into_scripts(send: dict[Any, Any]) -> None:
    """No run: script contains ${{ }}: inputs and secrets reach scripts through env: only."""
    for step in _steps(send):
        assert "${{" not in str(step.get("run", "")), step.get("name")


def test_send_checks_before_sending_and_always_summarises(send: dict[Any, Any]) -> None:
    """series check runs before series send, and an always() step writes the summary."""
    steps = _steps(send)
    checks = [i for i, step in enumerate(steps) if _runs_series(step, "check")]
    sends = [i for i, step in enumerate(steps) if _runs_series(step, "send")]
    assert checks and sends, "send.yml must run both series check and series send"
    assert min(checks) < min(sends), "series check must run before series send"
    summary = [s for s in steps if "GITHUB_STEP_SUMMARY" in str(s.get("run", ""))]
    assert summary, "no step writes to $GITHUB_STEP_SUMMARY"
    assert all("always()" in str(s.get("if", "")) for s in summary)


def test_ci_runs_what_users_run() -> None:
    """ci.yml runs .ci/run, which runs the README's test command."""
    assert any(".ci/run" in str(step.get("run", "")) for step in _steps(_load("ci.yml")))


@pytest.mark.parametrize("text", [None, GENERATED["send.yml"]], ids=["this repo", "generated"])
def test_send_keeps_the_compiled_emails_between_runs(text: str | None) -> None:
    """The hourly send restores .series-cache/ (actions/cache) before series check, keyed
    on the content, the templates and the version of series, so an unchanged part's
    MJML is not compiled again every hour."""
    steps = _steps(_load("send.yml", text))
    caches = [
        i
        for i, step in enumerate(steps)
        if str(step.get("uses", "")).startswith("actions/cache@")
        and step["with"]["path"] == ".series-cache"
    ]
    assert len(caches) == 1
    key = steps[caches[0]]["with"]["key"]
    for hashed in ("'series/**'", "'templates/**'", "'series.toml'", "'pyproject.toml'"):
        assert hashed in key
    assert "env.SERIES_REQUIREMENT" in key
    checks = [i for i, step in enumerate(steps) if _runs_series(step, "check")]
    assert caches[0] < min(checks)
