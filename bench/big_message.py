#!/usr/bin/env python3
"""RSS growth of tlsmta while it receives one 50 MiB message (target: < 16 MiB).

Starts its own tlsmta (Maildir route, listener max_message_size =
104857600) on a free 127.0.0.1 port, or uses a running one given --port,
--pid and --maildir.  Sends ONE message of 50 MiB (header lines, then body
lines of 76 characters + CRLF) over plain SMTP, streaming it from a
generator, while a thread samples tlsmta's VmRSS every 50 ms.  The
baseline is the RSS just before the first body byte is sent (after the
354); the peak is the larger of the sampled maximum and VmHWM (reset to
the baseline through /proc/PID/clear_refs when allowed).  Then checks the
250, that exactly one new file appeared in maildir/new, that its size is
what a Maildir copy of the message should be (LF line ends plus the
Return-Path/Delivered-To/Received lines tlsmta adds) and that its body is
byte-for-byte what was sent.

    python3 bench/big_message.py
    python3 bench/big_message.py --mib 100
    python3 bench/big_message.py --port 2525 --pid 1234 --maildir ./maildir   # attach
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))

from tlsmta_proc import TlsmtaProcess, mib, proc_status, reset_peak_rss  # noqa: E402

LINE_BODY = 76  # characters per line, CRLF not included
CHUNK = 256 * 1024


def message_lines(total: int) -> Iterator[bytes]:
    """Lines (with CRLF) adding up to exactly ``total`` bytes; none starts with '.'."""
    headers = [
        b"From: <sender@bench-client.local>\r\n",
        b"To: <rcpt@remote.example>\r\n",
        b"Subject: tlsmta-bench big message\r\n",
        b"Message-ID: <big-message@bench-client.local>\r\n",
        b"\r\n",
    ]
    sent = 0
    for h in headers:
        sent += len(h)
        yield h
    n = 0
    filler = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/" * 2
    while sent < total:
        room = total - sent
        if room >= LINE_BODY + 2:
            prefix = b"%09d " % n
            line = prefix + filler[: LINE_BODY - len(prefix)] + b"\r\n"
        else:
            line = b"x" * max(0, room - 2) + b"\r\n" if room >= 2 else b"\r\n"
        n += 1
        sent += len(line)
        yield line


def build_message(total: int) -> bytes:
    """The whole message, built before connecting so the client sends at full speed."""
    return b"".join(message_lines(total))


class Sampler(threading.Thread):
    """VmRSS of ``pid`` every ``interval`` seconds until stopped."""

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self._stop_event.is_set():
            try:
                self.samples.append((time.monotonic() - t0, proc_status(self.pid)["VmRSS"]))
            except (OSError, KeyError):
                return
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


class Client:
    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=600)
        self.file = self.sock.makefile("rb")

    def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
            if len(line) < 4 or line[3:4] != b"-":
                return int(lines[-1][:3]), "\n".join(lines)

    def command(self, line: str, expect: int) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        code, text = self.reply()
        if code != expect:
            raise RuntimeError(f"{line!r} -> {text!r} (wanted {expect})")
        return text


def expected_body(message: bytes) -> tuple[int, str, int]:
    """(size, sha256, lines) of the message as a Maildir stores it (LF line ends)."""
    stored = message.replace(b"\r\n", b"\n")
    return len(stored), hashlib.sha256(stored).hexdigest(), message.count(b"\n")


def new_files(maildir: Path) -> set[str]:
    return set(os.listdir(maildir / "new")) if (maildir / "new").is_dir() else set()


def run(port: int, pid: int, maildir: Path, total: int, interval: float, limit_mib: float) -> bool:
    message = build_message(total)
    before_files = new_files(maildir)
    c = Client(port)
    code, banner = c.reply()
    assert code == 220, banner
    ehlo = c.command("EHLO bench-client.local", 250)
    size_line = next((line for line in ehlo.splitlines() if line[4:].startswith("SIZE")), "no SIZE")
    c.command(f"MAIL FROM:<sender@bench-client.local> SIZE={total}", 250)
    c.command("RCPT TO:<rcpt@remote.example>", 250)
    c.command("DATA", 354)

    time.sleep(0.5)  # let the 354 settle; the baseline is taken now
    idle = proc_status(pid)
    hwm_reset = reset_peak_rss(pid)
    sampler = Sampler(pid, interval)
    sampler.start()
    t0 = time.monotonic()
    sent = 0
    try:
        view = memoryview(message)
        for offset in range(0, len(message), CHUNK):
            chunk = view[offset : offset + CHUNK]
            c.sock.sendall(chunk)
            sent += len(chunk)
        t_body = time.monotonic()
        c.sock.sendall(b".\r\n")
        code, text = c.reply()
        t_reply = time.monotonic()
    finally:
        time.sleep(2 * interval)
        sampler.stop()
    after = proc_status(pid)
    try:
        c.command("QUIT", 221)
    except (OSError, RuntimeError):
        pass
    c.sock.close()

    sampled_peak = max((kb for _, kb in sampler.samples), default=idle["VmRSS"])
    peak = max(sampled_peak, after["VmHWM"]) if hwm_reset else sampled_peak
    growth = peak - idle["VmRSS"]
    print(f"server: {size_line.strip()}")
    print(
        f"sent {sent} bytes ({sent / 2**20:.1f} MiB) in {t_body - t0:.2f} s"
        f" ({sent / 2**20 / (t_body - t0):.0f} MiB/s); final dot -> reply {t_reply - t_body:.2f} s"
    )
    print(f"reply to DATA: {text}")
    print(f"tlsmta RSS before the body:  {mib(idle['VmRSS'])}")
    print(
        f"tlsmta peak RSS during it:   {mib(peak)}  (sampled max {mib(sampled_peak)} over {len(sampler.samples)}"
        f" samples every {interval * 1000:.0f} ms; VmHWM {mib(after['VmHWM'])}"
        f"{'' if hwm_reset else ', not reset: ignored'})"
    )
    print(f"tlsmta RSS after the 250:    {mib(after['VmRSS'])}")
    print(f"peak RSS growth: {mib(growth)}  (target < {limit_mib:.0f} MiB: {'met' if growth < limit_mib * 1024 else 'NOT met'})")
    # the time series, coarsely, to see where memory grew
    if sampler.samples:
        step = max(1, len(sampler.samples) // 10)
        series = ", ".join(f"{t:.1f}s:{kb / 1024:.0f}" for t, kb in sampler.samples[::step])
        print(f"RSS MiB over time: {series}")

    ok = code == 250 and growth < limit_mib * 1024
    created = sorted(new_files(maildir) - before_files)
    # one machine-readable line (bench/compare.sh reads it; the content check follows)
    print(
        f"RESULT big_message bytes={sent} reply={code} rss_before_kb={idle['VmRSS']} peak_kb={peak}"
        f" growth_kb={growth} rss_after_kb={after['VmRSS']} new_files={len(created)}"
    )
    if len(created) != 1:
        print(f"maildir/new: expected 1 new file, found {len(created)}")
        return False
    path = maildir / "new" / created[0]
    data_size, data_hash, lines = expected_body(message)
    stored = path.read_bytes()
    start = stored.find(b"\nFrom: <sender@bench-client.local>\n")
    added = start + 1 if start >= 0 else -1
    body_ok = start >= 0 and hashlib.sha256(stored[added:]).hexdigest() == data_hash
    print(
        f"maildir/new/{created[0]}: {len(stored)} bytes ({len(stored) / 2**20:.2f} MiB);"
        f" expected {data_size} bytes of message ({lines} lines, LF ends) + {added} bytes of added headers;"
        f" content {'identical' if body_ok else 'DIFFERENT'}"
    )
    del stored
    return ok and body_ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mib", type=float, default=50.0, help="message size in MiB (default 50)")
    p.add_argument("--interval", type=float, default=0.05, help="RSS sampling interval, seconds")
    p.add_argument("--limit-mib", type=float, default=16.0)
    p.add_argument("--port", type=int, help="use a running tlsmta on 127.0.0.1:PORT (needs --pid, --maildir)")
    p.add_argument("--pid", type=int)
    p.add_argument("--maildir", type=Path)
    args = p.parse_args()
    total = int(args.mib * 2**20)
    print(f"tlsmta-bench big message: one {total}-byte message, lines of {LINE_BODY} chars + CRLF, plain SMTP")

    if args.port:
        if not (args.pid and args.maildir):
            p.error("--port needs --pid and --maildir")
        return 0 if run(args.port, args.pid, args.maildir, total, args.interval, args.limit_mib) else 1

    with TlsmtaProcess(listener_extra={"max_message_size": 104857600}) as mta:
        print(f"tlsmta pid {mta.pid} on 127.0.0.1:{mta.port}")
        try:
            ok = run(mta.port, mta.pid, mta.maildir, total, args.interval, args.limit_mib)
        except Exception as e:
            print(f"FAILED: {e!r}")
            print("--- tlsmta log (last 20 lines):")
            print("\n".join(mta.log_text().splitlines()[-20:]))
            return 1
        bad = mta.suspicious_log_lines()
        print(f"suspicious tlsmta log lines: {len(bad)}")
        for line in bad[:20]:
            print("  " + line)
        return 0 if ok and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
