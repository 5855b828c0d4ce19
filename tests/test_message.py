"""pipeline/message.py: the raw bytes of a reader's message, whatever their name or the
subject holds."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.utils import getaddresses

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.config import Address
from pipeline.errors import MessageBuildError
from pipeline.headers import clean_name, one_line
from pipeline.message import build_message
from pipeline.render import RenderedEmail

from .helpers import EML_FIELDS, display_text, raw_fields

SENDER = Address("maya@steadyground.example", "Maya at Steady Ground")
READER = "reader@bücher.example"
ON_THE_WIRE = "reader@xn--bcher-kva.example"
URL = "https://steadyground.example/u/" + "t" * 120


def build(name: str, subject: str, to: str = READER) -> bytes:
    return build_message(
        RenderedEmail(subject, "", "<p>Hello</p>", "Hello\n"),
        sender=SENDER,
        to=Address(to, name),
        unsubscribe_url=URL,
        date=datetime(2026, 11, 30, 10, 0, tzinfo=UTC),
        reply_to="maya@steadyground.example",
        extra_headers={"X-Series-Delivery": "k1"},
    )


@settings(max_examples=400, deadline=None)
@given(name=st.text(max_size=300), subject=st.text(min_size=1, max_size=300))
@example(name="Sam\nExample", subject="Part 1\r\nBcc: attacker@evil.example")
@example(name="=?utf-8?q?x=2C_attacker=40evil=2Eexample=2C?=", subject="Hi")
@example(name="Nul\x00", subject="=?utf-8?q?hi=0D=0ABcc=3A_x=40evil=2Eexample?=")
@example(name='"", attacker@evil.example, "', subject="\u2028Bcc: x@evil.example")
def test_any_name_and_subject_give_one_recipient_and_no_extra_field(
    name: str, subject: str
) -> None:
    """Whatever a name or subject holds, the raw header block has exactly the fields we
    write, lines of at most 998 octets, one To recipient (the reader, in ASCII), and
    decodes to the name and subject as cleaned of control characters."""
    raw = build(name, subject)
    assert all(len(line) <= 998 for line in raw.split(b"\n"))  # the body's lines too

    fields = raw_fields(raw)
    assert [field for field, _ in fields] == EML_FIELDS
    values = dict(fields)
    assert [address for _, address in getaddresses([values["To"]])] == [ON_THE_WIRE]
    assert values["List-Unsubscribe"] == f" <{URL}>"
    # The subject decodes to exactly the text (cleaned of control characters).
    assert str(make_header(decode_header(values["Subject"][1:]))) == one_line(subject)
    assert display_text(values["To"]) == clean_name(name)
    # Python's own parser agrees on the one recipient. (It reads a phrase's spaces as
    # it likes, and keeps the space between two encoded-words, against RFC 2047 §6.2:
    # the name is compared without spaces.)
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    [to] = parsed["To"].addresses
    assert to.addr_spec == ON_THE_WIRE
    assert "".join(to.display_name.split()) == "".join(clean_name(name).split())


def test_a_reader_that_cannot_be_sent_to_is_a_message_build_error() -> None:
    """A non-ASCII local part would need SMTPUTF8: this reader's message is not built."""
    with pytest.raises(MessageBuildError, match=r"^jörg@example\.com: the part before the @"):
        build("Jörg", "Hi", to="jörg@example.com")


def test_the_body_is_text_then_html() -> None:
    """multipart/alternative: the text part first, the HTML part preferred."""
    parsed = email.message_from_bytes(build("Ann", "Hi"), policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]
