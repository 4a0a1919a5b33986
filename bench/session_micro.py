"""The inbound session's own cost, with no sockets, disk or reactor: the pure-Python path
(ServerSession and the InboundSMTP shell) that every message takes.

    .venv/bin/python bench/session_micro.py [SESSIONS] [--profile]

Each session is one message over twisted's StringTransport into a MemorySink:
banner, EHLO, MAIL, RCPT, DATA with 4 KB, QUIT. Prints microseconds per
session; compare two checkouts by running each one's copy with its own venv.
"""

from __future__ import annotations

import cProfile
import pathlib
import pstats
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from inbound_harness import Session, runtime  # noqa: E402

BODY = b"Subject: x\r\n\r\n" + b"y" * 4000 + b"\r\n.\r\n"


def one_session(rt: object) -> None:
    s = Session(rt)
    for chunk in (b"EHLO client.test\r\n", b"MAIL FROM:<a@client.test>\r\n", b"RCPT TO:<b@example.com>\r\n",
                  b"DATA\r\n", BODY, b"QUIT\r\n"):
        s.proto.dataReceived(chunk)
    assert s.transport.value().endswith(b"221 2.0.0 Bye\r\n"), s.transport.value()[-200:]
    s.proto.connectionLost(None)


def main() -> None:
    sessions = int(next((a for a in sys.argv[1:] if a.isdigit()), "3000"))
    rt = runtime()
    for _ in range(200):  # warm up
        one_session(rt)
    start = time.perf_counter()
    for _ in range(sessions):
        one_session(rt)
    elapsed = time.perf_counter() - start
    print(f"RESULT session_micro sessions={sessions} us_per_session={elapsed / sessions * 1e6:.1f}")
    if "--profile" in sys.argv:
        profile = cProfile.Profile()
        profile.runcall(lambda: [one_session(rt) for _ in range(1000)])
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
