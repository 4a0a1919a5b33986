"""haproxy: listeners: the PROXY header is believed only from proxy_networks, and the SMTP
session starts (banner, peer address, relay control) only once it has arrived.

Stock Twisted's wrapper believes anyone and starts the session first, so relay control
judged the proxy's address: behind a local HAProxy, every client could relay.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import subprocess
from typing import Any

import pytest
import pytest_twisted
from e2e import in_thread, maildir_messages, read_reply, start_relay

from tlsmta.inbound import _proxyheader as proxyheader
from tlsmta.testing import dev_listener

TIMEOUT = 10


def proxy_listener(**overrides: Any) -> dict[str, Any]:
    table = {"endpoint": "haproxy:tcp:0:interface=127.0.0.1", "relay_networks": ["198.51.100.0/24"], "local_domains": ["example.test"]}
    return dev_listener(**{**table, **overrides})


def v1_header(client: str, port: int = 40000) -> bytes:
    return f"PROXY TCP4 {client} 127.0.0.1 {port} 25\r\n".encode()


def v2_header(client: str, port: int = 40000) -> bytes:
    body = ipaddress.ip_address(client).packed + ipaddress.ip_address("127.0.0.1").packed + struct.pack("!HH", port, 25)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


def converse(port: int, first: bytes, commands: list[bytes]) -> list[bytes]:
    """Send ``first`` (the header), then each command; the banner and every reply's last line.
    An empty list means the server closed without a banner."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    except ConnectionResetError:  # an untrusted proxy's connection is aborted at once
        return []
    with sock:
        f = sock.makefile("rb")
        try:
            sock.sendall(first)
            banner = read_reply(f)
        except (ConnectionResetError, BrokenPipeError):  # cut off (aborted) before a banner
            return []
        if not banner:
            return []
        replies = [banner]
        for command in commands:
            sock.sendall(command)
            replies.append(read_reply(f))
        return replies


SESSION = [b"EHLO client.test\r\n", b"MAIL FROM:<a@client.test>\r\n", b"RCPT TO:<x@far.test>\r\n", b"QUIT\r\n"]


@pytest_twisted.ensureDeferred
async def test_header_from_a_trusted_proxy_gives_the_client_address(tmp_path: Any) -> None:
    """v1 and v2: the EHLO greeting names the client from the header, and relay control judges it."""
    relay = await start_relay(tmp_path, [proxy_listener()])
    try:
        outside = await in_thread(converse, relay.port, v1_header("192.0.2.7"), SESSION)
        inside = await in_thread(converse, relay.port, v2_header("198.51.100.9"), SESSION)
    finally:
        await relay.stop()
    assert outside[0].startswith(b"220 ")
    assert outside[3].startswith(b"554 5.7.1"), outside  # 192.0.2.7 is not in relay_networks
    assert inside[3].startswith(b"250 "), inside  # 198.51.100.9 is


@pytest_twisted.ensureDeferred
async def test_header_naming_no_client_gives_no_standing(tmp_path: Any) -> None:
    """PROXY UNKNOWN (v1) and LOCAL (v2, health checks) name no client: the session is served,
    but not with the proxy's own address, which relay_networks lists here."""
    relay = await start_relay(tmp_path, [proxy_listener(relay_networks=["127.0.0.0/8"])])
    local_v2 = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20, 0x00]) + b"\x00\x00"
    try:
        # (a bare "PROXY UNKNOWN" is refused by the parser; with the optional rest it is taken)
        unknown = await in_thread(converse, relay.port, b"PROXY UNKNOWN 127.0.0.9 127.0.0.1 1 25\r\n", SESSION)
        local = await in_thread(converse, relay.port, local_v2, SESSION)
        proxied = await in_thread(converse, relay.port, v1_header("127.0.0.9"), SESSION)
    finally:
        await relay.stop()
    assert unknown[0].startswith(b"220 ") and unknown[3].startswith(b"554 5.7.1"), unknown
    assert local[0].startswith(b"220 ") and local[3].startswith(b"554 5.7.1"), local
    assert proxied[3].startswith(b"250 "), proxied  # a named client in relay_networks still relays


@pytest_twisted.ensureDeferred
async def test_session_starts_only_after_the_header(tmp_path: Any) -> None:
    """A header split over two segments: no banner before it is complete; commands in the same
    segment as the header's end are served; the Received header and log carry the client address."""
    relay = await start_relay(tmp_path, [proxy_listener()])
    try:

        def split_header() -> list[bytes]:
            header = v1_header("198.51.100.9")
            with socket.create_connection(("127.0.0.1", relay.port), timeout=TIMEOUT) as sock:
                sock.sendall(header[:10])
                sock.settimeout(0.3)
                try:
                    early = sock.recv(100)
                except TimeoutError:
                    early = b""
                sock.settimeout(TIMEOUT)
                sock.sendall(header[10:] + b"EHLO c.test\r\n")
                f = sock.makefile("rb")
                replies = [early, read_reply(f), read_reply(f)]
                for command in (b"MAIL FROM:<a@c.test>\r\n", b"RCPT TO:<u@example.test>\r\n", b"DATA\r\n"):
                    sock.sendall(command)
                    replies.append(read_reply(f))
                sock.sendall(b"Subject: via proxy\r\n\r\nhi\r\n.\r\n")
                replies.append(read_reply(f))
                return replies

        replies = await in_thread(split_header)
    finally:
        await relay.stop()
    assert replies[0] == b""  # nothing before the header was complete
    assert replies[1].startswith(b"220 ") and replies[2].startswith(b"250 ")
    assert replies[-1].startswith(b"250 ")
    [message] = maildir_messages(str(tmp_path / "maildir"))
    assert "[198.51.100.9]" in message["Received"]


