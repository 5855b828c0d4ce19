"""The rate limit of a send: ``rate_limit`` messages per second, never more in any
window of a second or more, whatever the batch size and however many worker processes
share the run (each takes its share: pipeline/send/workers.py)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable


class RateLimiter:
    """At most ``rate`` messages in any window of a second or more, charged before a
    request goes: it waits until its batch fits, and is booked from the moment it is
    sent (``charge``, in the sending thread) to the moment its answer came
    (``settle``), since the provider may count it anywhere in between; the send loop
    waits for the same moment before it claims the batch (``wait``).

    A batch arrives all at once, so a window that begins with one batch and ends just
    after another holds both: the wait makes every such window hold no more than its
    share. Windows of one to two seconds are enough to check: a longer one is cut into
    pieces of that length, each within its share. Batches are sized down to a tenth of
    a second's share (``batch_size``), so the pace stays close to the rate: at least
    ``floor(b) / (floor(b) + 1)`` of it for ``b`` = rate / batch (about 0.9 at a tenth,
    0.5 for one message a second, the one rate where a message can't wait less)."""

    HORIZON = 2.0  # seconds of sends the check looks back on (see above)

    def __init__(
        self, rate: float | None, monotonic: Callable[[], float], sleep: Callable[[float], None]
    ) -> None:
        self.rate = rate
        self.monotonic = monotonic
        self.sleep = sleep
        self.sent: deque[list[float]] = deque()  # [moment, messages] of recent batches
        self._lock = threading.Lock()  # the send loop paces, the sending thread charges

    def batch_size(self, size: int) -> int:
        """The largest batch to send under this rate: ``size`` (the provider's), or a
        tenth of a second's share when that is smaller (at least one message)."""
        if not self.rate:
            return size
        return max(1, min(size, int(self.rate / 10)))

    def wait(self, count: int) -> None:
        """Wait until a batch of ``count`` could go out, booking nothing: the send loop
        paces its claims with it, so that no claim is held through a long wait."""
        if not self.rate:
            return
        now = self.monotonic()
        with self._lock:
            start = self.earliest(count, now)
        if start > now:
            self.sleep(start - now)

    def charge(self, count: int) -> None:
        """Right before a request goes (before its gate renews the claims, so no lease
        is held through a long wait): wait until its ``count`` messages may go out,
        and book them from that moment. A wait cut short (the run is being stopped)
        books them where it was to end; the gate then stops the request."""
        if not self.rate:
            return
        now = self.monotonic()
        with self._lock:
            start = self.earliest(count, now)
            if start <= now:
                self.sent.append([now, count])
                return
        self.sleep(start - now)
        with self._lock:
            self.sent.append([max(start, self.monotonic()), count])

    def earliest(self, count: int, now: float) -> float:
        """The first moment from ``now`` at which a batch of ``count`` keeps every window
        of a second or more within the rate: for each recent batch, the messages from it
        on, this one included, over the rate make the time they need since it began."""
        assert self.rate
        while self.sent and self.sent[0][0] <= now - self.HORIZON:
            self.sent.popleft()
        start = now
        total = float(count)
        for moment, sent in reversed(self.sent):
            total += sent
            if total > self.rate:
                start = max(start, moment + total / self.rate)
        return start

    def settle(self) -> None:
        """The request last charged has been answered: its messages arrived no later
        than now, so the booking moves to now. The next batch then waits from the
        latest moment the last one can have arrived, however long the request took
        (the first one of a run also opens the connection)."""
        if not self.rate:
            return
        now = self.monotonic()
        with self._lock:
            if self.sent:
                self.sent[-1][0] = max(self.sent[-1][0], now)
