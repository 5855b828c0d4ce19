"""The email parts in a JSON request (Postmark, Resend) are joined from pieces encoded
once per part: the bytes on the wire must be exactly what encoding each reader's
whole text would give, whatever the reader's name holds."""

from __future__ import annotations

import copy
import pickle
import re
from collections.abc import Iterator

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import Address
from pipeline.personal import json_string
from pipeline.providers.base import Merge, Message
from pipeline.providers.postmark import PostmarkProvider
from pipeline.providers.resend import ResendProvider
from pipeline.render import CompiledEmail, Personal, _Filled

from .fake_postmark import FakePostmark
from .fake_resend import FakeResend

HTML = (
    '<html lang="de">\n<p>Hallo %%series:first_name%%,</p>\n'
    + '<p>Bindungstheorie · Teil 1 — „sicher“ ✓ \u2028 tab\there \\ "quoted"</p>\n' * 30
    + '<a href="%%series:unsubscribe_url%%">Abmelden</a> (%%series:email%%, %%series:name%%)'
)
TEXT = (
    "Hallo %%series:first_name%%,\n\n" + "Teil 1 — „sicher“\n" * 30 + "%%series:unsubscribe_url%%\n"
)
COMPILED = CompiledEmail("demo", 1, "Teil 1", "", _Filled.split(HTML), _Filled.split(TEXT))
SENDER = Address("editor@blog.example", "Editor")
HOSTILE_NAMES = [
    'Ann "the" \\ Reader',
    "Sam\nExample",
    "</script><b>bold</b> & co",
    "=?utf-8?q?x=2C_attacker=40evil=2Eexample=2C?=",
    "Zoë 🌱 \u2028\u2029\x7f",
    "",
]

text_values = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(text_values, min_size=1, max_size=6),
    values=st.lists(text_values, min_size=5, max_size=5),
)
def test_pieces_encoded_once_give_the_bytes_of_the_whole_text(
    pieces: list[str], values: list[str]
) -> None:
    """JSON escapes one character at a time, so the encoded pieces joined with the
    encoded values are byte for byte orjson's encoding of the joined text."""
    fields = tuple(("name", "email", "unsubscribe_url", "first_name", "name")[: len(pieces) - 1])
    filled = _Filled(tuple(pieces), fields)
    raw = dict(zip(("name", "email", "unsubscribe_url", "first_name"), values, strict=False))
    encoded = {name: json_string(value) for name, value in raw.items()}
    assert filled.fill_json(encoded) == orjson.dumps(filled.fill(raw))


# Text rich in what a %-format would read as its own: %, %s, %b, %%, %(name)s.
percent_text = st.lists(
    st.sampled_from(["%", "s", "b", "(", ")", "name", "é", "\\", '"', " "]), max_size=12
).map("".join)


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(st.one_of(percent_text, text_values), min_size=1, max_size=6),
    values=st.lists(st.one_of(percent_text, text_values), min_size=4, max_size=4),
)
def test_a_filled_part_is_its_pieces_and_values_in_turn(
    pieces: list[str], values: list[str]
) -> None:
    """A part is filled by one %-format: whatever % signs the part or a reader's values
    hold, the result is each piece followed by its field's value, nothing more."""
    fields = tuple(("name", "email", "unsubscribe_url", "first_name", "name")[: len(pieces) - 1])
    filled = _Filled(tuple(pieces), fields)
    raw = dict(zip(("name", "email", "unsubscribe_url", "first_name"), values, strict=True))
    pairs = zip(fields, pieces[1:], strict=True)
    expected = pieces[0] + "".join(raw[f] + piece for f, piece in pairs)
    assert filled.fill(raw) == expected
    encoded = {name: json_string(value) for name, value in raw.items()}
    assert filled.fill_json(encoded) == orjson.dumps(expected)


def message(name: str, index: int) -> Message:
    url = f"https://blog.example/u/tok{index}?a=1&b=2"
    who = Personal(name, f"reader{index}@example.com", url, "")
    from pipeline.personal import field_values

    values = field_values(who, "there")
    rendered = COMPILED.filled(values)
    return Message(
        key=f"key-{index}",
        sender=SENDER,
        to=Address(f"reader{index}@example.com", name.replace("\n", " ")),
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
        headers={"List-Unsubscribe": f"<{url}>"},
        merge=Merge(COMPILED, values),
    )


@pytest.fixture
def messages() -> list[Message]:
    return [message(name, i) for i, name in enumerate(HOSTILE_NAMES)]


