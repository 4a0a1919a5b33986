"""The send API's message: ``POST /api/send`` JSON made into RFC 5322 bytes, sans I/O.

``{"from": ADDR, "to": [ADDR...], "cc": [...], "bcc": [...], "subject": "...",
"text": "...", "html": "...", "headers": {"Name": "value"},
"attachments": [{"filename": "a.pdf", "content_type": "application/pdf",
"content": BASE64, "inline": false, "content_id": "logo"}],
"smarthost": "HOST[:PORT]"}``; ``from`` and one of ``to``/``cc``/``bcc``
are required.  The envelope is ``from`` and every recipient (Bcc is not
written into the message).  Date and Message-ID are added unless given.
Without ``smarthost`` the message is captured like SMTP mail; with one it
is relayed there (see :mod:`tlsmta.devrelay._release`).
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import email.utils
import re
from email.message import EmailMessage
from typing import Any

import attrs

from tlsmta.errors import TlsmtaError

_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")  # RFC 5322 3.6.8 ftext: no space, colon or control
# Headers the API writes from its own fields; "headers" may not set them twice.
OWN_HEADERS = frozenset({"from", "to", "cc", "bcc", "subject", "content-type", "content-transfer-encoding",
                         "mime-version"})


class SendError(TlsmtaError, ValueError):
    """The request cannot be made into a message (the text says which field and why)."""


@attrs.frozen
class Outgoing:
    """A message the send API makes: envelope and bytes in wire form (CRLF)."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes
    smarthost: str | None


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise SendError(f'"{name}" must be a string')
    return value


def _addresses(body: dict[str, Any], name: str) -> list[str]:
    value = body.get(name, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(a, str) and a for a in value):
        raise SendError(f'"{name}" must be a list of addresses')
    return value


def _bare(address: str) -> str:
    """The mailbox of ``Name <box@host>`` (what goes into the envelope)."""
    return email.utils.parseaddr(address)[1] or address


def _attach(message: EmailMessage, index: int, item: Any) -> None:
    where = f"attachments[{index}]"
    if not isinstance(item, dict) or not isinstance(item.get("content"), str):
        raise SendError(f'{where} must be {{"filename": ..., "content_type": ..., "content": BASE64}}')
    try:
        payload = base64.b64decode(item["content"], validate=True)
    except (binascii.Error, ValueError):
        raise SendError(f"{where}.content is not base64") from None
    maintype, slash, subtype = str(item.get("content_type") or "application/octet-stream").partition("/")
    if not slash or not maintype or not subtype:
        raise SendError(f"{where}.content_type must be TYPE/SUBTYPE")
    filename = item.get("filename")
    if filename is not None and not isinstance(filename, str):
        raise SendError(f"{where}.filename must be a string")
    inline = bool(item.get("inline"))
    cid = item.get("content_id")
    target = message.get_body(("related", "html")) if inline else None
    if inline and target is not None and target.get_content_type() == "text/html":
        target.add_related(payload, maintype=maintype, subtype=subtype, cid=f"<{cid}>" if cid else None,
                           filename=filename, disposition="inline")
    else:
        message.add_attachment(payload, maintype=maintype, subtype=subtype, filename=filename,
                               disposition="inline" if inline else "attachment")


def build_message(body: Any, hostname: str) -> Outgoing:
    """The message a send request describes; :class:`SendError` for a bad field."""
    try:
        return _build(body, hostname)
    except SendError:
        raise
    except ValueError as e:  # what the email package refuses in a header (a CR or LF in a value)
        raise SendError(f"cannot make a message of it: {e}") from None


def _build(body: Any, hostname: str) -> Outgoing:
    if not isinstance(body, dict):
        raise SendError('send a JSON object: {"from": ..., "to": [...], "subject": ..., "text": ...}')
    sender = _text(body, "from")
    if not sender:
        raise SendError('"from" is required')
    to, cc, bcc = (_addresses(body, name) for name in ("to", "cc", "bcc"))
    if not (to or cc or bcc):
        raise SendError('no recipients: give "to", "cc" or "bcc"')
    text, html = _text(body, "text"), _text(body, "html")
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = sender
    if to:
        message["To"] = ", ".join(to)
    if cc:
        message["Cc"] = ", ".join(cc)
    message["Subject"] = _text(body, "subject") or ""
    extra = body.get("headers") or {}
    if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
        raise SendError('"headers" must be an object of strings')
    for name, value in extra.items():
        if name.lower() in OWN_HEADERS or not _FIELD_NAME.fullmatch(name):
            raise SendError(f'"headers": {name!r} cannot be set there')
        message[name] = value
    if "Date" not in message:
        message["Date"] = email.utils.formatdate(usegmt=True)
    if "Message-ID" not in message:
        message["Message-ID"] = email.utils.make_msgid(domain=hostname)
    if text is None and html is not None:  # HTML only
        message.set_content(html, subtype="html")
    else:
        message.set_content(text or "")
        if html is not None:
            message.add_alternative(html, subtype="html")
    attachments = body.get("attachments") or []
    if not isinstance(attachments, list):
        raise SendError('"attachments" must be a list')
    for index, item in enumerate(attachments):
        _attach(message, index, item)
    smarthost = body.get("smarthost")
    if smarthost is not None and not isinstance(smarthost, str):
        raise SendError('"smarthost" must be "HOST[:PORT]"')
    recipients = tuple(_bare(a) for a in [*to, *cc, *bcc])
    return Outgoing(_bare(sender), recipients, message.as_bytes(), smarthost or None)
