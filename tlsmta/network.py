"""Twisted network plumbing every shell shares: a Service that owns one
listening port (SMTP listeners, control socket, metrics, web page),
TCP_NODELAY for SMTP's small writes, and the types of a connected transport
and of the reactor.

Imports nothing of tlsmta.
"""

from __future__ import annotations

from typing import Protocol

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
)
from twisted.python.failure import Failure


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
