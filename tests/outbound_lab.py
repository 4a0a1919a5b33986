"""A lab for outbound tests: a sending tlsmta, receiving servers, captured log events.

The sender routes ``example.test`` (MX ``mx.example.test``) to 127.0.0.1 on
the receiver's port through pinned DNS.  Receivers are real tlsmta
inbound listeners with the certificate under test, or a scripted server
for misbehaviour tlsmta itself would never show (454, a broken handshake).
A recording proxy in between keeps what the sender wrote, read by read.
"""

from __future__ import annotations

from typing import Any

from e2e import in_thread, send_smtplib
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver
from twisted.protocols.portforward import ProxyFactory, ProxyServer
from zope.interface import implementer

from tlsmta.testing import RunningRelay, build_config, dev_listener

DOMAIN = "example.test"
MX = "mx.example.test"


def sender_config(tmp_path: Any, port: int, ca: str | None, domains: dict[str, Any] | None = None, dns: dict[str, Any] | None = None,
                  listener: dict[str, Any] | None = None, **global_opts: Any):
    raw = {
        "global": {
            "hostname": "sender.test",
            "state_dir": str(tmp_path / "sender-state"),
            "route": "mx",
            "smtp_port": port,
            **({"tls_ca": ca} if ca else {}),
            **global_opts,
        },
        "spool": {"path": str(tmp_path / "sender-spool")},
        "queue": {"retry_schedule": [3600]},
        "dns": _merge_dns({
            "mx": {DOMAIN: [MX], "other.example.net": [MX]},
            "hosts": {MX: ["127.0.0.1"]},
        }, dns or {}),
        "domain": domains or {},
        "listener": [dev_listener(name="submit", **(listener or {}))],
    }
    return build_config(raw)


