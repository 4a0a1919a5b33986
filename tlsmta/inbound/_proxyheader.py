"""The PROXY protocol header (HAProxy), accepted only from trusted proxies.

Twisted's ``haproxy:`` endpoint wrapper has two faults an MTA cannot ship
with: it takes the header from anyone who can connect (so any client can
claim an address in ``relay_networks``), and it starts the wrapped protocol
before the header arrives, so the SMTP session sees the proxy's address,
not the client's, for relay control, limits, logs and Received.  Here the
header is taken only from ``proxy_networks``, and the SMTP session (banner,
peer address, TLS for implicit listeners) starts only once the header has
said who the client is.  No header within PROXY_HEADER_TIMEOUT, or a bad
one, closes the connection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IAddress, ILoggingContext, IProtocol, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from tlsmta.inbound._acceptance import in_networks
from tlsmta.inbound._haproxy_private import HeaderParser, InvalidProxyHeader, ProxyInfo, parser_for
from tlsmta.network import StreamTransport

log = Logger(namespace="tlsmta.proxyheader")

PREFIX = "haproxy:"
PROXY_HEADER_TIMEOUT = 10.0  # seconds for the proxy to send the header after connecting
UNKNOWN_CLIENT = "unknown"  # the peer "address" when the header names no client


class TrustedProxyProtocol(ProtocolWrapper):
    factory: TrustedProxyFactory
    # Twisted's ITransport | None has neither the TCP/TLS/producer methods nor the connected state.
    transport: StreamTransport  # type: ignore[assignment]

    def __init__(self, factory: TrustedProxyFactory, wrappedProtocol: IProtocol):
        super().__init__(factory, wrappedProtocol)
        self._proxyInfo: ProxyInfo | None = None
        self._parser: HeaderParser | None = None

    def makeConnection(self, transport: Any) -> None:
        # ProtocolWrapper.makeConnection, without starting the wrapped protocol yet.
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self._started = False
        self._cut_off = False
        proxy = transport.getPeer()
        if not in_networks(getattr(proxy, "host", ""), self.factory.trusted()):
            self._refuse(f"connection from {getattr(proxy, 'host', proxy)}, not in proxy_networks")
            return
        self._header_timer = self.factory.reactor.callLater(PROXY_HEADER_TIMEOUT, self._no_header)

    def _no_header(self) -> None:
        self._refuse(f"no PROXY header within {PROXY_HEADER_TIMEOUT}s")

    def dataReceived(self, data: bytes) -> None:
        if self._started:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._cut_off:
            return  # bytes already read when the connection was refused start nothing
        if self._parser is None:
            # Unlike Twisted's wrapper, a header's first bytes may come in several segments.
            data = self._head = getattr(self, "_head", b"") + data
            parser = parser_for(data)
            if parser is None:
                return  # not enough bytes yet to tell
            if parser is False:
                self._refuse("connection did not start with a PROXY header")
                return
            self._parser = parser
        try:
            self._proxyInfo, remaining = self._parser.feed(data)
        except InvalidProxyHeader:
            self._refuse("invalid PROXY header")
            return
        if self._proxyInfo is None:
            return  # the header continues in the next segment
        self._header_timer.cancel()
        self._started = True
        # directlyProvides gave this wrapper its transport's interfaces (ITransport among them).
        self.wrappedProtocol.makeConnection(self)  # type: ignore[arg-type]
        if remaining:
            self.wrappedProtocol.dataReceived(remaining)

    def getPeer(self) -> IAddress:
        if self._proxyInfo is None:
            return self.transport.getPeer()
        # LOCAL (v2, e.g. health checks) and UNKNOWN (v1) headers name no client.  Stock
        # Twisted then answers with the proxy's own address, which relay_networks may well
        # list; a session whose client is unknown must not inherit the proxy's standing.
        if self._proxyInfo.source is None:
            return IPv4Address("TCP", UNKNOWN_CLIENT, 0)
        return self._proxyInfo.source

    def getHost(self) -> IAddress:
        if self._proxyInfo is not None and self._proxyInfo.destination is not None:
            return self._proxyInfo.destination
        return self.transport.getHost()

    def _refuse(self, why: str) -> None:
        log.warn("PROXY listener: {why}; closed", why=why)
        self._cut_off = True
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None and timer.active():
            timer.cancel()
        if getattr(self, "_started", False):
            super().connectionLost(reason)
        else:
            self.factory.unregisterProtocol(self)


class TrustedProxyFactory(WrappingFactory[TrustedProxyProtocol]):
    protocol = TrustedProxyProtocol

    def __init__(self, wrapped: Any, trusted: Callable[[], Iterable[Any]], reactor: IReactorTime):
        super().__init__(wrapped)
        self.trusted = trusted  # called per connection: a reload's new proxy_networks apply at once
        self.reactor = reactor

    def logPrefix(self) -> str:
        # As Twisted's HAProxyWrappingFactory: the listener's log lines say PROXY is in use.
        inner = self.wrappedFactory
        prefix = inner.logPrefix() if ILoggingContext.providedBy(inner) else type(inner).__name__
        return f"{prefix} (PROXY)"


def listen_smtp(reactor: Any, endpoint: str, factory: Any, trusted: Callable[[], Iterable[Any]]) -> Any:
    """``serverFromString(endpoint).listen(factory)``, with ``haproxy:`` endpoints
    served by TrustedProxyFactory instead of Twisted's wrapper."""
    from twisted.internet.endpoints import serverFromString

    if endpoint.startswith(PREFIX):
        inner = serverFromString(reactor, endpoint[len(PREFIX):])
        return inner.listen(TrustedProxyFactory(factory, trusted, reactor))
    d: Any = serverFromString(reactor, endpoint).listen(factory)
    return d

