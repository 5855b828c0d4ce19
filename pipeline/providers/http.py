"""The HTTP edge shared by provider adapters: one session, errors translated once.

``requests`` exceptions become ProviderError here. A connection that could not be
made is retryable and certainly sent nothing; a timeout or a connection dropped
after the request went out may have been processed, so it is ``maybe_sent``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from ..redact import scrub_secrets
from .base import ProviderError


def api_key(variable: str, provider: str) -> str:
    """The provider's key from the environment (and only from there); without one the
    run stops before anything is claimed."""
    key = os.environ.get(variable, "").strip()
    if not key:
        raise ProviderError(
            f"the {provider} provider needs an API key: set the {variable} environment variable",
            auth=True,
        )
    return key


# A gateway in front of the provider gave up waiting (502, 504): the provider behind it
# may still have taken the request, so a send answered so has an unknown outcome.
GATEWAY_ERRORS = frozenset({502, 504})


class HttpClient:
    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str],
        timeout: float,
        secrets: Sequence[str],
        name: str,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers.update(headers)
        self.timeout = timeout
        self.secrets = [s for s in secrets if s]
        self.name = name

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = f"{self.base_url}{path}"
        try:
            return self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.ConnectTimeout as exc:
            raise ProviderError(
                self._say(f"could not connect ({exc.__class__.__name__})"), retryable=True
            ) from None
        except requests.Timeout:
            raise ProviderError(
                self._say(f"no answer within {self.timeout:g} s"), retryable=True, maybe_sent=True
            ) from None
        except requests.ConnectionError as exc:
            if _never_connected(exc):
                raise ProviderError(self._say("could not connect"), retryable=True) from None
            raise ProviderError(
                self._say("the connection dropped before an answer"),
                retryable=True,
                maybe_sent=True,
            ) from None
        except requests.RequestException as exc:
            raise ProviderError(
                self._say(f"request failed ({exc.__class__.__name__})"),
                retryable=True,
                maybe_sent=True,
            ) from None

    def raise_for_transient(self, response: requests.Response) -> None:
        """429 and 5xx: retry later, after Retry-After when the provider gives one."""
        status = response.status_code
        if status == 429 or status >= 500:
            raise ProviderError(
                self._say(f"answered {status}; will retry"),
                retryable=True,
                maybe_sent=status in GATEWAY_ERRORS,
                retry_after=retry_after(response.headers.get("Retry-After")),
            )

    def close(self) -> None:
        self.session.close()

    def _say(self, what: str) -> str:
        return self.scrub(f"{self.name}: {what}")

    def scrub(self, text: str) -> str:
        """Text that may echo a request (a provider's error body) with the secrets blanked
        (``redact.scrub_secrets``; what is built from it is scrubbed again in base.py)."""
        return scrub_secrets(text, self.secrets)


def _never_connected(exc: requests.ConnectionError) -> bool:
    """True when the request cannot have reached the server (no connection was made)."""
    inner = exc.args[0] if exc.args else None
    reason = getattr(inner, "reason", inner)
    return isinstance(reason, NewConnectionError | ConnectTimeoutError)


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds, or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
