"""Twisted network plumbing every shell shares: a Service that owns one
listening port (SMTP listeners, control socket, metrics, web page),
TCP_NODELAY and immediate sends for SMTP's small writes, the types of a
connected transport and of the reactor, unbuffered TLS writes, and a
twisted.web request with a bounded body.

Imports nothing of tlsmta.
"""

from __future__ import annotations

import socket
from typing import IO, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProducer,
    IReactorCore,
    IReactorSocket,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
    IReactorUDP,
    IReactorUNIX,
    ITransport,
)
from twisted.internet.tcp import Connection
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web.server import Request

# Every TLS layer in the process (startTLS, TLS listeners) is made by TLSMemoryBIOFactory,
# whose default BufferingTLSTransport holds each write back for a callLater(0) to join
# small writes.  SMTP writes whole replies and commands, and the peer waits for each:
# the hold cost a reactor iteration per reply and a timer per write (bench/profile-issue13.md).
TLSMemoryBIOFactory.protocol = TLSMemoryBIOProtocol


class IServiceReactor(IReactorCore, IReactorTime, IReactorTCP, IReactorUDP, IReactorUNIX, IReactorSocket, IReactorThreads):
    """The reactor a whole service runs on: what the installed reactor provides.

    A type only (as Twisted's own ``_IReactorCommon``): Twisted's annotation of
    ``twisted.internet.reactor`` leaves out threads, UDP, UNIX sockets and
    adopted ports, which every POSIX reactor has.  Code that needs one of these only
    takes that interface (a ``Clock`` is an ``IReactorTime``).
    """


def installed_reactor() -> IServiceReactor:
    """The global reactor (installing the default one if none is yet)."""
    from twisted.internet import reactor

    # Twisted types it as the narrower _IReactorCommon (twisted/internet/__init__.py).
    return reactor  # type: ignore[return-value]


