"""A reader leaving after an attempt that may have been sent (Resend's 504), in a run
and in the repeat of an interrupted request: the request goes again under its key to
those who stay, nobody is sent anything twice or after leaving, and a repeat that
everyone left ends without an error (each written by the review of 670d2a7)."""

from __future__ import annotations

from collections.abc import Callable
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import pytest

from pipeline.providers import PROVIDER_URL_ENV
from pipeline.providers.resend import KEY_ENV
from pipeline.send import RETRIES
from pipeline.steering import set_paused
from pipeline.store import Store, open_store

from .fake_http import Reply, Request
from .fake_resend import BATCH_PATH as RESEND_BATCH
from .fake_resend import DEFAULT_KEY, SERVER_TEXT, FakeResend, error
from .helpers import delivery_states, enroll_examples, import_readers
from .test_send_leaving import LEAVING, MONDAY, _send

pytestmark = pytest.mark.usefixtures("each_database")

Action = Callable[[Store], object]


class ScriptedResend(FakeResend):
    """The fake Resend; the n-th batch request (counted from ``start``) runs
    ``script[n] = (action, answer)``: ``action(store)`` first (a reader leaving or
    coming back), then ``answer``: "504" (not processed), "504-after" (processed, then
    a gateway 504), or "pass"."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.script: list[tuple[Action | None, str]] = []
        self.ran = 0

    def handle(self, request: Request) -> Reply:
        if request.path == RESEND_BATCH and self.script:
            action, answer = self.script.pop(0)
            self.ran += 1
            if action is not None:
                with open_store(self.root) as store:
                    action(store)
            if answer == "504":
                return error(504, "internal_server_error", SERVER_TEXT)
            if answer == "504-after":
                super().handle(request)
                return error(504, "internal_server_error", SERVER_TEXT)
        return super().handle(request)


def leave(how: str, email: str) -> Action:
    return lambda store: LEAVING[how](store, email, MONDAY)


def come_back(email: str) -> Action:
    return lambda store: set_paused(store, email, paused=False, now=MONDAY)


def _accepted(fake: FakeResend) -> list[str]:
    return [a for email in fake.accepted for a in email["to"]]


def _states(root: Path) -> dict[str, int]:
    with open_store(root) as store, store.connect() as conn:
        return delivery_states(conn)


def _env(monkeypatch: pytest.MonkeyPatch, fake: FakeResend) -> None:
    monkeypatch.setenv(PROVIDER_URL_ENV, fake.url)
    monkeypatch.setenv(KEY_ENV, DEFAULT_KEY)


def _interrupted(root: Path, fake: FakeResend) -> int:
    """A first run whose request never reaches Resend (every attempt's connection
    drops): how many deliveries it leaves unknown."""
    fake.fail_next(RESEND_BATCH, "drop-before", times=RETRIES + 1)
    return int(_send(root, "resend").unknown)


# -- the repeat of an interrupted request (reconcile) ----------------------------------


@pytest.mark.parametrize("how", ["unsubscribed", "paused", "erased"])
def test_repeat_whose_only_reader_leaves_after_a_504(
    example_copy: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """One reader; run 1 never reaches Resend (unknown). Run 2 repeats it: Resend answers
    504 (it may have gone) and the reader leaves meanwhile. Nobody is left for the
    retry: the run ends without an error, the delivery unknown (or gone when erased)."""
    root = example_copy
    (email,) = import_readers(root, 1)
    with ScriptedResend(root) as fake:
        _env(monkeypatch, fake)
        assert _interrupted(root, fake) == 1
        fake.script = [(leave(how, email), "504")]
        second = _send(root, "resend")
        assert fake.ran == 1
        assert _accepted(fake) == []
    kept = 0 if how == "erased" else 1
    assert _states(root) == ({"unknown": 1} if kept else {}), _states(root)
    assert second.unknown == kept, second


@pytest.mark.parametrize("how", ["unsubscribed", "erased"])
def test_repeat_whose_readers_all_leave_after_a_504(
    example_copy: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Six readers, all leave during the backoff after a 504 of the repeat."""
    root = enroll_examples(example_copy)
    with ScriptedResend(root) as fake:
        _env(monkeypatch, fake)
        assert _interrupted(root, fake) == 6
        emails = [parseaddr(a)[1] for m in fake.batch_requests()[0].json for a in m["to"]]

        def everyone(store: Store) -> None:
            for e in emails:
                LEAVING[how](store, e, MONDAY)

        fake.script = [(everyone, "504")]
        second = _send(root, "resend")
    kept = 0 if how == "erased" else 6
    assert _states(root) == ({"unknown": 6} if kept else {}), _states(root)
    assert second.unknown == kept, second


