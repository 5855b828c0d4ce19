"""The state store, run on a temporary SQLite file and on a real PostgreSQL server."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from pipeline.errors import SeriesError
from pipeline.importer import ImportReport, export_csv, import_csv
from pipeline.providers.base import SendResult
from pipeline.store import Store, StoreError, ledger, open_store, safe_url
from pipeline.store.migrate import HEAD, upgrade
from pipeline.store.schema import (
    deliveries,
    enrollments,
    metadata,
    status_changes,
    suppressions,
)
from pipeline.subscribers import (
    Catalog,
    SubscriberError,
    add_subscriber,
    find,
    iter_subscribers,
    remove,
    unsubscribe,
)

from .conftest import FIXTURES
from .databases import database_at_0004
from .helpers import run

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
NOW_ISO = "2026-12-20T10:00:00+00:00"
CATALOG = Catalog({"attachment": (1, 2, 3, 4, 5), "boundaries": (1, 2, 3)})
ZONE = UTC


@pytest.fixture
def store(database_url: str, tmp_path: Path) -> Iterator[Store]:
    with open_store(tmp_path, database_url) as opened:
        yield opened


def run_import(store: Store, name: str, **kwargs: object) -> ImportReport:
    path = FIXTURES / "csv" / name
    return import_csv(store, path, CATALOG, now=NOW, zone=ZONE, display=name, **kwargs)  # type: ignore[arg-type]


def dump(store: Store) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table, to compare whole database states."""
    with store.connect() as conn:
        return {
            table.name: sorted(tuple(map(str, row)) for row in conn.execute(sa.select(table)))
            for table in metadata.sorted_tables
        }


def test_add_normalises_and_is_unique(store: Store) -> None:
    """Addresses are normalised, so different spellings of one address are one subscriber."""
    assert add_subscriber(store, CATALOG, " Ann@Example.COM ", now=NOW, name="Ann") == "imported"
    assert add_subscriber(store, CATALOG, "ann@example.com", now=NOW, name="Ann") == "unchanged"
    assert add_subscriber(store, CATALOG, "ANN@example.com", now=NOW, name="Ann B") == "updated"
    (only,) = list(iter_subscribers(store))
    assert (only.email, only.name, only.status) == ("ann@example.com", "Ann B", "active")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"email": "ann@"}, "invalid email 'ann@'"),
        ({"series": "knitting"}, "unknown series 'knitting' (series in this workspace: "),
        ({"series": "boundaries", "start_part": 4}, "series 'boundaries' has no part 4"),
        ({"timezone": "Mars/Olympus"}, "unknown timezone 'Mars/Olympus'"),
        ({"start_part": 2}, "--start-part needs --series"),
        ({"name": "Bad \udcff"}, "the name holds a byte that is not UTF-8"),
    ],
)
def test_add_rejects_bad_values(store: Store, kwargs: dict[str, object], message: str) -> None:
    """An invalid address, series, part or timezone is refused with a clear message."""
    args = {"email": "ann@example.com", **kwargs}
    email = str(args.pop("email"))
    with pytest.raises(SubscriberError, match=message.replace("(", r"\(").replace(")", r"\)")):
        add_subscriber(store, CATALOG, email, now=NOW, **args)  # type: ignore[arg-type]
    assert list(iter_subscribers(store)) == []


def test_ledger_row_is_unique_per_subscriber_series_article(store: Store) -> None:
    """The database itself refuses a second ledger row for the same subscriber, series and
    article, even at another part number; another article at the same part is a new row."""
    add_subscriber(store, CATALOG, "ann@example.com", now=NOW, series="attachment")
    subscriber = find(store, "ann@example.com")
    row = {
        "subscriber_id": subscriber.id,
        "series": "attachment",
        "article": "secure",
        "part": 2,
        "state": "sent",
        "created_at": NOW,
        "updated_at": NOW,
    }
    with store.begin() as conn:
        conn.execute(deliveries.insert().values(row))
        conn.execute(deliveries.insert().values({**row, "article": "new-part-two"}))
    with pytest.raises(IntegrityError), store.begin() as conn:
        conn.execute(deliveries.insert().values({**row, "part": 3}))


