"""Durable storage: the spool (queued messages and per-recipient state),
Maildir delivery, the streaming file writer with its fsync rules, the disk
thread, ordered appends on it (``appender``), message ids, the
message-store interfaces the inbound side writes to (``interfaces``), and
the facts of receipt kept beside the dev relay's captured mail
(``receipts``), one small file written durably (``durable``), received
messages committed in batches with one filesystem sync (``groupcommit``), and whether
the spool's filesystem has room for a message
(``freespace``), the finished messages' emptied files the spool reuses
(``filepool``), and the unnamed files made ahead for Maildir deliveries
(``spares``).

May import config (routes) and smtp's values (replies, names); never SMTP
parsing, inbound or delivery.

This ``__init__`` is the part's API: other parts import only the names in
``__all__``; the modules behind it are private (``_name.py``).
"""

from tlsmta.storage._appender import LineAppender, Run
from tlsmta.storage._diskio import DiskIO
from tlsmta.storage._durable import write_durably
from tlsmta.storage._filewriter import StreamingWriter, finish_blocking, remove_if_present
from tlsmta.storage._freespace import free_bytes, space_refusal
from tlsmta.storage._groupcommit import GroupCommit
from tlsmta.storage._ids import new_message_id
from tlsmta.storage._interfaces import (
    NO_THROTTLE,
    Envelope,
    MessageSink,
    MessageWriter,
    Recipient,
    StoreError,
    Throttle,
)
from tlsmta.storage._lock import DirectoryInUse, DirectoryLock
from tlsmta.storage._maildir import LocalSink, crlf_to_lf, ensure_maildir
from tlsmta.storage._receipts import queued_receipt_record, read_receipt, receipt_path
from tlsmta.storage._spool import BOUNCED, DELIVERED, PENDING, QueuedMessage, RecipientState, Spool

__all__ = [
    "DirectoryInUse",
    "DirectoryLock",
    "queued_receipt_record",
    "BOUNCED",
    "crlf_to_lf",
    "DELIVERED",
    "DiskIO",
    "ensure_maildir",
    "finish_blocking",
    "free_bytes",
    "GroupCommit",
    "Envelope",
    "LineAppender",
    "LocalSink",
    "MessageSink",
    "MessageWriter",
    "new_message_id",
    "NO_THROTTLE",
    "PENDING",
    "QueuedMessage",
    "read_receipt",
    "receipt_path",
    "Recipient",
    "RecipientState",
    "space_refusal",
    "remove_if_present",
    "Run",
    "Spool",
    "StoreError",
    "StreamingWriter",
    "Throttle",
    "write_durably",
]
