"""Delivery status notifications (RFC 3464 multipart/report), sans I/O."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime
from email.utils import format_datetime

from tlsmta.storage.spool import RecipientState

MAX_RETURNED_HEADERS = 64 * 1024


def original_headers(body_start: bytes) -> bytes:
    """The header section of a stored message (CRLF), cut at a sane size."""
    end = body_start.find(b"\r\n\r\n")
    headers = body_start[: end + 2] if end >= 0 else body_start
    return headers[:MAX_RETURNED_HEADERS]


def _status(last: str, default: str) -> tuple[str, str]:
    """(enhanced status, diagnostic) from a stored result like ``550 5.1.1 no such user``."""
    code, _, rest = last.partition(" ")
    # A 4.x.x status stays as it is on expiry, as Postfix reports it (RFC 3463 4.4.7).
    status = rest.split(" ", 1)[0] if rest[:2] in ("5.", "4.") else default
    return status, last


def build_dsn(
    *,
    reporting_mta: str,
    message_id: str,
    sender: str,
    arrival: datetime,
    failed: Sequence[RecipientState],
    headers: bytes,
    now: datetime,
    expired: bool = False,
) -> bytes:
    """A bounce for ``failed`` recipients, addressed to ``sender`` (never called for a null sender)."""
    # RFC 2046 5.1.1: at most 70 characters; the random part first so a cut keeps it.
    boundary = f"{secrets.token_hex(8)}/{message_id}/{reporting_mta}"[:70]
    default = "4.4.7" if expired else "5.0.0"
    human = [
        f"This is the mail system at host {reporting_mta}.",
        "",
        "I'm sorry to have to inform you that your message could not",
        "be delivered to one or more recipients." + (" It stayed in the queue too long." if expired else ""),
        "",
    ]
    status_blocks = []
    for rcpt in failed:
        status, diagnostic = _status(rcpt.last, default)
        human.append(f"<{rcpt.address}>: {diagnostic or 'delivery failed'}")
        block = [
            f"Final-Recipient: rfc822; {rcpt.address}",
            "Action: failed",
            f"Status: {status}",
        ]
        if diagnostic:
            block.append(f"Diagnostic-Code: smtp; {diagnostic}")
        status_blocks.append("\r\n".join(block))
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{sender}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {format_datetime(now)}",
        f"Message-ID: <{message_id}.{secrets.token_hex(4)}@{reporting_mta}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "",
        *human,
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {reporting_mta}",
        f"X-Tlsmta-Queue-ID: {message_id}",
        f"Arrival-Date: {format_datetime(arrival)}",
        "",
        "\r\n\r\n".join(status_blocks),
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    text = "\r\n".join(lines).encode("utf-8") + b"\r\n" + headers.rstrip(b"\r\n") + b"\r\n"
    return text + f"\r\n--{boundary}--\r\n".encode("ascii")
