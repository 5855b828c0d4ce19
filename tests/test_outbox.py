"""pipeline/providers/outbox.py: the .eml files the default provider writes, read raw."""

from __future__ import annotations

import email
import email.policy
import re
from pathlib import Path

from pipeline.config import Address
from pipeline.mime import alternative
from pipeline.providers.base import Merge, Message
from pipeline.providers.outbox import OutboxProvider
from pipeline.render import CompiledEmail, Personal, _Filled

SENDER = Address("maya@steadyground.example", "Maya")
HTML = (
    "<html>\n<body>\n<p>Hi %%series:name%%,</p>\n"
    + "<p>Теория привязанности — часть первая.</p>\n" * 40
    + '<a href="%%series:unsubscribe_url%%">Отписаться</a> (%%series:email%%)\n</body>\n</html>'
)
TEXT = "Hi %%series:name%%,\n\n" + "Теория привязанности.\n" * 40 + "%%series:unsubscribe_url%%\n"


def message(compiled: CompiledEmail, name: str, address: str, key: str) -> Message:
    url = f"https://steadyground.example/u/{key}?a=1&b=2"
    rendered = compiled.personalise(Personal(name, address, url))
    return Message(
        key=key,
        sender=SENDER,
        to=Address(address, name),
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
        headers={
            "List-Unsubscribe": f"<{url}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
        tag="demo-part1",
        merge=Merge(compiled, {"name": name or "there", "email": address, "unsubscribe_url": url}),
    )


def body_of(raw: bytes) -> bytes:
    """The MIME body of a raw message (from MIME-Version on), its boundary made fixed."""
    body = raw[raw.index(b"MIME-Version:") :]
    return re.sub(rb"=_[0-9a-f]{32}", b"=_BOUNDARY", body)


def test_each_file_is_the_readers_text_encoded_as_a_whole_would_be(tmp_path: Path) -> None:
    """The outbox builds each body from the compiled part (fixed lines encoded once), and
    every file holds exactly the octets of that reader's own text encoded whole: names
    that need escaping in HTML, non-ASCII names, no name."""
    compiled = CompiledEmail("demo", 1, "Часть 1", "", _Filled.split(HTML), _Filled.split(TEXT))
    readers = [
        ("Åsa <Berg> & Co", "asa@example.com"),
        ("", "b@example.com"),
        ("Ann", "c@x.example"),
    ]
    messages = [message(compiled, n, a, f"k{i}") for i, (n, a) in enumerate(readers)]
    provider = OutboxProvider(tmp_path)
    results = provider.send(messages, batch_key="b")
    assert [r.outcome for r in results] == ["sent"] * 3
    for sent, result in zip(messages, results, strict=True):
        raw = (tmp_path / str(result.message_id)).read_bytes()
        assert body_of(raw) == body_of(alternative(sent.text, sent.html))
        assert all(len(line) <= 998 for line in raw.split(b"\n"))
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        html = parsed.get_body(preferencelist=("html",))
        assert html is not None and html["Content-Transfer-Encoding"] == "8bit"
        assert html.get_content() == sent.html + "\n"