@pytest.fixture
def postmark(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakePostmark, PostmarkProvider]]:
    monkeypatch.setenv("POSTMARK_SERVER_TOKEN", "t")
    with FakePostmark(token="t") as fake:
        provider = PostmarkProvider(base_url=fake.url, message_stream="outbound", timeout=10)
        yield fake, provider
        provider.close()


def test_postmark_request_carries_each_readers_exact_text(
    postmark: tuple[FakePostmark, PostmarkProvider], messages: list[Message]
) -> None:
    fake, provider = postmark
    provider.send(messages, batch_key="b")
    [request] = fake.requests
    items = orjson.loads(request.raw)
    assert [i["HtmlBody"] for i in items] == [m.html for m in messages]
    assert [i["TextBody"] for i in items] == [m.text for m in messages]
    # The raw bytes: UTF-8 as it is, control characters and quotes escaped.
    for m in messages:
        assert orjson.dumps(m.html) in request.raw
        assert orjson.dumps(m.text) in request.raw
    assert not re.search(rb"[\x00-\x1f]", request.raw)  # JSON escapes them all
    assert "„sicher“".encode() in request.raw


def test_resend_request_carries_each_readers_exact_text(
    monkeypatch: pytest.MonkeyPatch, messages: list[Message]
) -> None:
    monkeypatch.setenv("RESEND_API_KEY", "re_test")
    with FakeResend(key="re_test") as fake:
        provider = ResendProvider(base_url=fake.url, timeout=10)
        try:
            provider.send(messages, batch_key="b")
        finally:
            provider.close()
        [request] = fake.batch_requests()
    items = orjson.loads(request.raw)
    assert [i["html"] for i in items] == [m.html for m in messages]
    assert [i["text"] for i in items] == [m.text for m in messages]
    for m in messages:
        assert orjson.dumps(m.html) in request.raw


def test_a_message_without_its_merge_is_encoded_whole() -> None:
    plain = Message(
        key="k",
        sender=SENDER,
        to=Address("a@example.com", "A"),
        subject="S",
        html="<p>é</p>",
        text="é\n",
    )
    assert plain.json_bodies() == ("<p>é</p>", "é\n")


def lazy(eager: Message) -> Message:
    """The same message as the send loop makes it: its parts left to the merge."""
    assert eager.merge is not None
    return Message(
        key=eager.key,
        sender=eager.sender,
        to=eager.to,
        subject=eager.subject,
        headers=eager.headers,
        merge=Merge(COMPILED, dict(eager.merge.values)),
    )


def test_a_message_left_to_its_merge_goes_out_alike_and_is_never_filled_in(
    postmark: tuple[FakePostmark, PostmarkProvider], messages: list[Message]
) -> None:
    """The send loop gives a message its merge, not its text: Postmark's request is
    made of the merge's JSON pieces, and the ~25 KB of each part are never built. Read,
    they are the same text; such a message equals the one given its text."""
    fake, provider = postmark
    left = [lazy(m) for m in messages]
    provider.send(left, batch_key="b")
    assert all(m._html is None and m._text is None for m in left)
    [request] = fake.requests
    provider.send(messages, batch_key="b")
    assert fake.requests[1].raw == request.raw
    assert [(m.html, m.text) for m in left] == [(m.html, m.text) for m in messages]
    assert left == messages


def test_a_message_does_not_change_and_replace_keeps_its_parts() -> None:
    """A message is a value: attributes cannot be set, and `replace` makes a copy whose
    parts are still left to the same merge, or are the text the message had when its
    merge is replaced."""
    original = lazy(message("Ann", 1))
    with pytest.raises(AttributeError):
        original.subject = "changed"
    moved = original.replace(to=Address("ann@example.org", "Ann"))
    assert moved._html is None and moved.to.email == "ann@example.org"
    assert moved.html == message("Ann", 1).html
    unmerged = original.replace(merge=None)
    assert unmerged.merge is None and unmerged.text == message("Ann", 1).text
    with pytest.raises(TypeError):
        Message(key="k", sender=SENDER, to=Address("a@example.com", ""), subject="S")


def test_a_message_copies_and_pickles_with_its_parts_still_left_to_its_merge() -> None:
    original = lazy(message("Zoë\nSam", 2))
    for twin in (
        copy.copy(original),
        copy.deepcopy(original),
        pickle.loads(pickle.dumps(original)),
    ):
        assert twin._html is None
        assert twin == original and twin.html == message("Zoë\nSam", 2).html
