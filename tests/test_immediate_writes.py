"""network.ImmediateWriter on real loopback TCP connections: a write goes to the
socket at once (the transport never registers for writing), and once the send
buffer is full the rest goes through the transport, in order.  After
``start_tls`` the same holds for the TLS records (real TLS, trustme's PKI)."""

from __future__ import annotations

import socket
from typing import Any

import pytest_twisted
from OpenSSL import SSL
from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from zope.interface import implementer

from tlsmta.network import ImmediateWriter
from tlsmta.tls import client_context, server_context

PROTOCOLS = frozenset({"TLSv1.3"})


@implementer(IHandshakeListener)
class _Collecting(protocol.Protocol):
    def __init__(self) -> None:
        self.received = bytearray()
        self.waiting: tuple[int, Deferred[bytes]] | None = None
        self.handshake: Deferred[None] = Deferred()

    def handshakeCompleted(self) -> None:
        self.handshake.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.waiting is not None and len(self.received) >= self.waiting[0]:
            (_, d), self.waiting = self.waiting, None
            d.callback(bytes(self.received))

    def wait_for(self, size: int) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.waiting = (size, d)
        self.dataReceived(b"")
        return d.addTimeout(10, reactor)


@pytest_twisted.async_yield_fixture
async def pair() -> Any:
    """(server protocol, client protocol) over one loopback TCP connection, closed afterwards."""
    accepted: Deferred[protocol.Protocol] = Deferred()

    class Server(_Collecting):
        def connectionMade(self) -> None:
            accepted.callback(self)

    port = reactor.listenTCP(0, protocol.Factory.forProtocol(Server), interface="127.0.0.1")
    client = await TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
        protocol.Factory.forProtocol(_Collecting))
    server = await accepted.addTimeout(10, reactor)
    yield server, client
    client.transport.loseConnection()
    server.transport.loseConnection()
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_write_is_sent_without_the_transport_waiting_to_write(pair: Any) -> None:
    server, client = pair
    writer = ImmediateWriter(server.transport)
    writer.write(b"220 ready\r\n")
    assert server.transport not in reactor.getWriters()  # nothing queued for a later iteration
    writer.write(b"250 ok\r\n")
    assert await client.wait_for(19) == b"220 ready\r\n250 ok\r\n"


@pytest_twisted.ensureDeferred
async def test_what_the_socket_does_not_take_goes_through_the_transport_in_order(pair: Any) -> None:
    server, client = pair
    server.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.transport.pauseProducing()  # the peer stops reading: the send buffer fills
    writer = ImmediateWriter(server.transport)
    chunks = [(b"%06d" % i) * 1000 for i in range(400)]  # 2.4 MB, more than loopback buffers hold
    for chunk in chunks:
        writer.write(chunk)
    assert server.transport in reactor.getWriters()  # the transport holds the rest
    client.transport.resumeProducing()
    expected = b"".join(chunks)
    assert await client.wait_for(len(expected)) == expected


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLClientConnectionCreator)
class _Creator:
    def __init__(self, context: SSL.Context):
        self.context = context

    def serverConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_accept_state()
        return connection

    def clientConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_connect_state()
        return connection


@pytest_twisted.async_yield_fixture
async def tls_pair(pair: Any, pki: Any) -> Any:
    """``pair`` after a TLS handshake started by each side's ImmediateWriter: (server, client, their writers)."""
    server, client = pair
    server_writer, client_writer = ImmediateWriter(server.transport), ImmediateWriter(client.transport)
    server_writer.start_tls(_Creator(server_context(pki.good.cert, pki.good.key, PROTOCOLS)))
    client_writer.start_tls(_Creator(client_context(PROTOCOLS, ca=pki.ca_pem)))
    assert client.transport in reactor.getWriters()  # startTLS queued the ClientHello
    await server.handshake.addTimeout(10, reactor)
    await client.handshake.addTimeout(10, reactor)
    yield server, client, server_writer, client_writer


@pytest_twisted.ensureDeferred
async def test_after_start_tls_a_write_is_one_record_sent_at_once(tls_pair: Any) -> None:
    server, client, server_writer, client_writer = tls_pair
    timers = len(reactor.getDelayedCalls())
    server_writer.write(b"250 ok\r\n")
    client_writer.write(b"QUIT\r\n")
    # Neither side waits for a later iteration: no write queued, and no timer to
    # gather small writes (Twisted's default TLS layer would set one per write).
    assert server.transport not in reactor.getWriters()
    assert client.transport not in reactor.getWriters()
    assert len(reactor.getDelayedCalls()) == timers
    assert await client.wait_for(8) == b"250 ok\r\n"
    assert await server.wait_for(6) == b"QUIT\r\n"


@pytest_twisted.ensureDeferred
async def test_tls_records_the_socket_does_not_take_go_through_the_transport_in_order(tls_pair: Any) -> None:
    server, client, server_writer, _ = tls_pair
    server.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.transport.pauseProducing()
    chunks = [(b"%06d" % i) * 1000 for i in range(400)]
    for chunk in chunks:
        server_writer.write(chunk)
    assert server.transport in reactor.getWriters()
    client.transport.resumeProducing()
    expected = b"".join(chunks)
    assert await client.wait_for(len(expected)) == expected