def test_import_with_bom(store: Store) -> None:
    """A UTF-8 file with a byte-order mark imports; the first column is still 'email'."""
    report = run_import(store, "subscribers_with_bom.csv")
    assert report.summary() == (
        "imported 2, updated 0, unchanged 0, rejected 0; 1 in no series, who will be sent "
        "nothing (give a series column or --series S)"
    )
    first = find(store, "bom.first@example.com")
    assert first.timezone == "Europe/Oslo"
    assert [e.series for e in first.enrollments] == ["attachment"]
    assert find(store, "bom.second@example.com").enrollments == ()


def test_import_reports_each_bad_row(store: Store) -> None:
    """Each bad row is FILE:LINE: reason and skipped; good rows are imported."""
    report = run_import(store, "subscribers_with_bad_rows.csv")
    name = "subscribers_with_bad_rows.csv"
    assert [str(p) for p in report.problems] == [
        f"{name}:3: invalid email 'not-an-address': An email address must have an @-sign.",
        f"{name}:5: good.one@example.com is a duplicate of line 2",
        f"{name}:6: unknown series 'knitting' (series in this workspace: attachment, boundaries)",
        f"{name}:7: unknown timezone 'Mars/Olympus' (use an IANA name such as 'Europe/Stockholm')",
        f"{name}:8: series 'attachment' has no part 9 (parts: 1, 2, 3, 4, 5)",
        f"{name}:9: subscribed_at is not a date: 'last spring' (use YYYY-MM-DD)",
    ]
    assert report.summary() == "imported 2, updated 0, unchanged 0, rejected 6"
    good = find(store, "good.one@example.com")
    assert good.attributes == {"plan": "coaching"}
    assert good.created_at == datetime(2026, 10, 1, tzinfo=UTC)
    assert find(store, "good.two@example.com").enrollments[0].start_part == 2


def test_reimport_changes_nothing(store: Store) -> None:
    """Importing the same file again leaves every table exactly as it was."""
    run_import(store, "subscribers_with_bad_rows.csv")
    before = dump(store)
    report = run_import(store, "subscribers_with_bad_rows.csv")
    assert report.summary() == "imported 0, updated 0, unchanged 2, rejected 6"
    assert dump(store) == before


def test_import_never_resubscribes(store: Store) -> None:
    """Someone who unsubscribed stays unsubscribed and unenrolled when a list is re-imported."""
    add_subscriber(store, CATALOG, "left.before@example.com", now=NOW)
    unsubscribe(store, "left.before@example.com", now=NOW)
    report = run_import(store, "subscribers_with_unsubscribed_person.csv")
    assert report.summary() == "imported 1, updated 0, unchanged 1, rejected 0"
    assert [str(p) for p in report.problems] == [
        "subscribers_with_unsubscribed_person.csv:2: warning: left.before@example.com is "
        "unsubscribed; not re-subscribed (import never does)"
    ]
    left = find(store, "left.before@example.com")
    assert (left.status, left.enrollments) == ("unsubscribed", ())


def test_import_never_resets_progress(store: Store) -> None:
    """An enrolled subscriber's start part and sent parts survive a re-import."""
    add_subscriber(store, CATALOG, "stays@example.com", now=NOW, series="attachment", start_part=2)
    subscriber = find(store, "stays@example.com")
    with store.begin() as conn:
        conn.execute(
            deliveries.insert().values(
                subscriber_id=subscriber.id,
                series="attachment",
                article="secure",
                part=2,
                state="sent",
                created_at=NOW,
                updated_at=NOW,
                sent_at=NOW,
            )
        )
    run_import(store, "subscribers_with_unsubscribed_person.csv")
    (enrollment,) = find(store, "stays@example.com").enrollments
    assert (enrollment.start_part, enrollment.last_part) == (2, 2)


