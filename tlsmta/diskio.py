"""Disk work off the reactor thread, and group commit of directory fsyncs.

File fsyncs run concurrently in a small thread pool (the filesystem's
journal merges concurrent commits).  A directory fsync that makes renames
durable is shared: while one runs, new requests wait and then share the
next one, so N messages finishing together cost one directory flush.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


class DiskIO:
    """A dedicated thread pool for blocking file work."""

    def __init__(self, reactor: IReactorFromThreads, threads: int = 8):
        self.reactor = reactor
        self.pool = ThreadPool(minthreads=1, maxthreads=threads, name="tlsmta-disk")
        self._dir_syncs: dict[str, DirectorySync] = {}

    def start(self) -> None:
        if not self.pool.started:
            self.pool.start()

    def stop(self) -> None:
        if self.pool.started:
            self.pool.stop()

    def run(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run ``fn(*args)`` in the disk pool; the Deferred fires in the reactor."""
        self.start()
        return deferToThreadPool(self.reactor, self.pool, fn, *args)

    def sync_directory(self, path: str) -> Deferred[None]:
        """fsync ``path`` (a directory), sharing the flush with concurrent callers."""
        syncer = self._dir_syncs.get(path)
        if syncer is None:
            syncer = self._dir_syncs[path] = DirectorySync(path, self.run)
        return syncer.sync()


def fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirectorySync:
    """Group commit for one directory's fsync."""

    def __init__(self, path: str, run: Callable[..., Deferred[Any]]):
        self.path = path
        self._run = run
        self._waiting: list[Deferred[None]] = []
        self._running = False
        self.flushes = 0  # how many fsyncs actually ran; for tests and benchmarks

    def sync(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        if not self._running:
            self._start()
        return d

    def _start(self) -> None:
        batch, self._waiting = self._waiting, []
        self._running = True
        self.flushes += 1
        self._run(fsync_directory, self.path).addBoth(self._finished, batch)

    def _finished(self, result: Any, batch: list[Deferred[None]]) -> None:
        self._running = False
        if self._waiting:
            self._start()
        for d in batch:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)
