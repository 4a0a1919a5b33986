"""Where the inbound server puts a message: Maildir directly, or the spool.

A message whose recipients are all local (maildir/discard routes) is
written straight into its Maildirs, one durable write.  Anything else goes
into the spool and, once durable, is handed to ``enqueue`` (the delivery
queue's ``add``, which also does the local part of a mixed message).  The
queue is not imported: receiving mail never loads the outbound stack.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from tlsmta.config import Route
from tlsmta.storage import NO_THROTTLE, Envelope, LocalSink, QueuedMessage, Spool, StreamingWriter, Throttle


class SpooledWriter:
    """A spool writer that hands the message to the queue once it is durable."""

    def __init__(self, writer: StreamingWriter, message: QueuedMessage, enqueue: Callable[[QueuedMessage], None]):
        self._writer = writer
        self._message = message
        self._enqueue = enqueue

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    def commit(self, tls_required_no: bool = False, message_id_header: str = "") -> Deferred[None]:
        # Set before the disk thread writes the metadata, which commit() queues behind the body.
        self._message.tls_required_no = tls_required_no
        self._message.message_id_header = message_id_header

        def queued(_: Any) -> None:
            self._enqueue(self._message)

        return self._writer.commit().addCallback(queued)

    def abort(self) -> None:
        self._writer.abort()


class Intake:
    """The inbound MessageSink of a full MTA."""

    def __init__(self, local: LocalSink, spool: Spool, enqueue: Callable[[QueuedMessage], None]):
        self.local = local
        self.spool = spool
        self.enqueue = enqueue

    def accepts(self, route: Route) -> bool:
        return True

    def open(self, envelope: Envelope, throttle: Throttle = NO_THROTTLE) -> Any:
        if all(r.route.is_local for r in envelope.recipients) and not envelope.held:  # a Maildir cannot hold
            return self.local.open(envelope, throttle)
        message = QueuedMessage.from_envelope(envelope)
        writer, _ = self.spool.writer(message, throttle)
        return SpooledWriter(writer, message, self.enqueue)
