"""`series subscribers remove` leaves nothing readable: not in any table, not in the
SQLite files (write-ahead log included) while `series serve` holds its connections.

The person is first sent a part, unsubscribes through the web page, comes back, and
is bounced by Postmark with a 406 that names their address; then they are erased. A
second person signs up through the form (double opt-in) and is erased too: their IP
address and user agent, kept in the consent record, go with them."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.redact import scrub_person
from pipeline.store import open_store
from pipeline.store.schema import metadata, status_changes

from .fake_postmark import FakePostmark
from .helpers import ENROLLED_AT, closed_port, configure, run, send_at

ADDRESS = "zed.erase.me@example.com"
NAME = "Zenobia Quillfeather"
# The reader who signs up through the form, from behind one proxy.
FORM_ADDRESS = "yara.formfill@example.com"
FORM_IP = "203.0.113.177"
FORM_AGENT = "YaraBrowser/9.1 (Formfill)"
CONFIRM_AGENT = "YaraPhone/3.3 (Clicker)"
MONDAY = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
FRIDAY = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)


@contextmanager
def serving(root: Path) -> Iterator[str]:
    """`series serve` in its own process, on the environment's database; its URL."""
    port = closed_port()
    command = [sys.executable, "-m", "pipeline", "-w", str(root), "serve", "--port", str(port)]
    proc = subprocess.Popen(
        command, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "series serve printed nothing within 60 s"
        assert proc.stdout.readline().startswith(b"Serving")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def token_sent_to(fake: FakePostmark, address: str) -> str:
    """The unsubscribe token in the List-Unsubscribe header Postmark received for ADDRESS."""
    for request in reversed(fake.batch_requests()):
        for message in request.body:
            if address in message["To"]:
                header = next(
                    h["Value"] for h in message["Headers"] if h["Name"] == "List-Unsubscribe"
                )
                return str(header.strip("<>").rsplit("/u/", 1)[1])
    raise AssertionError(f"nothing was sent to {address}")


def database_texts(url: str) -> str:
    """Every value of every table, as text, lower case."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            found = []
            for table in [*metadata.sorted_tables, sa.table("alembic_version")]:
                if isinstance(table, sa.Table):
                    rows = conn.execute(sa.select(table)).all()
                else:
                    rows = conn.execute(sa.text("SELECT * FROM alembic_version")).all()
                found += [repr(tuple(row)) for row in rows]
        return "\n".join(found).lower()
    finally:
        engine.dispose()


def vacuumed(url: str) -> set[str]:
    """PostgreSQL: which of the person's tables a VACUUM has run on (its statistics are
    published when the VACUUM's backend reports them: wait for them a little)."""
    engine = sa.create_engine(url)
    try:
        for _ in range(50):
            with engine.connect() as conn:
                names = set(
                    conn.execute(
                        sa.text(
                            "SELECT relname FROM pg_stat_user_tables WHERE last_vacuum IS NOT "
                            "NULL AND relname IN "
                            "('subscribers', 'enrollments', 'deliveries', 'signups')"
                        )
                    ).scalars()
                )
            if len(names) == 4:
                break
            time.sleep(0.2)
        return names
    finally:
        engine.dispose()


def database_file_bytes(url: str) -> dict[str, bytes]:
    """For SQLite: every file of the database (main, -wal, -shm, -journal), lower case."""
    path = Path(sa.make_url(url).database or "")
    files = {}
    for candidate in path.parent.glob(path.name + "*"):
        files[candidate.name] = candidate.read_bytes().lower()
    return files


def test_remove_leaves_nothing_readable_while_serve_runs(
    example_copy: Path,
    postmark: FakePostmark,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Erasing a person who was sent a part, unsubscribed on the web page and bounced
    at Postmark leaves their address and name in no table and, on SQLite, in no byte of
    state.db, state.db-wal or state.db-shm, with `series serve` running throughout."""
    monkeypatch.setenv("SERIES_DATABASE_URL", database_url)
    configure(
        example_copy,
        'provider = "postmark"',
        "[tool.series.signup]\nenabled = true\ntrusted_proxies = 1\nper_ip_per_hour = 0\n",
    )
    csv = example_copy / "one.csv"
    csv.write_text(f"email,name,series\n{ADDRESS},{NAME},attachment\n", encoding="utf-8")
    assert run(example_copy, "subscribers", "import", str(csv), "--now", ENROLLED_AT)[0] == 0
    code, out, err = send_at(example_copy, MONDAY)
    assert code == 0, out + err

    with serving(example_copy) as url:
        token = token_sent_to(postmark, ADDRESS)
        page = requests.post(f"{url}/u/{token}", data={"scope": "all"}, timeout=30)
        assert page.status_code == 200 and "You are unsubscribed" in page.text
        code, out, err = run(example_copy, "subscribers", "add", ADDRESS, "--resubscribe")
        assert code == 0, out + err
        postmark.inactive.add(ADDRESS)  # not on the suppression list: the send meets a 406
        code, out, err = send_at(example_copy, FRIDAY)
        assert code == 1 and "406" in err, out + err
        with open_store(example_copy, database_url) as store, store.connect() as conn:
            actors = conn.execute(sa.select(status_changes.c.actor)).scalars().all()
        assert {"web:page", "provider:postmark"} <= set(actors)
        # Yara signs up through the form and confirms: a consent with her requests' details.
        asked = requests.post(
            f"{url}/subscribe",
            data={"email": FORM_ADDRESS, "series": "attachment", "name": "Yara Formfill"},
            headers={"User-Agent": FORM_AGENT, "X-Forwarded-For": FORM_IP},
            timeout=30,
        )
        assert asked.status_code == 200, asked.text
        confirmation = next(
            m["TextBody"]
            for r in postmark.batch_requests()
            for m in r.body
            if FORM_ADDRESS in m["To"]
        )
        found = re.search(r"/confirm/([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)", confirmation)
        assert found is not None
        confirmed = requests.post(
            f"{url}/confirm/{found.group(1)}",
            data={"confirm": "yes"},
            headers={"User-Agent": CONFIRM_AGENT, "X-Forwarded-For": FORM_IP},
            timeout=30,
        )
        assert confirmed.status_code == 200 and "You are subscribed" in confirmed.text
        assert FORM_AGENT.lower() in database_texts(database_url)
        # The serve process has answered a request: it holds an open connection now.
        assert requests.get(f"{url}/healthz", timeout=30).status_code == 200

        code, out, err = run(example_copy, "subscribers", "remove", ADDRESS)
        assert code == 0, out + err
        assert out == f"erased {ADDRESS}: personal data deleted, address kept only as a hash\n"
        code, out, err = run(example_copy, "subscribers", "remove", FORM_ADDRESS)
        assert code == 0, out + err

        texts = database_texts(database_url)
        assert ADDRESS not in texts and NAME.lower() not in texts
        assert "quillfeather" not in texts and "zed.erase.me" not in texts
        for needle in (FORM_ADDRESS, "yara", "formfill", FORM_IP, "yarabrowser", "yaraphone"):
            assert needle not in texts, needle
        if database_url.startswith("postgresql"):
            assert vacuumed(database_url) == {"subscribers", "enrollments", "deliveries", "signups"}
        if database_url.startswith("sqlite"):
            files = database_file_bytes(database_url)
            assert "state.db" in files
            for name, data in files.items():
                for needle in (
                    ADDRESS,
                    "zed.erase.me",
                    "quillfeather",
                    FORM_ADDRESS,
                    "formfill",
                    FORM_IP,
                    "yarabrowser",
                    "yaraphone",
                ):
                    assert needle.encode() not in data, f"{needle} found in {name}"
        # The page still answers the erased person's link, without naming them.
        page = requests.post(f"{url}/u/{token}", data={"List-Unsubscribe": "One-Click"}, timeout=30)
        assert page.status_code == 200 and "Nothing left to unsubscribe" in page.text


def test_audit_reasons_never_carry_an_address(
    example_copy: Path, postmark: FakePostmark, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider's 406 naming the address is stored (audit reason and last error) with
    its code and text, the address replaced by [address]."""
    monkeypatch.setenv("SERIES_DATABASE_URL", database_url)
    configure(example_copy, 'provider = "postmark"')
    csv = example_copy / "one.csv"
    csv.write_text(f"email,name,series\n{ADDRESS},{NAME},attachment\n", encoding="utf-8")
    assert run(example_copy, "subscribers", "import", str(csv), "--now", ENROLLED_AT)[0] == 0
    postmark.inactive.add(ADDRESS)
    code, _out, err = send_at(example_copy, MONDAY)
    assert code == 1
    assert f"{ADDRESS}: part 1 of attachment failed: 406: You tried to send to recipient(s)" in err
    assert ADDRESS not in err.split("failed: ", 1)[1]
    with open_store(example_copy, database_url) as store, store.connect() as conn:
        reason = conn.execute(
            sa.select(status_changes.c.reason).where(status_changes.c.actor == "provider:postmark")
        ).scalar_one()
        error = conn.execute(sa.text("SELECT last_error FROM deliveries")).scalar_one()
    assert reason.startswith("406: ") and "Found inactive addresses: [address]" in reason
    assert error == reason and ADDRESS not in reason


def test_migration_0006_scrubs_addresses_already_stored(
    database_url: str, example_copy: Path
) -> None:
    """Reasons and errors stored by earlier versions lose their addresses (and any
    credential) when the database is upgraded; other text is left as it was."""
    from .databases import database_at_0004

    database_at_0004(database_url)
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO status_changes (subscriber_id, new_status, actor, reason, created_at) "
                "VALUES (NULL, 'bounced', 'provider:postmark', :r, :t), "
                "(NULL, 'unsubscribed', 'cli', 'erased', :t)"
            ),
            {
                "r": "406: Found inactive addresses: Gone.Person@Example.com.",
                "t": datetime.now(UTC),
            },
        )
        conn.execute(
            sa.text("UPDATE deliveries SET last_error = :e WHERE part = 3"),
            {
                "e": "400: 'to' parameter is not a valid address: gone.person@example.com "
                "(Authorization: Basic YXBpOmtleS1zZWNyZXQ=)"
            },
        )
    engine.dispose()
    with open_store(example_copy, database_url) as store, store.connect() as conn:
        reasons = (
            conn.execute(sa.select(status_changes.c.reason).order_by(status_changes.c.id))
            .scalars()
            .all()
        )
        error = conn.execute(sa.text("SELECT last_error FROM deliveries WHERE part = 3")).scalar()
    assert reasons == ["406: Found inactive addresses: [address].", "erased"]
    assert error == (
        "400: 'to' parameter is not a valid address: [address] (Authorization: Basic ***)"
    )


