"""The ``tlsrpt`` route: a spooled message is a TLS-RPT report for us (RFC 8460 5.3), taken in.

The message was answered 250 once it was durable in the spool; here it is
read back, handed to the reporting side's inbox (parsed, one file per
report) and so "delivered".  A message that is not a valid report is
kept as malformed with its reason and is delivered too: the sender's
mail system gets no bounce for it (a report's sender cannot act on one,
and RFC 8460 reports are sent from automated systems).
"""

from __future__ import annotations

from tlsmta.reporting import TLSRPTInbox
from tlsmta.smtp import Reply
from tlsmta.storage import DiskIO, QueuedMessage, Spool


async def take_reports(inbox: TLSRPTInbox, spool: Spool, disk: DiskIO, message: QueuedMessage) -> Reply:
    """The delivery reply for a queued report mail, once what it held is stored."""
    body = await disk.run(spool.read_body_blocking, message)
    received = await inbox.receive_mail(body, f"mail {message.id} from <{message.sender}>")
    if received.problem is not None:
        return Reply.of(250, "2.0.0", f"not an RFC 8460 report, kept as malformed: {received.problem}")
    return Reply.of(250, "2.0.0", f"{len(received.reports)} TLS-RPT report(s) stored")
