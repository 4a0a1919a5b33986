"""Small disk jobs that need not wait for each other, run many to one job.

Every disk job costs a trip to a disk thread and back: a wake-up each way
and a hand-over of the GIL, more than a rename takes.  Removing a finished
message is such a job, and nobody waits for it but the queue's own
bookkeeping.  So while one batch runs, the next collects: under load one
job removes many messages, and with one message at a time nothing waits
longer than before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from tlsmta.storage._diskio import DiskIO

T = TypeVar("T")


class Batched(Generic[T]):
    """``submit(item)`` runs ``each(item)`` in a disk thread, together with the items submitted
    while the previous batch ran; each item's Deferred gets its own outcome."""

    def __init__(self, disk: DiskIO, each: Callable[[T], object]):
        self._disk = disk
        self._each = each
        self._waiting: list[tuple[T, Deferred[None]]] = []
        self._running = False

    def submit(self, item: T) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waiting.append((item, d))
        if not self._running:
            self._start()
        return d

    def _start(self) -> None:
        batch, self._waiting = self._waiting, []
        self._running = True
        self._disk.run(self._run_all, [item for item, _ in batch]).addBoth(self._finished, batch)

    def _run_all(self, items: list[T]) -> list[Failure | None]:
        """In a disk thread: every item, whatever the others did."""
        outcomes: list[Failure | None] = []
        for item in items:
            try:
                self._each(item)
                outcomes.append(None)
            except Exception:
                outcomes.append(Failure())
        return outcomes

    def _finished(self, outcomes: list[Failure | None] | Failure, batch: list[tuple[T, Deferred[None]]]) -> None:
        self._running = False
        if self._waiting:
            self._start()
        for index, (_, d) in enumerate(batch):
            outcome = outcomes if isinstance(outcomes, Failure) else outcomes[index]
            if outcome is None:
                d.callback(None)
            else:
                d.errback(outcome)
