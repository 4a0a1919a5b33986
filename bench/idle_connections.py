#!/usr/bin/env python3
"""RSS of tlsmta holding 10,000 idle SMTP sessions (target: < 400 MB).

Starts its own tlsmta (plain listener with STARTTLS offered, Maildir route,
max_connections = 20000, open-files limit raised) on a free 127.0.0.1
port, or uses a running one given --port and --pid.  Opens N connections,
reads each 220 banner, then lets them sit idle and reads VmRSS from
/proc/PID/status; then sends NOOP on every session to prove they are all
still served, closes them all, checks a fresh session still works, and
stops tlsmta (by its PID) if it started it.

    python3 bench/idle_connections.py            # 10,000 connections
    python3 bench/idle_connections.py -n 2000
    python3 bench/idle_connections.py --port 2525 --pid 1234   # attach
    python3 bench/idle_connections.py -n 2000 --starttls       # idle TLS sessions

--starttls: after its banner every session sends EHLO, STARTTLS, does
the TLS handshake (TLS 1.2+, certificate not checked: the RSS of the
server is what is measured; tlsmta serves its tls_certificate = "auto"
ECDSA P-256 certificate) and EHLO again, --tls-parallel sessions at a
time, and then sits idle inside TLS; the NOOP round is done over TLS.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import ssl
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))

from tlsmta_proc import TlsmtaProcess, mib, open_fds, proc_status, raise_own_nofile  # noqa: E402

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


class Failed(Exception):
    pass


def listen_overflows() -> int:
    """TcpExt ListenOverflows: SYNs/ACKs dropped because an accept queue was full."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for keys, values in zip(lines[::2], lines[1::2]):
        if keys.startswith("TcpExt:"):
            table = dict(zip(keys.split()[1:], values.split()[1:]))
            return int(table.get("ListenOverflows", 0))
    return 0


class Pending:
    __slots__ = ("buf", "since")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.since = time.monotonic()


def open_sessions(
    port: int, n: int, sources: list[str], window: int, deadline: float, banner_timeout: float, stats: dict[str, int]
) -> list[socket.socket]:
    """n connections, each past its 220 banner; at most ``window`` handshakes in flight.

    A connection without a banner after ``banner_timeout`` seconds is closed
    and replaced (counted in stats["stuck"]): when the server's accept queue
    overflows, a client can end up ESTABLISHED on its side while the server
    never accepted it, and an idle client would wait forever.
    """
    sel = selectors.DefaultSelector()
    done: list[socket.socket] = []
    pending = 0
    started = 0
    last_sweep = time.monotonic()
    try:
        while len(done) < n:
            while len(done) + pending < n and pending < window:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                # several loopback source addresses, with the port chosen at
                # connect() time, so 10,000+ sessions never run out of ports
                s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                s.bind((sources[started % len(sources)], 0))
                s.connect_ex(("127.0.0.1", port))
                sel.register(s, selectors.EVENT_READ, Pending())
                started += 1
                pending += 1
            now = time.monotonic()
            if now > deadline:
                raise Failed(f"timed out with {len(done)} sessions open, {pending} pending")
            if now - last_sweep > 1.0:
                last_sweep = now
                for key in list(sel.get_map().values()):
                    if now - key.data.since > banner_timeout:
                        sel.unregister(key.fileobj)
                        key.fileobj.close()
                        pending -= 1
                        stats["stuck"] += 1
            for key, _ in sel.select(timeout=0.5):
                s, buf = key.fileobj, key.data.buf
                try:
                    chunk = s.recv(4096)
                except BlockingIOError:
                    continue
                except OSError as e:
                    raise Failed(f"connection {len(done) + pending} failed: {e}") from None
                if not chunk:
                    raise Failed(f"server closed a connection before its banner ({len(done)} open)")
                buf += chunk
                if b"\r\n" not in buf:
                    continue
                if not buf.startswith(b"220 "):
                    raise Failed(f"banner of session {len(done) + 1}: {bytes(buf).strip()!r}")
                sel.unregister(s)
                pending -= 1
                done.append(s)
        return done
    except BaseException:
        for key in list(sel.get_map().values()):
            key.fileobj.close()
        for s in done:
            s.close()
        raise
    finally:
        sel.close()


