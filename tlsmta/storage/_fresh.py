"""Bodies just received, kept in memory for their first delivery attempt.

A relayed message is written to the spool and, most of the time, sent on
at once; reading it back is a disk job (a trip to a disk thread and back,
three system calls, each a hand-over of the GIL) for bytes the process had
a moment ago.  So a small body is kept, after its commit, until the first
delivery takes it or the message goes.  The spool file stays the truth:
the copy is the same bytes, and anything not kept is read from disk as
before.  A byte budget bounds the copies (a destination that is down
leaves messages waiting, and those are read from disk when their turn
comes).
"""

from __future__ import annotations

import threading

MAX_BODY = 64 * 1024  # larger bodies are read from disk
BUDGET = 16 * 1024 * 1024  # all the bodies kept, together


class FreshBodies:
    """Message id -> body, within ``budget`` bytes; thread-safe (kept by disk threads, taken in the reactor)."""

    def __init__(self, budget: int = BUDGET, max_body: int = MAX_BODY):
        self.budget = budget
        self.max_body = max_body
        self.held = 0
        self._bodies: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def keep(self, message_id: str, body: bytes) -> None:
        """Keep ``body`` for ``message_id`` if it is small and fits (else it is read from disk)."""
        if len(body) > self.max_body:
            return
        with self._lock:
            if self.held + len(body) <= self.budget and message_id not in self._bodies:
                self._bodies[message_id] = body
                self.held += len(body)

    def take(self, message_id: str) -> bytes | None:
        """The kept body, given up: the next reader reads the file."""
        with self._lock:
            body = self._bodies.pop(message_id, None)
            if body is not None:
                self.held -= len(body)
        return body
