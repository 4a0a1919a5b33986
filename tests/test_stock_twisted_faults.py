"""Each stock twisted.mail.smtp.ESMTP fault, shown on the stock class and fixed in ours.

Every test runs the same bytes through both.  The stock assertions prove
the test can fail: were InboundSMTP to inherit the stock behaviour, the
second half of the test would fail the same way.
"""

from __future__ import annotations

import gc
import socket
import warnings
from typing import Any

import pytest
from inbound_harness import Session, runtime
from twisted.internet.defer import succeed
from twisted.mail import smtp
from zope.interface import implementer

from tlsmta.testing import FakeTLSTransport


@implementer(smtp.IMessage)
class _Message:
    def __init__(self, store: list[bytes]):
        self.lines: list[bytes] = []
        self.store = store

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def eomReceived(self) -> Any:
        self.store.append(b"\n".join(self.lines))
        return succeed(b"ok")

    def connectionLost(self) -> None:
        pass


@implementer(smtp.IMessageDelivery)
class _AcceptAll:
    def __init__(self) -> None:
        self.stored: list[bytes] = []

    def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> bytes:
        return b"Received: stock"

    def validateFrom(self, helo: Any, origin: Any) -> Any:
        return origin

    def validateTo(self, user: Any) -> Any:
        return lambda: _Message(self.stored)


class Stock:
    """The stock ESMTP over the same fake transport."""

    def __init__(self, tls_context: Any = None):
        self.delivery = _AcceptAll()
        self.proto = smtp.ESMTP(contextFactory=tls_context)
        self.proto.delivery = self.delivery
        self.transport = FakeTLSTransport()
        self.proto.makeConnection(self.transport)
        self.transport.clear()

    def send(self, data: bytes) -> list[str]:
        self.proto.dataReceived(data)
        out = self.transport.value().decode("utf-8", "replace").splitlines()
        self.transport.clear()
        return out

    def close(self) -> None:
        self.proto.setTimeout(None)


def _ours(**listener: Any) -> Session:
    s = Session(runtime(listener=listener))
    s.new_replies()
    return s


def test_mail_before_helo() -> None:
    """Stock accepts MAIL before HELO; ours answers 503."""
    stock = Stock()
    assert stock.send(b"MAIL FROM:<a@b.test>\r\n")[0].startswith("250")
    stock.close()
    assert _ours().codes(b"MAIL FROM:<a@b.test>\r\n") == [503]


def test_starttls_pipelined_command_injection(pki: Any) -> None:
    """Stock runs a command pipelined after STARTTLS (CVE-2011-0411); ours discards it."""
    stock = Stock(tls_context=object())
    stock.send(b"EHLO c.test\r\n")
    replies = stock.send(b"STARTTLS\r\nRSET\r\n")
    assert [r[:3] for r in replies] == ["220", "250"]  # RSET executed "inside" TLS
    stock.close()

    ours = Session(runtime(listener={"tls": "starttls"}, tls_pair=pki.good))
    ours.new_replies()
    ours.ehlo()
    assert ours.codes(b"STARTTLS\r\nRSET\r\n") == [220]


def test_starttls_keeps_helo_state(pki: Any) -> None:
    """Stock keeps the HELO after STARTTLS, so MAIL works without a new EHLO; ours is 503."""
    stock = Stock(tls_context=object())
    stock.send(b"EHLO c.test\r\n")
    stock.send(b"STARTTLS\r\n")
    assert stock.send(b"MAIL FROM:<a@b.test>\r\n")[0].startswith("250")
    stock.close()

    ours = Session(runtime(listener={"tls": "starttls"}, tls_pair=pki.good))
    ours.new_replies()
    ours.ehlo()
    ours.send(b"STARTTLS\r\n")
    assert ours.codes(b"MAIL FROM:<a@b.test>\r\n") == [503]