@pytest_twisted.ensureDeferred
async def test_untrusted_proxy_and_missing_header_are_cut_off(tmp_path: Any, monkeypatch: Any) -> None:
    """A connection from outside proxy_networks, one without a header, one with garbage, and one
    that never sends its header all end without a banner."""
    monkeypatch.setattr(proxyheader, "PROXY_HEADER_TIMEOUT", 0.2)
    strict = await start_relay(tmp_path / "strict", [proxy_listener(proxy_networks=["192.0.2.0/24"])])
    relay = await start_relay(tmp_path / "open", [proxy_listener()])
    try:
        untrusted = await in_thread(converse, strict.port, v1_header("198.51.100.9"), SESSION)
        no_header = await in_thread(converse, relay.port, b"EHLO client.test\r\n", [])
        garbage = await in_thread(converse, relay.port, b"PROXY TCP4 not-an-address\r\n", [])
        silent = await in_thread(converse, relay.port, b"", [])
    finally:
        await strict.stop()
        await relay.stop()
    assert untrusted == no_header == garbage == silent == []


@pytest.fixture
def haproxy(tmp_path: Any) -> Any:
    """A real HAProxy on a loopback port, sending PROXY v2 to ``backend`` (set before start).

    It listens on a socket made here and inherited (``bind fd@N``): no port found free and
    released for another listener to take, and clients queue in its backlog until it accepts."""
    procs: list[subprocess.Popen] = []
    sockets: list[socket.socket] = []

    def start(backend_port: int) -> int:
        listening = socket.socket()
        sockets.append(listening)
        listening.bind(("127.0.0.1", 0))
        listening.listen(64)
        port = listening.getsockname()[1]
        config = tmp_path / "haproxy.cfg"
        config.write_text(
            f"""
global
    log stdout format raw local0
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend smtp
    bind fd@{listening.fileno()}
    default_backend tlsmta
backend tlsmta
    server t1 127.0.0.1:{backend_port} send-proxy-v2
"""
        )
        procs.append(subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, pass_fds=(listening.fileno(),)))
        return port

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=TIMEOUT)
    for listening in sockets:
        listening.close()


def run_session(sock: Any) -> list[bytes]:
    """The banner and the last line of each SESSION command's reply."""
    f = sock.makefile("rb")
    replies = [read_reply(f)]
    for command in SESSION:
        sock.sendall(command)
        replies.append(read_reply(f))
    return replies


def converse_from(source: str, port: int) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT, source_address=(source, 0)) as sock:
        return run_session(sock)


@pytest_twisted.ensureDeferred
async def test_real_haproxy_in_front(tmp_path: Any, haproxy: Any) -> None:
    """HAProxy (send-proxy-v2) connects from 127.0.0.1; clients from 127.0.0.2 and 127.0.0.3
    are told apart: only the one in relay_networks may relay."""
    relay = await start_relay(tmp_path, [proxy_listener(relay_networks=["127.0.0.2/32"])])
    try:
        port = haproxy(relay.port)  # already listening: clients wait in the backlog until HAProxy accepts
        allowed = await in_thread(converse_from, "127.0.0.2", port)
        refused = await in_thread(converse_from, "127.0.0.3", port)
    finally:
        await relay.stop()
    assert allowed[3].startswith(b"250 "), allowed
    assert refused[3].startswith(b"554 5.7.1"), refused


@pytest_twisted.ensureDeferred
async def test_implicit_tls_behind_the_header(tmp_path: Any, pki: Any) -> None:
    """On an implicit-TLS listener the header comes first, in clear, then the TLS handshake."""
    import ssl

    from e2e import client_context

    relay = await start_relay(
        tmp_path, [proxy_listener(tls="implicit", tls_certificate=pki.good.cert, tls_key=pki.good.key)]
    )
    try:

        def over_tls() -> list[bytes]:
            with socket.create_connection(("127.0.0.1", relay.port), timeout=TIMEOUT) as raw:
                raw.sendall(v2_header("198.51.100.9"))
                ctx: ssl.SSLContext = client_context(pki.ca_pem)
                with ctx.wrap_socket(raw, server_hostname="mx.example.test") as sock:
                    return run_session(sock)

        replies = await in_thread(over_tls)
    finally:
        await relay.stop()
    assert replies[0].startswith(b"220 ") and replies[3].startswith(b"250 "), replies


@pytest.mark.parametrize("header", [v1_header("198.51.100.9"), v2_header("198.51.100.9")], ids=["v1", "v2"])
def test_header_arriving_byte_by_byte(header: bytes) -> None:
    """However the header is split into segments, the session starts after it, with the
    header's client as its peer and the bytes after the header as its first input."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    class Recorder(Protocol):
        def connectionMade(self) -> None:
            self.peer = self.transport.getPeer()
            self.received = b""

        def dataReceived(self, data: bytes) -> None:
            self.received += data

    factory = proxyheader.TrustedProxyFactory(
        Factory.forProtocol(Recorder), lambda: [ipaddress.ip_network("127.0.0.0/8")], Clock()
    )
    wrapper = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    wrapper.makeConnection(transport)
    stream = header + b"EHLO c.test\r\n"
    for i in range(len(stream)):
        wrapper.dataReceived(stream[i:i + 1])
        if i < len(header) - 1:
            assert not hasattr(wrapper.wrappedProtocol, "peer")  # not started before the header is whole
    recorder = wrapper.wrappedProtocol
    assert recorder.peer.host == "198.51.100.9" and recorder.received == b"EHLO c.test\r\n"
    assert not transport.disconnecting
