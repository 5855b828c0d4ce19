"""Address normalisation: the fast path for plain addresses agrees with email-validator."""

from __future__ import annotations

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.subscribers import normalise_email

ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-"
LOCAL = st.text(alphabet=ATEXT + ".", min_size=1, max_size=70)
LABEL = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-",
    min_size=1,
    max_size=66,
)
DOMAIN = st.lists(LABEL, min_size=1, max_size=4).map(".".join) | st.sampled_from(
    [
        "example.com",
        "mail.example.co.uk",
        "localhost",
        "test",
        "example.invalid",
        "xn--bcher-kva.example",
    ]
)


def reference(address: str) -> str | None:
    """What email-validator alone says: the normalised (lower-cased) address, or None."""
    try:
        return validate_email(address.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError:
        return None


@settings(max_examples=600, deadline=None)
@given(local=LOCAL, domain=DOMAIN)
def test_fast_path_agrees_with_email_validator(local: str, domain: str) -> None:
    """For any ASCII address, normalise_email accepts exactly what email-validator accepts."""
    address = f"{local}@{domain}"
    expected = reference(address)
    try:
        got: str | None = normalise_email(address)
    except ValueError:
        got = None
    assert got == expected


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("  Ann.Smith@Example.COM ", "ann.smith@example.com"),
        ("o'brien+news@example.ie", "o'brien+news@example.ie"),
        ("åsa@exempel.se", "åsa@exempel.se"),
        ("user@Bücher.example", "user@bücher.example"),
    ],
)
def test_normalise_examples(raw: str, normalised: str) -> None:
    """Case and surrounding space are dropped; international addresses go through the full check."""
    assert normalise_email(raw) == normalised


@pytest.mark.parametrize(
    "raw",
    ["", "ann", "ann@", "@example.com", "ann@@example.com", "a..b@example.com", "ann@localhost"],
)
def test_invalid_addresses(raw: str) -> None:
    """Invalid addresses raise ValueError naming the address."""
    with pytest.raises(ValueError, match="invalid email"):
        normalise_email(raw)
