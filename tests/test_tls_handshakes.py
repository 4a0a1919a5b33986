"""tls.handshakes: an outbound handshake's dear step runs in the handshake threads,
and nothing on the reactor thread touches the SSL connection while it runs.

The first tests drive a client-side TLS layer by hand (a StringTransport, a
pyOpenSSL server over memory BIOs, and a stepper that runs each queued step when
the test says), so the moment a byte, a write or the connection's loss arrives is
chosen, not raced.  The last one runs a real handshake over loopback with the
threads running."""

from __future__ import annotations

import threading
from typing import Any

import pytest_twisted
from OpenSSL import SSL
from twisted.internet import protocol, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from tlsmta.network import ImmediateWriter
from tlsmta.tls import (
    HANDSHAKE_THREADS,
    CertificateCheck,
    ClientTLS,
    OffloadedHandshakeTLS,
    ServerTLS,
    VerifyMode,
    client_context,
    server_context,
)
from tlsmta.tls._handshakes import handshake_step

PROTOCOLS = frozenset({"TLSv1.3"})


@implementer(IHandshakeListener)
class _Recording(protocol.Protocol):
    def __init__(self) -> None:
        self.received = bytearray()
        self.handshakes = 0
        self.losses: list[Any] = []

    def handshakeCompleted(self) -> None:
        self.handshakes += 1

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.losses.append(reason)


class _ByHand:
    """Stands in for the handshake threads: keeps each step until the test runs it."""

    running = True

    def __init__(self) -> None:
        self.steps: list[OffloadedHandshakeTLS] = []

    def step(self, tls: OffloadedHandshakeTLS) -> None:
        self.steps.append(tls)

    def run(self) -> None:
        tls = self.steps.pop(0)
        tls.stepped(handshake_step(tls._tlsConnection))


class _Lab:
    """A client-side OffloadedHandshakeTLS (tlsmta's ClientTLS) on a StringTransport, and a memory-BIO server."""

    def __init__(self, pki: Any, hook: Any = None):
        self.check = CertificateCheck(VerifyMode.HOST, wanted=("localhost",), hook=hook, enforce_in_handshake=True)
        creator = ClientTLS(client_context(PROTOCOLS, ca=pki.ca_pem), "localhost", self.check)
        factory = TLSMemoryBIOFactory(creator, True, protocol.Factory.forProtocol(_Recording))
        self.tls = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 25))
        assert isinstance(self.tls, OffloadedHandshakeTLS)
        self.stepper = _ByHand()
        self.tls.threads = self.stepper
        self.wire = StringTransport()
        self.tls.makeConnection(self.wire)  # the ClientHello, on the spot
        self.app: _Recording = self.tls.wrappedProtocol
        self.server = SSL.Connection(server_context(pki.good.cert, pki.good.key, PROTOCOLS), None)
        self.server.set_accept_state()

    def server_speaks(self) -> bytes:
        """Run the server as far as it goes on what the client sent; what it sends back."""
        if self.wire.value():
            self.server.bio_write(self.wire.value())
            self.wire.clear()
        try:
            self.server.do_handshake()
        except SSL.WantReadError:
            pass
        return self.server.bio_read(65536)

    def server_sends(self, data: bytes) -> bytes:
        self.server.send(data)
        return self.server.bio_read(65536)

    def server_reads(self) -> bytes:
        if self.wire.value():
            self.server.bio_write(self.wire.value())
            self.wire.clear()
        try:
            return self.server.recv(65536)
        except SSL.WantReadError:
            return b""


def test_the_step_on_the_servers_flight_is_handed_to_the_threads_and_later_ones_are_not(pki: Any) -> None:
    lab = _Lab(pki)
    assert lab.wire.value() != b""  # the ClientHello went out without a thread
    flight = lab.server_speaks()
    lab.tls.dataReceived(flight)
    assert len(lab.stepper.steps) == 1
    assert lab.wire.value() == b""  # no Finished before the step has run
    lab.stepper.run()
    assert lab.app.handshakes == 1
    assert not lab.check.verdict().fatal  # the certificate was checked in the step
    lab.tls.dataReceived(lab.server_speaks() + lab.server_sends(b"220 ready\r\n"))
    assert lab.stepper.steps == []  # a ticket and application bytes: read on the spot
    assert bytes(lab.app.received) == b"220 ready\r\n"


def test_bytes_that_arrive_during_a_step_are_fed_after_it(pki: Any) -> None:
    lab = _Lab(pki)
    flight = lab.server_speaks()
    lab.tls.dataReceived(flight[:10])  # the server's flight in two segments
    assert len(lab.stepper.steps) == 1
    lab.tls.dataReceived(flight[10:])  # while the thread has the SSL connection
    assert len(lab.stepper.steps) == 1
    assert lab.app.handshakes == 0
    lab.stepper.run()  # not enough for the handshake; then the rest is fed, and finishes it
    assert lab.app.handshakes == 1
    assert lab.stepper.steps == []


