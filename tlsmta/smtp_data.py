"""The DATA phase, sans I/O: end-of-data detection, dot-unstuffing, checks.

:class:`DataReader` is fed the bytes received after ``354`` and hands back
the message bytes to store, without ever buffering more than two bytes of
a line: a 50 MiB line costs no memory.  DATA ends only at ``<CRLF>.<CRLF>``
(RFC 5321 4.1.1.4).  A bare CR or bare LF anywhere, a line longer than the
limit, or a message over the size limit makes the message unacceptable;
the reader then keeps scanning for the real end of data, so the client's
later bytes are never read as commands (SMTP smuggling, and the stock
Twisted fault of leaving DATA mode on a long line).
"""

from __future__ import annotations

import attrs

END_MARK = b".\r\n"


@attrs.frozen
class DataProblem:
    """Why a message is refused at the end of DATA; ``code``/``status`` is the reply."""

    code: int
    status: str
    text: str

    @property
    def reply(self) -> tuple[int, str]:
        return self.code, f"{self.status} {self.text}"


BARE_LF = DataProblem(550, "5.5.2", "message contains a bare <LF>; lines must end with <CR><LF>")
BARE_CR = DataProblem(550, "5.5.2", "message contains a bare <CR>; lines must end with <CR><LF>")
LINE_TOO_LONG = DataProblem(550, "5.5.6", "message contains a line longer than {limit} octets")
TOO_BIG = DataProblem(552, "5.3.4", "message size exceeds fixed limit of {limit} octets")

# When a message has several problems the first in this order is reported,
# so the reply does not depend on how the network split the message.
_RANK = (BARE_LF, BARE_CR, LINE_TOO_LONG, TOO_BIG)


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

    def _fail(self, problem: DataProblem, limit: int | None = None) -> None:
        rank = _RANK.index(problem)
        if rank < self._rank:
            self._rank = rank
            if limit is not None:
                problem = attrs.evolve(problem, text=problem.text.format(limit=limit))
            self.problem = problem

    def _check_segment(self, segment: bytes) -> None:
        """A piece of one line, without its CRLF."""
        if b"\n" in segment:
            self._fail(BARE_LF)
        if b"\r" in segment:
            self._fail(BARE_CR)
        self._line_length += len(segment)
        if self._line_length > self.max_line_length:
            self._fail(LINE_TOO_LONG, self.max_line_length)

    def feed(self, data: bytes) -> DataResult:
        """Consume ``data``; return message bytes (CRLF line endings, unstuffed)."""
        if self._done:
            raise RuntimeError("DataReader fed after end of data")
        buf = self._carry + data if self._carry else data
        self._carry = b""
        out: list[bytes] = []
        i, n = 0, len(buf)
        while i < n:
            if self._at_line_start:
                if buf.startswith(END_MARK, i):
                    self._done = True
                    return self._result(out, ended=True, rest=buf[i + 3 :])
                if buf[i] == 0x2E:  # "."
                    if n - i < 3 and END_MARK.startswith(buf[i:]):
                        self._carry = buf[i:]  # cannot tell yet: end mark or stuffed line
                        break
                    i += 1  # transparency: drop the leading dot (RFC 5321 4.5.2)
                    self._line_length += 1
                    self.received += 1
            self._at_line_start = False
            j = buf.find(b"\r\n", i)
            if j < 0:
                end = n - 1 if buf.endswith(b"\r") else n
                if end < n:
                    self._carry = b"\r"  # may be the first half of a CRLF
                segment = buf[i:end]
                self._check_segment(segment)
                self.received += len(segment)
                out.append(segment)
                break
            segment = buf[i:j]
            self._check_segment(segment)
            self.received += len(segment) + 2
            out.append(buf[i : j + 2])
            self._line_length = 0
            self._at_line_start = True
            i = j + 2
        return self._result(out)

    def _result(self, out: list[bytes], ended: bool = False, rest: bytes = b"") -> DataResult:
        if self.received > self.max_size:
            self._fail(TOO_BIG, self.max_size)
        body = b"" if self.problem is not None else b"".join(out)
        return DataResult(body, ended, rest)
