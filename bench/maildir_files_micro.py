"""What putting a message file into a Maildir costs, three ways, with concurrent writers.

    .venv/bin/python bench/maildir_files_micro.py [--files 4000] [--threads 8] [--dir DIR]

Each of THREADS threads (the disk pool has 8) writes its share of FILES files of 4 KB into one
Maildir under DIR (default: a temp dir on /tmp's filesystem, which is what bench/inbound.sh
uses), each file made durable and put into new/ (no directory fsync: the same for all three):

  named      a file created in tmp/, written, fsynced, renamed into new/ (tlsmta before the
             fourth round of issue 13; Postfix's local and Dovecot do the same)
  unnamed    storage.filewriter.NewFile: O_TMPFILE, written, fsynced, linked, fsynced
  made ahead the same, with every file made beforehand (storage.spares makes them in one
             thread ahead of need); the time to make them is printed apart

Prints files/s and p50/p99 per file for each, twice over (the filesystem's state after the
first pass's deletes is part of what it measures). Compare on the same machine only.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tlsmta.storage._filewriter import NewFile, TempFile  # noqa: E402
from tlsmta.storage._spares import open_unnamed  # noqa: E402

DATA = b"x" * 4096


def fresh_maildir(base: str) -> str:
    shutil.rmtree(base, ignore_errors=True)
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(base, sub))
    return base


def named(box: str, i: int, spare: int | None) -> None:
    target = TempFile(os.path.join(box, "tmp", f"m{i}"))
    target.append(DATA)
    target.sync_and_close()
    os.rename(target.path, os.path.join(box, "new", f"m{i}"))


def unnamed(box: str, i: int, spare: int | None) -> None:
    target = NewFile(os.path.join(box, "new", f"m{i}"), os.path.join(box, "tmp"), take_spare=lambda d: spare)
    target.append(DATA)
    target.publish()


def run(box: str, files: int, threads: int, put: Callable[[str, int, int | None], None],
        spares: list[int] | None) -> tuple[float, list[float]]:
    latencies: list[float] = []

    def worker(k: int) -> None:
        mine = []
        for i in range(k, files, threads):
            start = time.perf_counter()
            put(box, i, spares[i] if spares else None)
            mine.append(time.perf_counter() - start)
        latencies.extend(mine)

    started = time.perf_counter()
    workers = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - started, sorted(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--dir", default=None, help="where to make the Maildir (default: a temp dir)")
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="tlsmta-maildir-micro.", dir=args.dir)
    box = os.path.join(base, "box")
    try:
        for _ in range(2):
            for name, put, ahead in (("named", named, False), ("unnamed", unnamed, False),
                                     ("made ahead", unnamed, True)):
                fresh_maildir(box)
                spares = None
                note = ""
                if ahead:
                    start = time.perf_counter()
                    spares = [open_unnamed(os.path.join(box, "tmp")) for _ in range(args.files)]
                    note = f"  (making them, one thread: {(time.perf_counter() - start) / args.files * 1e3:.3f} ms each)"
                elapsed, lat = run(box, args.files, args.threads, put, spares)
                p50, p99 = lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.99)] * 1e3
                print(f"{name:11s} {args.files / elapsed:8.0f} files/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms{note}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
