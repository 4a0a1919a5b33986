"""OutboundSMTP over a fake transport, and the stock client faults it replaces."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.mail import smtp

from tlsmta.delivery.client import COMMAND_TIMEOUT, ConnectionBroken, OutboundSMTP
from tlsmta.smtp.client_codec import Reply
from tlsmta.testing import FakeTLSTransport


def connected() -> tuple[OutboundSMTP, FakeTLSTransport, Clock]:
    clock = Clock()
    proto = OutboundSMTP(clock)
    transport = FakeTLSTransport()
    proto.makeConnection(transport)
    return proto, transport, clock


def results(d: Any) -> list[Any]:
    out: list[Any] = []
    d.addBoth(out.append)
    return out


def test_pipelined_replies_matched_in_order() -> None:
    """Several commands in a row get their replies in order, multi-line replies joined."""
    proto, transport, _ = connected()
    proto.dataReceived(b"220 mx ESMTP\r\n")
    assert results(proto.banner)[0] == Reply(220, ("mx ESMTP",))
    ehlo, mail = results(proto.command("EHLO me")), results(proto.command("MAIL FROM:<a@b>"))
    assert transport.value() == b"EHLO me\r\nMAIL FROM:<a@b>\r\n"
    proto.dataReceived(b"250-mx\r\n250 PIPELINING\r\n250 2.1.0 ok\r\n")
    assert ehlo[0].lines == ("mx", "PIPELINING")
    assert mail[0].enhanced == "2.1.0"


def test_reply_after_starttls_220_is_discarded() -> None:
    """A reply the server pipelined after its 220 to STARTTLS is never read as an answer inside TLS."""
    proto, transport, _ = connected()
    proto.dataReceived(b"220 mx\r\n")
    seen: list[Reply] = []

    def on_starttls(reply: Reply) -> None:
        seen.append(reply)
        proto.start_tls(object())  # as delivery does on a 220

    proto.command("STARTTLS").addCallback(on_starttls)
    proto.dataReceived(b"220 2.0.0 go ahead\r\n250 injected\r\n")
    assert transport.tls_started_with is not None
    ehlo = results(proto.command("EHLO me"))
    assert ehlo == []  # "250 injected" was dropped, not taken as the EHLO answer
    proto.dataReceived(b"250 real\r\n")
    assert ehlo[0] == Reply(250, ("real",))


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

    proto, transport, _ = connected()
    proto.dataReceived(b"220 mx\r\n")
    reply = results(proto.command("STARTTLS"))
    proto.dataReceived(b"454 4.7.0 TLS not available\r\n")
    assert reply[0].code == 454
    assert not transport.disconnecting
    assert results(proto.command("MAIL FROM:<a@b>")) == []  # the session carries on


def test_unexpected_reply_breaks_the_connection() -> None:
    """A reply nobody asked for is a protocol error: the connection is aborted."""
    proto, transport, _ = connected()
    proto.dataReceived(b"220 mx\r\n250 surprise\r\n")
    assert transport.disconnecting or transport.disconnected
    failure = results(proto.command("NOOP"))[0]
    assert isinstance(failure.value, ConnectionBroken)


def test_garbage_reply_breaks_the_connection() -> None:
    """Output that is not SMTP fails the pending command."""
    proto, _, _ = connected()
    banner = results(proto.banner)
    proto.dataReceived(b"HTTP/1.1 400 Bad Request\r\n")
    assert isinstance(banner[0].value, ConnectionBroken)
    assert "not an SMTP reply" in banner[0].value.reason


def test_reply_timeout() -> None:
    """No reply within the timeout fails the command and aborts the connection."""
    proto, transport, clock = connected()
    proto.dataReceived(b"220 mx\r\n")
    reply = results(proto.command("EHLO me"))
    clock.advance(COMMAND_TIMEOUT - 1)
    assert reply == []
    clock.advance(2)
    assert isinstance(reply[0].value, ConnectionBroken)
    assert "timeout" in reply[0].value.reason


@pytest.mark.parametrize("chunks", [[b".a\r\nb"], [b"x\r\n", b".y\r\n"], [b"x\r", b"\n.", b"\r\n"]])
def test_send_body_stuffs_every_line(chunks: list[bytes]) -> None:
    """send_body dot-stuffs the first line and lines split across chunks, then ends DATA."""
    from twisted.internet.defer import ensureDeferred

    proto, transport, _ = connected()
    proto.dataReceived(b"220 mx\r\n")
    transport.clear()

    async def body():
        for c in chunks:
            yield c

    final = results(ensureDeferred(proto.send_body(body())))
    sent = transport.value()
    proto.dataReceived(b"250 ok\r\n")
    assert final[0].code == 250
    assert sent.endswith(b"\r\n.\r\n")
    assert b"\r\r\n" not in sent
    lines = sent[:-5].split(b"\r\n")
    assert all(not line.startswith(b".") or line.startswith(b"..") for line in lines if line)


def test_server_that_stops_reading_during_data_times_out() -> None:
    """Once the transport pauses us (the server stopped reading), DATA_BLOCK_TIMEOUT ends the session."""
    from twisted.internet.defer import ensureDeferred

    from tlsmta.delivery.client import DATA_BLOCK_TIMEOUT

    proto, transport, clock = connected()
    proto.dataReceived(b"220 mx\r\n")

    async def body():
        yield b"first\r\n"
        proto.pauseProducing()  # as the transport does when its buffer is full
        yield b"second\r\n"

    final = results(ensureDeferred(proto.send_body(body())))
    clock.advance(DATA_BLOCK_TIMEOUT - 1)
    assert final == []
    clock.advance(2)
    assert isinstance(final[0].value, ConnectionBroken) and "sending data" in final[0].value.reason
