"""Unnamed files made ahead of need in a Maildir's tmp/ (one background thread).

A Maildir message is written into an unnamed file (O_TMPFILE) and linked
into new/ once fsynced (``filewriter.NewFile``). Making that file is the
dearest step of a local delivery: the filesystem allocates an inode, and
on ext4 without a journal it scans past every inode freed in the last
minute to find one (0.3-0.5 ms a file in one thread here,
bench/maildir_files_micro.py; three times the CPU per disk job when eight
disk threads allocate at once, spinning on the same block group:
bench/profile-issue13.md). So one thread makes them ahead, one at a time, and
a message takes one that is ready: its disk job is left with write, fsync,
link, fsync.

Demand decides how many: each file taken (or asked for when none was
ready) orders one replacement, up to ``per_directory`` kept for one
Maildir, and at most ``total`` open across all of them (the least recently
used Maildir's are closed first). A Maildir used once costs one spare; a
busy one keeps enough for its bursts. An unnamed file holds nothing and has
no name: closing it, or the process dying, frees it with no trace.
"""

from __future__ import annotations

import errno
import functools
import os
import threading
from collections import OrderedDict, deque

# What open(O_TMPFILE) fails with where the filesystem (NFS, FUSE) or the kernel (before 3.11,
# which reads the flag as O_DIRECTORY) has no unnamed files.
NO_UNNAMED_FILES = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL})


@functools.lru_cache(maxsize=1)
def can_link_descriptors() -> bool:
    """Whether an unnamed file can be given a name: linkat() through /proc/self/fd (the
    unprivileged way, open(2)); a container without /proc has no such path."""
    return os.path.isdir("/proc/self/fd")


def open_unnamed(directory: str) -> int:
    """A new, empty, unnamed file on ``directory``'s filesystem, mode 0600, open for writing
    (OSError with an errno in NO_UNNAMED_FILES where there are none)."""
    return os.open(directory, os.O_WRONLY | os.O_TMPFILE, 0o600)


class SpareFiles:
    """Unnamed files ready to be taken, per directory; thread-safe."""

    def __init__(self, per_directory: int = 16, total: int = 256):
        self.per_directory = per_directory
        self.total = total
        self._lock = threading.Lock()
        self._wanted = threading.Condition(self._lock)
        # least recently used first; a directory is here only while it has spares
        self._ready: OrderedDict[str, deque[int]] = OrderedDict()
        self._orders: deque[str] = deque()  # one entry per spare to make
        self._ordered: dict[str, int] = {}
        self._count = 0  # open spares, all directories
        self.unsupported: set[str] = set()  # directories whose filesystem has no unnamed files
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.made = 0  # for tests and benchmarks: spares made, and attempts that failed
        self.failed = 0

    def ready(self, directory: str) -> int:
        with self._lock:
            return len(self._ready.get(directory, ()))

    def take(self, directory: str) -> int | None:
        """A spare for ``directory`` if one is ready (None otherwise: make one inline), and the
        order for its replacement."""
        with self._lock:
            if directory in self.unsupported or self._stopping:  # (stopping: while stop() runs)
                return None
            ready = self._ready.get(directory)
            fd = None
            if ready:
                fd = ready.popleft()
                self._count -= 1
                if ready:
                    self._ready.move_to_end(directory)
                else:  # a Maildir used once is not remembered
                    del self._ready[directory]
            if len(ready or ()) + self._ordered.get(directory, 0) < self.per_directory:
                self._ordered[directory] = self._ordered.get(directory, 0) + 1
                self._orders.append(directory)
                self._wanted.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._make, name="tlsmta-spares", daemon=True)
                self._thread.start()
        return fd

    def stop(self) -> None:
        """End the thread and close every spare (they hold nothing)."""
        with self._lock:
            self._stopping = True
            self._wanted.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        with self._lock:
            for ready in self._ready.values():
                while ready:
                    os.close(ready.popleft())
            self._ready.clear()
            self._orders.clear()
            self._ordered.clear()
            self._count = 0
            self._thread = None
            self._stopping = False  # a later take starts again (DiskIO restarts its threads too)

    def _make(self) -> None:
        while True:
            with self._lock:
                while not self._orders and not self._stopping:
                    self._wanted.wait()
                if self._stopping:
                    return
                directory = self._orders.popleft()
            unsupported = False
            try:
                fd: int | None = open_unnamed(directory)
            except OSError as e:  # tmp/ not there (yet, or any more): the inline path reports it
                fd = None
                unsupported = e.errno in NO_UNNAMED_FILES
            with self._lock:
                self._ordered[directory] -= 1
                if not self._ordered[directory]:
                    del self._ordered[directory]
                if unsupported:
                    self.unsupported.add(directory)
                if fd is None:
                    self.failed += 1
                    continue
                self.made += 1
                self._ready.setdefault(directory, deque()).append(fd)
                self._ready.move_to_end(directory)
                self._count += 1
                self._close_beyond_total()

    def _close_beyond_total(self) -> None:
        """(Lock held.) The least recently used directories' spares, until at most ``total``."""
        while self._count > self.total:
            oldest = next(iter(self._ready))
            ready = self._ready[oldest]
            if not ready:
                del self._ready[oldest]
                continue
            os.close(ready.popleft())
            self._count -= 1
