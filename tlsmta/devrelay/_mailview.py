"""What the dev relay shows of a received message, sans I/O.

The envelope is read from the stored file itself: the ``Return-Path:`` and
``Delivered-To:`` lines the Maildir delivery adds (only the leading block it
writes, see :func:`local_envelope`).  The facts of receipt (HELO, peer, TLS)
are the record stored beside the message (:mod:`tlsmta.storage._receipts`),
written in the same durable write; a message without one shows them as
unknown.
"""

from __future__ import annotations

import base64
import datetime
import email.header
import email.policy
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from email.message import EmailMessage, Message
from email.parser import BytesParser
from typing import Any

import attrs

from tlsmta.inbound import with_keyword

_PARSER = BytesParser(policy=email.policy.default)
# The index parses every captured file once: compat32 keeps header values as strings (no header
# objects built for every Content-Type looked at), and only the shown fields are decoded.
_INDEX_PARSER = BytesParser(policy=email.policy.compat32)


@attrs.frozen
class Receipt:
    """How a message came in; every field None when that is unknown (no stored receipt)."""

    helo: str | None = None
    peer: str | None = None
    protocol: str | None = None  # the Received: header's WITH keyword, e.g. ESMTPS
    message_id: str | None = None  # tlsmta's queue id
    tls: bool | None = None
    tls_protocol: str | None = None
    tls_cipher: str | None = None
    client_certificate: str | None = None  # "not requested", "none", "yes (CN=...)", ...
    when: datetime.datetime | None = None
    lab: str | None = None  # the TLS lab's bad-certificate mode the client went on with
    auth_user: str | None = None  # the AUTH user name, None: no AUTH (or unknown)

    def as_json(self) -> dict[str, Any]:
        return {
            "helo": self.helo,
            "peer": self.peer,
            "auth_user": self.auth_user,
            "smtp": self.protocol,
            "queue_id": self.message_id,
            "tls": {
                "used": self.tls,
                "protocol": self.tls_protocol,
                "cipher": self.tls_cipher,
                "client_certificate": self.client_certificate,
                "lab": self.lab,
                # None: unknown (no receipt, or no TLS); False: a good certificate
                "client_accepted_bad_certificate": None if not self.tls else self.lab is not None,
            },
        }


def client_certificate_words(tls: Mapping[str, Any]) -> str:
    """What the client's certificate came to, from the ``received`` event's TLS fields
    (as the inbound session words it in its Received: header)."""
    subject = tls.get("subject")
    if subject is None:
        return "not requested" if tls.get("tls_verify", "no") == "no" else "none"
    reason = tls.get("reason")
    return f"{tls.get('verified')} ({subject})" + (f": {reason}" if reason else "")


def _instant(text: Any) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        return None


def receipt_of(record: Mapping[str, Any] | None) -> Receipt:
    """The facts in a stored receipt (:func:`tlsmta.storage._receipts.receipt_record`);
    all unknown without one."""
    if record is None:
        return Receipt()
    tls = record.get("tls") or {}
    used = tls.get("tls") == "tls"
    return Receipt(
        helo=record.get("helo") or None,
        peer=record.get("peer") or None,
        protocol=with_keyword(esmtp=bool(record.get("esmtp")), smtputf8=bool(record.get("smtputf8")), tls=used,
                              authenticated=bool(record.get("authenticated"))),
        message_id=record.get("queue_id"),
        tls=used,
        tls_protocol=tls.get("protocol") if used else None,
        tls_cipher=tls.get("cipher") if used else None,
        client_certificate=client_certificate_words(tls) if used else None,
        when=_instant(record.get("received_at")),
        lab=tls.get("lab") if used else None,
        auth_user=record.get("auth_user") or None,
    )


def parse_for_index(data: bytes) -> Message:
    """The message parsed for its list entry and search text (:func:`summary_of`, :func:`body_text`)."""
    return _INDEX_PARSER.parsebytes(data)


def parse_message(data: bytes) -> EmailMessage:
    """The message as the standard library's EmailMessage (policy.default)."""
    message = _PARSER.parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


@attrs.frozen
class LocalEnvelope:
    """The envelope as the Maildir delivery recorded it in front of the message."""

    sender: str
    recipients: tuple[str, ...]
    end: int  # offset of the first byte after those lines: the message as received


