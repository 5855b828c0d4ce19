"""The warnings about edits that no longer match what readers received, from a real
ledger on a temporary SQLite file and on a real PostgreSQL server."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline.config import load_config
from pipeline.content import Series, load_series
from pipeline.edits import history_problems, state_problems
from pipeline.store import Store, open_store
from pipeline.store.schema import deliveries, enrollments, subscribers

from .conftest import ROOT

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
# Who received what of the example series (by slug), and where they enrolled.
READERS = {
    "ann@example.com": (1, ["attachment-theory", "secure"]),
    "bo@example.com": (2, ["secure"]),
    "cy@example.com": (3, ["anxious"]),
    "dee@example.com": (1, ["attachment-theory"]),
    "eve@example.com": (1, ["attachment-theory", "secure"]),  # unsubscribed since
}


@pytest.fixture
def store(database_url: str, tmp_path: Path) -> Iterator[Store]:
    with open_store(tmp_path, database_url) as opened:
        with opened.begin() as conn:
            for number, (email, (start, received)) in enumerate(READERS.items(), start=1):
                status = "unsubscribed" if email.startswith("eve") else "active"
                conn.execute(
                    subscribers.insert().values(
                        id=number,
                        email=email,
                        status=status,
                        created_at=NOW,
                        updated_at=NOW,
                        attributes={},
                    )
                )
                conn.execute(
                    enrollments.insert().values(
                        subscriber_id=number,
                        series="attachment",
                        enrolled_at=NOW,
                        start_part=start,
                    )
                )
                for part, slug in enumerate(received, start=start):
                    conn.execute(
                        deliveries.insert().values(
                            subscriber_id=number,
                            series="attachment",
                            article=slug,
                            part=part,
                            state="sent",
                            created_at=NOW,
                            updated_at=NOW,
                            sent_at=NOW,
                        )
                    )
        yield opened


def example() -> Series:
    (series,), _ = load_series(load_config(ROOT))
    return series


def reordered(series: Series, *slugs: str, new: str | None = None) -> Series:
    """The series with these articles (by slug, ``new`` a copy of part 1 under that slug)
    as parts 1, 2, 3… in this order."""
    by_slug = {a.slug: a for a in series.articles}
    if new is not None:
        by_slug[new] = dataclasses.replace(series.articles[0], slug=new, source=f"{new}.md")
    articles = tuple(
        dataclasses.replace(by_slug[slug], part=part) for part, slug in enumerate(slugs, start=1)
    )
    return dataclasses.replace(series, articles=articles)


def messages(store: Store, series: Series) -> list[str]:
    return [p.message for p in history_problems(store, [series])]


def test_unchanged_content_has_nothing_to_say(store: Store) -> None:
    """Readers who started later than part 1 are not 'past' it: no warning at all."""
    assert messages(store, example()) == []


def test_inserted_article_counts_the_active_readers_past_it(store: Store) -> None:
    """A new part 2: Ann (1, 2) and Bo (who started at 2 and has it) are past it; Cy,
    who started at 3, never wanted it, nor 'secure', now part 3 but part 2 when it was
    sent; Dee is before it; Eve left."""
    inserted = reordered(
        example(),
        "attachment-theory",
        "new",
        "secure",
        "anxious",
        "avoidant",
        "disorganized",
        new="new",
    )
    assert messages(store, inserted) == [
        "2 readers already received later parts but not this one (part 2): they will skip it, "
        "as an article inserted before a reader's position is skipped (see README, \"Editing a "
        'series after readers started")'
    ]


def test_gone_article_counts_who_had_it_and_guesses_the_new_name(store: Store) -> None:
    """'secure' renamed without its slug: three readers had it; the new file nobody has
    received at its old part is named as the likely rename."""
    renamed = reordered(
        example(),
        "attachment-theory",
        "secure-attachment",
        "anxious",
        "avoidant",
        "disorganized",
        new="secure-attachment",
    )
    (problem,) = history_problems(store, [renamed])
    assert (problem.path, problem.severity) == ("series/attachment", "warning")
    assert problem.message == (
        "'secure' was sent to 3 readers and is gone: renamed? set `slug: secure` on the new "
        "file (secure-attachment.md?); removed: nothing to do, it is skipped"
    )


def test_check_reads_a_new_database_without_touching_it(
    database_url: str, example_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`series check` with SERIES_DATABASE_URL naming a database nothing has written to
    yet: no warning, and still no schema afterwards (check never migrates)."""
    monkeypatch.setenv("SERIES_DATABASE_URL", database_url)
    config = load_config(example_copy)
    assert state_problems(config, load_series(config)[0]) == []
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        assert not sa.inspect(conn).has_table("alembic_version")
    engine.dispose()


def test_gone_article_with_one_unknown_delivery_says_has(store: Store) -> None:
    """One delivery of unknown outcome of a gone article is counted in the singular."""
    with store.begin() as conn:
        conn.execute(
            deliveries.insert().values(
                subscriber_id=4,
                series="attachment",
                article="old-intro",
                part=9,
                state="unknown",
                created_at=NOW,
                updated_at=NOW,
            )
        )
    (problem,) = history_problems(store, [example()])
    assert problem.message.endswith(
        "; 1 delivery of it has an unknown outcome: decide them with "
        "`series resolve attachment/old-intro EMAIL`"
    )
