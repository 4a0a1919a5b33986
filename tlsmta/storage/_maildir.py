"""Local delivery: Maildir (and discard), durable before 250.

Each target Maildir gets the message as an unnamed file in ``tmp/``'s
filesystem (or a named one in ``tmp/`` where it has none), fsynced and
linked into ``new/`` (storage._filewriter.NewFile), and ``new/`` is fsynced
(shared between concurrent messages).
Lines are stored with LF endings, as Maildir readers expect.
"""

from __future__ import annotations

import functools
import itertools
import os
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tlsmta.config import Route, split_address
from tlsmta.storage._diskio import DiskIO
from tlsmta.storage._filewriter import FileTarget, NewFile, StreamingWriter
from tlsmta.storage._interfaces import NO_THROTTLE, Envelope, Throttle
from tlsmta.storage._receipts import ReceiptFile, receipt_record

_counter = itertools.count()


def ensure_maildir(path: str) -> None:
    """Create ``path`` with tmp/, new/ and cur/ if missing."""
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)


@functools.lru_cache(maxsize=1)
def _host() -> str:
    return socket.gethostname().replace("/", "\\057").replace(":", "\\072")


def unique_name() -> str:
    """A Maildir file name: ``<sec>.M<usec>P<pid>Q<n>.<host>``."""
    now = time.time()
    return f"{int(now)}.M{int(now % 1 * 1e6):06d}P{os.getpid()}Q{next(_counter)}.{_host()}"


def local_headers(sender: str, recipients: Sequence[str]) -> bytes:
    """Return-Path and Delivered-To, as a local delivery agent adds them."""
    lines = [f"Return-Path: <{sender}>"] + [f"Delivered-To: {r}" for r in recipients]
    return ("\n".join(lines) + "\n").encode("utf-8")


def maildir_of(address: str, route: Route) -> str:
    """The Maildir a ``maildir:`` route puts ``address`` in: the route's path, the recipient's
    own mailbox when the path has %d/%u (RouteError: the address cannot name one)."""
    return route.maildir_for(*split_address(address))


def crlf_to_lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


class MaildirFile:
    """One message file in one Maildir (a FileTarget; runs in the disk thread).

    The Maildir is made (``prepare``) before the first write, in the disk
    thread too: making one is filesystem work the reactor must not wait for.
    """

    def __init__(self, maildir: str, prefix: bytes, prepare: Callable[[str], None],
                 take_spare: Callable[[str], int | None] = lambda directory: None):
        self.maildir = maildir
        self.name = unique_name()
        self.new_path = os.path.join(maildir, "new", self.name)
        self.file = NewFile(self.new_path, os.path.join(maildir, "tmp"), prefix, take_spare)
        self._prepare = prepare
        self._prepared = False

    @property
    def directories(self) -> Sequence[str]:
        return (os.path.join(self.maildir, "new"),)

    def _ready(self) -> None:
        if not self._prepared:
            self._prepare(self.maildir)
            self._prepared = True

    def append(self, data: bytes) -> None:
        self._ready()
        self.file.append(data)

    def finish(self) -> None:
        self._ready()
        self.file.publish()

    def seal(self, sync: Callable[[int], None]) -> None:
        self._ready()
        self.file.seal(sync)

    def place(self, sync: Callable[[int], None]) -> None:
        self.file.place(sync)

    def discard(self) -> None:
        if self._prepared:  # otherwise nothing was written (and tmp/ may not even be there)
            # Another target of the message may have failed after this one was in new/: the
            # client is told 4xx and sends again, so this copy must go (a duplicate otherwise).
            self.file.discard()


class LocalSink:
    """Accepts mail for ``maildir:`` and ``discard`` routes.

    ``keeps_receipts(path)``: whether messages received into that Maildir get
    their facts of receipt beside them (:mod:`tlsmta.storage._receipts`); the
    dev relay's captured mail does, a user's mailbox does not.
    """

    def __init__(self, disk: DiskIO, keeps_receipts: Callable[[str], bool] = lambda path: False):
        self.disk = disk
        self.keeps_receipts = keeps_receipts
        self._ready: set[str] = set()

    def accepts(self, route: Route) -> bool:
        return route.is_local

    def maildir_files(self, sender: str, recipients: Sequence[tuple[str, Route]]) -> list[MaildirFile]:
        """One new file per target Maildir, headed for these recipients."""
        by_maildir: dict[str, list[str]] = defaultdict(list)
        for address, route in recipients:
            if route.kind == "maildir":
                by_maildir[maildir_of(address, route)].append(address)
        return [MaildirFile(path, local_headers(sender, rcpts), self._prepare, self._take_spare)
                for path, rcpts in by_maildir.items()]

    def _take_spare(self, directory: str) -> int | None:
        return self.disk.spares.take(directory)

    def _prepare(self, path: str) -> None:
        """ensure_maildir once per path per process (disk threads: two racing both make it, harmlessly)."""
        if path not in self._ready:
            ensure_maildir(path)
            self._ready.add(path)

    def open(self, envelope: Envelope, throttle: Throttle = NO_THROTTLE) -> StreamingWriter:
        files = self.maildir_files(envelope.sender, [(r.address, r.route) for r in envelope.recipients])
        return StreamingWriter(self.disk, self.with_receipts(files, lambda: receipt_record(envelope)), throttle,
                               transform=crlf_to_lf)

    def with_receipts(self, files: Sequence[MaildirFile], record: Callable[[], Mapping[str, Any]]) -> list[FileTarget]:
        """``files`` and, first, the receipt of each that lands in a Maildir keeping receipts:
        each receipt is in place before its message becomes visible in new/. ``record`` is
        made only when one does (an operator's Maildir keeps none)."""
        keeping = [f for f in files if self.keeps_receipts(f.maildir)]
        if not keeping:
            return list(files)
        facts = record()
        receipts: list[FileTarget] = [ReceiptFile(f.maildir, f.name, facts, self._prepare) for f in keeping]
        return [*receipts, *files]
