"""A stand-in for Postmark's HTTP API on 127.0.0.1, for contract, crash and load tests.

It speaks the documented shapes of ``POST /email/batch`` and ``GET /messages/outbound``
(see /work/shared/reference/providers.md) and can misbehave on demand: 429/500/503,
422 for the whole batch, a connection dropped before or after the batch was
processed, or an answer that comes too late.

In a test's own process (everything kept in memory, faults changeable at any time)::

    with FakePostmark(token="t", inactive={"gone@example.com"}) as pm:
        pm.fail_next("drop-after")
        ...  # talk to pm.url
        pm.requests[-1].body, pm.accepted

In a process of its own, so it outlives a client killed with SIGKILL::

    python -m tests.fake_postmark --state-file accepted.jsonl --token t \\
        --fail drop-after=0.05 --seed 7

or, from a test, ``with FakePostmarkProcess(tmp_path / "accepted.jsonl", token="t") as pm``.
The process prints ``FAKE_POSTMARK_URL=http://127.0.0.1:PORT`` once it listens, appends
one JSON line per accepted message to the state file (written and flushed before the
answer goes out, so a message the client saw accepted is always on file), keeps no
message bodies, and on restart reloads the file so lookups still find earlier messages.

A state-file line (``read_accepted`` parses the file)::

    {"seq": 1, "at": 1700000000.0, "message_id": "…", "delivery_key": "…", "to": "…",
     "from": "…", "subject": "…", "tag": "…", "stream": "broadcast",
     "metadata": {"delivery_key": "…"}, "headers": [{"Name": …, "Value": …}],
     "fault": null | "drop-after" | "slow"}

``fault`` says the client may never have seen the answer for that message.
Control endpoints (no token, not recorded): ``GET /_fake/stats``; ``POST /_fake/faults``
with ``{"next": [{"kind": "429", "times": 2, "retry_after": "3"}], "rates": {"500": 0.1},
"seed": 1, "clear": true}``; ``POST /_fake/recipients`` with
``{"inactive": [...], "invalid": [...]}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import getaddresses
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final
from urllib.parse import parse_qs, urlsplit

import orjson

HOST: Final = "127.0.0.1"
BATCH_PATH: Final = "/email/batch"
SEARCH_PATH: Final = "/messages/outbound"
SUPPRESSIONS_PATH: Final = re.compile(r"/message-streams/([^/]+)/suppressions/dump")
BATCH_LIMIT: Final = 500
URL_PREFIX: Final = "FAKE_POSTMARK_URL="
DEFAULT_TOKEN: Final = "fake-postmark-token"
DEFAULT_STREAMS: Final = frozenset({"outbound", "broadcast"})

FAULT_KINDS: Final = ("429", "500", "503", "422", "drop-before", "drop-after", "slow")

# Postmark's own wording: the text names every reason a recipient can be inactive, so
# it never tells a hard bounce from a spam complaint.
INACTIVE_TEXT: Final = (
    "You tried to send to recipient(s) that have been marked as inactive. Found inactive "
    "addresses: {addresses}. Inactive recipients are ones that have generated a hard bounce, "
    "a spam complaint, or a manual suppression."
)
PARTLY_INACTIVE_TEXT: Final = "Message OK, but will not deliver to these inactive addresses: {}."
MISSING_TOKEN_TEXT: Final = (
    "No Account or Server API tokens were supplied in the HTTP headers. Please add a header "
    "for either X-Postmark-Server-Token or X-Postmark-Account-Token."
)
BAD_TOKEN_TEXT: Final = (
    "The Server Token you provided in the X-Postmark-Server-Token request header was invalid. "
    "Please verify that you are using a valid token."
)


@dataclass(frozen=True)
class Fault:
    """One misbehaviour, for one request to ``path``.

    ``retry_after`` is the Retry-After header of a 429 (Postmark documents none, so the
    default is to send none); ``delay`` is how late a ``slow`` answer comes;
    ``error_code`` is the ErrorCode in a 422's body.
    """

    kind: str
    retry_after: str | None = None
    delay: float = 5.0
    error_code: int = 300
    path: str = BATCH_PATH

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {self.kind!r} (one of: {', '.join(FAULT_KINDS)})")


@dataclass(frozen=True)
class RecordedRequest:
    """A request as the server received it; ``body`` is the parsed JSON (None if absent
    or not JSON)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    raw: bytes = b""  # the body's bytes as they arrived

    def header(self, name: str) -> str | None:
        """A header by name, ignoring case as HTTP does."""
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Stored:
    """What the message search needs of an accepted message (no bodies, no headers)."""

    seq: int
    at: float
    message_id: str
    to: str
    sender: str
    subject: str
    tag: str
    stream: str
    # A tuple of pairs, and interned strings above: 100,000 of these stay small.
    metadata: tuple[tuple[str, str], ...]

    def meta(self, name: str) -> str | None:
        return next((v for k, v in self.metadata if k == name), None)

    def summary(self) -> dict[str, Any]:
        recipients = [addr for _, addr in getaddresses([self.to])]
        return {
            "Tag": self.tag,
            "MessageID": self.message_id,
            "MessageStream": self.stream,
            "To": [{"Email": addr, "Name": name or None} for name, addr in getaddresses([self.to])],
            "Cc": [],
            "Bcc": [],
            "Recipients": recipients,
            "ReceivedAt": _timestamp(self.at),
            "From": self.sender,
            "Subject": self.subject,
            "Attachments": [],
            "Status": "Sent",
            "TrackOpens": False,
            "TrackLinks": "None",
            "Metadata": dict(self.metadata),
            "Sandboxed": False,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> _Stored:
        return cls(
            seq=int(record["seq"]),
            at=float(record["at"]),
            message_id=str(record["message_id"]),
            to=str(record["to"]),
            sender=sys.intern(str(record["from"])),
            subject=sys.intern(str(record["subject"])),
            tag=sys.intern(str(record["tag"])),
            stream=sys.intern(str(record["stream"])),
            metadata=tuple((sys.intern(str(k)), str(v)) for k, v in record["metadata"].items()),
        )


class FakePostmark:
    """The fake server. Use it as a context manager (background thread) or call
    ``serve_forever`` (what the process mode does).

    ``state_file``: append accepted messages there as JSON lines. ``keep_in_memory``:
    also keep every request and accepted-message record in ``requests`` / ``accepted``
    (the process mode turns it off so 100,000 messages cost little memory).
    """

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        inactive: Iterable[str] = (),
        invalid: Iterable[str] = (),
        suppressed: Mapping[str, str] | None = None,
        streams: Iterable[str] = DEFAULT_STREAMS,
        state_file: Path | None = None,
        request_log: Path | None = None,
        keep_in_memory: bool = True,
        port: int = 0,
    ) -> None:
        self.token = token
        # address → SuppressionReason (HardBounce, SpamComplaint, ManualSuppression): on
        # the stream's suppression dump, and inactive when sent to.
        self.suppressed = {a.lower(): r for a, r in (suppressed or {}).items()}
        self.suppressed.update({a.lower(): "HardBounce" for a in inactive})
        self.inactive = set(self.suppressed)
        self.invalid = {a.lower() for a in invalid}
        self.streams = set(streams)
        self.keep_in_memory = keep_in_memory
        self.requests: list[RecordedRequest] = []
        self.stats: Counter[str] = Counter()
        self._accepted: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._queue: deque[Fault] = deque()
        self._rates: list[tuple[Fault, float]] = []
        self._rng = random.Random(0)
        self._all: list[_Stored] = []
        self._by_key: dict[str, list[_Stored]] = {}
        self._seq = 0
        self.state_file = state_file
        self._state: IO[str] | None = None
        if state_file is not None:
            self._reload(state_file)
            self._state = state_file.open("a", encoding="utf-8")
        self._request_log = request_log.open("a", encoding="utf-8") if request_log else None
        self._server = _Server((HOST, port), _Handler)
        self._server.fake = self
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> FakePostmark:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        # A short poll interval: close() waits for the loop to notice, once per test.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fake-postmark", daemon=True
        )
        self._thread.start()

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def close(self) -> None:
        self._stop.set()  # wakes any handler held back by a "slow" fault
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()
        with self._lock:
            for handle in (self._state, self._request_log):
                if handle is not None:
                    handle.close()
            self._state = self._request_log = None

    # -- configuration -----------------------------------------------------

    def fail_next(
        self,
        kind: str,
        times: int = 1,
        *,
        retry_after: str | None = None,
        delay: float = 5.0,
        error_code: int = 300,
        path: str = BATCH_PATH,
    ) -> None:
        """Make the next ``times`` requests to ``path`` misbehave as ``kind``."""
        fault = Fault(kind, retry_after, delay, error_code, path)
        with self._lock:
            self._queue.extend([fault] * times)

    def fail_randomly(self, rates: Mapping[str, float], *, seed: int = 0, **options: Any) -> None:
        """Give each batch request the fault ``kind`` with probability ``rates[kind]``
        (one draw per request, so the rates add up to at most 1)."""
        if sum(rates.values()) > 1:
            raise ValueError("fault rates add up to more than 1")
        faults = [(Fault(kind, **options), rate) for kind, rate in rates.items()]
        with self._lock:
            self._rates = faults
            self._rng = random.Random(seed)

    def suppress(self, reasons: Mapping[str, str]) -> None:
        """Put addresses on the stream's suppression list (address → SuppressionReason);
        they are inactive from now on."""
        with self._lock:
            for address, reason in reasons.items():
                self.suppressed[address.lower()] = reason
                self.inactive.add(address.lower())

    def clear_faults(self) -> None:
        with self._lock:
            self._queue.clear()
            self._rates = []

    # -- what was recorded -------------------------------------------------

    @property
    def accepted(self) -> list[dict[str, Any]]:
        """Accepted-message records, oldest first (from memory, else from the state file)."""
        with self._lock:
            if self.keep_in_memory:
                return list(self._accepted)
            if self._state is not None:
                self._state.flush()
        return read_accepted(self.state_file) if self.state_file else []

    def batch_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == BATCH_PATH]

    # -- request handling --------------------------------------------------

    def respond(
        self, method: str, target: str, headers: Mapping[str, str], raw: bytes
    ) -> tuple[Reply | None, float]:
        """The reply to one request (None: drop the connection) and how long to hold it."""
        url = urlsplit(target)
        query = parse_qs(url.query, keep_blank_values=True)
        body = _parse_json(raw)
        if url.path.startswith("/_fake/"):
            return self._control(method, url.path, body), 0.0
        with self._lock:
            self.stats["requests"] += 1
            if self.keep_in_memory:
                self.requests.append(
                    RecordedRequest(method, url.path, query, dict(headers.items()), body, raw)
                )

        reply, fault = self._route(method, url.path, query, headers, raw, body)
        kind = fault.kind if fault is not None else None
        if kind == "drop-after":
            reply = None  # processed and recorded, but the client never hears of it
        if fault is not None:
            with self._lock:
                self.stats[f"fault:{kind}"] += 1
        if self._request_log is not None:
            self._log_request(method, url.path, reply, fault, body)
        return reply, fault.delay if fault is not None and kind == "slow" else 0.0

    def wait(self, seconds: float) -> None:
        """Hold an answer back; returns early when the server stops."""
        self._stop.wait(seconds)

    def _route(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: Mapping[str, str],
        raw: bytes,
        body: Any,
    ) -> tuple[Reply | None, Fault | None]:
        known = {(BATCH_PATH, "POST"), (SEARCH_PATH, "GET")}
        dump = SUPPRESSIONS_PATH.fullmatch(path)
        if (path, method) not in known and not (dump and method == "GET"):
            return Reply(404, {"ErrorCode": 404, "Message": f"No route for {method} {path}"}), None
        denied = self._check_token(headers)
        if denied is not None:
            return denied, None
        fault = self._take_fault(path)
        if fault is not None and fault.kind not in ("drop-after", "slow"):
            return _fault_reply(fault), fault
        if dump is not None:
            return self._suppressions(dump.group(1)), fault
        if path == BATCH_PATH:
            content_type = _header(headers, "Content-Type") or ""
            if "application/json" not in content_type:
                return Reply(422, {"ErrorCode": 409, "Message": "JSON required."}), fault
            return self._batch(raw, body, fault), fault
        return self._search(query), fault

    def _check_token(self, headers: Mapping[str, str]) -> Reply | None:
        given = _header(headers, "X-Postmark-Server-Token")
        if not given:
            return Reply(401, {"ErrorCode": 10, "Message": MISSING_TOKEN_TEXT})
        if given != self.token:
            return Reply(401, {"ErrorCode": 10, "Message": BAD_TOKEN_TEXT})
        return None

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for index, fault in enumerate(self._queue):
                if fault.path == path:
                    del self._queue[index]
                    return fault
            if path == BATCH_PATH and self._rates:
                draw = self._rng.random()
                for fault, rate in self._rates:
                    if draw < rate:
                        return fault
                    draw -= rate
        return None

    def _batch(self, raw: bytes, body: Any, fault: Fault | None) -> Reply:
        if body is None and raw.strip():
            return Reply(422, {"ErrorCode": 402, "Message": "Received invalid JSON input."})
        if not isinstance(body, list):
            return Reply(422, {"ErrorCode": 403, "Message": "Expected a JSON array of messages."})
        if len(body) > BATCH_LIMIT:
            return Reply(
                422,
                {
                    "ErrorCode": 410,
                    "Message": f"Too many messages in the batch ({len(body)}); "
                    f"the limit is {BATCH_LIMIT}.",
                },
            )
        now = time.time()
        results: list[dict[str, Any]] = []
        records: list[dict[str, Any]] = []
        for item in body:
            result, record = self._item(item, now, fault)
            results.append(result)
            if record is not None:
                records.append(record)
        self._record(records, rejected=len(body) - len(records))
        return Reply(200, results)

    def _item(
        self, item: Any, now: float, fault: Fault | None
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        if not isinstance(item, dict):
            return {"ErrorCode": 300, "Message": "Invalid email request."}, None
        to = str(item.get("To") or "")
        stream = str(item.get("MessageStream") or "outbound")
        recipients = _recipients(to)
        if not recipients:
            return {"ErrorCode": 300, "Message": "Zero recipients specified.", "To": to}, None
        if not item.get("From"):
            return {"ErrorCode": 300, "Message": "Invalid 'From' address: ''.", "To": to}, None
        for address in recipients:
            if "@" not in address or address in self.invalid:
                text = f"Error parsing 'To': Illegal email address '{address}'."
                return {"ErrorCode": 300, "Message": text, "To": to}, None
        if stream not in self.streams:
            text = f"The message stream '{stream}' was not found on this server."
            return {"ErrorCode": 1235, "Message": text, "To": to}, None
        inactive = [a for a in recipients if a in self.inactive]
        if len(inactive) == len(recipients):
            text = INACTIVE_TEXT.format(addresses=", ".join(inactive))
            return {"ErrorCode": 406, "Message": text, "To": to}, None
        message_id = str(uuid.uuid4())
        given = item.get("Metadata")
        metadata: dict[str, Any] = given if isinstance(given, dict) else {}
        record = {
            "seq": 0,  # numbered under the lock, in file order
            "at": now,
            "message_id": message_id,
            "delivery_key": metadata.get("delivery_key"),
            "to": to,
            "from": str(item.get("From")),
            "subject": str(item.get("Subject") or ""),
            "tag": str(item.get("Tag") or ""),
            "stream": stream,
            "metadata": {str(k): str(v) for k, v in metadata.items()},
            "headers": item.get("Headers") or [],
            "fault": fault.kind if fault is not None else None,
        }
        text = PARTLY_INACTIVE_TEXT.format(", ".join(inactive)) if inactive else "OK"
        result = {
            "ErrorCode": 0,
            "Message": text,
            "MessageID": message_id,
            "SubmittedAt": _timestamp(now),
            "To": to,
        }
        return result, record

    def _record(self, records: list[dict[str, Any]], *, rejected: int) -> None:
        with self._lock:
            self.stats["accepted"] += len(records)
            self.stats["rejected"] += rejected
            if not records:
                return
            lines = []
            for record in records:
                self._seq += 1
                record["seq"] = self._seq
                self._index(_Stored.from_record(record))
                lines.append(orjson.dumps(record).decode() + "\n")
            if self._state is not None:
                # One write and a flush per batch, before the answer: cheap, and once
                # the client has seen a MessageID the message is on file.
                self._state.write("".join(lines))
                self._state.flush()
            if self.keep_in_memory:
                self._accepted.extend(records)

    def _index(self, stored: _Stored) -> None:
        self._all.append(stored)
        key = stored.meta("delivery_key")
        if key is not None:
            self._by_key.setdefault(key, []).append(stored)

    def _search(self, query: dict[str, list[str]]) -> Reply:
        try:
            count = int(query["count"][0])
            offset = int(query["offset"][0])
        except (KeyError, ValueError):
            return Reply(422, {"ErrorCode": 300, "Message": "'count' and 'offset' are required."})
        if not 0 < count <= BATCH_LIMIT or offset < 0 or count + offset > 10_000:
            text = "count must be 1–500, and count + offset at most 10,000."
            return Reply(422, {"ErrorCode": 300, "Message": text})
        metadata = {
            k[len("metadata_") :]: v[0] for k, v in query.items() if k.startswith("metadata_")
        }
        recipient = query.get("recipient", [""])[0].lower()
        tag = query.get("tag", [None])[0]
        stream = query.get("messagestream", [None])[0]
        with self._lock:
            if "delivery_key" in metadata:
                candidates = list(self._by_key.get(metadata["delivery_key"], []))
            else:
                candidates = list(self._all)
        matches = [
            s
            for s in reversed(candidates)  # Postmark lists the newest first
            if all(s.meta(k) == v for k, v in metadata.items())
            and (not recipient or recipient in s.to.lower())
            and (tag is None or s.tag == tag)
            and (stream is None or s.stream == stream)
        ]
        page = matches[offset : offset + count]
        return Reply(200, {"TotalCount": len(matches), "Messages": [s.summary() for s in page]})

    def _suppressions(self, stream: str) -> Reply:
        if stream not in self.streams:
            return Reply(
                422, {"ErrorCode": 1235, "Message": f"The message stream '{stream}' was not found."}
            )
        with self._lock:
            entries = [
                {
                    "EmailAddress": address,
                    "SuppressionReason": reason,
                    "Origin": "Recipient" if reason != "HardBounce" else "Customer",
                    "CreatedAt": "2026-11-01T10:00:00-05:00",
                }
                for address, reason in sorted(self.suppressed.items())
            ]
        return Reply(200, {"Suppressions": entries})

    def _control(self, method: str, path: str, body: Any) -> Reply:
        options = body if isinstance(body, dict) else {}
        if (method, path) == ("GET", "/_fake/stats"):
            return Reply(200, dict(self.stats))
        if (method, path) == ("POST", "/_fake/faults"):
            try:
                if options.get("clear"):
                    self.clear_faults()
                for spec in options.get("next", []):
                    spec = dict(spec)
                    self.fail_next(spec.pop("kind"), spec.pop("times", 1), **spec)
                if "rates" in options:
                    extra = {k: options[k] for k in ("retry_after", "delay") if k in options}
                    self.fail_randomly(options["rates"], seed=int(options.get("seed", 0)), **extra)
            except (KeyError, TypeError, ValueError) as exc:
                return Reply(400, {"Message": str(exc)})
            return Reply(200, {"Message": "OK"})
        if (method, path) == ("POST", "/_fake/recipients"):
            added = {a.lower() for a in options.get("inactive", [])}
            self.inactive |= added
            self.suppressed.update(dict.fromkeys(added, "HardBounce"))
            self.invalid |= {a.lower() for a in options.get("invalid", [])}
            return Reply(200, {"Message": "OK"})
        return Reply(404, {"Message": f"No control endpoint {method} {path}"})

    def _log_request(
        self, method: str, path: str, reply: Reply | None, fault: Fault | None, body: Any
    ) -> None:
        entry = {
            "at": time.time(),
            "method": method,
            "path": path,
            "status": reply.status if reply is not None else None,
            "messages": len(body) if isinstance(body, list) else None,
            "fault": fault.kind if fault is not None else None,
        }
        with self._lock:
            if self._request_log is not None:
                self._request_log.write(json.dumps(entry) + "\n")
                self._request_log.flush()

    def _reload(self, state_file: Path) -> None:
        """Index what an earlier run of the server accepted, so lookups still find it."""
        for record in read_accepted(state_file):
            self._index(_Stored.from_record(record))
            self._seq = max(self._seq, int(record["seq"]))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakePostmark

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout, SIGKILL) is expected here; anything else is a
        # bug in the fake and should be loud.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so clients keep their connection: the benchmark sends 200 batches.
    protocol_version = "HTTP/1.1"
    # The head and the body leave in two writes: without this the body would wait for
    # the client's delayed ACK (some 40 ms a reply).
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a line per request would drown test output

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        # Read the whole body even when dropping: closing with unread data makes the
        # kernel send a reset, and the drop should look the same every time.
        raw = self.rfile.read(length) if length else b""
        reply, delay = self.server.fake.respond(
            self.command, self.path, dict(self.headers.items()), raw
        )
        if reply is None:
            self.close_connection = True
            return
        if delay:
            self.server.fake.wait(delay)
        payload = orjson.dumps(reply.body)
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            self.close_connection = True  # the client stopped waiting


