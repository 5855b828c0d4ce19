"""Property: whatever an editor's tools do to a valid file, `series check` and `series
subscribers import` answer with lines and an exit code, never a traceback (issue 10).

Each example mutates one valid file (an article, series.yml, series.toml, a subscriber
CSV) a few times: bytes inserted (YAML, TOML and Markdown syntax, BOMs, bytes that are
not UTF-8), deleted, replaced, lines duplicated, the file cut short.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.cli import cli

from .conftest import FIXTURES, ROOT

# Snippets an editor's tool (or a typo) puts into a file, and bytes parsers trip on.
SNIPPETS = [
    b": ",
    b"- ",
    b"---\n",
    b"\n  - ",
    b"&a ",
    b"*a",
    b"!!float ",
    b"<<: ",
    b"? ",
    b"[",
    b"]",
    b"{",
    b"}",
    b'"',
    b"'",
    b"#",
    b"|\n",
    b"\t",
    b"\r\n",
    b"\xef\xbb\xbf",
    b"\xff\xfe",
    b"\xe9",
    b"\x00",
    b"\x07",
    b"2026-02-30",
    b"5:30",
    b"0123",
    b"1e400",
    b".nan",
    b"-1",
    b"99999999999999999999",
    b"true",
    b"yes",
    b"~",
    b"= ",
    b"[tool.series]\n",
    b"[[x]]\n",
    b'"""',
    b"Europe",
    b"<div>",
    b"<br>",
    b"    ",
    b"> > > > ",
    b"* * * ",
    b"| a | b |\n|---|---|\n",
    b"[link](",
    b"http://[",
    b"![](x)",
    b"{{ ",
    b"{% ",
    b"@",
    b",",
    b";",
    b"\xe2\x80\xa8",
]


@st.composite
def mutations(draw: st.DrawFn, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        at = draw(st.integers(min_value=0, max_value=len(data)))
        kind = draw(st.sampled_from(["insert", "insert", "delete", "replace", "line", "cut"]))
        if kind == "insert":
            data[at:at] = draw(st.sampled_from(SNIPPETS) | st.binary(min_size=1, max_size=6))
        elif kind == "delete":
            del data[at : at + draw(st.integers(min_value=1, max_value=12))]
        elif kind == "replace" and at < len(data):
            data[at] = draw(st.integers(min_value=0, max_value=255))
        elif kind == "line":
            start = data.rfind(b"\n", 0, at) + 1
            end = data.find(b"\n", at)
            line = bytes(data[start : (len(data) if end < 0 else end + 1)])
            data[start:start] = line * draw(st.integers(min_value=1, max_value=3))
        elif kind == "cut":
            del data[at:]
    return bytes(data)


ARTICLE = (ROOT / "series/attachment/02-secure.md").read_bytes()
SERIES_YML = (
    b"title: Demo Series\ndescription: A demo.\ncadence_days: 3\n"
    b"url: https://blog.example/demo/\ntimezone: Europe/Stockholm\n"
    b'send_window:\n  days: [mon, tue, wed]\n  start: "09:00"\n  end: "17:00"\n'
    b"from:\n  name: Demo Editor\n  email: editor@blog.example\n"
)
CONFIG = (
    b'provider = "outbox"\nworkers = 2\n'
    + (FIXTURES / "config" / "config_valid.toml").read_bytes()
    + b"\n[postmark]\nbatch_size = 10\n"
)
CSV = (
    b"email,name,timezone,series,start_part,subscribed_at,status\n"
    b"ann@example.com,Ann,Europe/Stockholm,demo,1,2026-01-05,active\n"
    b'bo@example.com,"Bo, Jr.",America/New_York,demo,2,,\n'
)


@pytest.fixture(scope="module")
def fuzz_root() -> Iterator[Path]:
    """One workspace for every example (each rewrites the file it mutates): a config, a
    series of two parts, and the templates, so the MJML cache is shared."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(ROOT / "templates", root / "templates")
        (root / "subscribers").mkdir()
        demo = root / "series" / "demo"
        demo.mkdir(parents=True)
        yield root


def write_workspace(
    root: Path, *, article: bytes = ARTICLE, series: bytes = SERIES_YML, config: bytes = CONFIG
) -> None:
    demo = root / "series" / "demo"
    (root / "series.toml").write_bytes(config)
    (demo / "series.yml").write_bytes(series)
    shutil.copy(FIXTURES / "articles" / "valid_article.md", demo / "01-valid.md")
    (demo / "02-secure.md").write_bytes(article)


def invoke(root: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--workspace", str(root), *args])


def assert_no_traceback(root: Path, *args: str) -> None:
    result = invoke(root, *args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code in (0, 1), result.output
    for line in result.output.splitlines():
        # One line per problem, quoting at most a few dozen characters of a bad value.
        assert len(line) < 400 + len(str(root)), line


CHECK = ("check", "--now", "2026-11-28T12:00:00+00:00")


def import_args(root: Path) -> tuple[str, ...]:
    csv = root / "subscribers" / "list.csv"
    return ("subscribers", "import", str(csv), "--now", "2026-11-28T12:00:00+00:00")


def test_unmutated_files_are_valid(fuzz_root: Path) -> None:
    """The files the examples mutate pass as they are, so mutations reach every parser."""
    write_workspace(fuzz_root)
    (fuzz_root / "subscribers" / "list.csv").write_bytes(CSV)
    result = invoke(fuzz_root, *CHECK)
    assert (result.exit_code, result.output) == (
        0,
        "checked 2 article(s) in 1 series: 0 errors, 0 warnings\n",
    )
    result = invoke(fuzz_root, *import_args(fuzz_root))
    assert result.exit_code == 0, result.output
    assert "imported 2" in result.output


FUZZ = settings(
    # A few seconds each in CI; SERIES_FUZZ_EXAMPLES=2000 for a long hunt.
    max_examples=int(os.environ.get("SERIES_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


ORIGINALS = {"article": ARTICLE, "series": SERIES_YML, "config": CONFIG}


@pytest.mark.parametrize("target", list(ORIGINALS))
@FUZZ
@given(data=st.data())
def test_mutated_source_never_makes_check_raise(
    fuzz_root: Path, target: str, data: st.DataObject
) -> None:
    """A mutated article, series.yml or series.toml gives `series check` lines and exit 0
    or 1, never a traceback."""
    write_workspace(fuzz_root, **{target: data.draw(mutations(ORIGINALS[target]))})
    assert_no_traceback(fuzz_root, *CHECK)


@FUZZ
@given(data=mutations(CSV))
def test_mutated_csv_import_never_raises(fuzz_root: Path, data: bytes) -> None:
    """A mutated subscriber CSV gives `subscribers import` lines and exit 0 or 1."""
    write_workspace(fuzz_root)
    (fuzz_root / "subscribers" / "list.csv").write_bytes(data)
    assert_no_traceback(fuzz_root, *import_args(fuzz_root))
