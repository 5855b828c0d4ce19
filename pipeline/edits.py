"""Editing a series after readers started: where today's content and what readers
received no longer match, as warnings for `series check` and `series send --dry-run`.

The ledger knows articles by slug (the planner's rules: pipeline/plan.py). Warned
about, with counts:

- an article that was sent and is gone: renamed without keeping its ``slug:``, or
  removed (then it is simply skipped);
- a placeholder identity (``part-7``): a delivery recorded before articles had
  identities, for a part no article had when the database was upgraded;
- an article readers are already past without having it (inserted before their
  position, or moved behind it by a reordering): the planner skips it for them.

Read-only: the state database is never created or migrated here.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Sequence
from pathlib import Path

from .config import Config
from .content import Article, Series
from .errors import Problem
from .plan import PLACEHOLDER
from .store import Store, StoreError, open_store, state_exists
from .store.history import Recorded, readers_past, recorded_articles
from .store.migrate import HEAD, current


def state_problems(config: Config, series_list: Sequence[Series]) -> list[Problem]:
    """Warnings about the state database against today's content, if there is one: it is
    opened read-only (a SQLite file is never created, no migration ever runs). A schema
    older or newer than this version's, or a database that cannot be read, is one line."""
    workspace = config.root
    if not state_exists(workspace):
        return []
    try:
        with open_store(workspace, migrate=False) as store:
            with store.connect() as conn:
                revision = current(conn)
            if revision is None:
                return []  # an empty database: nobody has received anything
            if revision != HEAD:
                return [_outdated(revision, _shown(config, store))]
            return history_problems(store, series_list)
    except StoreError as exc:
        return [Problem("state", None, f"could not read the state database: {exc}", "warning")]


def history_problems(store: Store, series_list: Sequence[Series]) -> list[Problem]:
    """The warnings for each series (see the module docstring), from a store whose
    schema is current."""
    problems: list[Problem] = []
    with store.connect() as conn:
        for series in series_list:
            recorded = recorded_articles(conn, series.slug)
            present = {a.slug for a in series.articles}
            for slug in sorted(set(recorded) - present):
                problems.append(_gone(series, slug, recorded[slug], recorded))
            # Where each article stood when readers got it (today's part if nobody has):
            # compared with the part a reader enrolled at, in the numbering of that time.
            order = [
                (a.slug, recorded[a.slug].part if a.slug in recorded else a.part)
                for a in series.articles
            ]
            for article, past in zip(
                series.articles, readers_past(conn, series.slug, order), strict=True
            ):
                if past:
                    problems.append(
                        Problem(
                            article.source,
                            None,
                            f"{_readers(past)} already received later parts but not this one "
                            f"(part {article.part}): they will skip it, as an article inserted "
                            "before a reader's position is skipped (see README, \"Editing a "
                            'series after readers started")',
                            "warning",
                        )
                    )
    return problems


def _gone(series: Series, slug: str, held: Recorded, known: Collection[str]) -> Problem:
    """The warning for an article the ledger ``held`` and the series no longer has;
    ``known``: every slug the ledger has."""
    states = held.states
    sent, open_ = states.get("sent", 0), states.get("unknown", 0) + states.get("claimed", 0)
    placeholder = PLACEHOLDER.fullmatch(slug)
    if placeholder is not None:
        message = (
            f"'{slug}' was sent to {_readers(sent)} as part {placeholder['part']} before "
            "articles had identities, and no article had that part when the database was "
            f"upgraded: if one of today's articles is it, set `slug: {slug}` on that file so "
            "they do not get it again"
        )
    else:
        guess = _renamed_to(series, slug, held.part, known)
        where = f" ({guess.source}?)" if guess is not None else ""
        message = (
            f"'{slug}' was sent to {_readers(sent)} and is gone: renamed? set "
            f"`slug: {slug}` on the new file{where}; removed: nothing to do, it is skipped"
        )
    if open_:
        message += (
            f"; {open_} deliver{'y' if open_ == 1 else 'ies'} of it "
            f"{'has' if open_ == 1 else 'have'} an unknown outcome: "
            f"decide them with `series resolve {series.slug}/{slug} EMAIL`"
        )
    return Problem(series.source, None, message, "warning")


def _renamed_to(series: Series, slug: str, recorded: int, known: Collection[str]) -> Article | None:
    """The likeliest new file of a gone article, among those nobody has received: a name
    like the old one, else the only one where it stood (None: no good guess)."""
    fresh = [a for a in series.articles if a.slug not in known]
    alike = [a for a in fresh if slug in a.slug or a.slug in slug]
    if not alike:
        close = difflib.get_close_matches(slug, [a.slug for a in fresh], n=1, cutoff=0.6)
        alike = [a for a in fresh if a.slug in close]
    if not alike:
        alike = [a for a in fresh if a.part == recorded]
    return alike[0] if len(alike) == 1 else None


def _readers(count: int) -> str:
    return f"{count:,} reader{'s' if count != 1 else ''}"


def _outdated(revision: str, where: str) -> Problem:
    """The one line for a schema this version does not compare: older or newer."""
    if revision > HEAD:
        message = (
            f"the state database is at schema revision {revision}, newer than this version "
            f"of series knows ({HEAD}): upgrade series to compare it with the content"
        )
    else:
        message = (
            f"the state database is at schema revision {revision} (this version: {HEAD}); "
            "upgrading it (`series db upgrade`, or any command that opens it except `check`, "
            "`preview`, `test-send` and `send --dry-run`) matches each delivery to the "
            "article that has its part number then, so upgrade before renumbering, inserting "
            "or renaming parts"
        )
    return Problem(where, None, message, "warning")


def _shown(config: Config, store: Store) -> str:
    """The database as the editor knows it: a workspace path, or the URL without password."""
    database = store.engine.url.database
    if store.dialect == "sqlite" and database:
        return config.rel(Path(database))
    return store.display_url
