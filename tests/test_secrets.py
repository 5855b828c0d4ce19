"""Secrets never printed: every command, run against provider servers that echo the
request (keys included) and with the database password in each form libpq takes,
prints, logs and stores none of them."""

from __future__ import annotations

import base64
import os
import select
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from pipeline.redact import (
    SECRET_ENVS,
    database_secrets,
    mask_database_url,
    provider_text,
)

from .fake_http import FakeServer, Reply, Request
from .helpers import ENROLLED_AT, closed_port, configure, run

MARK = "xyzzy"  # every secret below holds it; no output may
KEYS = {
    "POSTMARK_SERVER_TOKEN": f"pm-token-{MARK}-1a2b3c",
    "RESEND_API_KEY": f"re_{MARK}_4d5e6f",
    "SENDGRID_API_KEY": f"SG.{MARK}-7g8h9i.jklmno",
    "MAILGUN_API_KEY": f"mg-key-{MARK}-0p1q2r",
    "SERIES_SECRET_KEY": f"link-signing-{MARK}-3s4t5u",
}
PASSWORD = f"pw-{MARK}-6v7w8x"
# What an echoed Authorization header holds for Mailgun: base64 of api:KEY.
ENCODED = base64.b64encode(f"api:{KEYS['MAILGUN_API_KEY']}".encode()).decode()
# How each provider's echoing server answers: a status its adapter reads text from.
STATUS = {"postmark": 422, "resend": 422, "sendgrid": 400, "mailgun": 400}
TABLES = {"mailgun": '[tool.series.mailgun]\ndomain = "mg.steadyground.example"'}


class EchoServer(FakeServer):
    """A server (or a proxy in front of one) that answers every request with an error
    quoting the request whole, headers included, and the database URL in the field
    each provider's adapter prints."""

    def __init__(self, status: int) -> None:
        super().__init__()
        self.status = status

    def handle(self, request: Request) -> Reply:
        echo = (
            f"{request.method} {request.path} {request.headers} "
            f"{request.raw[:3000].decode('utf-8', 'replace')} "
            f"{os.environ.get('SERIES_DATABASE_URL', '')}"
        )
        body = {
            "ErrorCode": 300,
            "Message": echo,
            "name": echo,
            "message": echo,
            "errors": [{"message": echo, "field": echo, "index": 0}],
        }
        return Reply(self.status, body)


def leaks(text: str) -> list[str]:
    """The secrets (or their telltale forms) found in ``text``."""
    found = [s for s in (MARK, ENCODED, quote(PASSWORD)) if s in text]
    return found


def stored_texts(url: str) -> str:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            errors = conn.execute(sa.text("SELECT last_error FROM deliveries")).scalars().all()
            reasons = conn.execute(sa.text("SELECT reason FROM status_changes")).scalars().all()
    finally:
        engine.dispose()
    return repr(errors) + repr(reasons)


def serve_output(root: Path, *, request: bool) -> str:
    """Everything `series serve` prints (stdout and stderr) from start to a SIGTERM,
    after one request to a forged link when ``request``."""
    port = closed_port()
    command = [sys.executable, "-m", "pipeline", "-w", str(root), "serve", "--port", str(port)]
    proc = subprocess.Popen(
        command, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        select.select([proc.stdout, proc.stderr], [], [], 60)  # started, or failed
        if request and proc.poll() is None:
            url = f"http://127.0.0.1:{port}"
            assert requests.get(f"{url}/u/forged.token", timeout=30).status_code == 400
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return out.decode() + err.decode()


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)


def postgres_url(database_url: str, form: str) -> str:
    """The test database's URL with PASSWORD in it as ``form`` says (the test server
    trusts local connections, so any password connects)."""
    url = sa.make_url(database_url)
    if form == "query":
        return url.update_query_dict({"password": PASSWORD}).render_as_string(hide_password=False)
    return url.set(password=PASSWORD).render_as_string(hide_password=False)


