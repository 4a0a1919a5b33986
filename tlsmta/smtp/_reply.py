"""One SMTP reply as a value, from the wire to the log, the queue and DSNs.

A :class:`Reply` is what a server said or what we answer: the code, the
RFC 3463 enhanced status when there is one, and the text. Replies are built
once (parsed from the wire, or made with :meth:`Reply.of`) and kept as
values; nothing joins them into a string to split it again later.
``str(reply)`` is the form logs and the spool keep (``"550 5.1.1 no such
user"``), and :meth:`Reply.parse` reads that form back.
"""

from __future__ import annotations

import re

import attrs

from tlsmta.errors import TlsmtaError

_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?=\s|\Z)")


@attrs.frozen
class Reply:
    """One complete (possibly multi-line) SMTP reply.

    ``lines`` is the text of each line after the code, as sent: a status
    code such as ``2.1.0`` stays at the start of the line it came on.
    """

    code: int
    lines: tuple[str, ...]

    @classmethod
    def of(cls, code: int, status: str | None, text: str | list[str] | tuple[str, ...]) -> Reply:
        """A reply we build: ``Reply.of(250, "2.1.0", "Ok")``; every line of a
        multi-line reply carries the status (RFC 2034)."""
        lines = (text,) if isinstance(text, str) else tuple(text)
        if status:
            lines = tuple(f"{status} {line}" for line in lines)
        return cls(code, lines)

    @classmethod
    def parse(cls, text: str) -> Reply:
        """``"451 4.7.5 certificate expired"`` -> a Reply; the inverse of ``str()``.
        Text without a leading three-digit code is a local failure (451)."""
        code, _, rest = text.partition(" ")
        if len(code) == 3 and code.isdigit():
            return cls(int(code), (rest,))
        return cls(451, (text,))

    @property
    def enhanced(self) -> str | None:
        """The RFC 3463 status code the reply carries, if any (``"5.1.1"``)."""
        match = _ENHANCED.match(self.lines[0]) if self.lines else None
        return match.group(0) if match else None

    @property
    def text(self) -> str:
        """All lines joined by spaces, status code included."""
        return " ".join(self.lines)

    @property
    def detail(self) -> str:
        """The text without the status code (the first line's, where there is one)."""
        status = self.enhanced
        text = self.text
        return text[len(status):].lstrip() if status else text

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600

    def as_transient(self) -> Reply:
        """The same answer as a 4xx (a permanent refusal that must only defer)."""
        if not self.permanent:
            return self
        status = self.enhanced
        detail = self.detail
        return Reply.of(451, "4" + status[1:] if status else "4.0.0", detail)

    def wire(self) -> bytes:
        """The reply as sent: ``250-first\\r\\n250 last\\r\\n``."""
        lines = self.lines or ("",)
        out = [f"{self.code}-{line}\r\n" for line in lines[:-1]] + [f"{self.code} {lines[-1]}\r\n"]
        return "".join(out).encode("utf-8")

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class SMTPError(TlsmtaError):
    """An error that stands for an SMTP answer; ``reply`` is that answer."""

    def __init__(self, reply: Reply):
        self.reply = reply
        super().__init__(str(reply))

    @property
    def code(self) -> int:
        return self.reply.code

    @property
    def text(self) -> str:
        return self.reply.text