def local_envelope(data: bytes) -> LocalEnvelope:
    """The ``Return-Path:`` / ``Delivered-To:`` lines :func:`tlsmta.storage._maildir.local_headers`
    wrote at the top of the file, read as raw bytes.

    Only that leading block counts: it ends at the first other line, which is
    tlsmta's own ``Received:`` header, so a ``Delivered-To:`` the message's
    author wrote further down is never taken for an envelope recipient.  Values
    are not MIME-decoded (an address is not an encoded-word).  Local delivery
    never folds these lines; a continuation line is kept with its field so it
    is neither lost nor released as the first header line, and the address it
    makes is then refused wherever addresses are checked.
    """
    sender: str | None = None
    recipients: list[str] = []
    pos = 0
    while pos < len(data):
        newline = data.find(b"\n", pos)
        line_end = len(data) if newline < 0 else newline + 1
        line = data[pos:line_end].rstrip(b"\r\n")
        name, colon, value = line.partition(b":")
        name = name.lower()
        text = value.decode("utf-8", "replace").strip(" \t")
        if colon and name == b"return-path" and pos == 0:
            sender = text.removeprefix("<").removesuffix(">")
        elif colon and name == b"delivered-to":
            recipients.append(text)
        elif line[:1] in (b" ", b"\t") and pos > 0:
            folded = line.decode("utf-8", "replace")
            if recipients:
                recipients[-1] += folded
            elif sender is not None:
                sender += folded
        else:
            break
        pos = line_end
    return LocalEnvelope(sender or "", tuple(recipients), pos)


def envelope_of(data: bytes) -> tuple[str, list[str]]:
    """(sender, recipients) from the lines the Maildir delivery added."""
    envelope = local_envelope(data)
    return envelope.sender, list(envelope.recipients)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _field(message: Message, name: str) -> str:
    """A header field's value as the page shows it (encoded words decoded), whichever policy parsed it."""
    value = message.get(name)
    if value is None:
        return ""
    if isinstance(value, email.header.Header):  # compat32's value for raw 8-bit bytes: shown as U+FFFD
        return str(value)
    return str(email.policy.default.header_fetch_parse(name, value))


def _leaves(message: Message) -> Iterator[tuple[int, Message]]:
    for index, part in enumerate(message.walk()):
        if not part.is_multipart():
            yield index, part


def _filename(part: Message) -> str | None:
    try:
        return part.get_filename()
    except (TypeError, ValueError):
        return None


def _content_id(part: Message) -> str | None:
    value = part.get("Content-ID")
    if value is None:
        return None
    return str(value).strip().removeprefix("<").removesuffix(">") or None


def _is_attachment(part: Message) -> bool:
    """A download: disposition attachment, or a named non-text part that is not an inline
    part the HTML shows by its Content-ID (``<img src="cid:...">``)."""
    disposition = part.get_content_disposition()
    if disposition == "attachment":
        return True
    if _content_id(part) is not None:
        return False
    return _filename(part) is not None and part.get_content_maintype() not in ("text", "multipart")


def _decoded(part: Message) -> bytes:
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def _as_text(part: Message) -> str:
    charset = part.get_content_charset() or "utf-8"
    try:
        return _decoded(part).decode(charset, "replace")
    except LookupError:
        return _decoded(part).decode("utf-8", "replace")


def first_part(message: Message, content_type: str) -> tuple[int, Message] | None:
    """The first non-attachment leaf of this type (``text/plain``, ``text/html``)."""
    for index, part in _leaves(message):
        if part.get_content_type() == content_type and not _is_attachment(part):
            return index, part
    return None


def summary(message_key: str, data: bytes, stored_at: float, receipt: Receipt) -> dict[str, Any]:
    """The list entry for one stored message (JSON-ready)."""
    return summary_of(message_key, parse_message(data), data, stored_at, receipt)


