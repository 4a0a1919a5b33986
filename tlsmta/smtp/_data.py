"""The DATA phase, sans I/O: end-of-data detection, dot-unstuffing, checks.

:class:`DataReader` is fed the bytes received after ``354`` and hands back
the message bytes to store, without ever buffering more than two bytes of
a line: a 50 MiB line costs no memory.  DATA ends only at ``<CRLF>.<CRLF>``
(RFC 5321 4.1.1.4).  A bare CR or bare LF anywhere, a NUL octet anywhere, a
line longer than the limit, or a message over the size limit makes the
message unacceptable;
the reader then keeps scanning for the real end of data, so the client's
later bytes are never read as commands (SMTP smuggling, and the stock
Twisted fault of leaving DATA mode on a long line).

A message whose first line starts with SP or HTAB is refused too: RFC 5322
(2.2.3, 3.2.2) has no place for a continuation line before the first field,
and since our ``Received:`` header is written directly before the client's
bytes, such a line would be folded into our own trace header (letting a
client append "with ESMTPSA" or a client-certificate claim to it).
"""

from __future__ import annotations

import re

import attrs

from tlsmta.smtp._reply import Reply

END_MARK = b".\r\n"


@attrs.frozen
class DataProblem:
    """Why a message is refused at the end of DATA; ``code``/``status`` is the reply."""

    code: int
    status: str
    text: str

    @property
    def reply(self) -> Reply:
        return Reply.of(self.code, self.status, self.text)


BARE_LF = DataProblem(550, "5.5.2", "message contains a bare <LF>; lines must end with <CR><LF>")
BARE_CR = DataProblem(550, "5.5.2", "message contains a bare <CR>; lines must end with <CR><LF>")
# RFC 5321 4.1.1.4 and RFC 5322 3.5 leave no place for NUL, and a receiver that
# drops it before looking for the end of data turns <CRLF><NUL>.<CRLF> into
# <CRLF>.<CRLF> (SEC Consult's outbound SMTP smuggling list): refused like bare CR/LF.
NUL = DataProblem(550, "5.5.2", "message contains a NUL octet; SMTP data must not carry NUL")
LINE_TOO_LONG = DataProblem(550, "5.5.6", "message contains a line longer than {limit} octets")
TOO_BIG = DataProblem(552, "5.3.4", "message size exceeds fixed limit of {limit} octets")
STARTS_FOLDED = DataProblem(
    554, "5.6.0", "message starts with a continuation line (SP or HTAB before the first header field)"
)

# When a message has several problems the first in this order is reported,
# so the reply does not depend on how the network split the message.
_RANK = (BARE_LF, BARE_CR, NUL, LINE_TOO_LONG, TOO_BIG, STARTS_FOLDED)


@attrs.define
class DataResult:
    """What one :meth:`DataReader.feed` produced."""

    body: bytes
    ended: bool = False
    rest: bytes = b""  # bytes after the end-of-data line (pipelined commands)