def test_long_line_in_data_leaves_data_mode() -> None:
    """Stock leaves DATA on a long line and runs what follows as commands; ours stays in DATA."""
    stock = Stock()
    stock.proto.MAX_LENGTH = 1000
    stock.send(b"HELO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
    replies = stock.send(b"x" * 2000 + b"\r\nNOOP\r\n")
    assert replies[0].startswith("500")  # "Line too long", back in command mode
    stock.close()

    ours = _ours(max_line_length=1000)
    ours.ehlo()
    ours.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
    assert ours.send(b"x" * 2000 + b"\r\nNOOP\r\n") == []
    assert ours.codes(b".\r\n") == [550]


def test_bare_lf_passed_into_the_message() -> None:
    """Stock stores a bare-LF "end of data" inside the message; ours rejects the message."""
    payload = b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\nhi\n.\nmore\r\n.\r\n"
    stock = Stock()
    stock.send(b"HELO c.test\r\n")
    replies = stock.send(payload)
    assert replies[-1].startswith("250")
    assert b"hi\n.\nmore" in stock.delivery.stored[0]
    stock.close()

    ours = _ours()
    ours.ehlo()
    assert ours.codes(payload)[-1] == 550
    assert ours.sink.stored == []


def test_nul_before_fake_end_of_data_passed_into_the_message() -> None:
    """Stock stores ``<CRLF><NUL>.<CRLF>`` byte for byte; ours refuses the message with 550 5.5.2.

    A next hop that strips NUL before looking for the end of data would read
    the rest as commands (SMTP smuggling, outbound).
    """
    smuggled = b"hi\r\n\x00.\r\nMAIL FROM:<x@evil.test>\r\n"
    payload = b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n" + smuggled + b".\r\n"
    stock = Stock()
    stock.send(b"HELO c.test\r\n")
    assert stock.send(payload)[-1].startswith("250")
    assert b"hi\n\x00.\nMAIL FROM" in stock.delivery.stored[0]
    stock.close()

    ours = _ours()
    ours.ehlo()
    replies = ours.send(payload)
    assert replies[-1].startswith("550 5.5.2") and "NUL" in replies[-1]
    assert ours.sink.stored == []
    assert ours.codes(b"NOOP\r\n") == [250]  # the session carries on


def test_noop_not_implemented() -> None:
    """Stock has no NOOP (500); ours answers 250."""
    stock = Stock()
    assert stock.send(b"NOOP\r\n")[0].startswith("500")
    stock.close()
    assert _ours().codes(b"NOOP\r\n") == [250]


def test_ehlo_advertises_only_auth_and_starttls() -> None:
    """Stock EHLO omits PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES; ours lists them."""
    stock = Stock()
    lines = stock.send(b"EHLO c.test\r\n")
    assert not any("PIPELINING" in line or "SIZE" in line for line in lines)
    stock.close()
    ours = _ours().ehlo()
    assert {"PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"} <= {line[4:] for line in ours}


def test_unknown_mail_parameter_ignored() -> None:
    """Stock ignores unknown MAIL parameters; ours answers 555."""
    stock = Stock()
    stock.send(b"EHLO c.test\r\n")
    assert stock.send(b"MAIL FROM:<a@b.test> FOO=BAR\r\n")[0].startswith("250")
    stock.close()
    ours = _ours()
    ours.ehlo()
    assert ours.codes(b"MAIL FROM:<a@b.test> FOO=BAR\r\n") == [555]


def test_udp_port_leaks_its_socket_when_bind_fails() -> None:
    """A UDP port whose bind fails raises CannotListenError and drops its socket unclosed (closed
    only by the garbage collector, with a ResourceWarning). twisted.names' client binds random
    ports and retries on failure, so tlsmta's resolver lets the kernel choose (discovery._resolver)."""

    from twisted.internet import error, protocol, reactor

    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(error.CannotListenError):
                reactor.listenUDP(taken.getsockname()[1], protocol.DatagramProtocol(), interface="127.0.0.1")
            gc.collect()
    finally:
        taken.close()
    assert any(issubclass(w.category, ResourceWarning) and "unclosed <socket.socket" in str(w.message) for w in caught)