def summary_of(key: str, message: Message, data: bytes, stored_at: float, receipt: Receipt) -> dict[str, Any]:
    """The list entry for one stored message (JSON-ready); ``data`` is the Maildir file,
    ``message`` it parsed."""
    sender, recipients = envelope_of(data)
    size = len(as_received(data))
    when = receipt.when or datetime.datetime.fromtimestamp(stored_at, datetime.timezone.utc)
    attachments = [index for index, part in _leaves(message) if _is_attachment(part)]
    return {
        "id": key,
        "envelope": {"from": sender, "to": recipients},
        "from": _field(message, "From"),
        "to": _field(message, "To"),
        "cc": _field(message, "Cc"),
        "subject": _field(message, "Subject"),
        "date": _field(message, "Date"),
        "message_id": _field(message, "Message-ID"),
        "size": size,
        "received_at": when.astimezone(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "received_ts": stored_at,
        "receipt": receipt.as_json(),
        "has_html": first_part(message, "text/html") is not None,
        "attachments": len(attachments),
    }


def detail(message_key: str, data: bytes, stored_at: float, receipt: Receipt) -> dict[str, Any]:
    """One message parsed: summary, every header, text, parts and attachments."""
    message = parse_message(data)
    out = summary_of(message_key, message, data, stored_at, receipt)
    out["headers"] = [[name, _text(value)] for name, value in message.items()]
    plain = first_part(message, "text/plain")
    out["text"] = _as_text(plain[1]) if plain else None
    html = first_part(message, "text/html")
    out["html_part"] = html[0] if html else None
    parts = []
    for index, part in _leaves(message):
        parts.append(
            {
                "index": index,
                "content_type": part.get_content_type(),
                "filename": _filename(part),
                "disposition": part.get_content_disposition(),
                "size": len(_decoded(part)),
                "attachment": _is_attachment(part),
                "content_id": _content_id(part),
                "thumbnail": part.get_content_type() in THUMBNAIL_TYPES,
            }
        )
    out["parts"] = parts
    return out


def part_of(data: bytes, index: int) -> tuple[Message, bytes] | None:
    """Leaf part ``index`` (as numbered in ``detail``) and its decoded bytes."""
    for i, part in _leaves(parse_message(data)):
        if i == index:
            return part, _decoded(part)
    return None


THUMBNAIL_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})  # raster: no script, unlike SVG
_CID = re.compile(r"""cid:([^"'\s)>]+)""", re.I)
# Links open in a new tab (the frame's sandbox allows popups): the mail never replaces itself in the frame.
_BASE = "<base target=\"_blank\">"


def html_of(data: bytes) -> str | None:
    """The message's HTML body for the sandboxed view, if it has one: ``cid:`` references to its
    own inline parts become ``data:`` URLs (the frame may load nothing else) and links open a new tab."""
    message = parse_message(data)
    found = first_part(message, "text/html")
    if found is None:
        return None
    inline = {cid: part for _, part in _leaves(message) if (cid := _content_id(part)) is not None}

    def data_url(match: re.Match[str]) -> str:
        part = inline.get(urllib.parse.unquote(match.group(1)))
        if part is None:
            return match.group(0)
        return f"data:{part.get_content_type()};base64,{base64.b64encode(_decoded(part)).decode('ascii')}"

    return _BASE + _CID.sub(data_url, _as_text(found[1]))


def body_text(message: Message) -> str:
    """The text a search looks through: the text/plain body, else the HTML's text without its tags."""
    plain = first_part(message, "text/plain")
    if plain is not None:
        return _as_text(plain[1])
    html = first_part(message, "text/html")
    return _TAG.sub(" ", _as_text(html[1])) if html is not None else ""


_TAG = re.compile(r"<[^>]*>")


def _own_received_end(data: bytes, start: int) -> int:
    """Where the ``Received:`` field tlsmta's inbound side wrote at ``start`` ends (``start``: none there)."""
    if not data[start:start + 9].lower() == b"received:":
        return start
    end = start
    while True:
        newline = data.find(b"\n", end)
        if newline < 0:
            return start
        end = newline + 1
        if data[end:end + 1] not in (b" ", b"\t"):
            break
    return end if b"(tlsmta)" in data[start:end] else start


def as_received(data: bytes) -> bytes:
    """The message as the client sent it, from its Maildir file: without the delivery's
    Return-Path/Delivered-To lines and tlsmta's own ``Received:`` field, with CRLF line
    ends again (the Maildir keeps LF; the DATA reader refused bare CR and LF)."""
    body = data[_own_received_end(data, local_envelope(data).end):]
    return body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def raw_text(received: bytes) -> str:
    """The bytes as received, decoded for reading with the message's top-level charset
    (UTF-8 when it names none or one Python does not know)."""
    charset = parse_message(received).get_content_charset() or "utf-8"
    try:
        return received.decode(charset, "replace")
    except LookupError:
        return received.decode("utf-8", "replace")
