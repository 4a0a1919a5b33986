"""Fill a tlsmta spool offline with N queued messages (benchmarks only).

Run with the venv's python (it imports tlsmta):

    .venv/bin/python bench/lib/spool_fill.py SPOOL_DIR -n 2000 --size 4096 \\
        --rcpt user@sink.bench [--route mx] [--sender bench@sender.bench]

Each message is a ``QueuedMessage`` with one ``RecipientState`` (route
``mx`` by default, binding ``default``), due now (``next_attempt = 0``),
and a body of exactly ``--size`` bytes (CRLF lines, headers first).

The files are the spool's own format (``q/ID.msg``: the body, then
``tlsmta.storage._spool.record_and_trailer()``; ids from
``tlsmta.storage._ids.new_message_id()``), but written without the per-message
fsync + directory fsync of ``Spool.store_blocking()``: that costs two
disk flushes per message (minutes for 100,000) and buys nothing offline.
One ``sync()`` at the end makes the whole spool durable before tlsmta
starts, so the page cache state is the same as after store_blocking.
``--store-blocking`` uses the spool API call instead (slow, for checking
that both produce the same thing).

``--reset`` rewrites every ``q/*.msg`` already there as never
tried and due now (attempts 0, next_attempt 0, recipients pending), e.g.
to start the same 100,000-message spool a second time; ``--due-in S``
makes them due S seconds from now instead (a queue that only loads).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from tlsmta.config._routes import parse_route
from tlsmta.storage._ids import new_message_id
from tlsmta.storage._spool import QueuedMessage, RecipientState, Spool, read_record, record_and_trailer


def make_body(size: int, sender: str, rcpt: str, n: int) -> bytes:
    head = (
        f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: tlsmta bench message {n}\r\n"
        f"Message-ID: <bench-{n}@sender.bench>\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n\r\n"
    ).encode()
    line = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-abcdefghijkl\r\n"  # 78 bytes
    body = head
    while len(body) < size:
        body += line
    body = body[: size - 2] + b"\r\n"
    assert len(body) == size
    return body


def fill(path: str, count: int, size: int, rcpt: str, sender: str, route: str, store_blocking: bool = False) -> list[str]:
    spool = Spool(path, disk=None)  # type: ignore[arg-type]  # the blocking methods need no DiskIO
    spool.ensure()
    parsed = parse_route(route)
    ids = []
    now = time.time()
    for n in range(count):
        body = make_body(size, sender, rcpt, n)
        message = QueuedMessage(
            id=new_message_id(),
            sender=sender,
            recipients=[RecipientState(rcpt, parsed, "default")],
            received_at=now,
            next_attempt=0.0,
            size=0 if store_blocking else len(body),
            peer="127.0.0.1",
            listener="bench",
        )
        if store_blocking:
            spool.store_blocking(message, body)
        else:
            with open(spool.message_path(message.id), "wb") as f:
                f.write(body + record_and_trailer(message))
        ids.append(message.id)
    if len(set(ids)) != len(ids):
        raise SystemExit("duplicate message ids")
    os.sync()
    return ids


def reset(path: str, due_in: float = 0.0) -> int:
    """Make every queued message in the spool never tried and due now (or in
    ``due_in`` seconds); the count."""
    spool = Spool(path, disk=None)  # type: ignore[arg-type]
    count = 0
    for message_id in spool.list_blocking():
        path = spool.message_path(message_id)
        message = read_record(path)
        body = spool.read_body_blocking(message)
        message.attempts = 0
        message.next_attempt = time.time() + due_in if due_in else 0.0
        for rcpt in message.recipients:
            rcpt.status, rcpt.last = "pending", ""
        with open(path, "wb") as f:
            f.write(body + record_and_trailer(message))
        count += 1
    os.sync()
    return count


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spool")
    ap.add_argument("-n", "--count", type=int, default=None, help="messages to add (default 2000, or 0 with --reset)")
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--rcpt", default="user@sink.bench")
    ap.add_argument("--sender", default="bench@sender.bench")
    ap.add_argument("--route", default="mx")
    ap.add_argument("--store-blocking", action="store_true")
    ap.add_argument("--reset", action="store_true", help="make the queued messages due now again")
    ap.add_argument("--due-in", type=float, default=0.0, help="with --reset: due in this many seconds instead of now")
    args = ap.parse_args(argv)
    if args.count is None:
        args.count = 0 if args.reset else 2000
    t0 = time.monotonic()
    if args.reset:
        n = reset(args.spool, args.due_in)
        when = f"due in {args.due_in:g} s" if args.due_in else "due now"
        print(f"spool_fill: {n} messages in {args.spool}/q made {when} ({time.monotonic() - t0:.1f} s)", file=sys.stderr)
        if not args.count:
            return 0
        t0 = time.monotonic()
    ids = fill(args.spool, args.count, args.size, args.rcpt, args.sender, args.route, args.store_blocking)
    print(f"spool_fill: {len(ids)} messages of {args.size} bytes in {args.spool}/q ({time.monotonic() - t0:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
