"""Durable storage: the spool (queued messages and per-recipient state),
Maildir delivery, the streaming file writer with its fsync rules, the disk
thread, message ids, the message-store interfaces the inbound side
writes to (``interfaces``), and the facts of receipt kept beside the dev relay's
captured mail (``receipts``).

May import config (routes); never SMTP parsing, inbound or delivery.
"""
