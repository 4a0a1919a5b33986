"""The reactor thread's cost of a disk job: DiskIO.run out to a worker and its result back.

    .venv/bin/python bench/disk_jobs_micro.py [JOBS] [--parallel N] [--fsync]

A real epoll reactor and a DiskIO with its 8 threads; JOBS jobs, at most
N (default 20, like 20 sessions) in flight, each an ``os.stat`` of the
temp dir (``--fsync``: write 4 KB to its own file and fsync it, the shape
of a message commit).  Prints the reactor thread's CPU per job (what the
hand-out and the hand-back cost it), the whole process's CPU per job and
the wall time; compare two checkouts by running each one's copy.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twisted.internet import epollreactor  # noqa: E402

epollreactor.install()
from twisted.internet import reactor  # noqa: E402

from tlsmta.storage._diskio import DiskIO  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("jobs", type=int, nargs="?", default=20000)
    ap.add_argument("--parallel", type=int, default=20)
    ap.add_argument("--fsync", action="store_true")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="tlsmta-bench-disk.")
    disk = DiskIO(reactor)
    state = {"started": 0, "done": 0}

    def job(n: int) -> None:
        if not args.fsync:
            os.stat(tmp)
            return
        path = os.path.join(tmp, f"{n}.eml")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(path)

    def start_one() -> None:
        n = state["started"]
        state["started"] += 1
        disk.run(job, n).addCallback(finished)

    def finished(_: object) -> None:
        state["done"] += 1
        if state["started"] < args.jobs:
            start_one()
        elif state["done"] == args.jobs:
            reactor.stop()

    times: dict[str, float] = {}

    def go() -> None:
        times["thread0"], times["process0"], times["wall0"] = time.thread_time(), time.process_time(), time.monotonic()
        for _ in range(min(args.parallel, args.jobs)):
            start_one()

    disk.start()
    reactor.callWhenRunning(go)
    reactor.run()
    thread, process, wall = time.thread_time(), time.process_time(), time.monotonic()
    disk.stop()
    os.rmdir(tmp)
    per = 1e6 / args.jobs
    print(f"RESULT disk_jobs jobs={args.jobs} parallel={args.parallel} fsync={int(args.fsync)}"
          f" reactor_us_per_job={(thread - times['thread0']) * per:.1f}"
          f" process_us_per_job={(process - times['process0']) * per:.1f}"
          f" wall_us_per_job={(wall - times['wall0']) * per:.1f}")


if __name__ == "__main__":
    main()
