"""Durable storage: the spool (queued messages and per-recipient state),
Maildir delivery, the streaming file writer with its fsync rules, the disk
thread, message ids, and the message-store interfaces the inbound side
writes to (``interfaces``).

May import config (routes); never SMTP parsing, inbound or delivery.
"""
