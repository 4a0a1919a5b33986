"""Release a captured message: send it on to a real smarthost through the queue.

``POST /api/messages/ID/release {"smarthost": "HOST[:PORT]", "to": [...]}``
puts a copy into the spool with an ``smtp:HOST[:PORT]`` route for each
recipient (default: the captured envelope's), so it is delivered like any
queued message: the configured TLS policy for the recipient domain
(``tls``, ``tls_verify``, ``tls_ca``, ...), retries, a ``delivery`` log line,
and a DSN to the sender if it bounces.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from tlsmta.ids import new_message_id
from tlsmta.routes import Route, RouteError, parse_route
from tlsmta.spool import QueuedMessage, RecipientState

_LOCAL_DELIVERY_HEADERS = (b"return-path:", b"delivered-to:")


class ReleaseError(ValueError):
    """The release request cannot be made (the message says why)."""


def smarthost_route(smarthost: object) -> Route:
    """``HOST[:PORT]`` or ``[IP]:PORT`` as an smtp route."""
    if not isinstance(smarthost, str) or not smarthost:
        raise ReleaseError('"smarthost" must be "HOST[:PORT]"')
    try:
        return parse_route(f"smtp:{smarthost}")
    except RouteError as e:
        raise ReleaseError(str(e)) from None


def outgoing_body(stored: bytes) -> bytes:
    """The message as it came in: the Maildir's Return-Path/Delivered-To lines
    removed, LF line ends back to CRLF (the spool keeps wire form)."""
    lines = stored.split(b"\n")
    start = 0
    while start < len(lines) and lines[start].lower().startswith(_LOCAL_DELIVERY_HEADERS):
        start += 1
    body = b"\n".join(lines[start:])
    return body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def release_message(sender: str, recipients: Sequence[str], route: Route) -> QueuedMessage:
    """The queue entry for a release (its body is stored separately)."""
    if not recipients or not all(isinstance(r, str) and "@" in r for r in recipients):
        raise ReleaseError('"to" must be a non-empty list of addresses')
    now = time.time()
    return QueuedMessage(
        id=new_message_id(now),
        sender=sender,
        recipients=[RecipientState(address, route, "default") for address in recipients],
        received_at=now,
        next_attempt=now,
        listener="release",
    )
