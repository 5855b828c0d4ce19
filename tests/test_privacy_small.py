"""The small privacy points: one audit row per actual unsubscribe however many requests
race, terminal escapes in names shown and not acted on, local parts over 64 octets."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from .helpers import closed_port, enroll_examples, run, send_at

MONDAY = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
REQUESTS = 200


@contextmanager
def serving(root: Path) -> Iterator[str]:
    port = closed_port()
    command = [sys.executable, "-m", "pipeline", "-w", str(root), "serve", "--port", str(port)]
    # waitress logs its queue depth under load: to a file, so no pipe fills up.
    log = open(root / "serve.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(command, env=dict(os.environ), stdout=subprocess.PIPE, stderr=log)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready and proc.stdout.readline().startswith(b"Serving")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
        log.close()


def first_token(root: Path, address: str) -> str:
    for eml in sorted((root / "outbox").rglob("*.eml")):
        text = eml.read_text(encoding="utf-8")
        if address in text:
            found = re.search(r"/u/([A-Za-z0-9_.-]+)>", text)
            assert found
            return found.group(1)
    raise AssertionError(f"no email to {address}")


@pytest.mark.parametrize("body", ["one-click", "page-all"])
def test_parallel_unsubscribes_change_once(
    example_copy: Path, database_url: str, body: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 requests of the same link at once (one-click, or the page's "all series"):
    every one is answered 200, exactly one says the person is now unsubscribed, and
    exactly one audit row is written."""
    monkeypatch.setenv("SERIES_DATABASE_URL", database_url)
    enroll_examples(example_copy)
    assert send_at(example_copy, MONDAY)[0] == 0
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        address = conn.execute(sa.text("SELECT email FROM subscribers ORDER BY id")).scalar()
    assert isinstance(address, str)
    token = first_token(example_copy, address)
    data = {"List-Unsubscribe": "One-Click"} if body == "one-click" else {"scope": "all"}
    with serving(example_copy) as url, ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(
            pool.map(
                # Connection: close, as a mailbox provider's one-off request: waitress
                # stops accepting at 100 open connections, and idle keep-alive ones count.
                lambda _: requests.post(
                    f"{url}/u/{token}", data=data, headers={"Connection": "close"}, timeout=60
                ),
                range(REQUESTS),
            )
        )
    assert Counter(a.status_code for a in answers) == {200: REQUESTS}
    done = [a for a in answers if re.search(r"You are unsubscribed", a.text)]
    assert len(done) == 1
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT actor FROM status_changes WHERE actor LIKE 'web:%'")
        ).all()
    engine.dispose()
    assert len(rows) == 1


def test_list_shows_control_characters_as_escapes(example_copy: Path) -> None:
    """A name holding terminal escapes (stored by an older version, or a bidi override
    that import keeps) is listed with the escapes visible, never sent raw."""
    csv = example_copy / "names.csv"
    csv.write_text("email,name\nbidi@example.com,Ann \u202eevil\n", encoding="utf-8")
    assert run(example_copy, "subscribers", "import", str(csv))[0] == 0
    database = example_copy / "subscribers" / "state.db"
    engine = sa.create_engine(f"sqlite:///{database}")
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE subscribers SET name = :n WHERE email = 'bidi@example.com'"),
            {"n": "Ann\x1b]0;owned\x07\x1b[2J\x9b31m\u202eevil"},
        )
    engine.dispose()
    code, out, err = run(example_copy, "subscribers", "list")
    assert code == 0, err
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", out)
    assert "Ann\\x1b]0;owned\\x07\\x1b[2J\\x9b31m\\u202eevil" in out


@pytest.mark.parametrize(
    "args",
    [
        ("subscribers", "add", "a" * 65 + "@example.com"),
        ("test-send", "attachment/1", "--to", "a" * 65 + "@example.com"),
    ],
    ids=["add", "test-send"],
)
def test_a_65_octet_local_part_is_refused(example_copy: Path, args: tuple[str, ...]) -> None:
    """RFC 5321 allows 64 octets before the @: 65 is one error line, exit code 1 or 2."""
    code, _out, err = run(example_copy, *args)
    assert code in (1, 2) and "Traceback" not in err
    assert "the part before the @ is 65 characters long; at most 64 are allowed" in err


def test_a_64_octet_local_part_is_fine_and_an_import_rejects_65(example_copy: Path) -> None:
    """64 is added; a CSV row with 65 is rejected by its row, the others imported."""
    code, out, err = run(example_copy, "subscribers", "add", "b" * 64 + "@example.com")
    assert code == 0, err
    csv = example_copy / "long.csv"
    csv.write_text(f"email\n{'c' * 65}@example.com\nok@example.com\n", encoding="utf-8")
    code, out, err = run(example_copy, "subscribers", "import", str(csv))
    assert code == 1
    assert "long.csv" in err and "at most 64 are allowed" in err
    assert "imported 1," in out


def test_a_65_octet_sender_is_a_config_error(example_copy: Path) -> None:
    """The workspace's own from address is held to the same limit."""
    config = example_copy / "pyproject.toml"
    text = config.read_text(encoding="utf-8")
    config.write_text(
        re.sub(r'email = "[^"]+"', f'email = "{"m" * 65}@steadyground.example"', text, count=1),
        encoding="utf-8",
    )
    code, out, err = run(example_copy, "check")
    assert code == 1 and "too long" in (out + err)
