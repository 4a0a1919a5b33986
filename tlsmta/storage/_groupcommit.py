"""Group commit by filesystem: the messages that finish together, made durable together.

The ``[spool] commit = "syncfs"`` way of committing a received message (the
default, ``"fsync"``, is storage.filewriter's ``finish_blocking`` in a disk
thread). A batch opens with a message's end of DATA and takes in every
message that finishes in the next ``TURNS_OPEN`` reactor turns (iterations)
too; then it is committed, on the reactor thread:

1. each message's last bytes written, its files sealed (no fsync);
2. one ``syncfs(2)`` of each filesystem the batch writes to: every sealed
   file is durable before any of it has a name;
3. each message's files put in place (rename, link);
4. one ``syncfs`` again: the names durable, and only then the 250s.

Why on the reactor thread: in disk threads each of a message's system
calls hands the GIL back and forth with the reactor, and under load that,
not the disk, was most of the time between the "." and the 250
(bench/profile-issue13.md, eighth round). Two flushes per batch replace
three fsyncs per message.

Why a batch stays open for turns: the flushes cost per batch, and a turn
holds only what the reactor had ready at once. Closed after one turn, a
batch held 3.5 messages under a STARTTLS load (5 plain); open for two more,
7 (10): 40% less flush time per message with STARTTLS (10-25% plain), 20-30%
more messages a second with STARTTLS, the p50 within a millisecond
(bench/profile-issue13.md, tenth round). An idle reactor's turn is an
epoll_wait that returns at once, so a lone message hardly waits for it.

What it costs: the reactor waits for the flushes, and ``syncfs`` writes out
everything dirty on the filesystem, other programs' files included. So it
suits a spool (and Maildirs) on a filesystem of their own. It needs Linux
5.8 or later, where ``syncfs`` reports write errors (config checks). A
message's last bytes are written, and a Maildir it is the first message for
is made, on the reactor thread too (earlier bytes of a large one still go
through the disk threads). A receipt is renamed before its Maildir message
is linked, and both become durable in the same flush. In this mode a
delivered message's removal runs on the reactor thread too
(``DiskIO.run_quick``), unless it is large (``Spool.remove``).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from tlsmta.storage._filewriter import FileTarget

_libc = ctypes.CDLL(None, use_errno=True)

Batch = list[tuple[Sequence[FileTarget], bytes, "Deferred[None]"]]


def syncfs(fd: int) -> None:
    """syncfs(2): the filesystem holding ``fd`` written out, and its write errors raised."""
    if _libc.syncfs(fd) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"syncfs: {os.strerror(error)}")


TURNS_OPEN = 2  # reactor turns a batch stays open after the turn of its first message (see above)


def _no_sync(fd: int) -> None:
    """The files' own fsync, left to the batch's syncfs."""


class GroupCommit:
    """Commits the messages that finish within a few reactor turns with two syncfs calls."""

    def __init__(self, reactor: IReactorTime, sync_filesystem: Callable[[int], None] = syncfs):
        self.reactor = reactor
        self._sync_filesystem = sync_filesystem
        self._pending: Batch = []
        self._scheduled = False
        self._turns_left = 0
        # st_dev -> an open descriptor on that filesystem: one per filesystem, not per Maildir
        self._filesystems: dict[int, int] = {}
        self.batches = 0  # committed so far; for tests and benchmarks

    def commit(self, targets: Sequence[FileTarget], last: bytes) -> Deferred[None]:
        """``last`` appended to each target, all durable and in place when this fires."""
        d: Deferred[None] = Deferred()
        self._pending.append((targets, last, d))
        if not self._scheduled:
            self._scheduled = True
            self._turns_left = TURNS_OPEN
            self.reactor.callLater(0, self._next_turn)
        return d

    def _next_turn(self) -> None:
        # a call made with callLater(0) from a timed call runs in the reactor's next turn, after its events
        if self._turns_left:
            self._turns_left -= 1
            self.reactor.callLater(0, self._next_turn)
        else:
            self._flush()

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        self.batches += 1
        batch = self._each(batch, self._seal)
        batch = self._synced(batch)
        batch = self._each(batch, self._place)
        for _, _, d in self._synced(batch):
            d.callback(None)

    @staticmethod
    def _seal(targets: Sequence[FileTarget], last: bytes) -> None:
        for target in targets:
            target.append(last)
            target.seal(_no_sync)

    @staticmethod
    def _place(targets: Sequence[FileTarget], last: bytes) -> None:
        for target in targets:
            target.place(_no_sync)

    @staticmethod
    def _each(batch: Batch, step: Callable[[Sequence[FileTarget], bytes], Any]) -> Batch:
        """The messages for which ``step`` worked; the others fail (their writer discards them)."""
        survivors: Batch = []
        for targets, last, d in batch:
            try:
                step(targets, last)
            except BaseException:
                d.errback(Failure())
            else:
                survivors.append((targets, last, d))
        return survivors

    def _synced(self, batch: Batch) -> Batch:
        """One syncfs per filesystem the batch writes to; a failed one fails its messages."""
        devices_of: dict[str, int] = {}  # each directory stat'ed once, not once per message
        placed: list[tuple[tuple[Sequence[FileTarget], bytes, Deferred[None]], set[int]]] = []
        for entry in batch:
            try:
                devices = {self._device(path, devices_of) for target in entry[0] for path in target.directories}
            except BaseException:
                entry[2].errback(Failure())
            else:
                placed.append((entry, devices))
        failed: dict[int, Failure] = {}
        for device in dict.fromkeys(device for _, devices in placed for device in devices):
            try:
                self._sync_filesystem(self._filesystems[device])
            except BaseException:
                failed[device] = Failure()
        survivors: Batch = []
        for entry, devices in placed:
            failure = next((failed[device] for device in devices if device in failed), None)
            if failure is None:
                survivors.append(entry)
            else:
                entry[2].errback(failure)
        return survivors

    def _device(self, path: str, devices_of: dict[str, int]) -> int:
        """The st_dev of the filesystem holding ``path``, a descriptor on it kept in ``_filesystems``."""
        device = devices_of.get(path)
        if device is None:
            device = os.stat(path).st_dev
            if device not in self._filesystems:
                self._filesystems[device] = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            devices_of[path] = device
        return device

    def close(self) -> None:
        filesystems, self._filesystems = self._filesystems, {}
        for fd in filesystems.values():
            os.close(fd)
