"""OutboundSMTP over a fake transport, and the stock client faults it replaces."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import ensureDeferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.mail import smtp
from twisted.protocols.basic import LineReceiver
from twisted.test import iosim
from zope.interface import implementer

from tlsmta.delivery._client import COMMAND_TIMEOUT, ConnectionBroken, OutboundSMTP
from tlsmta.smtp._client_codec import Reply
from tlsmta.smtp.client_session import Greeted, StartTLSRefused, TransactionDone
from tlsmta.testing import FakeTLSTransport


def connected() -> tuple[OutboundSMTP, FakeTLSTransport, Clock]:
    clock = Clock()
    proto = OutboundSMTP(clock, "me")
    transport = FakeTLSTransport()
    proto.makeConnection(transport)
    return proto, transport, clock


def greeted(ehlo: bytes = b"250 mx\r\n") -> tuple[OutboundSMTP, FakeTLSTransport, Clock]:
    proto, transport, clock = connected()
    proto.dataReceived(b"220 mx\r\n")
    proto.dataReceived(ehlo)
    assert isinstance(results(proto.greeting())[0], Greeted)
    transport.clear()
    return proto, transport, clock


async def chunks_of(chunks: list[bytes]):
    for c in chunks:
        yield c


def results(d: Any) -> list[Any]:
    out: list[Any] = []
    d.addBoth(out.append)
    return out


def test_pipelined_replies_matched_in_order() -> None:
    """Several commands in a row get their replies in order, multi-line replies joined."""
    proto, transport, _ = connected()
    proto.dataReceived(b"220 mx ESMTP\r\n")
    assert transport.value() == b"EHLO me\r\n"
    proto.dataReceived(b"250-mx\r\n250 PIPELINING\r\n")
    greeting = results(proto.greeting())[0]
    assert greeting.banner == Reply(220, ("mx ESMTP",))
    assert greeting.hello.lines == ("mx", "PIPELINING")
    transport.clear()
    done = results(ensureDeferred(proto.transaction("a@b", [], ["r@d", "s@d"], lambda: chunks_of([b"hi\r\n"]))))
    assert transport.value() == b"MAIL FROM:<a@b>\r\nRCPT TO:<r@d>\r\nRCPT TO:<s@d>\r\nDATA\r\n"
    proto.dataReceived(b"250 2.1.0 ok\r\n250 2.1.5 r\r\n550 5.1.1 s\r\n354 go\r\n")
    proto.dataReceived(b"250 2.0.0 queued\r\n")
    [outcome] = done
    assert isinstance(outcome, TransactionDone)
    assert outcome.mail.enhanced == "2.1.0"
    assert [r.enhanced for r in outcome.recipients] == ["2.1.5", "5.1.1"]
    assert outcome.data == Reply(250, ("2.0.0 queued",))


def test_reply_after_starttls_220_is_discarded() -> None:
    """A reply the server pipelined after its 220 to STARTTLS is never read as an answer inside TLS."""
    proto, transport, _ = greeted(b"250-mx\r\n250 STARTTLS\r\n")
    creator = object()
    secured = results(proto.starttls(creator))
    proto.dataReceived(b"220 2.0.0 go ahead\r\n250 injected\r\n")
    assert transport.tls_started_with is creator
    assert transport.value().endswith(b"EHLO me\r\n")  # written after the handshake began
    assert secured == []  # "250 injected" was dropped, not taken as the EHLO answer
    proto.dataReceived(b"250 real\r\n")
    assert isinstance(secured[0], Greeted) and secured[0].hello == Reply(250, ("real",))


def test_stock_client_quits_on_454_while_ours_can_go_on() -> None:
    """Stock ESMTPClient sends QUIT after 454 even when TLS is optional; OutboundSMTP just returns the reply."""
    stock = smtp.ESMTPClient(None, object(), b"client.test")
    stock.requireTransportSecurity = False
    transport = FakeTLSTransport()
    stock.makeConnection(transport)
    stock.dataReceived(b"220 server\r\n")
    stock.dataReceived(b"250-server\r\n250 STARTTLS\r\n")
    transport.clear()
    stock.dataReceived(b"454 4.7.0 TLS not available\r\n")
    assert transport.value() == b"QUIT\r\n"

    proto, transport, _ = greeted(b"250-mx\r\n250 STARTTLS\r\n")
    reply = results(proto.starttls(object()))
    proto.dataReceived(b"454 4.7.0 TLS not available\r\n")
    assert isinstance(reply[0], StartTLSRefused) and reply[0].reply.code == 454
    assert not transport.disconnecting
    transport.clear()
    assert results(ensureDeferred(proto.transaction("a@b", [], ["r@d"], lambda: chunks_of([])))) == []  # the session carries on
    assert transport.value() == b"MAIL FROM:<a@b>\r\n"


def test_unexpected_reply_breaks_the_connection() -> None:
    """A reply nobody asked for is a protocol error: the connection is aborted."""
    proto, transport, _ = greeted()
    proto.dataReceived(b"250 surprise\r\n")
    assert transport.disconnecting or transport.disconnected
    failure = results(proto.starttls(object()))[0]
    assert isinstance(failure.value, ConnectionBroken)


def test_garbage_reply_breaks_the_connection() -> None:
    """Output that is not SMTP fails the pending command."""
    proto, _, _ = connected()
    banner = results(proto.greeting())
    proto.dataReceived(b"HTTP/1.1 400 Bad Request\r\n")
    assert isinstance(banner[0].value, ConnectionBroken)
    assert "not an SMTP reply" in banner[0].value.reason


def test_reply_timeout() -> None:
    """No reply within the timeout fails the command and aborts the connection."""
    proto, transport, clock = connected()
    proto.dataReceived(b"220 mx\r\n")  # EHLO goes out
    reply = results(proto.greeting())
    clock.advance(COMMAND_TIMEOUT - 1)
    assert reply == []
    clock.advance(2)
    assert isinstance(reply[0].value, ConnectionBroken)
    assert "timeout" in reply[0].value.reason


@pytest.mark.parametrize("chunks", [[b".a\r\nb"], [b"x\r\n", b".y\r\n"], [b"x\r", b"\n.", b"\r\n"]])
def test_send_body_stuffs_every_line(chunks: list[bytes]) -> None:
    """send_body dot-stuffs the first line and lines split across chunks, then ends DATA."""
    proto, transport, _ = greeted()
    final = results(ensureDeferred(proto.transaction("a@b", [], ["r@d"], lambda: chunks_of(chunks))))
    proto.dataReceived(b"250 ok\r\n")
    proto.dataReceived(b"250 ok\r\n")
    transport.clear()
    proto.dataReceived(b"354 go\r\n")
    sent = transport.value()
    proto.dataReceived(b"250 ok\r\n")
    assert final[0].data.code == 250
    assert sent.endswith(b"\r\n.\r\n")
    assert b"\r\r\n" not in sent
    lines = sent[:-5].split(b"\r\n")
    assert all(not line.startswith(b".") or line.startswith(b"..") for line in lines if line)


def test_server_that_stops_reading_during_data_times_out() -> None:
    """Once the transport pauses us (the server stopped reading), DATA_BLOCK_TIMEOUT ends the session."""
    from tlsmta.delivery._client import DATA_BLOCK_TIMEOUT

    proto, transport, clock = greeted()

    async def body():
        yield b"first\r\n"
        proto.pauseProducing()  # as the transport does when its buffer is full
        yield b"second\r\n"

    final = results(ensureDeferred(proto.transaction("a@b", [], ["r@d"], body)))
    for reply in (b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"):
        proto.dataReceived(reply)
    clock.advance(DATA_BLOCK_TIMEOUT - 1)
    assert final == []
    clock.advance(2)
    assert isinstance(final[0].value, ConnectionBroken) and "sending data" in final[0].value.reason


# -- over an in-memory connection, through the injected endpoint factory -------------------------


class ScriptedMX(LineReceiver):
    """A small SMTP server: EHLO with PIPELINING, takes one message, answers QUIT."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.in_data = False

    def connectionMade(self) -> None:
        self.sendLine(b"220 mx.test ESMTP")

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)
        if self.in_data:
            if line == b".":
                self.in_data = False
                self.sendLine(b"250 2.0.0 queued as 1")
            return
        verb = line.split(b" ")[0].upper()
        if verb == b"EHLO":
            self.sendLine(b"250-mx.test\r\n250-PIPELINING\r\n250 SIZE 1000")
        elif verb == b"RCPT" and b"<nobody@" in line:
            self.sendLine(b"550 5.1.1 no such user")
        elif verb == b"DATA":
            self.in_data = True
            self.sendLine(b"354 go ahead")
        elif verb == b"QUIT":
            self.sendLine(b"221 2.0.0 bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"250 2.0.0 ok")


class InMemory:
    """An EndpointFactory whose connections are iosim pairs with a ScriptedMX; no sockets."""

    def __init__(self) -> None:
        self.pumps: list[iosim.IOPump] = []
        self.servers: list[ScriptedMX] = []
        self.asked: list[tuple[str, int, str | None, float]] = []

    def __call__(self, ip: str, port: int, source: str | None, timeout: float) -> Any:
        self.asked.append((ip, port, source, timeout))
        factory = self

        @implementer(IStreamClientEndpoint)
        class Endpoint:
            def connect(self, client_factory: Any) -> Any:
                client, server = client_factory.buildProtocol(None), ScriptedMX()
                factory.servers.append(server)
                factory.pumps.append(iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client),
                                                   greet=False))
                return succeed(client)

        return Endpoint()

    def flush(self) -> None:
        for pump in self.pumps:
            pump.flush()


