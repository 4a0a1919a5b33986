"""Local delivery: Maildir (and discard), written durably before 250.

A message for maildir routes is streamed into ``tmp/`` of each target
Maildir (usually one), fsynced, renamed into ``new/`` and the directory
fsynced (shared between concurrent messages).  Small messages are written
in one go at commit; larger ones spill to disk as they arrive, with
back-pressure on the connection when the disk falls behind, so memory
stays flat whatever the message size.  Lines are stored with LF endings,
as Maildir readers expect.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections import defaultdict
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from tlsmta.diskio import DiskIO
from tlsmta.routes import Route
from tlsmta.store import NO_THROTTLE, Envelope, StoreError, Throttle

log = Logger(namespace="tlsmta.maildir")

SPILL_BYTES = 256 * 1024  # keep this much in memory before writing it out
HIGH_WATER = 2 * 1024 * 1024  # bytes queued for the disk before pausing the client
LOW_WATER = 512 * 1024

_counter = itertools.count()


def ensure_maildir(path: str) -> None:
    """Create ``path`` with tmp/, new/ and cur/ if missing."""
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)


def unique_name() -> str:
    """A Maildir file name: ``<sec>.M<usec>P<pid>Q<n>.<host>``."""
    now = time.time()
    host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
    return f"{int(now)}.M{int(now % 1 * 1e6):06d}P{os.getpid()}Q{next(_counter)}.{host}"


def local_headers(envelope: Envelope, recipients: list[str]) -> bytes:
    """Return-Path and Delivered-To, as a local delivery agent adds them."""
    lines = [f"Return-Path: <{envelope.sender}>"]
    lines += [f"Delivered-To: {r}" for r in recipients]
    return ("\n".join(lines) + "\n").encode("utf-8")


class _Target:
    """One Maildir file being written (runs in the disk thread)."""

    def __init__(self, maildir: str, prefix: bytes):
        self.maildir = maildir
        self.prefix = prefix
        self.name = unique_name()
        self.tmp_path = os.path.join(maildir, "tmp", self.name)
        self.new_path = os.path.join(maildir, "new", self.name)
        self.fd: int | None = None

    def append(self, data: bytes) -> None:
        if self.fd is None:
            self.fd = os.open(self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            _write_all(self.fd, self.prefix)
        _write_all(self.fd, data)

    def finish(self) -> None:
        """fsync, close and move into new/ (the directory fsync comes after)."""
        if self.fd is None:
            self.append(b"")
        assert self.fd is not None
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = None
        os.rename(self.tmp_path, self.new_path)

    def discard(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class MaildirWriter:
    """Streams one message into its target Maildirs."""

    def __init__(self, disk: DiskIO, targets: list[_Target], throttle: Throttle):
        self._disk = disk
        self._targets = targets
        self._throttle = throttle
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
        data = data.replace(b"\r\n", b"\n")
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

    def _then(self, fn: Any, *args: Any) -> None:
        """Run ``fn`` in the disk pool after what is already queued; stop at the first error."""

        def step(_: Any) -> Any:
            if self._error is not None:
                return None
            return self._disk.run(fn, *args).addErrback(self._failed)

        self._chain.addCallback(step)

    def _failed(self, failure: Failure) -> None:
        if self._error is None:
            self._error = failure.value
            log.failure("writing a message to a Maildir failed", failure)

    def _append_all(self, data: bytes) -> None:
        for target in self._targets:
            target.append(data)

    def _finish_all(self, data: bytes) -> None:
        for target in self._targets:
            target.append(data)
            target.finish()

    def _discard_all(self) -> None:
        for target in self._targets:
            target.discard()

    def commit(self) -> Deferred[None]:
        self._closed = True
        if not self._targets:
            return succeed(None)
        self._then(self._finish_all, self._take_buffer())
        self._chain.addCallback(self._sync_directories)
        return self._chain

    def _sync_directories(self, _: Any) -> Deferred[None] | None:
        if self._error is not None:
            self._cleanup_after_error()
            raise self._translate(self._error)
        dirs = sorted({os.path.join(t.maildir, "new") for t in self._targets})
        d = DeferredList([self._disk.sync_directory(p) for p in dirs], fireOnOneErrback=True, consumeErrors=True)

        def unwrap(failure: Failure) -> None:
            raise self._translate(failure.value.subFailure.value)

        return d.addCallbacks(lambda _: None, unwrap)

    def _cleanup_after_error(self) -> None:
        self._disk.run(self._discard_all).addErrback(lambda f: log.failure("cleaning up tmp/ failed", f))

    @staticmethod
    def _translate(error: BaseException) -> StoreError:
        if isinstance(error, StoreError):
            return error
        if isinstance(error, OSError):
            return StoreError.from_os_error(error)
        return StoreError(451, "4.3.0", "temporary failure storing the message")

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


class LocalSink:
    """Accepts mail for ``maildir:`` and ``discard`` routes."""

    def __init__(self, disk: DiskIO):
        self.disk = disk
        self._ready: set[str] = set()

    def accepts(self, route: Route) -> bool:
        return route.is_local

    def open(self, envelope: Envelope, throttle: Throttle = NO_THROTTLE) -> MaildirWriter:
        by_maildir: dict[str, list[str]] = defaultdict(list)
        for rcpt in envelope.recipients:
            if rcpt.route.kind == "maildir":
                assert rcpt.route.path is not None
                by_maildir[rcpt.route.path].append(rcpt.address)
        targets = []
        for path, rcpts in by_maildir.items():
            if path not in self._ready:
                ensure_maildir(path)  # once per path per process: a few mkdir calls
                self._ready.add(path)
            targets.append(_Target(path, local_headers(envelope, rcpts)))
        return MaildirWriter(self.disk, targets, throttle)
