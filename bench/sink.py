"""A Postmark-shaped server that discards what it is sent: the benchmark's provider.

`POST /email/batch` reads the JSON array of messages, counts each recipient, and
answers one accepted item per message (``ErrorCode`` 0, a ``MessageID``), the shape
Postmark documents for its batch endpoint. It keeps no bodies, writes no files and
checks nothing but the server token: the time a send takes against it is the
sender's own, as it would be against a provider on another machine.
`GET /message-streams/<stream>/suppressions/dump` answers an empty list, and
`GET /stats` answers ``{"accepted": N, "twice": K}``: messages taken and readers
who got more than one (the benchmark's no-duplicates check).

    python bench/sink.py --token T     # prints its URL on the first line, then serves

From Python: ``with Sink(token) as sink: ... sink.url ... sink.stats()``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

import orjson
import requests


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a provider's API does
    disable_nagle_algorithm = True  # the answer's last segment goes at once
    wbufsize = -1  # headers and body leave in as few writes as they fit
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.headers.get("X-Postmark-Server-Token") != self.server.token:
            self._answer(401, {"ErrorCode": 10, "Message": "bad token"})
            return
        if self.path != "/email/batch":
            self._answer(404, {"ErrorCode": 404, "Message": "not here"})
            return
        messages = orjson.loads(body)
        recipients = [m.get("To", "") for m in messages]
        with self.server.lock:
            first = self.server.accepted
            self.server.accepted += len(recipients)
            self.server.recipients.update(recipients)
        items = [
            {"ErrorCode": 0, "Message": "OK", "MessageID": f"sink-{first + i}", "To": to}
            for i, to in enumerate(recipients)
        ]
        self._answer(200, items)

    def do_GET(self) -> None:
        if self.path.endswith("/suppressions/dump"):  # a send reads it first: nobody
            self._answer(200, {"Suppressions": []})
            return
        if self.path != "/stats":
            self._answer(404, {"ErrorCode": 404, "Message": "not here"})
            return
        with self.server.lock:
            twice = sum(1 for n in self.server.recipients.values() if n > 1)
            stats = {"accepted": self.server.accepted, "twice": twice}
        self._answer(200, stats)

    def _answer(self, status: int, data: object) -> None:
        body = orjson.dumps(data)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, token: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.token = token
        self.lock = threading.Lock()
        self.accepted = 0
        self.recipients: Counter[str] = Counter()


class Sink:
    """The sink in a child process for as long as the ``with`` block lasts: its own
    core, as a provider is on its own machine."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.url = ""
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> Sink:
        command = [sys.executable, str(Path(__file__).resolve()), "--token", self.token]
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        self.url = self._process.stdout.readline().strip()
        if not self.url.startswith("http://"):
            raise RuntimeError("the sink did not start")
        return self

    @property
    def pid(self) -> int:
        """The sink's process id (to read the CPU it spent)."""
        assert self._process is not None
        return self._process.pid

    def stats(self) -> dict[str, int]:
        """``accepted`` messages and readers who got more than one (``twice``)."""
        answer: dict[str, int] = requests.get(f"{self.url}/stats", timeout=30).json()
        return answer

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--token", required=True)
    args = parser.parse_args()
    server = _Server(args.token)
    host, port = server.server_address[:2]
    print(f"http://{host!s}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
