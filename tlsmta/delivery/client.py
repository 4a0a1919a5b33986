"""The SMTP client connection: a subclass of twisted.mail.smtp.ESMTPSender.

The stock sender drives one message through callbacks and has the faults
shown in tests/test_stock_twisted_faults.py (dot-stuffing, CR CR LF,
quitting on 454, no capabilities kept).  This subclass keeps the class for its identity
and replaces the input and output handling with a small request/reply
API that :mod:`tlsmta.delivery.pool` drives:

- :meth:`command` sends one line and returns a Deferred for its reply;
  several calls in a row pipeline;
- :meth:`start_tls` discards anything the server sent after its 220
  (STARTTLS response injection) and starts the handshake;
- :meth:`send_body` streams a body through :class:`DotStuffer` with flow
  control and returns the reply to the final dot.

Every wait has a timeout; a lost connection fails every pending wait.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from OpenSSL import SSL
from twisted.internet import error as net_error
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Factory
from twisted.mail import smtp
from twisted.python.failure import Failure
from zope.interface import implementer

from tlsmta.errors import TlsmtaError
from tlsmta.network import set_no_delay
from tlsmta.smtp.client_codec import DotStuffer, Reply, ReplyError, ReplyParser
from tlsmta.tls.contexts import ClientTLS, SessionFacts, ssl_error_text

# RFC 5321 4.5.3.2 minimum timeouts, in seconds.
GREETING_TIMEOUT = 300
COMMAND_TIMEOUT = 300
DATA_START_TIMEOUT = 120
DATA_BLOCK_TIMEOUT = 180
DATA_END_TIMEOUT = 600
STARTTLS_TIMEOUT = 300  # handshake plus the EHLO after it (Postfix: smtp_starttls_timeout)


class ConnectionBroken(TlsmtaError):
    """The connection ended or misbehaved while a reply was awaited."""

    def __init__(self, reason: str, ssl_failure: bool = False):
        self.reason = reason
        self.ssl_failure = ssl_failure
        super().__init__(reason)


@implementer(IHandshakeListener, IPushProducer)
class OutboundSMTP(smtp.ESMTPSender):
    """One outbound SMTP connection."""

    def __init__(self, clock: Any):
        # The stock constructor wants credentials and a context factory it would
        # build itself; we pass neither and never use its state machine.
        smtp.ESMTPSender.__init__(self, None, None, object(), b"tlsmta")
        self.clock = clock
        self._parser = ReplyParser()
        self._waiters: deque[tuple[Deferred[Reply], Any]] = deque()
        self._closed: str | None = None
        self.banner: Deferred[Reply] = Deferred()
        self.closed: Deferred[None] = Deferred()  # fires when the connection is gone
        self.tls_facts: SessionFacts | None = None
        self.tls_creator: ClientTLS | None = None
        self._writable: Deferred[None] | None = None

    # -- connection events ---------------------------------------------------------

    def connectionMade(self) -> None:
        # Small writes (the final dot after a body record) must not wait for the
        # peer's delayed ACK: Nagle cost ~40 ms per message (measured).
        set_no_delay(self.transport)
        self._expect(self.banner, GREETING_TIMEOUT)

    def dataReceived(self, data: bytes) -> None:
        self._parser.push(data)
        while self._closed is None:
            try:
                reply = self._parser.pop()
            except ReplyError as e:
                self._break(f"protocol error: {e}")
                return
            if reply is None:
                return
            if not self._waiters:
                self._break(f"unexpected reply: {reply}")
                return
            waiter, timer = self._waiters.popleft()
            if timer.active():
                timer.cancel()
            waiter.callback(reply)  # may start TLS, which discards what is still buffered

    def connectionLost(self, reason: Failure = net_error.ConnectionDone()) -> None:
        if self._closed is None:
            if reason.check(SSL.Error):
                self._closed = ssl_error_text(reason.value)
                self._fail_all(ConnectionBroken(self._closed, ssl_failure=True))
                if not self.closed.called:
                    self.closed.callback(None)
                return
            self._closed = "connection closed by server" if reason.check(net_error.ConnectionDone) else (
                reason.getErrorMessage() or "connection lost"
            )
        self._fail_all(ConnectionBroken(self._closed))
        if self._writable is not None and not self._writable.called:
            self._writable.errback(ConnectionBroken(self._closed))
        if not self.closed.called:
            self.closed.callback(None)

    def handshakeCompleted(self) -> None:
        self.tls_facts = SessionFacts.from_connection(self.transport.getHandle())

    def timeoutConnection(self) -> None:  # TimeoutMixin is not used; our waits time out
        self._break("timeout")

    def lineReceived(self, line: bytes) -> None:  # pragma: no cover - guard
        raise AssertionError("OutboundSMTP does its own reply parsing")

    # -- requests --------------------------------------------------------------------

    def _expect(self, d: Deferred[Reply], timeout: float) -> Deferred[Reply]:
        timer = self.clock.callLater(timeout, self._break, f"timeout after {timeout}s waiting for a reply")
        self._waiters.append((d, timer))
        return d

    def command(self, line: str | bytes, timeout: float = COMMAND_TIMEOUT) -> Deferred[Reply]:
        """Send one command line; the Deferred fires with its reply."""
        if self._closed is not None:
            return _failed(ConnectionBroken(self._closed))
        raw = line.encode("utf-8") if isinstance(line, str) else line
        self.transport.write(raw + b"\r\n")
        return self._expect(Deferred(), timeout)

    def start_tls(self, creator: ClientTLS) -> None:
        """After 220 to STARTTLS: drop anything already received, then handshake."""
        self._parser.discard_buffered()
        self.tls_creator = creator
        self.transport.startTLS(creator)

    async def send_body(self, chunks: AsyncIterator[bytes]) -> Reply:
        """Stream the body, dot-stuffed, then the end-of-data line; return the final reply."""
        stuffer = DotStuffer()
        self.transport.registerProducer(self, True)
        try:
            async for chunk in chunks:
                if self._closed is not None:
                    raise ConnectionBroken(self._closed)
                self.transport.write(stuffer.feed(chunk))
                if self._writable is not None:
                    await self._wait_writable()
        finally:
            if self._closed is None:
                self.transport.unregisterProducer()
        return await self.command(stuffer.finish()[:-2], timeout=DATA_END_TIMEOUT)

    async def _wait_writable(self) -> None:
        """Wait for the server to take our data; a server that stops reading times out."""
        writable = self._writable
        assert writable is not None
        timer = self.clock.callLater(DATA_BLOCK_TIMEOUT, self._break, f"timeout after {DATA_BLOCK_TIMEOUT}s sending data")
        try:
            await writable
        finally:
            if timer.active():
                timer.cancel()

    def quit(self) -> None:
        """QUIT and close without waiting long for the answer."""
        if self._closed is not None:
            return
        d = self.command("QUIT", timeout=10)
        d.addBoth(lambda _: self.transport.loseConnection())

    def abort(self) -> None:
        if self._closed is None:
            self._closed = "aborted"
        self.transport.abortConnection()

    # -- flow control (IPushProducer, registered while sending a body) -------------------

    def pauseProducing(self) -> None:
        if self._writable is None or self._writable.called:
            self._writable = Deferred()

    def resumeProducing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.called:
            writable.callback(None)

    def stopProducing(self) -> None:
        self.resumeProducing()

    # -- failures ----------------------------------------------------------------------

    def _break(self, reason: str) -> None:
        if self._closed is None:
            self._closed = reason
        self._fail_all(ConnectionBroken(reason))
        if self._writable is not None and not self._writable.called:
            self._writable.errback(ConnectionBroken(reason))
        self.transport.abortConnection()

    def _fail_all(self, error: ConnectionBroken) -> None:
        while self._waiters:
            waiter, timer = self._waiters.popleft()
            if timer.active():
                timer.cancel()
            waiter.errback(error)


class _OneConnection(Factory):
    """Hands one prepared protocol to one connection, without log noise."""

    noisy = False

    def __init__(self, proto: OutboundSMTP):
        self.proto = proto

    def buildProtocol(self, addr: Any) -> OutboundSMTP:
        return self.proto


async def connect(reactor: Any, ip: str, port: int, source: str | None = None, timeout: float = 30) -> OutboundSMTP:
    """An OutboundSMTP connected to ip:port (from ``source`` if given)."""
    bind = (source, 0) if source else None
    endpoint_class = TCP6ClientEndpoint if ipaddress.ip_address(ip).version == 6 else TCP4ClientEndpoint
    endpoint = endpoint_class(reactor, ip, port, timeout=timeout, bindAddress=bind)
    return await endpoint.connect(_OneConnection(OutboundSMTP(reactor)))


def _failed(error: Exception) -> Deferred[Reply]:
    d: Deferred[Reply] = Deferred()
    d.errback(error)
    return d

