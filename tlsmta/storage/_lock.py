"""One tlsmta process per spool and state directory.

A second instance started on the same configuration must not clean ``tmp/``
or the orphan bodies of the running one (they are mail being received), so
each directory is locked before anything touches it: an exclusive ``flock``
on ``DIR/tlsmta.lock``, held for the life of the process. The kernel drops
it when the process ends, ``kill -9`` included, so a stale lock file never
keeps tlsmta from starting. The file says which PID holds it.
"""

from __future__ import annotations

import fcntl
import os

from tlsmta.errors import TlsmtaError

LOCK_NAME = "tlsmta.lock"


class DirectoryInUse(TlsmtaError):
    """Another tlsmta process holds the directory."""

    def __init__(self, directory: str, pid: int | None):
        self.directory = directory
        self.pid = pid
        holder = f"tlsmta PID {pid}" if pid else "another tlsmta process"
        super().__init__(f"{directory} is in use by {holder}")


class DirectoryLock:
    """The held lock of one directory; :meth:`acquire` makes one."""

    def __init__(self, fd: int, directory: str):
        self._fd = fd
        self.directory = directory

    @classmethod
    def acquire(cls, directory: str) -> DirectoryLock:
        """Create ``directory`` if needed and lock it; DirectoryInUse if another process has it,
        OSError if it cannot be created or written."""
        os.makedirs(directory, exist_ok=True)
        fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise DirectoryInUse(directory, pid) from None
        lock = cls(fd, directory)
        lock.write_pid()
        return lock

    def write_pid(self) -> None:
        """Say who holds the lock (again after twistd's fork: the lock is inherited, the PID is not)."""
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode("ascii"), 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None