class StreamTransport(Protocol):
    """What tlsmta's protocols call on their transport once connected.

    Twisted types ``Protocol.transport`` as ``ITransport | None``, while a TCP
    or TLS connection also is the consumer, producer, ``ITCPTransport`` and
    ``ITLSTransport`` these methods come from; a shell declares its
    ``transport`` with this type (makeConnection sets it before any callback).
    """

    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def getPeer(self) -> IAddress: ...
    def getHost(self) -> IAddress: ...
    def registerProducer(self, producer: IProducer, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def stopProducing(self) -> None: ...
    def startTLS(self, contextFactory: IOpenSSLClientConnectionCreator | IOpenSSLServerConnectionCreator) -> None: ...
    # The socket before TLS, the OpenSSL connection after the handshake (tls.contexts.tls_connection).
    def getHandle(self) -> object: ...


class PortService(Service):
    """Listens when started, stops listening when stopped.

    TCP and UNIX ports listen synchronously, so a failure (address in use,
    a bad socket path) fails ``startService`` at once with its error and
    nothing half-starts.  Subclasses extend ``listening`` (log, fire
    ``ready``) and ``stopService`` (their own clean-up).
    """

    port: IListeningPort | None = None

    def listen_on(self, listening: Deferred[IListeningPort]) -> None:
        """Wait for an endpoint's ``listen()`` result; raise its failure here."""
        failure: list[Failure] = []
        listening.addCallbacks(self.listening, failure.append)
        if failure:
            failure[0].raiseException()

    def listening(self, port: IListeningPort) -> None:
        self.port = port

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.port is None:
            return None
        port, self.port = self.port, None
        return port.stopListening()


def set_no_delay(transport: object) -> None:
    """TCP_NODELAY where the transport is TCP (not in tests' fake transports)."""
    set_it = getattr(transport, "setTcpNoDelay", None)
    if set_it is not None:
        try:
            set_it(True)
        except OSError:
            pass  # the socket is already gone (the peer left); nothing left to tune


class ImmediateWriter:
    """Writes to a plain TCP connection, sent in ``write`` itself while nothing is queued.

    Twisted's ``transport.write`` only queues: it registers the socket for
    writing (an epoll_ctl), sends on the next reactor iteration and then
    unregisters it (another): two system calls and a poll round per SMTP
    reply, a fifth of the reactor thread's time for a relayed message
    (bench/profile-issue13.md).  A reply nearly always fits the socket's
    send buffer, so it is sent at once.  The first write that does not go
    out whole (a full send buffer, a failing socket) hands its rest to the
    transport, and so does every later one: order is kept, and the
    transport's flow control and error handling take over as before.
    :meth:`start_tls` starts TLS and gives the TLS records the same
    treatment.  A transport that is not a plain TCP connection
    (TLS-wrapped, PROXY-wrapped, a test's) gets every write as before.
    """

    def __init__(self, transport: StreamTransport):
        self.transport = transport
        self._connection = transport if isinstance(transport, Connection) else None
        self._socket: socket.socket | None = self._connection.getHandle() if self._connection is not None else None

    def write(self, data: bytes) -> None:
        if self._connection is not None:
            assert self._socket is not None
            rest = _send_now(self._connection, self._socket, data)
            if not rest:
                return
            self._connection, data = None, rest
        self.transport.write(data)

    def start_tls(self, creator: IOpenSSLClientConnectionCreator | IOpenSSLServerConnectionCreator) -> None:
        """``transport.startTLS(creator)``; from now on every write goes through TLS.

        On a plain TCP connection the records TLS makes are sent at once as well
        (:class:`_ImmediateRecords`, in place of the transport the TLS layer writes to).
        """
        connection, self._connection = self._connection, None
        self.transport.startTLS(creator)
        if connection is not None:
            assert self._socket is not None
            tls_layer = connection.protocol  # what startTLS put between the connection and us
            assert isinstance(tls_layer, TLSMemoryBIOProtocol)
            queued = tls_layer.transport
            assert queued is not None
            # a proxy of the ITransport it had (zope declarations are not what mypy reads)
            tls_layer.transport = _ImmediateRecords(queued, connection, self._socket)  # type: ignore[assignment]


def _send_now(connection: Connection, sock: socket.socket, data: bytes) -> bytes:
    """Send ``data`` on the connection's socket now; what is left of it (b"": all went)."""
    if connection.disconnecting or not connection.connected:
        return data  # closing: the rest is the transport's to flush or drop
    try:
        sent = sock.send(data)
    except OSError:  # would block, or the connection failed: the transport finds out which
        sent = 0
    return data[sent:]


class _ImmediateRecords:
    """The transport of a TLS layer started on a TCP connection: its records are sent at once.

    ``transport.startTLS`` gives the TLS layer a transport that queues every
    record for the next reactor iteration; this one sends a record in
    ``write``, as :class:`ImmediateWriter` does, and forwards everything
    else.  startTLS may already have queued a record (a client's
    ClientHello), so the first record checks that nothing is waiting to be
    written; after one not sent whole, every record goes through the queue.
    """

    def __init__(self, queued: ITransport, connection: Connection, sock: socket.socket):
        self._queued = queued
        self._connection: Connection | None = connection
        self._socket = sock
        self._checked = False

    def __getattr__(self, name: str) -> object:
        return getattr(self._queued, name)

    def write(self, data: bytes) -> None:
        connection = self._connection
        if connection is not None and not self._checked:
            self._checked = True
            if connection in connection.reactor.getWriters():
                connection = self._connection = None  # a record waits in the queue: keep the order
        if connection is not None:
            rest = _send_now(connection, self._socket, data)
            if not rest:
                return
            self._connection, data = None, rest
        self._queued.write(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))


class BoundedRequest(Request):
    """A twisted.web request whose body may be at most ``max_body`` bytes (subclasses set it): past
    that (a Content-Length over it, or that many bytes of a chunked body) the peer gets 413 at
    once and the connection closes.  twisted.web itself keeps any body a peer sends in a
    temporary file before a resource sees it."""

    max_body = 0
    too_large = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length if length is None or length <= self.max_body else 0)
        if length is not None and length > self.max_body:
            self._refuse()

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > self.max_body:
            self._refuse()
        elif not self.too_large:
            super().handleContentChunk(data)

    def process(self) -> None:
        if not self.too_large:  # a refused body is never rendered, not even the part that came
            super().process()

    def _refuse(self) -> None:
        if self.too_large:
            return
        self.too_large = True
        content: IO[bytes] | None = self.content  # Twisted types it None until gotLength
        if content is not None:  # a chunked body's temporary file: emptied now, closed with the connection
            content.seek(0)
            content.truncate()
        # The request is not complete, so Request's own response machinery cannot answer yet.
        transport = self.channel.transport
        assert transport is not None
        text = f"a request body is at most {self.max_body} bytes here\n".encode()
        transport.write(b"HTTP/1.1 413 Content Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
                        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(text), text))
        transport.loseConnection()