def test_delivery_over_an_in_memory_connection() -> None:
    """Through the endpoint factory: greeting, one pipelined transaction with a refused recipient,
    the body dot-stuffed, QUIT; what the server read and what the client concluded."""
    from tlsmta.delivery._client import connect

    endpoints, clock = InMemory(), Clock()
    connected = results(ensureDeferred(connect(clock, endpoints, "192.0.2.7", 25, "client.test", source="192.0.2.1")))
    assert endpoints.asked == [("192.0.2.7", 25, "192.0.2.1", 30)]
    proto = connected[0]
    greeting = results(proto.greeting())
    endpoints.flush()
    assert isinstance(greeting[0], Greeted) and "PIPELINING" in greeting[0].capabilities
    done = results(ensureDeferred(proto.transaction(
        "a@b.test", ["SIZE=20"], ["user@d.test", "nobody@d.test"], lambda: chunks_of([b".dot\r\n", b"end\r\n"])
    )))
    endpoints.flush()
    [outcome] = done
    assert [r.code for r in outcome.recipients] == [250, 550] and outcome.data == Reply(250, ("2.0.0 queued as 1",))
    proto.quit()
    endpoints.flush()
    assert results(proto.closed) == [None]
    assert endpoints.servers[0].lines == [
        b"EHLO client.test", b"MAIL FROM:<a@b.test> SIZE=20", b"RCPT TO:<user@d.test>", b"RCPT TO:<nobody@d.test>",
        b"DATA", b"..dot", b"end", b".", b"QUIT",
    ]
    assert clock.getDelayedCalls() == []  # every wait's timer is gone


