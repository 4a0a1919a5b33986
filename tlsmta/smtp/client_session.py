"""The SMTP client session, sans I/O: server bytes in, actions and outcomes out.

In the manner of h11's ``Connection``: :class:`ClientSession` holds the
client side of one SMTP connection and does no I/O.  The shell feeds it
what the server sent (:meth:`ClientSession.receive_data`) and calls a method
for each step it wants (:meth:`starttls`, :meth:`mail`, :meth:`body`,
:meth:`end_body`, :meth:`quit`); each returns events, in order:

- actions the shell carries out: :class:`Send` (write these bytes) and
  :class:`StartTLS` (begin the handshake now, then write what follows);
- outcomes it reports: :class:`Greeted`, :class:`GreetingRefused`,
  :class:`HelloRefused`, :class:`StartTLSRefused`, :class:`BodyWanted`,
  :class:`TransactionDone` and :class:`Closed`.

What it decides: EHLO after a 220 banner, HELO when EHLO is refused, EHLO
again inside TLS; MAIL, RCPT and DATA in one flight when the server offers
PIPELINING (RFC 2920), one at a time otherwise, and QUIT in the flight of
the final dot when the shell says the message is the connection's last; RSET after a transaction
that delivered nothing; ending an empty DATA a server accepted anyway.  A
reply that cannot answer anything we sent (an unsolicited reply, or one the
server sent before it could have read our command) and output that is not
SMTP close the session with a reason.  Bytes that followed the 220 to
STARTTLS are dropped (response injection).  Timeouts are the shell's:
:attr:`ClientSession.awaiting` says which reply it waits for.

In LMTP mode (RFC 2033, ``lmtp=True``) the greeting is LHLO, with no HELO to
fall back to (4.1), and the end of the message is answered once per accepted
RCPT, in RCPT order (4.2): :class:`TransactionDone` carries those replies, and
:meth:`TransactionDone.final_replies` gives each recipient its own answer
either way.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import attrs

from tlsmta.errors import TlsmtaError
from tlsmta.smtp._client_codec import DotStuffer, ReplyError, ReplyParser, parse_ehlo
from tlsmta.smtp._reply import Reply

__all__ = [
    "BodyWanted", "ClientSession", "Closed", "Event", "Greeted", "GreetingRefused", "HelloRefused",
    "Pending", "SessionError", "Send", "StartTLS", "StartTLSRefused", "TransactionDone", "Wait",
]


class Wait(enum.Enum):
    """Which reply the session waits for: the shell picks the timeout (RFC 5321 4.5.3.2)."""

    GREETING = "greeting"
    COMMAND = "command"
    TLS_HELLO = "tls-hello"  # the EHLO after STARTTLS: its wait includes the handshake
    DATA_START = "data-start"
    DATA_END = "data-end"
    QUIT = "quit"


class SessionError(TlsmtaError):
    """A step asked of the session at a time it cannot be taken (a bug in the caller)."""


@attrs.frozen
class Send:
    """Write these bytes to the server."""

    data: bytes


@attrs.frozen
class StartTLS:
    """Start the TLS handshake now; ``dropped`` is what the server sent after its 220 (discarded)."""

    dropped: bytes = b""


@attrs.frozen
class Greeted:
    """The server answered EHLO (or HELO: no capabilities); ``tls`` when inside TLS."""

    banner: Reply
    hello: Reply
    capabilities: Mapping[str, str]
    tls: bool = False


@attrs.frozen
class GreetingRefused:
    """The banner was not 220."""

    reply: Reply


@attrs.frozen
class HelloRefused:
    """Both EHLO and HELO were refused (``tls``: the ones after STARTTLS)."""

    reply: Reply
    tls: bool = False


@attrs.frozen
class StartTLSRefused:
    """STARTTLS was answered with something other than 220; the session goes on in plain text."""

    reply: Reply


@attrs.frozen
class BodyWanted:
    """The server said 354 and a recipient was accepted: send :meth:`ClientSession.body`, then end it."""


@attrs.frozen
class TransactionDone:
    """One transaction's answers: MAIL, each RCPT in order (none when MAIL was refused
    without pipelining), and the final reply to the message (None when no recipient
    was accepted; the DATA reply when that was not 354).  Under LMTP ``per_recipient``
    holds the replies to the end of the message, one per accepted RCPT in order,
    and ``data`` is the first of them."""

    mail: Reply
    recipients: tuple[Reply, ...]
    data: Reply | None
    per_recipient: tuple[Reply, ...] = ()

    def final_replies(self) -> tuple[Reply, ...]:
        """Each recipient's answer, in RCPT order: a refused one's RCPT reply, an accepted
        one's reply to the message (its own under LMTP).  Empty when MAIL was refused."""
        if not self.mail.positive:
            return ()
        finals = iter(self.per_recipient)
        return tuple(
            rcpt if not rcpt.positive or self.data is None else next(finals, self.data)
            for rcpt in self.recipients
        )