def test_a_write_during_a_step_is_sent_after_the_handshake(pki: Any) -> None:
    lab = _Lab(pki)
    lab.tls.dataReceived(lab.server_speaks())
    lab.tls.write(b"EHLO client\r\n")  # the SSL connection is the thread's: the write waits
    lab.stepper.run()
    lab.server_speaks()  # the client's Finished
    assert lab.server_reads() == b"EHLO client\r\n"


def test_the_connection_lost_during_a_step_reaches_the_application_once_after_it(pki: Any) -> None:
    lab = _Lab(pki)
    lab.tls.dataReceived(lab.server_speaks())
    lab.tls.connectionLost(Exception("gone"))
    assert lab.app.losses == []  # the thread still has the SSL connection
    lab.stepper.run()
    assert len(lab.app.losses) == 1


def test_a_failed_step_names_the_reason_even_when_the_connection_was_lost_meanwhile(pki: Any) -> None:
    lab = _Lab(pki)
    lab.tls.dataReceived(b"\x16\x03\x03\x00\x05hello")  # a handshake record no TLS stack can parse
    lab.tls.connectionLost(Exception("gone"))  # the peer closed while the step ran
    lab.stepper.run()
    assert len(lab.app.losses) == 1
    assert isinstance(lab.app.losses[0].value, SSL.Error)  # the handshake's failure, not the bare loss


def test_an_abort_during_a_step_drops_the_connection_and_the_late_outcome(pki: Any) -> None:
    lab = _Lab(pki)
    lab.tls.dataReceived(lab.server_speaks())
    lab.tls.loseConnection()  # mid-handshake: an abort, as in the stock layer
    assert lab.wire.disconnecting
    lab.stepper.run()
    assert lab.wire.value() == b""  # the step's Finished is not sent to an aborted connection
    assert lab.app.handshakes == 0


def test_a_verify_hook_keeps_the_handshake_on_the_reactor_thread(pki: Any) -> None:
    seen: list[str] = []
    lab = _Lab(pki, hook=lambda *args: seen.append(threading.current_thread().name) or True)
    lab.tls.dataReceived(lab.server_speaks())
    assert lab.stepper.steps == []
    assert lab.app.handshakes == 1
    assert seen and set(seen) == {threading.current_thread().name}


@implementer(IHandshakeListener)
class _Waiting(_Recording):
    def __init__(self) -> None:
        super().__init__()
        self.done: Deferred[None] = Deferred()

    def handshakeCompleted(self) -> None:
        super().handshakeCompleted()
        self.done.callback(None)


def _threads_of_handshake_work(context: SSL.Context) -> list[str]:
    """The names of the threads OpenSSL's info callback runs in on ``context``'s connections."""
    names: list[str] = []
    context.set_info_callback(lambda conn, where, ret: names.append(threading.current_thread().name))
    return names


@pytest_twisted.ensureDeferred
async def test_a_real_outbound_handshake_over_loopback_runs_in_the_handshake_threads(pki: Any) -> None:
    server_ctx = server_context(pki.good.cert, pki.good.key, PROTOCOLS)
    client_ctx = client_context(PROTOCOLS, ca=pki.ca_pem)
    server_threads, client_threads = _threads_of_handshake_work(server_ctx), _threads_of_handshake_work(client_ctx)
    accepted: Deferred[_Waiting] = Deferred()

    class Server(_Waiting):
        def connectionMade(self) -> None:
            accepted.callback(self)

    HANDSHAKE_THREADS.start(reactor)
    port = reactor.listenTCP(0, protocol.Factory.forProtocol(Server), interface="127.0.0.1")
    try:
        client = await TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            protocol.Factory.forProtocol(_Waiting))
        server = await accepted.addTimeout(10, reactor)
        check = CertificateCheck(VerifyMode.HOST, wanted=("localhost",), enforce_in_handshake=True)
        ImmediateWriter(server.transport).start_tls(ServerTLS(server_ctx))
        ImmediateWriter(client.transport).start_tls(ClientTLS(client_ctx, "localhost", check))
        await server.done.addTimeout(10, reactor)
        await client.done.addTimeout(10, reactor)
        assert not check.verdict().fatal
        main = threading.current_thread().name
        # The client's work on the server's flight (its certificate check included) ran in a
        # thread; its ClientHello, and the whole server side, on the reactor.
        assert any(name.startswith("tlsmta-tls-") for name in client_threads)
        assert client_threads[0] == main
        assert set(server_threads) == {main}
        client.transport.write(b"QUIT\r\n")
        client.transport.loseConnection()
        server.transport.loseConnection()
    finally:
        HANDSHAKE_THREADS.stop()
        await port.stopListening()
