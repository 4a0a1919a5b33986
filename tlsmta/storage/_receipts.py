"""Facts of receipt kept beside a captured message: one small JSON file per message.

The dev relay's page and ``tlsmta.testing`` show how a message came in
(HELO, peer, TLS protocol, cipher, client certificate verdict).  Those facts
are the envelope's, written as data when the message is stored, so nothing
has to be read back out of a ``Received:`` header.

A receipt lives in ``MAILDIR/tlsmta-receipts/NAME.json``, NAME being the
message's Maildir file name (without its ``:2,`` info).  The directory has
no leading dot, so Maildir++ readers do not take it for a folder.  It is a
:class:`~tlsmta.storage._filewriter.FileTarget` of the same
:class:`~tlsmta.storage._filewriter.StreamingWriter` as the message: written
in ``tmp/``, fsynced, renamed into place before the message itself is, and
its directory fsynced before the client gets 250.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from tlsmta.storage._diskio import fsync_directory
from tlsmta.storage._filewriter import TempFile, remove_if_present
from tlsmta.storage._interfaces import Envelope
from tlsmta.storage._spool import QueuedMessage

RECEIPTS = "tlsmta-receipts"


def receipts_directory(maildir: str) -> str:
    return os.path.join(maildir, RECEIPTS)


def receipt_path(maildir: str, name: str) -> str:
    """Where the receipt of Maildir file ``name`` (info suffix dropped) is kept."""
    return os.path.join(receipts_directory(maildir), name.split(":", 1)[0] + ".json")


def receipt_record(envelope: Envelope) -> dict[str, Any]:
    """The facts of receipt as JSON-ready data; ``tls`` is the ``received`` event's TLS dict."""
    return {
        "queue_id": envelope.message_id,
        "received_at": envelope.received_at.isoformat(),
        "helo": envelope.helo,
        "peer": envelope.peer,
        "esmtp": envelope.esmtp,
        "authenticated": envelope.authenticated,
        "auth_user": envelope.auth_user,
        "smtputf8": envelope.smtputf8,
        "tls": dict(envelope.tls),
    }


def queued_receipt_record(message: QueuedMessage) -> dict[str, Any]:
    """The same facts for a copy the queue delivers (a message that also had remote recipients)."""
    tls = dict(message.tls)
    if message.requiretls:
        tls["requiretls"] = True
    return {
        "queue_id": message.id,
        "received_at": datetime.fromtimestamp(message.received_at, timezone.utc).astimezone().isoformat(),
        "helo": message.helo,
        "peer": message.peer,
        "esmtp": message.esmtp,
        "authenticated": message.authenticated,
        "smtputf8": message.smtputf8,
        "tls": tls,
    }


def read_receipt(maildir: str, name: str) -> Mapping[str, Any] | None:
    """The stored receipt of message ``name``; None when it has none (stored before
    receipts were kept, or written by something else) or it is unreadable."""
    try:
        with open(receipt_path(maildir, name), "rb") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _ensure_directory(path: str) -> None:
    """mkdir once; a new directory's entry is made durable in its parent."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    fsync_directory(os.path.dirname(path))


class ReceiptFile:
    """The receipt of one Maildir message (a FileTarget; runs in the disk thread).

    The message's bytes are not its business: ``append`` ignores them.
    """

    def __init__(self, maildir: str, name: str, record: Mapping[str, Any],
                 prepare: Callable[[str], None] = lambda maildir: None):
        self.maildir = maildir
        self._prepare = prepare  # makes the Maildir (its tmp/ holds the receipt until it is renamed)
        self.directory = receipts_directory(maildir)
        self.path = receipt_path(maildir, name)
        self.file = TempFile(os.path.join(maildir, "tmp", name + ".receipt"), json.dumps(record).encode("utf-8"))

    @property
    def directories(self) -> Sequence[str]:
        return (self.directory,)

    def append(self, data: bytes) -> None:
        pass

    def finish(self) -> None:
        self.seal(os.fsync)
        self.place(os.fsync)

    def seal(self, sync: Callable[[int], None]) -> None:
        self._prepare(self.maildir)
        _ensure_directory(self.directory)
        self.file.sync_and_close(sync)

    def place(self, sync: Callable[[int], None]) -> None:
        os.rename(self.file.path, self.path)

    def discard(self) -> None:
        self.file.discard()
        remove_if_present(self.path)  # finish may have got as far as the rename