def noop_all(sessions: list[socket.socket], deadline: float) -> int:
    """NOOP on every session; the number that answered 250."""
    sel = selectors.DefaultSelector()
    for s in sessions:
        s.send(b"NOOP\r\n")
        sel.register(s, selectors.EVENT_READ, bytearray())
    ok = 0
    waiting = len(sessions)
    try:
        while waiting and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1.0):
                s, buf = key.fileobj, key.data
                try:
                    chunk = s.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                buf += chunk
                if chunk and b"\r\n" not in buf:
                    continue
                sel.unregister(s)
                waiting -= 1
                if buf.startswith(b"250"):
                    ok += 1
    finally:
        sel.close()
    return ok


def _read_reply(sock: socket.socket, buf: bytearray) -> bytes:
    """One whole (multi-line) reply from a blocking socket; extra bytes stay in buf."""
    while True:
        start = 0
        while True:
            end = buf.find(b"\r\n", start)
            if end < 0:
                break
            line = bytes(buf[start:end])
            start = end + 2
            if len(line) < 4 or line[3:4] != b"-":
                reply = bytes(buf[:start])
                del buf[:start]
                return reply
        chunk = sock.recv(4096)
        if not chunk:
            raise Failed("server closed the connection")
        buf += chunk


def starttls_one(s: socket.socket, ctx: ssl.SSLContext, timeout: float) -> ssl.SSLSocket:
    """EHLO, STARTTLS, handshake, EHLO on a session past its banner; the TLS socket."""
    s.setblocking(True)
    s.settimeout(timeout)
    buf = bytearray()
    s.sendall(b"EHLO idle.bench\r\n")
    reply = _read_reply(s, buf)
    if not reply.startswith(b"250") or b"STARTTLS" not in reply.upper():
        raise Failed(f"EHLO: {reply[:200]!r}")
    s.sendall(b"STARTTLS\r\n")
    reply = _read_reply(s, buf)
    if not reply.startswith(b"220") or buf:
        raise Failed(f"STARTTLS: {reply[:200]!r} (+{len(buf)} bytes)")
    t = ctx.wrap_socket(s)  # takes the fd over (s is detached)
    buf = bytearray()
    t.sendall(b"EHLO idle.bench\r\n")
    reply = _read_reply(t, buf)
    if not reply.startswith(b"250"):
        raise Failed(f"EHLO in TLS: {reply[:200]!r}")
    return t