def test_repeat_leaver_comes_back_between_retries(
    example_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Repeat: a 504 while asa pauses, then the retry (5) gets a 504 while asa resumes:
    the third attempt is still the 5 (the body of the second), not 6."""
    root = enroll_examples(example_copy)
    asa = "asa.berg@example.com"
    with ScriptedResend(root) as fake:
        _env(monkeypatch, fake)
        assert _interrupted(root, fake) == 6
        fake.script = [(leave("paused", asa), "504"), (come_back(asa), "504")]
        second = _send(root, "resend")
        sizes = [len(r.json) for r in fake.batch_requests()[RETRIES + 1 :]]
        keys = {r.header("Idempotency-Key") for r in fake.batch_requests()}
        accepted = _accepted(fake)
    assert sizes == [6, 5, 5], sizes
    assert len(keys) == 1
    assert sorted(accepted) == sorted(set(accepted)) and asa not in accepted, accepted
    assert _states(root) == {"sent": 5, "unknown": 1}, _states(root)
    assert (second.resolved, second.unknown) == (5, 1), second


# -- in a run (deliver) ---------------------------------------------------------------


@pytest.mark.parametrize("how", ["unsubscribed", "erased"])
def test_run_whose_only_reader_leaves_after_a_504(
    example_copy: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    root = example_copy
    (email,) = import_readers(root, 1)
    with ScriptedResend(root) as fake:
        _env(monkeypatch, fake)
        fake.script = [(leave(how, email), "504")]
        report = _send(root, "resend")
        n = len(fake.batch_requests())
    kept = 0 if how == "erased" else 1
    assert n == 1
    assert _states(root) == ({"unknown": 1} if kept else {}), _states(root)
    assert (report.sent, report.unknown, report.skipped) == (0, kept, 0), report


def test_run_first_attempt_arrived_then_reader_left(
    example_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt reached Resend (answer lost as a 504); asa leaves meanwhile.
    The retry of 5 under the same key is refused (409): nothing goes twice; all six
    unknown. The next run (asa still gone) repeats the 5: 409 again, still unknown, no
    email twice. Then asa comes back: the next run repeats all six, Resend answers from
    the first: all sent, nobody twice."""
    root = enroll_examples(example_copy)
    asa = "asa.berg@example.com"
    with ScriptedResend(root) as fake:
        _env(monkeypatch, fake)
        fake.script = [(leave("paused", asa), "504-after")]
        first = _send(root, "resend")
        assert len(_accepted(fake)) == 6
        assert [len(r.json) for r in fake.batch_requests()] == [6, 5]
        assert _states(root) == {"unknown": 6}, _states(root)
        assert first.unknown == 6, first
        second = _send(root, "resend")
        assert _states(root) == {"unknown": 6}, _states(root)
        assert second.unknown == 6, second
        set_paused(open_store(root), asa, paused=False, now=MONDAY)
        third = _send(root, "resend")
        accepted = _accepted(fake)
    assert len(accepted) == 6 and len(set(accepted)) == 6, accepted
    assert _states(root) == {"sent": 6}, _states(root)
    assert (third.resolved, third.unknown) == (6, 0), third


def test_run_leaver_comes_back_between_retries(
    example_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = enroll_examples(example_copy)
    asa = "asa.berg@example.com"
    with ScriptedResend(root) as fake:
        _env(monkeypatch, fake)
        fake.script = [(leave("paused", asa), "504"), (come_back(asa), "504")]
        report = _send(root, "resend")
        sizes = [len(r.json) for r in fake.batch_requests()]
        accepted = _accepted(fake)
    assert sizes == [6, 5, 5], sizes
    assert asa not in accepted and len(accepted) == 5
    assert _states(root) == {"sent": 5, "unknown": 1}, _states(root)
    assert (report.sent, report.unknown) == (5, 1), report


def test_a_repeat_everyone_left_does_not_stop_the_run(
    example_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repeat whose only reader left after a 504 ends quietly, and the run goes on to
    send the part due to a reader enrolled since (an IndexError there stopped the whole
    run before)."""
    root = example_copy
    (email,) = import_readers(root, 1)
    with ScriptedResend(root) as fake:
        _env(monkeypatch, fake)
        assert _interrupted(root, fake) == 1
        csv = root / "more.csv"
        csv.write_text("email,series\nnew@example.com,attachment\n", encoding="utf-8")
        from .helpers import ENROLLED_AT, run

        code, out, err = run(root, "subscribers", "import", str(csv), "--now", ENROLLED_AT)
        assert code == 0, out + err
        fake.script = [(leave("unsubscribed", email), "504")]
        _send(root, "resend")
        accepted = _accepted(fake)
    assert any("new@" in a for a in accepted), accepted


WINDOW = """
[tool.series.send_window]
days = ["mon", "tue", "wed", "thu", "fri"]
start = "09:00"
end = "17:00"
"""


def _send_at(root: Path, when: Any, jump: list[float]) -> Any:
    import time as _time

    from pipeline.config import load_config
    from pipeline.providers import get_provider
    from pipeline.send import SendOptions, send_due

    config = load_config(root)
    provider = get_provider("resend", config)
    options = SendOptions(
        now=when, sleep=lambda _: None, monotonic=lambda: _time.monotonic() + jump[0]
    )
    try:
        with open_store(root) as store:
            return send_due(config, store, provider, options)
    finally:
        provider.close()


@pytest.mark.parametrize("where", ["run", "repeat"])
def test_leaver_whose_window_closes_in_the_backoff(
    example_copy: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """r000 (Stockholm) and r001 (London), window 09-17 local, 15:00 UTC. A 504, and in
    the backoff r000 unsubscribes and the clock moves 70 minutes (Stockholm's window has
    closed, London's is open). r000 is not going anyway, so (as deliver does) the retry
    should go to r001 under the same key; the repeat (reconcile `_gate` checks the
    window of every row, those left out too) withholds the whole request instead."""
    from datetime import datetime as _dt

    from .helpers import configure

    root = example_copy
    configure(root, "", WINDOW)
    r0, r1 = import_readers(root, 2, zones=["Europe/Stockholm", "Europe/London"])
    when = _dt(2026, 11, 30, 15, 58, tzinfo=MONDAY.tzinfo)
    jump = [0.0]

    def leave_and_jump(store: Store) -> None:
        LEAVING["unsubscribed"](store, r0, MONDAY)
        jump[0] += 3 * 60

    with ScriptedResend(root) as fake:
        _env(monkeypatch, fake)
        if where == "repeat":
            fake.fail_next(RESEND_BATCH, "drop-before", times=RETRIES + 1)
            assert _send_at(root, when, jump).unknown == 2
        fake.script = [(leave_and_jump, "504")]
        report = _send_at(root, when, jump)
        sizes = [len(r.json) for r in fake.batch_requests()]
        accepted = _accepted(fake)
    with open_store(root) as store, store.connect() as conn:
        import sqlalchemy as sa

        from pipeline.store.schema import deliveries

        errors = conn.execute(sa.select(deliveries.c.state, deliveries.c.last_error)).all()
    assert any(r1 in a for a in accepted), (sizes, accepted, list(report.problems), errors)
    assert _states(root) == {"sent": 1, "unknown": 1}, _states(root)


def test_leaver_who_resumes_after_being_left_out(
    example_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 504 whose request never
    arrived, asa pauses in the backoff, the five others get it, asa stays unknown. asa
    resumes; the next run repeats asa alone under the key: Resend refuses (409, it holds
    the five), asa stays unknown (never sent twice, never sent at all until `series
    resolve`)."""
    root = enroll_examples(example_copy)
    asa = "asa.berg@example.com"
    with ScriptedResend(root) as fake:
        _env(monkeypatch, fake)
        fake.script = [(leave("paused", asa), "504")]
        first = _send(root, "resend")
        assert (first.sent, first.unknown) == (5, 1), first
        set_paused(open_store(root), asa, paused=False, now=MONDAY)
        second = _send(root, "resend")
        sizes = [len(r.json) for r in fake.batch_requests()]
        accepted = _accepted(fake)
    assert asa not in " ".join(accepted)
    assert sizes[:2] == [6, 5] and sizes[2:] and all(s == 1 for s in sizes[2:]), sizes
    assert _states(root) == {"sent": 5, "unknown": 1}, _states(root)
    assert second.unknown == 1, (second, list(second.problems))
