"""pipeline/headers.py: names, addresses and subjects as the world reads them."""

from __future__ import annotations

from email.header import decode_header, make_header
from email.utils import getaddresses

import pytest

from pipeline.errors import MessageBuildError
from pipeline.headers import (
    MAX_LINE,
    ascii_email,
    display_name,
    encode_text,
    format_address,
    header_line,
    line_problem,
    list_unsubscribe,
    one_line,
    recipient_name,
)

# An encoded-word that, decoded and written back raw, adds a recipient.
ADDS_RECIPIENT = "=?utf-8?q?x=2C_attacker=40evil=2Eexample=2C?="
# One that decodes to a line break and a Bcc field.
ADDS_BCC = "=?utf-8?q?hi=0D=0ABcc=3A_attacker=40evil=2Eexample?="


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Sam\nExample", "Sam Example"),
        ("Sam\r\nExample", "Sam Example"),
        ("Tab\there", "Tab here"),
        ("Nul\x00byte", "Nul byte"),
        ("Del\x7fete", "Del ete"),
        ("Next\u0085line", "Next line"),
        ("Line\u2028separator", "Line separator"),
        ("Paragraph\u2029separator", "Paragraph separator"),
        ("  Åsa Berg\n", "Åsa Berg"),
        ("\n\t\x00", ""),
    ],
)
def test_one_line_turns_control_characters_into_one_space(raw: str, clean: str) -> None:
    """Every run of control characters (C0, DEL, C1, U+2028/9) becomes one space."""
    assert one_line(raw) == clean


@pytest.mark.parametrize(
    ("email", "wire"),
    [
        ("anna@bücher.example", "anna@xn--bcher-kva.example"),
        ("anna@xn--bcher-kva.example", "anna@xn--bcher-kva.example"),
        ("Ann@Example.COM", "Ann@example.com"),
    ],
)
def test_domains_go_out_in_ascii_and_local_parts_as_they_are(email: str, wire: str) -> None:
    """An IDN domain becomes its A-labels (RFC 5890); the local part is never encoded."""
    assert ascii_email(email) == wire


@pytest.mark.parametrize(
    ("email", "reason"),
    [
        ("jörg@example.com", "jörg@example.com: the part before the @ is not ASCII; "),
        ("", "'' is not an email address"),
        ("a b@example.com", "a b@example.com: the part before the @ is not a plain address"),
        ("ann@-bad-.example", "the domain '-bad-.example' is not valid"),
    ],
)
def test_an_address_that_cannot_be_sent_says_why(email: str, reason: str) -> None:
    """A non-ASCII local part (SMTPUTF8, RFC 6531) or a broken address is refused."""
    with pytest.raises(MessageBuildError) as caught:
        ascii_email(email)
    assert str(caught.value).startswith(reason)


@pytest.mark.parametrize(
    ("name", "phrase"),
    [
        ("Ann Reader", '"Ann Reader"'),
        ('Ann "Jo" \\ Lee, PhD', '"Ann \\"Jo\\" \\\\ Lee, PhD"'),
        ("Sam\nExample", '"Sam Example"'),
        ("Åsa Berg", "=?utf-8?b?w4VzYSBCZXJn?="),
        (
            ADDS_RECIPIENT,
            "=?utf-8?b?PT91dGYtOD9xP3g9MkNfYXR0YWNrZXI9NDBldmlsPTJFZXhhbXBsZT0yQz89?=",
        ),
        ("\x00", ""),
    ],
)
def test_display_names_are_one_quoted_or_encoded_phrase(name: str, phrase: str) -> None:
    """Printable ASCII is quoted; anything else, and anything with =?, is encoded."""
    assert display_name(name) == phrase


def test_an_encoded_word_name_stays_one_recipient() -> None:
    """The issue's name that became a second recipient is one mailbox, read raw."""
    raw = format_address("victim@example.com", ADDS_RECIPIENT)
    assert "attacker" not in raw
    assert [address for _, address in getaddresses([raw])] == ["victim@example.com"]


def test_a_name_for_sendgrid_is_quoted_only_when_it_must_be() -> None:
    """Plain words go as they are; commas, dots and encoded-word lookalikes do not."""
    assert recipient_name("Åsa Berg") == "Åsa Berg"
    assert recipient_name("Berg, Åsa") == "=?utf-8?b?QmVyZywgw4VzYQ==?="
    assert recipient_name("Ann Reader, Jr.") == '"Ann Reader, Jr."'
    assert recipient_name(ADDS_RECIPIENT).startswith("=?utf-8?b?")