@attrs.frozen
class Closed:
    """The session is over: QUIT was answered (``error`` None), or the server broke the protocol."""

    error: str | None = None


Event = Send | StartTLS | Greeted | GreetingRefused | HelloRefused | StartTLSRefused | BodyWanted | TransactionDone | Closed


@attrs.define(eq=False)
class Pending:
    """One reply the session waits for."""

    wait: Wait
    sent_at: int  # how many receive_data calls had happened when the command went out
    handle: Callable[[Reply], list[Event]]


class _State(enum.Enum):
    GREETING = "greeting"  # banner, EHLO, HELO
    READY = "ready"  # between transactions
    BUSY = "busy"  # STARTTLS or a transaction under way
    BODY = "body"  # the caller streams the message
    QUITTING = "quitting"
    CLOSED = "closed"


@attrs.define
class _Transaction:
    recipients: int
    pipelined: bool
    unsent: deque[bytes]  # RCPT lines still to send one at a time (without pipelining)
    mail: Reply | None = None
    replies: list[Reply] = attrs.field(factory=list)
    data: Reply | None = None
    finals: list[Reply] = attrs.field(factory=list)  # LMTP: the replies to the end of the message

    def accepted(self) -> bool:
        assert self.mail is not None
        return self.mail.positive and any(r.positive for r in self.replies)

    def accepted_recipients(self) -> int:
        return sum(r.positive for r in self.replies)


