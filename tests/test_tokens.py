"""Signed unsubscribe tokens: genuine ones round-trip, anything else is refused."""

from __future__ import annotations

import base64
import hmac
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.tokens import SECRET_ENV, TEST_SUBSCRIBER, Signer, TokenSubject

KEY = bytes(range(32))
ISSUED = datetime(2026, 11, 28, 9, 30, 15, 123456, tzinfo=UTC)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_round_trip_names_subscriber_series_and_issue_time() -> None:
    """A token verifies to its subscriber, series and issue time (whole seconds)."""
    signer = Signer(KEY)
    subject = signer.verify(signer.token(42, "attachment", issued=ISSUED))
    assert subject == TokenSubject(42, "attachment", ISSUED.replace(microsecond=0))


def test_round_trip_without_series_means_every_series() -> None:
    """A token made for no particular series verifies with series None."""
    signer = Signer(KEY)
    subject = signer.verify(signer.token(7, None, issued=ISSUED))
    assert subject is not None and subject.series is None and subject.subscriber_id == 7


def test_series_with_dots_round_trips() -> None:
    """The payload separator may appear in a series slug without confusing the parser."""
    signer = Signer(KEY)
    subject = signer.verify(signer.token(3, "v2.0.notes", issued=ISSUED))
    assert subject is not None and subject.series == "v2.0.notes"


def test_token_is_url_safe() -> None:
    """A token can be put in a URL path as it is: only base64url characters and one dot."""
    token = Signer(KEY).token(123456, "a-series", issued=ISSUED)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    assert token.count(".") == 1


def test_forged_token_is_refused() -> None:
    """A well-formed payload with a MAC made without the key does not verify."""
    payload = f"2.42.{int(ISSUED.timestamp())}.attachment".encode()
    forged = f"{b64(payload)}.{b64(bytes(18))}"
    assert Signer(KEY).verify(forged) is None


def test_tampered_payload_is_refused() -> None:
    """Changing the subscriber id in a genuine token's payload breaks its MAC."""
    signer = Signer(KEY)
    payload_part, mac_part = signer.token(42, "attachment", issued=ISSUED).split(".")
    payload = unb64(payload_part).replace(b".42.", b".43.")
    assert signer.verify(f"{b64(payload)}.{mac_part}") is None


def test_tampered_mac_is_refused() -> None:
    """Flipping one bit of the MAC makes the token invalid."""
    signer = Signer(KEY)
    payload_part, mac_part = signer.token(42, "attachment", issued=ISSUED).split(".")
    mac = bytearray(unb64(mac_part))
    mac[0] ^= 1
    assert signer.verify(f"{payload_part}.{b64(bytes(mac))}") is None


def test_other_spellings_of_a_genuine_token_are_refused() -> None:
    """Characters the base64 decoder would skip, or padding, do not pass as the same token."""
    signer = Signer(KEY)
    token = signer.token(42, "attachment", issued=ISSUED)
    payload_part, mac_part = token.split(".")
    assert signer.verify(token) is not None
    assert signer.verify(f"{payload_part}.{mac_part}!") is None
    assert signer.verify(f"{payload_part}=.{mac_part}") is None
    assert signer.verify(f"{payload_part[:5]}\n{payload_part[5:]}.{mac_part}") is None


def test_wrong_key_is_refused() -> None:
    """A token signed with another key does not verify."""
    token = Signer(b"another key").token(42, "attachment", issued=ISSUED)
    assert Signer(KEY).verify(token) is None


