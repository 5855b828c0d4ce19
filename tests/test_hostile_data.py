"""Hostile subscriber data end to end: odd names and addresses never block other readers,
and what goes out (raw .eml bytes, the JSON or form each provider receives) carries one
recipient per reader and no field that nobody wrote.

The names and addresses are put into the database directly, as a database filled before
names were cleaned at import holds them; the real `series` CLI then sends through the
outbox and through each fake provider on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.utils import getaddresses
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline.headers import CONTROL
from pipeline.store import open_store
from pipeline.store.schema import deliveries, subscribers

from .conftest import POSTMARK_TOKEN
from .fake_mailgun import FakeMailgun
from .fake_postmark import FakePostmark
from .fake_resend import FakeResend
from .fake_sendgrid import FakeSendGrid
from .helpers import EML_FIELDS, ENROLLED_AT, configure, display_text, raw_fields, run

MONDAY = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
# An encoded-word that, decoded and written back raw, adds a recipient.
ADDS_RECIPIENT = "=?utf-8?q?x=2C_attacker=40evil=2Eexample=2C?="
# One that decodes to a line break and a Bcc field.
ADDS_BCC = "=?utf-8?q?hi=0D=0ABcc=3A_attacker=40evil=2Eexample?="
# Address → the name the database holds for it.
HOSTILE = {
    "lf@example.com": "Sam\nExample",
    "crlf@example.com": "Carriage\r\nReturn",
    "tab@example.com": "Tab\there",
    "nul@example.com": "Nul\x00byte",
    "del@example.com": "Del\x7fete",
    "nel@example.com": "Next\u0085line",
    "ls@example.com": "Line\u2028separator",
    "recipient@example.com": ADDS_RECIPIENT,
    "bcc@example.com": ADDS_BCC,
    "quotes@example.com": 'Quote " and \\ backslash, comma; <angle> @at',
    "long@example.com": "Long " * 120,
    "asa@example.com": "Åsa Berg",
    "anna@bücher.example": "Anna",
}
# How each address goes on the wire.
WIRE = {email: email for email in HOSTILE} | {"anna@bücher.example": "anna@xn--bcher-kva.example"}
# Stored before addresses were checked at import; mail to it needs SMTPUTF8.
UNSENDABLE = "jörg@example.com"
# The stored error names no address (it outlives an erasure): the line names the reader.
REFUSED = (
    f"{UNSENDABLE}: part 1 of attachment failed: not sent: [address]: the part before "
    "the @ is not ASCII; mail with such an address needs SMTPUTF8 (RFC 6531), which series "
    "does not use"
)
KEYS = {
    "RESEND_API_KEY": "re_hostile_test_key",
    "SENDGRID_API_KEY": "SG.hostile-test-key",
    "MAILGUN_API_KEY": "key-hostile-test",
    "POSTMARK_SERVER_TOKEN": POSTMARK_TOKEN,
}
ARTICLE = "series/attachment/01-attachment-theory.md"
MANIFEST = "series/attachment/series.yml"


def edit(root: Path, path: str, old: str, new: str) -> None:
    """Replace the first OLD in the workspace file PATH with NEW."""
    file = root / path
    text = file.read_text(encoding="utf-8")
    assert old in text
    file.write_text(text.replace(old, new, 1), encoding="utf-8")


def store_hostile_readers(root: Path) -> None:
    """Import plain readers, then give them the names and addresses of HOSTILE and
    UNSENDABLE as an older database could hold them."""
    readers = [*HOSTILE, UNSENDABLE]
    csv = root / "subscribers" / "plain.csv"
    csv.write_text(
        "email,name,series\n"
        + "".join(f"reader{i}@example.com,Reader,attachment\n" for i in range(len(readers))),
        encoding="utf-8",
    )
    code, out, err = run(root, "subscribers", "import", str(csv), "--now", ENROLLED_AT)
    assert code == 0, out + err
    with open_store(root) as store, store.begin() as conn:
        for i, email in enumerate(readers):
            conn.execute(
                subscribers.update()
                .where(subscribers.c.email == f"reader{i}@example.com")
                .values(email=email, name=HOSTILE.get(email, "Jörg"))
            )


def one_recipient(mailbox: str) -> str:
    """The one address a raw To (or From) string names, in ASCII; fails on anything else."""
    assert not CONTROL.search(mailbox), mailbox
    [(_, address)] = getaddresses([mailbox])
    assert address.isascii(), mailbox
    return address


def header_safe(*values: str) -> None:
    for value in values:
        assert not CONTROL.search(value), value


# -- what each provider received: (raw To, raw From, subject) per message --------

Wire = tuple[str, str, str]
# A subject that only looks like an encoded-word: it must arrive as typed.
LITERAL_SUBJECT = "About =?utf-8?q?Bcc=3A_x=40evil=2Eexample?= headers"


def outbox_wire(root: Path, _: Any) -> list[Wire]:
    wire = []
    for path in sorted((root / "outbox").glob("*.eml")):
        fields = raw_fields(path.read_bytes())
        assert [name for name, _ in fields] == EML_FIELDS
        values = dict(fields)
        assert re.fullmatch(
            r" <https://steadyground\.example/u/[^\s<>]+>", values["List-Unsubscribe"]
        )
        subject = str(make_header(decode_header(values["Subject"][1:])))
        wire.append((values["To"], values["From"], subject))  # ASCII: raw_fields checked it
    return wire


def postmark_wire(_: Path, fake: FakePostmark) -> list[Wire]:
    wire = []
    for request in fake.batch_requests():
        for item in request.body:
            header_safe(item["Subject"], *(h["Value"] for h in item["Headers"]))
            assert item["To"].isascii() and item["From"].isascii()
            wire.append((item["To"], item["From"], item["Subject"]))
    return wire


def resend_wire(_: Path, fake: FakeResend) -> list[Wire]:
    wire = []
    for request in fake.batch_requests():
        for item in json.loads(request.raw):
            header_safe(item["subject"], *item["headers"].values())
            [to] = item["to"]
            assert to.isascii() and item["from"].isascii()
            wire.append((to, item["from"], item["subject"]))
    return wire


def sendgrid_wire(_: Path, fake: FakeSendGrid) -> list[Wire]:
    """SendGrid writes ``name <email>`` into the To header as it is given (encoding a
    non-ASCII name itself): the pair, so joined, must still be one recipient."""
    wire = []
    for request in fake.sends():
        body = json.loads(request.raw)
        sender = body["from"]
        header_safe(body["subject"], sender.get("name", ""))
        for item in body["personalizations"]:
            [to] = item["to"]
            header_safe(to.get("name", ""), *item.get("headers", {}).values())
            mailbox = f"{to['name']} <{to['email']}>" if to.get("name") else to["email"]
            wire.append((mailbox, sender["email"], item["subject"]))
    return wire


def mailgun_wire(_: Path, fake: FakeMailgun) -> list[Wire]:
    wire = []
    for request in fake.message_requests():
        form = request.form
        header_safe(
            *form["subject"], *(v for k, vs in form.items() if k.startswith("h:") for v in vs)
        )
        variables = json.loads(form["recipient-variables"][0])
        for to in form["to"]:
            assert to.isascii() and form["from"][0].isascii()
            assert one_recipient(to) in variables  # each copy finds its own link and key
            wire.append((to, form["from"][0], form["subject"][0]))
    return wire


@pytest.fixture
def provider_fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    with (
        FakePostmark(token=POSTMARK_TOKEN) as postmark,
        FakeResend(key=KEYS["RESEND_API_KEY"]) as resend,
        FakeSendGrid(key=KEYS["SENDGRID_API_KEY"]) as sendgrid,
        FakeMailgun(key=KEYS["MAILGUN_API_KEY"]) as mailgun,
    ):
        yield {
            "outbox": None,
            "postmark": postmark,
            "resend": resend,
            "sendgrid": sendgrid,
            "mailgun": mailgun,
        }


WIRES = {
    "outbox": outbox_wire,
    "postmark": postmark_wire,
    "resend": resend_wire,
    "sendgrid": sendgrid_wire,
    "mailgun": mailgun_wire,
}


@pytest.mark.parametrize("provider", list(WIRES))
def test_odd_readers_get_one_clean_message_and_the_unsendable_one_fails_alone(
    example_copy: Path,
    provider_fakes: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    provider: str,
) -> None:
    """Names with line breaks, tabs, NUL, DEL, NEL, U+2028 or encoded-words, and an IDN
    domain, each give exactly one message to that reader's ASCII address, with one
    recipient in every raw To; the reader whose address needs SMTPUTF8 fails alone, with
    the reason, and the run goes on to exit 1; `series status` lists that failure. A
    subject that looks like an encoded-word arrives as the text typed."""
    configure(example_copy, "", '[tool.series.mailgun]\ndomain = "mg.example.com"')
    edit(example_copy, ARTICLE, "part: 1\n", f'part: 1\nsubject: "{LITERAL_SUBJECT}"\n')
    store_hostile_readers(example_copy)
    fake = provider_fakes[provider]
    if fake is not None:
        monkeypatch.setenv("SERIES_PROVIDER_URL", fake.url)

    code, out, err = run(example_copy, "send", "--provider", provider, "--now", MONDAY.isoformat())

    assert (code, out) == (1, f"sent {len(HOSTILE)}, failed 1, retried 0, unknown 0, skipped 0\n")
    assert REFUSED in err.splitlines()
    wire = WIRES[provider](example_copy, fake)
    assert Counter(one_recipient(to) for to, _, _ in wire) == Counter(WIRE.values())
    assert {one_recipient(sender) for _, sender, _ in wire} == {"maya@steadyground.example"}
    assert {subject for _, _, subject in wire} == {LITERAL_SUBJECT}
    with open_store(example_copy) as store, store.connect() as conn:
        states = dict(
            conn.execute(
                sa.select(subscribers.c.email, deliveries.c.state).join(
                    deliveries, deliveries.c.subscriber_id == subscribers.c.id
                )
            ).all()
        )
    assert states == {email: "sent" for email in HOSTILE} | {UNSENDABLE: "failed"}
    code, out, _ = run(example_copy, "status", "--now", MONDAY.isoformat())
    assert code == 0
    assert "1 failed delivery(ies)" in out
    assert re.search(rf"^{UNSENDABLE}\s+1\s+1\s+not sent: \[address\]: the part before", out, re.M)


def test_outbox_names_decode_to_the_cleaned_name(example_copy: Path) -> None:
    """In the .eml files each name reads back as the name stored, control characters
    made spaces; the encoded-word names read back as that text, not as addresses."""
    store_hostile_readers(example_copy)
    run(example_copy, "send", "--now", MONDAY.isoformat())

    names = {}
    for path in (example_copy / "outbox").glob("*.eml"):
        to = dict(raw_fields(path.read_bytes()))["To"]
        names[one_recipient(to)] = display_text(to)
    assert names == {
        "lf@example.com": "Sam Example",
        "crlf@example.com": "Carriage Return",
        "tab@example.com": "Tab here",
        "nul@example.com": "Nul byte",
        "del@example.com": "Del ete",
        "nel@example.com": "Next line",
        "ls@example.com": "Line separator",
        "recipient@example.com": ADDS_RECIPIENT,
        "bcc@example.com": ADDS_BCC,
        "quotes@example.com": 'Quote " and \\ backslash, comma; <angle> @at',
        "long@example.com": ("Long " * 120).strip(),
        "asa@example.com": "Åsa Berg",
        "anna@xn--bcher-kva.example": "Anna",
    }


# -- names and addresses on the way in ---------------------------------------------


def test_import_cleans_names_and_refuses_addresses_that_need_smtputf8(example_copy: Path) -> None:
    """Control characters in a name become a space (a warning names the line); an IDN
    domain is fine; a non-ASCII local part is refused as FILE:LINE: reason, exit 1, and
    the other rows are imported and sent."""
    csv = example_copy / "subscribers" / "hostile.csv"
    csv.write_text(
        "email,name,series\n"
        'lf@example.com,"Sam\nExample",attachment\n'
        'nul@example.com,"Nul\x00byte",attachment\n'
        "ls@example.com,Line\u2028separator,attachment\n"
        "anna@xn--bcher-kva.example,Anna,attachment\n"
        f"{UNSENDABLE},Jörg,attachment\n"
        f"recipient@example.com,{ADDS_RECIPIENT},attachment\n",
        encoding="utf-8",
    )

    code, out, err = run(example_copy, "subscribers", "import", str(csv), "--now", ENROLLED_AT)

    assert (code, out) == (1, "imported 5, updated 0, unchanged 0, rejected 1\n")
    assert err.splitlines() == [
        f"{csv}:2: warning: the name had a line break (U+000A); stored as 'Sam Example'",
        f"{csv}:4: warning: the name had a control character (U+0000); stored as 'Nul byte'",
        f"{csv}:5: warning: the name had a line break (U+2028); stored as 'Line separator'",
        f"{csv}:7: {UNSENDABLE}: the part before the @ is not ASCII; mail with such an "
        "address needs SMTPUTF8 (RFC 6531), which series does not use",
    ]
    with open_store(example_copy) as store, store.connect() as conn:
        names = dict(conn.execute(sa.select(subscribers.c.email, subscribers.c.name)).all())
    assert names == {
        "lf@example.com": "Sam Example",
        "nul@example.com": "Nul byte",
        "ls@example.com": "Line separator",
        "anna@bücher.example": "Anna",
        "recipient@example.com": ADDS_RECIPIENT,
    }
    code, out, _ = run(example_copy, "send", "--now", MONDAY.isoformat())
    assert (code, out) == (0, "sent 5, failed 0, retried 0, unknown 0, skipped 0\n")


def test_add_cleans_the_name_and_refuses_an_address_that_needs_smtputf8(
    example_copy: Path,
) -> None:
    """`subscribers add` stores a one-line name, takes an IDN domain, and refuses a
    non-ASCII local part with one line and exit 1."""
    assert run(example_copy, "subscribers", "add", "sam@example.com", "--name", "Sam\nExample")[
        :2
    ] == (0, "added\n")
    assert run(example_copy, "subscribers", "add", "anna@xn--bcher-kva.example")[:2] == (
        0,
        "added\n",
    )
    code, out, err = run(example_copy, "subscribers", "add", UNSENDABLE, "--name", "Jörg")
    assert (code, out) == (1, "")
    assert err == (
        f"Error: {UNSENDABLE}: the part before the @ is not ASCII; mail with such an "
        "address needs SMTPUTF8 (RFC 6531), which series does not use\n"
    )
    with open_store(example_copy) as store, store.connect() as conn:
        names = dict(conn.execute(sa.select(subscribers.c.email, subscribers.c.name)).all())
    assert names == {"sam@example.com": "Sam Example", "anna@bücher.example": ""}


def test_test_send_refuses_an_address_that_needs_smtputf8(example_copy: Path) -> None:
    """`test-send --to` follows the same rule as import and add."""
    code, out, err = run(
        example_copy, "test-send", "attachment/1", "--to", UNSENDABLE, "--now", MONDAY.isoformat()
    )
    assert (code, out) == (1, "")
    assert err.startswith(f"Error: --to: {UNSENDABLE}: the part before the @ is not ASCII; ")
    assert not (example_copy / "outbox").exists()


def test_test_send_through_the_outbox_writes_raw_readable_headers(example_copy: Path) -> None:
    """The test email's raw bytes: the IDN address in ASCII, List-Unsubscribe as one
    unencoded `<https://…>`, the subject as typed."""
    code, _, err = run(
        example_copy,
        "test-send",
        "attachment/1",
        "--to",
        "anna@xn--bcher-kva.example",
        "--now",
        MONDAY.isoformat(),
    )
    assert code == 0, err
    [path] = (example_copy / "outbox").glob("*.eml")
    fields = dict(raw_fields(path.read_bytes()))
    assert fields["To"] == " anna@xn--bcher-kva.example"
    assert re.fullmatch(r" <https://steadyground\.example/u/[^\s<>]+>", fields["List-Unsubscribe"])
    assert fields["Subject"] == (
        " [TEST] What attachment styles are (Attachment Styles, part 1 of 5)"
    )


# -- content: subjects and the text they are made of ----------------------------------


@pytest.mark.parametrize(
    ("path", "old", "new", "problem"),
    [
        (
            ARTICLE,
            "part: 1\n",
            'part: 1\nsubject: "Part one\\nBcc: attacker@evil.example"\n',
            f"{ARTICLE}:4: 'subject' must be one line: it contains a line break (U+000A)",
        ),
        (
            ARTICLE,
            "part: 1\n",
            f'part: 1\nsubject: "{ADDS_BCC}"\n',
            f"{ARTICLE}:4: 'subject' contains an encoded-word (=?…?=) that decodes to a line "
            "break (U+000D); write the text itself",
        ),
        (
            ARTICLE,
            "title: What attachment styles are\n",
            'title: "What attachment\\u2028styles are"\n',
            f"{ARTICLE}:2: 'title' must be one line: it contains a line break (U+2028)",
        ),
        (
            ARTICLE,
            "preheader: Why you reach for closeness, or pull away, when a relationship "
            "starts to matter.\n",
            'preheader: "Why\\tyou reach for closeness"\n',
            f"{ARTICLE}:6: 'preheader' contains a tab (U+0009); remove it",
        ),
        (
            MANIFEST,
            "title: Attachment Styles\n",
            'title: "Attachment\\r\\nBcc: attacker@evil.example"\n',
            f"{MANIFEST}:1: 'title' must be one line: it contains a line break (U+000D)",
        ),
        (
            MANIFEST,
            "cadence_days: 4\n",
            'cadence_days: 4\nfrom: "maya@steadyground.example, attacker@evil.example"\n',
            f"{MANIFEST}:4: 'from' email is not a valid address: ",
        ),
        (
            MANIFEST,
            "cadence_days: 4\n",
            "cadence_days: 4\nfrom: jörg@steadyground.example\n",
            f"{MANIFEST}:4: 'from' email cannot be used: the part before the @ is not ASCII; ",
        ),
        (
            MANIFEST,
            "cadence_days: 4\n",
            'cadence_days: 4\nfrom: {name: "Maya\\nBcc: x@evil.example", email: a@b.example}\n',
            f"{MANIFEST}:4: 'from' name must be one line: it contains a line break (U+000A)",
        ),
    ],
    ids=[
        "multi-line subject",
        "encoded-word subject",
        "title in the default subject",
        "preheader",
        "series title",
        "series from with two addresses",
        "series from needing SMTPUTF8",
        "series from name",
    ],
)
def test_check_refuses_text_that_would_break_a_header(
    example_copy: Path, path: str, old: str, new: str, problem: str
) -> None:
    """A subject, or text a subject or From is made of, that is not one line (even once
    an encoded-word in it is decoded) is a `series check` error at its file and line."""
    edit(example_copy, path, old, new)

    code, out, _ = run(example_copy, "check", "--now", MONDAY.isoformat())

    assert code == 1
    assert any(line.startswith(problem) for line in out.splitlines()), out


@pytest.mark.parametrize(
    "command",
    [
        ("preview", "attachment/1"),
        ("send",),
        ("test-send", "attachment/1", "--to", "maya.editor@example.com"),
    ],
    ids=["preview", "send", "test-send"],
)
def test_a_multi_line_subject_stops_preview_send_and_test_send(
    example_copy: Path, command: tuple[str, ...]
) -> None:
    """What `series check` refuses, the commands that build emails refuse too: the
    problem line, exit 1, no traceback, nothing written to the outbox."""
    edit(example_copy, ARTICLE, "part: 1\n", 'part: 1\nsubject: "Part one\\r\\nBcc: x@y.example"\n')
    store_hostile_readers(example_copy)

    code, _, err = run(example_copy, *command, "--now", MONDAY.isoformat())

    assert code == 1
    assert f"{ARTICLE}:4: 'subject' must be one line: it contains a line break (U+000D)" in err
    assert not (example_copy / "outbox").exists()


def test_a_subject_that_only_looks_encoded_arrives_as_typed(example_copy: Path) -> None:
    """A literal `=?…?=` in a subject passes `series check` and is encoded in the raw
    preview, so a mail program shows that text and no decoder finds a field in it."""
    subject = LITERAL_SUBJECT
    edit(example_copy, ARTICLE, "part: 1\n", f'part: 1\nsubject: "{subject}"\n')
    assert run(example_copy, "check", "--now", MONDAY.isoformat())[0] == 0

    code, _, err = run(
        example_copy, "preview", "attachment/1", "--out", "build", "--now", MONDAY.isoformat()
    )

    assert code == 0, err
    raw = (example_copy / "build" / "attachment" / "01-attachment-theory.eml").read_bytes()
    fields = dict(raw_fields(raw))
    assert "Bcc" not in fields
    assert str(make_header(decode_header(fields["Subject"][1:]))) == subject
    assert re.fullmatch(r" <https://steadyground\.example/u/[^\s<>]+>", fields["List-Unsubscribe"])


def test_a_workspace_from_name_on_two_lines_is_a_config_error(example_copy: Path) -> None:
    """The workspace's own From name is checked like the series' one."""
    edit(
        example_copy,
        "pyproject.toml",
        'name = "Maya at Steady Ground"',
        'name = "Maya\\nBcc: attacker@evil.example"',
    )

    code, _, err = run(example_copy, "check")

    lines = (example_copy / "pyproject.toml").read_text(encoding="utf-8").splitlines()
    line = next(n for n, text in enumerate(lines, 1) if text.startswith('name = "Maya'))
    assert code == 1
    assert err == (
        f"Error: pyproject.toml:{line}: 'from.name' must be one line: it contains a line "
        "break (U+000A)\n"
    )


@pytest.mark.parametrize(
    "subject",
    [
        "=?utf-8*en?q?Hi=0D=0ABcc:_attacker@evil.example?=",
        "=?x-unknown?q?Hi=0D=0ABcc:_attacker@evil.example?=",
    ],
)
def test_check_refuses_a_subject_whose_encoded_word_hides_a_line_break(
    example_copy: Path, subject: str
) -> None:
    """`series check` refuses such a subject with its line, so it is never sent."""
    path = example_copy / "series/attachment/01-attachment-theory.md"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("part: 1\n", f'part: 1\nsubject: "{subject}"\n', 1), "utf-8")

    code, out, err = run(example_copy, "check")

    assert code == 1, out + err
    assert "series/attachment/01-attachment-theory.md:" in out and "'subject'" in out, out