def test_export_neutralises_formulas_and_shows_progress(store: Store) -> None:
    """Export has status and progress per series; a formula-like cell is defused."""
    run_import(store, "subscribers_with_bad_rows.csv")
    unsubscribe(store, "good.one@example.com", now=NOW, series="attachment")
    out = io.StringIO()
    assert export_csv(store, out, CATALOG) == 2
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert list(rows[0]) == [
        "email",
        "name",
        "status",
        "timezone",
        "subscribed_at",
        "source",
        "progress:attachment",
        "progress:boundaries",
        "plan",
    ]
    by_email = {row["email"]: row for row in rows}
    assert by_email["good.two@example.com"]["name"] == (
        '\'=HYPERLINK("https://evil.example","click")'
    )
    assert by_email["good.two@example.com"]["progress:attachment"] == (
        "not started (starts at part 2)"
    )
    assert by_email["good.one@example.com"]["progress:attachment"] == "unsubscribed"
    assert by_email["good.one@example.com"]["plan"] == "coaching"


def test_export_can_be_imported_elsewhere(store: Store, tmp_path: Path, database_url: str) -> None:
    """An export imported into an empty database keeps statuses: nobody is re-subscribed."""
    run_import(store, "subscribers_with_bad_rows.csv")
    unsubscribe(store, "good.one@example.com", now=NOW)
    exported = tmp_path / "export.csv"
    with exported.open("w", encoding="utf-8", newline="") as out:
        export_csv(store, out, CATALOG)
    other = tmp_path / "other"
    other.mkdir()
    with open_store(other, f"sqlite:///{other / 'state.db'}") as fresh:
        report = import_csv(fresh, exported, CATALOG, now=NOW, zone=ZONE)
        assert report.summary() == (
            "imported 2, updated 0, unchanged 0, rejected 0; 1 in no series, who will be "
            "sent nothing (give a series column or --series S)"
        )
        assert find(fresh, "good.one@example.com").status == "unsubscribed"
        assert find(fresh, "good.two@example.com").attributes == {}


def test_unsubscribe_one_series_or_all(store: Store) -> None:
    """Per-series unsubscribe ends one enrollment; without a series the person is unsubscribed."""
    add_subscriber(store, CATALOG, "ann@example.com", now=NOW, series="attachment")
    add_subscriber(store, CATALOG, "ann@example.com", now=NOW, series="boundaries")
    assert unsubscribe(store, "ann@example.com", now=NOW, series="boundaries") == (
        "unsubscribed ann@example.com from boundaries"
    )
    ann = find(store, "ann@example.com")
    assert ann.status == "active"
    assert [(e.series, e.unsubscribed) for e in ann.enrollments] == [
        ("attachment", False),
        ("boundaries", True),
    ]
    unsubscribe(store, "ann@example.com", now=NOW)
    assert find(store, "ann@example.com").status == "unsubscribed"
    with store.connect() as conn:
        audit = conn.execute(
            sa.select(
                status_changes.c.series,
                status_changes.c.old_status,
                status_changes.c.new_status,
                status_changes.c.actor,
            ).order_by(status_changes.c.id)
        ).all()
    assert [tuple(row) for row in audit] == [
        (None, None, "active", "cli"),
        ("boundaries", "active", "unsubscribed", "cli"),
        (None, "active", "unsubscribed", "cli"),
    ]


def test_unknown_address_and_series_are_errors(store: Store) -> None:
    """Unsubscribing or removing someone unknown, or from a series they are not in, is an error."""
    with pytest.raises(SubscriberError, match=r"no subscriber nobody@example\.com"):
        unsubscribe(store, "nobody@example.com", now=NOW)
    with pytest.raises(SubscriberError, match=r"no subscriber nobody@example\.com"):
        remove(store, "nobody@example.com", now=NOW)
    add_subscriber(store, CATALOG, "ann@example.com", now=NOW, series="attachment")
    with pytest.raises(
        SubscriberError, match=r"not enrolled in 'boundaries' \(enrolled in: attachment\)"
    ):
        unsubscribe(store, "ann@example.com", now=NOW, series="boundaries")
    with pytest.raises(SubscriberError, match="unknown status 'gone'"):
        list(iter_subscribers(store, status="gone"))


