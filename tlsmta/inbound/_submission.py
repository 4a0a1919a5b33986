"""Message submission (RFC 6409 8.2, 8.3): ``Date:`` and ``Message-ID:`` added when a message has none.

Only on listeners with ``role = "submission"``: an MX passes mail on as it
came.  The message streams to storage as it arrives, so the fields are
added at the end of the header section (where RFC 5322 allows any field,
and where Postfix's cleanup puts them), found by :class:`HeaderCompletion`
line by line without holding more than the current header line.
"""

from __future__ import annotations

import re

from twisted.internet.defer import Deferred

from tlsmta.storage import MessageWriter

_FIELD_NAME = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
# A header line longer than this is taken as the end of the header section (the DATA
# reader refuses a line over max_line_length anyway); it bounds what one session holds.
LONGEST_HEADER_LINE = 64 * 1024


class HeaderCompletion:
    """Fed the message (CRLF lines, as stored), gives it back with the missing fields
    inserted before the line that ends the header section."""

    def __init__(self, date: str, message_id: str):
        self._wanted = {b"date": f"Date: {date}\r\n".encode("ascii"),
                        b"message-id": f"Message-ID: {message_id}\r\n".encode("ascii")}
        self._line = b""  # the current header line, until its LF arrives
        self._done = False

    def feed(self, data: bytes) -> bytes:
        if self._done:
            return data
        out = []
        start = 0
        while not self._done:
            end = data.find(b"\n", start)
            if end < 0:
                self._line += data[start:]
                if len(self._line) > LONGEST_HEADER_LINE:
                    out.append(self._finish(b""))
                break
            line, self._line, start = self._line + data[start : end + 1], b"", end + 1
            if line[:1] in (b" ", b"\t"):
                out.append(line)  # a folded continuation: still the header section
                continue
            name = _FIELD_NAME.match(line)
            if name is None:  # the blank line, or a body with no blank line before it
                blank = line in (b"\r\n", b"\n")
                out.append(self._finish((line if blank or not self._wanted else b"\r\n" + line) + data[start:]))
                break
            self._wanted.pop(name[1].lower(), None)
            out.append(line)
        return b"".join(out)

    def finish(self) -> bytes:
        """The end of the message: the fields, if it was all header section."""
        return b"" if self._done else self._finish(b"")

    def _finish(self, rest: bytes) -> bytes:
        """The missing fields, then what is held and ``rest``; from here on bytes pass through."""
        held, self._line, self._done = self._line, b"", True
        return b"".join(self._wanted.values()) + held + rest


class CompletingWriter:
    """A :class:`~tlsmta.storage.MessageWriter` whose message gets :class:`HeaderCompletion`."""

    def __init__(self, writer: MessageWriter, completion: HeaderCompletion):
        self._writer = writer
        self._completion = completion

    def write(self, data: bytes) -> None:
        completed = self._completion.feed(data)
        if completed:
            self._writer.write(completed)

    def commit(self, tls_required_no: bool = False, message_id_header: str = "") -> Deferred[None]:
        self._writer.write(self._completion.finish())
        return self._writer.commit(tls_required_no, message_id_header)

    def abort(self) -> None:
        self._writer.abort()
