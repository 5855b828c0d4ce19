"""Signed confirmation links for double opt-in: they name one signup (its address and
series), expire, and cannot be forged or altered.

Signed with SERIES_SECRET_KEY when it is set, else with the random key kept in the
state database: the key the unsubscribe links use (pipeline/tokens.py), but through
a key derived for this purpose alone, so that no unsubscribe token is ever a valid
confirmation token or the reverse. HMAC-SHA256 (RFC 2104), compared in constant time.
During a key rotation, tokens signed with SERIES_PREVIOUS_SECRET_KEY are accepted too
(a confirmation key is derived from each key the unsubscribe links accept).

A token is ``base64url(payload).base64url(mac)`` with payload
``c1.<signup id>.<expiry, Unix seconds>.<series slug>.<address digest>``: the address
itself is not in the link (links end up in logs), only a keyed digest of it, which the
stored signup must match.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .tokens import Signer, b64, fingerprint, split_token

_VERSION = "c1"
_PURPOSE = b"series double opt-in confirmation v1"


@dataclass(frozen=True)
class ConfirmSubject:
    """What a genuine confirmation token says."""

    signup_id: int
    series: str
    expires: datetime
    address_digest: str
    # The derived key whose MAC matched: the address digest is checked with it too.
    key: bytes = field(default=b"", repr=False, compare=False)

    def names(self, email: str) -> bool:
        """Whether the token was made for ``email`` (normalised as stored)."""
        return hmac.compare_digest(_digest(self.key, email), self.address_digest)


class ConfirmSigner:
    """Makes confirmation tokens with one key (bytes) and checks them with it and with
    each of ``previous`` (keys from before a rotation)."""

    def __init__(self, key: bytes, previous: tuple[bytes, ...] = ()) -> None:
        self._key = _derive(key)
        self._accepted = (self._key, *(_derive(k) for k in previous if k and k != key))
        self.fingerprint = fingerprint(key)

    @classmethod
    def for_signer(cls, signer: Signer) -> ConfirmSigner:
        """The confirmation signer beside the unsubscribe ``signer``: the same keys (its
        signing key, and SERIES_PREVIOUS_SECRET_KEY during a rotation), each derived."""
        key, *previous = signer.keys
        return cls(key, tuple(previous))

    def digest(self, email: str) -> str:
        """A short keyed digest of a (normalised) address, as the token carries it."""
        return _digest(self._key, email)

    def token(self, signup_id: int, series: str, email: str, *, expires: datetime) -> str:
        """The token for signup ``signup_id`` (to ``series``, for ``email``), valid until
        ``expires`` (whole seconds)."""
        stamp = int(expires.timestamp())
        payload = f"{_VERSION}.{signup_id}.{stamp}.{series}.{self.digest(email)}".encode()
        return f"{b64(payload)}.{b64(self._mac(payload))}"

    def verify(self, token: str) -> ConfirmSubject | None:
        """The subject of a genuine token (expired or not: the caller compares
        ``expires`` with its clock); None for anything forged, altered or malformed."""
        if len(token) > 400:
            return None
        parts = split_token(token)
        if parts is None:
            return None
        payload, mac = parts
        key = next((k for k in self._accepted if hmac.compare_digest(mac, _mac(k, payload))), None)
        if key is None:
            return None
        try:
            version, number, stamp, series, digest = payload.decode("ascii").split(".")
        except (UnicodeDecodeError, ValueError):
            return None
        if version != _VERSION or not _is_number(number) or not _is_number(stamp) or not series:
            return None
        try:
            expires = datetime.fromtimestamp(int(stamp), UTC)
        except (OverflowError, OSError, ValueError):
            return None
        return ConfirmSubject(int(number), series, expires, digest, key)

    def _mac(self, payload: bytes) -> bytes:
        return _mac(self._key, payload)


def _derive(key: bytes) -> bytes:
    return hmac.new(key, _PURPOSE, hashlib.sha256).digest()


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, b"token\0" + payload, hashlib.sha256).digest()[:18]


def _digest(key: bytes, email: str) -> str:
    mac = hmac.new(key, b"address\0" + email.encode("utf-8"), hashlib.sha256)
    return b64(mac.digest()[:12])


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) < 20
