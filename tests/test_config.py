"""Workspace discovery and configuration: one fixture per bad config, exact messages."""

from __future__ import annotations

import shutil
from datetime import time
from pathlib import Path

import pytest

from pipeline.config import find_workspace, load_config
from pipeline.errors import ConfigError

from .conftest import FIXTURES, ROOT

CASES = [
    ("config_with_unknown_key", "series.toml:2: unknown key 'timezne' (did you mean 'timezone'?)"),
    (
        "config_with_bad_timezone",
        "series.toml:2: unknown timezone 'Mars/Olympus' (use an IANA name such as "
        "'Europe/Stockholm')",
    ),
    (
        "config_with_bad_send_window",
        "series.toml:8: 'send_window.start' must be a time such as \"09:00\", got '9am'",
    ),
    (
        "config_without_from",
        'series.toml: \'from\' is required: from = { name = "…", email = "…" }',
    ),
    (
        "config_with_bad_site_url",
        "series.toml:1: 'site_url' must be an absolute http(s) URL, got 'blog.example'",
    ),
    (
        "config_with_bad_sender",
        "series.toml:5: 'from.email' is not a valid address: An email address must have an @-sign.",
    ),
]


@pytest.mark.parametrize(("fixture", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_config_is_one_clear_line(tmp_path: Path, fixture: str, expected: str) -> None:
    """A bad series.toml is one error naming the file and the key's line."""
    shutil.copy(FIXTURES / "config" / f"{fixture}.toml", tmp_path / "series.toml")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert str(caught.value) == expected


def test_pyproject_tool_series_line_numbers(tmp_path: Path) -> None:
    """In pyproject.toml the line is found inside [tool.series.*], not in other tables."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.series]\nsite_url = "https://blog.example"\n'
        '\n[tool.series.from]\nemail = "a@blog.example"\n\n[tool.series.utm]\n'
        'enabled = true\nsorce = "news"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert (
        str(caught.value)
        == "pyproject.toml:12: unknown key 'utm.sorce' (did you mean 'utm.source'?)"
    )


def test_valid_config_values(tmp_path: Path) -> None:
    """A valid config becomes one frozen value with parsed window, zone and UTM parameters."""
    shutil.copy(FIXTURES / "config" / "config_valid.toml", tmp_path / "series.toml")
    config = load_config(tmp_path)
    assert config.site_url == "https://blog.example"
    assert config.sender.formatted() == '"Demo Editor" <editor@blog.example>'
    assert str(config.timezone) == "Europe/Stockholm"
    assert config.send_window.days == frozenset({0, 1, 2, 3, 4})
    assert (config.send_window.start, config.send_window.end) == (time(9), time(17))
    assert config.utm.params == (
        ("utm_source", "newsletter"),
        ("utm_medium", "email"),
        ("utm_campaign", "{series}"),
    )


def test_both_config_files_is_an_error(tmp_path: Path) -> None:
    """series.toml and [tool.series] together are ambiguous, so neither is silently chosen."""
    shutil.copy(FIXTURES / "config" / "config_valid.toml", tmp_path / "series.toml")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with pytest.raises(ConfigError, match="keep one"):
        load_config(tmp_path)


def test_no_config_names_the_workspace(tmp_path: Path) -> None:
    """A directory with no configuration says where it looked and what to add."""
    with pytest.raises(ConfigError) as caught:
        load_config(find_workspace(tmp_path))
    assert str(caught.value).startswith(f"{tmp_path.resolve()}: no workspace configuration")


def test_example_workspace_config() -> None:
    """The repository's own [tool.series] loads, with its footer blocks found."""
    config = load_config(ROOT)
    assert config.footer == ("author-bio", "related-post", "affiliate-disclosure", "subscribe")
    assert config.utm.enabled


PROVIDER_CASES = [
    (
        'unsubscribe = "maybe"\n',
        "series.toml:3: 'unsubscribe' must be \"self-hosted\" or \"provider\", got 'maybe'",
    ),
    (
        '[mailgun]\ndomain = "mg.blog.example"\nregion = "asia"\n',
        "series.toml:5: 'mailgun.region' must be \"us\" or \"eu\", got 'asia'",
    ),
    (
        '[mailgun]\ndomain = "not a domain"\n',
        "series.toml:4: 'mailgun.domain' must be your sending domain (e.g. mg.example.com), "
        "got 'not a domain'",
    ),
    (
        'unsubscribe_url = "http://blog.example/u/{token}"\n',
        "series.toml:3: 'unsubscribe_url' must be an https:// URL containing {token}, "
        "got 'http://blog.example/u/{token}'",
    ),
    (
        'provider = "resend"\nunsubscribe = "provider"\n',
        'series.toml:4: unsubscribe = "provider", but resend does not manage unsubscribes; '
        'use "self-hosted" (and run `series serve`) or a provider that does '
        "(postmark, sendgrid, mailgun)",
    ),
    (
        "[resend]\nbatch_size = 101\n",
        "series.toml:4: 'resend.batch_size' must be 1 to 100, got 101",
    ),
    (
        '[sendgrid]\nregion = "eu"\nbatch = 5\n',
        "series.toml:5: unknown key 'sendgrid.batch' (did you mean 'sendgrid.batch_size'?)",
    ),
]


@pytest.mark.parametrize(("extra", "expected"), PROVIDER_CASES)
def test_bad_provider_settings_are_one_clear_line(
    tmp_path: Path, extra: str, expected: str
) -> None:
    """Provider tables and the unsubscribe mode are checked like every other key."""
    (tmp_path / "series.toml").write_text(
        'site_url = "https://blog.example"\nfrom = { email = "a@blog.example" }\n' + extra,
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert str(caught.value) == expected


def test_provider_settings_are_read(tmp_path: Path) -> None:
    """Mailgun EU with its domain, SendGrid EU, provider-managed unsubscribes."""
    (tmp_path / "series.toml").write_text(
        'site_url = "https://blog.example"\nfrom = { email = "a@blog.example" }\n'
        'provider = "mailgun"\nunsubscribe = "provider"\n'
        '[mailgun]\ndomain = "MG.Blog.Example"\nregion = "eu"\n'
        '[sendgrid]\nregion = "eu"\nbatch_size = 250\n',
        encoding="utf-8",
    )
    config = load_config(tmp_path)
    assert (config.unsubscribe, config.mailgun_domain, config.mailgun_region) == (
        "provider",
        "mg.blog.example",
        "eu",
    )
    assert (config.sendgrid_region, config.sendgrid_batch_size) == ("eu", 250)
    assert config.unsubscribe_url == "https://blog.example/u/{token}"


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        (
            'site_url = "https://blog.example/my site"',
            "series.toml:1: 'site_url' contains a space, which a URL cannot hold; "
            "percent-encode it (%20)",
        ),
        (
            'site_url = "https://blog.example/>,<mailto:evil@evil.example"',
            "series.toml:1: 'site_url' contains '>', which a URL cannot hold; "
            "percent-encode it (%3E)",
        ),
        (
            'site_url = "https://blog.example/\\r\\nBcc: x@evil.example"',
            "series.toml:1: 'site_url' contains a control character or line break "
            "(U+000D); remove it",
        ),
        (
            'site_url = "https://blog.example"\nunsubscribe_url = "https://blog.example/u/{token}\\""',
            "series.toml:2: 'unsubscribe_url' contains '\"', which a URL cannot hold; "
            "percent-encode it (%22)",
        ),
        (
            'site_url = "https://myblog.example?x=1"',
            "series.toml:1: 'site_url' contains a query (?…): series adds paths such as "
            "/u/TOKEN to it, so it must be the bare address; remove it",
        ),
        (
            'site_url = "https://x.example#frag"',
            "series.toml:1: 'site_url' contains a fragment (#…), which would cut off the "
            "rest of each link; remove it",
        ),
        (
            'site_url = "https://user:pw@x.example"',
            "series.toml:1: 'site_url' contains login details (user@ or user:password@); "
            "remove them",
        ),
        (
            'site_url = "https://x.example:99999"',
            "series.toml:1: 'site_url' has an invalid port (99999); use a number from 1 to 65535",
        ),
        (
            'site_url = "https://x.example"\nunsubscribe_url = "https://x.example/u/{token}#top"',
            "series.toml:2: 'unsubscribe_url' contains a fragment (#…), which would cut off "
            "the rest of each link; remove it",
        ),
        (
            'site_url = "https://x.example"\nunsubscribe_url = "https://u@x.example/{token}"',
            "series.toml:2: 'unsubscribe_url' contains login details (user@ or "
            "user:password@); remove them",
        ),
        (
            'site_url = "https://x.example"\nunsubscribe_url = "https://x.example:0/{token}"',
            "series.toml:2: 'unsubscribe_url' has an invalid port (0); use a number from 1 "
            "to 65535",
        ),
    ],
)
def test_urls_that_cannot_be_one_uri_are_refused(
    tmp_path: Path, setting: str, expected: str
) -> None:
    """A space, a control character or <>" in a configured URL is refused with its line."""
    (tmp_path / "series.toml").write_text(
        setting + '\nfrom = { email = "a@blog.example" }\n', encoding="utf-8"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert str(caught.value) == expected
