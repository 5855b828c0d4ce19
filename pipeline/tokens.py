"""Signed unsubscribe tokens: they name a subscriber, a series and the article of the
email, and cannot be forged.

HMAC-SHA256 with SERIES_SECRET_KEY when it is set, else with a random key kept in
the state database (so the default workspace needs no secret). Compared in
constant time. A token also carries when its email was made, so a link from before
a person subscribed again no longer unsubscribes them, and (since version 3) the
article the email carried, so that `series status` counts an unsubscribe against
that article. Version 2 tokens (no article) in emails sent before stay valid.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass
from datetime import UTC, datetime

SECRET_ENV = "SERIES_SECRET_KEY"
# During a key rotation: the key links already in inboxes were signed with, still
# accepted when verifying (never used to sign).
PREVIOUS_SECRET_ENV = "SERIES_PREVIOUS_SECRET_KEY"
_VERSION = "3"
_OLD_VERSION = "2"  # subscriber, time and series; no article
# The subscriber id of links in test sends (`series test-send`): nobody to unsubscribe.
TEST_SUBSCRIBER = 0


@dataclass(frozen=True)
class TokenSubject:
    subscriber_id: int
    series: str | None  # None: every series
    issued: datetime  # when the email carrying the token was made
    article: str | None = None  # the slug of the email's article (None: not known)


def fingerprint(key: bytes) -> str:
    """A short name for a signing key that does not reveal it: 16 hex digits of
    SHA-256 over a fixed label and the key. Stored with what was sent, so that
    `series send` and `series serve` can tell whether they sign and verify with the
    key the links in inboxes were made with."""
    return hashlib.sha256(b"series link-signing key\0" + key).hexdigest()[:16]


def keys_from_environment(stored_key: bytes) -> tuple[bytes, tuple[bytes, ...]]:
    """(the key that signs, the keys also accepted when verifying) as the environment
    sets them: SERIES_SECRET_KEY as UTF-8 text, else ``stored_key`` (the database's
    own key, bytes); SERIES_PREVIOUS_SECRET_KEY as UTF-8 text, if set."""
    secret = os.environ.get(SECRET_ENV, "")
    previous = os.environ.get(PREVIOUS_SECRET_ENV, "")
    key = secret.encode("utf-8") if secret else stored_key
    return key, ((previous.encode("utf-8"),) if previous else ())


class Signer:
    """Signs with ``key``; verifies with ``key`` and each of ``previous``."""

    def __init__(self, key: bytes, previous: tuple[bytes, ...] = ()) -> None:
        self._key = key
        self._previous = tuple(k for k in previous if k and k != key)
        # The signing key's HMAC state, copied for each token: hmac.digest sets the key
        # up and looks SHA-256 up in OpenSSL on every call (7.5 against 2.9 µs a token).
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)

    @classmethod
    def from_environment(cls, stored_key: str) -> Signer:
        """SERIES_SECRET_KEY (else the database's own key, ``stored_key`` in hex), and
        SERIES_PREVIOUS_SECRET_KEY for verifying links signed before a rotation. (The
        state database's signer also accepts its own key after a rotation away from
        it: ``store.linkkeys.accepted_keys``.)"""
        return cls(*keys_from_environment(bytes.fromhex(stored_key)))

    @property
    def fingerprint(self) -> str:
        """The fingerprint of the key this signer signs with."""
        return fingerprint(self._key)

    @property
    def keys(self) -> tuple[bytes, ...]:
        """The key it signs with, then the keys it also accepts (for confirmation links,
        which derive their own key from each: pipeline/signup_tokens.py)."""
        return (self._key, *self._previous)

    @property
    def fingerprints(self) -> frozenset[str]:
        """The fingerprints of every key this signer accepts."""
        return frozenset(fingerprint(k) for k in (self._key, *self._previous))

    def token(
        self,
        subscriber_id: int,
        series: str | None,
        *,
        issued: datetime,
        article: str | None = None,
    ) -> str:
        """A token for one email: ``issued`` (whole seconds) is when it was made,
        ``article`` the slug of the article it carries."""
        stamp = int(issued.timestamp())
        name = series or ""
        # The series' length first: a slug may hold any character but "/", dots too.
        payload = f"{_VERSION}.{subscriber_id}.{stamp}.{len(name)}.{name}{article or ''}".encode()
        return f"{b64(payload)}.{b64(self._mac(payload))}"

    def verify(self, token: str) -> TokenSubject | None:
        """The subject of a genuine token; None for anything forged, altered or malformed."""
        parts = split_token(token)
        if parts is None:
            return None
        payload, mac = parts
        if not any(
            hmac.compare_digest(mac, self._mac(payload, key))
            for key in (self._key, *self._previous)
        ):
            return None
        try:
            version, subscriber, stamp, rest = payload.decode().split(".", 3)
        except ValueError:
            return None
        article = None
        if version == _VERSION:
            length, _, named = rest.partition(".")
            if not _is_number(length) or int(length) > len(named):
                return None
            series, article = named[: int(length)], named[int(length) :] or None
        elif version == _OLD_VERSION:
            series = rest
        else:
            return None
        if not _is_number(subscriber) or not _is_number(stamp):
            return None
        try:
            issued = datetime.fromtimestamp(int(stamp), UTC)
        except (OverflowError, OSError, ValueError):
            return None
        return TokenSubject(int(subscriber), series or None, issued, article)

    def _mac(self, payload: bytes, key: bytes | None = None) -> bytes:
        if key is None or key == self._key:
            mac = self._keyed.copy()
            mac.update(payload)
            return mac.digest()[:18]
        return hmac.digest(key, payload, "sha256")[:18]


def b64(data: bytes) -> str:
    """``data`` in URL-safe base64 without padding (RFC 4648 section 5), as links carry
    it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def split_token(token: str) -> tuple[bytes, bytes] | None:
    """(payload, MAC) of a token written ``b64(payload).b64(mac)``; None when ``token``
    is not two strict base64 values joined by one dot."""
    try:
        payload_part, mac_part = token.split(".")
        return unb64(payload_part), unb64(mac_part)
    except ValueError:
        return None


def unb64(text: str) -> bytes:
    """``b64``'s inverse; raises ValueError for anything else. Strict: the decoder
    skips characters outside the alphabet and ignores a final character's spare bits,
    so only the one canonical spelling of a value is taken."""
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError("not base64") from exc
    if b64(data) != text:
        raise ValueError("not canonical base64")
    return data


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()