@pytest.mark.parametrize(
    "token",
    ["", ".", "abc", "a.b.c", "%%%.%%%", "not base64!.x", "AAAA.AAAA", "é.é"],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    """Garbage of any shape verifies to None instead of raising."""
    assert Signer(KEY).verify(token) is None


@pytest.mark.parametrize(
    "payload",
    [
        b"1.42.1764322215.s",
        b"2.x.1764322215.s",
        b"2.42.soon.s",
        b"2.42",
        b"\xff\xfe",
        "2.².1.s".encode(),
    ],
)
def test_signed_but_malformed_payloads_are_refused(payload: bytes) -> None:
    """Even correctly signed, a payload of another version or shape is refused."""
    mac = hmac.new(KEY, payload, "sha256").digest()[:18]
    assert Signer(KEY).verify(f"{b64(payload)}.{b64(mac)}") is None


def test_mac_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """verify compares MACs with hmac.compare_digest, not ==."""
    calls: list[tuple[bytes, bytes]] = []
    real: Callable[[bytes, bytes], bool] = hmac.compare_digest

    def watched(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", watched)
    signer = Signer(KEY)
    token = signer.token(42, "attachment", issued=ISSUED)
    assert signer.verify(token) is not None
    assert Signer(b"other").verify(token) is None
    assert len(calls) == 2 and calls[0][0] == unb64(token.split(".")[1])


def test_secret_from_environment_wins_over_stored_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """With SERIES_SECRET_KEY set, tokens are signed with it, not with the stored key."""
    stored = "ab" * 32
    monkeypatch.setenv(SECRET_ENV, "a secret from the environment")
    token = Signer.from_environment(stored).token(5, "s", issued=ISSUED)
    assert Signer(b"a secret from the environment").verify(token) is not None
    assert Signer(bytes.fromhex(stored)).verify(token) is None


def test_stored_key_is_used_without_environment_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without SERIES_SECRET_KEY the key kept in the database signs the tokens."""
    stored = "cd" * 32
    monkeypatch.delenv(SECRET_ENV, raising=False)
    token = Signer.from_environment(stored).token(5, "s", issued=ISSUED)
    assert Signer(bytes.fromhex(stored)).verify(token) is not None


def test_test_send_subscriber_round_trips() -> None:
    """Test-send links (subscriber 0) are genuine tokens the web app can recognise."""
    signer = Signer(KEY)
    subject = signer.verify(signer.token(TEST_SUBSCRIBER, "s", issued=ISSUED))
    assert subject is not None and subject.subscriber_id == TEST_SUBSCRIBER


def test_token_names_the_article_of_its_email() -> None:
    """Version 3 tokens carry the email's article, however its slug and the series' look."""
    signer = Signer(KEY)
    subject = signer.verify(signer.token(5, "v2.0", issued=ISSUED, article="3.anxious.v2"))
    assert subject == TokenSubject(5, "v2.0", ISSUED.replace(microsecond=0), "3.anxious.v2")


def test_version_2_tokens_in_emails_already_sent_still_verify() -> None:
    """A link made before tokens named the article verifies, with article None."""
    payload = b"2.42.1764322215.attachment.v2"
    mac = hmac.new(KEY, payload, "sha256").digest()[:18]
    subject = Signer(KEY).verify(f"{b64(payload)}.{b64(mac)}")
    assert subject == TokenSubject(
        42, "attachment.v2", datetime.fromtimestamp(1764322215, UTC), None
    )


@pytest.mark.parametrize("payload", [b"3.42.1764322215.9.short", b"3.42.1764322215.x.s", b"3.4"])
def test_version_3_with_a_bad_length_is_refused(payload: bytes) -> None:
    """A signed version 3 payload whose series length does not fit is refused."""
    mac = hmac.new(KEY, payload, "sha256").digest()[:18]
    assert Signer(KEY).verify(f"{b64(payload)}.{b64(mac)}") is None


@given(
    series=st.one_of(st.none(), st.text(min_size=1, max_size=100).filter(lambda s: "/" not in s)),
    article=st.one_of(st.none(), st.text(min_size=1, max_size=200)),
    who=st.integers(min_value=0, max_value=2**40),
)
def test_any_series_and_article_round_trip(
    series: str | None, article: str | None, who: int
) -> None:
    """Whatever characters a series or article slug holds (dots, line breaks, any
    script), the token gives back exactly those."""
    signer = Signer(KEY)
    subject = signer.verify(signer.token(who, series, issued=ISSUED, article=article))
    assert subject is not None
    assert (subject.subscriber_id, subject.series, subject.article) == (who, series, article)
