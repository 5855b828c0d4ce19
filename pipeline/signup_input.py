"""What a POST /subscribe carries (pipeline/signup_web.py): its fields, read from a
form or a JSON object, and the per-IP limit on such posts."""

from __future__ import annotations

import json
import threading
from collections import deque

from werkzeug.wrappers import Request

from .signup import SignupRefused
from .sources import encodable

# The fields of a signup; in JSON each is a string (or null, or left out).
FIELDS = ("email", "name", "series", "form", "next", "website")


def submitted(request: Request, as_json: bool) -> dict[str, str] | None:
    """The submitted fields as strings; None when the body is not a form or a JSON
    object (any JSON the parser cannot take: broken, nested too deeply, numbers too
    long, text that is not Unicode). Raises SignupRefused for a field of the JSON
    object that is not a string (null counts as left out)."""
    if as_json:
        try:
            data = json.loads(request.get_data(cache=False) or b"null")
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        if not isinstance(data, dict):
            return None
        found: dict[str, str] = {}
        for key, value in data.items():
            if value is None:
                continue
            if not isinstance(value, str):
                if key in FIELDS:
                    raise SignupRefused(key, f"{key} must be a string")
                continue
            if not encodable(value):  # a lone surrogate ("\ud800"): not text
                return None
            found[key] = value
        return found
    if request.mimetype not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return None
    return {key: request.form.get(key, "") for key in request.form}


class IpLimiter:
    """At most ``per_hour`` requests per IP address in any hour (0: no limit), in memory."""

    def __init__(self, per_hour: int) -> None:
        self.per_hour = per_hour
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, ip: str, now: float) -> float | None:
        """None if this request may go on (and it is counted); else seconds to wait."""
        if self.per_hour <= 0:
            return None
        with self._lock:
            if len(self._seen) > 10_000:  # forget addresses that went quiet
                self._seen = {k: v for k, v in self._seen.items() if v and v[-1] > now - 3600}
            times = self._seen.setdefault(ip, deque())
            while times and times[0] <= now - 3600:
                times.popleft()
            if len(times) >= self.per_hour:
                return max(1.0, times[0] + 3600 - now)
            times.append(now)
            return None
