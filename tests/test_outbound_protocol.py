"""OutboundSMTP over a fake transport, and the stock client faults it replaces."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.mail import smtp

from tlsmta.delivery.client import COMMAND_TIMEOUT, ConnectionBroken, OutboundSMTP
from tlsmta.smtp.client_codec import Reply
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
    from twisted.internet.defer import ensureDeferred

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

    from twisted.internet.defer import ensureDeferred

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
    from twisted.internet.defer import ensureDeferred

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
    from twisted.internet.defer import ensureDeferred

    from tlsmta.delivery.client import DATA_BLOCK_TIMEOUT

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
