"""`series serve` behind reverse proxies: waitress is told about `[signup] trusted_proxies`,
so the client's address from X-Forwarded-For reaches the app (consent record, per-IP
limit); without trusted proxies the header is ignored. A real `series serve` process."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from .conftest import BuildWorkspace
from .helpers import closed_port
from .signup_site import SIGNUP, build


@contextmanager
def serving(root: Path) -> Iterator[str]:
    """`series serve` on 127.0.0.1 in its own process; its URL."""
    port = closed_port()
    env = {k: v for k, v in os.environ.items() if k != "SERIES_DATABASE_URL"}
    command = [sys.executable, "-m", "pipeline", "-w", str(root), "serve", "--port", str(port)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "series serve printed nothing within 60 s"
        assert proc.stdout.readline().startswith(b"Serving")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert b"Traceback" not in err


def recorded_ips(root: Path) -> list[str]:
    engine = sa.create_engine(f"sqlite:///{root / 'subscribers' / 'state.db'}")
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text("SELECT ip FROM signups ORDER BY id")).scalars())
    finally:
        engine.dispose()


def subscribe(url: str, address: str, forwarded: str) -> int:
    response = requests.post(
        f"{url}/subscribe",
        data={"email": address, "series": "demo"},
        headers={"X-Forwarded-For": forwarded},
        timeout=30,
        allow_redirects=False,
    )
    return response.status_code


def test_one_trusted_proxy_gives_the_client_address(
    workspace: BuildWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """trusted_proxies = 1: the entry the proxy appended (the last) is the reader's
    address, whatever the client put before it; each reader has their own limit."""
    monkeypatch.delenv("SERIES_DATABASE_URL", raising=False)
    extra = SIGNUP.replace("per_ip_per_hour = 0", "per_ip_per_hour = 1") + "trusted_proxies = 1\n"
    root = build(workspace, extra)
    with serving(root) as url:
        assert subscribe(url, "ann@example.com", "198.51.100.1, 203.0.113.9") == 200
        assert subscribe(url, "bea@example.com", "203.0.113.9") == 429  # same reader
        assert subscribe(url, "cy@example.com", "203.0.113.10") == 200  # another one
    assert recorded_ips(root) == ["203.0.113.9", "203.0.113.10"]


def test_without_trusted_proxies_the_header_is_ignored(
    workspace: BuildWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """trusted_proxies = 0 (the default): anyone could forge X-Forwarded-For, so the
    connection's address is recorded."""
    monkeypatch.delenv("SERIES_DATABASE_URL", raising=False)
    root = build(workspace)
    with serving(root) as url:
        assert subscribe(url, "ann@example.com", "203.0.113.9") == 200
    assert recorded_ips(root) == ["127.0.0.1"]
