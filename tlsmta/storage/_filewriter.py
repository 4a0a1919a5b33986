"""Streaming a received message into files, durably, off the reactor thread.

Shared by the Maildir store and the spool.  A message is kept in memory
until it passes SPILL_BYTES, then written out as it arrives, with
back-pressure on the connection when the disk falls behind, so memory
stays flat whatever the size.  ``commit`` writes what is left, lets each
target fsync its files and put them in place (a rename, or the link of an
unnamed file: ``NewFile``), then fsyncs the target directories (shared
between concurrent messages: group commit), all in one disk job.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from tlsmta.storage._diskio import DiskIO
from tlsmta.storage._interfaces import StoreError, Throttle, is_disk_full
from tlsmta.storage._spares import NO_UNNAMED_FILES, can_link_descriptors, open_unnamed

log = Logger(namespace="tlsmta.filewriter")

SPILL_BYTES = 256 * 1024  # keep this much in memory before writing it out
HIGH_WATER = 2 * 1024 * 1024  # bytes queued for the disk before pausing the client
LOW_WATER = 512 * 1024


class FileTarget(Protocol):
    """One place a message is written to.  Methods run in the disk thread."""

    def append(self, data: bytes) -> None: ...

    def finish(self) -> None:
        """Make the content durable and visible: ``seal(os.fsync)``, then ``place(os.fsync)``."""

    def seal(self, sync: Callable[[int], None]) -> None:
        """Complete the content and close it; ``sync`` each file written (an fsync, or nothing
        when the caller syncs the whole filesystem afterwards: storage.groupcommit)."""

    def place(self, sync: Callable[[int], None]) -> None:
        """Give the sealed content its name (rename, link); ``sync`` as for ``seal``."""

    def discard(self) -> None:
        """Remove whatever was written; nothing half-written may stay visible."""

    @property
    def directories(self) -> Sequence[str]:
        """Directories whose fsync makes ``finish``'s renames durable."""


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def remove_if_present(path: str) -> bool:
    """unlink() that does not mind the file being gone already; whether it removed it."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def create_exclusive(path: str) -> int:
    """A new file at ``path``, mode 0600, open for writing; an existing one is an error."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)


