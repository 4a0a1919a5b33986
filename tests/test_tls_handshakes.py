"""tls.handshakes: a handshake's steps run in the handshake threads, and nothing on the
reactor thread touches the SSL connection while one runs.

The first tests drive the TLS layer by hand (a StringTransport, a pyOpenSSL client
over memory BIOs, and a stepper that runs each queued step when the test says), so
the moment a byte, a write or the connection's loss arrives is chosen, not raced.
The last ones run real handshakes over loopback with the threads running."""

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
    """A server-side OffloadedHandshakeTLS on a StringTransport, and a memory-BIO client."""

    def __init__(self, pki: Any):
        factory = TLSMemoryBIOFactory(ServerTLS(server_context(pki.good.cert, pki.good.key, PROTOCOLS)), False,
                                      protocol.Factory.forProtocol(_Recording))
        self.tls = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2525))
        assert isinstance(self.tls, OffloadedHandshakeTLS)
        self.stepper = _ByHand()
        self.tls.threads = self.stepper
        self.wire = StringTransport()
        self.tls.makeConnection(self.wire)
        self.app: _Recording = self.tls.wrappedProtocol
        self.client = SSL.Connection(client_context(PROTOCOLS, ca=pki.ca_pem), None)
        self.client.set_connect_state()
        self.client.set_tlsext_host_name(b"localhost")

    def client_speaks(self) -> bytes:
        """Run the client as far as it goes on what the server sent; what it sends back."""
        sent = self.wire.value()
        self.wire.clear()
        if sent:
            self.client.bio_write(sent)
        try:
            self.client.do_handshake()
        except SSL.WantReadError:
            pass
        return self.client.bio_read(65536)

    def to_server(self, data: bytes) -> None:
        self.tls.dataReceived(data)

    def client_sends(self, data: bytes) -> bytes:
        self.client.send(data)
        return self.client.bio_read(65536)

    def client_reads(self) -> bytes:
        self.client.bio_write(self.wire.value())
        self.wire.clear()
        try:
            return self.client.recv(65536)
        except SSL.WantReadError:
            return b""


def test_the_step_after_the_client_hello_is_handed_to_the_threads(pki: Any) -> None:
    lab = _Lab(pki)
    lab.to_server(lab.client_speaks())  # ClientHello
    assert len(lab.stepper.steps) == 1
    assert lab.wire.value() == b""  # no ServerHello before the step has run
    lab.stepper.run()
    assert lab.wire.value() != b""  # the server's flight, sent when the step's outcome came back
    finished = lab.client_speaks()
    lab.to_server(finished + lab.client_sends(b"EHLO client\r\n"))
    lab.stepper.run()
    assert lab.app.handshakes == 1
    assert bytes(lab.app.received) == b"EHLO client\r\n"  # application bytes behind the Finished


def test_bytes_that_arrive_during_a_step_are_fed_after_it(pki: Any) -> None:
    lab = _Lab(pki)
    lab.to_server(lab.client_speaks())
    lab.stepper.run()
    finished = lab.client_speaks()
    lab.to_server(finished)
    assert len(lab.stepper.steps) == 1
    lab.to_server(lab.client_sends(b"EHLO client\r\n"))  # while the Finished is being checked
    assert lab.app.received == b""
    lab.stepper.run()
    assert lab.app.handshakes == 1
    assert bytes(lab.app.received) == b"EHLO client\r\n"
    assert lab.stepper.steps == []


def test_a_write_during_a_step_is_sent_after_the_handshake(pki: Any) -> None:
    lab = _Lab(pki)
    lab.to_server(lab.client_speaks())
    lab.stepper.run()
    lab.to_server(lab.client_speaks())  # the client's Finished
    lab.tls.write(b"220 ready\r\n")  # the SSL connection is the thread's: the write waits
    lab.stepper.run()
    assert lab.client_reads() == b"220 ready\r\n"


def test_the_connection_lost_during_a_step_reaches_the_application_once_after_it(pki: Any) -> None:
    lab = _Lab(pki)
    lab.to_server(lab.client_speaks())
    lab.tls.connectionLost(Exception("gone"))
    assert lab.app.losses == []  # the thread still has the SSL connection
    lab.stepper.run()
    assert len(lab.app.losses) == 1
    assert lab.app.handshakes == 0


def test_a_failed_step_names_the_reason_even_when_the_connection_was_lost_meanwhile(pki: Any) -> None:
    lab = _Lab(pki)
    lab.to_server(b"\x16\x03\x01\x00\x05hello")  # a handshake record no TLS stack can parse
    lab.tls.connectionLost(Exception("gone"))  # the peer closed while the step ran
    lab.stepper.run()
    assert len(lab.app.losses) == 1
    assert isinstance(lab.app.losses[0].value, SSL.Error)  # the handshake's failure, not the bare loss


def test_an_abort_during_a_step_drops_the_connection_and_the_late_outcome(pki: Any) -> None:
    lab = _Lab(pki)
    lab.to_server(lab.client_speaks())
    lab.tls.loseConnection()  # mid-handshake: an abort, as in the stock layer
    assert lab.wire.disconnecting
    lab.stepper.run()
    assert lab.wire.value() == b""  # the step's flight is not sent to an aborted connection
    assert lab.app.handshakes == 0


def test_a_verify_hook_keeps_the_handshake_on_the_reactor_thread(pki: Any) -> None:
    check = CertificateCheck(VerifyMode.OPTIONAL, hook=lambda *args: True)
    factory = TLSMemoryBIOFactory(ServerTLS(server_context(pki.good.cert, pki.good.key, PROTOCOLS), check), False,
                                  protocol.Factory.forProtocol(_Recording))
    tls = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2525))
    tls.threads = _ByHand()
    tls.makeConnection(StringTransport())
    assert tls.handshake_in_thread is False


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
async def test_real_handshakes_over_loopback_run_in_the_handshake_threads(pki: Any) -> None:
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
        # The server's work on the ClientHello and the client's on the server's flight
        # (its certificate check included) ran in the threads; the ClientHello itself on the reactor.
        assert any(name.startswith("tlsmta-tls-") for name in server_threads)
        assert any(name.startswith("tlsmta-tls-") for name in client_threads)
        assert client_threads[0] == main
        client.transport.write(b"QUIT\r\n")
        client.transport.loseConnection()
        server.transport.loseConnection()
    finally:
        HANDSHAKE_THREADS.stop()
        await port.stopListening()