class DataReader:
    """Streams one message's DATA section.

    ``max_line_length`` counts octets before CRLF; ``max_size`` counts the
    message as received (stuffing dots included), as SIZE does.
    """

    def __init__(self, max_line_length: int = 998, max_size: int = 50 * 1024 * 1024):
        self.max_line_length = max_line_length
        self.max_size = max_size
        self.problem: DataProblem | None = None
        self.received = 0  # octets of message content seen
        self._carry = b""  # at most 2 bytes: a held-back CR, or "." / ".\r" at a line start
        self._rank = len(_RANK)  # rank of self.problem
        self._at_line_start = True
        self._line_length = 0
        self._done = False
        self._started = False  # the first octet of the (unstuffed) message has been looked at

    def _fail(self, problem: DataProblem, limit: int | None = None) -> None:
        rank = _RANK.index(problem)
        if rank < self._rank:
            self._rank = rank
            if limit is not None:
                problem = attrs.evolve(problem, text=problem.text.format(limit=limit))
            self.problem = problem

    def _check_lines(self, region: bytes) -> None:
        """Checks for whole lines (``region`` ends with CRLF or is empty), in bulk."""
        crlf = region.count(b"\r\n")
        if region.count(b"\n") != crlf:
            self._fail(BARE_LF)
        if region.count(b"\r") != crlf:
            self._fail(BARE_CR)
        if b"\x00" in region:
            self._fail(NUL)
        lines = region.split(b"\r\n")
        # The first line continues whatever partial line came before.
        longest = max(self._line_length + len(lines[0]), max(map(len, lines)))
        if longest > self.max_line_length:
            self._fail(LINE_TOO_LONG, self.max_line_length)

    def _check_partial(self, segment: bytes) -> None:
        """Checks for the start of a line whose CRLF has not arrived yet."""
        if b"\n" in segment:
            self._fail(BARE_LF)
        if b"\r" in segment:
            self._fail(BARE_CR)
        if b"\x00" in segment:
            self._fail(NUL)
        self._line_length += len(segment)
        if self._line_length > self.max_line_length:
            self._fail(LINE_TOO_LONG, self.max_line_length)

    def feed(self, data: bytes) -> DataResult:
        """Consume ``data``; return message bytes (CRLF line endings, unstuffed).

        Works on whole buffers with bytes methods (find, count, split,
        replace) rather than line by line: DATA is the hot path.
        """
        if self._done:
            raise RuntimeError("DataReader fed after end of data")
        buf = self._carry + data if self._carry else data
        self._carry = b""
        if self._at_line_start and buf.startswith(END_MARK):
            self._done = True
            return self._result([], ended=True, rest=buf[3:])
        end = buf.find(b"\r\n.\r\n")
        if end >= 0:
            lines, tail, rest = buf[: end + 2], b"", buf[end + 5 :]
        else:
            split = buf.rfind(b"\r\n") + 2  # 1 when there is no CRLF: then all of it is tail
            split = 0 if split == 1 else split
            lines, tail, rest = buf[:split], buf[split:], b""
        out = []
        if lines:
            self._check_lines(lines)
            self.received += len(lines)
            if self._at_line_start and lines.startswith(b"."):
                lines = lines[1:]  # transparency: drop a line's leading dot (RFC 5321 4.5.2)
            out.append(lines.replace(b"\r\n.", b"\r\n"))
            self._line_length = 0
            self._at_line_start = True
        if end >= 0:
            self._done = True
            return self._result(out, ended=True, rest=rest)
        if tail:
            out.append(self._partial(tail))
        return self._result(out)

    def _partial(self, tail: bytes) -> bytes:
        """The unterminated last line of a read: hold back what may start an end mark or a CRLF."""
        if self._at_line_start and tail.startswith(b"."):
            if len(tail) < 3 and END_MARK.startswith(tail):
                self._carry = tail  # "." or ".\r": end of data or a stuffed line, cannot tell yet
                return b""
            tail = tail[1:]
            self._line_length += 1
            self.received += 1
        self._at_line_start = False
        if tail.endswith(b"\r"):
            self._carry, tail = b"\r", tail[:-1]  # may be the first half of a CRLF
        self._check_partial(tail)
        self.received += len(tail)
        return tail

    def _result(self, out: list[bytes], ended: bool = False, rest: bytes = b"") -> DataResult:
        if self.received > self.max_size:
            self._fail(TOO_BIG, self.max_size)
        if not self._started:
            first = next((chunk[:1] for chunk in out if chunk), b"")
            if first:
                self._started = True
                if first in (b" ", b"\t"):
                    self._fail(STARTS_FOLDED)
        body = b"" if self.problem is not None else b"".join(out)
        return DataResult(body, ended, rest)


TOO_MANY_HOPS = DataProblem(554, "5.4.6", "too many Received: headers ({hops}); mail loop?")


