"""network.ImmediateWriter on real loopback TCP connections: a write goes to the
socket at once (the transport never registers for writing), and once the send
buffer is full the rest goes through the transport, in order."""

from __future__ import annotations

import socket
from typing import Any

import pytest_twisted
from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint

from tlsmta.network import ImmediateWriter


class _Collecting(protocol.Protocol):
    def __init__(self) -> None:
        self.received = bytearray()
        self.waiting: tuple[int, Deferred[bytes]] | None = None

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

    class Server(protocol.Protocol):
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


@pytest_twisted.ensureDeferred
async def test_after_stop_every_write_goes_through_the_transport(pair: Any) -> None:
    server, client = pair
    writer = ImmediateWriter(server.transport)
    writer.write(b"220 ready\r\n")
    writer.stop()  # as before startTLS
    writer.write(b"220 go ahead\r\n")
    assert server.transport in reactor.getWriters()
    assert await client.wait_for(25) == b"220 ready\r\n220 go ahead\r\n"