@pytest.mark.parametrize(
    ("subject", "raw"),
    [
        ("Part 1: Getting started", "Part 1: Getting started"),
        ("Café", "=?utf-8?b?Q2Fmw6k=?="),
        (ADDS_BCC, None),
    ],
)
def test_subjects_are_written_as_the_text_typed(subject: str, raw: str | None) -> None:
    """Plain ASCII as is; other text, and text that looks like an encoded-word, encoded
    so that a decoder gives back exactly the text typed (never a line break)."""
    written = encode_text(subject)
    if raw is not None:
        assert written == raw
    assert written.isascii() and "\r" not in written and "\n" not in written
    assert str(make_header(decode_header(written))) == subject


def test_long_list_unsubscribe_is_one_unencoded_line() -> None:
    """RFC 8058's header stays `<https://…>` however long: folding needs whitespace."""
    url = "https://steadyground.example/u/" + "t" * 300
    assert header_line("List-Unsubscribe", f"<{url}>") == f"List-Unsubscribe: <{url}>\r\n"


def test_a_line_over_998_octets_cannot_be_written() -> None:
    """RFC 5322's hard limit is refused, not broken."""
    with pytest.raises(MessageBuildError, match="998"):
        header_line("List-Unsubscribe", "<https://x.example/" + "t" * 1000 + ">")


def test_folding_happens_only_at_spaces() -> None:
    """A long value folds before a space, each line at most 78 characters."""
    folded = header_line("Subject", " ".join(["word"] * 40))
    lines = folded.split("\r\n")[:-1]
    assert len(lines) > 1 and all(len(line) <= 78 for line in lines)
    assert all(line.startswith(" ") for line in lines[1:])
    assert "".join(lines) == "Subject: " + " ".join(["word"] * 40)


@pytest.mark.parametrize("value", ["a\r\nBcc: x@evil.example", "ä", "a\x00b"])
def test_a_value_with_a_control_or_non_ascii_character_is_refused(value: str) -> None:
    """header_line never writes what could start a second field."""
    with pytest.raises(MessageBuildError):
        header_line("Subject", value)


def test_list_unsubscribe_uris_are_made_ascii() -> None:
    """An IDN host becomes A-labels and other non-ASCII is percent-encoded."""
    assert list_unsubscribe("<https://bücher.example/ü/t>") == (
        "<https://xn--bcher-kva.example/%C3%BC/t>"
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("Fine subject", None),
        ("Two\nlines", "must be one line: it contains a line break (U+000A)"),
        ("Tab\there", "contains a tab (U+0009); remove it"),
        ("Nul\x00", "contains a control character (U+0000); remove it"),
        (
            ADDS_BCC,
            "contains an encoded-word (=?…?=) that decodes to a line break (U+000D); "
            "write the text itself",
        ),
        ("=?utf-8?q?harmless?=", None),
    ],
)
def test_line_problem_says_why_a_field_is_not_one_line(text: str, problem: str | None) -> None:
    """The check behind `series check`'s subject, title and name errors."""
    assert line_problem(text) == problem


def test_recipient_name_keeps_every_word_foldable() -> None:
    """A name of one 2,000-letter word is encoded, so a To line can still be folded."""
    name = recipient_name("X" * 2000)
    assert max(len(word) for word in name.split(" ")) < MAX_LINE - len("To: ")
    assert str(make_header(decode_header(name))) == "X" * 2000


# Encoded-words Python's legacy decoder leaves alone but its modern parser (and mail
# programs) decode to CR LF and a Bcc line: an RFC 2231 language tag, an unknown charset.
SNEAKY = [
    "=?utf-8*en?q?Hi=0D=0ABcc:_attacker@evil.example?=",
    "=?x-unknown?q?Hi=0D=0ABcc:_attacker@evil.example?=",
]


@pytest.mark.parametrize("subject", SNEAKY)
def test_line_problem_sees_what_any_decoder_makes_a_line_break(subject: str) -> None:
    """Encoded-words with a language tag or an unknown charset cannot hide a line break."""
    import email
    import email.policy

    parsed = email.message_from_string(f"Subject: {subject}\n\nbody\n", policy=email.policy.default)
    assert "\r\n" in str(parsed["Subject"])  # the premise
    assert line_problem(subject) is not None