@pytest.mark.parametrize("provider", sorted(STATUS))
def test_every_command_keeps_keys_and_password_out_of_output_and_storage(
    example_copy: Path,
    database_url: str,
    provider: str,
    secret_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a provider server echoing each request (keys, Authorization, the database
    URL) and the database password as ?password=, no command prints a secret, and no
    stored error or audit reason holds one."""
    # On PostgreSQL the password is given as ?password=; SQLite has none to give.
    url = postgres_url(database_url, "query") if "postgresql" in database_url else database_url
    monkeypatch.setenv("SERIES_DATABASE_URL", url)
    configure(example_copy, f'provider = "{provider}"', TABLES.get(provider, ""))
    outputs = []
    with EchoServer(STATUS[provider]) as server:
        monkeypatch.setenv("SERIES_PROVIDER_URL", server.url)
        for args in (
            ("db", "upgrade"),
            ("subscribers", "import", "subscribers/example.csv", "--now", ENROLLED_AT),
            ("subscribers", "add", "late@example.com", "--series", "attachment"),
            ("subscribers", "list"),
            ("subscribers", "export"),
            ("send", "--dry-run", "--format", "json", "--now", "2026-11-30T09:00Z"),
            ("send", "--dry-run", "--now", "2026-11-30T09:00Z"),
            ("subscribers", "sync"),
            ("send", "--now", "2026-11-30T09:00Z"),
            ("send", "--skip-sync", "--now", "2026-11-30T09:00Z"),
            ("status",),
            ("test-send", "attachment/1", "--to", "editor@example.com"),
            ("subscribers", "unsubscribe", "late@example.com"),
            ("subscribers", "remove", "late@example.com"),
            ("check",),
        ):
            code, out, err = run(example_copy, *args)
            outputs.append((args, code, out + err))
        outputs.append((("serve",), 0, serve_output(example_copy, request=True)))
        assert server.requests, "the provider was never asked"
    sent = [o for o in outputs if o[0][0] == "send" and "--dry-run" not in o[0]]
    assert any(code == 1 for _, code, _ in sent), outputs  # the echoed errors were met
    for args, _, text in outputs:
        assert not leaks(text), (args, text)
    assert not leaks(stored_texts(database_url))


@pytest.mark.parametrize(
    "form",
    ["query", "userinfo", "at-in-password", "keyword-dsn", "unreachable"],
)
def test_the_database_password_is_masked_in_every_form(
    example_copy: Path, postgres_database_url: str, form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The password of SERIES_DATABASE_URL, as ?password=, in the user part, with an
    unencoded @, in a keyword DSN pasted by mistake, or for a server that cannot be
    reached, never appears in any command's output or errors."""
    database_url = postgres_database_url
    url = {
        "query": postgres_url(database_url, "query"),
        "userinfo": postgres_url(database_url, "userinfo"),
        "at-in-password": f"postgresql+psycopg://series:{PASSWORD}@tail@127.0.0.1/series",
        "keyword-dsn": f"host=127.0.0.1 dbname=series user=series password={PASSWORD}",
        "unreachable": f"postgresql+psycopg://series:{PASSWORD}@127.0.0.1:{closed_port()}/x",
    }[form]
    monkeypatch.setenv("SERIES_DATABASE_URL", url)
    outputs = []
    for args in (
        ("db", "upgrade"),
        ("subscribers", "list"),
        ("subscribers", "export"),
        ("send", "--dry-run", "--format", "json"),
        ("send",),
        ("status",),
        ("subscribers", "remove", "nobody@example.com"),
    ):
        code, out, err = run(example_copy, *args)
        outputs.append((args, code, out + err))
    outputs.append((("serve",), 0, serve_output(example_copy, request=False)))
    for args, _, text in outputs:
        assert PASSWORD not in text and "tail@" not in text, (args, text)
    if form in ("at-in-password", "keyword-dsn", "unreachable"):
        assert all(code == 1 for _, code, _ in outputs[:-1]), outputs
    if form == "at-in-password":
        assert outputs[0][2] == (
            "Error: SERIES_DATABASE_URL has an @ that may be part of its password "
            "(percent-encode an @ in a password, user name or parameter as %40) "
            "(postgresql+psycopg://series:***)\n"
        )
    if form == "keyword-dsn":
        assert outputs[0][2] == (
            "Error: SERIES_DATABASE_URL is not a database URL: host=127.0.0.1 dbname=series "
            "user=series password=*** (expected e.g. postgresql+psycopg://user@host/db)\n"
        )


def test_every_secret_variable_is_known() -> None:
    """Each provider's key variable, and the link-signing keys, are in SECRET_ENVS."""
    from pipeline.providers import mailgun, postmark, resend, sendgrid
    from pipeline.tokens import PREVIOUS_SECRET_ENV, SECRET_ENV

    names = {
        postmark.TOKEN_ENV,
        resend.KEY_ENV,
        sendgrid.KEY_ENV,
        mailgun.KEY_ENV,
        SECRET_ENV,
        PREVIOUS_SECRET_ENV,
    }
    assert names <= set(SECRET_ENVS)


def test_provider_text_hides_keys_addresses_and_escapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A provider's words lose keys (as set, or any Authorization value), addresses
    with the display name before them, and terminal escapes, and keep everything else."""
    monkeypatch.setenv("RESEND_API_KEY", "re_live_abcdef")
    text = (
        "422 validation_error: 'to' is invalid: \"Ann\" <Ann.Lee@Example.COM>, key "
        "re_live_abcdef, Authorization: Bearer tok.en-123456 \x1b]0;x\x07"
    )
    assert provider_text(text) == (
        "422 validation_error: 'to' is invalid: [address], key ***, "
        "Authorization: Bearer *** \\x1b]0;x\\x07"
    )


SAFE = st.text(
    alphabet=st.characters(
        codec="utf-8",
        exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp"),
        exclude_characters="/?#'\\",
    ),
    min_size=1,
    max_size=30,
)


@given(password=SAFE)
def test_masked_urls_never_show_the_password(password: str) -> None:
    """Whatever the password holds (an @, a colon, non-ASCII), each form shows *** in
    its place and nothing else changes; the password is known as a secret to blank."""
    forms = {
        # An unencoded @ makes where the password ends unclear: nothing after it shows.
        f"postgresql+psycopg://user:{password}@db.example/series": (
            "postgresql+psycopg://user:***"
            if "@" in password
            else "postgresql+psycopg://user:***@db.example/series"
        ),
        f"postgresql://user@db.example/series?sslmode=require&password={quote(password)}": (
            "postgresql://user@db.example/series?sslmode=require&password=***"
        ),
        f"host=db.example password='{password}' dbname=series": (
            "host=db.example password=*** dbname=series"
        ),
    }
    for url, expected in forms.items():
        assert mask_database_url(url) == expected
        assert password in database_secrets(url)
