"""What many test files share: running the real CLI, preparing the example workspace."""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Sequence
from datetime import datetime
from email.header import decode_header, make_header
from email.utils import unquote
from pathlib import Path

import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Connection

from pipeline.cli import cli
from pipeline.providers import ProviderError
from pipeline.store.schema import deliveries

SITE_LINE = 'site_url = "https://steadyground.example"'
# When test subscribers enroll: before the fixed moments the tests send at (a Monday,
# 2026-11-30), whatever the real date is when the tests run.
ENROLLED_AT = "2026-11-28T12:00:00+00:00"


def import_command(csv: Path | str) -> list[str]:
    """`series subscribers import CSV` as a subprocess command, enrolling at ENROLLED_AT."""
    return [
        sys.executable,
        "-m",
        "pipeline",
        "subscribers",
        "import",
        str(csv),
        "--now",
        ENROLLED_AT,
    ]


def run(root: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`series --workspace ROOT ARGS…` in this process: (exit code, stdout, stderr)."""
    result = CliRunner().invoke(
        cli, ["--workspace", str(root), *args], env=env, catch_exceptions=False
    )
    return result.exit_code, result.stdout, result.stderr


def subprocess_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment for a `series` subprocess working in ROOT on its SQLite state,
    with EXTRA variables (a provider's URL and key)."""
    env = {**os.environ, "SERIES_WORKSPACE": str(root), **extra}
    env.pop("SERIES_DATABASE_URL", None)
    return env


def send_at(root: Path, when: datetime, *args: str) -> tuple[int, str, str]:
    """`series send --now WHEN ARGS…`."""
    return run(root, "send", "--now", when.isoformat(), *args)


def enroll_examples(root: Path) -> Path:
    """Import the six example subscribers into the workspace at ROOT."""
    code, out, err = run(
        root, "subscribers", "import", "subscribers/example.csv", "--now", ENROLLED_AT
    )
    assert code == 0, out + err
    return root


def import_readers(root: Path, count: int, *, zones: Sequence[str] = ()) -> list[str]:
    """Import COUNT readers, r000@example.com…, into the attachment series at ENROLLED_AT
    (the k-th in ``zones[k]`` when zones are given); their addresses."""
    emails = [f"r{i:03d}@example.com" for i in range(count)]
    csv = root / "readers.csv"
    csv.write_text(
        "email,timezone,series\n"
        + "".join(f"{e},{zones[i] if zones else ''},attachment\n" for i, e in enumerate(emails)),
        encoding="utf-8",
    )
    code, out, err = run(root, "subscribers", "import", str(csv), "--now", ENROLLED_AT)
    assert code == 0, out + err
    return emails


def configure(root: Path, settings: str, tables: str = "") -> None:
    """Add top-level ``[tool.series]`` settings (e.g. ``provider = "postmark"``) and
    whole tables (``[tool.series.mailgun]`` …) to the example's pyproject.toml."""
    config = root / "pyproject.toml"
    text = config.read_text(encoding="utf-8")
    assert SITE_LINE in text
    text = text.replace(SITE_LINE, f"{SITE_LINE}\n{settings.strip()}")
    config.write_text(text + (f"\n{tables.strip()}\n" if tables else ""), encoding="utf-8")


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def flags(error: ProviderError) -> tuple[bool, bool, bool]:
    """(retryable, maybe_sent, auth) of a provider error."""
    return error.retryable, error.maybe_sent, error.auth


# The fields of an outbox or preview .eml file, in the order they are written.
EML_FIELDS = [
    "From",
    "To",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "X-Series-Delivery",
    "MIME-Version",
    "Content-Type",
]


def raw_fields(message: bytes) -> list[tuple[str, str]]:
    """A raw message's header block as written, nothing decoded: (name, value unfolded)
    per field. Fails unless the block is ASCII with lines of at most 998 octets."""
    head = message.split(b"\n\n", 1)[0]
    assert head.isascii(), head
    assert all(len(line) <= 998 for line in head.split(b"\n"))
    fields = re.split(r"\n(?=[^ \t])", head.decode("ascii"))
    return [(f.split(":", 1)[0], f.split(":", 1)[1].replace("\n", "")) for f in fields]


def display_text(mailbox: str) -> str:
    """The display name of a raw ``phrase <address>`` as RFC 5322 and RFC 2047 read it
    (Python's address parser keeps the space between two encoded-words: not used)."""
    phrase = mailbox.rpartition("<")[0].strip() if "<" in mailbox else ""
    if phrase.startswith('"'):
        return unquote(phrase)
    return str(make_header(decode_header(phrase))) if phrase else ""


def delivery_states(conn: Connection) -> dict[str, int]:
    """The ledger's deliveries counted by state (``{"sent": 2, "claimed": 1}``)."""
    query = sa.select(deliveries.c.state, sa.func.count()).group_by(deliveries.c.state)
    return {state: count for state, count in conn.execute(query).all()}
