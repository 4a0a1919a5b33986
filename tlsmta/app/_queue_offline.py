"""`tlsmta queue delete|hold|release` with the daemon stopped: straight on the spool, under its lock.

These change only files the daemon reads at start, so they are safe without it once
the spool lock (``storage.lock``) is ours: a daemon starting meanwhile refuses, naming
this process, instead of loading a half-changed queue.  What needs delivery (flush,
requeue, bounce: a DSN is mail to send) stays with the running daemon.
"""

from __future__ import annotations

from collections.abc import Sequence

from tlsmta.delivery import QueueError
from tlsmta.storage import DirectoryLock, QueuedMessage, Spool

OFFLINE = {"delete": "deleted", "hold": "held", "release": "released (due when tlsmta starts)"}


def change_offline(spool_path: str, action: str, ids: Sequence[str], domain: str | None = None,
                   everything: bool = False) -> list[str]:
    """Apply ``action`` to the chosen messages; DirectoryInUse when a daemon holds the spool,
    QueueError for an unknown id (before anything changes)."""
    lock = DirectoryLock.acquire(spool_path)
    try:
        spool = Spool(spool_path, disk=None)  # type: ignore[arg-type]  # blocking calls only, no disk thread
        queued = spool.list_blocking()
        messages = {m.id: m for m in spool.load_blocking(queued)[0]}
        chosen = _choose(messages, ids, domain, everything)
        for message in chosen:
            if action == "delete":
                spool.remove_blocking(message)
            else:
                message.held = action == "hold"
                spool.save_blocking(message, durable=True)
        return [m.id for m in chosen]
    finally:
        lock.release()


def _choose(messages: dict[str, QueuedMessage], ids: Sequence[str], domain: str | None, everything: bool) -> list[QueuedMessage]:
    if everything:
        return list(messages.values())
    if domain is not None:
        return [m for m in messages.values() if any(r.domain == domain for r in m.pending)]
    for message_id in ids:
        if message_id not in messages:
            raise QueueError(f"no queued message {message_id}")
    return [messages[i] for i in ids]
