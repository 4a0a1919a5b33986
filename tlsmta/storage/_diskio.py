"""Disk work off the reactor thread, and group commit of directory fsyncs.

File fsyncs run concurrently in a few worker threads (the filesystem's
journal merges concurrent commits).  A directory fsync that makes renames
durable is shared: while one runs, new requests wait and then share the
next one, so N messages finishing together cost one directory flush.
Results come back in batches: the jobs that finish while the reactor is
busy are handed over with one wake-up.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure

T = TypeVar("T")
log = Logger()


class DiskIO:
    """Worker threads for blocking file work.

    A plain queue and ``callFromThread``: Twisted's ThreadPool costs about
    twice the CPU per task (measured: ~50 vs ~22 µs), and every message
    makes at least one trip.  Threads start on first use.
    """

    def __init__(self, reactor: IReactorFromThreads, threads: int = 8):
        self.reactor = reactor
        self.size = threads
        self._tasks: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._dir_syncs: dict[str, DirectorySync] = {}
        # finished jobs not yet handed to the reactor, and whether a hand-over is on its way
        self._done_lock = threading.Lock()
        self._done: list[tuple[Callable[[Any], Any], Any]] = []
        self._handover_pending = False

    def start(self) -> None:
        while len(self._threads) < self.size:
            thread = threading.Thread(target=self._work, name=f"tlsmta-disk-{len(self._threads)}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Let queued work finish, then end the threads."""
        threads, self._threads = self._threads, []
        for _ in threads:
            self._tasks.put(None)
        for thread in threads:
            thread.join()

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            fn, args, d = task
            try:
                outcome: tuple[Callable[[Any], Any], Any] = (d.callback, fn(*args))
            except BaseException:
                outcome = (d.errback, Failure())
            with self._done_lock:
                self._done.append(outcome)
                if self._handover_pending:
                    continue  # the hand-over already asked for takes this one too
                self._handover_pending = True
            self.reactor.callFromThread(self._hand_over)

    def _hand_over(self) -> None:
        """In the reactor: fire the Deferreds of every job finished so far."""
        with self._done_lock:
            done, self._done = self._done, []
            self._handover_pending = False
        for fire, value in done:
            try:
                fire(value)
            except Exception:  # as Twisted does for a failing callFromThread: log it, go on
                log.failure("firing a disk job's result failed")

    def run(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run ``fn(*args)`` in a disk thread; the Deferred fires in the reactor."""
        if not self._threads:
            self.start()
        d: Deferred[T] = Deferred()
        self._tasks.put((fn, args, d))
        return d

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
