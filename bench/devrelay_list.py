"""The dev relay's list API with 10,000 captured messages (issue 17): target first page < 200 ms.

Fills a temporary Maildir with N messages (a few KB of body text each, every
100th with a word the body search looks for), starts the dev relay on it with
its web page (tlsmta.testing.Relay, 127.0.0.1, free ports) and times over
real HTTP:

- the first list request after start (the index reads and parses every file once);
- the first page (limit=100), warm: median and worst of 20;
- a body search (q=WORD, matching N/100 messages), warm: median and worst of 20;
- a filtered, paged request (to=, limit=50&start=5000).

Prints one ``RESULT devrelay_list key=value ...`` line.  Run by hand:
``.venv/bin/python bench/devrelay_list.py [--messages 10000]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from tlsmta.testing import Relay, stop_reactor_thread

WORD = "zebracorn"
TIMES = 20


def fill(maildir: str, count: int) -> None:
    new = os.path.join(maildir, "new")
    for sub in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    filler = "lorem ipsum dolor sit amet consectetur adipiscing elit " * 40
    start = time.time() - count
    for n in range(count):
        body = f"Hello user {n},\n{filler}\n{WORD if n % 100 == 0 else 'plain'} order {n}\n"
        data = (f"Return-Path: <app@example.com>\nDelivered-To: user{n}@example.org\n"
                f"From: Shop <shop@example.com>\nTo: user{n}@example.org\nSubject: Order {n} shipped\n"
                f"Message-ID: <{n}@bench.example>\nContent-Type: text/plain; charset=utf-8\n\n{body}")
        path = os.path.join(new, f"{int(start) + n}.M{n:06d}P1Q{n}.bench")
        with open(path, "w") as f:
            f.write(data)
        os.utime(path, (start + n, start + n))


def get(port: int, path: str) -> tuple[float, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        began = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - began
    finally:
        conn.close()
    assert response.status == 200, body[:200]
    return elapsed, json.loads(body)


def timed(port: int, path: str) -> tuple[float, float, dict]:
    runs = [get(port, path) for _ in range(TIMES)]
    times = [t for t, _ in runs]
    return statistics.median(times), max(times), runs[-1][1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="tlsmta-bench-list-")
    try:
        fill(os.path.join(directory, "maildir"), args.messages)
        with Relay(directory, tls=False, http=True) as relay:  # keep_messages=0: all of them
            port = relay.http_port
            assert port is not None
            cold, first = get(port, "/api/messages?limit=100")
            assert first["count"] == args.messages, first["count"]
            page_median, page_worst, _ = timed(port, "/api/messages?limit=100")
            search_median, search_worst, found = timed(port, f"/api/messages?q={WORD}&limit=100")
            assert found["count"] == (args.messages + 99) // 100, found["count"]
            deep_median, _, _ = timed(port, "/api/messages?to=user&limit=50&start=5000")
    finally:
        stop_reactor_thread()
        shutil.rmtree(directory, ignore_errors=True)
    ms = lambda seconds: f"{seconds * 1000:.1f}"  # noqa: E731
    print(f"messages={args.messages} first_request_after_start_ms={ms(cold)}")
    print(f"first page (limit=100): median {ms(page_median)} ms, worst {ms(page_worst)} ms (target < 200 ms)")
    print(f"body search (q={WORD}, {found['count']} hits): median {ms(search_median)} ms, worst {ms(search_worst)} ms")
    print(f"filtered page (to=user, start=5000, limit=50): median {ms(deep_median)} ms")
    print(f"RESULT devrelay_list messages={args.messages} cold_ms={ms(cold)} page_ms={ms(page_median)} "
          f"page_worst_ms={ms(page_worst)} search_ms={ms(search_median)} search_worst_ms={ms(search_worst)} "
          f"filtered_ms={ms(deep_median)}")
    return 0 if page_median < 0.2 else 1


if __name__ == "__main__":
    sys.exit(main())