class HopCounter:
    """Counts ``Received:`` lines in a message's header section, streaming.

    Fed the unstuffed CRLF message as it arrives; keeps at most a few bytes
    of the current line (its start is all that matters) and stops at the
    blank line that ends the headers.
    """

    _KEEP = 16

    def __init__(self) -> None:
        self.hops = 0
        self.done = False
        self._tail = b""

    def feed(self, data: bytes) -> None:
        if self.done or not data:
            return
        text = self._tail + data
        end = text.find(b"\r\n\r\n")
        if end >= 0:
            text = text[: end + 4]  # the body is none of our business
        *complete, partial = text.split(b"\r\n")
        for index, line in enumerate(complete):
            if not line:  # the blank line: the headers end here
                self._count(complete[:index])
                self.done = True
                return
        self._count(complete)
        # Only a line's start matters; keep a CR that may pair with the next read's LF.
        self._tail = partial[: self._KEEP] + (b"\r" if partial.endswith(b"\r") and len(partial) > self._KEEP else b"")

    def _count(self, lines: list[bytes]) -> None:
        self.hops += sum(1 for line in lines if line[:9].lower() == b"received:")


_MSG_ID = re.compile(r"<[^<>\s]*>")


def message_id_of(value: bytes) -> str:
    """The ``<...>`` of a Message-ID field's value (RFC 5322 3.6.4), or the first word
    of a malformed one; "" when empty. Bytes that are not UTF-8 are replaced."""
    text = value.decode("utf-8", "replace").strip()
    found = _MSG_ID.search(text)
    if found is not None:
        return found.group()
    return text.split()[0] if text else ""


class HeaderScanner:
    """The header facts tlsmta keeps, found in one streaming walk of the header section:
    ``TLS-Required: No`` (RFC 8689 3; name and value case-insensitive, nothing else in the
    value) and the first ``Message-ID`` (for the log lines).

    Fed the CRLF message as it is stored, it goes field by field (unfolded),
    keeps at most :attr:`KEEP` bytes of the current line and field, and stops
    at the blank line that ends the header section, so the body is never
    looked at.  Call :meth:`finish` at the end of the message (a message that
    is all header section has no blank line).
    """

    KEEP = 1000  # a field line's limit (RFC 5322 2.1.1): a Message-ID fits whole

    def __init__(self) -> None:
        self.tls_required_no = False
        self.message_id = ""
        self.done = False
        self._partial = b""
        self._field: bytes | None = None

    def feed(self, data: bytes) -> None:
        if self.done or not data:
            return
        text = self._partial + data
        ends = [i for i in (text.find(b"\n\r\n"), text.find(b"\n\n")) if i >= 0]
        if ends:
            text = text[: min(ends) + 3]  # up to the blank line; the body is none of our business
        lines = text.split(b"\n")
        self._partial = lines.pop()[: self.KEEP]
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                self._partial = b""
                self.finish()
                return
            if line[:1] in (b" ", b"\t"):
                if self._field is not None:  # a folded continuation of the field
                    self._field = (self._field + line)[: self.KEEP]
            else:
                self._end_field()
                self._field = line[: self.KEEP]

    def finish(self) -> None:
        """The header section is over: judge the field still open."""
        if self._partial and not self.done:
            self.feed(b"\n")
        self._end_field()
        self.done = True
        self._partial = b""

    def _end_field(self) -> None:
        if self._field is not None:
            name, colon, value = self._field.partition(b":")
            if colon:
                self._judge(name.strip().lower(), value)
        self._field = None

    def _judge(self, name: bytes, value: bytes) -> None:
        if name == b"tls-required" and value.strip(b" \t").lower() == b"no":
            self.tls_required_no = True
        elif name == b"message-id" and not self.message_id:
            self.message_id = message_id_of(value)


def says_tls_required_no(message: bytes) -> bool:
    """Whether a whole CRLF message's header section has ``TLS-Required: No``."""
    scanner = HeaderScanner()
    scanner.feed(message)
    scanner.finish()
    return scanner.tls_required_no