def test_remove_erases_personal_data(store: Store) -> None:
    """After remove, the address appears nowhere; only its keyed hash stays, and it is refused."""
    run_import(store, "subscribers_with_bad_rows.csv")
    remove(store, "good.one@example.com", now=NOW)
    everything = repr(dump(store)).lower()
    assert "good.one" not in everything and "coaching" not in everything
    with store.connect() as conn:
        (digest,) = conn.scalars(sa.select(suppressions.c.email_hash)).all()
    assert len(digest) == 64 and digest != "good.one@example.com"
    report = run_import(store, "subscribers_with_bad_rows.csv")
    assert (
        "subscribers_with_bad_rows.csv:2: good.one@example.com was erased at the person's "
        "request; refused" in [str(p) for p in report.problems]
    )
    with pytest.raises(SubscriberError, match="erased at the person's request"):
        add_subscriber(store, CATALOG, "Good.One@example.com", now=NOW)
    # The other subscriber is untouched.
    assert find(store, "good.two@example.com").status == "active"


def test_list_filters(store: Store) -> None:
    """Listing by status or by series returns just those subscribers."""
    add_subscriber(store, CATALOG, "a@example.com", now=NOW, series="attachment")
    add_subscriber(store, CATALOG, "b@example.com", now=NOW, series="boundaries")
    unsubscribe(store, "b@example.com", now=NOW)
    assert [s.email for s in iter_subscribers(store, status="active")] == ["a@example.com"]
    assert [s.email for s in iter_subscribers(store, series="boundaries")] == ["b@example.com"]
    assert [s.email for s in iter_subscribers(store, batch=1)] == ["a@example.com", "b@example.com"]


def test_migration_from_first_revision_keeps_data(database_url: str, tmp_path: Path) -> None:
    """A database made by migration 0001 is upgraded to head with its rows intact."""
    engine = sa.create_engine(database_url)
    assert upgrade(engine, "0001") == (None, "0001")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO subscribers (email, name, status, created_at, updated_at, source, "
                "attributes) VALUES ('old@example.com', 'Old', 'active', :t, :t, 'v1', '{}')"
            ),
            {"t": NOW},
        )
        assert "status_changes" not in sa.inspect(conn).get_table_names()
    engine.dispose()
    with open_store(tmp_path, database_url) as store:
        old = find(store, "old@example.com")
        assert (old.name, old.source) == ("Old", "v1")
        unsubscribe(store, "old@example.com", now=NOW)  # uses the new audit table
        with store.connect() as conn:
            assert (
                conn.execute(sa.select(sa.func.count()).select_from(status_changes)).scalar() == 1
            )


