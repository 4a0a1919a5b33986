"""Disk work off the reactor thread, and group commit of directory fsyncs.

File fsyncs run concurrently in a few worker threads (the filesystem's
journal merges concurrent commits).  A directory fsync that makes renames
durable is shared: while one runs, new requests wait and then share the
next one, so N messages finishing together cost one directory flush.  The
sharing happens among the disk threads themselves, so a message's files
and its directory are made durable in one job, with no trip through the
reactor between them (under load that trip was a reactor iteration on
every message's way to its 250).  Results come back in batches: the jobs
that finish while the reactor is busy are handed over with one wake-up.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure

from tlsmta.storage._spares import SpareFiles

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
        self._dir_syncs: dict[str, DirectorySync] = {}  # added to by disk threads
        # finished jobs not yet handed to the reactor, and whether a hand-over is on its way
        self._done_lock = threading.Lock()
        self._done: list[tuple[Callable[[Any], Any], Any]] = []
        self._handover_pending = False
        self.spares = SpareFiles()  # unnamed files made ahead for Maildir deliveries, by their own thread
        # ``[spool] commit = "syncfs"``: storage.groupcommit's commit(targets, last), which received
        # messages use instead of a disk job of their own to be made durable; with it the reactor
        # thread does the spool's quick file work itself too (run_quick)
        self.group_commit: Callable[[Sequence[Any], bytes], Deferred[None]] | None = None

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
        self.spares.stop()

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

    def run_quick(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        """``fn(*args)``, work of a few renames or unlinks and no fsync (a delivered message's
        removal, ``Spool.remove``): on the reactor thread with a ``group_commit`` (``[spool] commit =
        "syncfs"``, where the reactor does received messages' file work too), else a disk job.

        Inline because a disk job's hand-over to a thread and back costs more than such work,
        and was a relayed message's last one (bench/profile-issue13.md, ninth round).
        """
        if self.group_commit is not None:
            return maybeDeferred(fn, *args)
        return self.run(fn, *args)

    def sync_directory_blocking(self, path: str) -> None:
        """In a disk thread: fsync ``path``, sharing the flush with concurrent callers."""
        syncer = self._dir_syncs.get(path)
        if syncer is None:
            syncer = self._dir_syncs.setdefault(path, DirectorySync(path))
        syncer.sync()


def fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirectorySync:
    """Group commit for one directory's fsync, among threads.

    A caller needs a flush that starts after it asked (its renames are done
    by then).  Flushes run one at a time, each by one of the callers
    waiting for it; whoever asks while one runs waits for the next, which
    covers everyone who asked meanwhile.
    """

    def __init__(self, path: str):
        self.path = path
        self._changed = threading.Condition()
        self._started = 0  # flushes started so far (the running one included)
        self._completed = 0  # the last flush finished
        self._running = False
        self._failures: dict[int, BaseException] = {}  # flush number -> its error (rare; kept small)
        self.flushes = 0  # how many fsyncs actually ran; for tests and benchmarks

    def sync(self) -> None:
        with self._changed:
            needed = self._started + 1  # the next flush to start covers this caller
            while self._completed < needed:
                if self._running:
                    self._changed.wait()
                    continue
                self._running = True
                self._started += 1
                self.flushes += 1
                number = self._started
                self._changed.release()
                error: BaseException | None = None
                try:
                    fsync_directory(self.path)
                except BaseException as e:  # whatever ends this flush ends it for all it covers
                    error = e
                self._changed.acquire()
                if error is not None:
                    self._failures[number] = error
                    for old in [n for n in self._failures if n < number - 1000]:
                        del self._failures[old]
                self._running = False
                self._completed = number
                self._changed.notify_all()
            failure = self._failures.get(needed)
        if failure is not None:
            raise failure