class TempFile:
    """A file written in a temporary place, then fsynced and closed (disk thread).

    Created on the first append (with ``prefix`` first) by ``create``:
    exclusively, mode 0600; or (``reused``) the spool's pool of used files,
    whose old bytes past what is written here are cut off before the fsync.
    """

    def __init__(self, path: str, prefix: bytes = b"", create: Callable[[str], int] = create_exclusive,
                 reused: bool = False):
        self.path = path
        self.prefix = prefix
        self.fd: int | None = None
        self.written = 0
        self._create = create
        self._reused = reused

    def append(self, data: bytes) -> None:
        if self.fd is None:
            self.fd = self._create(self.path)
            data = self.prefix + data  # one write system call, not two (a Maildir's headers)
        write_all(self.fd, data)
        self.written += len(data)

    def sync_and_close(self, sync: Callable[[int], None] = os.fsync) -> None:
        """Make the content durable (the caller renames it into place afterwards)."""
        if self.fd is None:
            self.append(b"")
        assert self.fd is not None
        if self._reused:  # a file from storage.filepool may be longer
            os.ftruncate(self.fd, self.written)
        sync(self.fd)
        os.close(self.fd)
        self.fd = None

    def discard(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        remove_if_present(self.path)


class NewFile:
    """A new file that appears at ``path`` complete and durable, or not at all (disk thread).

    Written as an unnamed file (O_TMPFILE) in ``scratch_dir`` and linked in at ``path`` once
    fsynced. Creating a named file holds its directory's lock while the filesystem allocates the
    inode, so concurrent messages queue there (on ext4 without a journal that allocation scans
    recently freed inodes: ~1 ms a file under bench/inbound.sh's load); an unnamed one takes no
    directory lock, makes no entry to rename away, and leaves nothing behind if the process dies.
    ``take_spare(scratch_dir)`` may give one made ahead (storage.spares), which takes the
    allocation off the message's way. Where there are no unnamed files: a named one in
    ``scratch_dir``, renamed into place.
    """

    def __init__(self, path: str, scratch_dir: str, prefix: bytes = b"",
                 take_spare: Callable[[str], int | None] = lambda directory: None):
        self.path = path
        self.scratch_dir = scratch_dir
        self._take_spare = take_spare
        self.unnamed = False
        self.linked = False
        self._file = TempFile(os.path.join(scratch_dir, os.path.basename(path)), prefix, create=self._open)

    @property
    def prefix(self) -> bytes:
        return self._file.prefix

    def _open(self, scratch_path: str) -> int:
        if can_link_descriptors():
            try:
                fd = self._take_spare(self.scratch_dir)
                if fd is None:
                    fd = open_unnamed(self.scratch_dir)
            except OSError as e:
                if e.errno not in NO_UNNAMED_FILES:
                    raise
            else:
                self.unnamed = True
                return fd
        return create_exclusive(scratch_path)

    def append(self, data: bytes) -> None:
        self._file.append(data)

    def publish(self) -> None:
        """Durable content, then the name at ``path`` (the caller fsyncs its directory)."""
        self.seal(os.fsync)
        self.place(os.fsync)

    def seal(self, sync: Callable[[int], None]) -> None:
        """The content complete and synced; an unnamed file stays open for its link."""
        if self._file.fd is None:
            self._file.append(b"")
        if not self.unnamed:
            self._file.sync_and_close(sync)
            return
        assert self._file.fd is not None
        sync(self._file.fd)

    def place(self, sync: Callable[[int], None]) -> None:
        """The name at ``path`` for the sealed content (the caller syncs its directory)."""
        if not self.unnamed:
            os.rename(self._file.path, self.path)
            self.linked = True
            return
        fd = self._file.fd
        assert fd is not None
        # linkat(AT_SYMLINK_FOLLOW) on the descriptor's /proc name. os.link calls linkat only
        # when given a dir_fd (plain link() would link the /proc symlink itself: EXDEV), and an
        # absolute path ignores the one given: no directory to open and close for it.
        os.link(f"/proc/self/fd/{fd}", self.path, src_dir_fd=fd)
        self.linked = True
        # Then the link count: without a journal (ext4 -O ^has_journal) the directory's fsync
        # writes only the directory, and fsck removes a name whose inode still counts no links.
        # With a journal this commits what that fsync would.
        self._file.sync_and_close(sync)

    def discard(self) -> None:
        self._file.discard()  # closes it; a named one in scratch_dir goes too
        if self.linked:
            remove_if_present(self.path)


def translate(error: BaseException) -> StoreError:
    """The SMTP reply a storage failure deserves (never 250)."""
    if isinstance(error, StoreError):
        return error
    if isinstance(error, OSError):
        return StoreError.from_os_error(error)
    return StoreError(451, "4.3.0", "temporary failure storing the message")


def finish_blocking(disk: DiskIO, targets: Sequence[FileTarget], last: bytes = b"") -> None:
    """In a disk thread: ``last`` appended to every target, each finished, then their
    directories fsynced (each flush shared with concurrent callers): durable on return."""
    for target in targets:
        target.append(last)
        target.finish()
    for directory in sorted({d for t in targets for d in t.directories}):
        disk.sync_directory_blocking(directory)


class StreamingWriter:
    """A MessageWriter over one or more FileTargets."""

    def __init__(
        self,
        disk: DiskIO,
        targets: Sequence[FileTarget],
        throttle: Throttle,
        transform: Callable[[bytes], bytes] | None = None,
    ):
        self._disk = disk
        self._targets = list(targets)
        self._throttle = throttle
        self._transform = transform
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._in_flight = 0  # bytes handed to the disk thread, not yet written
        self._paused = False
        self._chain: Deferred[Any] = succeed(None)
        self._error: BaseException | None = None
        self._closed = False

    def write(self, data: bytes) -> None:
        if self._closed or not self._targets:
            return
        if self._transform is not None:
            data = self._transform(data)
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered >= SPILL_BYTES:
            self._spill()

    def _take_buffer(self) -> bytes:
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        return data

    def _spill(self) -> None:
        data = self._take_buffer()
        self._in_flight += len(data)
        if self._in_flight > HIGH_WATER and not self._paused:
            self._paused = True
            self._throttle.pause()
        self._then(self._append_all, data)
        self._chain.addBoth(self._drained, len(data))

    def _drained(self, result: Any, size: int) -> Any:
        self._in_flight -= size
        if self._paused and self._in_flight < LOW_WATER:
            self._paused = False
            self._throttle.resume()
        return result

    def _then(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` in the disk pool after what is already queued; stop at the first error."""

        def step(_: Any) -> Any:
            if self._error is not None:
                return None
            return self._disk.run(fn, *args).addErrback(self._failed)

        self._chain.addCallback(step)

    def _failed(self, failure: Failure) -> None:
        if self._error is None:
            self._error = failure.value
            if not is_disk_full(failure.value):  # a full disk is the 452 in the received line, not a bug
                log.failure("writing a message to disk failed", failure)

    def _append_all(self, data: bytes) -> None:
        for target in self._targets:
            target.append(data)

    def _finish_all(self, data: bytes) -> None:
        finish_blocking(self._disk, self._targets, data)

    def _discard_all(self) -> None:
        for target in self._targets:
            target.discard()

    def commit(self, tls_required_no: bool = False, message_id_header: str = "") -> Deferred[None]:
        self._closed = True  # the header facts: a file written here (a Maildir) has no use for them
        if not self._targets:
            return succeed(None)
        last = self._take_buffer()
        group_commit = self._disk.group_commit
        if group_commit is None:
            self._then(self._finish_all, last)
        else:
            self._chain.addCallback(self._group_committed, group_commit, last)
        self._chain.addCallback(self._settled)
        return self._chain

    def _group_committed(self, _: Any, group_commit: Callable[[Sequence[Any], bytes], Deferred[None]],
                         last: bytes) -> Deferred[None] | None:
        if self._error is not None:
            return None
        return group_commit(self._targets, last).addErrback(self._failed)

    def _settled(self, _: Any) -> None:
        if self._error is not None:
            error = self._error
            self._disk.run(self._discard_all).addErrback(lambda f: log.failure("cleaning up failed", f))
            raise translate(error)

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        self._chain.addBoth(lambda _: self._disk.run(self._discard_all))
        self._chain.addErrback(lambda f: log.failure("discarding an aborted message failed", f))
        if self._paused:
            self._paused = False
            self._throttle.resume()
