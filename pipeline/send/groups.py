"""Due deliveries gathered into groups sent as one stream each.

`deliver` keeps one request in flight while it prepares the next, and waits for the
last answer before it returns. So the chunks of the plan (`planning.plan_chunks`,
``ledger.CHUNK`` enrollments each) are gathered up to ``SEND_GROUP`` due deliveries
before they are sent: the stream seldom restarts. A run alone and each worker process
send their share of the enrollments this way.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence

from ..content import Series
from ..plan import Step
from ..store.ledger import Due
from .deliver import deliver
from .planning import Share, plan_chunks
from .run import Run

SEND_GROUP = 20_000  # due deliveries per stream (about 17 MB while they wait)


def deliver_share(run: Run, series_list: Sequence[Series], series: Series, share: Share) -> None:
    """Plan and send one share of a series' enrollments (see `planning.shares`), chunk by
    chunk, in groups of up to ``SEND_GROUP`` due deliveries. Every article of
    ``series_list`` is rendered before the run's first group is sent (a broken template
    stops the run before anything goes out)."""
    pending: list[tuple[Series, Due, Step]] = []
    for due in plan_chunks(run, series, share.shard, everything=share.everything):
        if run.stopped():
            return
        pending += due
        if len(pending) >= SEND_GROUP:
            _deliver_group(run, series_list, pending)
            pending = []
    if pending and not run.stopped():
        _deliver_group(run, series_list, pending)


def _deliver_group(
    run: Run, series_list: Sequence[Series], due: list[tuple[Series, Due, Step]]
) -> None:
    due.sort(key=lambda item: item[2].due_at or run.options.now)
    if run.composer.renderer is None:
        run.composer.prepare(series_list, due)
        # The compiled emails live to the end of the run: keep the cycle collector
        # from walking them.
        gc.freeze()
    else:
        # Histories an edit made unusual need emails of their own.
        run.composer.prepare_due(due)
    deliver(run, due)