class ClientSession:
    """The client side of one SMTP connection, from the banner to QUIT."""

    def __init__(self, ehlo_name: str, lmtp: bool = False):
        self.ehlo_name = ehlo_name
        self.lmtp = lmtp
        self._hello_verb = "LHLO" if lmtp else "EHLO"
        self.capabilities: Mapping[str, str] = {}
        self.banner: Reply | None = None
        self._parser = ReplyParser()
        self._pending: deque[Pending] = deque()
        self._received = 0
        self._state = _State.GREETING
        self._tls = False
        self._stuffer: DotStuffer | None = None
        self._transaction: _Transaction | None = None
        self._quit_sent = False  # QUIT went out with the final dot (end_body(quit=True))
        self._expect(Wait.GREETING, self._on_banner)

    # -- what the shell asks ------------------------------------------------------------

    @property
    def awaiting(self) -> Pending | None:
        """The reply waited for now (a new object for each reply), or None."""
        return self._pending[0] if self._pending else None

    @property
    def closed(self) -> bool:
        return self._state is _State.CLOSED

    @property
    def ended(self) -> bool:
        """QUIT has been sent (its reply may have come too) or the session is closed: no more transactions."""
        return self._state in (_State.QUITTING, _State.CLOSED)

    def receive_data(self, data: bytes) -> list[Event]:
        """Bytes from the server; the events they lead to."""
        if self._state is _State.CLOSED:
            return []
        self._received += 1
        self._parser.push(data)
        events: list[Event] = []
        while not self.closed:  # a reply may close the session
            try:
                reply = self._parser.pop()
            except ReplyError as e:
                return events + self._close(f"protocol error: {e}")
            if reply is None:
                break
            if not self._pending or self._pending[0].sent_at >= self._received:
                return events + self._close(f"unexpected reply: {reply}")
            pending = self._pending.popleft()
            if self._state is _State.QUITTING and pending.wait is not Wait.QUIT:
                continue  # an answer from before QUIT: nothing follows from it any more
            events += pending.handle(reply)
        return events

    def connection_lost(self) -> None:
        """The transport is gone: nothing more is sent or awaited."""
        self._state = _State.CLOSED
        self._pending.clear()

    # -- steps ----------------------------------------------------------------------------

    def starttls(self) -> list[Event]:
        """Ask for TLS (after :class:`Greeted`); leads to StartTLS and a second Greeted, or StartTLSRefused."""
        self._require(_State.READY)
        self._state = _State.BUSY
        return self._command(b"STARTTLS", Wait.COMMAND, self._on_starttls)

    def mail(self, sender: str, params: Sequence[str], recipients: Sequence[str]) -> list[Event]:
        """Start one transaction; it ends with :class:`TransactionDone` (after :class:`BodyWanted`
        and the body, when a recipient was accepted)."""
        self._require(_State.READY)
        if not recipients:
            raise SessionError("a transaction needs a recipient")
        self._state = _State.BUSY
        mail_line = " ".join([f"MAIL FROM:<{sender}>", *params]).encode("utf-8")
        rcpt_lines = [f"RCPT TO:<{r}>".encode("utf-8") for r in recipients]
        pipelined = "PIPELINING" in self.capabilities
        self._transaction = _Transaction(len(recipients), pipelined, deque() if pipelined else deque(rcpt_lines))
        if not pipelined:
            return self._command(mail_line, Wait.COMMAND, self._on_mail)
        # RFC 2920: MAIL, every RCPT and DATA in one flight, one round trip.
        self._expect(Wait.COMMAND, self._on_mail)
        for _ in rcpt_lines:
            self._expect(Wait.COMMAND, self._on_rcpt)
        self._expect(Wait.DATA_START, self._on_data)
        return [Send(b"".join(line + b"\r\n" for line in [mail_line, *rcpt_lines, b"DATA"]))]

    def body(self, chunk: bytes) -> bytes:
        """One piece of the message, dot-stuffed for the wire (after :class:`BodyWanted`)."""
        self._require(_State.BODY)
        assert self._stuffer is not None
        return self._stuffer.feed(chunk)

    def end_body(self, quit: bool = False) -> list[Event]:
        """The end of the message: the final dot; its reply ends the transaction.

        ``quit``: the connection carries nothing more, so QUIT goes in the same
        flight when the server offers PIPELINING (RFC 2920 3.1: the message
        content may be followed by commands), a round trip and a write fewer
        per connection; :class:`Closed` follows the TransactionDone.
        """
        self._require(_State.BODY)
        assert self._stuffer is not None
        end, self._stuffer = self._stuffer.finish(), None
        self._state = _State.BUSY
        transaction = self._transaction
        assert transaction is not None
        # RFC 2033 4.2: one reply per accepted RCPT; SMTP: one for the message.
        for _ in range(transaction.accepted_recipients() if self.lmtp else 1):
            self._expect(Wait.DATA_END, self._on_final)
        if not (quit and "PIPELINING" in self.capabilities):
            return [Send(end)]
        self._quit_sent = True
        self._expect(Wait.QUIT, lambda reply: self._close(None))
        return [Send(end + b"QUIT\r\n")]

    def quit(self) -> list[Event]:
        """QUIT, whatever the session was doing; :class:`Closed` follows its reply."""
        if self._state in (_State.CLOSED, _State.QUITTING):
            return []
        self._state = _State.QUITTING
        return self._command(b"QUIT", Wait.QUIT, lambda reply: self._close(None))

    # -- replies --------------------------------------------------------------------------

    def _on_banner(self, reply: Reply) -> list[Event]:
        self.banner = reply
        if reply.code != 220:
            return [GreetingRefused(reply)]
        return self._command(self._hello_line(), Wait.COMMAND, self._on_ehlo)

    def _hello_line(self) -> bytes:
        return f"{self._hello_verb} {self.ehlo_name}".encode("utf-8")

    def _on_ehlo(self, reply: Reply) -> list[Event]:
        if reply.code == 250:
            return self._greeted(reply, parse_ehlo(reply))
        if self.lmtp:
            return [HelloRefused(reply, self._tls)]  # LMTP has no HELO (RFC 2033 4.1)
        return self._command(f"HELO {self.ehlo_name}".encode("utf-8"), Wait.COMMAND, self._on_helo)

    def _on_helo(self, reply: Reply) -> list[Event]:
        if reply.code == 250:
            return self._greeted(reply, {})
        return [HelloRefused(reply, self._tls)]

    def _greeted(self, reply: Reply, capabilities: Mapping[str, str]) -> list[Event]:
        assert self.banner is not None
        self.capabilities = capabilities
        self._state = _State.READY
        return [Greeted(self.banner, reply, capabilities, self._tls)]

    def _on_starttls(self, reply: Reply) -> list[Event]:
        if reply.code != 220:
            self._state = _State.READY
            return [StartTLSRefused(reply)]
        dropped = self._parser.discard_buffered()
        self._tls = True
        self._state = _State.GREETING
        self.capabilities = {}
        return [StartTLS(dropped), *self._command(self._hello_line(), Wait.TLS_HELLO, self._on_ehlo)]

    def _on_mail(self, reply: Reply) -> list[Event]:
        transaction = self._transaction
        assert transaction is not None
        transaction.mail = reply
        if transaction.pipelined:
            return []  # the RCPT and DATA replies follow
        if not reply.positive:
            return self._reset()
        return self._command(transaction.unsent.popleft(), Wait.COMMAND, self._on_rcpt)

    def _on_rcpt(self, reply: Reply) -> list[Event]:
        transaction = self._transaction
        assert transaction is not None
        transaction.replies.append(reply)
        if transaction.pipelined:
            return []  # the DATA reply decides
        if transaction.unsent:
            return self._command(transaction.unsent.popleft(), Wait.COMMAND, self._on_rcpt)
        if not transaction.accepted():
            return self._reset()
        return self._command(b"DATA", Wait.DATA_START, self._on_data)

    def _on_data(self, reply: Reply) -> list[Event]:
        transaction = self._transaction
        assert transaction is not None
        if transaction.accepted():
            if reply.code == 354:
                self._state = _State.BODY
                self._stuffer = DotStuffer()
                return [BodyWanted()]
            transaction.data = reply
            return self._reset()
        if reply.code == 354:
            # A server that said 354 with nobody to deliver to: end the empty message.
            return self._command(b".", Wait.DATA_START, lambda _: self._reset())
        return self._reset()

    def _on_final(self, reply: Reply) -> list[Event]:
        transaction = self._transaction
        assert transaction is not None
        if not self.lmtp:
            transaction.data = reply
            return self._done()
        transaction.finals.append(reply)
        transaction.data = transaction.finals[0]
        if len(transaction.finals) < transaction.accepted_recipients():
            return []  # more recipients' replies follow
        return self._done()

    def _reset(self) -> list[Event]:
        """After a transaction that sent no message: RSET, then report."""
        return self._command(b"RSET", Wait.COMMAND, lambda _: self._done())

    def _done(self) -> list[Event]:
        transaction, self._transaction = self._transaction, None
        assert transaction is not None and transaction.mail is not None
        self._state = _State.QUITTING if self._quit_sent else _State.READY
        return [TransactionDone(transaction.mail, tuple(transaction.replies), transaction.data, tuple(transaction.finals))]

    # -- plumbing ---------------------------------------------------------------------------

    def _command(self, line: bytes, wait: Wait, handle: Callable[[Reply], list[Event]]) -> list[Event]:
        self._expect(wait, handle)
        return [Send(line + b"\r\n")]

    def _expect(self, wait: Wait, handle: Callable[[Reply], list[Event]]) -> None:
        self._pending.append(Pending(wait, self._received, handle))

    def _require(self, state: _State) -> None:
        if self._state is not state:
            raise SessionError(f"not possible while the session is {self._state.value}")

    def _close(self, error: str | None) -> list[Event]:
        self.connection_lost()
        return [Closed(error)]
