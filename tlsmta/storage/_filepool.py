"""Finished messages' files, reused for new ones (disk threads).

Every message creates a file (and a state file if it is retried or held)
and deletes them once delivered. Creating
an inode is the filesystem's dearest step on a busy spool: on ext4 without
a journal it scans past every inode deleted in the last seconds (about a
fifth of a relay's CPU measured in bench/relay.sh). So a finished
message's files are renamed into ``free/``, and a new file is such a file
renamed into place; only when ``free/`` is empty is one created. A reused
file keeps its old bytes until the new content is written over them, and
the writer cuts it to the new length before its fsync (``TempFile``):
freeing a small file's blocks on retire and allocating them again on the
next write cost more than the rename (truncate was ~0.1 ms a file). Files
over KEEP_BYTES are emptied when retired, so ``free/`` never holds much.

Durability is untouched: a new file's content is still written, cut to
its length, fsynced and renamed into ``q/`` before the 250, and a file
leaves ``q/`` exactly when it did (the rename into ``free/`` replaces the
unlink). What is in ``free/`` is nobody's message; a start empties it.
"""

from __future__ import annotations

import itertools
import os
import threading

from tlsmta.storage._filewriter import create_exclusive, remove_if_present

KEEP_BYTES = 64 * 1024  # a retired file up to this size keeps its blocks for the next message


class FilePool:
    """At most ``limit`` empty files in ``directory``, thread-safe."""

    def __init__(self, directory: str, limit: int = 512):
        self.directory = directory
        self.limit = limit
        self._lock = threading.Lock()
        self._free: list[str] = []
        self._names = itertools.count()

    def clear(self) -> None:
        """At start: remove what an earlier run left (the spool lock is held)."""
        with self._lock:
            self._free.clear()
        for name in os.listdir(self.directory):
            remove_if_present(os.path.join(self.directory, name))

    def create(self, path: str) -> int:
        """A descriptor, open for writing at its start, of a file at ``path`` (which must not
        exist) that may hold old bytes: the writer truncates it to what it wrote."""
        with self._lock:
            pooled = self._free.pop() if self._free else None
        if pooled is None:
            return create_exclusive(path)
        os.rename(pooled, path)
        return os.open(path, os.O_WRONLY)

    def retire(self, path: str) -> bool:
        """Take the file at ``path`` away (as unlink would); whether there was one."""
        with self._lock:
            full = len(self._free) >= self.limit
            name = None if full else os.path.join(self.directory, str(next(self._names)))
        if name is None:
            return remove_if_present(path)
        try:
            os.rename(path, name)
        except FileNotFoundError:  # no such file, or no free/ (a spool not prepared: offline tools)
            return remove_if_present(path)
        if os.stat(name).st_size > KEEP_BYTES:
            os.truncate(name, 0)
        with self._lock:
            self._free.append(name)
        return True
