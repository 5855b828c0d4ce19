"""The shared machinery of the fake providers: a real HTTP server on 127.0.0.1.

A fake provider subclasses ``FakeServer`` and answers each ``Request`` in ``handle``;
this module records every request, and misbehaves on demand before ``handle`` is
asked (``fail_next``)::

    class FakeThing(FakeServer):
        def handle(self, request: Request) -> Reply:
            return Reply(200, {"id": "1"})

    with FakeThing() as fake:
        fake.fail_next("/emails", Reply(429, {...}, {"retry-after": "1"}))
        fake.fail_next("/emails", "drop-after")   # handled, then the connection drops
        ...  # talk to fake.url
        fake.requests[-1].json

Faults: a ``Reply`` is returned instead of handling the request; ``"drop-before"``
closes the connection without handling it; ``"drop-after"`` handles it (so the
provider "accepted" it) and closes the connection before answering; ``"slow"``
handles it and answers after ``delay`` seconds.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import parse_qs, urlsplit

HOST: Final = "127.0.0.1"
DROP_BEFORE: Final = "drop-before"
DROP_AFTER: Final = "drop-after"
SLOW: Final = "slow"


@dataclass(frozen=True)
class Request:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    raw: bytes

    def header(self, name: str) -> str | None:
        """A header by name, ignoring case as HTTP does."""
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)

    @property
    def json(self) -> Any:
        """The body parsed as JSON (None when it is not JSON)."""
        try:
            return json.loads(self.raw) if self.raw else None
        except ValueError:
            return None

    @property
    def form(self) -> dict[str, list[str]]:
        """The body as form fields, urlencoded or multipart; repeated fields keep order."""
        content_type = self.header("Content-Type") or ""
        if content_type.startswith("multipart/form-data"):
            head = f"Content-Type: {content_type}\r\n\r\n".encode()
            message = BytesParser(policy=HTTP).parsebytes(head + self.raw)
            fields: dict[str, list[str]] = {}
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                payload = part.get_payload(decode=True)
                if isinstance(name, str) and isinstance(payload, bytes):
                    fields.setdefault(name, []).append(payload.decode("utf-8"))
            return fields
        return parse_qs(self.raw.decode("utf-8"), keep_blank_values=True)


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any = None  # dict/list: JSON; str/bytes: sent as is; None: empty
    headers: Mapping[str, str] = field(default_factory=dict)

    def payload(self) -> tuple[bytes, str | None]:
        if self.body is None:
            return b"", None
        if isinstance(self.body, bytes):
            return self.body, "application/octet-stream"
        if isinstance(self.body, str):
            return self.body.encode("utf-8"), "text/plain; charset=utf-8"
        return json.dumps(self.body).encode("utf-8"), "application/json; charset=utf-8"


Fault = Reply | str


class FakeServer:
    """A threaded HTTP server that records requests and asks ``handle`` for answers."""

    name = "fake"

    def __init__(self, *, port: int = 0) -> None:
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self._faults: deque[tuple[str, Fault, float]] = deque()
        self._stop = threading.Event()
        self._server = _Server((HOST, port), _Handler)
        self._server.fake = self
        self._thread: threading.Thread | None = None

    # -- to override ---------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        raise NotImplementedError

    # -- lifecycle ---------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}"

    def __enter__(self) -> Self:
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name=self.name, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server.server_close()

    # -- faults ------------------------------------------------------------

    def fail_next(self, path: str, fault: Fault, times: int = 1, *, delay: float = 5.0) -> None:
        """The next ``times`` requests whose path starts with ``path`` get ``fault``."""
        if isinstance(fault, str) and fault not in (DROP_BEFORE, DROP_AFTER, SLOW):
            raise ValueError(f"unknown fault {fault!r}")
        with self.lock:
            self._faults.extend([(path, fault, delay)] * times)

    def requests_to(self, path: str, method: str | None = None) -> list[Request]:
        with self.lock:
            return [
                r
                for r in self.requests
                if r.path == path and (method is None or r.method == method)
            ]

    # -- serving -----------------------------------------------------------

    def _respond(self, request: Request) -> tuple[Reply | None, float]:
        with self.lock:
            self.requests.append(request)
            fault = None
            for index, (prefix, candidate, delay) in enumerate(self._faults):
                if request.path.startswith(prefix):
                    fault = (candidate, delay)
                    del self._faults[index]
                    break
        if fault is None:
            return self.handle(request), 0.0
        kind, delay = fault
        if isinstance(kind, Reply):
            return kind, 0.0
        if kind == DROP_BEFORE:
            return None, 0.0
        reply = self.handle(request)
        if kind == DROP_AFTER:
            return None, 0.0
        return reply, delay

    def _wait(self, seconds: float) -> None:
        self._stop.wait(seconds)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up is expected; anything else is a bug in the fake.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # An answer leaves in two writes (head, then body): under Nagle's algorithm the body
    # would wait for the client's delayed ACK, some 40 ms per request.
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        # Read the whole body even when dropping, so a drop always looks the same.
        raw = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        request = Request(
            self.command,
            url.path,
            parse_qs(url.query, keep_blank_values=True),
            dict(self.headers.items()),
            raw,
        )
        reply, delay = self.server.fake._respond(request)
        if reply is None:
            self.close_connection = True
            return
        if delay:
            self.server.fake._wait(delay)
        payload, content_type = reply.payload()
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if content_type and not any(k.lower() == "content-type" for k in reply.headers):
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            self.close_connection = True
