"""Every change that asks for a reader to be planned again adds one to their
enrollment's ``revision`` in the same statement (`schema.replanned`): the CLI's pause,
resume, move, new time zone and resubscribe, a confirmed signup that brings a reader
back, and deliveries settled or retried by hand. A writer that did not would let a
run's bookmark, worked out before the change, be written over it (see
test_send_revision.py). On SQLite and on a real PostgreSQL.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline.store import open_store
from pipeline.store.schema import deliveries

from .test_send_revision import MONDAY, cli, enrollment, send

pytestmark = pytest.mark.usefixtures("each_database")


def test_every_change_that_replans_a_reader_counts_in_their_revision(
    example_copy: Path, readers: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each writer that asks for a reader to be planned again adds one to the revision in
    the same statement; a run's bookmark in between would otherwise go through."""
    ann, _ = readers
    send(example_copy, monkeypatch, MONDAY)
    at = ("--now", MONDAY.isoformat())
    changes = [
        ("subscribers", "pause", ann, *at),
        ("subscribers", "resume", ann, *at),
        ("subscribers", "move", ann, "--series", "attachment", "--to-part", "1", "--resend", *at),
        ("subscribers", "add", ann, "--timezone", "Asia/Tokyo", *at),
        ("subscribers", "unsubscribe", ann, "--series", "attachment"),
        ("subscribers", "add", ann, "--series", "attachment", "--resubscribe", *at),
    ]
    counter = itertools.count(1)
    for change in changes:
        cli(example_copy, *change)
        if change[1] != "unsubscribe":  # leaving needs no new plan: nothing is sent
            assert enrollment(example_copy, ann)[0::2] == (None, next(counter)), change


def test_signups_and_settled_deliveries_count_in_the_revision_too(
    example_copy: Path, readers: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other writers that ask for a new plan: a confirmed signup that brings a
    reader back (to the series, or to the whole list), a delivery settled by hand
    (`series resolve --not-sent`) and failed ones tried again (`--retry`)."""
    from pipeline.signup import Request, checked, confirm, register
    from pipeline.signup_tokens import ConfirmSigner

    ann, _ = readers
    send(example_copy, monkeypatch, MONDAY)
    offered = {"attachment": "Attachment Styles"}
    signer = ConfirmSigner(b"k" * 32)

    def sign_up_again(at: datetime) -> None:
        with open_store(example_copy) as store:
            request = checked(Request(email=ann, name="", series="attachment"), offered)
            issued = register(store, signer, request, now=at, lifetime=timedelta(days=2))
            assert issued is not None
            _, joined = confirm(
                store, signer, issued.token, now=at, offered=offered, first_parts={}
            )
            assert joined == "rejoined"

    def set_state(state: str) -> None:
        with open_store(example_copy) as store, store.begin() as conn:
            conn.execute(sa.update(deliveries).values(state=state))

    revision = 0
    for change in (
        lambda: cli(example_copy, "subscribers", "unsubscribe", ann, "--series", "attachment"),
        lambda: cli(example_copy, "subscribers", "unsubscribe", ann),
    ):
        change()
        revision += 1
        sign_up_again(MONDAY + timedelta(days=revision))
        assert enrollment(example_copy, ann)[0::2] == (None, revision)
    set_state("unknown")
    cli(example_copy, "resolve", "attachment/1", ann, "--not-sent")
    assert enrollment(example_copy, ann)[0::2] == (None, revision + 1)
    set_state("failed")
    cli(example_copy, "resolve", "attachment", "--retry")
    # Both readers' failed part 1 is tried again: both are planned afresh.
    assert enrollment(example_copy, ann)[0::2] == (None, revision + 2)
    assert enrollment(example_copy, readers[1])[0::2] == (None, 1)