def test_migration_0005_gives_each_delivery_its_article(
    database_url: str, example_copy: Path
) -> None:
    """Upgrading a 0004 database with real rows: each recorded part becomes the article
    that has that part number in the workspace now, a part no article has becomes the
    placeholder part-7, the part stays as history, start parts are kept, and the new
    constraint is per article."""
    database_at_0004(database_url)
    store = open_store(example_copy, database_url)
    with store.connect() as conn:
        rows = conn.execute(
            sa.select(
                deliveries.c.subscriber_id,
                deliveries.c.article,
                deliveries.c.part,
                deliveries.c.state,
                deliveries.c.delivery_key,
            ).order_by(deliveries.c.subscriber_id, deliveries.c.part)
        ).all()
        starts = conn.execute(
            sa.select(enrollments.c.subscriber_id, enrollments.c.start_part).order_by(
                enrollments.c.subscriber_id
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        (1, "attachment-theory", 1, "sent", "k11"),
        (1, "secure", 2, "sent", "k12"),
        (1, "anxious", 3, "unknown", "k13"),
        (2, "attachment-theory", 1, "sent", "k21"),
        (2, "part-7", 7, "sent", "k27"),
    ]
    assert [tuple(r) for r in starts] == [(1, 1), (2, 1), (3, 3)]
    row = {
        "subscriber_id": 1,
        "series": "attachment",
        "state": "sent",
        "created_at": NOW,
        "updated_at": NOW,
    }
    with store.begin() as conn:  # another article at a part already used: fine
        conn.execute(deliveries.insert().values({**row, "article": "new-part-two", "part": 2}))
    with pytest.raises(IntegrityError), store.begin() as conn:  # an article twice: never
        conn.execute(deliveries.insert().values({**row, "article": "secure", "part": 3}))
    with store.begin() as conn:  # the foreign key still cascades
        conn.execute(sa.text("DELETE FROM subscribers WHERE id = 2"))
        assert (
            conn.scalar(
                sa.select(sa.func.count())
                .select_from(deliveries)
                .where(deliveries.c.subscriber_id == 2)
            )
            == 0
        )
    if store.dialect == "sqlite":
        with store.connect() as conn:
            index = conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'deliveries_open'"
            ).scalar()
            table = conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'deliveries'"
            ).scalar()
        assert "WHERE state IN ('claimed', 'unknown')" in index
        assert "CHECK (state IN ('claimed', 'sent', 'failed', 'unknown', 'skipped'))" in table
        assert "ON DELETE CASCADE" in table
    store.close()


def test_migration_0005_refuses_content_with_errors(database_url: str, example_copy: Path) -> None:
    """A series whose articles do not all load cannot be matched (a reader would get the
    broken one again once fixed): the upgrade stops with the problem, changing nothing."""
    database_at_0004(database_url)
    anxious = example_copy / "series" / "attachment" / "03-anxious.md"
    anxious.write_text(anxious.read_text().replace("title:", "titel:", 1), encoding="utf-8")
    with pytest.raises(
        SeriesError,
        match=r"cannot upgrade the database to schema 0005 while series 'attachment' has "
        r"content errors \(series/attachment/03-anxious.md:2: unknown key 'titel'",
    ):
        open_store(example_copy, database_url)
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT version_num FROM alembic_version")) == "0004"
        assert "article" not in {c["name"] for c in sa.inspect(conn).get_columns("deliveries")}
    engine.dispose()


def test_newer_schema_is_a_clear_error(database_url: str, tmp_path: Path) -> None:
    """A database migrated by a newer version of series is refused, not damaged."""
    open_store(tmp_path, database_url).close()
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    with pytest.raises(SeriesError, match="schema is at revision 0099, newer than this version"):
        open_store(tmp_path, database_url)


def test_enrollment_and_subscriber_tables_cascade(store: Store) -> None:
    """Foreign keys hold on both databases: enrollments need an existing subscriber."""
    with pytest.raises(IntegrityError), store.begin() as conn:
        conn.execute(
            enrollments.insert().values(
                subscriber_id=424242,
                series="attachment",
                enrolled_at=NOW,
                start_part=1,
                paused=False,
            )
        )