ZOE = "zoe.q@example.com"
ZOE_NAME = "Zoé Quillfeather"
# The To header as series writes it for her (RFC 2047 base64 of the UTF-8 name).
ZOE_ENCODED = "=?utf-8?b?Wm/DqSBRdWlsbGZlYXRoZXI=?="
ENCODED_FORMS = (
    "quillfeather",  # any case
    "wm/dqsbrdwlsbgzlyxrozxi",  # base64 of the name (lower-cased, as texts are searched)
    "zo=c3=a9",  # RFC 2047 Q
    "zo%c3%a9",  # percent
    "zo\\u00e9",  # JSON escape
    "zoe.q%40example.com",  # the address percent-encoded
    "zoe.q@example.com",
)


def test_a_provider_echo_of_the_to_header_stores_no_name(
    example_copy: Path,
    postmark: FakePostmark,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 406 whose Message echoes the To header (the name as an encoded-word beside the
    address) is stored without the name in any form; erasing her leaves nothing."""
    from . import fake_postmark

    monkeypatch.setenv("SERIES_DATABASE_URL", database_url)
    monkeypatch.setattr(
        fake_postmark,
        "INACTIVE_TEXT",
        fake_postmark.INACTIVE_TEXT + f" To: {ZOE_ENCODED} <{{addresses}}>",
    )
    configure(example_copy, 'provider = "postmark"')
    csv = example_copy / "one.csv"
    csv.write_text(f"email,name,series\n{ZOE},{ZOE_NAME},attachment\n", encoding="utf-8")
    assert run(example_copy, "subscribers", "import", str(csv), "--now", ENROLLED_AT)[0] == 0
    postmark.inactive.add(ZOE)
    code, out, err = send_at(example_copy, MONDAY)
    assert code == 1 and "406" in err, out + err
    texts = database_texts(database_url)
    reason = texts.split("provider:postmark", 1)[1]
    assert "to: [address]" in reason
    for form in ENCODED_FORMS[1:]:
        assert form not in reason, form
    assert run(example_copy, "subscribers", "remove", ZOE)[0] == 0
    texts = database_texts(database_url)
    for form in ENCODED_FORMS:
        assert form not in texts, form


def test_erasure_finds_the_name_and_address_in_any_case_and_encoding(
    example_copy: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Texts stored by earlier versions (about her or about a batch she was in) that
    name her in another letter case, percent-, JSON- or RFC 2047-encoded, or hold her
    address percent-encoded (a consent record's page), lose every form at erasure;
    other text stays."""
    monkeypatch.setenv("SERIES_DATABASE_URL", database_url)
    csv = example_copy / "one.csv"
    csv.write_text(f"email,name,series\n{ZOE},{ZOE_NAME},attachment\n", encoding="utf-8")
    assert run(example_copy, "subscribers", "import", str(csv), "--now", ENROLLED_AT)[0] == 0
    stored = [
        f"406: To: {ZOE_ENCODED} <[address]>",
        "300: To: =?UTF-8?Q?Zo=C3=A9_Quillfeather?= <[address]>",
        "batch failed for ZOÉ QUILLFEATHER and zoé quillfeather",
        '{"page": "https://blog.example/join?email=zoe.q%40example.com&name=Zo%C3%A9+Quillfeather"}',
        '{"name": "Zo\\u00e9 Quillfeather", "kept": "the rest"}',
    ]
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        own = conn.execute(sa.text("SELECT id FROM subscribers")).scalar_one()
        for index, reason in enumerate(stored):
            conn.execute(
                sa.text(
                    "INSERT INTO status_changes (subscriber_id, new_status, actor, reason, "
                    "created_at) VALUES (:s, 'bounced', 'provider:postmark', :r, :t)"
                ),
                {"s": own if index == 3 else None, "r": reason, "t": datetime.now(UTC)},
            )
    engine.dispose()
    code, out, err = run(example_copy, "subscribers", "remove", ZOE)
    assert code == 0, out + err
    texts = database_texts(database_url)
    for form in ENCODED_FORMS:
        assert form not in texts, form
    assert "batch failed for [name] and [name]" in texts and '"kept": "the rest"' in texts


NAMES = st.text(
    alphabet=st.characters(codec="utf-8", categories=("L",)), min_size=2, max_size=10
).map(str.strip)


@settings(max_examples=300, deadline=None)
@given(first=NAMES, last=NAMES, around=st.sampled_from(["", "x: ", "(", '"a": "', "to "]))
def test_scrub_person_removes_every_form_of_a_name(first: str, last: str, around: str) -> None:
    """Whatever letters a name holds: as typed, upper or lower case, percent-encoded
    (with + or %20), JSON-escaped, as an RFC 2047 word beside an address, or base64,
    none of it is left."""
    import base64
    import json
    from email.header import Header
    from urllib.parse import quote, quote_plus

    name = f"{first} {last}"
    forms = [
        name,
        name.upper(),
        name.lower(),
        quote(name),
        quote_plus(name),
        json.dumps(name)[1:-1],
        f"{Header(name, 'utf-8').encode()} <someone@example.com>",
        base64.b64encode(name.encode()).decode(),
    ]
    for form in forms:
        clean = scrub_person(f"{around}{form}, kept", "someone@example.com", name)
        assert clean.endswith(", kept"), (form, clean)
        for trace in (first, last, first.lower(), last.lower(), first.upper(), last.upper()):
            assert trace not in clean.removesuffix(", kept"), (form, clean)
