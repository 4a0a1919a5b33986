"""Lines appended to files by a disk thread, in the order they were handed over.

For best-effort logs (appended, not fsynced) that the reactor thread must
not write itself.  ``append`` only queues the line; one disk-thread task
writes everything pending at once.  Writing holds a lock, so two disk
threads never append at the same time and the batches land in the order
they were taken.  A task queued before ``DiskIO.stop`` runs before the
threads end, so a clean stop loses nothing handed over before it.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

log = Logger(namespace="tlsmta.appender")

Run = Callable[..., Deferred[Any]]  # DiskIO.run


class LineAppender:
    """Ordered appends of text lines to files, written by ``run``'s thread."""

    def __init__(self, run: Run | None = None):
        """``run``: how to reach the disk thread (``DiskIO.run``); None writes in the caller's
        thread at once (command-line tools, tests)."""
        self._run = run
        self._pending: list[tuple[str, str]] = []
        self._pending_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._scheduled = False  # a write_pending task is queued and has not taken its batch yet

    def append(self, path: str, line: str) -> None:
        """Have ``line`` (newline included) appended to ``path``, after every line handed over before."""
        with self._pending_lock:
            self._pending.append((path, line))
            queue_task = not self._scheduled
            self._scheduled = True
        if self._run is None:
            self.write_pending()
        elif queue_task:
            self._run(self.write_pending).addErrback(
                lambda f: log.failure("appending lines failed; they are lost (best effort)", f)
            )

    def write_pending(self) -> None:
        """Write every line handed over so far, in this thread (a reader calls it before reading)."""
        with self._write_lock:
            with self._pending_lock:
                batch, self._pending = self._pending, []
                self._scheduled = False
            for path, lines in itertools.groupby(batch, key=lambda item: item[0]):
                with open(path, "a", encoding="utf-8") as f:
                    f.writelines(line for _, line in lines)
