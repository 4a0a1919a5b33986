"""The SMTP client connection: a thin twisted.mail.smtp.ESMTPSender shell.

The stock sender drives one message through callbacks and has the faults
shown in tests/test_client_codec.py and tests/test_outbound_protocol.py
(dot-stuffing, CR CR LF, quitting on 454, no capabilities kept).  This subclass keeps the class for its
identity; every protocol decision is :class:`tlsmta.smtp.client_session.ClientSession`'s.
The shell feeds it the server's bytes, writes what it says, starts TLS when
it says so (after it dropped what followed the 220: STARTTLS response
injection), owns the timeouts and offers :mod:`tlsmta.delivery._pool` and
:mod:`tlsmta.app._probe` one awaitable per step:

- :meth:`OutboundSMTP.greeting`: banner and EHLO (or HELO);
- :meth:`starttls`: STARTTLS, the handshake and the EHLO inside TLS;
- :meth:`implicit_tls`: instead of both, for smtps: routes: the handshake at
  once, then banner and EHLO inside TLS;
- :meth:`transaction`: MAIL, RCPT and DATA (pipelined when offered), the
  body streamed dot-stuffed with flow control, per-recipient replies;
- :meth:`quit`, :meth:`abort`.

Every wait has a timeout; a lost connection fails every pending wait.
Connections are made through an :data:`EndpointFactory` (TCP from a source
address in production; an in-memory pair in tests).
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import attrs
from OpenSSL import SSL
from twisted.internet import error as net_error
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IPushProducer,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, connectionDone
from twisted.mail import smtp
from twisted.python.failure import Failure
from zope.interface import implementer

from tlsmta.errors import TlsmtaError
from tlsmta.network import ImmediateWriter, StreamTransport, set_no_delay
from tlsmta.smtp import client_session as session
from tlsmta.smtp.client_session import ClientSession, Event, Wait
from tlsmta.tls import ClientTLS, SessionFacts, ssl_error_text, tls_connection

# RFC 5321 4.5.3.2 minimum timeouts, in seconds: the defaults of the *_timeout delivery options.
GREETING_TIMEOUT = 300
COMMAND_TIMEOUT = 300
DATA_BLOCK_TIMEOUT = 180  # also the wait for the 354 (RFC 5321: at least 2 minutes)
DATA_END_TIMEOUT = 600
STARTTLS_TIMEOUT = 300  # handshake plus the EHLO after it (Postfix: smtp_starttls_timeout)
QUIT_TIMEOUT = 10


class ConnectionBroken(TlsmtaError):
    """The connection ended or misbehaved while a reply was awaited."""

    def __init__(self, reason: str, ssl_failure: bool = False):
        self.reason = reason
        self.ssl_failure = ssl_failure
        super().__init__(reason)


# What the next step of a session waits for (the session's events that are not actions).
Outcome = (
    session.Greeted | session.GreetingRefused | session.HelloRefused | session.StartTLSRefused
    | session.BodyWanted | session.TransactionDone
)

# What the first step ends with.
Greeting = session.Greeted | session.GreetingRefused | session.HelloRefused

# (ip, port, source address, connect timeout) -> the endpoint a connection is made through.
EndpointFactory = Callable[[str, int, str | None, float], IStreamClientEndpoint]


@attrs.frozen
class Timeouts:
    """Seconds each wait of one connection may take (the ``*_timeout`` delivery options)."""

    greeting: float = GREETING_TIMEOUT
    command: float = COMMAND_TIMEOUT
    data: float = DATA_BLOCK_TIMEOUT  # the 354 to DATA, and each block of the body taken
    data_end: float = DATA_END_TIMEOUT

    def of(self, wait: Wait) -> float:
        # STARTTLS and QUIT are read at each wait, so that a test may shorten one.
        return {
            Wait.GREETING: self.greeting, Wait.COMMAND: self.command, Wait.TLS_HELLO: STARTTLS_TIMEOUT,
            Wait.DATA_START: self.data, Wait.DATA_END: self.data_end, Wait.QUIT: QUIT_TIMEOUT,
        }[wait]


_WAITING_FOR = {
    Wait.GREETING: "the greeting", Wait.COMMAND: "a reply", Wait.TLS_HELLO: "the TLS handshake and EHLO",
    Wait.DATA_START: "the reply to DATA", Wait.DATA_END: "the reply to the end of DATA", Wait.QUIT: "the reply to QUIT",
}


@implementer(IHandshakeListener, IPushProducer)
class OutboundSMTP(smtp.ESMTPSender):
    """One outbound SMTP connection, carrying out what its :class:`ClientSession` decides."""

    # Twisted's ITransport | None has neither the TCP/TLS/producer methods nor the connected state.
    transport: StreamTransport  # type: ignore[assignment]
    lmtp = False  # the session speaks LMTP (delivery._lmtp.OutboundLMTP)

    def __init__(self, clock: IReactorTime, ehlo_name: str, timeouts: Timeouts = Timeouts()):
        # The stock constructor wants credentials and a context factory it would
        # build itself; we pass neither and never use its state machine.
        smtp.ESMTPSender.__init__(self, None, None, object(), b"tlsmta")
        self.clock = clock
        self.timeouts = timeouts
        self.session = ClientSession(ehlo_name, lmtp=self.lmtp)
        self._outcomes: deque[Outcome] = deque()
        self._waiter: Deferred[Outcome] | None = None
        self._timer: IDelayedCall | None = None
        self._timed: session.Pending | None = None
        self._closed: str | None = None
        self._tls_creator: ClientTLS | None = None
        self.tls_started = False  # the handshake began (after the 220 to STARTTLS)
        self.closed: Deferred[None] = Deferred()  # fires when the connection is gone
        self.tls_facts: SessionFacts | None = None
        self._writable: Deferred[None] | None = None

    # -- connection events ---------------------------------------------------------

    def connectionMade(self) -> None:
        # Small writes (the final dot after a body record) must not wait for the
        # peer's delayed ACK: Nagle cost ~40 ms per message (measured).
        set_no_delay(self.transport)
        self._out = ImmediateWriter(self.transport)
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        self._carry_out(self.session.receive_data(data))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.session.connection_lost()
        ssl_failure = False
        if self._closed is None:
            if reason.check(SSL.Error):
                self._closed, ssl_failure = ssl_error_text(reason.value), True
            elif reason.check(net_error.ConnectionDone):
                self._closed = "connection closed by server"
            else:
                self._closed = reason.getErrorMessage() or "connection lost"
        self._fail(ConnectionBroken(self._closed, ssl_failure=ssl_failure))
        if not self.closed.called:
            self.closed.callback(None)

    def handshakeCompleted(self) -> None:
        self.tls_facts = SessionFacts.from_connection(tls_connection(self.transport))

    def timeoutConnection(self) -> None:  # TimeoutMixin is not used; our waits time out
        self._break("timeout")

    def lineReceived(self, line: bytes) -> None:  # pragma: no cover - guard
        raise AssertionError("OutboundSMTP does its own reply parsing")

    # -- steps -----------------------------------------------------------------------

    def greeting(self) -> Deferred[Greeting]:
        """Greeted, GreetingRefused or HelloRefused: the first step, taken by the session itself."""
        return self._next().addCallback(_as_greeting)

    def starttls(self, creator: ClientTLS) -> Deferred[Outcome]:
        """STARTTLS; on 220 the handshake with ``creator`` and EHLO inside TLS.
        Greeted (tls), StartTLSRefused or HelloRefused; a failed handshake fails it."""
        self._tls_creator = creator
        return self._step(self.session.starttls)

    def implicit_tls(self, creator: ClientTLS) -> Deferred[Greeting]:
        """Implicit TLS (RFC 8314, Postfix smtp_tls_wrappermode): the handshake with ``creator``
        right after connecting, then the greeting step inside TLS; a failed handshake fails it.

        Called before any byte arrives: a TLS server waits for our ClientHello."""
        self.tls_started = True
        self._out.start_tls(creator)
        return self.greeting()

    async def transaction(self, sender: str, params: Sequence[str], recipients: Sequence[str],
                          body: Callable[[], AsyncIterator[bytes]],
                          last: Callable[[], bool] = lambda: False) -> session.TransactionDone:
        """One message; ``body`` is opened only when the server wants it.  ``last()``, asked at the
        end of the body: nothing follows on this connection (QUIT goes with the final dot)."""
        outcome = await self._step(lambda: self.session.mail(sender, params, recipients))
        if isinstance(outcome, session.BodyWanted):
            await self._send_body(body())
            outcome = await self._step(lambda: self.session.end_body(quit=last()))
        assert isinstance(outcome, session.TransactionDone)
        return outcome

    def quit(self) -> None:
        """QUIT and close without waiting long for the answer."""
        if self._closed is None:
            self._carry_out(self.session.quit())

    def abort(self) -> None:
        if self._closed is None:
            self._closed = "aborted"
        self.transport.abortConnection()

    def _step(self, start: Callable[[], list[Event]]) -> Deferred[Outcome]:
        if self._closed is not None:
            return _failed(ConnectionBroken(self._closed))
        waiting = self._next()
        self._carry_out(start())
        return waiting

    def _next(self) -> Deferred[Outcome]:
        d: Deferred[Outcome] = Deferred()
        if self._outcomes:
            d.callback(self._outcomes.popleft())
        elif self._closed is not None:
            d.errback(ConnectionBroken(self._closed))
        else:
            self._waiter = d
        return d

    # -- carrying out the session's events -------------------------------------------------

    def _carry_out(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, session.Send):
                self._out.write(event.data)
            elif isinstance(event, session.StartTLS):
                assert self._tls_creator is not None
                self.tls_started = True
                self._out.start_tls(self._tls_creator)
            elif isinstance(event, session.Closed):
                if event.error is not None:
                    self._break(event.error)
                    return
                self.transport.loseConnection()
            else:
                self._outcomes.append(event)
        self._arm()
        if self._outcomes and self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.callback(self._outcomes.popleft())  # the caller's next step may run from here

    def _arm(self) -> None:
        """One timer, for the reply the session waits for now."""
        pending = self.session.awaiting
        if pending is self._timed:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timed, self._timer = pending, None
        if pending is not None and self._closed is None:
            timeout = self.timeouts.of(pending.wait)
            self._timer = self.clock.callLater(
                timeout, self._break, f"timeout after {timeout:g}s waiting for {_WAITING_FOR[pending.wait]}"
            )

    # -- the body, with flow control (IPushProducer, registered while sending it) ------------

    async def _send_body(self, chunks: AsyncIterator[bytes]) -> None:
        self.transport.registerProducer(self, True)
        try:
            async for chunk in chunks:
                if self._closed is not None:
                    raise ConnectionBroken(self._closed)
                self._out.write(self.session.body(chunk))
                if self._writable is not None:
                    await self._wait_writable()
        finally:
            if self._closed is None:
                self.transport.unregisterProducer()
        if self._closed is not None:
            raise ConnectionBroken(self._closed)

    async def _wait_writable(self) -> None:
        """Wait for the server to take our data; a server that stops reading times out."""
        writable = self._writable
        assert writable is not None
        timeout = self.timeouts.data
        timer = self.clock.callLater(timeout, self._break, f"timeout after {timeout:g}s sending data")
        try:
            await writable
        finally:
            if timer.active():
                timer.cancel()

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
        self.session.connection_lost()
        self._fail(ConnectionBroken(reason))
        self.transport.abortConnection()

    def _fail(self, error: ConnectionBroken) -> None:
        self._outcomes.clear()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.errback(error)
        if self._writable is not None and not self._writable.called:
            self._writable.errback(error)


class _OneConnection(Factory):
    """Hands one prepared protocol to one connection, without log noise."""

    noisy = False

    def __init__(self, proto: OutboundSMTP):
        self.proto = proto

    def buildProtocol(self, addr: Any) -> OutboundSMTP:
        return self.proto


def tcp_endpoints(reactor: IReactorTCP) -> EndpointFactory:
    """The production endpoints: TCP (v4 or v6 by the address), bound to the source address if given."""

    def endpoint(ip: str, port: int, source: str | None, timeout: float) -> IStreamClientEndpoint:
        bind = (source, 0) if source else None
        endpoint_class = TCP6ClientEndpoint if ipaddress.ip_address(ip).version == 6 else TCP4ClientEndpoint
        return endpoint_class(reactor, ip, port, timeout=timeout, bindAddress=bind)

    return endpoint


async def connect(reactor: IReactorTime, endpoints: EndpointFactory, ip: str, port: int, ehlo_name: str,
                  source: str | None = None, timeout: float = 30, timeouts: Timeouts = Timeouts(),
                  protocol: type[OutboundSMTP] = OutboundSMTP) -> OutboundSMTP:
    """A ``protocol`` connected to ip:port through ``endpoints`` (``reactor`` is its clock) within
    ``timeout`` seconds; ``timeouts``: the waits after that."""
    proto = protocol(reactor, ehlo_name, timeouts)
    await endpoints(ip, port, source, timeout).connect(_OneConnection(proto))
    return proto


def _as_greeting(outcome: Outcome) -> Greeting:
    assert isinstance(outcome, (session.Greeted, session.GreetingRefused, session.HelloRefused)), outcome
    return outcome


def _failed(error: Exception) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(error)
    return d
