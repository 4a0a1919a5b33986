"""The ``Received:`` trace header (RFC 5321 4.4), sans I/O."""

from __future__ import annotations

import functools
import re
from datetime import datetime
from email.utils import format_datetime

import attrs

# Besides spaces and controls, "(", ")" and "\\" go: they would open or close
# a comment (RFC 5322 3.2.2) and let a HELO swallow the "([ip])" that follows.
_UNSAFE = re.compile(r"[^\x21-\x7e]|[()\\]")


def _clean(text: str, limit: int = 255) -> str:
    """Client-supplied text as a header-safe token (no spaces, controls, CR/LF, comment delimiters)."""
    return _UNSAFE.sub("?", text)[:limit] or "?"


@functools.lru_cache(maxsize=8)
def _date(when: datetime) -> str:
    """RFC 5322 date; one per second is enough, and formatting it shows in profiles."""
    return format_datetime(when)


@attrs.frozen
class TraceFacts:
    """Facts of one received transaction that go into the header."""

    helo: str
    peer_ip: str
    by_host: str
    message_id: str
    when: datetime
    esmtp: bool = True
    tls_protocol: str | None = None
    tls_cipher: str | None = None
    authenticated: bool = False
    client_cert: str | None = None  # e.g. 'verified "CN=x" issuer "CN=ca"'
    recipient: str | None = None  # only when there is exactly one
    smtputf8: bool = False


def protocol_keyword(facts: TraceFacts) -> str:
    """WITH keyword of these facts (see :func:`with_keyword`)."""
    return with_keyword(esmtp=facts.esmtp, smtputf8=facts.smtputf8, tls=bool(facts.tls_protocol),
                        authenticated=facts.authenticated)


def with_keyword(*, esmtp: bool, smtputf8: bool, tls: bool, authenticated: bool) -> str:
    """WITH keyword: SMTP, ESMTP[S][A] (RFC 3848), UTF8SMTP[S][A] with SMTPUTF8 (RFC 6531)."""
    if not esmtp:
        return "SMTP"
    base = "UTF8SMTP" if smtputf8 else "ESMTP"
    return base + ("S" if tls else "") + ("A" if authenticated else "")


def received_header(facts: TraceFacts) -> bytes:
    """A folded ``Received:`` header line ending in CRLF."""
    lines = [f"Received: from {_clean(facts.helo)} ([{_clean(facts.peer_ip, 64)}])"]
    if facts.tls_protocol:
        tls = f"(using {_clean(facts.tls_protocol, 32)} with cipher {_clean(facts.tls_cipher or 'unknown', 64)}"
        lines.append(f"\t{tls};")
        lines.append(f"\tclient certificate: {_header_text(facts.client_cert or 'none')})")
    lines.append(f"\tby {facts.by_host} (tlsmta) with {protocol_keyword(facts)} id {facts.message_id}")
    if facts.recipient:
        lines.append(f"\tfor <{_header_text(facts.recipient)}>")
    lines[-1] += f"; {_date(facts.when.replace(microsecond=0))}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def _header_text(text: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f()\\]", "?", text)[:300]
