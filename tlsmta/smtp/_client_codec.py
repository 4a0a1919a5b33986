"""The SMTP client's wire format, sans I/O: replies in, dot-stuffed DATA out.

Fixes, against stock twisted.mail.smtp.SMTPClient.transformChunk:
every line is dot-stuffed, the first included and lines that cross chunk
boundaries; CRLF input is never turned into CR CR LF; a lone LF or CR in
the input becomes CRLF so the next hop never sees a bare line ending.
"""

from __future__ import annotations

import re

from tlsmta.errors import TlsmtaError
from tlsmta.smtp._reply import Reply

__all__ = ["Reply", "ReplyError", "ReplyParser", "DotStuffer", "parse_ehlo"]

MAX_REPLY_LINE = 4096  # longer reply lines are cut (RFC 5321 allows 512)
MAX_REPLY_LINES = 256


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class ReplyError(TlsmtaError):
    """The server's output is not SMTP."""


class ReplyParser:
    """Turns server bytes into Replies; holds at most one partial line."""

    def __init__(self) -> None:
        self._buffer = b""
        self._lines: list[str] = []
        self._code: int | None = None

    def push(self, data: bytes) -> None:
        self._buffer += data

    def pop(self) -> Reply | None:
        """The next complete reply, or None.  One at a time, so that a caller
        reacting to a reply (STARTTLS's 220) can discard what follows it."""
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_REPLY_LINE:
                    raise ReplyError("reply line too long")
                return None
            raw, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
            reply = self._line(raw.rstrip(b"\r")[:MAX_REPLY_LINE])
            if reply is not None:
                return reply

    def discard_buffered(self) -> bytes:
        """Drop bytes received but not yet parsed (after 220 to STARTTLS: injection defence)."""
        dropped, self._buffer = self._buffer, b""
        return dropped

    def _line(self, raw: bytes) -> Reply | None:
        if len(raw) < 3 or not raw[:3].isdigit() or raw[3:4] not in (b" ", b"-", b""):
            raise ReplyError(f"not an SMTP reply: {raw[:60]!r}")
        code = int(raw[:3])
        if self._code is not None and code != self._code:
            raise ReplyError("multi-line reply changed its code")
        self._code = code
        # A bare CR or other control character from the server must not reach our logs
        # or DSNs, where it could forge lines; it becomes "?".
        self._lines.append(_CONTROL.sub("?", raw[4:].decode("utf-8", "replace")))
        if len(self._lines) > MAX_REPLY_LINES:
            raise ReplyError("reply has too many lines")
        if raw[3:4] == b"-":
            return None
        reply = Reply(code, tuple(self._lines))
        self._lines, self._code = [], None
        return reply


def parse_ehlo(reply: Reply) -> dict[str, str]:
    """EHLO keywords (upper-case) to their parameters (``SIZE`` -> ``"1000"``)."""
    caps = {}
    for line in reply.lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            caps[keyword.upper()] = params.strip()
    return caps


class DotStuffer:
    """Encodes a message body for DATA, chunk by chunk (RFC 5321 4.5.2).

    Input may end lines with CRLF, LF or CR; output always uses CRLF and
    doubles a leading dot on every line.  :meth:`finish` returns the bytes
    that end DATA (a CRLF if the body did not end with one, then ".\\r\\n").
    """

    def __init__(self) -> None:
        self._at_line_start = True
        self._pending_cr = False  # the previous chunk ended in CR: its LF may come next

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the CRLF was already written when the CR arrived
        self._pending_cr = chunk.endswith(b"\r")
        # Normalise every line ending to CRLF, then stuff.
        text = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        if self._at_line_start and text.startswith(b"."):
            text = b"." + text
        text = text.replace(b"\r\n.", b"\r\n..")
        if text:
            self._at_line_start = text.endswith(b"\r\n")
        return text

    def finish(self) -> bytes:
        return (b"" if self._at_line_start else b"\r\n") + b".\r\n"
