"""Real databases for the store tests: a temporary SQLite file, and a PostgreSQL server.

PostgreSQL: SERIES_TEST_DATABASE_URL if set (a server you run; the tests create and
drop their own databases on it), else a throwaway server started from the local
PostgreSQL binaries (Debian's `postgresql` package) in a temporary directory.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from pipeline.store.migrate import upgrade

URL_ENV = "SERIES_TEST_DATABASE_URL"
HOW_TO = (
    "PostgreSQL tests need a server: install PostgreSQL (apt-get install postgresql) so the "
    f"tests can start a throwaway one, or set {URL_ENV}=postgresql+psycopg://user:pass@host/db"
)


def _pg_bin() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.parent.name
    return tuple(int(p) for p in version.split(".") if p.isdigit())


@contextmanager
def postgres_server() -> Iterator[str | None]:
    """Yield an admin URL for a PostgreSQL server, or None when none can be had."""
    configured = os.environ.get(URL_ENV)
    if configured:
        yield configured
        return
    bindir = _pg_bin()
    if bindir is None:
        yield None
        return
    run_as: list[str] = []
    directory = Path(tempfile.mkdtemp(prefix="series-pg-"))
    if os.geteuid() == 0:
        # initdb refuses to run as root: hand the directory to the postgres user.
        user = pwd.getpwnam("postgres")
        os.chown(directory, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data = directory / "data"
    port = "54329"

    def run(*args: str) -> None:
        subprocess.run([*run_as, *args], check=True, capture_output=True, timeout=120)

    run(
        str(bindir / "initdb"),
        "-D",
        str(data),
        "-A",
        "trust",
        "-U",
        "postgres",
        "-E",
        "UTF8",
        "--no-sync",
    )
    options = f"-k {directory} -p {port} -c listen_addresses='' -c fsync=off"
    run(
        str(bindir / "pg_ctl"),
        "-D",
        str(data),
        "-o",
        options,
        "-l",
        str(directory / "log"),
        "-w",
        "start",
    )
    try:
        yield f"postgresql+psycopg://postgres@/postgres?host={directory}&port={port}"
    finally:
        subprocess.run(
            [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            check=False,
            timeout=60,
        )
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """Create an empty database on the server for one test, and drop it afterwards."""
    name = f"series_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


MADE_AT = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


def database_at_0004(database_url: str) -> None:
    """A database made by migrations 0001–0004 holding a ledger keyed by part number:
    ann had parts 1 and 2 and part 3 is unknown; bo had part 1 and a part 7 that no
    article has; cy, enrolled at part 3, had nothing yet."""
    engine = sa.create_engine(database_url)
    assert upgrade(engine, "0004") == (None, "0004")
    rows = {
        "ann@example.com": {1: "sent", 2: "sent", 3: "unknown"},
        "bo@example.com": {1: "sent", 7: "sent"},
        "cy@example.com": {},
    }
    with engine.begin() as conn:
        for number, (email, parts) in enumerate(rows.items(), start=1):
            conn.execute(
                sa.text(
                    "INSERT INTO subscribers (id, email, name, status, created_at, updated_at, "
                    "source, attributes) VALUES (:id, :email, '', 'active', :t, :t, 'v4', '{}')"
                ),
                {"id": number, "email": email, "t": MADE_AT},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO enrollments (subscriber_id, series, enrolled_at, start_part, "
                    "paused) VALUES (:id, 'attachment', :t, :start, false)"
                ),
                {"id": number, "t": MADE_AT, "start": 3 if not parts else 1},
            )
            for part, state in parts.items():
                conn.execute(
                    sa.text(
                        "INSERT INTO deliveries (subscriber_id, series, part, state, attempts, "
                        "created_at, updated_at, delivery_key) "
                        "VALUES (:id, 'attachment', :part, :state, 1, :t, :t, :key)"
                    ),
                    {
                        "id": number,
                        "part": part,
                        "state": state,
                        "t": MADE_AT,
                        "key": f"k{number}{part}",
                    },
                )
    engine.dispose()
