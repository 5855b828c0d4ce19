"""The machine's limit for a send: a client that does only the work no sender can avoid.

For each reader of a CSV (``email,name``): fill the personal fields (name, first name,
address, a signed unsubscribe link) into one part rendered beforehand, encode the
messages as JSON with orjson, and POST them in batches of 500 to a Postmark-shaped
server on 127.0.0.1. No database, no claims, no retries, no checks: `bench/send.py`
times this against `series send` on the same readers and the same part, to the same
kind of server, and prints their ratio.

    python bench/limit.py PART.json READERS.csv URL [--token T] [--processes N]

PART.json holds the part as `bench/send.py` writes it: ``subject``, ``sender``,
``html`` and ``text`` (each ``pieces`` and ``fields``: the body split around its
personal fields), ``unsubscribe_url`` (with ``{token}``) and ``key`` (hex, to sign
the links). With ``--processes N`` the readers are shared out to N processes.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import multiprocessing
import sys
from base64 import urlsafe_b64encode
from pathlib import Path
from typing import Any

import orjson
import requests
from markupsafe import escape

BATCH = 500


def fill(pieces: list[str], fields: list[str], values: dict[str, str]) -> str:
    """The body with each field's value between its pieces."""
    out = [pieces[0]]
    for name, piece in zip(fields, pieces[1:], strict=True):
        out.append(values[name])
        out.append(piece)
    return "".join(out)


def send_share(part: dict[str, Any], readers: list[tuple[str, str]], url: str, token: str) -> int:
    """POST this share of the readers in batches; returns how many the server accepted."""
    key = bytes.fromhex(part["key"])
    html, text = part["html"], part["text"]
    session = requests.Session()
    session.headers.update(
        {
            "X-Postmark-Server-Token": token,
            "Accept": "application/json",
            "Content-Type": "application/json",
        }
    )
    accepted = 0
    for start in range(0, len(readers), BATCH):
        batch = []
        for index, (email, name) in enumerate(readers[start : start + BATCH], start):
            payload = f"1.{index}.{part['series']}".encode()
            mac = hmac.new(key, payload, hashlib.sha256).digest()
            link = part["unsubscribe_url"].replace(
                "{token}",
                urlsafe_b64encode(payload).decode() + "." + urlsafe_b64encode(mac).decode(),
            )
            first = name.split(" ", 1)[0]  # the greeting's first name (pipeline/personal.py)
            raw = {"name": name, "first_name": first, "email": email, "unsubscribe_url": link}
            escaped = {k: str(escape(v)) for k, v in raw.items()}
            batch.append(
                {
                    "From": part["sender"],
                    "To": f'"{name}" <{email}>',
                    "Subject": part["subject"],
                    "HtmlBody": fill(html["pieces"], html["fields"], escaped),
                    "TextBody": fill(text["pieces"], text["fields"], raw),
                    "Headers": [{"Name": "List-Unsubscribe", "Value": f"<{link}>"}],
                    "Metadata": {"delivery_key": f"limit-{index}"},
                    "MessageStream": "outbound",
                }
            )
        response = session.post(f"{url}/email/batch", data=orjson.dumps(batch), timeout=60)
        response.raise_for_status()
        accepted += sum(1 for item in response.json() if item.get("ErrorCode") == 0)
    return accepted


def _share(args: tuple[dict[str, Any], list[tuple[str, str]], str, str]) -> int:
    return send_share(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", type=Path)
    parser.add_argument("readers", type=Path)
    parser.add_argument("url")
    parser.add_argument("--token", default="bench-token")
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    part = orjson.loads(args.part.read_bytes())
    lines = args.readers.read_text(encoding="utf-8").splitlines()[1:]
    readers = [(fields[0], fields[1]) for fields in (line.split(",") for line in lines)]
    n = args.processes
    if n == 1:
        accepted = send_share(part, readers, args.url, args.token)
    else:
        shares = [(part, readers[k::n], args.url, args.token) for k in range(n)]
        with multiprocessing.get_context("fork").Pool(n) as pool:
            accepted = sum(pool.map(_share, shares))
    print(f"accepted {accepted}")
    if accepted != len(readers):
        sys.exit(f"expected {len(readers)} accepted")


if __name__ == "__main__":
    main()
