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

from .conftest import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"


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


def _load(name: str) -> dict[Any, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
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


@pytest.fixture(scope="module")
def send() -> dict[Any, Any]:
    return _load("send.yml")


def test_actionlint_passes() -> None:
    """actionlint reports nothing on any workflow file."""
    files = sorted(str(p) for p in WORKFLOWS.iterdir() if p.suffix in {".yml", ".yaml"})
    assert files, f"no workflow files in {WORKFLOWS}"
    # shellcheck (from the test extras) sits beside python; actionlint runs it on every
    # `run:` script when it is given one.
    shellcheck = Path(sys.executable).parent / "shellcheck"
    extra = [f"-shellcheck={shellcheck}"] if shellcheck.is_file() else []
    result = subprocess.run(
        [str(_actionlint()), "-no-color", *extra, *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


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