def starttls_all(sessions: list[socket.socket], parallel: int, timeout: float) -> tuple[list[ssl.SSLSocket], float, str]:
    """Every session upgraded with STARTTLS (``parallel`` at a time); the TLS sockets, seconds, protocol."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    t0 = time.monotonic()
    out: list[ssl.SSLSocket] = []
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = [pool.submit(starttls_one, s, ctx, timeout) for s in sessions]
        errors = []
        for f in futures:
            try:
                out.append(f.result())
            except Exception as e:  # noqa: BLE001 -- collected and reported
                errors.append(e)
    if errors:
        for t in out:
            t.close()
        raise Failed(f"STARTTLS failed on {len(errors)} of {len(sessions)} sessions; first: {errors[0]!r}")
    return out, time.monotonic() - t0, (out[0].version() or "?") if out else "-"


def noop_all_tls(sessions: list[ssl.SSLSocket], parallel: int) -> int:
    """NOOP on every TLS session (blocking, ``parallel`` at a time); the number that answered 250."""

    def one(t: ssl.SSLSocket) -> bool:
        try:
            t.sendall(b"NOOP\r\n")
            return _read_reply(t, bytearray()).startswith(b"250")
        except (OSError, Failed):
            return False

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return sum(pool.map(one, sessions))


def fresh_session_works(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            f = s.makefile("rb")
            if not f.readline().startswith(b"220 "):
                return False
            s.sendall(b"QUIT\r\n")
            return f.readline().startswith(b"221")
    except OSError:
        return False


def measure(
    port: int,
    pid: int,
    n: int,
    sources: list[str],
    settle: float,
    window: int,
    timeout: float,
    banner_timeout: float,
    tls_parallel: int = 0,
) -> dict[str, object]:
    """``tls_parallel`` > 0: upgrade every session with STARTTLS (that many at a time) before idling."""
    before = proc_status(pid)
    fds_before = open_fds(pid)
    overflows_before = listen_overflows()
    stats = {"stuck": 0}
    t0 = time.monotonic()
    sessions: list[socket.socket] = open_sessions(port, n, sources, window, time.monotonic() + timeout, banner_timeout, stats)
    t_open = time.monotonic() - t0
    overflows = listen_overflows() - overflows_before
    t_tls, tls_version = 0.0, ""
    try:
        if tls_parallel:
            plain = sessions
            sessions = []
            try:
                sessions, t_tls, tls_version = starttls_all(plain, tls_parallel, banner_timeout)  # type: ignore[assignment]
            finally:
                if not sessions:
                    for s in plain:
                        s.close()
        time.sleep(settle)  # idle: nothing sent, let the server settle
        idle = proc_status(pid)
        fds_idle = open_fds(pid)
        if tls_parallel:
            answered = noop_all_tls(sessions, tls_parallel)  # type: ignore[arg-type]
        else:
            answered = noop_all(sessions, time.monotonic() + timeout)
        after_noop = proc_status(pid)
    finally:
        for s in sessions:
            s.close()
    time.sleep(settle)
    closed = proc_status(pid)
    return {
        "before": before,
        "idle": idle,
        "after_noop": after_noop,
        "closed": closed,
        "fds_before": fds_before,
        "fds_idle": fds_idle,
        "open_seconds": t_open,
        "tls_seconds": t_tls,
        "tls_version": tls_version,
        "answered": answered,
        "fresh": fresh_session_works(port),
        "stuck": stats["stuck"],
        "overflows": overflows,
    }


def report(n: int, r: dict[str, object], limit_mb: float) -> bool:
    before, idle, noop, closed = (r[k] for k in ("before", "idle", "after_noop", "closed"))
    assert isinstance(before, dict) and isinstance(idle, dict) and isinstance(noop, dict) and isinstance(closed, dict)
    growth = idle["VmRSS"] - before["VmRSS"]
    print(f"opened {n} sessions (banner read) in {r['open_seconds']:.1f} s; tlsmta fds {r['fds_before']} -> {r['fds_idle']}")
    tls = bool(r["tls_version"])
    if tls:
        print(f"STARTTLS + EHLO on all {n} sessions in {r['tls_seconds']:.1f} s ({r['tls_version']}); they idle inside TLS")
    print(
        f"listen queue overflows (TcpExt ListenOverflows, whole machine) while connecting: {r['overflows']};"
        f" connections without a banner after the banner timeout, replaced: {r['stuck']}"
    )
    print(f"tlsmta RSS before:            {mib(before['VmRSS'])}")
    print(f"tlsmta RSS with {n} idle{' TLS' if tls else ''}:  {mib(idle['VmRSS'])}  (+{mib(growth)}, {growth / n:.1f} kB per session)")
    print(f"tlsmta RSS after NOOP on all: {mib(noop['VmRSS'])}  ({r['answered']}/{n} answered 250)")
    print(f"tlsmta RSS after closing all: {mib(closed['VmRSS'])}  (peak VmHWM {mib(closed['VmHWM'])})")
    print(f"fresh session after the test: {'ok' if r['fresh'] else 'FAILED'}")
    ok = idle["VmRSS"] / 1024 < limit_mb and r["answered"] == n and bool(r["fresh"])
    # one machine-readable line (bench/compare.sh reads it)
    print(
        f"RESULT idle sessions={n} tls={r['tls_version'] or 'no'} rss_before_kb={before['VmRSS']} rss_idle_kb={idle['VmRSS']}"
        f" rss_closed_kb={closed['VmRSS']} hwm_kb={closed['VmHWM']} answered={r['answered']} fresh={'ok' if r['fresh'] else 'failed'}"
        f" stuck={r['stuck']} overflows={r['overflows']}"
    )
    print(f"target RSS < {limit_mb:.0f} MB with {n} idle sessions: {'met' if idle['VmRSS'] / 1024 < limit_mb else 'NOT met'}")
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--connections", type=int, default=10_000)
    p.add_argument("--port", type=int, help="use a running tlsmta on 127.0.0.1:PORT (needs --pid)")
    p.add_argument("--pid", type=int, help="PID of that tlsmta (for its RSS)")
    p.add_argument("--sources", type=int, default=4, help="loopback source addresses 127.0.0.2.. to spread over")
    p.add_argument("--window", type=int, default=200, help="connection attempts in flight at once")
    p.add_argument("--settle", type=float, default=2.0, help="seconds to stay idle before measuring")
    p.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds per phase")
    p.add_argument("--banner-timeout", type=float, default=15.0, help="replace a connection with no banner after this")
    p.add_argument("--limit-mb", type=float, default=400.0)
    p.add_argument("--backlog", type=int, help="append :backlog=N to the listener endpoint (Twisted's default is 50)")
    p.add_argument("--starttls", action="store_true", help="idle inside TLS: EHLO, STARTTLS, handshake, EHLO on every session")
    p.add_argument("--tls-parallel", type=int, default=20, help="STARTTLS handshakes in flight at once (--starttls)")
    args = p.parse_args()

    soft = raise_own_nofile(max(65536, args.connections + 1000))
    if soft < args.connections + 100:
        print(f"open-files limit {soft} is too low for {args.connections} connections", file=sys.stderr)
        return 2
    sources = [f"127.0.0.{i}" for i in range(2, 2 + max(1, args.sources))]
    print(
        f"tlsmta-bench idle connections: {args.connections} sessions from {', '.join(sources)}"
        f"{', each after STARTTLS + EHLO' if args.starttls else ''}"
    )
    tls_parallel = max(1, args.tls_parallel) if args.starttls else 0

    if args.port:
        if not args.pid:
            p.error("--port needs --pid")
        r = measure(args.port, args.pid, args.connections, sources, args.settle, args.window, args.timeout, args.banner_timeout,
                    tls_parallel)
        return 0 if report(args.connections, r, args.limit_mb) else 1

    endpoint_options = f"backlog={args.backlog}" if args.backlog else ""
    with TlsmtaProcess(listener_extra={"idle_timeout": 3600}, endpoint_options=endpoint_options) as mta:
        soft_mta = open(f"/proc/{mta.pid}/limits").read()
        nofile = next(line for line in soft_mta.splitlines() if line.startswith("Max open files"))
        print(f"tlsmta pid {mta.pid} on 127.0.0.1:{mta.port} {endpoint_options}; {' '.join(nofile.split())}")
        try:
            r = measure(mta.port, mta.pid, args.connections, sources, args.settle, args.window, args.timeout, args.banner_timeout,
                        tls_parallel)
        except Failed as e:
            print(f"FAILED: {e}")
            print("--- tlsmta log (last 20 lines):")
            print("\n".join(mta.log_text().splitlines()[-20:]))
            return 1
        ok = report(args.connections, r, args.limit_mb)
        bad = mta.suspicious_log_lines()
        print(f"suspicious tlsmta log lines: {len(bad)}")
        for line in bad[:20]:
            print("  " + line)
        return 0 if ok and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
