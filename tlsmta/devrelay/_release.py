"""Release a captured message: send it on to a real smarthost through the queue.

``POST /api/messages/ID/release {"smarthost": "HOST[:PORT]", "to": [...]}``
(or ``"smtps:HOST[:PORT]"``: implicit TLS, port 465 by default)
puts a copy into the spool with an ``smtp:HOST[:PORT]`` route for each
recipient (default: the captured envelope's, i.e. the ``Delivered-To:``
lines tlsmta's local delivery put in front of the message, never ones the
message's author wrote), so it is delivered like any
queued message: the configured TLS policy for the recipient domain
(``tls``, ``tls_verify``, ``tls_ca``, ...), retries, a ``delivery`` log line,
and a DSN to the sender if it bounces.
"""

from __future__ import annotations

import time

from tlsmta.config import Route, RouteError, parse_route
from tlsmta.devrelay._mailview import local_envelope
from tlsmta.errors import TlsmtaError
from tlsmta.smtp import Reject, parse_path
from tlsmta.storage import QueuedMessage, RecipientState, new_message_id


class ReleaseError(TlsmtaError, ValueError):
    """The release request cannot be made (the message says why)."""


def smarthost_route(smarthost: object) -> Route:
    """``HOST[:PORT]`` or ``[IP]:PORT`` as an smtp route (STARTTLS per policy); ``smtps:HOST[:PORT]``
    for a smarthost that speaks implicit TLS (port 465 unless given)."""
    if not isinstance(smarthost, str) or not smarthost:
        raise ReleaseError('"smarthost" must be "HOST[:PORT]" or "smtps:HOST[:PORT]"')
    implicit = smarthost[:6].lower() == "smtps:"
    try:
        return parse_route(smarthost if implicit else f"smtp:{smarthost}")
    except RouteError as e:
        raise ReleaseError(str(e)) from None


def outgoing_body(stored: bytes) -> bytes:
    """The message as it came in: the Maildir's Return-Path/Delivered-To lines
    removed, LF line ends back to CRLF (the spool keeps wire form)."""
    body = stored[local_envelope(stored).end :]
    return body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _valid(address: str, keyword: str) -> bool:
    """Whether inbound would accept ``address`` in MAIL FROM / RCPT TO (SMTPUTF8 allowed),
    exactly as given: no source route, no parameters, no line breaks or spaces."""
    try:
        path = parse_path(f"{keyword}:<{address}>".encode("utf-8"), keyword, utf8=True, allow_null=keyword == "FROM")
    except (Reject, UnicodeEncodeError):
        return False
    return path.address == address and not path.params and (address == "" or "@" in address)


def check_recipients(recipients: object, source: str) -> list[str]:
    """``recipients`` as a list of addresses with the grammar inbound uses for RCPT TO;
    otherwise a :class:`ReleaseError` naming the bad one and where it came from."""
    if not isinstance(recipients, (list, tuple)) or not recipients:
        raise ReleaseError(f'{source}: no recipients; "to" must be a non-empty list of addresses')
    for address in recipients:
        if not isinstance(address, str) or not _valid(address, "TO") or not address:
            raise ReleaseError(f"{source}: {address!r} is not a valid recipient address (RFC 5321 mailbox)")
    return list(recipients)


def release_message(sender: str, recipients: object, route: Route, source: str = '"to"') -> QueuedMessage:
    """The queue entry for a release (its body is stored separately).

    ``source`` says where the recipients came from, for the error message.
    """
    addresses = check_recipients(recipients, source)
    if not _valid(sender, "FROM"):
        raise ReleaseError(f"Return-Path: {sender!r} is not a valid sender address (RFC 5321 mailbox)")
    now = time.time()
    return QueuedMessage(
        id=new_message_id(now),
        sender=sender,
        recipients=[RecipientState(address, route, "default") for address in addresses],
        received_at=now,
        next_attempt=now,
        listener="release",
    )
