"""A real redis-server for fleet tests, and an SMTP sink that counts concurrent connections.

The server runs from Debian's ``redis-server`` with a private config in the
test's directory, on a UNIX socket only (``port 0``: no TCP at all), no
persistence; it is stopped (or killed with -9) by its PID.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint, UNIXClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.basic import LineReceiver

REDIS_SERVER = "/usr/bin/redis-server"
START_TIMEOUT = 20


class RedisServer:
    """``redis-server`` listening on ``directory/redis.sock``; :meth:`restart` reuses the socket path."""

    def __init__(self, directory: Any, extra: str = ""):
        self.directory = str(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.socket = os.path.join(self.directory, "redis.sock")
        self.config = os.path.join(self.directory, "redis.conf")
        with open(self.config, "w") as f:
            f.write(f'port 0\nunixsocket {self.socket}\nunixsocketperm 700\ndir "{self.directory}"\nsave ""\n'
                    f'appendonly no\ndaemonize no\nlogfile "{self.directory}/redis.log"\n{extra}')
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"unix:{self.socket}"

    def start(self) -> None:
        self.proc = subprocess.Popen([REDIS_SERVER, self.config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.ping():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"redis-server did not start: {self.log()}")

    def ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(1)
                s.connect(self.socket)
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args: str) -> bytes:
        """One command through redis-cli on the socket (what an operator would see)."""
        return subprocess.run(["redis-cli", "-s", self.socket, *args], capture_output=True, check=True, timeout=10).stdout

    def log(self) -> str:
        try:
            with open(os.path.join(self.directory, "redis.log")) as f:
                return f.read()
        except OSError:
            return ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=START_TIMEOUT)
        if os.path.exists(self.socket):
            os.unlink(self.socket)

    def restart(self) -> None:
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=START_TIMEOUT)


class CountingSMTP(LineReceiver):
    """Just enough SMTP to take mail; the factory counts open connections and the subjects it took."""

    delimiter = b"\r\n"

    def connectionMade(self) -> None:
        self.factory.opened(self)
        self.in_data = False
        self.subject = ""
        self.sendLine(b"220 sink.test ESMTP")

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.closed(self)

    def lineReceived(self, line: bytes) -> None:
        if self.in_data:
            if line == b".":
                self.in_data = False
                self.pauseProducing()  # what was pipelined after the dot (QUIT) waits for its reply
                self.factory.finish(self)
            elif line.lower().startswith(b"subject:"):
                self.subject = line.split(b":", 1)[1].strip().decode()
            return
        verb = line[:4].upper()
        if verb == b"EHLO":
            self.sendLine(b"250-sink.test")
            self.sendLine(b"250 PIPELINING")
        elif verb == b"MAIL":
            self.factory.mail_times.append(reactor.seconds())
            self.sendLine(b"250 ok")
        elif verb == b"DATA":
            self.in_data = True
            self.sendLine(b"354 go on")
        elif verb == b"QUIT":
            self.factory.closed(self)  # closing: the client may already be opening its next connection
            self.sendLine(b"221 bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"250 ok")


class CountingSink(Factory):
    """Counts concurrent connections (``current``, ``peak``), each from its accept until QUIT or its
    close; answers each final dot after ``delay`` seconds (a slow receiver, so sessions overlap), or
    not at all while ``hold`` is set."""



    protocol = CountingSMTP

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.hold = False
        self.current = 0
        self.peak = 0
        self.subjects: list[str] = []  # of the messages answered 250
        self.mail_times: list[float] = []  # when each MAIL FROM came
        self.final_dots = 0  # messages whose final dot has come (answered or not yet)
        self.connections: set[CountingSMTP] = set()

    def opened(self, proto: CountingSMTP) -> None:
        self.connections.add(proto)
        self.current += 1
        self.peak = max(self.peak, self.current)

    def closed(self, proto: CountingSMTP) -> None:
        if proto in self.connections:
            self.connections.discard(proto)
            self.current -= 1

    def finish(self, proto: CountingSMTP) -> None:
        self.final_dots += 1
        if self.hold:
            return
        reactor.callLater(self.delay, self._accept, proto)

    def _accept(self, proto: CountingSMTP) -> None:
        if proto.transport.connected:
            self.subjects.append(proto.subject)
            proto.sendLine(b"250 2.0.0 queued")
            proto.resumeProducing()

    def close_all(self) -> None:
        for proto in list(self.connections):
            proto.transport.abortConnection()


async def start_sink(delay: float = 0.0) -> tuple[CountingSink, Any]:
    """A sink on a free loopback port: (factory, listening port)."""
    sink = CountingSink(delay)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(sink)
    return sink, port


class _ToRedis(Protocol):
    """The Redis side of one forwarded connection."""

    def __init__(self, client: _FromClient):
        self.client = client

    def dataReceived(self, data: bytes) -> None:
        self.client.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.client.transport.loseConnection()


class _FromClient(Protocol):
    """A TLS client's connection, its bytes passed on to Redis's UNIX socket (held until connected)."""

    def connectionMade(self) -> None:
        self.redis: _ToRedis | None = None
        self.pending: list[bytes] = []
        endpoint = UNIXClientEndpoint(reactor, self.factory.socket)
        connectProtocol(endpoint, _ToRedis(self)).addCallbacks(self._connected, lambda f: self.transport.loseConnection())

    def _connected(self, redis: _ToRedis) -> None:
        self.redis = redis
        redis.transport.write(b"".join(self.pending))

    def dataReceived(self, data: bytes) -> None:
        if self.redis is None:
            self.pending.append(data)
        else:
            self.redis.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.redis is not None:
            self.redis.transport.loseConnection()


async def start_tls_front(redis: RedisServer, pair: Any) -> Any:
    """TLS on a free loopback port (``pair``'s certificate) in front of ``redis``'s socket, as a
    TLS-terminating proxy in front of Redis does; returns the listening port."""
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from tlsmta.config import parse_protocols
    from tlsmta.tls import _contexts as tls

    factory = Factory.forProtocol(_FromClient)
    factory.socket = redis.socket
    context = tls.server_context(pair.cert, pair.key, parse_protocols("+TLSv1.2:+TLSv1.3"))
    wrapped = TLSMemoryBIOFactory(tls.ServerTLS(context), False, factory)
    return await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(wrapped)
