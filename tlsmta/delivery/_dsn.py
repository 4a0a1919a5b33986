"""Delivery status notifications (RFC 3464 multipart/report), sans I/O.

The report is built with the ``email`` package under the SMTP policy (CRLF,
lines folded to 78 characters), so that what a remote host said, up to a
4,096 character reply line in any script, never makes a line longer than
RFC 5322 allows.  The human-readable part is quoted-printable UTF-8 and
carries the reply as it was.  The delivery-status fields are US-ASCII
(RFC 3464; RFC 6533 keeps them so outside message/global-delivery-status):
other characters are written ``\\x{HHHH}`` as RFC 6533 does for addresses,
and the fields are folded here, at spaces, rather than by the email
package, which would turn a long word into RFC 2047 encoded-words that DSN
parsers do not decode.

Diagnostic-Code is typed ``smtp`` only for what a remote host replied, with
that host as Remote-MTA; what tlsmta decided itself (a TLS policy failure, no
MX, a DNS failure, a timeout) is typed ``X-tlsmta`` (an RFC 3464 x-type, as
Postfix writes ``X-Postfix``) with its reason, and names no Remote-MTA.
"""

from __future__ import annotations

import email
import email.policy
import secrets
from collections.abc import Sequence
from datetime import datetime
from email.message import EmailMessage, Message, MIMEPart
from email.policy import EmailPolicy
from email.utils import format_datetime

import attrs

from tlsmta.storage import RecipientState

MAX_RETURNED_HEADERS = 64 * 1024
MAX_LINE = 998  # RFC 5322 2.1.1, without the CRLF


def original_headers(body_start: bytes) -> bytes:
    """The header section of a stored message (CRLF), cut at a sane size."""
    end = body_start.find(b"\r\n\r\n")
    headers = body_start[: end + 2] if end >= 0 else body_start
    return headers[:MAX_RETURNED_HEADERS]


def fold_field(name: str, value: str, width: int = 78) -> str:
    """``name: value`` folded at spaces into lines of ``width`` where the words allow
    and never over MAX_LINE: a longer word is cut, which puts a space into it once
    unfolded (no reply has such a word but a hostile one)."""
    head = f"{name}:"
    lines = [head]
    for word in value.rstrip().split(" "):
        if word and lines[-1] != head and len(lines[-1]) + 1 + len(word) > width:
            lines.append("")
        lines[-1] += " " + word
        while len(lines[-1]) > MAX_LINE:
            lines[-1], rest = lines[-1][:MAX_LINE], lines[-1][MAX_LINE:]
            lines.append(" " + rest)
    return "\r\n".join(lines)


def ascii_text(text: str) -> str:
    """Text for a delivery-status field: a character outside US-ASCII as RFC 6533's ``\\x{HHHH}``."""
    return "".join(c if c.isascii() else f"\\x{{{ord(c):X}}}" for c in text)


def dsn_status(rcpt: RecipientState, default: str) -> str:
    """The RFC 3463 status a failed recipient is reported with: its last reply's,
    else ``default`` (5.0.0 for a rejection, 4.4.7 for an expiry)."""
    reply = rcpt.last_reply
    status = reply.enhanced if reply is not None else None
    # A 4.x.x status stays as it is on expiry, as Postfix reports it (RFC 3463 4.4.7).
    return status if status is not None and status[0] in "45" else default


def diagnostic(rcpt: RecipientState) -> tuple[str | None, str | None]:
    """(Remote-MTA, Diagnostic-Code) for a recipient's latest result: ``smtp;`` and the host
    only for what that host replied; tlsmta's own verdict is ``X-tlsmta;`` with its reason."""
    reply = rcpt.last_reply
    if reply is None:
        return None, None
    if rcpt.ours:
        at = f" (at {rcpt.remote})" if rcpt.remote else ""
        return None, f"X-tlsmta; {reply.text or rcpt.last}{at}"
    # A record from before ``ours`` existed is read as the remote's reply, as it was then reported.
    return (f"dns; {rcpt.remote}" if rcpt.remote else None), f"smtp; {rcpt.last_shown}"


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
    returned: bool = False,
    last_attempt: datetime | None = None,
    delayed: bool = False,
    retry_until: datetime | None = None,
) -> bytes:
    """A bounce for ``failed`` recipients, addressed to ``sender`` (never called for a null sender);
    ``returned``: the postmaster returned it (``tlsmta queue bounce``); ``last_attempt``: when the
    latest attempt ended (None: never tried).  ``delayed``: a warning instead (Action: delayed,
    RFC 3464 2.3.3) for recipients still queued, retried until ``retry_until``."""
    # An SMTPUTF8 sender's address can only be written as UTF-8 (RFC 6532).  The
    # delivery-status fields are folded by fold_field: the email package keeps them.
    policy = (email.policy.SMTP if sender.isascii() else email.policy.SMTPUTF8).clone(refold_source="none")
    default = "4.0.0" if delayed else ("4.4.7" if expired else "5.0.0")
    report = EmailMessage(policy=policy)
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{reporting_mta}>"
    report["To"] = f"<{sender}>"
    report["Subject"] = "Delayed Mail (still being retried)" if delayed else "Undelivered Mail Returned to Sender"
    report["Date"] = format_datetime(now)
    report["Message-ID"] = f"<{message_id}.{secrets.token_hex(4)}@{reporting_mta}>"
    report["Auto-Submitted"] = "auto-replied"
    report["MIME-Version"] = "1.0"
    report.add_header("Content-Type", "multipart/report", report_type="delivery-status")
    report.preamble = "This is a MIME-encapsulated message."
    human = (
        _delay_part(reporting_mta, failed, arrival, now, retry_until, policy) if delayed
        else _human_part(reporting_mta, failed, expired, policy, returned)
    )
    outcome = _Outcome("delayed" if delayed else "failed", default, last_attempt, retry_until)
    parts = (
        human,
        _status_part(reporting_mta, message_id, arrival, failed, outcome, policy),
        _headers_part(headers, policy),
    )
    for part in parts:
        # typeshed's attach() takes the message's own class only; the email package's subparts are MIMEParts.
        report.attach(part)  # type: ignore[arg-type]
    return report.as_bytes()


