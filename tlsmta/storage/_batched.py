"""Small disk jobs that need not wait for each other, run many to one job.

Every disk job costs a trip to a disk thread and back: a wake-up each way
and a hand-over of the GIL, more than a rename takes.  Removing a finished
message is such a job, and nobody waits for it but the queue's own
bookkeeping.  So one job is queued for whatever is waiting when it starts:
what is submitted while it waits for a disk thread goes with it, and what
comes after it started queues the next.  Every item is in a queued disk
job from the moment it is submitted, so a stop of the disk threads (which
lets queued work finish) still does it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from tlsmta.storage._diskio import DiskIO

T = TypeVar("T")
log = Logger()


class Batched(Generic[T]):
    """``submit(item)`` runs ``each(item)`` in a disk thread, in one job with the items
    submitted before that job started; each item's Deferred gets its own outcome."""

    def __init__(self, disk: DiskIO, each: Callable[[T], object]):
        self._disk = disk
        self._each = each
        self._lock = threading.Lock()  # the waiting list is taken by a disk thread
        self._waiting: list[tuple[T, Deferred[None]]] = []
        self._queued = False  # a job that has not started yet will take what is waiting

    def submit(self, item: T) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        with self._lock:
            self._waiting.append((item, d))
            queue_one = not self._queued
            self._queued = True
        if queue_one:
            self._disk.run(self._run_waiting).addCallbacks(
                self._fire, lambda f: log.failure("a batch of disk jobs failed", f))
        return d

    def _run_waiting(self) -> list[tuple[Deferred[None], Failure | None]]:
        """In a disk thread: every item waiting now, whatever the others did."""
        with self._lock:
            batch, self._waiting = self._waiting, []
            self._queued = False
        outcomes: list[tuple[Deferred[None], Failure | None]] = []
        for item, d in batch:
            try:
                self._each(item)
                outcomes.append((d, None))
            except Exception:
                outcomes.append((d, Failure()))
        return outcomes

    def _fire(self, outcomes: list[tuple[Deferred[None], Failure | None]]) -> None:
        for d, failure in outcomes:
            if failure is None:
                d.callback(None)
            else:
                d.errback(failure)
