"""The rate limit holds at the provider: never more than ``rate_limit`` messages in any
window of a second or more, timed by each message's arrival at the fake Postmark on
127.0.0.1, with one sending process and with two sharing the run."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.send.limiter import RateLimiter

from .fake_postmark import FakePostmark
from .helpers import configure, import_readers, run

RATE = 20
MONDAY = "2026-11-30T10:00:00+00:00"
# Arrival times come from the server's clock, the limiter's moments from the sender's:
# two requests' trips to 127.0.0.1 may differ by this much.
JITTER = 0.05


def worst_window(arrivals: list[float], rate: float) -> tuple[int, float]:
    """The most messages in a window of a second or more compared with what the rate
    allows there: (messages, allowed) for the worst window, over every window that
    starts and ends at an arrival."""
    times = sorted(arrivals)
    worst = (0, float(rate))
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            count = j - i + 1
            allowed = rate * max(1.0, times[j] - start + JITTER)
            if count - allowed > worst[0] - worst[1]:
                worst = (count, allowed)
    return worst


@pytest.mark.parametrize("workers", [1, 2])
def test_no_window_of_a_second_or_more_passes_the_rate(
    postmark_example: Path, postmark: FakePostmark, workers: int
) -> None:
    """rate_limit = 20 and 60 readers (six batches of 10 for the provider): every window
    of a second or more holds at most 20 messages a second, with one process or two,
    and the run still goes at close to the rate (not half of it)."""
    configure(
        postmark_example,
        f"rate_limit = {RATE}\nworkers = {workers}",
        "[tool.series.postmark]\nbatch_size = 10",
    )
    import_readers(postmark_example, 54)  # with the six example readers: 60

    code, out, err = run(postmark_example, "send", "--now", MONDAY)

    assert code == 0, out + err
    assert out.startswith("sent 60, failed 0")
    arrivals = [float(m["at"]) for m in postmark.accepted]
    assert len(arrivals) == 60
    count, allowed = worst_window(arrivals, RATE)
    assert count <= allowed, (count, allowed)
    # 60 messages at 20 a second take about three seconds; far more means the limiter
    # waits longer than the rate asks.
    assert max(arrivals) - min(arrivals) < 60 / RATE * 1.6


def test_a_batch_is_charged_before_it_goes() -> None:
    """The first batch is not free: with rate 50 and the provider's 500, batches are
    sized down to 5, and 1,000 messages take about 20 s of the limiter's clock (not
    11 s, as when a batch was charged after it went)."""
    clock = [0.0]
    limiter = RateLimiter(50, lambda: clock[0], lambda s: clock.__setitem__(0, clock[0] + s))
    size = limiter.batch_size(500)
    assert size == 5
    sent: list[tuple[float, int]] = []
    for _ in range(1000 // size):
        limiter.wait(size)  # the send loop, before it claims: books nothing
        limiter.charge(size)  # the sending thread, right before the request
        sent.append((clock[0], size))
    assert 20.0 <= clock[0] + size / 50 <= 23.0
    count, allowed = worst_window([t for t, n in sent for _ in range(n)], 50)
    assert count <= allowed