def test_probe_over_an_in_memory_connection() -> None:
    """probe_address through the endpoint factory: the banner, no STARTTLS, and delivery's verdict on that."""
    from tlsmta.app import _probe as probe
    from tlsmta.tls._policy import VerifyMode

    endpoints = InMemory()
    result = results(ensureDeferred(probe.probe_address(Clock(), "mx.test", "192.0.2.7", 25, "d.test", {}, "probe.test", endpoints)))
    endpoints.flush()
    [probed] = result
    assert probed.banner == "220 mx.test ESMTP" and not probed.starttls and probed.error is None
    assert probe.configured_outcome(probed, "required", VerifyMode.HOST) == (False, "defer: 451 4.7.6 STARTTLS required but not advertised")
    assert probe.configured_outcome(probed, "ifavailable", VerifyMode.HOST) == (True, "deliver in plain text (STARTTLS not offered)")
    assert endpoints.servers[0].lines == [b"EHLO probe.test", b"QUIT"]


@pytest.mark.parametrize("ip, endpoint_class", [("192.0.2.7", TCP4ClientEndpoint), ("2001:db8::7", TCP6ClientEndpoint)])
def test_production_endpoints_are_tcp_by_address_family(ip: str, endpoint_class: type) -> None:
    from tlsmta.delivery._client import tcp_endpoints

    assert isinstance(tcp_endpoints(Clock())(ip, 25, None, 30), endpoint_class)