def _merge_dns(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``[dns]`` tables with extra pinned answers (extra wins per name)."""
    return {table: {**base.get(table, {}), **extra.get(table, {})} for table in {*base, *extra}}


async def start_sender(tmp_path: Any, port: int, ca: str | None, domains: dict[str, Any] | None = None, hooks: dict[str, str] | None = None,
                       dns: dict[str, Any] | None = None, listener: dict[str, Any] | None = None, **opts: Any) -> RunningRelay:
    config = sender_config(tmp_path, port, ca, domains, dns, listener, **opts)
    if hooks:
        import attrs

        config = attrs.evolve(config, hooks=hooks)
    return await RunningRelay(config).start()


async def start_receiver(tmp_path: Any, pair: Any = None, name: str = "receiver", **listener: Any) -> RunningRelay:
    """A tlsmta accepting everything into tmp_path/<name>-maildir, STARTTLS with ``pair`` if given."""
    table = dev_listener(name=name, **listener)
    if pair is not None:
        table.update(tls="starttls", tls_certificate=pair.cert, tls_key=pair.key)
    raw = {
        "global": {"hostname": MX, "state_dir": str(tmp_path / f"{name}-state"), "route": f"maildir:{tmp_path / (name + '-maildir')}"},
        "spool": {"path": str(tmp_path / f"{name}-spool")},
        "listener": [table],
    }
    return await RunningRelay(build_config(raw)).start()


async def submit_and_settle(relay: RunningRelay, rcpts: tuple[str, ...] = (f"user@{DOMAIN}",), **kwargs: Any) -> None:
    """Hand a message to the sending relay and wait until its queue has nothing due."""
    await in_thread(send_smtplib, relay.port, rcpts=rcpts, **kwargs)
    await relay.service.queue.wait_idle()


async def deliver_once(
    tmp_path: Any, pair: Any, ca: str | None, rcpts: tuple[str, ...] = (f"user@{DOMAIN}",), body: str | None = None,
    receiver: dict[str, Any] | None = None, **sender_opts: Any,
) -> RunningRelay:
    """A receiver with ``pair`` (None: no STARTTLS), a sender with ``sender_opts``, one message through;
    both stopped on return.  Returns the receiver (for its counters and Maildir)."""
    rx = await start_receiver(tmp_path, pair, **(receiver or {}))
    await send_once(tmp_path, rx, ca, rcpts, body, **sender_opts)
    return rx


async def send_once(tmp_path: Any, rx: RunningRelay, ca: str | None, rcpts: tuple[str, ...] = (f"user@{DOMAIN}",),
                    body: str | None = None, **sender_opts: Any) -> None:
    """A sender with ``sender_opts`` whose smtp_port is ``rx``'s, one message through; both stopped on return."""
    sender = await start_sender(tmp_path, rx.port, ca, **sender_opts)
    try:
        await submit_and_settle(sender, rcpts=rcpts, **({"body": body} if body else {}))
    finally:
        await sender.stop()
        await rx.stop()


def deliveries(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["tlsmta_event"] == "delivery"]


class RecordingProxy(ProxyServer):
    """Forwards one connection to the receiver; keeps each read of what the client sent."""

    def connectionMade(self) -> None:
        self.reads: list[bytes] = []
        self.factory.connections.append(self.reads)  # type: ignore[attr-defined]
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        self.reads.append(data)
        super().dataReceived(data)


async def start_recording_proxy(port: int) -> tuple[IListeningPort, list[list[bytes]]]:
    """A loopback proxy to ``port``; its listening port, and per connection the client's reads."""
    factory = ProxyFactory("127.0.0.1", port)
    factory.protocol = RecordingProxy
    factory.connections = []  # type: ignore[attr-defined]
    listening = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    return listening, factory.connections  # type: ignore[attr-defined]


# -- a scripted receiver for behaviour a correct server never shows ---------------------------


class ScriptedSMTP(LineReceiver):
    """An SMTP server whose STARTTLS misbehaves as ``factory.mode`` says:

    ``454``: refuses STARTTLS; ``broken``: says 220 then sends junk instead of
    a handshake; ``inject``: says 220 and pipelines a fake reply after it;
    ``stall``: says 220 and then nothing (a handshake that never completes);
    ``none``: does not advertise STARTTLS; ``reset``: drops the connection in
    the middle of DATA; ``odd-size``: no STARTTLS, and a SIZE whose "digits"
    are not ASCII (``²``, which str.isdigit() accepts and int() refuses);
    ``refuse-NNN``: answers STARTTLS with code NNN and goes on in plain text;
    ``tls-then-close``: a real handshake with ``factory.tls`` (a server
    connection creator), then closes the connection at the EHLO inside TLS.
    """

    delimiter = b"\r\n"
    MAX_LENGTH = 1024 * 1024

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.in_data = False
        self.lines: list[bytes] = []
        self.sendLine(b"220 scripted.test ESMTP")

    def lineReceived(self, line: bytes) -> None:
        if self.in_data:
            if line == b".":
                self.in_data = False
                self.factory.messages.append(b"\r\n".join(self.lines) + b"\r\n")
                self.lines = []
                self.sendLine(b"250 2.0.0 stored")
            else:
                self.lines.append(line[1:] if line.startswith(b".") else line)
            return
        verb = line[:4].upper()
        self.factory.commands.append(line)
        if verb == b"EHLO" and getattr(self, "secured", False):
            self.transport.loseConnection()  # tls-then-close: the handshake is done, the session is not
        elif verb == b"EHLO":
            starttls = [] if self.factory.mode in ("none", "odd-size") else [b"250-STARTTLS"]
            size = ["250-SIZE ²".encode()] if self.factory.mode == "odd-size" else []
            for reply in [b"250-scripted.test", b"250-PIPELINING", *size, *starttls, b"250 8BITMIME"]:
                self.sendLine(reply)
        elif verb == b"STAR":
            self.factory.starttls += 1
            if self.factory.mode == "454":
                self.sendLine(b"454 4.7.0 TLS not available due to temporary reason")
            elif self.factory.mode.startswith("refuse-"):
                self.sendLine(self.factory.mode.removeprefix("refuse-").encode() + b" not now")
            elif self.factory.mode == "tls-then-close":
                self.sendLine(b"220 2.0.0 go ahead")
                self.transport.startTLS(self.factory.tls)
                self.secured = True
            elif self.factory.mode == "inject":
                self.transport.write(b"220 2.0.0 go ahead\r\n250 injected\r\n")
                self.setRawMode()  # what follows is the client's ClientHello
            elif self.factory.mode == "stall":
                self.sendLine(b"220 2.0.0 go ahead")
                self.setRawMode()
                self.stalled = True
            else:
                self.sendLine(b"220 2.0.0 go ahead")
                self.transport.write(b"this is not a TLS ServerHello\r\n" * 4)
                self.transport.loseConnection()
        elif verb == b"DATA":
            self.in_data = True
            self.sendLine(b"354 go ahead")
            if self.factory.mode == "reset":
                self.transport.abortConnection()
        elif verb == b"QUIT":
            self.sendLine(b"221 bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"250 2.0.0 ok")


    def rawDataReceived(self, data: bytes) -> None:
        self.factory.raw.append(data)
        if not getattr(self, "stalled", False):
            self.transport.loseConnection()  # cannot speak TLS


class ScriptedFactory(Factory):
    protocol = ScriptedSMTP
    noisy = False

    def __init__(self, mode: str, tls: Any = None):
        self.mode = mode
        self.tls = tls
        self.connections = 0
        self.starttls = 0
        self.messages: list[bytes] = []
        self.commands: list[bytes] = []
        self.raw: list[bytes] = []


async def start_scripted(mode: str, tls: Any = None) -> tuple[ScriptedFactory, Any]:
    factory = ScriptedFactory(mode, tls)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    return factory, port


async def deliver_to_scripted(tmp_path: Any, mode: str, ca: str | None, server_tls: Any = None, **sender_opts: Any) -> ScriptedFactory:
    """One message from a sender with ``sender_opts`` to a ScriptedSMTP in ``mode``;
    both stopped on return.  Returns the scripted server's factory (its counters)."""
    factory, port = await start_scripted(mode, server_tls)
    sender = await start_sender(tmp_path, port.getHost().port, ca, **sender_opts)
    try:
        await submit_and_settle(sender)
    finally:
        await sender.stop()
        await port.stopListening()
    return factory



# -- an active attacker on the MX's address: anonymous TLS, no certificate -----------------


@implementer(IOpenSSLServerConnectionCreator)
class AnonymousTLS:
    """TLS 1.2 with an anonymous (aNULL) suite: a full handshake that shows no certificate."""

    def __init__(self) -> None:
        self.ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        self.ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
        self.ctx.set_cipher_list(b"aNULL:@SECLEVEL=0")

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self.ctx, None)
        conn.set_app_data(tlsProtocol)
        return conn


class AnonymousMitm(ScriptedSMTP):
    """Answers STARTTLS with an anonymous handshake and accepts whatever follows."""

    def lineReceived(self, line: bytes) -> None:
        if not self.in_data and line[:8].upper() == b"STARTTLS":
            self.sendLine(b"220 2.0.0 go ahead")
            self.transport.startTLS(AnonymousTLS())
            return
        super().lineReceived(line)