def test_default_store_is_sqlite_in_the_workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no SERIES_DATABASE_URL, state lives in subscribers/state.db, in WAL mode."""
    monkeypatch.delenv("SERIES_DATABASE_URL", raising=False)
    with open_store(tmp_path) as store, store.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert (tmp_path / "subscribers" / "state.db").is_file()


def test_password_never_shown(tmp_path: Path) -> None:
    """A connection failure names the database without its password."""
    url = "postgresql+psycopg://series:s3cr3t-pw@127.0.0.1:1/series"
    assert safe_url(url) == "postgresql+psycopg://series:***@127.0.0.1:1/series"
    with pytest.raises(StoreError) as caught:
        open_store(tmp_path, url)
    assert "s3cr3t-pw" not in str(caught.value)
    assert "postgresql+psycopg://series:***@127.0.0.1:1/series" in str(caught.value)


def test_fixture_files_are_present() -> None:
    """The CSV fixtures these tests read exist (guards against a silent rename)."""
    assert (FIXTURES / "csv" / "subscribers_with_bom.csv").read_bytes().startswith(b"\xef\xbb\xbf")


def test_known_head_matches_migrations() -> None:
    """The HEAD constant used to skip Alembic on an up-to-date database is the real head."""
    from pipeline.store.migrate import HEAD, head

    assert head() == HEAD


def test_concurrent_first_use_migrates_once(database_url: str, tmp_path: Path) -> None:
    """Several processes opening a new database at once all succeed; the schema is made once."""
    code = (
        "import sys; from pathlib import Path; from pipeline.store import open_store; "
        "open_store(Path(sys.argv[1]), sys.argv[2]).close()"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path), database_url],
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], errors
    with open_store(tmp_path, database_url) as store, store.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar() == 1
        # Each of the two generated keys exactly once (and the mark 0006 sets once).
        keys = conn.execute(sa.text("SELECT key FROM settings ORDER BY key")).scalars().all()
        assert keys == ["email_hash_key", "link_signing_key", "secure_delete_clean"]


def test_migration_0005_refuses_a_workspace_without_the_series(
    example_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opened from a folder with the configuration but not the series (where `series
    serve` runs), a shared 0004 database is left at 0004 with one line naming the series
    and what to run; from the workspace it then upgrades, and nobody gets part 1 again."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    database_at_0004(url)  # ann had parts 1 and 2, bo part 1 (and a part 7)
    web = tmp_path / "web"
    web.mkdir()
    shutil.copy(example_copy / "pyproject.toml", web / "pyproject.toml")
    shutil.copytree(example_copy / "templates", web / "templates")
    monkeypatch.setenv("SERIES_DATABASE_URL", url)

    code, out, err = run(web, "subscribers", "list")
    assert code == 1, out + err
    assert err == (
        f"Error: cannot upgrade the database to schema 0005 from here: series 'attachment' has "
        f"recorded deliveries and no series/attachment/ folder in {web}; run `series db "
        "upgrade` in the workspace that holds the series (the upgrade matches each recorded "
        "part to its article there)\n"
    )
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT version_num FROM alembic_version")) == "0004"
        assert "article" not in {c["name"] for c in sa.inspect(conn).get_columns("deliveries")}
    engine.dispose()

    assert run(example_copy, "db", "upgrade")[0] == 0
    code, out, err = run(example_copy, "send", "--dry-run", "--format", "json", "--now", NOW_ISO)
    assert code == 0, out + err
    again = [
        (row["email"], row["part"])
        for row in json.loads(out)
        if row["email"] in ("ann@example.com", "bo@example.com") and row["part"] == 1
    ]
    assert again == []


def test_migration_0005_ignores_errors_in_parts_nobody_received(
    database_url: str, example_copy: Path
) -> None:
    """An error in an article whose part number nobody received (an empty new draft)
    cannot change the mapping: the upgrade goes ahead."""
    database_at_0004(database_url)
    draft = example_copy / "series" / "attachment" / "09-wip.md"
    draft.write_text("---\ntitle: Work in progress\npart: 9\ndraft: true\n---\n", encoding="utf-8")
    with open_store(example_copy, database_url) as store, store.connect() as conn:
        assert conn.scalar(sa.text("SELECT version_num FROM alembic_version")) == HEAD


def test_content_free_open_stays_at_0004_when_the_mapping_is_refused(
    database_url: str, tmp_path: Path
) -> None:
    """What touches no delivery history (unsubscribe, erasure, the unsubscribe pages)
    opens a database 0005 cannot map from here at 0004, saying why, instead of failing."""
    database_at_0004(database_url)
    with open_store(tmp_path, database_url, content_free=True) as store:
        assert store.upgrade_refused is not None
        assert "series 'attachment' has recorded deliveries" in store.upgrade_refused
        unsubscribe(store, "ann@example.com", now=NOW)
        with store.connect() as conn:
            assert conn.scalar(sa.text("SELECT version_num FROM alembic_version")) == "0004"
    with pytest.raises(SeriesError, match="series 'attachment' has recorded deliveries"):
        open_store(tmp_path, database_url)


def test_enrollments_carry_the_first_name_attribute(store: Store, tmp_path: Path) -> None:
    """The send path reads each reader's first_name attribute inside the database
    (JSON on SQLite, JSONB on PostgreSQL); readers without one get ""."""
    from pipeline.store.ledger import iter_enrollments

    path = tmp_path / "readers.csv"
    path.write_text(
        "email,name,first_name,series\n"
        "dan@example.com,Daniel Okafor,Dan,attachment\n"
        "ann@example.com,Ann Lee,,attachment\n"
        'quote@example.com,Q,"O\'Brien ""Bo"" é",attachment\n',
        encoding="utf-8",
    )
    report = import_csv(store, path, CATALOG, now=NOW, zone=ZONE, display="readers.csv")
    assert report.rejected == 0
    found = {
        e.email: e.first_name
        for chunk in iter_enrollments(store, "attachment", now=NOW, everything=True)
        for e in chunk
    }
    assert found == {
        "dan@example.com": "Dan",
        "ann@example.com": "",
        "quote@example.com": 'O\'Brien "Bo" é',
    }


def test_a_message_id_with_nul_is_recorded_escaped(store: Store) -> None:
    """PostgreSQL cannot store U+0000 and SQLite's JSON functions (the batch writes read
    their rows with them) end a text there: a provider's message id holding one goes
    into the ledger whole, with the NUL as a visible escape."""
    add_subscriber(store, CATALOG, "ann@example.com", now=NOW, series="attachment")
    [[enrollment]] = ledger.iter_enrollments(store, "attachment", now=NOW, everything=True)
    due = ledger.Due(enrollment, "secure", 1)
    result = SendResult("k", "sent", message_id="<id\x00tail@mx>")
    with store.begin() as conn:
        [claim] = ledger.claim(conn, [due], token="t", until=NOW, now=NOW)
        ledger.record(
            conn, [(claim, "sent", result.message_id, None)], token="t", now=NOW, sent_at=NOW
        )
    with store.connect() as conn:
        stored = conn.execute(sa.select(deliveries.c.provider_message_id, deliveries.c.state))
        assert stored.all() == [("<id\\x00tail@mx>", "sent")]


def test_a_sqlite_too_old_for_the_ledger_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger's writes use RETURNING (SQLite 3.35) and JSON functions: a Python
    built with an older SQLite (it cannot be installed here) gets one clear line."""
    import sqlite3

    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.34.1")
    with pytest.raises(StoreError, match=r"SQLite 3\.34\.1; series needs 3\.35 or later"):
        open_store(tmp_path, f"sqlite:///{tmp_path / 'state.db'}")


@pytest.mark.parametrize("idle", [0.0, 3600.0])
def test_a_pooled_postgresql_connection_closed_while_idle_is_replaced(
    postgres_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, idle: float
) -> None:
    """The server closes a pooled connection while it is idle (a restart, a proxy's
    timeout): the next use of the store gets a live one, when the connection sat idle
    longer than IDLE_PING; before that the pool trusts it without a round trip."""
    import pipeline.store as store_module

    monkeypatch.setattr(store_module, "IDLE_PING", idle)
    with open_store(tmp_path, postgres_database_url) as store:
        with store.connect() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        other = sa.create_engine(postgres_database_url)
        with other.connect() as admin:
            admin.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
        other.dispose()
        if idle:
            with pytest.raises(StoreError), store.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            return
        with store.connect() as conn:
            assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() != pid
