"""Sum up py-spy's raw (folded) stacks of a tlsmta run: where the time went.

    python3 bench/lib/profile_summary.py PROFILE.txt [...] --messages N [--rate 250]

Reads `py-spy record --format raw --threads --idle` output (one line per
distinct stack: "thread (0x..);frame;frame ... COUNT", frames as
"function (file:line)") and prints, per thread (the reactor thread and the
others, e.g. the disk thread), the samples by group of the innermost frame
(waiting in epoll or on a lock, fsync, TLS in pyOpenSSL, socket syscalls,
else the innermost tlsmta module, else the innermost Twisted module), then
the tlsmta and Twisted functions with the most inclusive samples.  With
--messages, every figure is also milliseconds per message (samples / rate
/ messages).  Stdlib only.
"""

from __future__ import annotations

import argparse
import collections
import re

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

WAIT_FUNCS = {("epollreactor.py", "doPoll"), ("threading.py", "wait"), ("queue.py", "get"), ("diskio.py", "_work")}
# C calls have no frame of their own (no --native): the Python caller is the leaf
SYSCALL_WRAPPERS = {("util.py", "untilConcludes"), ("tcp.py", "doRead"), ("tcp.py", "writeSomeData")}
SOCKET_FUNCS = {"send", "recv", "sendmsg", "recv_into", "accept", "connect", "connect_ex", "close", "shutdown"}


def parse_frame(text: str) -> tuple[str, str]:
    m = FRAME.match(text.strip())
    if not m:
        return text.strip(), ""
    return m.group("func"), m.group("file")


def module_of(path: str) -> str:
    """tlsmta/storage/_spool.py -> tlsmta.storage.spool; twisted/mail/smtp.py -> twisted.mail.smtp."""
    for root in ("tlsmta/", "twisted/", "OpenSSL/", "cryptography/", "service_identity/"):
        at = path.rfind(root)
        if at >= 0:
            rel = path[at:].removesuffix(".py").replace("/__init__", "")
            return ".".join(part.lstrip("_") for part in rel.split("/"))
    return path.rsplit("/", 1)[-1].removesuffix(".py")


def group_of(frames: list[tuple[str, str]]) -> str:
    func, path = frames[-1]
    func = func.rsplit(".", 1)[-1]  # py-spy names methods Class.method
    name = path.rsplit("/", 1)[-1].lstrip("_")
    if (name, func) in WAIT_FUNCS or func in ("select", "poll", "epoll_wait"):
        return "waiting (epoll / lock)"
    if func in ("fsync", "fdatasync"):
        return "fsync (kernel, disk)"
    if func in SOCKET_FUNCS or (name, func) in SYSCALL_WRAPPERS:
        return "socket syscalls (send/recv, incl. loopback TCP in the kernel)"
    for func_i, path_i in reversed(frames):
        mod = module_of(path_i)
        if mod.startswith(("OpenSSL", "cryptography", "service_identity")):
            return "TLS (pyOpenSSL, cryptography, service_identity)"
        if mod.startswith("tlsmta."):
            return mod
    for func_i, path_i in reversed(frames):
        mod = module_of(path_i)
        if mod.startswith("twisted."):
            return ".".join(mod.split(".")[:3])
    return "other: " + module_of(path)


def read(paths: list[str]) -> dict[str, list[tuple[list[tuple[str, str]], int]]]:
    threads: dict[str, list[tuple[list[tuple[str, str]], int]]] = collections.defaultdict(list)
    for path in paths:
        with open(path) as f:
            for line in f:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                if not stack or not count.isdigit():
                    continue
                parts = stack.split(";")
                thread, frames = parts[0], [parse_frame(p) for p in parts[1:]]
                if frames:
                    threads[thread.split(" ")[0] if "MainThread" not in thread else "MainThread"].append((frames, int(count)))
    return threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profiles", nargs="+")
    ap.add_argument("--messages", type=int, default=0)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()

    def fmt(n: int, total: int) -> str:
        ms = f"  {n / args.rate / args.messages * 1000:7.3f} ms/msg" if args.messages else ""
        return f"{n:7d} {100 * n / total:5.1f}%{ms}"

    threads = read(args.profiles)
    # the reactor thread first, then the others by size
    order = sorted(threads, key=lambda t: (t != "MainThread", -sum(c for _, c in threads[t])))
    for thread in order:
        stacks = threads[thread]
        total = sum(c for _, c in stacks)
        groups: collections.Counter[str] = collections.Counter()
        inclusive: collections.Counter[str] = collections.Counter()
        for frames, count in stacks:
            groups[group_of(frames)] += count
            seen = set()
            for func, path in frames:
                mod = module_of(path)
                if mod.startswith(("tlsmta.", "twisted.")):
                    key = f"{mod}.{func}"
                    if key not in seen:
                        seen.add(key)
                        inclusive[key] += count
        print(f"== thread {thread}: {total} samples ({total / args.rate:.1f} s)")
        print("-- by group of the innermost frame (self time)")
        for name, n in groups.most_common():
            print(f"  {fmt(n, total)}  {name}")
        print(f"-- top {args.top} tlsmta/Twisted functions, inclusive")
        for name, n in inclusive.most_common(args.top):
            print(f"  {fmt(n, total)}  {name}")
        print()


if __name__ == "__main__":
    main()