def _human_part(reporting_mta: str, failed: Sequence[RecipientState], expired: bool, policy: EmailPolicy[EmailMessage],
                returned: bool = False) -> MIMEPart:
    lines = [
        f"This is the mail system at host {reporting_mta}.",
        "",
        "I'm sorry to have to inform you that your message could not",
        "be delivered to one or more recipients." + (" It stayed in the queue too long." if expired else ""),
        *(["It was returned to sender by the postmaster; the last attempt's result follows."] if returned else []),
        "",
        *(f"<{rcpt.address}>: {rcpt.last_shown or 'delivery failed'}" for rcpt in failed),
        "",
    ]
    part = MIMEPart(policy=policy)
    # Quoted-printable whatever the text: a remote host's reply may be long or not ASCII.
    part.set_content("\n".join(lines), charset="utf-8", cte="quoted-printable")
    return part


def _delay_part(reporting_mta: str, delayed: Sequence[RecipientState], arrival: datetime, now: datetime,
                retry_until: datetime | None, policy: EmailPolicy[EmailMessage]) -> MIMEPart:
    hours = max(0, int((now - arrival).total_seconds() // 3600))
    until = f" It will be retried until {format_datetime(retry_until)}." if retry_until is not None else ""
    lines = [
        f"This is the mail system at host {reporting_mta}.",
        "",
        "####################################################################",
        "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #",
        "####################################################################",
        "",
        f"Your message could not be delivered for more than {hours} hour(s).{until}",
        "",
        *(f"<{rcpt.address}>: {rcpt.last_shown or 'not yet delivered'}" for rcpt in delayed),
        "",
    ]
    part = MIMEPart(policy=policy)
    part.set_content("\n".join(lines), charset="utf-8", cte="quoted-printable")
    return part


@attrs.frozen
class _Outcome:
    """What every recipient block of one report says alike."""

    action: str  # failed | delayed
    default_status: str
    last_attempt: datetime | None
    retry_until: datetime | None


def _status_part(
    reporting_mta: str, message_id: str, arrival: datetime, failed: Sequence[RecipientState], outcome: _Outcome,
    policy: EmailPolicy[EmailMessage],
) -> MIMEPart:
    per_message = [
        ("Reporting-MTA", f"dns; {reporting_mta}"),
        ("X-Tlsmta-Queue-ID", message_id),
        ("Arrival-Date", format_datetime(arrival)),
    ]
    blocks: list[Message | str] = [_fields_block(per_message, policy)]
    for rcpt in failed:
        # RFC 6533 3: an address that is not ASCII is of type utf-8, not rfc822.
        fields = [
            ("Final-Recipient", f"{'rfc822' if rcpt.address.isascii() else 'utf-8'}; {rcpt.address}"),
            ("Action", outcome.action),
            ("Status", _as_action(dsn_status(rcpt, outcome.default_status), outcome.action)),
        ]
        remote_mta, diagnostic_code = diagnostic(rcpt)
        if remote_mta is not None:
            fields.append(("Remote-MTA", remote_mta))
        if diagnostic_code is not None:
            fields.append(("Diagnostic-Code", diagnostic_code))
        if outcome.last_attempt is not None and rcpt.last:
            fields.append(("Last-Attempt-Date", format_datetime(outcome.last_attempt)))
        if outcome.retry_until is not None:
            fields.append(("Will-Retry-Until", format_datetime(outcome.retry_until)))
        blocks.append(_fields_block(fields, policy))
    part = MIMEPart(policy=policy)
    part["Content-Type"] = "message/delivery-status"
    part.set_payload(blocks)
    return part


def _as_action(status: str, action: str) -> str:
    """A delayed recipient's status is temporary (4.x.x) even when soft_bounce kept a 5xx."""
    return "4" + status[1:] if action == "delayed" and status.startswith("5") else status


def _fields_block(fields: list[tuple[str, str]], policy: EmailPolicy[EmailMessage]) -> Message:
    """One block of delivery-status fields, folded here and kept so by the policy."""
    text = "".join(fold_field(name, ascii_text(value)) + "\r\n" for name, value in fields)
    return email.message_from_string(text, policy=policy)


def _headers_part(headers: bytes, policy: EmailPolicy[EmailMessage]) -> MIMEPart:
    """The original header section; quoted-printable only when it is not plain 7-bit text
    (UTF-8 headers of an SMTPUTF8 message, a line longer than RFC 5322 allows)."""
    text = headers.rstrip(b"\r\n") + b"\r\n"
    plain = text.isascii() and all(len(line) <= MAX_LINE for line in text.split(b"\r\n"))
    part = MIMEPart(policy=policy)
    part.set_content(text, maintype="text", subtype="rfc822-headers", cte="7bit" if plain else "quoted-printable")
    return part
