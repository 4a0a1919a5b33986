"""LMTP delivery (RFC 2033) to a mailbox server such as Dovecot: the ``lmtp:`` route's shell.

The protocol is :class:`tlsmta.smtp.client_session.ClientSession` in LMTP mode
(LHLO, one reply per accepted recipient after the message); the destination,
TLS policy, connection reuse and logging are the SMTP pool's
(:mod:`tlsmta.delivery._pool`).  What differs is here: the connection class,
and ``lmtp:unix:PATH`` reached through a unix socket, where STARTTLS has no
place (the pool asks nothing of TLS there).
"""

from __future__ import annotations

from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IReactorUNIX, IStreamClientEndpoint

from tlsmta.config import Route
from tlsmta.delivery._client import EndpointFactory, OutboundSMTP

# The port of a unix socket "host": the pool's hosts are (name, address, port) and a
# socket has no port; the socket path stands for the name and the address.
UNIX_SOCKET_PORT = 0


class OutboundLMTP(OutboundSMTP):
    """One LMTP connection: an OutboundSMTP whose session greets with LHLO and reads
    one reply per accepted recipient at the end of the message."""

    lmtp = True


def connection_class(route: Route | None) -> type[OutboundSMTP]:
    """The connection a route's deliveries (and probes) use (None: no route given, SMTP)."""
    return OutboundLMTP if route is not None and route.kind == "lmtp" else OutboundSMTP


def unix_socket_host(route: Route) -> tuple[str, str, int]:
    """The one "host" of an ``lmtp:unix:`` route, as the pool's (name, address, port)."""
    assert route.path is not None
    return route.path, route.path, UNIX_SOCKET_PORT


def lmtp_endpoints(reactor: IReactorUNIX, tcp: EndpointFactory) -> EndpointFactory:
    """``tcp`` for ``lmtp:HOST:PORT``; a unix socket endpoint for a :func:`unix_socket_host`."""

    def endpoint(address: str, port: int, source: str | None, timeout: float) -> IStreamClientEndpoint:
        if port == UNIX_SOCKET_PORT:
            return UNIXClientEndpoint(reactor, address, timeout=timeout)
        return tcp(address, port, source, timeout)

    return endpoint