def _fault_reply(fault: Fault) -> Reply | None:
    if fault.kind == "drop-before":
        return None
    if fault.kind == "429":
        headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
        return Reply(429, {"ErrorCode": 429, "Message": "Rate limit exceeded."}, headers)
    if fault.kind == "422":
        return Reply(422, {"ErrorCode": fault.error_code, "Message": "Invalid email request."})
    status = int(fault.kind)
    return Reply(status, {"ErrorCode": 100, "Message": f"Injected {status}."})


def _header(headers: Mapping[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


def _recipients(to: str) -> list[str]:
    """The lower-cased addresses in a To value."""
    # The adapter sends one "Name <addr>" per message; the email package's parser costs
    # ~90 µs a call, most of the fake's time in a 100,000-message benchmark, so that
    # shape skips it.
    if "," not in to and '"' not in to:
        if to.endswith(">") and "<" in to:
            address = to[to.rindex("<") + 1 : -1].strip().lower()
        else:
            address = to.strip().lower()
        return [address] if address and "<" not in address and " " not in address else []
    return [addr.lower() for _, addr in getaddresses([to]) if addr]


def _parse_json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)  # fast: a batch can be 10 MB, and benchmarks send many
    except ValueError:
        return None


def _timestamp(at: float) -> str:
    return datetime.fromtimestamp(at).astimezone().isoformat()


def read_accepted(path: Path) -> list[dict[str, Any]]:
    """The accepted-message records in a state file, in the order they were accepted.

    A last line cut short (the server killed mid-write) is ignored."""
    if not path.exists():
        return []
    records = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


# -- process mode ---------------------------------------------------------------


class FakePostmarkProcess:
    """Runs the fake in a child process for as long as the ``with`` block lasts.

    ``faults``: probability per batch request, e.g. ``{"drop-after": 0.05}``;
    ``first``: the first N batch requests get a fault, e.g. ``{"503": 2}``.
    """

    def __init__(
        self,
        state_file: Path,
        *,
        token: str = DEFAULT_TOKEN,
        inactive: Iterable[str] = (),
        invalid: Iterable[str] = (),
        faults: Mapping[str, float] | None = None,
        first: Mapping[str, int] | None = None,
        seed: int = 0,
        retry_after: str | None = None,
        slow_seconds: float | None = None,
        request_log: Path | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self.state_file = state_file
        self.token = token
        args = [sys.executable, str(Path(__file__).resolve()), "--state-file", str(state_file)]
        args += ["--token", token, "--seed", str(seed)]
        args += [f"--inactive={a}" for a in inactive] + [f"--invalid={a}" for a in invalid]
        args += [f"--fail={kind}={rate}" for kind, rate in (faults or {}).items()]
        args += [f"--fail-first={kind}={n}" for kind, n in (first or {}).items()]
        if retry_after is not None:
            args += ["--retry-after", retry_after]
        if slow_seconds is not None:
            args += ["--slow-seconds", str(slow_seconds)]
        if request_log is not None:
            args += ["--request-log", str(request_log)]
        self.args = args
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> FakePostmarkProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        self.process = subprocess.Popen(self.args, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            ready = selector.select(self.startup_timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line.startswith(URL_PREFIX):
            self.stop()
            raise RuntimeError(f"the fake Postmark process did not start (said {line!r})")
        self.url = line[len(URL_PREFIX) :].strip()

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None

    @property
    def accepted(self) -> list[dict[str, Any]]:
        return read_accepted(self.state_file)

    def stats(self) -> dict[str, int]:
        result: dict[str, int] = self._call("GET", "/_fake/stats")
        return result

    def set_faults(
        self,
        *,
        next: list[dict[str, Any]] | None = None,
        rates: Mapping[str, float] | None = None,
        seed: int = 0,
        clear: bool = False,
    ) -> None:
        """Change the faults of the running process (see ``FakePostmark.fail_next``)."""
        body: dict[str, Any] = {"next": next or [], "seed": seed, "clear": clear}
        if rates is not None:
            body["rates"] = dict(rates)
        self._call("POST", "/_fake/faults", body)

    def set_recipients(self, *, inactive: Iterable[str] = (), invalid: Iterable[str] = ()) -> None:
        self._call("POST", "/_fake/recipients", {"inactive": [*inactive], "invalid": [*invalid]})

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        # The fake is local: a proxy configured in the environment must not see this.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=10) as response:
            return json.load(response)


def _pairs(values: list[str], convert: type[float] | type[int]) -> dict[str, Any]:
    result = {}
    for value in values:
        kind, _, amount = value.rpartition("=")
        if kind not in FAULT_KINDS:
            raise SystemExit(
                f"unknown fault {kind!r} in {value!r}: one of {', '.join(FAULT_KINDS)}"
            )
        result[kind] = convert(amount)
    return result


def main(argv: list[str] | None = None) -> None:
    # The records of accepted messages only grow and hold no cycles: without the cycle
    # collector walking them after every batch, a 100,000-message benchmark measures
    # the sender rather than this fake.
    gc.disable()
    parser = argparse.ArgumentParser(description="A fake Postmark API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="0 (default): any free port")
    parser.add_argument("--state-file", type=Path, required=True, help="accepted messages (JSONL)")
    parser.add_argument("--request-log", type=Path, help="one JSON line per request")
    parser.add_argument("--token", default=DEFAULT_TOKEN)
    parser.add_argument("--stream", action="append", help="message streams (outbound, broadcast)")
    parser.add_argument("--inactive", action="append", default=[], metavar="ADDRESS")
    parser.add_argument("--invalid", action="append", default=[], metavar="ADDRESS")
    parser.add_argument(
        "--fail", action="append", default=[], metavar="KIND=P", help="fault probability"
    )
    parser.add_argument(
        "--fail-first", action="append", default=[], metavar="KIND=N", help="first N batches"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retry-after", help="Retry-After of injected 429s")
    parser.add_argument("--slow-seconds", type=float, default=5.0, help="delay of 'slow'")
    options = parser.parse_args(argv)

    fake = FakePostmark(
        token=options.token,
        inactive=options.inactive,
        invalid=options.invalid,
        streams=options.stream or DEFAULT_STREAMS,
        state_file=options.state_file,
        request_log=options.request_log,
        keep_in_memory=False,
        port=options.port,
    )
    fault_options = {"retry_after": options.retry_after, "delay": options.slow_seconds}
    for kind, times in _pairs(options.fail_first, int).items():
        fake.fail_next(kind, times, **fault_options)
    fake.fail_randomly(_pairs(options.fail, float), seed=options.seed, **fault_options)

    # SIGTERM (what FakePostmarkProcess.stop sends) closes the state file cleanly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"{URL_PREFIX}{fake.url}", flush=True)
    try:
        fake.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        fake.close()


if __name__ == "__main__":
    main()
